"""A full supervisor whose RPC and WebSocket URLs carry API keys (path and query), as hosted RPC
endpoints do: neither its whole log nor the doctor's output may show a key.

anvil answers only at `/` (404 elsewhere), so a real HTTP forwarding proxy stands in front of it:
it records each request target (the keys do reach it), rewrites the target to `/`, answers the
first requests with 503 (so the retried-HTTP-error lines, which name the URL, are logged) and can
cut the WebSocket (so the reconnect lines are logged too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from grid_dev.anvil import free_port
from grid_protocol.jobs import JobStatus as S
from tests.fixtures.supervisor import ProviderStack, SupervisorProcess, wait_for

PATH_KEY = "pk7f3a9c21e4b84d0f9a6e5d4c3b2a1908"
QUERY_KEY = "qk0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"
WS_KEY = "wk5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b"
KEYS = (PATH_KEY, QUERY_KEY, WS_KEY)
GRID_SUPERVISOR = str(Path(sys.executable).parent / "grid-supervisor")
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class PathStrippingProxy:
    """HTTP/1.1 and WebSocket forwarding from 127.0.0.1:<port> to anvil at `/`, in its own thread."""

    def __init__(self, target_port: int, *, refuse_first: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.targets: list[str] = []
        self.refused = 0
        self._refuse_left = refuse_first
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="path-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self._ready.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *headers = head[:-4].decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ", 2)
            self.targets.append(target)
            if self._refuse_left > 0:
                self._refuse_left -= 1
                self.refused += 1
                writer.write(UNAVAILABLE)
                await writer.drain()
                return
            upgrade = any(h.lower().startswith("upgrade:") for h in headers)
            if not upgrade:  # one request per connection: every request line passes through here
                headers = [h for h in headers if not h.lower().startswith("connection:")]
                headers.append("Connection: close")
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(up_writer)
            up_writer.write("\r\n".join([f"{method} / {version}", *headers]).encode("latin-1") + b"\r\n\r\n")
            await up_writer.drain()
            upstream = asyncio.ensure_future(self._pipe(up_reader, writer))
            downstream = asyncio.ensure_future(self._pipe(reader, up_writer))
            await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
            for task in (upstream, downstream):
                task.cancel()
            up_writer.close()
            self._writers.discard(up_writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def cut(self) -> None:
        """Close every open connection (the WebSocket among them)."""

        async def close_all() -> None:
            for open_writer in list(self._writers):
                open_writer.transport.abort()

        asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def proxy(provider_stack: ProviderStack) -> Iterator[PathStrippingProxy]:
    node = PathStrippingProxy(provider_stack.grid.anvil.port, refuse_first=3)
    yield node
    node.close()


@pytest.fixture(scope="module")
def supervisor(provider_stack: ProviderStack, proxy: PathStrippingProxy) -> Iterator[SupervisorProcess]:
    base = f"127.0.0.1:{proxy.port}"
    process = provider_stack.supervisor(rpc_url=f"http://{base}/v3/{PATH_KEY}?apikey={QUERY_KEY}")
    process.env.update(
        GRID_SUPERVISOR_CHAIN__WS_URL=f"ws://{base}/ws/v3/{WS_KEY}?apikey={QUERY_KEY}",
        GRID_SUPERVISOR_LOG__LEVEL="debug",
    )
    process.start()
    yield process
    process.stop()


def doctor(process: SupervisorProcess, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRID_SUPERVISOR, "doctor", "--config", str(process.config)],
        env={**process.env, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_no_api_key_in_the_log_of_a_full_run_nor_in_the_doctor(
    provider_stack: ProviderStack, proxy: PathStrippingProxy, supervisor: SupervisorProcess
) -> None:
    stack = provider_stack
    wait_for("the first refused RPC calls", lambda: proxy.refused == 3, 60)
    stack.wait_registered()
    wait_for("the WebSocket hint", lambda: "websocket hint connected" in supervisor.text(), 60)
    proxy.cut()  # the hint reconnects: its failure and reconnection are logged
    job_id = stack.request("sleep 1; echo done", 500)
    stack.wait_status(job_id, S.FINISHED, S.FAILED)  # the lines of a whole job, whatever its outcome
    job = "0x" + job_id.hex()
    wait_for(
        "the job closed in the log", lambda: '"job closed"' in supervisor.text() and job in supervisor.text()
    )
    wait_for("the hint to come back", lambda: supervisor.text().count("websocket hint connected") >= 2, 60)

    passing = doctor(supervisor)
    dead = f"http://127.0.0.1:{free_port()}/v3/{PATH_KEY}?apikey={QUERY_KEY}"
    failing = doctor(supervisor, GRID_SUPERVISOR_CHAIN__RPC_URL=dead)
    wrong_chain = doctor(supervisor, GRID_SUPERVISOR_CHAIN__CHAIN_ID="5")
    supervisor.stop()
    log = supervisor.text()

    # The keys were really in use: the proxy received them.
    assert any(PATH_KEY in t and QUERY_KEY in t for t in proxy.targets)
    assert any(WS_KEY in t for t in proxy.targets)
    # The lines that name an endpoint are there, with only its scheme, host and port.
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    retried = [e for e in entries if e["event"] in ("rpc read failed, retrying", "waiting for the chain")]
    assert retried and any("ClientResponseError: 503" in str(e.get("error")) for e in retried), log[-3000:]
    assert any("…redacted" in str(e.get("error")) for e in retried)
    connected = [e for e in entries if e["event"] == "websocket hint connected"]
    assert {e["url"] for e in connected} == {f"ws://127.0.0.1:{proxy.port}/…redacted"}
    assert any(e["event"] == "websocket hint down, polling meanwhile" for e in entries)

    assert passing.returncode == 0, passing.stdout + passing.stderr
    rpc_line = next(line for line in passing.stdout.splitlines() if line.split()[1:2] == ["rpc"])
    assert rpc_line.startswith("OK "), passing.stdout
    assert rpc_line.endswith(f"http://127.0.0.1:{proxy.port}/…redacted serves chain id 31337"), rpc_line
    assert failing.returncode == 1 and "/…redacted does not answer" in failing.stdout, failing.stdout
    assert wrong_chain.returncode == 1 and "not the configured 5" in wrong_chain.stdout, wrong_chain.stdout

    for text, where in (
        (log, "the supervisor's log"),
        (passing.stdout + passing.stderr, "the doctor"),
        (failing.stdout + failing.stderr, "the failing doctor"),
        (wrong_chain.stdout + wrong_chain.stderr, "the doctor on another chain"),
    ):
        for key in KEYS:
            assert key not in text, f"{key} in {where}"
