"""Stale claim-queue heads never block a provider; registration, approval, ban and removal."""

from __future__ import annotations

from grid_protocol.jobs import JobStatus as S
from tests.contracts.conftest import job_in
from tests.contracts.test_metascheduler import missing_role, reverts
from tests.fixtures.contracts import WORKED_EXAMPLE_PRICES, Grid

HARDWARE = (1, [2], [16], [64_000])


def test_stale_heads_are_skipped_by_has_and_claim(market: Grid) -> None:
    g, provider, other = market, market.providers[0], market.providers[1]
    g.register_provider(other)
    cancelled, refused, timed_out, moved, good = (job_in(g, S.PENDING) for _ in range(5))
    for job_id in (cancelled, refused, timed_out, moved, good):
        g.schedule(job_id, provider)
    g.send(g.customers[0], g.scheduler.functions.cancelJob(cancelled))
    g.send(provider, g.scheduler.functions.refuseJob(refused))
    g.send(g.oracle, g.scheduler.functions.timeoutJob(timed_out))
    g.send(g.oracle, g.scheduler.functions.timeoutJob(moved))
    g.schedule(moved, other)
    assert g.queues.functions.getClaimableJobQueueSize(provider.address).call() == 5
    assert g.queues.functions.hasNextClaimableJob(provider.address).call() is True
    assert g.claim(provider)["jobId"] == good
    assert g.queues.functions.hasNextClaimableJob(provider.address).call() is False
    assert g.queues.functions.getClaimableJobQueueSize(provider.address).call() == 0
    assert reverts(g, provider, g.scheduler.functions.claimNextJob()) == ("NoJob", ())
    assert g.claim(other)["jobId"] == moved


def test_claim_next_jobs_claims_up_to_its_count_in_queue_order(market: Grid) -> None:
    """The batch claim extension: at most `_max` jobs, stale entries skipped, one event and one
    SCHEDULED transition each, with the same duration a single claim gives; NoJob() when empty."""
    g, provider = market, market.providers[0]
    jobs = [job_in(g, S.PENDING) for _ in range(6)]
    for job_id in jobs:
        g.schedule(job_id, provider)
    g.send(g.customers[0], g.scheduler.functions.cancelJob(jobs[1]))
    receipt = g.send(provider, g.scheduler.functions.claimNextJobs(3))
    claimed = [event["args"] for event in g.events(g.scheduler, "ClaimJobEvent", receipt)]
    assert [c["jobId"] for c in claimed] == [jobs[0], jobs[2], jobs[3]]
    assert all(g.job(j)["status"] == S.SCHEDULED for j in (jobs[0], jobs[2], jobs[3]))
    assert g.job(jobs[4])["status"] == S.META_SCHEDULED
    single = g.claim(provider)
    assert single["jobId"] == jobs[4] and single["maxDurationMinute"] == claimed[0]["maxDurationMinute"]
    receipt = g.send(provider, g.scheduler.functions.claimNextJobs(10))
    assert [e["args"]["jobId"] for e in g.events(g.scheduler, "ClaimJobEvent", receipt)] == [jobs[5]]
    assert reverts(g, provider, g.scheduler.functions.claimNextJobs(10)) == ("NoJob", ())
    assert reverts(g, g.customers[0], g.scheduler.functions.claimNextJobs(1))[0] == "ProviderNotJoined"


def test_only_stale_entries_means_no_job(market: Grid) -> None:
    g, provider = market, market.providers[0]
    job_id = job_in(g, S.META_SCHEDULED)
    g.send(provider, g.scheduler.functions.refuseJob(job_id))
    assert g.queues.functions.hasNextClaimableJob(provider.address).call() is False
    assert reverts(g, provider, g.scheduler.functions.claimNextJob()) == ("NoJob", ())


def test_a_job_queued_twice_is_claimed_once(market: Grid) -> None:
    g, provider = market, market.providers[0]
    job_id = job_in(g, S.META_SCHEDULED)
    g.send(provider, g.scheduler.functions.refuseJob(job_id))
    g.schedule(job_id, provider)  # the old entry is valid again, the new one follows it
    assert g.claim(provider)["jobId"] == job_id
    assert g.queues.functions.hasNextClaimableJob(provider.address).call() is False
    assert reverts(g, provider, g.scheduler.functions.claimNextJob()) == ("NoJob", ())


def test_queues_are_written_only_by_the_meta_scheduler(market: Grid) -> None:
    g = market
    error, args = reverts(g, g.admin, g.queues.functions.pushClaimableJob(g.providers[0].address, b"\1" * 32))
    assert error == "reason" and "not the owner" in str(args[0])


# ------------------------------------------------------------------ ProviderManager


def test_registration_validation_errors(grid: Grid) -> None:
    g, p = grid, grid.providers[2]
    register = g.provider_manager.functions.register
    snapshot = g.snapshot()
    try:
        cases = [
            ((0, [], [], []), [], "InvalidNodesCount"),
            ((2, [0], [4, 4], [1, 1]), [], "ArrayLengthMismatch"),
            ((1, [0], [4, 4], [1]), [], "ArrayLengthMismatch"),
            ((1, [0], [4], []), [], "ArrayLengthMismatch"),
            ((2, [0, 0], [0, 0], [1, 1]), [], "InvalidTotalCpus"),
            ((2, [0, 0], [1, 0], [0, 0]), [], "InvalidTotalMem"),
            (HARDWARE, [("", "x")], "Empty"),
        ]
        for hardware, labels, error in cases:
            assert reverts(g, p, register(hardware, WORKED_EXAMPLE_PRICES, labels)) == (error, ()), error
        g.send(g.admin, g.provider_manager.functions.ban(p.address))
        assert reverts(g, p, register(HARDWARE, WORKED_EXAMPLE_PRICES, [])) == ("Banned", ())
        assert g.provider_manager.functions.isWaitingForApproval(p.address).call() is False
    finally:
        g.revert_to(snapshot)


def test_register_approve_and_reregister(market: Grid) -> None:
    g, p = market, market.providers[2]
    pm = g.provider_manager.functions
    receipt = g.send(p, pm.register(HARDWARE, WORKED_EXAMPLE_PRICES, [("os", "linux"), ("arch", "amd64")]))
    assert [
        e["args"]["addr"] for e in g.events(g.provider_manager, "ProviderWaitingForApproval", receipt)
    ] == [p.address]
    assert pm.isWaitingForApproval(p.address).call() is True
    assert pm.isValidForScheduling(p.address).call() is False
    waiting = pm.getWaitingForApprovalProvider(p.address).call()
    assert waiting[0] == p.address and tuple(waiting[1][2]) == (16,)

    assert missing_role(g, g.customers[0], pm.approve(p.address))
    receipt = g.send(g.oracle, pm.approve(p.address))  # the meta-scheduler may approve as the admin does
    assert len(g.events(g.provider_manager, "ProviderApproved", receipt)) == 1
    assert pm.isValidForScheduling(p.address).call() is True
    assert pm.isWaitingForApproval(p.address).call() is False
    assert [tuple(label) for label in pm.getLabels(p.address).call()] == [("os", "linux"), ("arch", "amd64")]
    assert tuple(pm.getProviderPrices(p.address).call()) == WORKED_EXAMPLE_PRICES
    assert reverts(g, g.admin, pm.approve(p.address)) == ("WaitingApprovalOnly", ())

    bigger = (2, [2, 2], [16, 16], [64_000, 64_000])
    g.send(p, pm.register(bigger, WORKED_EXAMPLE_PRICES, []))
    assert pm.isValidForScheduling(p.address).call() is True  # the approved record stays in force
    assert pm.getProviderHardware(p.address).call()[0] == 1
    g.send(g.admin, pm.approve(p.address))
    assert pm.getProviderHardware(p.address).call()[0] == 2
    assert pm.getLabels(p.address).call() == []


def test_ban_unban_and_remove(market: Grid) -> None:
    g, p = market, market.providers[0]
    pm = g.provider_manager.functions
    assert missing_role(g, g.oracle, pm.ban(p.address))
    receipt = g.send(g.admin, pm.ban(p.address))
    (event,) = g.events(g.provider_manager, "ProviderBanChanged", receipt)
    assert dict(event["args"]) == {"addr": p.address, "status": True}
    assert pm.isBanned(p.address).call() is True
    assert pm.getProvider(p.address).call()[4] is True
    assert pm.isValidForScheduling(p.address).call() is False
    assert reverts(g, g.admin, pm.ban(p.address)) == ("AlreadyDone", ())
    g.send(g.admin, pm.unban(p.address))
    assert pm.isValidForScheduling(p.address).call() is True
    assert reverts(g, g.admin, pm.unban(p.address)) == ("AlreadyDone", ())

    receipt = g.send(g.admin, pm.remove(p.address))
    assert len(g.events(g.provider_manager, "ProviderRemoved", receipt)) == 1
    assert pm.isValidForScheduling(p.address).call() is False
    assert reverts(g, g.admin, pm.remove(p.address)) == ("NoProvider", ())


def test_auto_approve_switch(market: Grid) -> None:
    g, p = market, market.providers[2]
    pm = g.provider_manager.functions
    assert pm.autoApprove().call() is False
    assert missing_role(g, g.oracle, pm.setAutoApprove(True))
    g.send(g.admin, pm.setAutoApprove(True))
    receipt = g.send(p, pm.register(HARDWARE, WORKED_EXAMPLE_PRICES, []))
    assert len(g.events(g.provider_manager, "ProviderApproved", receipt)) == 1
    assert pm.isValidForScheduling(p.address).call() is True


def test_constants_defaults_and_bounds(grid: Grid) -> None:
    c = grid.constants.functions
    assert (
        c.minimumAmount().call(),
        c.cancellationFeeMinute().call(),
        c.billDurationDeltaMinute().call(),
        c.topUpSliceDurationMin().call(),
        c.deepsquareCut().call(),
        c.claimJobTimeout().call(),
    ) == (100 * 10**18, 5, 15, 30, 20, 10)
    assert reverts(grid, grid.admin, c.setDeepsquareCut(101)) == ("OutOfBounds", ())
    assert reverts(grid, grid.admin, c.setTopUpSliceDurationMin(0)) == ("OutOfBounds", ())
    error, args = reverts(grid, grid.oracle, c.setDeepsquareCut(10))
    assert error == "reason" and "not the owner" in str(args[0])
