"""The submitter lane: a job goes to Slurm as soon as its claim is recorded, not at the next cycle.

The follower tells the lane of each claim it records (`claimed`); the lane submits fresh claims side by
side, a few at a time. Only a claim with no submit intent recorded is taken here: such a job never
reached sbatch, so Slurm need not be asked about it. Everything else (a crash between intent and
sbatch, Slurm down, a re-claim that must wait for its look-up bound) stays with the work cycle, which
submits through the same guard, so a job is never submitted twice by the two lanes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable

import structlog

from supervisor.actions import JobActions, reclaimed
from supervisor.chain.rpc import describe
from supervisor.core.decisions import JobSituation, SlurmPresence, SlurmView, Submit, decide
from supervisor.store import JobRecord, Store

log = structlog.get_logger("supervisor")

#: Submissions run side by side (script fetch and sbatch of different jobs overlap).
SUBMIT_CONCURRENCY = 8
#: When submissions ended is kept this long (far beyond one Slurm query), once more than
#: ENDED_KEPT are remembered.
ENDED_KEPT = 1000
ENDED_KEPT_S = 600.0


def fresh_claim(job: JobRecord) -> bool:
    """A claim the lane may submit at once: nothing of it can be in Slurm yet."""
    return job.submit_intent_at is None and job.slurm_job_id is None and not job.closed and not reclaimed(job)


class Submitter:
    """Submits freshly claimed jobs as their claims are recorded; shares its guard with the cycle."""

    def __init__(self, store: Store, actions: JobActions, can_submit: Callable[[], bool]) -> None:
        self._store = store
        self._actions = actions
        self._can_submit = can_submit
        self._waiting: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._ended_at: dict[str, float] = {}

    def claimed(self, job_id: str) -> None:
        """A claim was recorded (called by the intake, inside the follower's transaction)."""
        if job_id not in self._queued:
            self._queued.add(job_id)
            self._waiting.put_nowait(job_id)

    def settled_before(self, job_id: str, moment: float) -> bool:
        """Whether no submission of the job was under way at `moment` (time.monotonic()) or since:
        only then does a Slurm answer asked for at that moment show whether Slurm has the job."""
        return job_id not in self._busy and self._ended_at.get(job_id, -math.inf) < moment

    @contextlib.asynccontextmanager
    async def guard(self, job_id: str) -> AsyncIterator[JobRecord | None]:
        """Hold the job for one submission; yields its record as stored now, or None when another
        submission holds it or it needs none any more (the caller's view may be stale)."""
        if job_id in self._busy:
            yield None
            return
        self._busy.add(job_id)
        try:
            record = self._store.get_job(job_id)
            yield None if record is None or record.slurm_job_id is not None or record.closed else record
        finally:
            self._busy.discard(job_id)
            now = time.monotonic()
            self._ended_at[job_id] = now
            if len(self._ended_at) > ENDED_KEPT:
                self._ended_at = {j: t for j, t in self._ended_at.items() if now - t < ENDED_KEPT_S}

    async def run(self) -> None:
        """The lane: take claims as they come, at most SUBMIT_CONCURRENCY submissions at once."""
        room = asyncio.Semaphore(SUBMIT_CONCURRENCY)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                job_id = await self._waiting.get()
                self._queued.discard(job_id)
                await room.acquire()
                task = asyncio.create_task(self._submit(job_id))
                running.add(task)

                def finished(done: asyncio.Task[None]) -> None:
                    running.discard(done)
                    room.release()

                task.add_done_callback(finished)
        finally:
            for task in running:
                task.cancel()
            for task in list(running):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _submit(self, job_id: str) -> None:
        if not self._can_submit():
            return  # Slurm did not answer at the last look: the cycle submits once it does
        with structlog.contextvars.bound_contextvars(job_id=job_id):
            async with self.guard(job_id) as job:
                if job is None or not fresh_claim(job):
                    return
                situation = JobSituation(
                    chain_status=job.status,
                    ours=job.ours,
                    cancel_requested=job.cancel_requested,
                    submitted=False,
                    reported=job.last_reported_status,
                    slurm=SlurmView(SlurmPresence.ABSENT),
                )
                if not any(isinstance(action, Submit) for action in decide(situation)):
                    return
                try:
                    await self._actions.submit(job)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the cycle submits it later; the lane goes on
                    log.exception("submitting the job failed, will retry", error=describe(exc))
