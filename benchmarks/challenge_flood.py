"""The sbatch service under a flood of AuthAPI.Challenge calls, over loopback only.

A real `grid-sbatch serve` on a real anvil with the deployed protocol. For each configuration it
sends a warm-up, then `--requests` Challenge calls from 127.0.0.1 (`--concurrency` at a time) while
a supervisor's real fetch (Challenge, then GetSBatch) runs from [::1], another address. It prints
what the flood got (issued, refused with RESOURCE_EXHAUSTED), its rate, the service's resident
memory before, at its peak and after, the challenges left in the database, and how long the fetch
took during the flood.

Run: .venv/bin/python benchmarks/challenge_flood.py [--requests 10000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grid_dev.anvil import start_anvil  # noqa: E402
from supervisor.chain.keys import Signer  # noqa: E402
from supervisor.sbatch.client import SbatchClient  # noqa: E402
from tests.fixtures.contracts import CREDIT, WORKED_EXAMPLE_DEFINITION, Grid, deploy_grid  # noqa: E402
from tests.fixtures.sbatch import SbatchProcess, start_sbatch_service  # noqa: E402
from tests.sbatch_service.flood import Flood, flood_challenges  # noqa: E402

WORKFLOW = {
    "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 512, "gpus": 0},
    "steps": [{"name": "hello", "run": {"command": "echo benchmark"}}],
}
CONFIGURATIONS = {
    "default limits (10/s, burst 50, 10000 outstanding)": {},
    "rate limit lifted, 1000 outstanding": {
        "GRID_SBATCH_CHALLENGE_RATE_PER_SECOND": "1000000",
        "GRID_SBATCH_CHALLENGE_BURST": "1000000",
        "GRID_SBATCH_CHALLENGE_MAX_OUTSTANDING": "1000",
    },
}


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


async def fetch_during(flood: Flood, grid: Grid, target: str, job_id: str, key: str) -> float:
    while flood.sent < flood.count // 10:
        await asyncio.sleep(0.01)
    client = SbatchClient(target, Signer(grid.providers[0]), timeout_s=30)
    started = time.perf_counter()
    try:
        await client.fetch(job_id, grid.customers[0].address, key)
    finally:
        await client.close()
    if flood.finished:
        raise RuntimeError("the flood ended before the fetch was answered: use more --requests")
    return time.perf_counter() - started


async def run_one(
    grid: Grid, workdir: Path, env: dict[str, str], requests: int, concurrency: int
) -> tuple[Flood, Flood, float, int]:
    service: SbatchProcess = start_sbatch_service(
        workdir,
        rpc_url=grid.anvil.http_url,
        metascheduler_address=grid.deployment.meta_scheduler,
        extra_env={"GRID_SBATCH_GRPC_HOST": "localhost", **env},
    )
    try:
        key = service.submit(WORKFLOW)
        definition = (*WORKED_EXAMPLE_DEFINITION[:4], key, *WORKED_EXAMPLE_DEFINITION[5:])
        job = grid.request_job(grid.customers[0], 200 * CREDIT, definition)
        grid.schedule(job, grid.providers[0])
        pid, port = service.process.pid, service.grpc_port
        warm = await flood_challenges(f"127.0.0.1:{port}", Flood(500), pid=pid, concurrency=concurrency)
        flood = Flood(requests)
        _, fetch_s = await asyncio.gather(
            flood_challenges(f"127.0.0.1:{port}", flood, pid=pid, concurrency=concurrency),
            fetch_during(flood, grid, f"[::1]:{port}", "0x" + job.hex(), key),
        )
        with sqlite3.connect(service.database) as db:
            outstanding = int(db.execute("SELECT COUNT(*) FROM challenges").fetchone()[0])
    finally:
        service.stop()
    return warm, flood, fetch_s, outstanding


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="challenge-flood-") as folder:
        anvil = start_anvil(log_path=Path(folder) / "anvil.log")
        try:
            grid = deploy_grid(anvil)
            grid.register_provider(grid.providers[0])
            for n, (name, env) in enumerate(CONFIGURATIONS.items()):
                warm, flood, fetch_s, outstanding = await run_one(
                    grid, Path(folder) / f"sbatch-{n}", env, args.requests, args.concurrency
                )
                if flood.other_errors:
                    raise RuntimeError(f"unexpected answers: {flood.other_errors[:3]}")
                print(f"== {name}")
                print(
                    f"  flood      {flood.count} calls in {flood.seconds:.2f} s "
                    f"({flood.count / flood.seconds:.0f}/s): {flood.issued} issued, "
                    f"{flood.refused} RESOURCE_EXHAUSTED (warm-up: {warm.issued} of {warm.count} issued)"
                )
                print(
                    f"  memory     RSS {mib(flood.rss_before_kib)} before, {mib(flood.rss_peak_kib)} peak, "
                    f"{mib(flood.rss_after_kib)} after: {flood.rss_growth_kib:+d} KiB"
                )
                print(f"  table      {outstanding} challenges outstanding in the database")
                print(f"  supervisor fetch from another address during the flood: {fetch_s * 1000:.0f} ms")
        finally:
            anvil.stop()


if __name__ == "__main__":
    asyncio.run(main())
