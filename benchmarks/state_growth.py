"""Per-cycle bookkeeping and memory of the supervisor's state file as closed jobs pile up.

Usage: .venv/bin/python benchmarks/state_growth.py [--sizes 100,1000,10000] [--cycles 200]

For each size N it builds a real state file (`supervisor.store.Store`) holding N closed jobs, each
with its claim and two status reports delivered (signed attempts included), plus 8 open jobs, then
measures in a fresh process what the daemon's work loop does with the store every cycle: list the
open jobs, count the outbox, and take the metrics snapshot's figures. It prints the median and p95
time of one such cycle and the process's peak RSS, and the time of one retention pass.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.ops.state import transaction_figures
from supervisor.store import Store, TxAttempt

OPEN_JOBS = 8
RAW_TX = bytes(180)  # about the size of a signed report


def build(path: Path, closed: int) -> None:
    store = Store.open(path)
    nonce = 0
    with store.transaction():
        for i in range(closed + OPEN_JOBS):
            job = f"0x{i:064x}"
            store.record_claim(
                job,
                customer="0x" + "22" * 20,
                max_duration_minute=60,
                definition={"ntasks": 1},
                claimed_block=i,
            )
            for kind, serial in (
                ("claim_next_job", None),
                ("provider_set_job_status", job),
                ("provider_set_job_status", job),
            ):
                action = store.enqueue(
                    kind=kind, to_address="0x" + "11" * 20, data=b"\x01" * 100, serial_key=serial
                )
                store.record_attempt(
                    action,
                    TxAttempt(
                        f"0x{nonce:064x}", action, nonce, RAW_TX, 200_000, 10**9, 10**8, None, 1.0, 1.0
                    ),
                )
                store.mark_mined(action, tx_hash=f"0x{nonce:064x}", block_number=i, receipt_status=1)
                nonce += 1
            if i < closed:
                store.update_job(job, closed=True, status=5)
    store.close()


def measure(path: str, cycles: int) -> None:
    """Run in a child process: the store's part of `cycles` work cycles; prints JSON figures."""
    store = Store.open(path)
    times = []
    for _ in range(cycles):
        start = time.perf_counter()
        jobs = store.open_jobs()
        store.outbox_depth()
        store.oldest_open_action_age(time.time())
        transaction_figures(store)
        store.job_counts()
        times.append(time.perf_counter() - start)
        assert len(jobs) == OPEN_JOBS
    start = time.perf_counter()
    store.prune(time.time() - 14 * 86400)
    prune_s = time.perf_counter() - start
    times.sort()
    print(
        json.dumps(
            {
                "median_ms": statistics.median(times) * 1000,
                "p95_ms": times[int(len(times) * 0.95) - 1] * 1000,
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "prune_ms": prune_s * 1000,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.cycles)
        return
    print(f"state file per work cycle ({OPEN_JOBS} open jobs, {args.cycles} cycles, fresh process per size)")
    print(
        f"  {'closed jobs':>12} {'file MB':>8} {'median ms':>10} {'p95 ms':>8} {'peak RSS MB':>12} {'prune ms':>9}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for size in (int(s) for s in args.sizes.split(",")):
            path = Path(folder) / f"state-{size}.sqlite"
            build(path, size)
            out = subprocess.run(
                [sys.executable, __file__, "--measure", str(path), "--cycles", str(args.cycles)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            print(
                f"  {size:>12,d} {path.stat().st_size / 2**20:>8.1f} {figures['median_ms']:>10.3f} "
                f"{figures['p95_ms']:>8.3f} {figures['rss_mb']:>12.1f} {figures['prune_ms']:>9.1f}"
            )


if __name__ == "__main__":
    main()
