"""All 81 status pairs through the real JobRepository, with the protocol's error precedence."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from web3 import Web3

from grid_protocol.jobs import JobStatus, TransitionError, check_transition
from tests.fixtures.contracts import WORKED_EXAMPLE_DEFINITION, Grid, Reverted

ROLE = Web3.keccak(text="METASCHEDULER_ROLE")

# The table of PROTOCOL.md section 2, written out independently of the code under test.
ALLOWED = {
    (0, 1), (0, 4),
    (1, 0), (1, 2), (1, 4),
    (2, 0), (2, 3), (2, 4), (2, 6),
    (3, 5), (3, 6), (3, 4), (3, 7),
}  # fmt: skip
HOT = {0, 1, 2, 3}


def expected(current: int, nxt: int) -> tuple[str, tuple[int, ...]] | None:
    if current == nxt:
        return ("SameStatusError", ())
    if current not in HOT:
        return ("JobHotStatusOnly", (current,))
    if nxt == 8 or (current, nxt) in ALLOWED:
        return None
    return ("InvalidTransition", (current, nxt))


@pytest.fixture(scope="module")
def repository_writer(grid: Grid) -> Iterator[Grid]:
    """The admin gets JobRepository's writer role, as only MetaScheduler has it in a deployment."""
    snapshot = grid.snapshot()
    grid.send(grid.admin, grid.jobs.functions.grantRole(ROLE, grid.admin.address))
    yield grid
    grid.revert_to(snapshot)


def _create_job(grid: Grid, status: int) -> bytes:
    job = (
        b"\0" * 32,
        status,
        grid.customers[0].address,
        grid.providers[0].address,
        WORKED_EXAMPLE_DEFINITION,
        (100, 0, 0, False),
        (0, 0, 0, 0, 0, 0),
        b"\0" * 32,
        False,
        "",
        0,
    )
    receipt = grid.send(grid.admin, grid.jobs.functions.create(job))
    (created,) = grid.events(grid.jobs, "JobCreated", receipt)
    job_id: bytes = created["args"]["_jobId"]
    return job_id


def test_table_has_81_pairs_and_the_python_mirror_agrees() -> None:
    pairs = list(itertools.product(range(9), repeat=2))
    assert len(pairs) == 81
    for current, nxt in pairs:
        want = expected(current, nxt)
        try:
            check_transition(JobStatus(current), JobStatus(nxt))
            got = None
        except TransitionError as exc:
            got = (exc.error, exc.args_)
        assert got == want, (current, nxt)


@pytest.mark.parametrize("current", range(9), ids=lambda s: JobStatus(s).name)
def test_every_pair_on_chain(repository_writer: Grid, current: int) -> None:
    grid = repository_writer
    for nxt in range(9):
        job_id = _create_job(grid, current)
        want = expected(current, nxt)
        if want is None:
            receipt = grid.send(grid.admin, grid.jobs.functions.setJobStatus(job_id, nxt))
            (event,) = grid.events(grid.jobs, "JobTransitionEvent", receipt)
            assert (event["args"]["_from"], event["args"]["_to"]) == (current, nxt)
            assert grid.job(job_id)["status"] == nxt
        else:
            with pytest.raises(Reverted) as raised:
                grid.send(grid.admin, grid.jobs.functions.setJobStatus(job_id, nxt))
            assert (raised.value.error, raised.value.args_) == want, (current, nxt)
            assert grid.job(job_id)["status"] == current


def test_only_the_writer_role_changes_statuses(clean_grid: Grid) -> None:
    grid = clean_grid
    job_id = grid.request_job(grid.customers[0], 200 * 10**18)
    with pytest.raises(Reverted) as raised:
        grid.send(grid.customers[0], grid.jobs.functions.setJobStatus(job_id, 4))
    assert "missing role" in str(raised.value.args_[0])
