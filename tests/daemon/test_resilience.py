"""The supervisor killed, stopped and started against missing dependencies: no job lost or doubled."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator

import pytest

from grid_protocol.jobs import JobStatus as S
from supervisor.faults import CRASH_ENV
from tests.fixtures.chain_layer import TcpProxy
from tests.fixtures.sbatch import start_sbatch_service
from tests.fixtures.supervisor import (
    PRICES_WEI,
    ProviderStack,
    SupervisorProcess,
    credits_per_minute,
    wait_for,
)

PER_MINUTE = credits_per_minute(1, 1, 1024, 1)


@pytest.fixture
def supervisor(provider_stack: ProviderStack) -> Iterator[SupervisorProcess]:
    process = provider_stack.supervisor()
    yield process
    process.stop()


def exact_settlement(stack: ProviderStack, job_id: bytes, provider_before: int) -> None:
    job = stack.grid.job(job_id)
    duration = stack.reported_duration(job_id, S(job["status"]))
    final_cost = min(max(duration, 1) * PER_MINUTE, job["maxCost"])
    assert job["finalCost"] == final_cost
    assert stack.grid.balance(stack.provider) - provider_before == final_cost - final_cost * 20 // 100


def reports(stack: ProviderStack, job_id: bytes) -> list[int]:
    """The statuses this job went through on chain, in order (each transition exactly once)."""
    events = stack.grid.jobs.events.JobTransitionEvent().get_logs(from_block=0)
    return [e["args"]["_to"] for e in events if e["args"]["_jobId"] == job_id]


def test_killed_at_every_stage_no_double_and_exact_settlement(
    provider_stack: ProviderStack, supervisor: SupervisorProcess
) -> None:
    stack = provider_stack
    supervisor.start()
    stack.wait_registered()
    provider_before = stack.grid.balance(stack.provider)

    # 1. after the claim: killed as soon as the chain says SCHEDULED
    claimed = stack.request("sleep 3; echo one", 500)
    stack.wait_status(claimed, S.SCHEDULED, S.RUNNING, S.FINISHED)
    supervisor.kill()
    supervisor.start()
    stack.wait_status(claimed, S.FINISHED)

    # 2. after sbatch: the job waits in Slurm behind a blocker while the supervisor is killed
    blocker = stack.block_cpus()
    queued = stack.request("echo two", 500)
    wait_for("the job queued in Slurm", lambda: stack.slurm_jobs(queued), 60)
    supervisor.kill()
    supervisor.start()
    stack.scancel(blocker)
    stack.wait_status(queued, S.FINISHED)

    # 3. while running
    running = stack.request("sleep 6; echo three", 500)
    stack.wait_status(running, S.RUNNING)
    supervisor.kill()
    supervisor.start()
    stack.wait_status(running, S.FINISHED)

    # 4. after the end, before the report: the job ends while no supervisor runs
    ended = stack.request("sleep 4; echo four", 500)
    stack.wait_status(ended, S.RUNNING)
    supervisor.kill()
    wait_for(
        "Slurm to finish the job",
        lambda: any(line.endswith("COMPLETED") for line in stack.slurm_jobs(ended)),
        60,
    )
    assert stack.status(ended) == S.RUNNING
    supervisor.start()
    stack.wait_status(ended, S.FINISHED)

    total = 0
    for job_id in (claimed, queued, running, ended):
        assert len(stack.accounted(job_id)) == 1, "a second Slurm job was submitted"
        assert reports(stack, job_id) == [S.META_SCHEDULED, S.SCHEDULED, S.RUNNING, S.FINISHED]
        cost = stack.grid.job(job_id)["finalCost"]
        assert cost == max(stack.reported_duration(job_id, S.FINISHED), 1) * PER_MINUTE
        total += cost - cost * 20 // 100
    assert stack.grid.balance(stack.provider) - provider_before == total


def test_sigterm_drains_and_the_next_start_takes_the_job_over(
    provider_stack: ProviderStack, supervisor: SupervisorProcess
) -> None:
    stack = provider_stack
    supervisor.start()
    stack.wait_registered()
    provider_before = stack.grid.balance(stack.provider)
    job_id = stack.request("sleep 8; echo drained", 500)
    stack.wait_status(job_id, S.RUNNING)
    assert supervisor.terminate(timeout=60) == 0
    log = supervisor.text()
    assert "stop requested: draining" in log and "supervisor stopped" in log
    assert stack.accounted(job_id)[0].split("|")[1] in {"RUNNING", "COMPLETED"}  # Slurm kept it
    supervisor.start()
    stack.wait_status(job_id, S.FINISHED)
    exact_settlement(stack, job_id, provider_before)
    log = supervisor.text()
    assert log.count("registered with the grid") <= 1  # a restart registers nothing new
    assert "registration unchanged" in log


def test_started_while_the_sbatch_service_is_down(provider_stack: ProviderStack) -> None:
    stack = provider_stack
    service = stack.sbatch
    key = stack.store_workflow("echo came-back")
    service.stop()
    supervisor = stack.supervisor()
    try:
        supervisor.start()
        stack.wait_registered()
        job_id = stack.request("", 500, key=key)
        stack.wait_status(job_id, S.SCHEDULED)
        wait_for("the supervisor to say so", lambda: "sbatch service unavailable" in supervisor.text(), 30)
        assert stack.status(job_id) == S.SCHEDULED
    finally:
        stack.sbatch = start_sbatch_service(
            service.database.parent,
            rpc_url=stack.grid.anvil.http_url,
            metascheduler_address=stack.grid.deployment.meta_scheduler,
            extra_env={"GRID_SBATCH_STORAGE_ROOT": str(stack.shared / "storage")},
            graphql_port=service.graphql_port,
            grpc_port=service.grpc_port,
        )
    try:
        stack.wait_status(job_id, S.FINISHED)
    finally:
        supervisor.stop()


def register_as_the_supervisor_would(stack: ProviderStack) -> None:
    """The registration the supervisor makes, done beforehand for tests that start it without Slurm."""
    cluster = stack.cluster
    stack.grid.register_provider(
        stack.provider,
        PRICES_WEI,
        cpus=cluster.cpus_per_node,
        gpus=cluster.gpus_per_node,
        mem=cluster.memory_mb_per_node,
        labels=(("os", "linux"),),
        approve=False,
    )


def test_started_while_slurm_is_down(provider_stack: ProviderStack) -> None:
    stack = provider_stack
    register_as_the_supervisor_would(stack)
    assert stack.cluster.run_script("stop-ctld").returncode == 0
    supervisor = stack.supervisor()
    try:
        supervisor.start()
        job_id = stack.request("echo slurm-back", 500)
        wait_for("the supervisor to say Slurm is down", lambda: "waiting for Slurm" in supervisor.text(), 60)
        assert stack.status(job_id) == S.META_SCHEDULED  # nothing claimed without Slurm
    finally:
        assert stack.cluster.run_script("start-ctld").returncode == 0
    try:
        stack.wait_status(job_id, S.FINISHED, timeout=120)
    finally:
        supervisor.stop()


def test_started_while_the_rpc_is_down(
    provider_stack: ProviderStack, proxy_factory: Callable[[int], TcpProxy]
) -> None:
    stack = provider_stack
    proxy = proxy_factory(stack.grid.anvil.port)
    register_as_the_supervisor_would(stack)
    proxy.mode = "hang"
    supervisor = stack.supervisor(rpc_url=proxy.http_url)
    try:
        supervisor.start()
        wait_for(
            "the supervisor to wait for the chain", lambda: "waiting for the chain" in supervisor.text(), 90
        )
        assert supervisor.running()
        proxy.mode = "pass"
        proxy.cut()
        job_id = stack.request("echo rpc-back", 500)
        stack.wait_status(job_id, S.FINISHED, timeout=120)
    finally:
        supervisor.stop()
    assert stack.grid.job(job_id)["finalCost"] == PER_MINUTE


def store_row(supervisor: SupervisorProcess, job_id: bytes) -> sqlite3.Row | None:
    """The dead supervisor's record of a job, read from its state file."""
    with sqlite3.connect(supervisor.config.with_suffix(".sqlite")) as db:
        db.row_factory = sqlite3.Row
        row: sqlite3.Row | None = db.execute(
            "SELECT * FROM job WHERE job_id = ?", ("0x" + job_id.hex(),)
        ).fetchone()
        return row


@pytest.mark.parametrize("point", ["claim_recorded", "slurm_submitted", "end_decided"])
def test_killed_exactly_in_a_window_loses_and_doubles_nothing(
    provider_stack: ProviderStack, supervisor: SupervisorProcess, point: str
) -> None:
    """The supervisor kills itself at a crash point (supervisor/faults.py); the test checks from the
    chain, Slurm and the state file that the kill hit that window, then restarts it."""
    stack = provider_stack
    supervisor.start()
    stack.wait_registered()
    supervisor.stop()
    provider_before = stack.grid.balance(stack.provider)
    supervisor.env[CRASH_ENV] = point
    supervisor.start()
    job_id = stack.request("sleep 3; echo window", 500)
    wait_for("the crash point", lambda: not supervisor.running(), 120)
    assert f'"point": "{point}"' in supervisor.text() and "crash point reached" in supervisor.text()

    row = store_row(supervisor, job_id)
    if point == "claim_recorded":  # claimed on chain, unknown to the state file
        assert stack.status(job_id) == S.SCHEDULED and row is None
        assert stack.slurm_jobs(job_id) == []
    elif point == "slurm_submitted":  # in Slurm, its id not saved
        assert row is not None and row["slurm_job_id"] is None
        assert len(stack.accounted(job_id)) == 1
    else:  # Slurm's job ended, its end not reported
        assert row is not None and row["last_reported_status"] == S.RUNNING
        assert stack.status(job_id) == S.RUNNING
        assert any(line.endswith("COMPLETED") for line in stack.accounted(job_id))

    del supervisor.env[CRASH_ENV]
    supervisor.start()
    stack.wait_status(job_id, S.FINISHED)
    assert len(stack.accounted(job_id)) == 1, "a second Slurm job was submitted"
    assert reports(stack, job_id) == [S.META_SCHEDULED, S.SCHEDULED, S.RUNNING, S.FINISHED]
    exact_settlement(stack, job_id, provider_before)
