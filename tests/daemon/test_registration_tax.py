"""A grid that charges a registration tax: the supervisor approves it, waits while it cannot pay."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.contracts import CREDIT, Grid
from tests.fixtures.slurm import SlurmCluster
from tests.fixtures.supervisor import ProviderStack, open_provider_stack, wait_for

TAX = 7 * CREDIT


@pytest.fixture
def taxed_stack(grid: Grid, slurm_cluster: SlurmCluster, tmp_path: Path) -> Iterator[ProviderStack]:
    stack = open_provider_stack(grid, slurm_cluster, tmp_path)
    treasury = grid.customers[4]
    grid.send(
        grid.admin,
        grid.provider_manager.functions.setProviderRegistrationTax(
            grid.credit.address, TAX, treasury.address
        ),
    )
    try:
        yield stack
    finally:
        stack.close()


def test_the_supervisor_pays_the_tax_once_it_holds_the_credits(taxed_stack: ProviderStack) -> None:
    stack, grid = taxed_stack, taxed_stack.grid
    treasury, provider = grid.customers[4], stack.provider
    assert grid.balance(provider) == 0
    treasury_before = grid.balance(treasury)
    supervisor = stack.supervisor()
    supervisor.start()

    wait_for(
        "the supervisor to say why it cannot register",
        lambda: "waiting for the provider registration" in supervisor.text(),
        60,
    )
    assert supervisor.running()
    assert grid.provider_manager.functions.isWaitingForApproval(provider.address).call() is False
    assert grid.provider_manager.functions.isValidForScheduling(provider.address).call() is False

    grid.send(grid.customers[0], grid.credit.functions.transfer(provider.address, 10 * CREDIT))
    stack.wait_registered()
    assert grid.balance(treasury) - treasury_before == TAX
    assert grid.balance(provider) == 10 * CREDIT - TAX
    assert "registration tax approved" in supervisor.text()
    assert grid.credit.functions.allowance(provider.address, grid.provider_manager.address).call() == 0
    # The failed registrations were one outbox row, queued again at each retry.
    with sqlite3.connect(supervisor.config.with_suffix(".sqlite")) as db:
        rows = db.execute("SELECT state, retries FROM outbox WHERE kind = 'register'").fetchall()
    assert len(rows) == 1 and rows[0][0] == "mined" and rows[0][1] >= 1
