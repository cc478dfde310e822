"""Start and stop a local anvil chain, for the tests and the local grid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_MNEMONIC = "test test test test test test test test test test test junk"
ANVIL_START_TIMEOUT_S = 30.0


class AnvilError(RuntimeError):
    """anvil could not be found or did not come up."""


def anvil_binary() -> str:
    """The anvil installed by scripts/bootstrap.sh, else one on PATH."""
    bundled = REPO_ROOT / ".tools" / "bin" / "anvil"
    if bundled.is_file():
        return str(bundled)
    found = shutil.which("anvil")
    if found is None:
        raise AnvilError("anvil not found: run scripts/bootstrap.sh")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Anvil:
    """A running anvil process; stop() ends it by its process id."""

    port: int
    process: subprocess.Popen[bytes]
    args: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def rpc(self, method: str, params: list[object] | None = None) -> object:
        """One raw JSON-RPC call; raises on an error answer."""
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
        answer = requests.post(self.http_url, json=body, timeout=10).json()
        if "error" in answer:
            raise AnvilError(f"{method}: {answer['error']}")
        return answer["result"]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """End the process by its pid and wait for it (SIGKILL after 10 s)."""
        if self.process.poll() is not None:
            return
        os.kill(self.process.pid, sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def start_anvil(
    port: int | None = None,
    *,
    extra_args: list[str] | None = None,
    log_path: Path | None = None,
    silent: bool = True,
) -> Anvil:
    """Start anvil on 127.0.0.1 and wait until it answers eth_chainId (`silent=False` logs each call
    and transaction to `log_path`)."""
    port = port or free_port()
    quiet = ["--silent"] if silent else []
    args = [anvil_binary(), "--host", "127.0.0.1", "--port", str(port), *quiet, *(extra_args or [])]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    anvil = Anvil(port=port, process=process, args=args)
    deadline = time.monotonic() + ANVIL_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AnvilError(f"anvil exited with status {process.returncode} (args: {args[1:]})")
        try:
            anvil.rpc("eth_chainId")
            return anvil
        except (requests.RequestException, AnvilError):
            time.sleep(0.05)
    anvil.stop(signal.SIGKILL)
    raise AnvilError(f"anvil did not answer on port {port} within {ANVIL_START_TIMEOUT_S} s")
