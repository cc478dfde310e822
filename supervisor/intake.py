"""Intake: the chain's events that concern this provider, recorded in the store.

The follower hands each event here inside the local transaction that also moves its cursor, so an
event is recorded exactly once; everything the lanes act on comes from what this module records.
`undo` takes an event back when its block leaves the chain.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from grid_protocol.jobs import JobStatus
from supervisor.chain.contracts import job_id_hex
from supervisor.chain.events import ChainEvent
from supervisor.faults import crash_point
from supervisor.store import Store

log = structlog.get_logger("supervisor")

#: Slurm records submission times to the second: look a little before the claim was recorded.
SINCE_MARGIN_S = 2.0


class JobEventHandler:
    """Records this provider's chain events in the store; the lanes act on what it records.

    `on_claim_hint` is told of every job meta-scheduled on the grid (the claimer then checks this
    provider's queue), `on_job_changed` of every change to a job this provider holds (the work lane
    then acts on it at once rather than at its next period), `on_claimed` of each claim recorded (the
    submitter lane submits it).
    """

    def __init__(
        self,
        on_claim_hint: Callable[[], None],
        on_job_changed: Callable[[], None] = lambda: None,
        on_claimed: Callable[[str], None] = lambda job_id: None,
    ) -> None:
        self._on_claim_hint = on_claim_hint
        self._on_job_changed = on_job_changed
        self._on_claimed = on_claimed

    def order_key(self, event: ChainEvent) -> str | None:
        """A job's events are handled in chain order (a parked claim holds back its top-ups)."""
        if event.name == "JobTransitionEvent":
            return None
        return job_id_hex(str(event.args.get("jobId", event.args.get("_jobId"))))

    def handle(self, event: ChainEvent, store: Store) -> None:
        args = event.args
        if event.name == "JobTransitionEvent":
            self._transition(event, store)
            return
        job_id = job_id_hex(str(args.get("jobId", args.get("_jobId"))))
        self._on_job_changed()
        with structlog.contextvars.bound_contextvars(job_id=job_id):
            if event.name == "ClaimJobEvent":
                crash_point("claim_recorded")
                definition = dict(args["jobDefinition"])
                max_minutes = int(args["maxDurationMinute"])
                again = store.get_job(job_id) is not None
                if store.record_claim(
                    job_id,
                    customer=str(args["customerAddr"]),
                    max_duration_minute=max_minutes,
                    definition=definition,
                    claimed_block=event.block_number,
                    lookup_margin_s=SINCE_MARGIN_S,
                ):
                    self._on_claimed(job_id)
                    log.info(
                        "job claimed",
                        customer=args["customerAddr"],
                        max_duration_minute=max_minutes,
                        claimed_again=again,
                    )
            elif event.name == "ClaimNextCancellingJobEvent":
                if store.get_job(job_id) is not None:
                    store.update_job(job_id, cancel_requested=True)
                log.info("customer asked to cancel the job")
            elif event.name == "ClaimNextTopUpJobEvent":
                minutes = int(args["maxDurationMinute"])
                if store.get_job(job_id) is not None:
                    store.add_extra_minutes(job_id, minutes)
                log.info("job topped up", extra_minutes=minutes)
            elif event.name == "JobRefusedEvent":
                if store.get_job(job_id) is not None:
                    store.update_job(job_id, ours=False)
                log.info("job handed back to the meta-scheduler")

    def _transition(self, event: ChainEvent, store: Store) -> None:
        """A job's status changed on chain: a tracked job's record follows; META_SCHEDULED wakes claims."""
        to = JobStatus(int(event.args["_to"]))
        if to == JobStatus.META_SCHEDULED:
            self._on_claim_hint()
        job_id = job_id_hex(str(event.args["_jobId"]))
        record = store.get_job(job_id)
        if record is None or record.closed or record.status == to:
            return
        store.update_job(job_id, status=int(to))
        self._on_job_changed()
        log.info("chain status changed", job_id=job_id, status=to.name, previous=record.status.name)

    def undo(self, event: ChainEvent, store: Store) -> None:
        """The event's block left the chain: take back what `handle` recorded."""
        args = event.args
        if event.name == "JobTransitionEvent":
            record = store.get_job(job_id_hex(str(args["_jobId"])))
            if record is not None and not record.closed and record.status == int(args["_to"]):
                store.update_job(record.job_id, status=int(args["_from"]))
            return
        job_id = job_id_hex(str(args.get("jobId", args.get("_jobId"))))
        record = store.get_job(job_id)
        if record is None:
            return
        if event.name == "ClaimJobEvent" and record.slurm_job_id is None:
            store.delete_job(job_id)
        elif event.name == "ClaimNextCancellingJobEvent":
            store.update_job(job_id, cancel_requested=False)
        elif event.name == "ClaimNextTopUpJobEvent":
            store.add_extra_minutes(job_id, -int(args["maxDurationMinute"]))
        elif event.name == "JobRefusedEvent":
            store.update_job(job_id, ours=True)
        log.warning("event undone after a reorganisation", job_id=job_id, event_name=event.name)
