"""The supervisor end to end on the real stack: claim, run on Slurm, report, settle."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from supervisor.core.status import JobStatus as S
from tests.fixtures.contracts import CREDIT
from tests.fixtures.supervisor import ProviderStack, SupervisorProcess, credits_per_minute, wait_for


@pytest.fixture(scope="module")
def supervisor(provider_stack: ProviderStack) -> Iterator[SupervisorProcess]:
    process = provider_stack.supervisor(max_queued_jobs=8)
    process.start()
    provider_stack.wait_registered()
    yield process
    process.stop()


def settle_check(stack: ProviderStack, job_id: bytes, end: S, *, before: tuple[int, int]) -> int:
    """The settlement of PROTOCOL.md section 5 to the wei; returns the duration reported."""
    job = stack.grid.job(job_id)
    duration = stack.reported_duration(job_id, end)
    per_minute = credits_per_minute(1, 1, 1024, 1)
    final_cost = min(max(duration, 1) * per_minute, job["maxCost"])
    assert job["finalCost"] == final_cost
    customer_before, provider_before = before
    assert stack.grid.balance(stack.provider) - provider_before == final_cost - final_cost * 20 // 100
    assert customer_before - stack.grid.balance(stack.customer) == final_cost
    return duration


def balances(stack: ProviderStack) -> tuple[int, int]:
    return stack.grid.balance(stack.customer), stack.grid.balance(stack.provider)


def test_registration_describes_the_cluster(provider_stack: ProviderStack, supervisor: SupervisorProcess) -> None:
    hardware = provider_stack.grid.provider_manager.functions.getProviderHardware(
        provider_stack.provider.address
    ).call()
    cluster = provider_stack.cluster
    assert tuple(hardware) == (1, [cluster.gpus_per_node], [cluster.cpus_per_node], [cluster.memory_mb_per_node])


def test_finished_job_settles_exactly(provider_stack: ProviderStack, supervisor: SupervisorProcess) -> None:
    stack = provider_stack
    before = balances(stack)
    job_id = stack.request("sleep 2; echo done", 500)
    stack.wait_status(job_id, S.FINISHED)
    duration = settle_check(stack, job_id, S.FINISHED, before=before)
    assert duration == 0  # a two-second job, billed as one minute by the contract
    assert [line.split("|")[1] for line in stack.slurm_jobs(job_id)] == ["COMPLETED"]
    output = (stack.shared / "jobs" / f"0x{job_id.hex()}.out").read_text()
    assert "done" in output


def test_failed_job_reports_its_exit_code(provider_stack: ProviderStack, supervisor: SupervisorProcess) -> None:
    stack = provider_stack
    before = balances(stack)
    job_id = stack.request("echo failing; exit 3", 500)
    stack.wait_status(job_id, S.FAILED)
    job = stack.grid.job(job_id)
    assert job["exitCode"] == 3
    assert "exit code 3" in job["lastError"]
    settle_check(stack, job_id, S.FAILED, before=before)


def test_script_that_does_not_match_its_key_fails_with_refund(
    provider_stack: ProviderStack, supervisor: SupervisorProcess
) -> None:
    stack = provider_stack
    before = balances(stack)
    job_id = stack.request("true", 500, key="ab" * 32)  # no such script stored
    stack.wait_status(job_id, S.FAILED)
    job = stack.grid.job(job_id)
    assert "batch script unusable" in job["lastError"]
    assert balances(stack) == before
    assert stack.slurm_jobs(job_id) == []


def test_job_beyond_the_cluster_is_refused(provider_stack: ProviderStack, supervisor: SupervisorProcess) -> None:
    stack = provider_stack
    too_big = stack.cluster.cpus_per_node * 2
    job_id = stack.request("true", 5000, cpus=too_big)
    receipt_seen = wait_for(
        "the refusal",
        lambda: stack.grid.scheduler.events.JobRefusedEvent().get_logs(from_block=0),
    )
    assert any(e["args"]["_jobId"] == job_id for e in receipt_seen)
    job = stack.grid.job(job_id)
    assert job["status"] == S.PENDING
    assert job["providerAddr"] == "0x0000000000000000000000000000000000000000"
    assert stack.slurm_jobs(job_id) == []
    assert "refused" in supervisor.text()


def test_cancel_while_running_bills_the_time_used(
    provider_stack: ProviderStack, supervisor: SupervisorProcess
) -> None:
    stack = provider_stack
    before = balances(stack)
    job_id = stack.request("sleep 300", 500)
    stack.wait_status(job_id, S.RUNNING)
    stack.grid.send(stack.customer, stack.grid.scheduler.functions.cancelJob(job_id))
    stack.wait_status(job_id, S.CANCELLED)
    settle_check(stack, job_id, S.CANCELLED, before=before)
    wait_for("Slurm to show the job cancelled", lambda: stack.slurm_jobs(job_id)[0].split("|")[1].startswith("CANCELLED"), 30)


def test_credit_value(provider_stack: ProviderStack) -> None:
    assert credits_per_minute(1, 1, 1024, 1) == 61_024 * CREDIT // 1000
