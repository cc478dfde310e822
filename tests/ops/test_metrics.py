"""Metrics and probes of a real daemon run, checked against what happened on chain and in Slurm."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from grid_dev.anvil import free_port
from grid_protocol.jobs import JobStatus as S
from tests.fixtures.ops import Running, http_get, probe, scrape, value
from tests.fixtures.supervisor import ProviderStack, wait_for


def start(stack: ProviderStack, **env: str) -> Running:
    port = free_port()
    process = stack.supervisor()
    process.env.update(
        GRID_SUPERVISOR_METRICS__PORT=str(port), GRID_SUPERVISOR_METRICS__PROBE_SECONDS="1", **env
    )
    process.start()
    return Running(process, port)


@pytest.fixture(scope="module")
def supervisor(provider_stack: ProviderStack) -> Iterator[Running]:
    running = start(provider_stack)
    provider_stack.wait_registered()
    yield running
    running.process.stop()


def test_a_job_shows_in_the_metrics(provider_stack: ProviderStack, supervisor: Running) -> None:
    stack, w3 = provider_stack, provider_stack.grid.w3
    wait_for("/readyz", lambda: probe(f"{supervisor.base}/readyz")[0] == 200, 60)
    _, ready = probe(f"{supervisor.base}/readyz")
    assert ready["ok"] is True and ready["failing"] == []
    checks = ready["checks"]
    assert isinstance(checks, dict) and set(checks) == {"main"}  # a [chain] file is one deployment, "main"
    assert set(checks["main"]) >= {"work_loop", "caught_up", "chain", "slurm", "registered", "sbatch"}
    assert probe(f"{supervisor.base}/healthz")[0] == 200

    job_id = stack.request("sleep 6; echo done", 500)
    stack.wait_status(job_id, S.RUNNING)
    supervisor.wait_metric("jobs", 1, status="RUNNING")
    running = scrape(supervisor.base)
    assert value(running, "slurm_submissions_total") == 1
    assert value(running, "dependency_up", dependency="slurm") == 1
    assert value(running, "dependency_up", dependency="chain") == 1
    assert value(running, "dependency_up", dependency="sbatch") == 1
    assert value(running, "slurm_accounting_available") == 1

    stack.wait_status(job_id, S.FINISHED)
    supervisor.wait_metric("jobs_closed", 1)
    supervisor.wait_metric("outbox_depth", 0)
    nonce = w3.eth.get_transaction_count(stack.provider.address)
    supervisor.wait_metric("transactions_mined_total", nonce)
    balance = w3.eth.get_balance(stack.provider.address)
    supervisor.wait_metric("wallet_balance_wei", float(balance))

    done = scrape(supervisor.base)
    # register, one claim, RUNNING and FINISHED reports: every one mined, none failed or replaced.
    assert value(done, "chain_actions", kind="register", state="mined") == 1
    assert value(done, "chain_actions", kind="claim_next_job", state="mined") == 1
    assert value(done, "chain_actions", kind="provider_set_job_status", state="mined") == 2
    assert value(done, "transactions_sent_total") == nonce
    assert value(done, "transactions_failed_total") == 0
    assert value(done, "transactions_replaced_total") == 0
    assert value(done, "outbox_oldest_age_seconds") == 0
    assert value(done, "jobs", status="RUNNING") == 0
    head = w3.eth.block_number
    last_block = value(done, "chain_last_block")
    assert last_block is not None and head - 2 <= last_block <= head
    assert value(done, "chain_cursor_lag_blocks") is not None
    age = value(done, "chain_last_block_age_seconds")
    assert age is not None and 0 <= age < 10
    assert value(done, "registered") == 1
    assert value(done, "ready") == 1
    assert value(done, "up", chain=None) == 1  # the process's own: no chain label
    assert value(done, "start_time_seconds", chain=None) is not None
    cycles = value(done, "work_cycles_total")
    assert cycles is not None and cycles > 0


def test_transaction_counts_survive_a_restart(provider_stack: ProviderStack, supervisor: Running) -> None:
    supervisor.wait_metric("outbox_depth", 0)
    before = scrape(supervisor.base)
    assert supervisor.process.terminate() == 0
    assert http_get(f"{supervisor.base}/metrics")[0] == 0  # the endpoint went away with the process
    supervisor.process.start()
    wait_for("metrics after the restart", lambda: http_get(f"{supervisor.base}/metrics")[0] == 200, 30)
    supervisor.wait_metric("ready", 1)
    after = scrape(supervisor.base)
    for name in (
        "transactions_sent_total",
        "transactions_mined_total",
        "slurm_submissions_total",
        "jobs_closed",
    ):
        assert value(after, name) == value(before, name), name
    cycles = value(after, "work_cycles_total")
    assert cycles is not None and cycles < (value(before, "work_cycles_total") or 0)  # a new process


def test_unreachable_slurm_and_sbatch_fail_readiness_not_liveness(provider_stack: ProviderStack) -> None:
    # No job is in flight, so only the probes can notice: Slurm's commands get a configuration file
    # that does not exist, the sbatch service a port where nothing listens.
    running = start(
        provider_stack,
        GRID_SUPERVISOR_SLURM__SLURM_CONF="/nonexistent/slurm.conf",
        GRID_SUPERVISOR_SBATCH__GRPC_TARGET=f"127.0.0.1:{free_port()}",
    )
    try:
        running.wait_metric("dependency_up", 0, dependency="sbatch")
        running.wait_metric("dependency_up", 0, dependency="slurm", timeout=90)
        status, answer = probe(f"{running.base}/readyz")
        assert status == 503
        assert answer["ok"] is False and answer["failing"] == ["main"]
        checks = answer["checks"]
        assert isinstance(checks, dict)
        assert checks["main"]["slurm"] != "reachable"
        assert "UNAVAILABLE" in checks["main"]["sbatch"]
        assert probe(f"{running.base}/healthz")[0] == 200
        assert running.metric("dependency_up", dependency="chain") == 1
    finally:
        running.process.stop()
