"""What the supervisor does for one job, from three views: the chain, its own store, and Slurm. Pure.

The daemon gathers the views (one bulk Slurm query per cycle, the chain record, the store row) and
carries out the actions returned here. Every action is idempotent on its own (reports go through the
outbox with one dedup key per job and status, submissions look the job up by name first), so deciding
twice from the same views never doubles an effect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from grid_protocol.jobs import JobStatus
from supervisor.core.slurm_states import ChainOutcome


class SlurmPresence(StrEnum):
    """Where Slurm stands on a job, as far as one bulk query could tell."""

    WAITING = "waiting"  # queued, its script has not started
    ACTIVE = "active"  # its script runs
    FINAL = "final"  # it ended (live view or accounting)
    ABSENT = "absent"  # certainly unknown to Slurm (accounting answered for it)
    UNKNOWN = "unknown"  # not seen, but Slurm or its accounting could not vouch for that


@dataclass(frozen=True)
class SlurmView:
    presence: SlurmPresence
    outcome: ChainOutcome | None = None  # for FINAL: the chain status it maps to
    elapsed_seconds: int = 0
    exit_code: int = 0
    started: bool = False  # the script did start (FINAL jobs cancelled while queued did not)


@dataclass(frozen=True)
class JobSituation:
    chain_status: JobStatus
    ours: bool  # the chain names this provider as the job's provider
    cancel_requested: bool  # the customer asked to cancel (and this provider claimed the request)
    submitted: bool  # the store knows the Slurm job id
    reported: JobStatus | None  # the last status this supervisor queued for the chain
    slurm: SlurmView


@dataclass(frozen=True)
class Submit:
    """Fetch the script and submit it to Slurm (after a lookup by name)."""


@dataclass(frozen=True)
class Report:
    status: JobStatus
    duration_minute: int = 0
    last_error: str = ""
    exit_code: int = 0


@dataclass(frozen=True)
class CancelInSlurm:
    reason: str


@dataclass(frozen=True)
class Forget:
    """Nothing more to do: the job is settled on chain or no longer this provider's."""

    reason: str


Action = Submit | Report | CancelInSlurm | Forget

_ORDER = {
    JobStatus.SCHEDULED: 0,
    JobStatus.RUNNING: 1,
}


def _already_reported(reported: JobStatus | None, status: JobStatus) -> bool:
    """Reports only move forward: RUNNING after nothing, an end status after RUNNING or nothing."""
    if reported is None:
        return False
    if reported.is_cold:
        return True
    return _ORDER.get(reported, -1) >= _ORDER.get(status, 2)


def _end_report(situation: JobSituation) -> list[Action]:
    slurm = situation.slurm
    assert slurm.outcome is not None
    status = slurm.outcome.status
    error = slurm.outcome.last_error or ""
    duration = slurm.elapsed_seconds // 60
    if situation.chain_status == JobStatus.SCHEDULED and not slurm.started:
        # It never ran: only CANCELLED or FAILED may follow SCHEDULED, both refund the customer.
        if status not in (JobStatus.CANCELLED, JobStatus.FAILED):
            status, error = JobStatus.FAILED, error or f"ended in Slurm before it started ({status.name})"
        return [Report(status, 0, error, slurm.exit_code)]
    actions: list[Action] = []
    if situation.chain_status == JobStatus.SCHEDULED and not _already_reported(
        situation.reported, JobStatus.RUNNING
    ):
        actions.append(Report(JobStatus.RUNNING))
    actions.append(Report(status, duration, error, slurm.exit_code))
    return actions


def decide(situation: JobSituation) -> list[Action]:
    """The actions that bring chain and Slurm in line for one job (empty: wait for the next cycle)."""
    slurm = situation.slurm
    in_slurm = slurm.presence in (SlurmPresence.WAITING, SlurmPresence.ACTIVE)

    if situation.chain_status.is_cold or not situation.ours:
        why = (
            f"job is {situation.chain_status.name} on chain"
            if situation.chain_status.is_cold
            else "job is no longer assigned to this provider"
        )
        if in_slurm:
            return [CancelInSlurm(why)]
        if slurm.presence == SlurmPresence.UNKNOWN:
            # Slurm may still hold it (a crash between sbatch and saving its id leaves no trace in
            # the store): decide again when Slurm answers.
            return []
        return [Forget(why)]

    if situation.chain_status in (JobStatus.PENDING, JobStatus.META_SCHEDULED):
        return []  # not claimed by this provider (yet)

    if situation.reported is not None and situation.reported.is_cold:
        return []  # the end is reported; the chain will follow

    if slurm.presence == SlurmPresence.UNKNOWN:
        return []
    if slurm.presence == SlurmPresence.ABSENT:
        if not situation.submitted and situation.chain_status == JobStatus.SCHEDULED:
            return [Submit()]
        return [Report(JobStatus.FAILED, 0, "Slurm has no record of the job: it was lost", 0)]
    if slurm.presence == SlurmPresence.WAITING:
        # A running job that Slurm requeued still obeys its customer's cancellation.
        if situation.cancel_requested and situation.chain_status == JobStatus.RUNNING:
            return [CancelInSlurm("the customer cancelled the job")]
        return []
    if slurm.presence == SlurmPresence.ACTIVE:
        actions: list[Action] = []
        if situation.chain_status == JobStatus.SCHEDULED and not _already_reported(
            situation.reported, JobStatus.RUNNING
        ):
            actions.append(Report(JobStatus.RUNNING))
        if situation.cancel_requested:
            actions.append(CancelInSlurm("the customer cancelled the job"))
        return actions
    return _end_report(situation)


def is_held(*, ours: bool, status: JobStatus, presence: SlurmPresence) -> bool:
    """A job claimed and not yet running: SCHEDULED and ours, and Slurm has not been seen running or
    ending it. Held jobs count against `max_queued_jobs`; a job whose Slurm state is unknown or older
    than its submission counts, so that a look-up that is not fresh never lets the claimer take more."""
    return (
        ours and status == JobStatus.SCHEDULED and presence not in (SlurmPresence.ACTIVE, SlurmPresence.FINAL)
    )


def claims_to_send(
    *, held: int, in_flight: int, limit: int, others: int = 0, share: int | None = None
) -> int:
    """How many claimNextJob to send now so that jobs held (claimed, not yet running) and claims in
    flight stay within the limit over every deployment served (`others`: what the other deployments
    hold and have in flight) and within this deployment's `share` of it."""
    mine = held + in_flight
    room = limit - others - mine
    if share is not None:
        room = min(room, share - mine)
    return max(0, room)


def claimable_now(*, queued_on_chain: int, claims_unmined: int) -> int:
    """Jobs in the provider's queue that no claim of ours already sent or queued will take: each
    unmined claim pops one entry when it is mined, so a claim beyond this number would revert."""
    return max(0, queued_on_chain - claims_unmined)


def needs_delegated_top_up(*, remaining_minutes: int, slice_minutes: int) -> bool:
    """The contract accepts a delegated top-up once the remaining time is down to one slice."""
    return remaining_minutes <= slice_minutes


#: The longest time limit given to Slurm: ten years. A job whose credits buy more (a free job buys
#: 2^64-1 minutes) runs under this limit; Slurm itself cannot represent limits past about 68 years.
MAX_TIME_LIMIT_MINUTES = 10 * 365 * 24 * 60


def wanted_time_limit(*, max_duration_minute: int, extra_minutes: int) -> int:
    """The Slurm time limit a job is owed: the claim's minutes plus every top-up, capped."""
    return max(1, min(max_duration_minute + extra_minutes, MAX_TIME_LIMIT_MINUTES))


def reconcile_slice(job_ids: Sequence[str], last_read: Mapping[str, float], size: int) -> list[str]:
    """The open jobs the reconciler reads on chain next: the `size` read longest ago, never-read first.

    The follower keeps statuses from events; the reconciler only repairs, so it reads a bounded slice
    per pass (one JSON-RPC batch) whatever the number of jobs, and goes round all of them in turn.
    """
    never = float("-inf")
    return sorted(job_ids, key=lambda job_id: last_read.get(job_id, never))[:size]
