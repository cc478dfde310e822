"""The pure decision of what to do for one job (ARCHITECTURE.md property 7), against the protocol.

Properties are checked twice: by hypothesis over generated situations (with arbitrary elapsed times
and exit codes), and by an exhaustive sweep over every discrete combination of chain status, ours,
cancel request, submitted, last report and Slurm view. Explicit examples follow, in the protocol's words.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grid_protocol.jobs import JobStatus, is_allowed
from grid_protocol.pricing import remaining_minutes
from supervisor.core.decisions import (
    MAX_TIME_LIMIT_MINUTES,
    Action,
    CancelInSlurm,
    Forget,
    JobSituation,
    Report,
    SlurmPresence,
    SlurmView,
    Submit,
    claimable_now,
    claims_to_send,
    decide,
    is_held,
    needs_delegated_top_up,
    reconcile_slice,
    wanted_time_limit,
)
from supervisor.core.slurm_states import FINAL_STATES, chain_outcome

S = JobStatus
P = SlurmPresence
HOLDS = (P.WAITING, P.ACTIVE)
REPORTED = (None, *JobStatus)


# -- building situations --------------------------------------------------------------------------


def final_view(
    state: str,
    *,
    cancel_requested: bool,
    elapsed_seconds: int,
    started: bool,
    exit_code: int = 0,
    signal: int | None = None,
) -> SlurmView:
    """A FINAL view as the daemon builds it from Slurm: the outcome maps the state with the cancel flag."""
    return SlurmView(
        P.FINAL,
        outcome=chain_outcome(state, exit_code, signal, cancel_requested=cancel_requested),
        elapsed_seconds=elapsed_seconds,
        exit_code=exit_code,
        started=started or elapsed_seconds > 0,
    )


def situation(
    chain: JobStatus,
    slurm: SlurmView,
    *,
    ours: bool = True,
    cancel_requested: bool = False,
    submitted: bool = True,
    reported: JobStatus | None = None,
) -> JobSituation:
    return JobSituation(chain, ours, cancel_requested, submitted, reported, slurm)


@st.composite
def situations(draw: st.DrawFn) -> JobSituation:
    chain = draw(st.sampled_from(JobStatus))
    ours = draw(st.booleans())
    cancel_requested = draw(st.booleans())
    submitted = draw(st.booleans())
    reported = draw(st.sampled_from(REPORTED))
    presence = draw(st.sampled_from(SlurmPresence))
    if presence == P.FINAL:
        slurm = final_view(
            draw(st.sampled_from(sorted(FINAL_STATES))),
            cancel_requested=cancel_requested,
            elapsed_seconds=draw(st.one_of(st.just(0), st.integers(0, 10**8))),
            started=draw(st.booleans()),
            exit_code=draw(st.integers(0, 255)),
            signal=draw(st.one_of(st.none(), st.integers(1, 64))),
        )
    else:
        slurm = SlurmView(presence, elapsed_seconds=draw(st.integers(0, 10**6)))
    return situation(
        chain, slurm, ours=ours, cancel_requested=cancel_requested, submitted=submitted, reported=reported
    )


def every_situation() -> Iterator[JobSituation]:
    """Every discrete combination (elapsed time and exit code fixed to telling values)."""
    views: list[tuple[bool, SlurmView]] = []
    for cancel_requested in (False, True):
        for presence in (P.WAITING, P.ACTIVE, P.ABSENT, P.UNKNOWN):
            views.append((cancel_requested, SlurmView(presence, elapsed_seconds=125)))
        for state, started in itertools.product(sorted(FINAL_STATES), (False, True)):
            elapsed = 661 if started else 0
            view = final_view(
                state,
                cancel_requested=cancel_requested,
                elapsed_seconds=elapsed,
                started=started,
                exit_code=3,
            )
            views.append((cancel_requested, view))
    for chain, ours, submitted, reported in itertools.product(
        JobStatus, (False, True), (False, True), REPORTED
    ):
        for cancel_requested, view in views:
            yield situation(
                chain,
                view,
                ours=ours,
                cancel_requested=cancel_requested,
                submitted=submitted,
                reported=reported,
            )


def reports(actions: list[Action]) -> list[Report]:
    return [a for a in actions if isinstance(a, Report)]


def hot_and_ours(s: JobSituation) -> bool:
    return s.chain_status.is_hot and s.ours


def forgets_while_slurm_unknown(s: JobSituation) -> bool:
    """The case of test_cold_job_is_not_forgotten_while_slurm_cannot_answer (a known defect)."""
    return (s.chain_status.is_cold or not s.ours) and s.slurm.presence == P.UNKNOWN and not s.submitted


def customer_cancel_while_requeued(s: JobSituation) -> bool:
    """The case of test_customer_cancel_reaches_a_running_job_that_slurm_requeued (a known defect)."""
    return (
        hot_and_ours(s)
        and s.chain_status == S.RUNNING
        and s.cancel_requested
        and s.slurm.presence == P.WAITING
        and not (s.reported is not None and s.reported.is_cold)
    )


# -- the properties ---------------------------------------------------------------------------------


def check_submit(s: JobSituation, actions: list[Action]) -> None:
    """Submit exactly when the chain says SCHEDULED for this provider, nothing is in Slurm for certain,
    the store has no Slurm id, and no end was reported."""
    expected = (
        s.chain_status == S.SCHEDULED
        and s.ours
        and not s.submitted
        and s.slurm.presence == P.ABSENT
        and not (s.reported is not None and s.reported.is_cold)
    )
    submits = [a for a in actions if isinstance(a, Submit)]
    assert len(submits) == (1 if expected else 0), (s, actions)
    if submits:
        assert actions == [Submit()]


def report_start(s: JobSituation) -> JobStatus:
    """Where the chain will stand when these reports land: a RUNNING report already queued counts."""
    if s.chain_status == S.SCHEDULED and s.reported == S.RUNNING:
        return S.RUNNING
    return s.chain_status


def check_reports(s: JobSituation, actions: list[Action]) -> None:
    """Reports only for hot jobs of ours, each an allowed transition, nothing `reported` already covers."""
    sent = reports(actions)
    if not sent:
        return
    assert hot_and_ours(s), (s, actions)
    current = report_start(s)
    for report in sent:
        assert is_allowed(current, report.status), (s, actions)
        assert report.status in (S.RUNNING, S.CANCELLED, S.FINISHED, S.FAILED, S.OUT_OF_CREDITS)
        current = report.status
    assert s.reported is None or s.reported.is_hot, "an end already reported is not reported again"
    if s.reported == S.RUNNING:
        assert all(r.status != S.RUNNING for r in sent)
    assert [r for r in sent if r.status.is_cold] in ([], [sent[-1]]), "one end, and last"


def check_cancel(s: JobSituation, actions: list[Action]) -> None:
    """Cancel in Slurm exactly when Slurm holds the job and the chain no longer wants it run."""
    cancels = [a for a in actions if isinstance(a, CancelInSlurm)]
    holds = s.slurm.presence in HOLDS
    unwanted = s.chain_status.is_cold or not s.ours
    customer_cancelled_a_running_job = (
        s.cancel_requested
        and s.chain_status in (S.SCHEDULED, S.RUNNING)
        and (s.slurm.presence == P.ACTIVE or s.chain_status == S.RUNNING)
        and not (s.reported is not None and s.reported.is_cold)
    )
    assert len(cancels) == (1 if holds and (unwanted or customer_cancelled_a_running_job) else 0), (
        s,
        actions,
    )


def check_forget(s: JobSituation, actions: list[Action]) -> None:
    """Forget exactly when the job is cold or not ours and Slurm certainly does not hold it."""
    forgets = [a for a in actions if isinstance(a, Forget)]
    expected = (s.chain_status.is_cold or not s.ours) and s.slurm.presence in (P.FINAL, P.ABSENT)
    assert len(forgets) == (1 if expected else 0), (s, actions)
    if forgets:
        assert actions == forgets


def check_unknown(s: JobSituation, actions: list[Action]) -> None:
    """Slurm briefly unreachable: nothing for a hot job of ours, and never a report or a submission."""
    if s.slurm.presence != P.UNKNOWN:
        return
    if hot_and_ours(s):
        assert actions == [], (s, actions)
    assert not any(isinstance(a, (Report, Submit)) for a in actions), (s, actions)


def check_ended_while_scheduled(s: JobSituation, actions: list[Action]) -> None:
    """Slurm ended it while the chain says SCHEDULED: RUNNING then the end if it ran, else a refund status."""
    if not (hot_and_ours(s) and s.chain_status == S.SCHEDULED and s.slurm.presence == P.FINAL) or (
        s.reported is not None and s.reported.is_cold
    ):
        return
    assert s.slurm.outcome is not None
    statuses = [r.status for r in reports(actions)]
    assert len(actions) == len(statuses), "only reports"
    if s.slurm.started:
        running = [] if s.reported == S.RUNNING else [S.RUNNING]
        assert statuses == [*running, s.slurm.outcome.status], (s, actions)
    else:
        assert len(statuses) == 1 and statuses[0] in (S.CANCELLED, S.FAILED), (s, actions)
        if s.slurm.outcome.status in (S.CANCELLED, S.FAILED):
            assert statuses[0] == s.slurm.outcome.status


def check_durations(s: JobSituation, actions: list[Action]) -> None:
    """An end report carries the whole minutes Slurm counted (none if it never started); RUNNING none."""
    for report in reports(actions):
        if report.status == S.RUNNING:
            assert report.duration_minute == 0
        elif s.slurm.presence == P.FINAL and (s.slurm.started or s.chain_status == S.RUNNING):
            assert report.duration_minute == s.slurm.elapsed_seconds // 60, (s, actions)
            assert report.exit_code == s.slurm.exit_code
        else:
            assert report.duration_minute == 0, (s, actions)


def check_end_matches_slurm(s: JobSituation, actions: list[Action]) -> None:
    """The end status is Slurm's outcome (section 9 mapping), with its reason, whenever the job ran."""
    if s.slurm.presence != P.FINAL or not reports(actions):
        return
    assert s.slurm.outcome is not None
    end = reports(actions)[-1]
    if s.slurm.started or s.chain_status == S.RUNNING:
        assert end.status == s.slurm.outcome.status
        assert end.last_error == (s.slurm.outcome.last_error or "")


PROPERTIES: list[Callable[[JobSituation, list[Action]], None]] = [
    check_submit,
    check_reports,
    check_cancel,
    check_forget,
    check_unknown,
    check_ended_while_scheduled,
    check_durations,
    check_end_matches_slurm,
]


# -- hypothesis -------------------------------------------------------------------------------------


@given(situations())
def test_submits_only_a_scheduled_job_of_ours_that_slurm_certainly_lacks(s: JobSituation) -> None:
    check_submit(s, decide(s))


@given(situations())
def test_reports_follow_the_transition_table_and_never_repeat(s: JobSituation) -> None:
    check_reports(s, decide(s))


@given(situations().filter(lambda s: not customer_cancel_while_requeued(s)))
def test_cancels_in_slurm_only_what_the_chain_no_longer_wants(s: JobSituation) -> None:
    check_cancel(s, decide(s))


@given(situations().filter(lambda s: not forgets_while_slurm_unknown(s)))
def test_forgets_only_cold_or_foreign_jobs_that_slurm_does_not_hold(s: JobSituation) -> None:
    check_forget(s, decide(s))


@given(situations())
def test_nothing_happens_while_slurm_cannot_answer(s: JobSituation) -> None:
    check_unknown(s, decide(s))


@given(situations())
def test_job_that_ended_while_scheduled_gets_running_then_its_end(s: JobSituation) -> None:
    check_ended_while_scheduled(s, decide(s))


@given(situations())
def test_durations_are_whole_minutes_of_slurm_elapsed_time(s: JobSituation) -> None:
    check_durations(s, decide(s))
    check_end_matches_slurm(s, decide(s))


@given(situations())
def test_deciding_twice_gives_the_same_actions(s: JobSituation) -> None:
    assert decide(s) == decide(s)


def test_every_discrete_combination_keeps_every_property() -> None:
    broken: list[str] = []
    count = 0
    for s in every_situation():
        count += 1
        actions = decide(s)
        for check in PROPERTIES:
            if check is check_forget and forgets_while_slurm_unknown(s):
                continue
            if check is check_cancel and customer_cancel_while_requeued(s):
                continue
            try:
                check(s, actions)
            except AssertionError as exc:
                broken.append(f"{check.__name__}: {exc}")
    assert count == len(JobStatus) * 2 * 2 * len(REPORTED) * 2 * (4 + 2 * len(FINAL_STATES))
    assert broken == [], f"{len(broken)} violations, first: {broken[:3]}"


# -- examples in the protocol's words -----------------------------------------------------------------


def test_claimed_job_unknown_to_slurm_is_submitted() -> None:
    s = situation(S.SCHEDULED, SlurmView(P.ABSENT), submitted=False)
    assert decide(s) == [Submit()]


def test_claimed_job_already_in_slurm_by_name_is_not_submitted_again() -> None:
    s = situation(S.SCHEDULED, SlurmView(P.WAITING), submitted=False)
    assert decide(s) == []


def test_job_whose_script_starts_is_reported_running_once() -> None:
    active = SlurmView(P.ACTIVE, elapsed_seconds=4)
    assert decide(situation(S.SCHEDULED, active)) == [Report(S.RUNNING)]
    assert decide(situation(S.SCHEDULED, active, reported=S.RUNNING)) == []
    assert decide(situation(S.RUNNING, active, reported=S.RUNNING)) == []


def test_completed_job_is_finished_with_its_whole_minutes() -> None:
    done = final_view("COMPLETED", cancel_requested=False, elapsed_seconds=10 * 60 + 59, started=True)
    assert decide(situation(S.RUNNING, done, reported=S.RUNNING)) == [Report(S.FINISHED, 10, "", 0)]


def test_job_that_ran_and_ended_between_two_polls_is_reported_running_then_finished() -> None:
    done = final_view("COMPLETED", cancel_requested=False, elapsed_seconds=2, started=True)
    assert decide(situation(S.SCHEDULED, done)) == [Report(S.RUNNING), Report(S.FINISHED, 0, "", 0)]


def test_failed_job_reports_its_exit_code() -> None:
    failed = final_view("FAILED", cancel_requested=False, elapsed_seconds=90, started=True, exit_code=3)
    assert decide(situation(S.RUNNING, failed)) == [Report(S.FAILED, 1, "Slurm job FAILED: exit code 3", 3)]


def test_time_limit_reached_is_out_of_credits() -> None:
    timeout = final_view("TIMEOUT", cancel_requested=False, elapsed_seconds=18 * 60 + 30, started=True)
    assert decide(situation(S.RUNNING, timeout)) == [Report(S.OUT_OF_CREDITS, 18, "", 0)]


def test_customer_cancel_of_a_running_job_cancels_in_slurm_then_reports_cancelled() -> None:
    active = SlurmView(P.ACTIVE, elapsed_seconds=300)
    assert decide(situation(S.RUNNING, active, cancel_requested=True, reported=S.RUNNING)) == [
        CancelInSlurm("the customer cancelled the job")
    ]
    cancelled = final_view("CANCELLED", cancel_requested=True, elapsed_seconds=301, started=True)
    assert decide(situation(S.RUNNING, cancelled, cancel_requested=True, reported=S.RUNNING)) == [
        Report(S.CANCELLED, 5, "", 0)
    ]


def test_cancelled_in_slurm_by_someone_else_is_a_failure_with_the_reason() -> None:
    cancelled = final_view("CANCELLED by 0", cancel_requested=False, elapsed_seconds=61, started=True)
    [report] = decide(situation(S.RUNNING, cancelled, reported=S.RUNNING))
    assert isinstance(report, Report)
    assert report.status == S.FAILED and report.duration_minute == 1
    assert "cancelled outside the grid" in report.last_error


def test_job_cancelled_before_it_started_gets_no_running_report() -> None:
    cancelled = final_view("CANCELLED", cancel_requested=False, elapsed_seconds=0, started=False)
    [report] = decide(situation(S.SCHEDULED, cancelled))
    assert isinstance(report, Report) and report.status == S.FAILED and report.duration_minute == 0


def test_job_that_never_started_yet_ended_completed_is_a_failure() -> None:
    odd = final_view("COMPLETED", cancel_requested=False, elapsed_seconds=0, started=False)
    [report] = decide(situation(S.SCHEDULED, odd))
    assert isinstance(report, Report) and report.status == S.FAILED
    assert "before it started (FINISHED)" in report.last_error


def test_job_slurm_lost_is_failed() -> None:
    for chain in (S.SCHEDULED, S.RUNNING):
        [report] = decide(situation(chain, SlurmView(P.ABSENT), submitted=True))
        assert isinstance(report, Report) and report.status == S.FAILED
        assert "lost" in report.last_error


def test_slurm_unreachable_means_waiting_never_failing() -> None:
    for chain, submitted in itertools.product((S.SCHEDULED, S.RUNNING), (False, True)):
        assert decide(situation(chain, SlurmView(P.UNKNOWN), submitted=submitted)) == []


def test_job_taken_back_by_the_oracle_is_cancelled_in_slurm_then_forgotten() -> None:
    waiting = SlurmView(P.WAITING)
    [cancel] = decide(situation(S.PENDING, waiting, ours=False))
    assert isinstance(cancel, CancelInSlurm) and "no longer assigned" in cancel.reason
    [forget] = decide(situation(S.PENDING, SlurmView(P.ABSENT), ours=False))
    assert isinstance(forget, Forget)


def test_job_cold_on_chain_is_cancelled_in_slurm_then_forgotten() -> None:
    [cancel] = decide(situation(S.CANCELLED, SlurmView(P.ACTIVE)))
    assert isinstance(cancel, CancelInSlurm) and "CANCELLED on chain" in cancel.reason
    ended = final_view("CANCELLED", cancel_requested=True, elapsed_seconds=30, started=True)
    [forget] = decide(situation(S.CANCELLED, ended))
    assert isinstance(forget, Forget)


def test_cold_job_with_a_slurm_id_waits_while_slurm_cannot_answer() -> None:
    assert decide(situation(S.CANCELLED, SlurmView(P.UNKNOWN), submitted=True)) == []


def test_job_not_yet_claimed_is_left_alone() -> None:
    for chain in (S.PENDING, S.META_SCHEDULED):
        assert decide(situation(chain, SlurmView(P.ABSENT), submitted=False)) == []


def test_nothing_more_once_the_end_is_reported() -> None:
    done = final_view("COMPLETED", cancel_requested=False, elapsed_seconds=60, started=True)
    assert decide(situation(S.RUNNING, done, reported=S.FINISHED)) == []


def test_cold_job_is_not_forgotten_while_slurm_cannot_answer() -> None:
    # Restart after sbatch but before the Slurm id was saved; the customer cancelled the SCHEDULED
    # job meanwhile (CANCELLED at once on chain); slurmctld is briefly down.
    s = situation(S.CANCELLED, SlurmView(P.UNKNOWN), submitted=False)
    assert not any(isinstance(a, Forget) for a in decide(s))


def test_customer_cancel_reaches_a_running_job_that_slurm_requeued() -> None:
    s = situation(S.RUNNING, SlurmView(P.WAITING), cancel_requested=True, reported=S.RUNNING)
    assert any(isinstance(a, CancelInSlurm) for a in decide(s))


# -- claims and top-ups -------------------------------------------------------------------------------


@given(st.integers(0, 300), st.integers(0, 300), st.integers(1, 300))
def test_claims_keep_held_jobs_within_the_limit(held: int, in_flight: int, limit: int) -> None:
    sent = claims_to_send(held=held, in_flight=in_flight, limit=limit)
    assert sent >= 0
    if held + in_flight >= limit:
        assert sent == 0
    else:
        assert held + in_flight + sent == limit


@pytest.mark.parametrize("presence", list(SlurmPresence))
@pytest.mark.parametrize("status", list(S))
@pytest.mark.parametrize("ours", [True, False])
def test_held_jobs_are_ours_scheduled_and_not_seen_running(
    ours: bool, status: JobStatus, presence: SlurmPresence
) -> None:
    """Queued in Slurm, not submitted yet, or of a state a stale or failed look-up cannot tell: held;
    once Slurm runs or ended it, the job no longer waits for room."""
    expected = (
        ours
        and status == S.SCHEDULED
        and presence
        in (
            SlurmPresence.WAITING,
            SlurmPresence.ABSENT,
            SlurmPresence.UNKNOWN,
        )
    )
    assert is_held(ours=ours, status=status, presence=presence) == expected


def test_claims_already_under_way_leave_their_queue_entries_alone() -> None:
    """Each unmined claim pops one entry of the provider's queue when it is mined: counting those
    entries again would send claims that revert NoJob()."""
    assert claimable_now(queued_on_chain=200, claims_unmined=200) == 0
    assert claimable_now(queued_on_chain=200, claims_unmined=150) == 50
    assert claimable_now(queued_on_chain=5, claims_unmined=0) == 5
    assert claimable_now(queued_on_chain=3, claims_unmined=7) == 0  # mined meanwhile: never negative


def test_the_reconciler_goes_round_every_job_a_bounded_slice_at_a_time() -> None:
    """Never-read jobs first, then those read longest ago; a pass reads at most `size` of them, and
    passes in turn reach every job."""
    jobs = [f"job-{n}" for n in range(7)]
    last_read: dict[str, float] = {"job-0": 5.0, "job-1": 1.0, "job-2": 3.0}
    assert reconcile_slice(jobs, last_read, 3) == ["job-3", "job-4", "job-5"]
    seen: set[str] = set()
    clock = 10.0
    for _ in range(3):
        chosen = reconcile_slice(jobs, last_read, 3)
        assert len(chosen) <= 3
        seen |= set(chosen)
        for job_id in chosen:
            clock += 1
            last_read[job_id] = clock
    assert seen == set(jobs)
    assert reconcile_slice(jobs[:2], last_read, 3) == ["job-1", "job-0"]
    assert reconcile_slice([], last_read, 3) == []


def test_claims_examples() -> None:
    assert claims_to_send(held=0, in_flight=0, limit=200) == 200
    assert claims_to_send(held=3, in_flight=1, limit=4) == 0
    assert claims_to_send(held=1, in_flight=1, limit=4) == 2
    assert claims_to_send(held=9, in_flight=0, limit=4) == 0


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_delegated_top_up_exactly_when_the_contract_accepts_it(remaining: int, slice_minutes: int) -> None:
    # The contract reverts RemainingTimeAboveLimit unless remaining <= topUpSliceDurationMin.
    assert needs_delegated_top_up(remaining_minutes=remaining, slice_minutes=slice_minutes) == (
        remaining <= slice_minutes
    )


@given(st.integers(0, 10**24), st.integers(1, 10**21), st.integers(0, 10**7))
def test_remaining_minutes_counts_as_the_contract(max_cost: int, per_minute: int, elapsed: int) -> None:
    left = remaining_minutes(max_cost=max_cost, credits_per_minute=per_minute, elapsed_seconds=elapsed)
    assert left == max(0, max_cost // per_minute - elapsed // 60)


def test_remaining_minutes_worked_example() -> None:
    # PROTOCOL.md section 3: 10.56384 credits/min, 200 credits locked -> 18 minutes.
    per_minute = 1056384 * 10**13
    assert remaining_minutes(max_cost=200 * 10**18, credits_per_minute=per_minute, elapsed_seconds=0) == 18
    assert remaining_minutes(max_cost=200 * 10**18, credits_per_minute=per_minute, elapsed_seconds=659) == 8
    assert remaining_minutes(max_cost=200 * 10**18, credits_per_minute=per_minute, elapsed_seconds=10**6) == 0


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**40))
def test_the_time_limit_is_what_was_paid_for_within_slurms_range(minutes: int, extra: int) -> None:
    wanted = wanted_time_limit(max_duration_minute=minutes, extra_minutes=extra)
    assert 1 <= wanted <= MAX_TIME_LIMIT_MINUTES
    assert wanted == max(1, min(minutes + extra, MAX_TIME_LIMIT_MINUTES))


def test_a_free_job_gets_ten_years() -> None:
    assert wanted_time_limit(max_duration_minute=2**64 - 1, extra_minutes=0) == 5_256_000
    assert wanted_time_limit(max_duration_minute=18, extra_minutes=30) == 48
