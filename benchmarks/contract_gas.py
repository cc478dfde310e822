"""Gas used by each provider-side call for the worked example's job (PROTOCOL.md section 3).

Usage: .venv/bin/python benchmarks/contract_gas.py
Starts its own anvil, deploys the compiled contracts and prints one line per call.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grid_dev.anvil import start_anvil
from grid_protocol.jobs import JobStatus
from tests.fixtures.contracts import CREDIT, Grid, deploy_grid


def running_job(grid: Grid, gas: dict[str, int]) -> bytes:
    provider = grid.providers[0]
    job_id = grid.request_job(grid.customers[0], 200 * CREDIT)
    grid.schedule(job_id, provider)
    receipt = grid.send(provider, grid.scheduler.functions.claimNextJob())
    gas.setdefault("claimNextJob", receipt["gasUsed"])
    call = grid.scheduler.functions.providerSetJobStatus(job_id, JobStatus.RUNNING, 0, "", 0)
    receipt = grid.send(provider, call)
    gas.setdefault("providerSetJobStatus(RUNNING)", receipt["gasUsed"])
    return job_id


def main() -> None:
    anvil = start_anvil()
    try:
        grid = deploy_grid(anvil)
        provider, customer = grid.providers[0], grid.customers[0]
        grid.register_provider(provider)
        gas: dict[str, int] = {}

        job_id = running_job(grid, gas)
        grid.advance_time(10 * 60 + 5)
        call = grid.scheduler.functions.providerSetJobStatus(job_id, JobStatus.FINISHED, 10, "", 0)
        gas["providerSetJobStatus(FINISHED)"] = grid.send(provider, call)["gasUsed"]

        job_id = running_job(grid, gas)
        grid.send(customer, grid.scheduler.functions.cancelJob(job_id))
        gas["claimNextCancellingJob"] = grid.send(
            provider, grid.scheduler.functions.claimNextCancellingJob()
        )["gasUsed"]

        job_id = running_job(grid, gas)
        grid.send(customer, grid.credit.functions.approve(grid.scheduler.address, 50 * CREDIT))
        grid.send(customer, grid.scheduler.functions.topUpJob(job_id, 50 * CREDIT))
        gas["claimNextTopUpJob"] = grid.send(provider, grid.scheduler.functions.claimNextTopUpJob())[
            "gasUsed"
        ]
    finally:
        anvil.stop()

    print("gas used by provider-side calls (worked example: 1 GPU, 2 CPUs, 1024 MB/CPU, 200 credits)")
    for name, used in gas.items():
        print(f"  {name:34s} {used:>9,d}")


if __name__ == "__main__":
    main()
