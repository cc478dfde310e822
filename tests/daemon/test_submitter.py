"""The submitter lane's guard: one submission of a job at a time across the lane and the cycle, and
a Slurm answer asked for while a job was being submitted never taken as "Slurm has no such job"."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import cast

from supervisor.actions import JobActions
from supervisor.store import Store
from supervisor.submitter import Submitter, fresh_claim

JOB = "0x" + "1" * 64


def claimed_store(tmp_path: Path) -> Store:
    store = Store.open(tmp_path / "state.sqlite")
    store.record_claim(JOB, customer="0x" + "ab" * 20, max_duration_minute=5, definition={}, claimed_block=7)
    return store


async def test_one_holder_at_a_time_and_the_record_read_fresh(tmp_path: Path) -> None:
    store = claimed_store(tmp_path)
    # The guard never runs an action itself: the lane's executors are not needed here.
    submitter = Submitter(store, cast(JobActions, None), lambda: True)
    async with submitter.guard(JOB) as first:
        assert first is not None and fresh_claim(first)
        async with submitter.guard(JOB) as second:
            assert second is None  # the cycle finds the lane holding the job: it leaves it
        store.update_job(JOB, submit_intent_at=time.time(), slurm_job_id=41)
    async with submitter.guard(JOB) as again:
        assert again is None  # submitted meanwhile: a stale view never submits it twice
    store.close()


async def test_a_slurm_answer_asked_during_a_submission_does_not_count(tmp_path: Path) -> None:
    store = claimed_store(tmp_path)
    submitter = Submitter(store, cast(JobActions, None), lambda: True)
    before = time.monotonic()
    assert submitter.settled_before(JOB, before)  # never submitted: Slurm's answer is the truth
    async with submitter.guard(JOB):
        asked_during = time.monotonic()
        assert not submitter.settled_before(JOB, asked_during)
        await asyncio.sleep(0)
    assert not submitter.settled_before(JOB, asked_during)  # asked before sbatch returned
    assert not submitter.settled_before(JOB, before)
    assert submitter.settled_before(JOB, time.monotonic() + 1e-3)  # asked after: it counts
    store.close()


async def test_only_a_claim_without_a_submit_intent_is_fresh(tmp_path: Path) -> None:
    store = claimed_store(tmp_path)
    record = store.get_job(JOB)
    assert record is not None and fresh_claim(record)
    store.update_job(JOB, submit_intent_at=time.time())
    record = store.get_job(JOB)
    assert record is not None and not fresh_claim(record)  # may be in Slurm: the cycle looks it up
    store.close()


async def test_the_cycle_leaves_a_claim_to_the_lane_only_while_the_lane_runs(tmp_path: Path) -> None:
    store = claimed_store(tmp_path)
    submitter = Submitter(store, cast(JobActions, None), lambda: False)
    submitter.claimed(JOB)
    assert not submitter.pending(JOB), "no lane running: the work cycle submits it"
    lane = asyncio.create_task(submitter.run())
    try:
        await asyncio.sleep(0)
        assert submitter.pending(JOB), "the running lane has it: the cycle leaves it alone"
        deadline = time.monotonic() + 10
        while submitter.pending(JOB):  # Slurm said no at its last look: the lane hands it back
            assert time.monotonic() < deadline, "the lane kept the claim"
            await asyncio.sleep(0.01)
        record = store.get_job(JOB)
        assert record is not None and record.submit_intent_at is None and fresh_claim(record)
    finally:
        lane.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lane
    submitter.claimed(JOB)
    assert not submitter.pending(JOB), "the lane stopped: the cycle takes its claims again"
    store.close()
