"""Pricing as Tools.creditsPerMin computes it (PROTOCOL.md section 3)."""

from __future__ import annotations

from grid_protocol.jobs import JobDefinition
from grid_protocol.pricing import ProviderPrices, credits_per_minute, remaining_minutes

#: The worked example's prices and job: 10.56384 credits a minute.
WORKED_PRICES = ProviderPrices(8_500_000_000_000_000_000, 950_000_000_000_000_000, 80_000_000_000_000)


def definition(ntasks: int, cpus: int, mem: int, gpus: int) -> JobDefinition:
    return JobDefinition(gpus, mem, cpus, ntasks, "", 0, (), ())


def test_the_worked_example() -> None:
    per_minute = credits_per_minute(definition(ntasks=1, cpus=2, mem=1024, gpus=1), WORKED_PRICES)
    assert per_minute == 10_563_840_000_000_000_000
    assert remaining_minutes(max_cost=200 * 10**18, credits_per_minute=per_minute, elapsed_seconds=0) == 18


def test_every_task_pays_its_cpus_and_memory_the_gpus_once() -> None:
    prices = ProviderPrices(gpu_price_per_min=100, cpu_price_per_min=10, mem_price_per_min=1)
    assert (
        credits_per_minute(definition(ntasks=3, cpus=2, mem=5, gpus=2), prices) == 3 * (2 * 10 + 2 * 5) + 200
    )


def test_a_free_job_never_runs_out() -> None:
    assert remaining_minutes(max_cost=0, credits_per_minute=0, elapsed_seconds=10**9) == 2**63
