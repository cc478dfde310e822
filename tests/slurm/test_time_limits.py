"""Time limits on the real cluster: TIMEOUT, and a raised limit that lets a job run past its first one.

These jobs need Slurm's one-minute granularity, so all of them (both backends) are submitted at once and
watched together: the test takes about as long as one job that times out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from grid_protocol.jobs import JobStatus
from supervisor.slurm import CommandSlurmBackend, JobSubmission
from tests.fixtures.slurm import SlurmCluster
from tests.slurm.conftest import make_backend, new_job_name, wait_for_job

# Runs 90 s with a 1-minute limit: it only completes if the limit was raised.
OUTLIVES_FIRST_LIMIT = "#!/bin/bash\nsleep 90\necho done\n"
NEVER_ENDS = "#!/bin/bash\nsleep 600\n"


def one_minute_job(name: str, user: str, folder: Path, script: str) -> JobSubmission:
    return JobSubmission(
        name=name,
        script=script,
        unix_user=user,
        workdir=str(folder),
        output_path=str(folder / f"{name[:10]}.out"),
        time_limit_minutes=1,
        mem_per_cpu_mb=100,
    )


async def _timeout_and_extension(backend: CommandSlurmBackend, user: str, folder: Path) -> tuple[str, str]:
    timed_out, extended = new_job_name(), new_job_name()
    await backend.submit(one_minute_job(timed_out, user, folder, NEVER_ENDS))
    extended_id = await backend.submit(one_minute_job(extended, user, folder, OUTLIVES_FIRST_LIMIT))
    await wait_for_job(backend, extended, lambda j: j.state == "RUNNING", timeout=60)
    await backend.extend_time_limit(extended_id, 2)
    raised = await wait_for_job(backend, extended, lambda j: j.time_limit_minutes == 3, timeout=30)
    assert raised.state == "RUNNING"
    return timed_out, extended


async def test_timeout_and_raised_time_limit_on_both_backends(
    slurm_cluster: SlurmCluster, job_dir: Callable[[str], Path]
) -> None:
    backends = [make_backend(slurm_cluster, kind) for kind in ("local", "ssh")]
    folder = job_dir(slurm_cluster.service_user)
    try:
        pairs = await asyncio.gather(
            *(_timeout_and_extension(b, slurm_cluster.service_user, folder) for b in backends)
        )
        for backend, (timed_out, extended) in zip(backends, pairs, strict=True):
            ended = await wait_for_job(backend, timed_out, lambda j: j.is_final, timeout=180)
            assert ended.state == "TIMEOUT"
            assert ended.chain_outcome().status == JobStatus.OUT_OF_CREDITS
            finished = await wait_for_job(backend, extended, lambda j: j.is_final, timeout=180)
            assert finished.state == "COMPLETED", finished
            assert finished.elapsed_seconds > 60  # it ran past its first limit
            assert finished.chain_outcome().status == JobStatus.FINISHED
        # Read again from accounting once the controller has forgotten them.
        for backend, (timed_out, extended) in zip(backends, pairs, strict=True):
            accounted = await wait_for_job(backend, timed_out, lambda j: j.from_accounting, timeout=120)
            assert accounted.state == "TIMEOUT"
            assert accounted.chain_outcome().status == JobStatus.OUT_OF_CREDITS
            accounted = await wait_for_job(backend, extended, lambda j: j.from_accounting, timeout=120)
            assert (accounted.state, accounted.exit_code) == ("COMPLETED", 0)
            assert accounted.elapsed_seconds > 60
    finally:
        for backend in backends:
            await backend.close()
