"""The service under systemd's eyes: the unit file, and the notifications of a real daemon run.

The daemon runs against the real stack (anvil with the contracts, the sbatch service, Slurm) with
$NOTIFY_SOCKET pointing at a socket the test reads, as systemd's manager would. Its RPC goes through
a TCP proxy so a test can make the chain hang and watch the watchdog pings stop.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from grid_dev.anvil import free_port
from supervisor.ops.notify import notify_address, send, watchdog_interval
from tests.fixtures.chain_layer import TcpProxy
from tests.fixtures.ops import NotifySocket, probe
from tests.fixtures.supervisor import ProviderStack, SupervisorProcess, wait_for

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "grid-supervisor.service"


# ---------------------------------------------------------------------------------- the unit


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_declares_notify_watchdog_and_hardening() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert int(s["WatchdogSec"][0]) > 0
    assert s["Restart"] == ["on-failure"]
    assert s["User"] == ["grid-supervisor"]
    assert s["StateDirectory"] == ["grid-supervisor"]
    assert any(v.startswith("provider.key:") for v in s["LoadCredential"])
    assert "GRID_SUPERVISOR_KEY__FILE=%d/provider.key" in s["Environment"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }.items():
        assert s[key] == [value], key


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's console script.
    # `security --threshold` counts in tenths of the printed exposure level.
    installed = "/opt/grid-supervisor/venv/bin/grid-supervisor"
    assert installed in UNIT.read_text()
    local = tmp_path / UNIT.name
    local.write_text(UNIT.read_text().replace(installed, str(REPO / ".venv" / "bin" / "grid-supervisor")))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=30", str(local)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout[-2000:]
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure is not None and float(exposure.group(1)) <= 3.0


# ---------------------------------------------------------------------------------- the protocol


@pytest.mark.parametrize(
    ("variable", "address"),
    [("/run/systemd/notify", "/run/systemd/notify"), ("@abstract/name", "\0abstract/name"), ("", None)],
)
def test_notify_address(variable: str, address: str | None) -> None:
    assert notify_address({"NOTIFY_SOCKET": variable}) == address


def test_watchdog_interval_is_half_the_timeout_for_the_watched_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "4000000"}, 10) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "10"}, 10) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "11"}, 10) is None
    assert watchdog_interval({}, 10) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 10) is None


def test_send_reaches_an_abstract_socket() -> None:
    import socket

    name = f"grid-supervisor-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(5)
        assert send("READY=1", notify_address({"NOTIFY_SOCKET": "@" + name}))
        assert receiver.recv(100) == b"READY=1"
    assert not send("READY=1", None)


# ---------------------------------------------------------------------------------- the daemon


@pytest.fixture
def rpc_proxy(provider_stack: ProviderStack) -> Iterator[TcpProxy]:
    proxy = TcpProxy(provider_stack.grid.anvil.port)
    yield proxy
    proxy.close()


def notified_supervisor(
    stack: ProviderStack, notify: NotifySocket, proxy: TcpProxy, metrics_port: int
) -> SupervisorProcess:
    process = stack.supervisor()
    process.env.update(
        NOTIFY_SOCKET=str(notify.path),
        WATCHDOG_USEC="1000000",  # a ping every 0.5 s at most; cycles come every second
        GRID_SUPERVISOR_CHAIN__RPC_URL=proxy.http_url,
        GRID_SUPERVISOR_METRICS__PORT=str(metrics_port),
        GRID_SUPERVISOR_METRICS__STALL_SECONDS="3",
    )
    process.start()
    return process


def test_ready_watchdog_and_stopping(
    provider_stack: ProviderStack, notify_socket: NotifySocket, rpc_proxy: TcpProxy
) -> None:
    process = notified_supervisor(provider_stack, notify_socket, rpc_proxy, free_port())
    try:
        ready = wait_for("READY=1", lambda: notify_socket.messages("READY", "1"), 90)[0]
        assert "STATUS" in ready.fields and "ready" in ready.fields["STATUS"]
        # Before READY, each cycle asked for more start time; after it, never again.
        before = [n for n in notify_socket.all() if n.at < ready.at]
        assert all("READY" not in n.fields for n in before)
        wait_for(
            "three pings after READY",
            lambda: len(notify_socket.messages("WATCHDOG", after=ready.at)) >= 3,
            30,
        )
        assert not notify_socket.messages("EXTEND_TIMEOUT_USEC", after=ready.at)
        pings = [n.at for n in notify_socket.messages("WATCHDOG", "1")]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert min(gaps) >= 0.5 - 0.05  # never more often than WATCHDOG_USEC / 2
        assert process.terminate() == 0
        stopping = notify_socket.messages("STOPPING", "1")
        assert len(stopping) == 1 and stopping[0].at > ready.at
    finally:
        process.stop()


def test_watchdog_stops_while_the_work_loop_hangs(
    provider_stack: ProviderStack, notify_socket: NotifySocket, rpc_proxy: TcpProxy
) -> None:
    port = free_port()
    healthz = f"http://127.0.0.1:{port}/healthz"
    process = notified_supervisor(provider_stack, notify_socket, rpc_proxy, port)
    try:
        wait_for("READY=1", lambda: notify_socket.messages("READY", "1"), 90)
        wait_for("a healthy probe", lambda: probe(healthz)[0] == 200, 30)

        rpc_proxy.set_mode("hang")  # the RPC accepts and never answers: the next chain read holds the cycle
        hung_at = time.monotonic()

        def silent_for(seconds: float) -> bool:
            last = max((n.at for n in notify_socket.messages("WATCHDOG")), default=hung_at)
            return time.monotonic() - max(last, hung_at) >= seconds

        wait_for("five seconds without a watchdog ping", lambda: silent_for(5.0), 30)
        assert process.running()
        status, answer = probe(healthz)  # the HTTP thread still answers, and says the loop is stuck
        assert status == 503, answer
        assert "last cycle" in str(answer["checks"])

        rpc_proxy.set_mode("pass")
        resumed_at = time.monotonic()
        wait_for("pings again", lambda: len(notify_socket.messages("WATCHDOG", after=resumed_at)) >= 2, 90)
        wait_for("a healthy probe again", lambda: probe(healthz)[0] == 200, 30)
    finally:
        process.stop()


def test_start_waiting_for_the_chain_extends_the_start_timeout(
    provider_stack: ProviderStack, notify_socket: NotifySocket, rpc_proxy: TcpProxy
) -> None:
    rpc_proxy.set_mode("hang")
    process = notified_supervisor(provider_stack, notify_socket, rpc_proxy, free_port())
    try:
        waiting = wait_for(
            "a start-up extension while the chain does not answer",
            lambda: notify_socket.messages("EXTEND_TIMEOUT_USEC"),
            90,
        )[0]
        assert waiting.fields["STATUS"] == "waiting for the chain (RPC and contracts)"
        assert not notify_socket.messages("READY")
        rpc_proxy.set_mode("pass")
        wait_for("READY=1 once the chain answers", lambda: notify_socket.messages("READY", "1"), 120)
    finally:
        process.stop()
