"""Each MetaScheduler function's effects, and each revert of PROTOCOL.md section 4 with its arguments."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from grid_protocol.jobs import JobStatus as S
from tests.contracts.conftest import job_in
from tests.fixtures.contracts import CREDIT, WORKED_EXAMPLE_DEFINITION, Grid, Reverted

ZERO = "0x0000000000000000000000000000000000000000"


def reverts(grid: Grid, who: LocalAccount | str, call: Any) -> tuple[str, tuple[Any, ...]]:
    with pytest.raises(Reverted) as raised:
        grid.send(who, call)
    return raised.value.error, raised.value.args_


def missing_role(grid: Grid, who: LocalAccount, call: Any) -> bool:
    error, args = reverts(grid, who, call)
    return error == "reason" and "missing role" in str(args[0])


# ------------------------------------------------------------------ requestNewJob


def test_request_new_job_locks_credits_in_a_pending_job(market: Grid) -> None:
    g, customer = market, market.customers[0]
    before = g.balance(customer)
    first = g.request_job(customer, 200 * CREDIT, delegate=True)
    second = g.request_job(customer, 150 * CREDIT)
    assert int.from_bytes(second, "big") == int.from_bytes(first, "big") + 1
    job = g.job(first)
    assert job["status"] == S.PENDING
    assert job["customerAddr"] == customer.address
    assert job["providerAddr"] == ZERO
    assert job["maxCost"] == 200 * CREDIT
    assert job["delegateSpendingAuthority"] is True
    assert job["submit"] > 0
    assert tuple(job["definition"][:5]) == WORKED_EXAMPLE_DEFINITION[:5]
    assert g.balance(customer) == before - 350 * CREDIT
    assert g.balance(g.scheduler.address) == 350 * CREDIT
    assert g.jobs.functions.getByCustomer(customer.address).call() == [first, second]


def test_request_new_job_refusals_in_order(market: Grid) -> None:
    g, customer = market, market.customers[0]
    request = g.scheduler.functions.requestNewJob
    name = b"\0" * 32
    g.send(customer, g.credit.functions.approve(g.scheduler.address, 10**6 * CREDIT))
    g.send(g.admin, g.scheduler.functions.setEnableRequestNewJob(False))
    assert reverts(g, customer, request(WORKED_EXAMPLE_DEFINITION, 1, name, False)) == (
        "NewJobRequestDisabled",
        (),
    )
    g.send(g.admin, g.scheduler.functions.setEnableRequestNewJob(True))
    bad: tuple[object, ...] = (0, 1024, 0, 1, "k", 0, [], [])
    assert reverts(g, customer, request(bad, 99 * CREDIT, name, False)) == (
        "InsufficientFunds",
        (99 * CREDIT, 100 * CREDIT),
    )
    for field in (1, 2, 3):
        invalid = list(WORKED_EXAMPLE_DEFINITION)
        invalid[field] = 0
        assert reverts(g, customer, request(tuple(invalid), 100 * CREDIT, name, False)) == (
            "InvalidJobDefinition",
            (),
        )
    poor = g.providers[1]  # holds no credits
    error, args = reverts(g, poor, request(WORKED_EXAMPLE_DEFINITION, 100 * CREDIT, name, False))
    assert error == "reason" and "ERC20" in str(args[0])
    assert g.jobs.functions.getByCustomer(customer.address).call() == []


def test_only_the_admin_toggles_requests_and_withdraws(market: Grid) -> None:
    g = market
    assert missing_role(g, g.customers[0], g.scheduler.functions.setEnableRequestNewJob(False))
    assert missing_role(g, g.customers[0], g.scheduler.functions.withdrawAdmin(0))
    assert g.scheduler.functions.enableRequestNewJob().call() is True


# ------------------------------------------------------------------ metaSchedule and claims


def test_meta_schedule_queues_the_job_for_the_provider(market: Grid) -> None:
    g, provider = market, market.providers[0]
    job_id = g.request_job(g.customers[0], 200 * CREDIT)
    assert g.queues.functions.hasNextClaimableJob(provider.address).call() is False
    g.schedule(job_id, provider)
    job = g.job(job_id)
    assert (job["status"], job["providerAddr"]) == (S.META_SCHEDULED, provider.address)
    assert g.queues.functions.hasNextClaimableJob(provider.address).call() is True
    assert g.queues.functions.getClaimableJobQueueSize(provider.address).call() == 1


def test_meta_schedule_refusals(market: Grid) -> None:
    g, provider = market, market.providers[0]
    job_id = g.request_job(g.customers[0], 200 * CREDIT)
    assert missing_role(g, g.customers[0], g.scheduler.functions.metaSchedule(job_id, provider.address))
    unapproved = g.providers[1]
    assert reverts(g, g.oracle, g.scheduler.functions.metaSchedule(job_id, unapproved.address)) == (
        "ProviderNotJoined",
        (),
    )
    g.schedule(job_id, provider)
    assert reverts(g, g.oracle, g.scheduler.functions.metaSchedule(job_id, provider.address)) == (
        "SameStatusError",
        (),
    )
    cancelled = job_in(g, S.CANCELLED)
    assert reverts(g, g.oracle, g.scheduler.functions.metaSchedule(cancelled, provider.address)) == (
        "JobHotStatusOnly",
        (S.CANCELLED,),
    )


def test_claim_next_job_emits_the_definition_and_duration(market: Grid) -> None:
    g, customer, provider = market, market.customers[0], market.providers[0]
    job_id = g.request_job(customer, 200 * CREDIT)
    g.schedule(job_id, provider)
    args = g.claim(provider)
    assert args["customerAddr"] == customer.address
    assert args["providerAddr"] == provider.address
    assert args["jobId"] == job_id
    assert args["maxDurationMinute"] == 18  # floor(200 / 10.56384)
    definition = args["jobDefinition"]
    fields = ("gpus", "memPerCpu", "cpusPerTask", "ntasks", "batchLocationHash")
    assert tuple(definition[f] for f in fields) == WORKED_EXAMPLE_DEFINITION[:5]
    assert g.job(job_id)["status"] == S.SCHEDULED
    assert g.queues.functions.hasNextClaimableJob(provider.address).call() is False


def test_claim_refusals(market: Grid) -> None:
    g = market
    stranger, provider = g.providers[1], g.providers[0]
    for fn in ("claimNextJob", "claimNextCancellingJob", "claimNextTopUpJob"):
        assert reverts(g, stranger, getattr(g.scheduler.functions, fn)()) == ("ProviderNotJoined", ())
        assert reverts(g, provider, getattr(g.scheduler.functions, fn)()) == ("NoJob", ())


def test_banned_provider_cannot_claim(market: Grid) -> None:
    g, provider = market, market.providers[0]
    job_id = g.request_job(g.customers[0], 200 * CREDIT)
    g.schedule(job_id, provider)
    g.send(g.admin, g.provider_manager.functions.ban(provider.address))
    assert reverts(g, provider, g.scheduler.functions.claimNextJob()) == ("ProviderNotJoined", ())


# ------------------------------------------------------------------ providerSetJobStatus


def test_running_starts_the_clock_and_counts_the_job(market: Grid) -> None:
    g, provider = market, market.providers[0]
    job_id = job_in(g, S.SCHEDULED)
    receipt = g.send(provider, g.scheduler.functions.providerSetJobStatus(job_id, S.RUNNING, 0, "", 0))
    job = g.job(job_id)
    assert job["status"] == S.RUNNING
    assert job["start"] == g.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert g.provider_manager.functions.getJobCount(provider.address).call() == 1


def test_provider_set_job_status_refusals_in_order(market: Grid) -> None:
    g, provider, other = market, market.providers[0], market.providers[1]
    g.register_provider(other)
    job_id = job_in(g, S.SCHEDULED)
    set_status = g.scheduler.functions.providerSetJobStatus
    assert reverts(g, g.customers[0], set_status(job_id, S.RUNNING, 0, "", 0)) == ("ProviderNotJoined", ())
    assert reverts(g, other, set_status(job_id, S.RUNNING, 0, "", 0)) == (
        "JobProviderOnly",
        (other.address, provider.address),
    )
    for hot in (S.PENDING, S.META_SCHEDULED, S.SCHEDULED):
        assert reverts(g, provider, set_status(job_id, hot, 0, "", 0)) == ("RunningColdStatusOnly", (hot,))
    assert reverts(g, provider, set_status(job_id, S.OUT_OF_CREDITS, 0, "", 0)) == (
        "InvalidTransition",
        (S.SCHEDULED, S.OUT_OF_CREDITS),
    )
    g.send(provider, set_status(job_id, S.RUNNING, 0, "", 0))
    assert reverts(g, provider, set_status(job_id, S.RUNNING, 0, "", 0)) == ("SameStatusError", ())
    g.send(provider, set_status(job_id, S.FAILED, 3, "exit 3", 3))
    assert reverts(g, provider, set_status(job_id, S.FINISHED, 3, "", 0)) == ("JobHotStatusOnly", (S.FAILED,))
    job = g.job(job_id)
    assert (job["status"], job["lastError"], job["exitCode"]) == (S.FAILED, "exit 3", 3)


# ------------------------------------------------------------------ refuseJob and timeoutJob


@pytest.mark.parametrize("status", [S.META_SCHEDULED, S.SCHEDULED])
def test_refuse_returns_the_job_to_pending(market: Grid, status: S) -> None:
    g, customer, provider = market, market.customers[0], market.providers[0]
    job_id = job_in(g, status)
    receipt = g.send(provider, g.scheduler.functions.refuseJob(job_id))
    (event,) = g.events(g.scheduler, "JobRefusedEvent", receipt)
    assert dict(event["args"]) == {
        "_jobId": job_id,
        "_providerAddr": provider.address,
        "_customerAddr": customer.address,
    }
    job = g.job(job_id)
    assert (job["status"], job["providerAddr"]) == (S.PENDING, ZERO)
    assert g.balance(g.scheduler.address) == 200 * CREDIT


def test_refuse_refusals(market: Grid) -> None:
    g, provider, other = market, market.providers[0], market.providers[1]
    g.register_provider(other)
    job_id = job_in(g, S.RUNNING)
    assert reverts(g, g.customers[0], g.scheduler.functions.refuseJob(job_id)) == ("ProviderNotJoined", ())
    assert reverts(g, other, g.scheduler.functions.refuseJob(job_id)) == (
        "JobProviderOnly",
        (other.address, provider.address),
    )
    assert reverts(g, provider, g.scheduler.functions.refuseJob(job_id)) == (
        "MetaScheduledScheduledStatusOnly",
        (S.RUNNING,),
    )


def test_timeout_recycles_an_unclaimed_job(market: Grid) -> None:
    g, provider = market, market.providers[0]
    job_id = job_in(g, S.META_SCHEDULED)
    assert missing_role(g, provider, g.scheduler.functions.timeoutJob(job_id))
    receipt = g.send(g.oracle, g.scheduler.functions.timeoutJob(job_id))
    assert len(g.events(g.scheduler, "JobRefusedEvent", receipt)) == 1
    assert g.job(job_id)["status"] == S.PENDING
    assert reverts(g, g.oracle, g.scheduler.functions.timeoutJob(job_id)) == ("SameStatusError", ())
    running = job_in(g, S.RUNNING)
    assert reverts(g, g.oracle, g.scheduler.functions.timeoutJob(running)) == (
        "InvalidTransition",
        (S.RUNNING, S.PENDING),
    )
    finished = job_in(g, S.FINISHED)
    assert reverts(g, g.oracle, g.scheduler.functions.timeoutJob(finished)) == (
        "JobHotStatusOnly",
        (S.FINISHED,),
    )


# ------------------------------------------------------------------ cancelJob, panicJob, delegate flag


def test_cancel_refusals(market: Grid) -> None:
    g = market
    job_id = job_in(g, S.SCHEDULED)
    assert reverts(g, g.customers[1], g.scheduler.functions.cancelJob(job_id)) == (
        "CustomerOnly",
        (g.customers[1].address, g.customers[0].address),
    )
    finished = job_in(g, S.FINISHED)
    assert reverts(g, g.customers[1], g.scheduler.functions.cancelJob(finished)) == (
        "JobHotStatusOnly",
        (S.FINISHED,),
    )


def test_panic_refusals(market: Grid) -> None:
    g = market
    job_id = job_in(g, S.RUNNING)
    assert missing_role(g, g.customers[0], g.scheduler.functions.panicJob(job_id, "x"))
    finished = job_in(g, S.FINISHED)
    assert reverts(g, g.oracle, g.scheduler.functions.panicJob(finished, "x")) == (
        "JobHotStatusOnly",
        (S.FINISHED,),
    )


def test_set_delegate_spending_authority(market: Grid) -> None:
    g, customer = market, market.customers[0]
    job_id = job_in(g, S.SCHEDULED)
    g.send(customer, g.scheduler.functions.setDelegateSpendingAuthority(job_id, True))
    assert g.job(job_id)["delegateSpendingAuthority"] is True
    assert reverts(g, g.customers[1], g.scheduler.functions.setDelegateSpendingAuthority(job_id, False)) == (
        "CustomerOnly",
        (g.customers[1].address, customer.address),
    )
    finished = job_in(g, S.FINISHED)
    assert reverts(g, customer, g.scheduler.functions.setDelegateSpendingAuthority(finished, True)) == (
        "JobHotStatusOnly",
        (S.FINISHED,),
    )


def test_views_name_the_wired_contracts(market: Grid) -> None:
    g, d = market, market.deployment
    f = g.scheduler.functions
    assert f.credit().call() == d.credit
    assert f.constants().call() == d.constants
    assert f.providerManager().call() == d.provider_manager
    assert f.providerJobQueues().call() == d.provider_job_queues
    assert f.jobs().call() == d.job_repository
    assert g.queues.functions.owner().call() == d.meta_scheduler
    assert f.hasRole(f.METASCHEDULER_ROLE().call(), g.oracle.address).call() is True
