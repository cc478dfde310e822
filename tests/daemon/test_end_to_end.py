"""The supervisor end to end on the real stack: claim, run on Slurm, report, settle."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from grid_protocol.jobs import JobStatus as S
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


def test_registration_describes_the_cluster(
    provider_stack: ProviderStack, supervisor: SupervisorProcess
) -> None:
    hardware = provider_stack.grid.provider_manager.functions.getProviderHardware(
        provider_stack.provider.address
    ).call()
    cluster = provider_stack.cluster
    assert tuple(hardware) == (
        1,
        [cluster.gpus_per_node],
        [cluster.cpus_per_node],
        [cluster.memory_mb_per_node],
    )


def test_finished_job_settles_exactly(provider_stack: ProviderStack, supervisor: SupervisorProcess) -> None:
    stack = provider_stack
    before = balances(stack)
    job_id = stack.request("sleep 2; echo done", 500)
    stack.wait_status(job_id, S.FINISHED)
    duration = settle_check(stack, job_id, S.FINISHED, before=before)
    assert duration == 0  # a two-second job, billed as one minute by the contract
    assert [line.split("|")[1] for line in stack.accounted(job_id)] == ["COMPLETED"]
    output = stack.job_output(job_id).read_text()
    assert "done" in output


def test_failed_job_reports_its_exit_code(
    provider_stack: ProviderStack, supervisor: SupervisorProcess
) -> None:
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


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("UPDATE scripts SET script = script || 'echo injected' WHERE key = ?", "hashes to"),
        ("UPDATE scripts SET expires_at = 0 WHERE key = ?", "expired"),
    ],
    ids=["tampered", "expired"],
)
def test_tampered_or_expired_script_fails_with_refund(
    provider_stack: ProviderStack, supervisor: SupervisorProcess, change: str, reason: str
) -> None:
    stack = provider_stack
    key = stack.store_workflow(f"echo {reason}")
    with sqlite3.connect(stack.sbatch.database) as db:
        assert db.execute(change, (key,)).rowcount == 1
    before = balances(stack)
    job_id = stack.request("", 500, key=key)
    stack.wait_status(job_id, S.FAILED)
    assert reason in stack.grid.job(job_id)["lastError"]
    assert balances(stack) == before
    assert stack.slurm_jobs(job_id) == []


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
    wait_for(
        "Slurm to show the job cancelled",
        lambda: any(line.split("|")[1].startswith("CANCELLED") for line in stack.slurm_jobs(job_id)),
        30,
    )


def test_cancel_before_it_ran_refunds_and_leaves_nothing_in_slurm(
    provider_stack: ProviderStack, supervisor: SupervisorProcess
) -> None:
    stack = provider_stack
    blocker = stack.block_cpus()
    try:
        before = balances(stack)
        job_id = stack.request("echo should-not-run", 500)
        wait_for(
            "the job to wait in Slurm",
            lambda: [line for line in stack.slurm_jobs(job_id) if line.endswith("PENDING")],
            60,
        )
        stack.grid.send(stack.customer, stack.grid.scheduler.functions.cancelJob(job_id))
        assert stack.status(job_id) == S.CANCELLED
        assert balances(stack) == before
        wait_for(
            "the queued Slurm job to be cancelled",
            lambda: any(line.split("|")[1].startswith("CANCELLED") for line in stack.slurm_jobs(job_id)),
            30,
        )
    finally:
        stack.scancel(blocker)
    assert len(stack.accounted(job_id)) == 1
    assert not stack.job_output(job_id).exists()


def test_time_limit_out_of_credits_top_up_and_auto_top_up(
    provider_stack: ProviderStack, supervisor: SupervisorProcess
) -> None:
    """100 credits buy one minute: the job runs out, unless a top-up or a delegated top-up extends it."""
    stack = provider_stack
    grid = stack.grid
    per_minute = credits_per_minute(1, 1, 1024, 1)
    grid.send(stack.customer, grid.credit.functions.approve(grid.scheduler.address, 10**6 * CREDIT))
    starved = stack.request("sleep 240", 100)
    topped = stack.request("sleep 80; echo finished", 100)
    delegated = stack.request("sleep 80; echo finished", 100, delegate=True)
    grid.send(stack.customer, grid.credit.functions.approve(grid.scheduler.address, 10**6 * CREDIT))
    stack.wait_status(topped, S.RUNNING)
    grid.send(stack.customer, grid.scheduler.functions.topUpJob(topped, 200 * CREDIT))

    assert stack.wait_status(starved, S.OUT_OF_CREDITS, S.FINISHED, timeout=240) == S.OUT_OF_CREDITS
    starved_minutes = max(stack.reported_duration(starved, S.OUT_OF_CREDITS), 1)
    assert stack.grid.job(starved)["finalCost"] == min(starved_minutes * per_minute, 100 * CREDIT)
    assert stack.wait_status(topped, S.FINISHED, S.OUT_OF_CREDITS, timeout=240) == S.FINISHED
    assert stack.wait_status(delegated, S.FINISHED, S.OUT_OF_CREDITS, timeout=240) == S.FINISHED
    assert grid.job(topped)["maxCost"] == 300 * CREDIT
    # The contract takes a delegated slice of 30 minutes whenever at most one slice is left: the first at
    # the start, a second if the job is still running once its first minute is spent.
    added = grid.job(delegated)["maxCost"] - 100 * CREDIT
    assert added in (30 * per_minute, 60 * per_minute), added
    used = max(stack.reported_duration(delegated, S.FINISHED), 1)
    assert grid.job(delegated)["finalCost"] == used * per_minute, "only the minutes used are paid"
    log = supervisor.text()
    assert "time limit raised" in log
    assert "delegated top-up requested" in log


def test_refused_job_is_reassigned(provider_stack: ProviderStack, supervisor: SupervisorProcess) -> None:
    stack, grid = provider_stack, provider_stack.grid
    big_provider = grid.providers[1]
    grid.register_provider(
        big_provider, nodes=4, cpus=64, gpus=4, mem=512_000, approve=False
    )  # auto-approved
    job_id = stack.request("true", 5000, cpus=stack.cluster.cpus_per_node * 2)
    wait_for("the refusal", lambda: stack.grid.job(job_id)["providerAddr"].endswith("0" * 40))
    assert stack.status(job_id) == S.PENDING
    assert stack.slurm_jobs(job_id) == []
    assert "job refused" in supervisor.text()
    grid.schedule(job_id, big_provider)  # what the meta-scheduler does next
    assert grid.claim(big_provider)["jobId"] == job_id
    assert stack.status(job_id) == S.SCHEDULED


def test_fifty_jobs_at_once_all_settle(provider_stack: ProviderStack, supervisor: SupervisorProcess) -> None:
    """Fifty jobs meta-scheduled in one block: claimed several to a transaction (`claimNextJobs`),
    never more at once than `max_queued_jobs` (8), none reverted; submitted in groups (the jobs of a
    group share one durable write of their intents and one GetSBatches); each settled to the wei."""
    stack, grid = provider_stack, provider_stack.grid
    key = stack.store_workflow("true", gpus=0)
    per_minute = credits_per_minute(1, 1, 1024, 0)
    provider_before = grid.balance(stack.provider)
    jobs = [stack.request("true", 100, gpus=0, key=key, schedule=False) for _ in range(50)]
    (first, *_) = grid.send_in_one_block(
        grid.oracle, [grid.scheduler.functions.metaSchedule(j, stack.provider.address) for j in jobs]
    )
    for job_id in jobs:
        stack.wait_status(job_id, S.FINISHED, timeout=300)
    claims = [
        log
        for log in grid.scheduler.events.ClaimJobEvent().get_logs(from_block=first["blockNumber"])
        if log["args"]["jobId"] in set(jobs)
    ]
    per_transaction = Counter(log["transactionHash"] for log in claims)
    assert sorted(log["args"]["jobId"] for log in claims) == sorted(jobs), "each job claimed once"
    assert 1 < max(per_transaction.values()) <= 8 and len(per_transaction) < len(jobs)
    receipts = [grid.w3.eth.get_transaction_receipt(tx) for tx in per_transaction]
    assert all(r["status"] == 1 and r["from"] == stack.provider.address for r in receipts)
    store = tomllib.loads(supervisor.config.read_text())["store"]["path"]
    with sqlite3.connect(store) as db:
        intents = Counter(
            at
            for (job_id, at) in db.execute("SELECT job_id, submit_intent_at FROM job")
            if bytes.fromhex(job_id[2:]) in set(jobs)
        )
    assert sum(intents.values()) == len(jobs) and max(intents.values()) > 1
    service_log = (stack.sbatch.database.parent / "sbatch.log").read_text()
    asked_together = [int(n) for n in re.findall(r"scripts answered\s+jobs=(\d+)", service_log)]
    assert max(asked_together) > 1, "a group's scripts are fetched in one GetSBatches"
    costs = [grid.job(job_id)["finalCost"] for job_id in jobs]
    assert all(
        cost == per_minute * max(stack.reported_duration(j, S.FINISHED), 1)
        for j, cost in zip(jobs, costs, strict=True)
    )
    assert grid.balance(stack.provider) - provider_before == sum(c - c * 20 // 100 for c in costs)
    assert all(len(stack.accounted(job_id)) == 1 for job_id in jobs)


def test_status_and_jobs_commands_show_the_store(
    provider_stack: ProviderStack, supervisor: SupervisorProcess
) -> None:
    stack = provider_stack
    job_id = stack.request("echo listed", 500)
    stack.wait_status(job_id, S.FINISHED)
    name = "0x" + job_id.hex()
    command = [str(Path(sys.executable).parent / "grid-supervisor")]

    def jobs() -> list[dict[str, object]]:
        answer = subprocess.run(
            [*command, "jobs", "--all", "--json", "--config", str(supervisor.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        rows: list[dict[str, object]] = json.loads(answer.stdout)
        return rows

    row = wait_for(
        "the job closed in the store", lambda: [r for r in jobs() if r["job_id"] == name and r["closed"]]
    )[0]
    assert row["chain_status"] == "FINISHED" and row["reported"] == "FINISHED"
    assert isinstance(row["slurm_job_id"], int)
    status = subprocess.run(
        [*command, "status", "--json", "--config", str(supervisor.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    summary = json.loads(status.stdout)
    assert summary["chain_id"] == "31337"
    assert summary["cursor_block"] <= stack.grid.w3.eth.block_number
    assert summary["closed_jobs"] >= 1
