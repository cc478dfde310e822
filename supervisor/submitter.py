"""The submitter lane: a job goes to Slurm as soon as its claim is recorded, not at the next cycle.

The follower tells the lane of each claim it records (`claimed`); the lane takes the claims recorded
so far as a group and submits them side by side, with one durable write for the group's intents and
one for its Slurm ids. Only a claim with no submit intent recorded is taken here: such a job never
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

#: Claims submitted as one group at most (their intents and Slurm ids each take one durable write).
GROUP_MAX = 32
#: Groups under way at once: one group's script fetches overlap the others' sbatch processes.
GROUPS_AT_ONCE = 4
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
        self._running = False

    def claimed(self, job_id: str) -> None:
        """A claim was recorded (called by the intake, inside the follower's transaction)."""
        if job_id not in self._queued:
            self._queued.add(job_id)
            self._waiting.put_nowait(job_id)

    def pending(self, job_id: str) -> bool:
        """Whether the running lane has the job waiting or under way: the work cycle leaves it to the
        lane (a lane that is not running leaves every job to the cycle)."""
        return self._running and (job_id in self._queued or job_id in self._busy)

    def holding(self) -> frozenset[str]:
        """The jobs `pending` says the running lane has: fresh claims, which Slurm cannot know yet
        (or knows since a moment, before the lane records it)."""
        return frozenset(self._queued | self._busy) if self._running else frozenset()

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
        """The lane: take the claims recorded so far as one group (at most GROUP_MAX), a few groups
        at once, so a burst's fetches, fsyncs and sbatch processes overlap."""
        room = asyncio.Semaphore(GROUPS_AT_ONCE)
        running: set[asyncio.Task[None]] = set()
        self._running = True
        try:
            while True:
                group = [await self._waiting.get()]
                while len(group) < GROUP_MAX and not self._waiting.empty():
                    group.append(self._waiting.get_nowait())
                await room.acquire()
                task = asyncio.create_task(self._submit(group))
                running.add(task)

                def finished(done: asyncio.Task[None]) -> None:
                    running.discard(done)
                    room.release()

                task.add_done_callback(finished)
        finally:
            self._running = False
            for task in running:
                task.cancel()
            for task in list(running):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _submit(self, job_ids: list[str]) -> None:
        async with contextlib.AsyncExitStack() as held:
            jobs = []
            for job_id in job_ids:
                job = await held.enter_async_context(self.guard(job_id))
                if job is not None and fresh_claim(job) and wants_submission(job):
                    jobs.append(job)
            # Held from here (or not the lane's to submit): no longer waiting in the lane.
            self._queued.difference_update(job_ids)
            if not self._can_submit():
                return  # Slurm did not answer at the last look: the cycle submits once it does
            if not jobs:
                return
            try:
                await self._actions.submit_many(jobs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the cycle submits them later; the lane goes on
                log.exception("submitting jobs failed, will retry", jobs=len(jobs), error=describe(exc))


def wants_submission(job: JobRecord) -> bool:
    """What the decisions say of a fresh claim that Slurm does not have: submit it, or not now."""
    situation = JobSituation(
        chain_status=job.status,
        ours=job.ours,
        cancel_requested=job.cancel_requested,
        submitted=False,
        reported=job.last_reported_status,
        slurm=SlurmView(SlurmPresence.ABSENT),
    )
    return any(isinstance(action, Submit) for action in decide(situation))
