"""The supervisor daemon measured from outside, on the real stack: anvil with the contracts, the sbatch
service, the project's Slurm cluster, and `grid-supervisor run` as a process. Three parts, one stack,
one supervisor (fresh store) per part; every figure is printed next to its target with PASS or MISS
(a miss never fails the script; an error in a part does, after the other parts ran).

1. single (`--single N`, default 20): N jobs one after the other, each writing `date +%s.%N` into a
   world-writable folder as the first and last lines of its step, with `sleep 1` between. Wall clocks
   of this machine, p50/p95/max in ms:
   - meta-scheduled -> claimed: the metaSchedule receipt returned (anvil automines; the receipt is
     polled every millisecond) -> the ClaimJobEvent first seen by a thread polling the chain
     (eth_blockNumber, then eth_getLogs of the new blocks) every 10 ms;
   - claimed -> submitted to Slurm: -> the job first seen by a thread polling
     `squeue -h -a -o '%i|%j|%Z|%t'` every 20 ms (only while a job is awaited in Slurm);
   - Slurm start -> RUNNING on chain: the earlier of the job seen running by that thread and the
     step's first line -> the JobTransitionEvent to RUNNING first seen;
   - script end -> final status on chain: the step's last line -> the transition to the end status.
2. burst (`--jobs N`, default 500): N jobs `true` meta-scheduled in one block, the supervisor with
   `max_queued_jobs = --max-queued` (default N). Block timestamps and sacct (1-second resolution):
   meta-scheduled -> claimed, Slurm end -> reported. This machine's clock, from the meta-scheduling
   block mined to each job first seen in squeue (sampled every 200 ms): meta-scheduled -> in Slurm,
   and the intake rate (jobs in Slurm per second) against a bare loop of sbatch run as the Unix user
   the supervisor submitted as, in the same run; the most of this run's jobs pending in Slurm at once;
   the provider's claim transactions (claimNextJob, claimNextJobs) mined with status 0 (receipts of
   its transactions in the blocks of the part).
3. tracked (`--tracked N`, default 5000): jobs `sleep 3000` brought through the grid (requested,
   meta-scheduled, claimed, submitted; nearly all stay PENDING, the node runs only a few), first
   `--tracked-base` (default 10), then N. Each time, with the daemon idle, over `--window` seconds
   (default 60): JSON-RPC calls per work cycle (a counting reverse proxy in front of anvil is the
   supervisor's rpc_url; batch elements count as calls; cycles from the supervisor's metrics), the
   daemon's VmRSS, and its CPU (utime+stime from /proc/<pid>/stat; its waited-for children, the Slurm
   commands, shown apart). Every Slurm job of the run is cancelled at the end.

Job ids are a counter per deployment and Slurm job names are job ids on a shared cluster: the counter
is moved to a random number of at least a million on anvil (other chains, other runs of this bench use
small ids, and the daemon knows its Slurm jobs by name), and this run's Slurm jobs are told apart by
their work dir (the stack's own jobs folder).

Run: .venv/bin/python benchmarks/daemon_bench.py [--parts single,burst,tracked] [--single 20]
     [--jobs 500] [--max-queued N] [--tracked 5000] [--tracked-base 10] [--window 60] [--keep]
     [--chain-poll S] [--slurm-poll S] [--submitter auto|libslurm|sbatch] (the shipped settings unless told)
Quick: .venv/bin/python benchmarks/daemon_bench.py --single 5 --jobs 100 --tracked 300 --window 30
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon_bench_probes import (  # noqa: E402
    CallCount,
    ChainWatcher,
    CountingProxy,
    SqueueWatcher,
    cpu_times,
    memory_kb,
    metric,
    our_slurm_jobs,
    provider_transactions,
    scrape_metrics,
    summary,
)
from eth_account.signers.local import LocalAccount  # noqa: E402

from grid_dev.anvil import Anvil, free_port, start_anvil  # noqa: E402
from grid_protocol.jobs import JobStatus  # noqa: E402
from supervisor.config import ChainSettings, PolicySettings  # noqa: E402
from supervisor.slurm.settings import JobUserSettings  # noqa: E402
from tests.fixtures.contracts import CREDIT, Grid, deploy_grid  # noqa: E402
from tests.fixtures.slurm import SlurmCluster, ensure_cluster_up  # noqa: E402
from tests.fixtures.supervisor import (  # noqa: E402
    ProviderStack,
    SupervisorProcess,
    credits_per_minute,
    open_provider_stack,
    wait_for,
)

LOCKED_CREDITS = 100
#: The tracked jobs lock enough for a time limit (about 90 minutes) far beyond the run.
TRACKED_CREDITS = 1000
CPUS, MEM_MB, GPUS = 1, 1024, 0
#: Job ids are a counter restarting at each deployment, and Slurm job names are job ids: the counter
#: (JobRepository.jobIdCounter, storage slot 1 after AccessControl's roles) is moved to a random number
#: this high, far from the ids of other test chains and of other runs of this bench on the shared
#: cluster. Should that slot not hold the counter, requests left pending skip SKIPPED_IDS instead.
FIRST_ID_AT_LEAST = 10**6
JOB_ID_COUNTER_SLOT = 1
SKIPPED_IDS = 300
#: Enough room for a few hundred transactions in one block.
BLOCK_GAS_LIMIT = 2_000_000_000
#: Transactions per block when many are sent (requests, meta-scheduling).
CHUNK = 500
CHAIN_POLL_S = 0.01
SQUEUE_POLL_S = 0.02
BURST_SQUEUE_POLL_S = 0.2
#: The supervisor's own limit on max_queued_jobs (supervisor/config.py).
MAX_QUEUED_LIMIT = 10_000
COLD = tuple(int(s) for s in JobStatus if s.is_cold)
PARTS = ("single", "burst", "tracked")


# -- the report ---------------------------------------------------------------------------------


@dataclass
class Table:
    """A part's figures, each with its target and PASS/MISS (None: no target, information only)."""

    title: str
    notes: list[str] = field(default_factory=list)
    rows: list[tuple[str, str, str, bool | None]] = field(default_factory=list)
    error: str | None = None

    def distribution(self, label: str, values: list[float], unit: str, target: float | None) -> None:
        """p50/p95/max of `values`; the target applies to the p95."""
        figures = summary(values)
        decimals = 0 if unit == "ms" else 1
        if figures is None:
            verdict = None if target is None else False
            self.rows.append((label, "no samples", f"p95 <= {target:g} {unit}" if target else "", verdict))
            return
        p50, p95, top = figures
        text = f"{p50:9.{decimals}f} {p95:9.{decimals}f} {top:9.{decimals}f}   n={len(values)}"
        if target is None:
            self.rows.append((label, text, "", None))
        else:
            self.rows.append((label, text, f"p95 <= {target:g} {unit}", p95 <= target))

    def value(self, label: str, text: str, target: str = "", passed: bool | None = None) -> None:
        self.rows.append((label, text, target, passed))

    def print(self) -> None:
        print()
        print(f"== {self.title}")
        for note in self.notes:
            print(f"   {note}")
        if self.error:
            print(f"   PART FAILED: {self.error}")
        if not self.rows:
            return
        print(f"   {'figure':46} {'p50':>9} {'p95':>9} {'max':>9}          {'target':28} result")
        for label, text, target, passed in self.rows:
            verdict = "" if passed is None else ("PASS" if passed else "MISS")
            print(f"   {label:46} {text:39} {target:28} {verdict}".rstrip())


# -- chain helpers ------------------------------------------------------------------------------


def request_jobs(stack: ProviderStack, customer: LocalAccount, keys: list[str], credits: int) -> list[bytes]:
    """One PENDING job per batch script key, CHUNK to a block; returns the job ids in order."""
    grid = stack.grid
    grid.send(customer, grid.credit.functions.approve(grid.scheduler.address, len(keys) * credits * CREDIT))
    name = b"bench".ljust(32, b"\0")
    ids: list[bytes] = []
    for at in range(0, len(keys), CHUNK):
        calls = [
            grid.scheduler.functions.requestNewJob(
                (GPUS, MEM_MB, CPUS, 1, key, 0, [], []), credits * CREDIT, name, False
            )
            for key in keys[at : at + CHUNK]
        ]
        for receipt in grid.send_in_one_block(customer.address, calls, gas=1_500_000):
            (event,) = grid.events(grid.scheduler, "NewJobRequestEvent", receipt)
            ids.append(bytes(event["args"]["_jobId"]))
    return ids


def move_job_ids(grid: Grid, stack: ProviderStack) -> str:
    """Make this run's job ids unique on the shared cluster; says how."""
    counter = grid.jobs.functions.jobIdCounter
    before = int(counter().call())
    start = random.randrange(FIRST_ID_AT_LEAST, 1000 * FIRST_ID_AT_LEAST)
    address, slot = grid.jobs.address, hex(JOB_ID_COUNTER_SLOT)
    grid.anvil.rpc("anvil_setStorageAt", [address, slot, "0x" + start.to_bytes(32, "big").hex()])
    if int(counter().call()) == start:
        return f"job ids from {start + 1} (jobIdCounter set on anvil)"
    grid.anvil.rpc("anvil_setStorageAt", [address, slot, "0x" + before.to_bytes(32, "big").hex()])
    filler = stack.store_workflow("true", cpus=CPUS, mem=MEM_MB, gpus=GPUS)
    request_jobs(stack, grid.customers[4], [filler] * SKIPPED_IDS, LOCKED_CREDITS)
    return f"job ids from {before + SKIPPED_IDS + 1} ({SKIPPED_IDS} requests left pending first)"


def meta_schedule(grid: Grid, provider: str, job_ids: list[bytes]) -> list[Any]:
    """metaSchedule each job to the provider, CHUNK to a block; returns the receipts."""
    receipts: list[Any] = []
    for at in range(0, len(job_ids), CHUNK):
        calls = [grid.scheduler.functions.metaSchedule(j, provider) for j in job_ids[at : at + CHUNK]]
        receipts += grid.send_in_one_block(grid.oracle.address, calls, gas=1_000_000)
    return receipts


def meta_schedule_one(grid: Grid, job_id: bytes, provider: str) -> tuple[float, float]:
    """metaSchedule one job; returns (sent, receipt seen) wall clocks, the receipt polled every ms."""
    sent = time.time()
    tx_hash = grid.scheduler.functions.metaSchedule(job_id, provider).transact(
        {"from": grid.oracle.address, "gas": 1_000_000}
    )
    deadline = time.monotonic() + 30
    while True:
        receipt: Any = grid.anvil.rpc("eth_getTransactionReceipt", ["0x" + bytes(tx_hash).hex()])
        if receipt is not None:
            if int(receipt["status"], 16) != 1:
                raise RuntimeError("metaSchedule reverted")
            return sent, time.time()
        if time.monotonic() > deadline:
            raise RuntimeError("metaSchedule not mined within 30 s")
        time.sleep(0.001)


# -- Slurm helpers ------------------------------------------------------------------------------


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
    for at in range(0, len(ids), 1000):
        subprocess.run(["scancel", *ids[at : at + 1000]], capture_output=True, timeout=120, check=False)
    return len(ids)


def foreign_jobs() -> int:
    listing = subprocess.run(["squeue", "-h", "-a"], capture_output=True, text=True, timeout=60, check=False)
    return len(listing.stdout.splitlines())


def slurm_config() -> dict[str, str]:
    result = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    config: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the bench ----------------------------------------------------------------------------------


@dataclass
class Daemon:
    """A started supervisor and its metrics port."""

    process: SupervisorProcess
    metrics_port: int

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    def metrics(self) -> dict[str, float]:
        return scrape_metrics(self.metrics_port)

    def log_events(self, event: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for line in self.process.text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == event:
                    found.append(record)
        return found


@dataclass
class Bench:
    args: argparse.Namespace
    cluster: SlurmCluster
    anvil: Anvil
    grid: Grid
    stack: ProviderStack
    stamps: Path
    bare_dir: Path
    bare_name: str
    tag: str

    @property
    def jobs_dir(self) -> Path:
        return self.stack.shared / "jobs"

    @property
    def provider(self) -> str:
        return str(self.stack.provider.address)

    @contextlib.contextmanager
    def supervisor(self, *, rpc_url: str | None = None, **policy: Any) -> Iterator[Daemon]:
        """A supervisor with a fresh store, started and ready inside; stopped when leaving."""
        slurm: dict[str, Any] = {"submitter": self.args.submitter}
        with contextlib.ExitStack() as exits:
            if self.args.wakeup:
                target = f"127.0.0.1:{free_udp_port()}"
                exits.enter_context(self.cluster.wakeups_to(target))
                slurm["wakeup_listen"] = target
            port = free_port()
            policy.setdefault("slurm_poll_seconds", self.args.slurm_poll)
            process = self.stack.supervisor(
                rpc_url=rpc_url,
                metrics_port=port,
                slurm=slurm,
                chain_poll_seconds=self.args.chain_poll,
                **policy,
            )
            process.start()
            exits.callback(process.stop)
            daemon = Daemon(process, port)
            self.stack.wait_registered()

            def ready() -> bool:
                if not process.running():
                    raise RuntimeError(f"the supervisor exited: see {process.log}")
                try:
                    return metric(daemon.metrics(), "ready") == 1
                except OSError:
                    return False

            wait_for("the supervisor to be ready", ready, timeout=90, interval=0.2)
            print(
                f"   supervisor {process.config.stem} ready (pid {daemon.pid}); log: {process.log}",
                flush=True,
            )
            yield daemon


# -- part 1: single jobs ------------------------------------------------------------------------


@dataclass
class SingleSample:
    name: str
    sent: float
    meta: float
    claimed: float | None = None
    submitted: float | None = None
    slurm_running: float | None = None
    first_line: float | None = None
    last_line: float | None = None
    chain_running: float | None = None
    final: float | None = None
    status: str = "did not end"


def read_stamp(path: Path) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        return float(path.read_text().strip())
    return None


def part_single(bench: Bench, count: int) -> Table:
    grid, stack = bench.grid, bench.stack
    table = Table(f"1. single jobs, one after the other ({count} jobs, wall clocks of this machine)")
    customer = grid.customers[0]
    samples: list[SingleSample] = []
    with bench.supervisor() as daemon:
        watcher = ChainWatcher(
            grid.anvil.http_url, grid.deployment.meta_scheduler, grid.deployment.job_repository, CHAIN_POLL_S
        )
        squeue = SqueueWatcher(bench.jobs_dir, SQUEUE_POLL_S, only_wanted=True)
        watcher.start()
        squeue.start()
        try:
            for i in range(count):
                token = f"{bench.tag}-single-{i}"
                first, last = bench.stamps / f"{token}.first", bench.stamps / f"{token}.last"
                command = f"date +%s.%N > {first}; sleep 1; date +%s.%N > {last}"
                key = stack.store_workflow(command, cpus=CPUS, mem=MEM_MB, gpus=GPUS)
                (job_id,) = request_jobs(stack, customer, [key], LOCKED_CREDITS)
                name = stack.slurm_name(job_id)
                squeue.want(name)
                time.sleep(random.uniform(0, 0.5))  # no phase lock with the daemon's polling periods
                sent, meta = meta_schedule_one(grid, job_id, bench.provider)
                sample = SingleSample(name, sent, meta)
                samples.append(sample)
                with contextlib.suppress(AssertionError):
                    wait_for(
                        f"job {name[-6:]} to end on chain",
                        functools.partial(watcher.reached, job_id, COLD),
                        timeout=bench.args.single_timeout,
                        interval=0.05,
                    )
                for status in COLD:
                    if watcher.reached(job_id, [status]) is not None:
                        sample.status = JobStatus(status).name
                if sample.status == "FINISHED":
                    with contextlib.suppress(AssertionError):
                        wait_for("the step's last line", functools.partial(read_stamp, last), 10, 0.05)
                sample.claimed = watcher.claimed(job_id)
                sighting = squeue.sighting(name)
                if sighting is not None:
                    sample.submitted, sample.slurm_running = sighting.first_seen, sighting.running
                sample.first_line, sample.last_line = read_stamp(first), read_stamp(last)
                sample.chain_running = watcher.reached(job_id, [JobStatus.RUNNING])
                sample.final = watcher.reached(job_id, COLD)
                print(f"   single job {i + 1}/{count}: {sample.status}", flush=True)
        finally:
            watcher.stop()
            squeue.stop()
        unix_users = {str(r.get("unix_user")) for r in daemon.log_events("job submitted to Slurm")}

    def spans(
        start: Callable[[SingleSample], float | None], end: Callable[[SingleSample], float | None]
    ) -> list[float]:
        found: list[float] = []
        for sample in samples:
            a, b = start(sample), end(sample)
            if a is not None and b is not None:
                found.append((b - a) * 1000)
        return found

    def slurm_start(sample: SingleSample) -> float | None:
        seen = [t for t in (sample.slurm_running, sample.first_line) if t is not None]
        return min(seen) if seen else None

    statuses = Counter(s.status for s in samples)
    table.notes += [
        f"end statuses: {dict(statuses)}; jobs ran as {sorted(unix_users)}",
        "step: `date +%s.%N > first; sleep 1; date +%s.%N > last` (1 CPU, 1024 MB, 0 GPU)",
        f"chain watcher (eth_blockNumber + eth_getLogs): {watcher.stats.describe()}"
        + (f"; {watcher.errors} failed looks" if watcher.errors else ""),
        f"squeue watcher (while a job is awaited in Slurm): {squeue.stats.describe()}"
        + (f"; {squeue.errors} failed looks" if squeue.errors else ""),
        "metaSchedule moment: its receipt returned (polled every 1 ms); send -> receipt took "
        + _ms_summary(spans(lambda s: s.sent, lambda s: s.meta)),
        "Slurm start: the earlier of squeue showing the job running and the step's first line",
    ]
    table.distribution(
        "meta-scheduled -> claimed (ms)", spans(lambda s: s.meta, lambda s: s.claimed), "ms", 100
    )
    table.distribution(
        "claimed -> submitted to Slurm (ms)", spans(lambda s: s.claimed, lambda s: s.submitted), "ms", 150
    )
    table.distribution(
        "Slurm start -> RUNNING on chain (ms)", spans(slurm_start, lambda s: s.chain_running), "ms", 300
    )
    table.distribution(
        "script end -> final status on chain (ms)", spans(lambda s: s.last_line, lambda s: s.final), "ms", 500
    )
    table.distribution(
        "  info: squeue running -> step's first line",
        spans(lambda s: s.slurm_running, lambda s: s.first_line),
        "ms",
        None,
    )
    table.distribution(
        "  info: meta-scheduled -> final status", spans(lambda s: s.meta, lambda s: s.final), "ms", None
    )
    return table


def _ms_summary(values: list[float]) -> str:
    figures = summary(values)
    if figures is None:
        return "(no samples)"
    return f"p50 {figures[0]:.1f} ms, p95 {figures[1]:.1f} ms, max {figures[2]:.1f} ms"


# -- part 2: the burst --------------------------------------------------------------------------


def bare_sbatch_rate(bench: Bench, count: int, user: str) -> float:
    """Jobs per second of sbatch alone (one job `true` of the same shape), one after the other, run as
    `user` in one shell loop (through runuser when it is not this process's user)."""
    loop = (
        f"for i in $(seq {count}); do sbatch --parsable -J {shlex.quote(bench.bare_name)} "
        f"-p {shlex.quote(bench.cluster.partition)} --ntasks=1 --cpus-per-task={CPUS} --mem-per-cpu={MEM_MB} "
        f"--time=9 --chdir={shlex.quote(str(bench.bare_dir))} -o /dev/null --wrap true >/dev/null || exit 1; done"
    )
    me = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    argv = ["bash", "-c", loop] if user == me else ["runuser", "-u", user, "--", "bash", "-c", loop]
    began = time.monotonic()
    subprocess.run(argv, capture_output=True, timeout=max(120, count), check=True)
    return count / (time.monotonic() - began)


def configured_user(daemon: Daemon) -> str:
    """The job user of the supervisor's configuration (when no submission said it)."""
    config = tomllib.loads(daemon.process.config.read_text())
    users = JobUserSettings(**config.get("slurm", {}).get("users", {}))
    return users.user_for("0x" + "0" * 40)


def part_burst(bench: Bench, count: int, max_queued: int) -> Table:
    grid, stack = bench.grid, bench.stack
    per_minute = credits_per_minute(1, CPUS, MEM_MB, GPUS) / CREDIT
    at_once = min(bench.cluster.cpus_per_node // CPUS, bench.cluster.memory_mb_per_node // (CPUS * MEM_MB))
    table = Table(f"2. burst: {count} jobs meta-scheduled in one block, max_queued_jobs = {max_queued}")
    customer = grid.customers[1]
    first_block = grid.w3.eth.block_number
    with bench.supervisor(max_queued_jobs=max_queued) as daemon:
        keys = [stack.store_workflow(f"true # {i}", cpus=CPUS, mem=MEM_MB, gpus=GPUS) for i in range(count)]
        job_ids = request_jobs(stack, customer, keys, LOCKED_CREDITS)
        names = {stack.slurm_name(j): j for j in job_ids}
        print(f"   {count} jobs requested; meta-scheduling them in one block", flush=True)
        others = foreign_jobs()
        squeue = SqueueWatcher(bench.jobs_dir, BURST_SQUEUE_POLL_S)
        squeue.start()
        try:
            wall_start = time.time()
            calls = [grid.scheduler.functions.metaSchedule(j, bench.provider) for j in job_ids]
            with grid.one_block():
                hashes = [c.transact({"from": grid.oracle.address, "gas": 1_000_000}) for c in calls]
            mined_at = time.time()
            receipts = grid.receipts_of_one_block(hashes)
            meta_block = receipts[0]["blockNumber"]
            ours = set(job_ids)
            finals: dict[bytes, Any] = {}
            read_to = meta_block - 1

            def ended() -> dict[bytes, Any]:
                """The end transitions so far, reading only the blocks not read yet (a rescan each
                second would take CPU from the daemon measured on this small machine)."""
                nonlocal read_to
                head = grid.w3.eth.block_number
                if head > read_to:
                    for log in grid.jobs.events.JobTransitionEvent().get_logs(
                        from_block=read_to + 1, to_block=head
                    ):
                        job_id = bytes(log["args"]["_jobId"])
                        if job_id in ours and JobStatus(log["args"]["_to"]).is_cold:
                            finals[job_id] = log
                    read_to = head
                return finals

            with contextlib.suppress(AssertionError):  # the figures then cover the jobs that ended
                wait_for(
                    f"{count} jobs to end on chain",
                    lambda: len(ended()) == count,
                    timeout=bench.args.timeout,
                    interval=1.0,
                )
            finals = ended()
            wall_end = time.time()
        finally:
            squeue.stop()
        last_block = grid.w3.eth.block_number
        unix_users = sorted({str(r.get("unix_user")) for r in daemon.log_events("job submitted to Slurm")})
        user = unix_users[0] if len(unix_users) == 1 else configured_user(daemon)

    timestamps: dict[int, int] = {}

    def block_time(number: int) -> int:
        if number not in timestamps:
            timestamps[number] = int(grid.w3.eth.get_block(number)["timestamp"])
        return timestamps[number]

    meta_time = block_time(meta_block)
    claims = {
        bytes(log["args"]["jobId"]): log
        for log in grid.scheduler.events.ClaimJobEvent().get_logs(from_block=meta_block)
        if bytes(log["args"]["jobId"]) in ours
    }

    def accounted() -> dict[str, dict[str, str]] | None:
        found = {n: r for n, r in sacct_jobs(bench.jobs_dir, wall_start).items() if n in names}
        return found if len(found) == count else None

    try:
        accounting: dict[str, dict[str, str]] = wait_for("sacct to account for every job", accounted, 60, 1.0)
    except AssertionError:
        accounting = {n: r for n, r in sacct_jobs(bench.jobs_dir, wall_start).items() if n in names}
    to_claim = [float(block_time(claims[j]["blockNumber"]) - meta_time) for j in job_ids if j in claims]
    submits = {n: slurm_time(r["submit"]) for n, r in accounting.items()}
    to_report = [
        block_time(finals[names[n]]["blockNumber"]) - slurm_time(r["end"])
        for n, r in accounting.items()
        if r["end"] not in ("", "Unknown") and names[n] in finals
    ]
    statuses = Counter(JobStatus(log["args"]["_to"]).name for log in finals.values())
    # The intake is timed on this machine's clock: from the meta-scheduling block mined to each job
    # first seen in squeue (sampled every BURST_SQUEUE_POLL_S), sacct's Submit for one never seen.
    in_slurm = {
        n: squeue.seen[n].first_seen if n in squeue.seen else submits[n] + 0.5
        for n in names
        if n in squeue.seen or n in submits
    }
    unseen = sum(1 for n in in_slurm if n not in squeue.seen)
    to_submit = [moment - mined_at for moment in in_slurm.values()]
    intake_seconds = max(in_slurm.values()) - mined_at if in_slurm else math.inf
    intake = len(in_slurm) / intake_seconds if intake_seconds > 0 else math.inf
    last_report = (
        max((block_time(log["blockNumber"]) for log in finals.values()), default=meta_time) - meta_time
    )
    transactions = provider_transactions(grid.w3, grid.scheduler, bench.provider, first_block, last_block)

    print(f"   bare sbatch loop: {count} submissions as {user}", flush=True)
    try:
        bare = bare_sbatch_rate(bench, count, user)
    finally:
        cancel_leftovers(bench.jobs_dir, bench.bare_name)

    table.notes += [
        f"jobs `true` ({CPUS} CPU, {MEM_MB} MB, {GPUS} GPU, {per_minute:g} credits/min, {LOCKED_CREDITS} "
        f"credits locked each); at most {at_once} run at once: about {math.ceil(count / at_once)} waves; "
        f"{others} other jobs were in Slurm at the start (the cluster is shared)",
        f"meta-scheduled in block {meta_block}; claimed/submitted/reported from anvil block timestamps "
        "(automine) and sacct Submit/End: 1-second resolution; the intake from the block mined to each "
        f"job first seen in squeue ({unseen} never seen there: sacct Submit + 0.5 s)",
        f"end statuses: {dict(statuses)}"
        + ("" if len(finals) == count else f" (only {len(finals)} of {count} ended within --timeout)")
        + f"; jobs submitted as {unix_users}; the bare loop ran as {user!r}",
        f"squeue sampled while the burst ran: {squeue.stats.describe()}",
        f"provider transactions to the MetaScheduler in blocks {first_block}..{last_block}: "
        f"{dict(transactions.sent)}, reverted {dict(transactions.reverted)}",
        f"last end reported {last_report} s after the meta-scheduling "
        f"(wall clock of the whole burst: {wall_end - wall_start:.0f} s)",
    ]
    table.distribution("meta-scheduled -> claimed (s)", to_claim, "s", None)
    table.distribution("meta-scheduled -> in Slurm (s, squeue)", to_submit, "s", None)
    table.distribution("Slurm end -> end reported on chain (s)", to_report, "s", None)
    table.value(
        "taken in (meta-scheduled -> in Slurm)",
        f"{intake:.2f} jobs/s ({len(in_slurm)} in {intake_seconds:.2f} s)",
    )
    table.value(f"bare sbatch loop as {user}", f"{bare:.2f} jobs/s ({count} submissions)")
    table.value("ratio taken in / bare", f"{intake / bare:.2f}", ">= 0.8", intake / bare >= 0.8)
    table.value(
        "most jobs of the run pending in Slurm at once",
        f"{squeue.most_pending} (present: {squeue.most_present})",
        f"<= {max_queued}",
        squeue.most_pending <= max_queued,
    )
    claiming = ("claimNextJob", "claimNextJobs")
    reverted = sum(transactions.reverted[f] for f in claiming)
    table.value(
        "claim transactions reverted (status 0)",
        f"{reverted} of {sum(transactions.sent[f] for f in claiming)} ({len(claims)} jobs claimed)",
        "0",
        reverted == 0,
    )
    return table


# -- part 3: many tracked jobs ------------------------------------------------------------------


@dataclass
class Idle:
    """The daemon over a window in which nothing new happens."""

    tracked: int
    seconds: float
    cycles: float
    calls: CallCount
    cpu_own_s: float
    cpu_children_s: float
    rss_max_kb: int
    hwm_kb: int
    transactions_sent: float
    quiet: bool

    @property
    def calls_per_cycle(self) -> float:
        return self.calls.calls / self.cycles if self.cycles else math.inf

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_own_s / self.seconds

    @property
    def children_percent(self) -> float:
        return 100 * self.cpu_children_s / self.seconds


#: Seconds without one more tracked job in Slurm after which the tracked part stops waiting.
STALL_S = 120.0


def wait_tracked(bench: Bench, daemon: Daemon, names: set[str], timeout: float) -> tuple[int, float]:
    """Wait until every job of `names` is in Slurm (squeue, by work dir), or until none more came for
    STALL_S seconds; returns how many are, and when the last of them was seen first (monotonic)."""
    seen = [0, time.monotonic()]  # jobs in Slurm, when that number last grew

    def all_in_or_stalled() -> bool:
        if not daemon.process.running():
            raise RuntimeError(f"the supervisor exited: see {daemon.process.log}")
        count = len(names & set(our_slurm_jobs(bench.jobs_dir)))
        if count > seen[0]:
            seen[:] = [count, time.monotonic()]
        return count == len(names) or time.monotonic() - seen[1] > STALL_S

    began = time.monotonic()
    with contextlib.suppress(AssertionError):
        wait_for(f"{len(names)} jobs in Slurm", all_in_or_stalled, timeout=timeout, interval=2.0)
    held = int(seen[0])
    print(
        f"   {held} of {len(names)} tracked jobs in Slurm after {time.monotonic() - began:.0f} s"
        + ("" if held == len(names) else f" (gave up: none more for {STALL_S:g} s or --tracked-timeout)"),
        flush=True,
    )
    return held, seen[1]


def wait_quiet(daemon: Daemon, quiet_s: float = 5.0, timeout: float = 180.0) -> bool:
    """Wait until the supervisor sends no transaction and holds none in its outbox for `quiet_s`."""
    last_sent: list[float | None] = [None]
    since = [time.monotonic()]

    def quiet() -> bool:
        values = daemon.metrics()
        sent, depth = metric(values, "transactions_sent"), metric(values, "outbox_depth")
        now = time.monotonic()
        if sent != last_sent[0] or depth != 0:
            last_sent[0], since[0] = sent, now
        return now - since[0] >= quiet_s

    try:
        wait_for("the supervisor to be idle", quiet, timeout=timeout, interval=0.5)
        return True
    except AssertionError:
        return False


def measure_idle(daemon: Daemon, proxy: CountingProxy, tracked: int, window: float) -> Idle:
    """Calls, cycles, CPU and memory of the daemon over `window` seconds, reading only /proc meanwhile."""
    quiet = wait_quiet(daemon)
    before = daemon.metrics()
    calls_before, cpu_before = proxy.snapshot(), cpu_times(daemon.pid)
    rss_max = 0
    deadline = cpu_before.at + window
    while time.monotonic() < deadline:
        rss_max = max(rss_max, memory_kb(daemon.pid)["VmRSS"])
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    cpu_after, calls_after = cpu_times(daemon.pid), proxy.snapshot()
    after = daemon.metrics()
    memory = memory_kb(daemon.pid)
    rss_max = max(rss_max, memory["VmRSS"])

    def delta(name: str) -> float:
        return (metric(after, name) or 0.0) - (metric(before, name) or 0.0)

    sent = delta("transactions_sent")
    return Idle(
        tracked=tracked,
        seconds=cpu_after.at - cpu_before.at,
        cycles=delta("work_cycles"),
        calls=calls_after.minus(calls_before),
        cpu_own_s=cpu_after.own - cpu_before.own,
        cpu_children_s=cpu_after.children - cpu_before.children,
        rss_max_kb=rss_max,
        hwm_kb=memory.get("VmHWM", 0),
        transactions_sent=sent,
        quiet=quiet and sent == 0,
    )


def part_tracked(bench: Bench, count: int, base: int, window: float) -> Table:
    grid, stack = bench.grid, bench.stack
    limit = min(max(count, base), MAX_QUEUED_LIMIT)
    table = Table(
        f"3. tracked jobs: {base}, then {count} jobs `sleep 3000` held by the supervisor, idle; "
        f"slurm_poll_seconds {bench.args.slurm_poll:g}"
    )
    customer = grid.customers[2]
    proxy = CountingProxy(grid.anvil.http_url)
    idles: list[Idle] = []
    intake = ""
    try:
        with bench.supervisor(rpc_url=proxy.url, max_queued_jobs=limit) as daemon:
            key = stack.store_workflow("sleep 3000", cpus=CPUS, mem=MEM_MB, gpus=GPUS)
            wanted: set[str] = set()
            previous = 0
            for size in (base, count):
                grow = size - len(wanted)
                ids = request_jobs(stack, customer, [key] * grow, TRACKED_CREDITS)
                began = time.monotonic()
                meta_schedule(grid, bench.provider, ids)
                wanted |= {stack.slurm_name(j) for j in ids}
                print(
                    f"   {grow} more jobs meta-scheduled ({len(wanted)} in all); waiting for Slurm",
                    flush=True,
                )
                held, last_in = wait_tracked(bench, daemon, wanted, bench.args.tracked_timeout)
                if size == count:
                    seconds = max(last_in - began, 1e-3)
                    came = held - previous  # this step's jobs in Slurm
                    intake = (
                        f"{came} of {grow} more jobs into Slurm in {seconds:.0f} s after their meta-scheduling "
                        f"began ({came / seconds:.1f} jobs/s; sampled every 2 s)"
                    )
                previous = held
                print(f"   measuring the idle daemon over {window:g} s with {held} jobs tracked", flush=True)
                idles.append(measure_idle(daemon, proxy, held, window))
            slurm = Counter(our_slurm_jobs(bench.jobs_dir).values())
    finally:
        proxy.close()
        left = cancel_leftovers(bench.jobs_dir, bench.bare_name)
        print(f"   cancelled {left} jobs of the run in Slurm", flush=True)
    small, big = idles
    table.notes += [
        f"max_queued_jobs = {limit}; {TRACKED_CREDITS} credits locked each (time limit "
        f"{TRACKED_CREDITS * CREDIT // credits_per_minute(1, CPUS, MEM_MB, GPUS)} min); {intake}",
        f"this run's jobs in Slurm at the end, by state: {dict(slurm)}",
        "calls: JSON-RPC requests to the supervisor's rpc_url through a counting proxy (a batch counts "
        "its elements; WebSocket messages count too); cycles: grid_supervisor_work_cycles",
        "CPU: utime+stime of the daemon over the window (its Slurm commands, waited-for children, apart)",
        "the reconciler reads at most 100 open jobs on chain each reconcile_interval_seconds "
        f"({PolicySettings.model_fields['reconcile_interval_seconds'].default:g} s, its default): "
        "keep --window a multiple of it so both windows hold as many of those reads",
    ]
    for idle in idles:
        per_cycle = ", ".join(
            f"{method} {n / idle.cycles:.2f}"
            for method, n in idle.calls.methods.most_common(6)
            if idle.cycles
        )
        table.notes.append(
            f"{idle.tracked} tracked: {idle.seconds:.0f} s, {idle.cycles:g} cycles, {idle.calls.calls} calls "
            f"({idle.calls.calls / idle.seconds:.1f}/s) in {idle.calls.http_requests} HTTP requests and "
            f"{idle.calls.ws_messages} WebSocket messages, {idle.transactions_sent:g} transactions sent"
            f"{'' if idle.quiet else ' (NOT idle)'}; per cycle: {per_cycle}"
        )
    for idle in idles:
        table.value(f"chain calls per work cycle, {idle.tracked} tracked", f"{idle.calls_per_cycle:.2f}")
    independent = big.calls_per_cycle <= 1.25 * small.calls_per_cycle + 0.5
    table.value(
        f"calls per cycle {big.tracked} vs {small.tracked} tracked",
        f"x{big.calls_per_cycle / small.calls_per_cycle:.2f}" if small.calls_per_cycle else "n/a",
        "independent of N (<= x1.25)",
        independent,
    )
    table.value(
        f"work cycles per second, {small.tracked} / {big.tracked} tracked",
        f"{small.cycles / small.seconds:.2f} / {big.cycles / big.seconds:.2f}",
    )
    for idle in idles:
        table.value(
            f"daemon VmRSS, {idle.tracked} tracked",
            f"{idle.rss_max_kb / 1024:.1f} MB (VmHWM {idle.hwm_kb / 1024:.1f})",
            "<= 150 MB",
            idle.rss_max_kb / 1024 <= 150,
        )
    for idle in idles:
        table.value(
            f"daemon idle CPU, {idle.tracked} tracked",
            f"{idle.cpu_percent:.1f} % (+{idle.children_percent:.1f} % children)",
            "<= 2 %",
            idle.cpu_percent <= 2,
        )
    return table


# -- the run ------------------------------------------------------------------------------------


def machine_facts(cluster: SlurmCluster, config: dict[str, str]) -> list[str]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) // 1024} MB"
    at_once = min(cluster.cpus_per_node // CPUS, cluster.memory_mb_per_node // (CPUS * MEM_MB))
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return [
        f"machine: {os.cpu_count()} CPUs ({model}), {memory}, {platform.system()} {platform.release()}, "
        f"load average {load}",
        f"cluster: Slurm {cluster.slurm_version}, 1 node {cluster.node_name}: {cluster.cpus_per_node} CPUs, "
        f"{cluster.memory_mb_per_node} MB, {cluster.gpus_per_node} GPUs (declared; jobs share the real "
        f"cores): {at_once} jobs of {CPUS} CPU / {MEM_MB} MB at once; MaxJobCount "
        f"{config.get('MaxJobCount', '?')}, MinJobAge {config.get('MinJobAge', '?')}; "
        f"{foreign_jobs()} jobs in Slurm now",
    ]


def run(args: argparse.Namespace) -> int:
    began = time.monotonic()
    parts = [p for p in PARTS if p in args.parts]
    cluster = ensure_cluster_up()
    config = slurm_config()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    for line in machine_facts(cluster, config):
        print(line)
    print(
        f"supervisor: chain poll_interval_seconds {args.chain_poll:g} with the WebSocket hint, "
        f"slurm_poll_seconds {args.slurm_poll:g}, submitter {args.submitter}, "
        + (
            "Slurm's wake-up hook on (wakeup_listen)"
            if args.wakeup
            else "no Slurm wake-up hook (polling only)"
        )
    )
    max_jobs = int(config.get("MaxJobCount", "0") or 0)
    if "tracked" in parts and max_jobs and args.tracked + foreign_jobs() >= max_jobs:
        print(
            f"WARNING: MaxJobCount {max_jobs} limits --tracked {args.tracked}: Slurm refuses jobs beyond it"
        )
    if "tracked" in parts and args.tracked > MAX_QUEUED_LIMIT:
        print(f"WARNING: the supervisor accepts max_queued_jobs <= {MAX_QUEUED_LIMIT}: fewer are claimed")
    print(f"parts: {', '.join(parts)}", flush=True)

    needed = SKIPPED_IDS * LOCKED_CREDITS + max(
        args.single * LOCKED_CREDITS, args.jobs * LOCKED_CREDITS, args.tracked * TRACKED_CREDITS
    )
    workdir = Path(tempfile.mkdtemp(prefix="grid-daemon-bench-"))
    anvil = start_anvil(extra_args=["--gas-limit", str(BLOCK_GAS_LIMIT)])
    stack: ProviderStack | None = None
    bare_name = f"bench-bare-{uuid.uuid4().hex[:8]}"
    tables: list[Table] = []
    failed = False
    try:
        grid = deploy_grid(anvil, mint_credits=max(1_000_000, 2 * needed))
        stack = open_provider_stack(grid, cluster, workdir, name="grid-daemon-bench")
        stamps, bare_dir = stack.shared / "stamps", stack.shared / "bare"
        for folder in (stamps, bare_dir):
            folder.mkdir()
            folder.chmod(0o1777)
        bench = Bench(args, cluster, anvil, grid, stack, stamps, bare_dir, bare_name, uuid.uuid4().hex[:8])
        ids = move_job_ids(grid, stack)
        print(f"anvil {anvil.http_url}, protocol deployed, {ids}; files in {workdir}")
        runs: dict[str, Callable[[], Table]] = {
            "single": lambda: part_single(bench, args.single),
            "burst": lambda: part_burst(bench, args.jobs, args.max_queued or args.jobs),
            "tracked": lambda: part_tracked(bench, args.tracked, args.tracked_base, args.window),
        }
        for part in parts:
            print(f"\n-- part {part}", flush=True)
            part_began = time.monotonic()
            try:
                table = runs[part]()
            except Exception as exc:
                traceback.print_exc()
                failed = True
                table = Table(f"part {part}", error=f"{type(exc).__name__}: {exc}")
            finally:
                left = cancel_leftovers(bench.jobs_dir, bare_name)
                if left:
                    print(f"   cancelled {left} jobs left in Slurm", flush=True)
            table.notes.append(f"part took {time.monotonic() - part_began:.0f} s")
            tables.append(table)
    finally:
        if stack is not None:
            for supervisor in stack.supervisors:
                supervisor.stop()
            cancel_leftovers(stack.shared / "jobs", bare_name)
            stack.close()
        anvil.stop()
        if args.keep:
            print(f"kept the run's files (supervisor logs, stores) in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print("=" * 40 + " results " + "=" * 40)
    for table in tables:
        table.print()
    print()
    print(f"whole run took {time.monotonic() - began:.0f} s")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: single,burst,tracked")
    parser.add_argument("--single", type=int, default=20, help="jobs run one after the other (default 20)")
    parser.add_argument(
        "--single-timeout", type=float, default=60, help="seconds for one single job to end (default 60)"
    )
    parser.add_argument("--jobs", type=int, default=500, help="jobs meta-scheduled at once (default 500)")
    parser.add_argument(
        "--max-queued", type=int, default=None, help="the burst's max_queued_jobs (default: --jobs)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds to wait for every end of the burst (default 600)"
    )
    parser.add_argument(
        "--tracked", type=int, default=5000, help="jobs held by the supervisor (default 5000)"
    )
    parser.add_argument(
        "--tracked-base", type=int, default=10, help="the small number of tracked jobs compared (default 10)"
    )
    parser.add_argument(
        "--tracked-timeout", type=float, default=600, help="seconds for the tracked jobs to reach Slurm"
    )
    parser.add_argument(
        "--window", type=float, default=60, help="seconds of each idle measurement (default 60)"
    )
    parser.add_argument(
        "--chain-poll",
        type=float,
        default=ChainSettings.model_fields["poll_interval_seconds"].default,
        help="the supervisor's chain poll_interval_seconds (default: the shipped default); the "
        "WebSocket hint wakes it between polls",
    )
    parser.add_argument(
        "--slurm-poll",
        type=float,
        default=PolicySettings.model_fields["slurm_poll_seconds"].default,
        help="the supervisor's slurm_poll_seconds (default: the shipped default); with Slurm's wake-ups "
        "on, the poll is only the fallback",
    )
    parser.add_argument(
        "--no-wakeup",
        dest="wakeup",
        action="store_false",
        help="leave Slurm's wake-up hook out of the config",
    )
    parser.add_argument(
        "--submitter",
        choices=("auto", "libslurm", "sbatch"),
        default="auto",
        help="the supervisor's slurm.submitter (default auto: libslurm's call where its binding is built)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (supervisor logs, stores)")
    args = parser.parse_args()
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown or not args.parts:
        parser.error(f"--parts takes {','.join(PARTS)}, got {sorted(unknown) or 'nothing'}")
    for option in ("single", "jobs", "tracked", "tracked_base"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.tracked < args.tracked_base:
        parser.error("--tracked must be at least --tracked-base")
    if args.max_queued is not None and args.max_queued < 1:
        parser.error("--max-queued must be at least 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
