"""The whole stack driven by events, not by its period: with Slurm polled only once a minute, a job
is claimed from the meta-scheduling hint, submitted on its ClaimJobEvent, and reported RUNNING and
FINISHED on slurmctld's wake-ups, all well within that minute."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from grid_dev.anvil import free_port
from grid_protocol.jobs import JobStatus as S
from tests.fixtures.supervisor import ProviderStack, SupervisorProcess

POLL_S = 60


@pytest.fixture(scope="module")
def supervisor(provider_stack: ProviderStack) -> Iterator[SupervisorProcess]:
    target = f"127.0.0.1:{free_port()}"
    with provider_stack.cluster.wakeups_to(target):
        process = provider_stack.supervisor(slurm_poll_seconds=POLL_S, slurm={"wakeup_listen": target})
        process.start()
        try:
            provider_stack.wait_registered()
            yield process
        finally:
            process.stop()


def test_a_job_runs_to_settlement_without_waiting_for_the_slurm_poll(
    provider_stack: ProviderStack, supervisor: SupervisorProcess
) -> None:
    stack = provider_stack
    for _ in range(2):  # the second job finds every lane already idle, waiting on its period
        job_id = stack.request("sleep 2; echo done", 200, gpus=0)
        # Half a poll period: the work lane's own period cannot have brought it there.
        assert stack.wait_status(job_id, S.FINISHED, S.FAILED, timeout=POLL_S / 2) == S.FINISHED
    assert "listening for Slurm wake-ups" in supervisor.text()
