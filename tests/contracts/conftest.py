"""A market for the contract tests: provider 0 registered at the worked example's prices and approved."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from grid_protocol.jobs import JobStatus
from tests.fixtures.contracts import CREDIT, Grid


@pytest.fixture(scope="module")
def market_base(grid: Grid) -> Grid:
    grid.register_provider(grid.providers[0])
    return grid


@pytest.fixture
def market(market_base: Grid) -> Iterator[Grid]:
    """The module's market, rolled back after each test."""
    snapshot = market_base.snapshot()
    try:
        yield market_base
    finally:
        market_base.revert_to(snapshot)


def job_in(grid: Grid, status: JobStatus, *, credits: int = 200 * CREDIT, **request: Any) -> bytes:
    """A job of customer 0 brought to `status` on provider 0 through the real protocol calls."""
    customer, provider = grid.customers[0], grid.providers[0]
    job_id = grid.request_job(customer, credits, **request)
    if status == JobStatus.PENDING:
        return job_id
    if status == JobStatus.CANCELLED:
        grid.send(customer, grid.scheduler.functions.cancelJob(job_id))
        return job_id
    if status == JobStatus.PANICKED:
        grid.send(grid.oracle, grid.scheduler.functions.panicJob(job_id, "lost"))
        return job_id
    grid.schedule(job_id, provider)
    if status == JobStatus.META_SCHEDULED:
        return job_id
    grid.claim(provider)
    if status == JobStatus.SCHEDULED:
        return job_id
    grid.send(provider, grid.scheduler.functions.providerSetJobStatus(job_id, JobStatus.RUNNING, 0, "", 0))
    if status == JobStatus.RUNNING:
        return job_id
    grid.send(provider, grid.scheduler.functions.providerSetJobStatus(job_id, status, 1, "", 0))
    return job_id
