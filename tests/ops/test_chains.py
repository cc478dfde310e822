"""Metrics, `/healthz`, `/readyz` and systemd's notifications of one supervisor serving two chains.

`alpha` is the module's stack, `beta` a second anvil with its own contracts and sbatch service; beta's
RPC goes through a TCP proxy so a test can make that chain answer garbage, as a broken endpoint
would, and watch only beta's readiness fail. `status` and `jobs` show each chain's state file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grid_dev.anvil import free_port
from grid_protocol.jobs import JobStatus as S
from tests.fixtures.chain_layer import TcpProxy
from tests.fixtures.ops import Notification, NotifySocket, Running, probe, scrape, two_chains, value
from tests.fixtures.supervisor import ProviderStack, SupervisorProcess, wait_for

GRID_SUPERVISOR = str(Path(sys.executable).parent / "grid-supervisor")


@pytest.fixture
def beta_proxy(second_chain: ProviderStack) -> Iterator[TcpProxy]:
    proxy = TcpProxy(second_chain.grid.anvil.port)
    yield proxy
    proxy.close()


def start(
    alpha: ProviderStack, beta: ProviderStack, proxy: TcpProxy, name: str, **env: str
) -> tuple[SupervisorProcess, Running]:
    port = free_port()
    process = two_chains(alpha, beta, name, beta_rpc_url=proxy.http_url, metrics_port=port)
    process.env.update(env)
    process.start()
    return process, Running(process, port)


def readyz(running: Running) -> tuple[int, dict[str, object]]:
    return probe(f"{running.base}/readyz")


def checks_of(answer: dict[str, object], chain: str) -> dict[str, str]:
    checks = answer["checks"]
    assert isinstance(checks, dict), answer
    found: dict[str, str] = checks[chain]
    return found


def test_each_chain_has_its_labels_and_its_readiness(
    provider_stack: ProviderStack, second_chain: ProviderStack, beta_proxy: TcpProxy
) -> None:
    alpha, beta = provider_stack, second_chain
    process, running = start(alpha, beta, beta_proxy, "two-labels")
    try:
        wait_for("/readyz on both chains", lambda: readyz(running)[0] == 200, 120)
        _, answer = readyz(running)
        assert answer["ok"] is True and answer["failing"] == []
        checks = answer["checks"]
        assert isinstance(checks, dict) and set(checks) == {"alpha", "beta"}
        for chain in ("alpha", "beta"):
            found = checks_of(answer, chain)
            assert found["chain"] == "reachable" and found["registered"] == "approved for scheduling"

        samples = scrape(running.base)
        assert value(samples, "up", chain=None) == 1
        assert not any(labels for (name, labels) in samples if name == "grid_supervisor_up")
        for chain, stack in (("alpha", alpha), ("beta", beta)):
            assert value(samples, "ready", chain=chain) == 1
            assert value(samples, "registered", chain=chain) == 1
            assert value(samples, "dependency_up", chain=chain, dependency="chain") == 1
            head = stack.grid.w3.eth.block_number
            last_block = value(samples, "chain_last_block", chain=chain)
            assert last_block is not None and head - 2 <= last_block <= head, chain
        assert value(samples, "ready", chain="main") is None  # a [[chains]] file has no "main"

        # A job on beta alone moves beta's figures, not alpha's.
        submissions = value(samples, "slurm_submissions_total", chain="alpha")
        job_id = beta.request("sleep 4; echo beta", 500)
        beta.wait_status(job_id, S.RUNNING)
        running.wait_metric("jobs", 1, chain="beta", status="RUNNING")
        assert running.metric("jobs", chain="alpha", status="RUNNING") == 0
        beta.wait_status(job_id, S.FINISHED)
        running.wait_metric("jobs_closed", 1, chain="beta")
        after = scrape(running.base)
        assert value(after, "slurm_submissions_total", chain="beta") == 1
        assert value(after, "slurm_submissions_total", chain="alpha") == submissions
        running.wait_metric(
            "wallet_balance_wei", float(beta.grid.w3.eth.get_balance(beta.provider.address)), chain="beta"
        )
        wait_for("beta's job closed in its store", lambda: closed_in_store(process, "0x" + job_id.hex()), 60)
    finally:
        process.stop()

    # `status` and `jobs` read each chain's state file; a chain whose file is gone is named, not a crash.
    code, summary = cli(process, "status", "--json")
    assert code == 0 and set(summary) == {"alpha", "beta"}, summary
    assert summary["alpha"]["chain_id"] == "31337" and summary["beta"]["chain_id"] == "31338"
    assert summary["beta"]["closed_jobs"] == 1 and summary["beta"]["state_file"].endswith(
        "two-labels.beta.sqlite"
    )
    code, rows = cli(process, "jobs", "--all", "--json")
    assert code == 0
    assert [(row["chain"], row["job_id"]) for row in rows if row["chain"] == "beta"] == [
        ("beta", "0x" + job_id.hex())
    ]
    beta_state = Path(summary["beta"]["state_file"])
    for path in beta_state.parent.glob(beta_state.name + "*"):
        path.unlink()
    code, summary = cli(process, "status", "--json")
    assert code == 1
    assert "the supervisor has not run yet" in summary["beta"]["error"]
    assert summary["alpha"]["chain_id"] == "31337"  # the other chain is still shown


def cli(process: SupervisorProcess, *args: str) -> tuple[int, Any]:
    """Exit status and the JSON printed by `grid-supervisor <args> --config <the process's>`."""
    result = subprocess.run(
        [GRID_SUPERVISOR, *args, "--config", str(process.config)],
        env=process.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, json.loads(result.stdout)


def closed_in_store(process: SupervisorProcess, job_id: str) -> bool:
    code, rows = cli(process, "jobs", "--all", "--json")
    return code == 0 and any(row["job_id"] == job_id and row["closed"] for row in rows)


def test_a_chain_that_breaks_fails_readiness_naming_it_not_liveness(
    provider_stack: ProviderStack, second_chain: ProviderStack, beta_proxy: TcpProxy
) -> None:
    process, running = start(provider_stack, second_chain, beta_proxy, "two-broken")
    try:
        wait_for("/readyz on both chains", lambda: readyz(running)[0] == 200, 120)
        beta_proxy.set_mode("garbage")  # beta's endpoint answers broken HTTP to every new connection
        beta_proxy.cut()  # and the connections it had are gone
        running.wait_metric("dependency_up", 0, chain="beta", dependency="chain")
        status, answer = readyz(running)
        assert status == 503 and answer["ok"] is False, answer
        assert answer["failing"] == ["beta"], answer
        assert checks_of(answer, "beta")["chain"] != "reachable"
        assert checks_of(answer, "alpha")["chain"] == "reachable"
        assert probe(f"{running.base}/healthz")[0] == 200
        assert running.metric("dependency_up", chain="alpha", dependency="chain") == 1
        assert running.metric("up", chain=None) == 1

        beta_proxy.set_mode("pass")
        wait_for("/readyz once beta answers again", lambda: readyz(running)[0] == 200, 60)
    finally:
        process.stop()


def test_a_chain_down_at_the_start_holds_back_ready_and_nothing_else(
    provider_stack: ProviderStack,
    second_chain: ProviderStack,
    beta_proxy: TcpProxy,
    notify_socket: NotifySocket,
) -> None:
    beta_proxy.set_mode("garbage")
    process, running = start(
        provider_stack,
        second_chain,
        beta_proxy,
        "two-late",
        NOTIFY_SOCKET=str(notify_socket.path),
        WATCHDOG_USEC="2000000",
    )
    try:
        waiting = "not read yet: waiting for the chain (RPC and contracts)"

        def only_beta_waits() -> bool:
            answer = readyz(running)[1]
            return (
                bool(answer)
                and answer["failing"] == ["beta"]
                and checks_of(answer, "beta")["chain"] == waiting
            )

        wait_for("alpha ready and beta waiting for its chain", only_beta_waits, 120)
        status, answer = readyz(running)
        assert status == 503 and answer["ok"] is False, answer
        assert (
            checks_of(answer, "beta")["work_loop"] == "not begun: waiting for the chain (RPC and contracts)"
        )
        assert checks_of(answer, "alpha")["caught_up"].startswith("at block")
        assert probe(f"{running.base}/healthz")[0] == 200
        assert not any(("chain", "beta") in labels for (_, labels) in scrape(running.base))

        # systemd: no READY while beta waits, but the watchdog is fed by alpha's cycles, the start
        # time is extended, and the status line names both chains.
        seen = time.monotonic()

        def two_pings() -> list[Notification]:
            found = notify_socket.messages("WATCHDOG", "1", after=seen)
            return found if len(found) >= 2 else []

        pings: list[Notification] = wait_for("two pings while beta waits", two_pings, 30)
        assert not notify_socket.messages("READY")
        status_line = pings[-1].fields["STATUS"]
        assert "alpha: ready, block" in status_line, status_line
        assert "beta: waiting for the chain (RPC and contracts)" in status_line, status_line
        assert notify_socket.messages("EXTEND_TIMEOUT_USEC")

        beta_proxy.set_mode("pass")
        ready = wait_for("READY=1 once beta caught up", lambda: notify_socket.messages("READY", "1"), 120)
        assert len(ready) == 1
        assert "alpha: ready" in ready[0].fields["STATUS"] and "beta: ready" in ready[0].fields["STATUS"]
        wait_for("/readyz on both chains", lambda: readyz(running)[0] == 200, 60)
        assert process.terminate() == 0
        assert len(notify_socket.messages("STOPPING", "1")) == 1  # once, for both chains
    finally:
        process.stop()
