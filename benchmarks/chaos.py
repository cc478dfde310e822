"""A chaos run over the whole provider stack, printing what struck and what it found.

Usage: .venv/bin/python benchmarks/chaos.py [--jobs 126] [--seed 7]

Starts anvil with the contracts, the sbatch service and the project's Slurm cluster, runs
`grid-supervisor run` behind a TCP proxy to the RPC, and requests short jobs while the supervisor is
SIGKILLed (at random and at its crash points), the RPC hangs or is cut, and the sbatch service
restarts (`tests/fixtures/chaos.py`). Then it checks every job: FINISHED, one Slurm job, each
transition once, the settlement to the wei.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grid_dev.anvil import start_anvil
from tests.fixtures.chain_layer import TcpProxy
from tests.fixtures.chaos import chaos_run
from tests.fixtures.contracts import deploy_grid
from tests.fixtures.slurm import ensure_cluster_up
from tests.fixtures.supervisor import open_provider_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=126)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    cluster = ensure_cluster_up()
    anvil = start_anvil()
    try:
        grid = deploy_grid(anvil)
        with tempfile.TemporaryDirectory() as workdir:
            stack = open_provider_stack(grid, cluster, Path(workdir), name="grid-chaos")
            proxy = TcpProxy(anvil.port)
            supervisor = stack.supervisor(rpc_url=proxy.http_url, max_queued_jobs=8)
            try:
                report = chaos_run(stack, proxy, supervisor, jobs=args.jobs, seed=args.seed)
            finally:
                supervisor.stop()
                proxy.close()
                stack.close()
    finally:
        anvil.stop()
    print(f"chaos run: {report.jobs} jobs in {report.seconds:.0f} s, seed {args.seed}")
    for event, count in sorted(report.events.items()):
        print(f"  {event:18s} {count:>4d}")
    print(f"  claims reverted NoJob(): {report.claim_reverts}")
    print(f"  problems: {len(report.problems)}")
    for problem in report.problems:
        print(f"    {problem}")
    sys.exit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
