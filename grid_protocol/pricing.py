"""What a job costs on a provider, as Tools.creditsPerMin computes it (PROTOCOL.md section 3), and
how long its locked credits last: one formula for the supervisor, the meta-scheduler and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Demand(Protocol):
    """What pricing reads of a job definition (`grid_protocol.jobs.JobDefinition` has it)."""

    @property
    def ntasks(self) -> int: ...
    @property
    def cpus_per_task(self) -> int: ...
    @property
    def mem_per_cpu(self) -> int: ...
    @property
    def gpus(self) -> int: ...


@dataclass(frozen=True)
class ProviderPrices:
    """A provider's prices, in credit-wei per unit-minute (ProviderManager.getProviderPrices)."""

    gpu_price_per_min: int
    cpu_price_per_min: int
    mem_price_per_min: int


def credits_per_minute(definition: Demand, prices: ProviderPrices) -> int:
    """Credit-wei a minute of the job costs: each task's CPUs and their memory, then the GPUs."""
    per_task = (
        definition.cpus_per_task * prices.cpu_price_per_min
        + definition.cpus_per_task * definition.mem_per_cpu * prices.mem_price_per_min
    )
    return definition.ntasks * per_task + definition.gpus * prices.gpu_price_per_min


def remaining_minutes(*, max_cost: int, credits_per_minute: int, elapsed_seconds: int) -> int:
    """Minutes a running job may still run with the credits it has, as the contract counts them."""
    if credits_per_minute <= 0:
        return 2**63
    total = max_cost // credits_per_minute
    return max(0, total - elapsed_seconds // 60)
