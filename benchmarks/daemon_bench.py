"""The supervisor daemon under a burst, on the real stack: anvil with the contracts, the sbatch service,
the project's Slurm cluster, and `grid-supervisor run` as a process.

N jobs (`true`, 1 task, 1 CPU, 1024 MB, 0 GPU, 100 credits locked) are meta-scheduled to the provider
in one block. The figures, per job, with median and 95th percentile:

- meta-scheduling -> claimed: block timestamps of the metaSchedule and of the job's ClaimJobEvent;
- meta-scheduling -> submitted: the metaSchedule block timestamp to Slurm's `Submit` (sacct);
- Slurm end -> reported: Slurm's `End` (sacct) to the block of the JobTransitionEvent to the end status;

and the intake rate (jobs submitted to Slurm per second after the meta-scheduling) against the bare
rate of `sbatch --wrap true` alone, measured in the same run, as a ratio. Block timestamps and sacct
times both have a resolution of one second. The cluster's single node runs only a few such jobs at
once: the jobs run in waves, which shows in the end-to-end time, not in the intake rate.

Run: .venv/bin/python benchmarks/daemon_bench.py [--jobs 200] [--timeout 240]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grid_dev.anvil import Anvil, start_anvil  # noqa: E402
from grid_protocol.jobs import JobStatus  # noqa: E402
from tests.fixtures.contracts import CREDIT, Grid, deploy_grid  # noqa: E402
from tests.fixtures.slurm import SlurmCluster, ensure_cluster_up  # noqa: E402
from tests.fixtures.supervisor import ProviderStack, credits_per_minute, open_provider_stack, wait_for  # noqa: E402

LOCKED_CREDITS = 100
CPUS, MEM_MB, GPUS = 1, 1024, 0
#: Job ids are a counter restarting at each deployment, and Slurm job names are job ids: requests
#: left pending first move this run's ids away from the small ones other test chains use.
SKIPPED_IDS = 300
#: Enough room for a few hundred transactions in one block.
BLOCK_GAS_LIMIT = 2_000_000_000


@contextlib.contextmanager
def one_block(anvil: Anvil) -> Iterator[None]:
    """Transactions sent inside are mined together in a single block."""
    anvil.rpc("evm_setAutomine", [False])
    try:
        yield
        anvil.rpc("evm_mine")
    finally:
        anvil.rpc("evm_setAutomine", [True])


def send_in_one_block(grid: Grid, sender: str, calls: list[Any], gas: int) -> list[Any]:
    """Send `calls` from an unlocked account, mined in one block; returns their receipts."""
    with one_block(grid.anvil):
        hashes = [call.transact({"from": sender, "gas": gas}) for call in calls]
    receipts = [grid.w3.eth.wait_for_transaction_receipt(h, timeout=60) for h in hashes]
    failed = [r for r in receipts if r["status"] != 1]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(calls)} transactions reverted")
    return receipts


def request_jobs(stack: ProviderStack, keys: list[str]) -> list[bytes]:
    """One PENDING job per batch script key, all in one block; returns the job ids in order."""
    grid, customer = stack.grid, stack.customer
    name = b"bench".ljust(32, b"\0")
    calls = [
        grid.scheduler.functions.requestNewJob(
            (GPUS, MEM_MB, CPUS, 1, key, 0, [], []), LOCKED_CREDITS * CREDIT, name, False
        )
        for key in keys
    ]
    receipts = send_in_one_block(grid, customer.address, calls, gas=1_500_000)
    ids: list[bytes] = []
    for receipt in receipts:
        (event,) = grid.events(grid.scheduler, "NewJobRequestEvent", receipt)
        ids.append(event["args"]["_jobId"])
    return ids


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def sacct_jobs(jobs_dir: Path, since: float) -> dict[str, dict[str, str]]:
    """Slurm's accounting of the jobs this run's supervisor submitted (each in its own folder of the
    run's unique jobs folder)."""
    start = datetime.fromtimestamp(since - 5).strftime("%Y-%m-%dT%H:%M:%S")
    result = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-a", "-S", start, "-E", "now", "-o", "JobName,WorkDir,Submit,End,State"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found: dict[str, dict[str, str]] = {}
    for line in result.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 5 and parts[1] == str(jobs_dir / parts[0]):
            found[parts[0]] = {"submit": parts[2], "end": parts[3], "state": parts[4]}
    return found


def slurm_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def cancel_leftovers(jobs_dir: Path, bare_name: str) -> int:
    """scancel whatever this run left in Slurm: the supervisor's jobs and the bare sbatch jobs."""
    listing = subprocess.run(
        ["squeue", "-h", "-a", "-o", "%i|%j|%Z"], capture_output=True, text=True, timeout=60, check=False
    )
    ids = [
        parts[0]
        for parts in (line.split("|") for line in listing.stdout.splitlines())
        if len(parts) == 3 and (parts[2] == str(jobs_dir / parts[1]) or parts[1] == bare_name)
    ]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60, check=False)
    return len(ids)


def bare_sbatch_rate(cluster: SlurmCluster, count: int, name: str) -> float:
    """Jobs per second of `sbatch --wrap true` alone, one after the other."""
    command = ["sbatch", "-p", cluster.partition, "-J", name, "-o", "/dev/null", "--wrap", "true"]
    began = time.monotonic()
    for _ in range(count):
        subprocess.run(command, capture_output=True, timeout=60, check=True)
    return count / (time.monotonic() - began)


def foreign_jobs() -> int:
    listing = subprocess.run(["squeue", "-h", "-a"], capture_output=True, text=True, timeout=60, check=False)
    return len(listing.stdout.splitlines())


def run(count: int, timeout: float) -> int:
    cluster = ensure_cluster_up()
    at_once = min(cluster.cpus_per_node // CPUS, cluster.memory_mb_per_node // (CPUS * MEM_MB))
    workdir = Path(tempfile.mkdtemp(prefix="grid-daemon-bench-"))
    bare_name = f"bench-bare-{uuid.uuid4().hex[:8]}"
    anvil = start_anvil(extra_args=["--gas-limit", str(BLOCK_GAS_LIMIT)])
    stack: ProviderStack | None = None
    try:
        grid = deploy_grid(anvil)
        stack = open_provider_stack(grid, cluster, workdir, name="grid-daemon-bench")
        provider, jobs_dir = stack.provider, stack.shared / "jobs"
        supervisor = stack.supervisor(max_queued_jobs=count)
        supervisor.start()
        stack.wait_registered()
        print(f"supervisor registered; log: {supervisor.log}", flush=True)

        customer = stack.customer
        grid.send(
            customer,
            grid.credit.functions.approve(
                grid.scheduler.address, (count + SKIPPED_IDS) * LOCKED_CREDITS * CREDIT
            ),
        )
        filler = stack.store_workflow("true", cpus=CPUS, mem=MEM_MB, gpus=GPUS)
        request_jobs(stack, [filler] * SKIPPED_IDS)
        keys = [stack.store_workflow(f"true # {i}", cpus=CPUS, mem=MEM_MB, gpus=GPUS) for i in range(count)]
        job_ids = request_jobs(stack, keys)
        names = {"0x" + job_id.hex(): job_id for job_id in job_ids}
        print(f"{count} jobs requested; meta-scheduling them in one block", flush=True)

        others = foreign_jobs()
        wall_start = time.time()
        calls = [grid.scheduler.functions.metaSchedule(job_id, provider.address) for job_id in job_ids]
        receipts = send_in_one_block(grid, grid.oracle.address, calls, gas=1_000_000)
        first_block = receipts[0]["blockNumber"]
        assert all(r["blockNumber"] == first_block for r in receipts), "meta-scheduling spans several blocks"
        timestamps: dict[int, int] = {}

        def block_time(number: int) -> int:
            if number not in timestamps:
                timestamps[number] = int(grid.w3.eth.get_block(number)["timestamp"])
            return timestamps[number]

        meta_time = block_time(first_block)
        ours = set(job_ids)

        def ended() -> dict[bytes, Any]:
            logs = grid.jobs.events.JobTransitionEvent().get_logs(from_block=first_block)
            return {
                log["args"]["_jobId"]: log
                for log in logs
                if log["args"]["_jobId"] in ours and JobStatus(log["args"]["_to"]).is_cold
            }

        def all_ended() -> dict[bytes, Any] | None:
            seen = ended()
            return seen if len(seen) == count else None

        finals = wait_for(f"{count} jobs to end on chain", all_ended, timeout=timeout, interval=1.0)
        wall_end = time.time()
        claims = {
            log["args"]["jobId"]: log
            for log in grid.scheduler.events.ClaimJobEvent().get_logs(from_block=first_block)
            if log["args"]["jobId"] in ours
        }
        accounting = wait_for(
            "sacct to account for every job",
            lambda: (lambda a: a if len(a) == count else None)(
                {n: r for n, r in sacct_jobs(jobs_dir, wall_start).items() if n in names}
            ),
            timeout=60,
            interval=1.0,
        )

        to_claim = [block_time(claims[j]["blockNumber"]) - meta_time for j in job_ids]
        submits = {n: slurm_time(r["submit"]) for n, r in accounting.items()}
        to_submit = [submits[n] - meta_time for n in names]
        to_report = [
            block_time(finals[names[n]]["blockNumber"]) - slurm_time(r["end"]) for n, r in accounting.items()
        ]
        statuses: dict[str, int] = {}
        for log in finals.values():
            status = JobStatus(log["args"]["_to"]).name
            statuses[status] = statuses.get(status, 0) + 1
        intake_seconds = max(submits.values()) - meta_time
        intake = count / intake_seconds if intake_seconds > 0 else float("inf")
        last_report = max(block_time(log["blockNumber"]) for log in finals.values()) - meta_time

        supervisor.stop()
        bare = bare_sbatch_rate(cluster, count, bare_name)

        per_minute = credits_per_minute(1, CPUS, MEM_MB, GPUS) / CREDIT
        print()
        print(
            f"grid-supervisor under a burst: {count} jobs `true` ({CPUS} CPU, {MEM_MB} MB, {GPUS} GPU, "
            f"{per_minute:g} credits/min, {LOCKED_CREDITS} credits locked each), max_queued_jobs = {count}, "
            "slurm_poll_seconds = 1"
        )
        print(
            f"cluster: 1 node, {cluster.cpus_per_node} CPUs, {cluster.memory_mb_per_node} MB: at most "
            f"{at_once} such jobs at once, so they run in about {math.ceil(count / at_once)} waves; "
            f"{others} other jobs were in Slurm at the start (the cluster is shared)"
        )
        print(
            f"all {count} meta-scheduled in block {first_block}; times are anvil block timestamps "
            "(automine) and sacct Submit/End: 1-second resolution"
        )
        print(f"end statuses: {statuses}")
        print()
        print(f"{'measure (seconds)':36} {'median':>8} {'p95':>8} {'max':>8}")
        for label, values in (
            ("meta-scheduled -> claimed", to_claim),
            ("meta-scheduled -> submitted to Slurm", to_submit),
            ("Slurm end -> end reported on chain", to_report),
        ):
            floats = [float(v) for v in values]
            print(
                f"{label:36} {statistics.median(floats):8.1f} {percentile(floats, 0.95):8.1f} {max(floats):8.1f}"
            )
        print()
        print(f"{'rate':36} {'jobs/s':>8}")
        print(
            f"{'taken in (meta-scheduled -> sbatch)':36} {intake:8.2f}   ({count} jobs in {intake_seconds:.0f} s)"
        )
        print(f"{'bare `sbatch --wrap true` in a loop':36} {bare:8.2f}   ({count} submissions)")
        print(f"{'ratio taken in / bare':36} {intake / bare:8.2f}")
        print()
        print(
            f"last end reported {last_report} s after the meta-scheduling "
            f"(wall clock of the whole burst: {wall_end - wall_start:.0f} s)"
        )
        return 0
    finally:
        if stack is not None:
            left = cancel_leftovers(stack.shared / "jobs", bare_name)
            if left:
                print(f"cancelled {left} jobs left in Slurm", flush=True)
            stack.close()
        anvil.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200, help="jobs meta-scheduled at once (default 200)")
    parser.add_argument(
        "--timeout", type=float, default=240, help="seconds to wait for every end (default 240)"
    )
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return run(args.jobs, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
