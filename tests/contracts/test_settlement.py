"""Settlement to the last wei (PROTOCOL.md sections 3 and 5), refunds, cancellation and top-ups."""

from __future__ import annotations

import pytest

from grid_protocol.jobs import JobStatus as S
from tests.contracts.conftest import job_in
from tests.contracts.test_metascheduler import reverts
from tests.fixtures.contracts import CREDIT, Grid

PER_MIN = 10_563_840_000_000_000_000  # 10.56384 credits per minute: the worked example


def run_for(g: Grid, job_id: bytes, minutes: int) -> None:
    """Let a RUNNING job's clock advance `minutes` whole minutes (plus a few seconds)."""
    assert g.job(job_id)["status"] == S.RUNNING
    g.advance_time(minutes * 60 + 5)


def report(g: Grid, job_id: bytes, status: S, minutes: int, error: str = "", code: int = 0):  # type: ignore[no-untyped-def]
    call = g.scheduler.functions.providerSetJobStatus(job_id, status, minutes, error, code)
    return g.send(g.providers[0], call)


def test_worked_example_to_the_last_wei(market: Grid) -> None:
    g, customer, provider = market, market.customers[0], market.providers[0]
    customer_before, provider_before = g.balance(customer), g.balance(provider)
    job_id = job_in(g, S.RUNNING, credits=200 * CREDIT)
    run_for(g, job_id, 10)
    receipt = report(g, job_id, S.FINISHED, 10)
    assert g.events(g.scheduler, "BilledTooMuchEvent", receipt) == []
    job = g.job(job_id)
    assert job["status"] == S.FINISHED
    assert job["finalCost"] == 105_638_400_000_000_000_000
    assert g.balance(provider) - provider_before == 84_510_720_000_000_000_000
    assert customer_before - g.balance(customer) == 105_638_400_000_000_000_000  # 200 locked, 94.3616 back
    assert g.balance(g.scheduler.address) == 21_127_680_000_000_000_000
    assert g.scheduler.functions.withdrawableCut().call() == 21_127_680_000_000_000_000


def test_billing_beyond_elapsed_plus_delta_is_clamped(market: Grid) -> None:
    g, provider = market, market.providers[0]
    job_id = job_in(g, S.RUNNING, credits=500 * CREDIT)
    run_for(g, job_id, 2)
    before = g.balance(provider)
    receipt = report(g, job_id, S.FINISHED, 18)  # 18 > 2 elapsed + 15 tolerance
    (event,) = g.events(g.scheduler, "BilledTooMuchEvent", receipt)
    assert dict(event["args"]) == {"_jobId": job_id, "_providerAddr": provider.address, "_billingAmount": 18}
    assert g.job(job_id)["finalCost"] == 2 * PER_MIN
    assert g.balance(provider) - before == 2 * PER_MIN * 80 // 100


def test_billing_within_the_tolerance_is_accepted(market: Grid) -> None:
    g = market
    job_id = job_in(g, S.RUNNING, credits=500 * CREDIT)
    run_for(g, job_id, 2)
    receipt = report(g, job_id, S.FINISHED, 17)  # exactly elapsed + delta
    assert g.events(g.scheduler, "BilledTooMuchEvent", receipt) == []
    assert g.job(job_id)["finalCost"] == 17 * PER_MIN


def test_cost_is_capped_at_the_locked_credits(market: Grid) -> None:
    g, customer, provider = market, market.customers[0], market.providers[0]
    job_id = job_in(g, S.RUNNING, credits=200 * CREDIT)
    run_for(g, job_id, 25)
    customer_before, provider_before = g.balance(customer), g.balance(provider)
    report(g, job_id, S.OUT_OF_CREDITS, 25)
    assert g.job(job_id)["finalCost"] == 200 * CREDIT
    assert g.balance(customer) == customer_before
    assert g.balance(provider) - provider_before == 160 * CREDIT
    assert g.balance(g.scheduler.address) == 40 * CREDIT


def test_zero_duration_is_billed_as_one_minute(market: Grid) -> None:
    g = market
    job_id = job_in(g, S.RUNNING)
    report(g, job_id, S.FAILED, 0, "boom", 2)
    job = g.job(job_id)
    assert (job["finalCost"], job["exitCode"], job["lastError"]) == (PER_MIN, 2, "boom")


@pytest.mark.parametrize("status", [S.PENDING, S.META_SCHEDULED, S.SCHEDULED])
def test_cancel_before_running_refunds_everything(market: Grid, status: S) -> None:
    g, customer = market, market.customers[0]
    before = g.balance(customer)
    job_id = job_in(g, status)
    g.send(customer, g.scheduler.functions.cancelJob(job_id))
    job = g.job(job_id)
    assert (job["status"], job["hasCancelRequest"], job["finalCost"]) == (S.CANCELLED, True, 0)
    assert g.balance(customer) == before
    assert g.balance(g.scheduler.address) == 0


def test_failure_before_running_refunds_everything(market: Grid) -> None:
    g, customer, provider = market, market.customers[0], market.providers[0]
    customer_before, provider_before = g.balance(customer), g.balance(provider)
    job_id = job_in(g, S.SCHEDULED)
    report(g, job_id, S.FAILED, 5, "script not found", -1)
    job = g.job(job_id)
    assert (job["status"], job["finalCost"], job["exitCode"]) == (S.FAILED, 0, -1)
    assert g.balance(customer) == customer_before
    assert g.balance(provider) == provider_before
    assert g.balance(g.scheduler.address) == 0


@pytest.mark.parametrize("status", [S.PENDING, S.META_SCHEDULED, S.SCHEDULED, S.RUNNING])
def test_panic_refunds_everything(market: Grid, status: S) -> None:
    g, customer, provider = market, market.customers[0], market.providers[0]
    customer_before, provider_before = g.balance(customer), g.balance(provider)
    job_id = job_in(g, status)
    if status == S.RUNNING:
        run_for(g, job_id, 3)
    g.send(g.oracle, g.scheduler.functions.panicJob(job_id, "slurm lost the job"))
    job = g.job(job_id)
    assert (job["status"], job["lastError"]) == (S.PANICKED, "slurm lost the job")
    assert job["panicTimestamp"] > 0
    assert g.balance(customer) == customer_before
    assert g.balance(provider) == provider_before
    assert g.balance(g.scheduler.address) == 0


def test_cancel_of_a_running_job_goes_through_the_provider(market: Grid) -> None:
    g, customer, provider = market, market.customers[0], market.providers[0]
    job_id = job_in(g, S.RUNNING, credits=200 * CREDIT)
    run_for(g, job_id, 4)
    g.send(customer, g.scheduler.functions.cancelJob(job_id))
    job = g.job(job_id)
    assert (job["status"], job["hasCancelRequest"]) == (S.RUNNING, True)
    assert g.queues.functions.hasCancellingJob(provider.address).call() is True
    g.send(customer, g.scheduler.functions.cancelJob(job_id))  # a second request queues nothing more
    assert g.queues.functions.getCancellingJobQueueSize(provider.address).call() == 1

    receipt = g.send(provider, g.scheduler.functions.claimNextCancellingJob())
    (event,) = g.events(g.scheduler, "ClaimNextCancellingJobEvent", receipt)
    assert dict(event["args"]) == {
        "customerAddr": customer.address,
        "providerAddr": provider.address,
        "jobId": job_id,
    }
    assert g.job(job_id)["status"] == S.RUNNING
    provider_before = g.balance(provider)
    report(g, job_id, S.CANCELLED, 4)
    assert g.job(job_id)["finalCost"] == 4 * PER_MIN
    assert g.balance(provider) - provider_before == 4 * PER_MIN - 4 * PER_MIN * 20 // 100


def test_withdraw_admin_takes_only_the_cut(market: Grid) -> None:
    g = market
    job_id = job_in(g, S.RUNNING, credits=200 * CREDIT)
    locked = job_in(g, S.RUNNING, credits=300 * CREDIT)
    run_for(g, job_id, 10)
    report(g, job_id, S.FINISHED, 10)
    cut = 21_127_680_000_000_000_000
    assert g.balance(g.scheduler.address) == cut + 300 * CREDIT
    assert reverts(g, g.admin, g.scheduler.functions.withdrawAdmin(cut + 1)) == (
        "InsufficientFunds",
        (cut, cut + 1),
    )
    g.send(g.admin, g.scheduler.functions.withdrawAdmin(cut))
    assert g.balance(g.admin) == cut
    assert g.balance(g.scheduler.address) == 300 * CREDIT == g.job(locked)["maxCost"]


# ------------------------------------------------------------------ top-ups


def test_manual_top_up_by_anyone(market: Grid) -> None:
    g, payer, provider = market, market.customers[1], market.providers[0]
    job_id = job_in(g, S.RUNNING, credits=200 * CREDIT)
    g.send(payer, g.credit.functions.approve(g.scheduler.address, 50 * CREDIT))
    before = g.balance(payer)
    g.send(payer, g.scheduler.functions.topUpJob(job_id, 50 * CREDIT))
    job = g.job(job_id)
    assert (job["maxCost"], job["pendingTopUp"]) == (250 * CREDIT, 50 * CREDIT)
    assert before - g.balance(payer) == 50 * CREDIT
    assert g.queues.functions.hasTopUpJob(provider.address).call() is True
    receipt = g.send(provider, g.scheduler.functions.claimNextTopUpJob())
    (event,) = g.events(g.scheduler, "ClaimNextTopUpJobEvent", receipt)
    assert dict(event["args"]) == {
        "_jobId": job_id,
        "_providerAddr": provider.address,
        "maxDurationMinute": 4,
    }
    assert g.job(job_id)["pendingTopUp"] == 0
    assert g.queues.functions.hasTopUpJob(provider.address).call() is False


@pytest.mark.parametrize("status", [S.PENDING, S.META_SCHEDULED, S.FINISHED])
def test_top_up_only_scheduled_or_running(market: Grid, status: S) -> None:
    g = market
    job_id = job_in(g, status)
    g.send(g.customers[0], g.credit.functions.approve(g.scheduler.address, 50 * CREDIT))
    assert reverts(g, g.customers[0], g.scheduler.functions.topUpJob(job_id, 50 * CREDIT)) == (
        "RunningScheduledStatusOnly",
        (status,),
    )


def test_delegated_top_up_adds_one_slice_when_time_runs_low(market: Grid) -> None:
    g, customer, provider = market, market.customers[0], market.providers[0]
    job_id = job_in(g, S.RUNNING, credits=1000 * CREDIT, delegate=True)  # 94 minutes
    g.send(customer, g.credit.functions.approve(g.scheduler.address, 10_000 * CREDIT))
    delegate = g.scheduler.functions.topUpJobDelegate(job_id)
    assert reverts(g, provider, delegate) == ("RemainingTimeAboveLimit", (94, 30))
    run_for(g, job_id, 65)
    before = g.balance(customer)
    g.send(provider, delegate)
    slice_cost = 30 * PER_MIN
    assert before - g.balance(customer) == slice_cost
    job = g.job(job_id)
    assert (job["maxCost"], job["pendingTopUp"]) == (1000 * CREDIT + slice_cost, slice_cost)
    # now 59 minutes remain: above the slice again
    assert reverts(g, customer, delegate) == ("RemainingTimeAboveLimit", (59, 30))


@pytest.mark.parametrize("caller", ["customer", "oracle", "provider"])
def test_delegated_top_up_callers(market: Grid, caller: str) -> None:
    g = market
    job_id = job_in(g, S.SCHEDULED, delegate=True)  # 18 minutes: below the slice
    g.send(g.customers[0], g.credit.functions.approve(g.scheduler.address, 10_000 * CREDIT))
    who = {"customer": g.customers[0], "oracle": g.oracle, "provider": g.providers[0]}[caller]
    g.send(who, g.scheduler.functions.topUpJobDelegate(job_id))
    assert g.job(job_id)["maxCost"] == 200 * CREDIT + 30 * PER_MIN


def test_delegated_top_up_refusals_in_order(market: Grid) -> None:
    g, customer = market, market.customers[0]
    job_id = job_in(g, S.SCHEDULED, delegate=False)
    assert reverts(g, g.customers[1], g.scheduler.functions.topUpJobDelegate(job_id)) == (
        "CustomerMetaSchedulerProviderOnly",
        (),
    )
    assert reverts(g, customer, g.scheduler.functions.topUpJobDelegate(job_id)) == ("NoSpendingAuthority", ())
    pending = job_in(g, S.PENDING, delegate=True)
    assert reverts(g, customer, g.scheduler.functions.topUpJobDelegate(pending)) == (
        "RunningScheduledStatusOnly",
        (S.PENDING,),
    )
