"""Slurm layer figures on the project's real cluster (scripts/cluster.sh up), local and SSH backends.

1. Submit throughput: jobs per second through `submit` (look-up by name, user check, sbatch). The
   jobs are held (`--hold` from the operator's extra options) so they only exercise the controller.
2. Query time per cycle for 1, 100 and 1,000 tracked jobs, with the Slurm calls counted: by Slurm id
   as the daemon asks (one listing of every job, without names), and by name only (one `squeue
   --name` per 500 names); plus one `sacct` when a name is not in the queue.
3. SSH: commands over the pooled connection against one new connection per command (the reference
   supervisor's way), in the same run, as a ratio.

Run: .venv/bin/python benchmarks/slurm_bench.py [--submits 100] [--cycles 5] [--ssh-commands 40]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.slurm import CommandSlurmBackend, JobSubmission, SlurmSettings, SshSettings  # noqa: E402
from supervisor.slurm.runner import CountingRunner, LocalRunner  # noqa: E402
from supervisor.slurm.ssh import SshRunner  # noqa: E402
from tests.fixtures.slurm import SlurmCluster, ensure_cluster_up  # noqa: E402

SCRATCH = Path("/tmp/grid-slurm-bench")
QUEUE_SIZES = (1, 100, 1000)


def new_name() -> str:
    return "0x" + secrets.token_hex(32)


def settings(cluster: SlurmCluster, kind: str) -> SlurmSettings:
    return SlurmSettings(
        backend=kind,  # type: ignore[arg-type]
        partition=cluster.partition,
        extra_sbatch_args=("--hold",),
        command_timeout_seconds=60,
        ssh=SshSettings(
            host=cluster.ssh_host,
            port=cluster.ssh_port,
            known_hosts=cluster.ssh_known_hosts,
            client_key=cluster.ssh_client_key,
            admin_user=cluster.admin_user,
        ),
    )


def backend(cluster: SlurmCluster, kind: str) -> CommandSlurmBackend:
    config = settings(cluster, kind)
    assert config.ssh is not None
    inner = LocalRunner() if kind == "local" else SshRunner(config.ssh)
    return CommandSlurmBackend(CountingRunner(inner), config)


def held_job(name: str, user: str, folder: Path) -> JobSubmission:
    return JobSubmission(
        name=name,
        script="#!/bin/bash\ntrue\n",
        unix_user=user,
        workdir=str(folder),
        output_path="/dev/null",
        time_limit_minutes=1,
        mem_per_cpu_mb=100,
    )


def cancel(ids: list[int]) -> None:
    for start in range(0, len(ids), 500):
        subprocess.run(["scancel", *map(str, ids[start : start + 500])], check=False)


async def submit_throughput(cluster: SlurmCluster, kind: str, count: int, folder: Path) -> list[int]:
    layer = backend(cluster, kind)
    ids = []
    try:
        begun = time.perf_counter()
        for _ in range(count):
            ids.append(await layer.submit(held_job(new_name(), cluster.service_user, folder)))
        elapsed = time.perf_counter() - begun
    finally:
        await layer.close()
    print(f"  submit, {kind:5}: {count} jobs in {elapsed:.2f} s = {count / elapsed:.1f} jobs/s")
    return ids


def fill_queue(cluster: SlurmCluster, count: int, folder: Path) -> tuple[list[str], list[int]]:
    """Held jobs submitted directly (setup for the query figures, not measured)."""
    names, ids = [], []
    for _ in range(count):
        name = new_name()
        out = subprocess.run(
            ["sbatch", "--parsable", "--hold", f"--job-name={name}", "--time=1", f"--chdir={folder}",
             "--output=/dev/null", f"--partition={cluster.partition}"],
            input="#!/bin/bash\ntrue\n", capture_output=True, text=True, check=True,
        )  # fmt: skip
        names.append(name)
        ids.append(int(out.stdout.strip().split(";")[0]))
    return names, ids


async def query_cycles(
    cluster: SlurmCluster, kind: str, names: list[str], cycles: int, slurm_ids: dict[str, int] | None = None
) -> str:
    layer = backend(cluster, kind)
    runner = layer.runner
    assert isinstance(runner, CountingRunner)
    try:
        await layer.query(names[:1])  # opens the SSH connection outside the measurement
        durations, calls = [], set()
        for _ in range(cycles):
            runner.reset()
            begun = time.perf_counter()
            result = await layer.query(names, slurm_ids=slurm_ids)
            durations.append(time.perf_counter() - begun)
            calls.add(runner.count())
            assert len(result.jobs) == len(names)
    finally:
        await layer.close()
    return f"{statistics.median(durations) * 1000:7.1f} ms (calls/cycle {sorted(calls)})"


async def accounting_cycle(cluster: SlurmCluster, kind: str, finished: list[str], cycles: int) -> str:
    layer = backend(cluster, kind)
    try:
        await layer.query(finished[:1])
        durations = []
        for _ in range(cycles):
            begun = time.perf_counter()
            result = await layer.query(finished)
            durations.append(time.perf_counter() - begun)
            assert not result.not_found
    finally:
        await layer.close()
    return f"{statistics.median(durations) * 1000:7.1f} ms"


async def ssh_pool_ratio(cluster: SlurmCluster, commands: int) -> None:
    config = settings(cluster, "ssh").ssh
    assert config is not None
    argv = ["squeue", "--noheader", "--states=RUNNING"]
    pooled = SshRunner(config)
    try:
        await pooled.run(argv, timeout=30)
        begun = time.perf_counter()
        for _ in range(commands):
            await pooled.run(argv, timeout=30)
        pooled_s = (time.perf_counter() - begun) / commands
    finally:
        await pooled.close()
    begun = time.perf_counter()
    for _ in range(commands):
        fresh = SshRunner(config)
        try:
            await fresh.run(argv, timeout=30)
        finally:
            await fresh.close()
    fresh_s = (time.perf_counter() - begun) / commands
    print(f"  pooled connection:        {pooled_s * 1000:7.1f} ms per command")
    print(f"  new connection each time: {fresh_s * 1000:7.1f} ms per command")
    print(f"  ratio (new / pooled):     {fresh_s / pooled_s:7.1f} x")


async def wait_until_purged(cluster: SlurmCluster, names: list[str], timeout: float) -> None:
    """slurmctld forgets cancelled jobs in batches after MinJobAge: wait until all come from sacct."""
    layer = backend(cluster, "local")
    deadline = time.monotonic() + timeout
    try:
        while True:
            result = await layer.query(names)
            # Held jobs cancelled before they were ever eligible may have no accounting record at all:
            # what counts is that none is still answered by the controller.
            if result.jobs and all(job.from_accounting for job in result.jobs.values()):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"the controller still held cancelled jobs after {timeout:g} s")
            await asyncio.sleep(5)
    finally:
        await layer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--submits", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--ssh-commands", type=int, default=40)
    args = parser.parse_args()

    cluster = ensure_cluster_up()
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    folder = SCRATCH / secrets.token_hex(4)
    folder.mkdir()
    shutil.chown(folder, user=cluster.service_user, group=cluster.service_user)
    to_cancel: list[int] = []
    try:
        print("Query time per cycle, all jobs live (median of", args.cycles, "cycles):")
        names: list[str] = []
        known: dict[str, int] = {}
        for size in QUEUE_SIZES:  # the queue holds exactly the tracked jobs
            more, ids = fill_queue(cluster, size - len(names), folder)
            names += more
            known.update(zip(more, ids, strict=True))
            to_cancel += ids
            for kind in ("local", "ssh"):
                by_id = await query_cycles(cluster, kind, names, args.cycles, known)
                by_name = await query_cycles(cluster, kind, names, args.cycles)
                print(f"  {size:5} jobs in the queue and tracked, {kind:5}: by id {by_id}, by name {by_name}")
        cancel(to_cancel)
        to_cancel.clear()

        print("Submit throughput (held jobs, look-up by name before each sbatch):")
        for kind in ("local", "ssh"):
            to_cancel += await submit_throughput(cluster, kind, args.submits, folder)
        cancel(to_cancel)
        to_cancel.clear()

        print(f"SSH, {args.ssh_commands} commands (squeue) each way:")
        await ssh_pool_ratio(cluster, args.ssh_commands)

        print("Query time per cycle, jobs gone from the queue (read from sacct):")
        await wait_until_purged(cluster, names, timeout=600)
        for size in QUEUE_SIZES:
            for kind in ("local", "ssh"):
                figure = await accounting_cycle(cluster, kind, names[:size], args.cycles)
                print(f"  {size:5} jobs tracked, {kind:5}: {figure}")
    finally:
        cancel(to_cancel)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
