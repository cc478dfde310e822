"""Paths where a claimed job used to be lost or stuck, each driven step by step in this process.

Every test runs the real daemon (`tests/fixtures/daemon_seam.py`) over anvil with the contracts,
the sbatch service and the Slurm cluster, and checks the chain, the store and Slurm.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector

from grid_protocol.jobs import JobStatus as S
from supervisor import claimer
from supervisor.chain.contracts import ProtocolContracts, status_report_key
from supervisor.config import load_config
from supervisor.daemon import Daemon, LaneCrashed
from supervisor.store import SQLITE_MAX_INT, OutboxState, Store, StoreError
from tests.fixtures.contracts import CREDIT
from tests.fixtures.daemon_seam import DaemonSeam, register_as_the_cluster
from tests.fixtures.supervisor import PRICES_WEI, ProviderStack, credits_per_minute, wait_for

JOB_DEFINITION = "(uint64,uint64,uint64,uint64,string,uint8,(string,string)[],((string,string),bytes2)[])"


@pytest.fixture
def stack(provider_stack: ProviderStack) -> Iterator[ProviderStack]:
    register_as_the_cluster(provider_stack)
    yield provider_stack
    manager = provider_stack.grid.provider_manager.functions
    if manager.isBanned(provider_stack.provider.address).call():
        provider_stack.grid.send(provider_stack.grid.admin, manager.unban(provider_stack.provider.address))
    register_as_the_cluster(provider_stack)  # undo a test's prices


@pytest.fixture
async def seam(stack: ProviderStack, tmp_path: Path) -> AsyncIterator[DaemonSeam]:
    opened = await DaemonSeam.open(stack, tmp_path)
    try:
        yield opened
    finally:
        await opened.close()


def accounted(slurm_id: int, field: str = "State") -> str:
    """A field of Slurm's accounting record of a job, once slurmdbd has it."""

    def state() -> str:
        return subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", str(slurm_id), "-o", field],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()

    found: str = wait_for(f"Slurm job {slurm_id} in accounting", state, 30)
    return found


def refusals(stack: ProviderStack, job_id: bytes) -> int:
    events = stack.grid.scheduler.events.JobRefusedEvent().get_logs(from_block=0)
    return sum(1 for e in events if e["args"]["_jobId"] == job_id)


def transitions(stack: ProviderStack, job_id: bytes) -> list[int]:
    events = stack.grid.jobs.events.JobTransitionEvent().get_logs(from_block=0)
    return [e["args"]["_to"] for e in events if e["args"]["_jobId"] == job_id]


async def test_a_job_refused_twice_is_refused_twice(stack: ProviderStack, seam: DaemonSeam) -> None:
    job_id = stack.request("true", 600, cpus=16)  # more CPUs than a node has
    await seam.until("the first refusal", lambda: refusals(stack, job_id) == 1)
    assert stack.status(job_id) == S.PENDING
    stack.grid.schedule(job_id, stack.provider)  # the meta-scheduler hands it back: nothing else fits
    await seam.until("the second refusal", lambda: refusals(stack, job_id) == 2)
    assert stack.status(job_id) == S.PENDING
    record = seam.store.get_job("0x" + job_id.hex())
    assert record is not None and "refused" in (record.note or "")


async def test_a_job_taken_back_and_claimed_again_runs_in_a_new_slurm_job(
    stack: ProviderStack, seam: DaemonSeam
) -> None:
    grid = stack.grid
    job_id = stack.request("sleep 20", 500)
    key = "0x" + job_id.hex()
    await seam.until(
        "the first Slurm job", lambda: (record := seam.store.get_job(key)) is not None and record.slurm_job_id
    )
    first = seam.store.get_job(key)
    assert first is not None and first.slurm_job_id is not None
    # No cycle ran since the submission, so RUNNING is not reported yet: the job can be taken back,
    # and it is given to the same provider again before the supervisor acts on it.
    assert stack.status(job_id) == S.SCHEDULED
    grid.send(grid.oracle, grid.scheduler.functions.timeoutJob(job_id))
    grid.schedule(job_id, stack.provider)
    await seam.until(
        "the second claim",
        lambda: (
            (record := seam.store.get_job(key)) is not None and record.claimed_block != first.claimed_block
        ),
    )
    second = await seam.until(
        "the second Slurm job",
        lambda: (record := seam.store.get_job(key)) is not None and record.slurm_job_id,
    )
    assert second != first.slurm_job_id
    await seam.until(
        "the earlier attempt's Slurm job to be cancelled", lambda: not seam.store.orphan_slurm_jobs()
    )
    assert accounted(first.slurm_job_id).startswith("CANCELLED")
    await seam.until("the job to run", lambda: stack.status(job_id) == S.RUNNING)
    assert transitions(stack, job_id) == [
        S.META_SCHEDULED,
        S.SCHEDULED,
        S.PENDING,
        S.META_SCHEDULED,
        S.SCHEDULED,
        S.RUNNING,
    ]
    stack.scancel(int(second))


async def test_a_free_job_is_claimed_and_runs_under_a_ten_year_limit(
    stack: ProviderStack, seam: DaemonSeam
) -> None:
    """GPU-only prices and a job without GPU: zero credits a minute, 2^64-1 minutes bought."""
    register_as_the_cluster(stack, (PRICES_WEI[0], 0, 0))
    customer_before = stack.grid.balance(stack.customer)
    job_id = stack.request("echo free", 150, gpus=0)
    key = "0x" + job_id.hex()
    await seam.until("the claim", lambda: seam.store.get_job(key))
    record = seam.store.get_job(key)
    assert record is not None and record.max_duration_minute == SQLITE_MAX_INT
    slurm_id = await seam.until(
        "the submission", lambda: (r := seam.store.get_job(key)) is not None and r.slurm_job_id
    )
    assert accounted(int(slurm_id), "Timelimit") == "3650-00:00:00"
    await seam.until("the job to finish", lambda: stack.status(job_id) == S.FINISHED)
    assert stack.grid.job(job_id)["finalCost"] == 0
    assert stack.grid.balance(stack.customer) == customer_before


async def test_labels_that_are_not_utf8_are_refused_with_the_reason(
    stack: ProviderStack, seam: DaemonSeam
) -> None:
    grid, customer = stack.grid, stack.customer
    key = stack.store_workflow("true")
    # The label's value is the byte 0xff: encoded as `bytes`, which has the layout of `string`.
    definition: tuple[Any, ...] = (1, 1024, 1, 1, key, 4, [(b"os", b"\xff")], [])
    types = [JOB_DEFINITION.replace("string,string", "bytes,bytes"), "uint256", "bytes32", "bool"]
    selector = function_signature_to_4byte_selector(f"requestNewJob({JOB_DEFINITION},uint256,bytes32,bool)")
    data = selector + encode(types, [definition, 150 * CREDIT, b"utf8".ljust(32, b"\0"), False])
    grid.send(customer, grid.credit.functions.approve(grid.scheduler.address, 150 * CREDIT))
    tx = grid.w3.eth.send_transaction({"from": customer.address, "to": grid.scheduler.address, "data": data})
    assert grid.w3.eth.wait_for_transaction_receipt(tx)["status"] == 1
    job_id = (grid.jobs.functions.jobIdCounter().call()).to_bytes(32, "big")
    grid.schedule(job_id, stack.provider)
    await seam.until("the refusal", lambda: refusals(stack, job_id) == 1)
    record = seam.store.get_job("0x" + job_id.hex())
    assert record is not None and "uses[0] label is not UTF-8" in (record.note or "")
    status, provider = grid.jobs.functions.getStatusAndProvider(job_id).call()  # no string to decode
    assert (status, provider) == (S.PENDING, "0x" + "0" * 40)


async def test_a_state_file_of_another_deployment_is_refused(stack: ProviderStack, tmp_path: Path) -> None:
    store = Store.open(tmp_path / "seam.sqlite")
    store.bind_deployment(31337, "0x000000000000000000000000000000000000bEEF")
    store.close()
    with pytest.raises(
        StoreError, match="belongs to the MetaScheduler 0x000000000000000000000000000000000000bEEF"
    ):
        await DaemonSeam.open(stack, tmp_path)


async def test_a_job_the_chain_cannot_answer_for_does_not_hold_up_the_others(
    stack: ProviderStack, seam: DaemonSeam
) -> None:
    ghost = "0x" + "ee" * 32  # never created on this deployment: reading it reverts InvalidJob()
    seam.store.record_claim(
        ghost, customer=stack.customer.address, max_duration_minute=5, definition={}, claimed_block=1
    )
    job_id = stack.request("echo fine", 500)
    await seam.until("the other job to finish", lambda: stack.status(job_id) == S.FINISHED)
    assert seam.daemon.health.chain_ok


async def test_an_end_report_refused_during_a_ban_is_sent_again(
    stack: ProviderStack, seam: DaemonSeam
) -> None:
    grid = stack.grid
    provider_before = grid.balance(stack.provider)
    job_id = stack.request("sleep 4", 500)
    key = "0x" + job_id.hex()
    await seam.until("the job to run", lambda: stack.status(job_id) == S.RUNNING)
    grid.send(grid.admin, grid.provider_manager.functions.ban(stack.provider.address))
    record = seam.store.get_job(key)
    assert record is not None
    report_key = status_report_key(key, record.claimed_block or 0, S.FINISHED)

    def refused() -> bool:
        action = seam.store.action_by_dedup_key(report_key)
        return action is not None and action.state == OutboxState.FAILED

    await seam.until("the end report to be refused", refused)
    action = seam.store.action_by_dedup_key(report_key)
    assert action is not None and "ProviderNotJoined" in (action.error or "")
    assert stack.status(job_id) == S.RUNNING
    grid.send(grid.admin, grid.provider_manager.functions.unban(stack.provider.address))
    await seam.until("the job to settle", lambda: stack.status(job_id) == S.FINISHED)
    action = seam.store.action_by_dedup_key(report_key)
    assert action is not None and action.state == OutboxState.MINED and action.retries >= 1
    duration = stack.reported_duration(job_id, S.FINISHED)
    final_cost = max(duration, 1) * credits_per_minute(1, 1, 1024, 1)
    assert grid.job(job_id)["finalCost"] == final_cost
    assert grid.balance(stack.provider) - provider_before == final_cost - final_cost * 20 // 100


async def test_claims_are_sized_by_the_jobs_still_claimable(stack: ProviderStack, seam: DaemonSeam) -> None:
    """Stale entries (jobs taken back after they were queued) are not claimed for: no claim reverts."""
    grid = stack.grid
    stale = [stack.request("true", 300) for _ in range(3)]
    for job_id in stale:
        grid.send(grid.oracle, grid.scheduler.functions.timeoutJob(job_id))
    live = [stack.request("echo live", 300) for _ in range(2)]
    await seam.follow()
    await seam.cycle()
    assert seam.store.open_claims("claim_next_job") == 2, "two jobs claimable, in one batch claim"
    await seam.deliver()
    claims = seam.store.connection.execute(
        "SELECT state, error, claims FROM outbox WHERE kind = 'claim_next_job'"
    ).fetchall()
    assert [(row["state"], row["error"], row["claims"]) for row in claims] == [("mined", None, 2)]
    assert [stack.status(job_id) for job_id in live] == [S.SCHEDULED, S.SCHEDULED]
    await seam.until("both jobs to finish", lambda: all(stack.status(j) == S.FINISHED for j in live))


async def test_the_cycle_looks_at_the_queues_only_when_they_may_have_changed(
    stack: ProviderStack, seam: DaemonSeam, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle cycle asks the chain nothing about the provider's queues; a block read since the last
    look (a job meta-scheduled, whose hint was not answered) makes the next cycle look and claim it."""
    looks: list[str] = []
    ask = ProtocolContracts.provider_queues

    async def counted(contracts: ProtocolContracts, provider: str) -> Any:
        looks.append(provider)
        return await ask(contracts, provider)

    monkeypatch.setattr(ProtocolContracts, "provider_queues", counted)
    await seam.follow()
    await seam.cycle()
    await seam.deliver()
    await seam.follow()
    await seam.cycle()  # the queues were empty at the block now read
    first = len(looks)
    for _ in range(3):
        await seam.cycle()
    assert len(looks) == first, "no block, an empty queue, the look interval not over: no look"
    job_id = stack.request("true", 300)  # meta-scheduled to this provider in a new block
    await seam.follow()
    await seam.cycle()
    assert len(looks) == first + 1 and seam.store.open_claims("claim_next_job") == 1
    await seam.deliver()
    await seam.follow()
    await seam.until("the job to finish", lambda: stack.status(job_id) == S.FINISHED)
    monkeypatch.setattr(claimer, "QUEUE_LOOK_S", 0.0)
    before = len(looks)
    await seam.cycle()
    assert len(looks) == before + 1, "past the look interval, the cycle looks however quiet the chain"


class BrokenListener:
    """A listener whose end-of-cycle hook raises, as a faulty metrics exporter would."""

    def ready(self, daemon: Daemon) -> None:
        pass

    def cycle_done(self, daemon: Daemon) -> None:
        raise RuntimeError("the exporter broke")

    def stopping(self, daemon: Daemon) -> None:
        pass

    def waiting(self, daemon: Daemon, what: str) -> None:
        pass


async def test_a_lane_that_crashes_stops_the_daemon_naming_the_lane(
    stack: ProviderStack, tmp_path: Path
) -> None:
    config = tmp_path / "lane.toml"
    config.write_text(stack.config_text(tmp_path / "lane.sqlite"))
    daemon = Daemon(load_config(config), listeners=[BrokenListener()])
    with pytest.raises(LaneCrashed, match=r"the work lane crashed: .*the exporter broke"):
        await asyncio.wait_for(daemon.run(), 120)
    assert daemon.cycles == 1, "the first cycle ran, then the lane stopped the daemon"
    reopened = Store.open(tmp_path / "lane.sqlite")  # shut down cleanly: the state file opens again
    reopened.close()


async def test_a_job_waiting_in_slurm_is_looked_at_again_when_it_is_topped_up(
    stack: ProviderStack, seam: DaemonSeam
) -> None:
    """Cycles pass over a job that waits in Slurm with nothing to do; a top-up changes its record, and
    the next cycle raises its Slurm time limit to the minutes now paid for."""
    blocker = stack.block_cpus()
    try:
        job_id = stack.request("echo waited", 200)
        key = "0x" + job_id.hex()
        slurm_id = await seam.until(
            "the submission", lambda: (r := seam.store.get_job(key)) is not None and r.slurm_job_id
        )
        for _ in range(3):  # quiet cycles: the job waits, nothing is decided for it
            await seam.step()
        record = seam.store.get_job(key)
        assert record is not None and record.extra_minutes == 0
        assert accounted_limit(int(slurm_id)) == record.max_duration_minute
        grid = stack.grid
        grid.send(stack.customer, grid.credit.functions.approve(grid.scheduler.address, 300 * CREDIT))
        grid.send(stack.customer, grid.scheduler.functions.topUpJob(job_id, 300 * CREDIT))
        topped = await seam.until(
            "the top-up recorded",
            lambda: (r := seam.store.get_job(key)) is not None and r.extra_minutes > 0 and r,
        )
        wanted = topped.max_duration_minute + topped.extra_minutes
        await seam.until("the time limit raised", lambda: accounted_limit(int(slurm_id)) == wanted)
        assert stack.status(job_id) == S.SCHEDULED
    finally:
        stack.scancel(blocker)


def accounted_limit(slurm_id: int) -> int:
    """The Slurm job's time limit in minutes, as the controller holds it now (`[days-]h:m:s`)."""
    shown = subprocess.run(
        ["squeue", "-h", "-j", str(slurm_id), "-o", "%l"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    days, _, clock = shown.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    hours, minutes, seconds = [0] * (3 - len(parts)) + parts
    return int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)
