"""Instruments of benchmarks/daemon_bench.py, each watching the daemon from outside.

- `ChainWatcher`: a thread polling the chain (eth_blockNumber, then eth_getLogs of the new blocks) that
  notes the wall clock when each ClaimJobEvent and JobTransitionEvent is first seen;
- `SqueueWatcher`: a thread polling `squeue` for this run's jobs (matched by work dir) that notes when
  each is first seen and first seen running, and the most of them pending or present at once;
- `CountingProxy`: an HTTP reverse proxy in front of anvil counting JSON-RPC calls (a batch counts its
  elements), with WebSocket upgrades tunnelled and their client messages counted too;
- readings of a process (/proc) and of the supervisor's metrics endpoint, and a scan of the provider's
  transactions in a range of blocks.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import socket
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from eth_utils import function_signature_to_4byte_selector
from web3 import Web3
from web3.contract import Contract

from grid_protocol.abi import load_abi


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class PollStats:
    """How often a polling thread actually looked (the measurement's real resolution); gaps count only
    between looks in a row (not across a pause with nothing to watch)."""

    nominal_s: float
    rounds: int = 0
    gaps: int = 0
    gaps_s: float = 0.0
    longest_s: float = 0.0
    busy_s: float = 0.0
    _last: float | None = None

    def tick(self, began: float, ended: float, in_a_row: bool) -> None:
        if in_a_row and self._last is not None:
            gap = ended - self._last
            self.gaps += 1
            self.gaps_s += gap
            self.longest_s = max(self.longest_s, gap)
        self._last = ended
        self.rounds += 1
        self.busy_s += ended - began

    def describe(self) -> str:
        if not self.gaps:
            return f"every {self.nominal_s * 1000:.0f} ms asked (too few looks to say more)"
        return (
            f"every {self.nominal_s * 1000:.0f} ms asked; achieved mean {self.gaps_s / self.gaps * 1000:.1f} ms, "
            f"longest gap {self.longest_s * 1000:.0f} ms, one look takes {self.busy_s / self.rounds * 1000:.1f} ms"
        )


class _Poller:
    """A daemon thread calling `_round` every `interval_s` until `stop()`."""

    def __init__(self, name: str, interval_s: float) -> None:
        self.stats = PollStats(interval_s)
        self.errors = 0
        self.last_error = ""
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        in_a_row = False
        while not self._stop.is_set():
            began = time.time()
            try:
                looked = self._round()
                if looked:
                    self.stats.tick(began, time.time(), in_a_row)
                in_a_row = looked
            except Exception as exc:  # a failed look is counted, the next one tries again
                self.errors += 1
                self.last_error = repr(exc)
                in_a_row = False
            self._stop.wait(self._interval)

    def _round(self) -> bool:
        """One look; returns whether it looked (False: nothing to watch right now)."""
        raise NotImplementedError


class ChainWatcher(_Poller):
    """First sightings (wall clock) of claims and status transitions, by job id."""

    def __init__(self, rpc_url: str, meta_scheduler: str, job_repository: str, interval_s: float) -> None:
        super().__init__("chain-watcher", interval_s)
        self._w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
        self._scheduler = self._contract("MetaScheduler", meta_scheduler)
        self._jobs = self._contract("JobRepository", job_repository)
        self._claim_topic = self._topic(self._scheduler, "ClaimJobEvent")
        self._transition_topic = self._topic(self._jobs, "JobTransitionEvent")
        self._last_block = int(self._w3.eth.block_number)
        self._lock = threading.Lock()
        self.claims: dict[bytes, float] = {}
        #: (job id, status reached) -> when first seen.
        self.transitions: dict[tuple[bytes, int], float] = {}

    def _contract(self, name: str, address: str) -> Contract:
        return self._w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_abi(name))

    @staticmethod
    def _topic(contract: Contract, name: str) -> bytes:
        (entry,) = (e for e in contract.abi if e.get("type") == "event" and e.get("name") == name)
        return bytes(Web3.keccak(text=_signature(dict(entry))))

    def _round(self) -> bool:
        head = int(self._w3.eth.block_number)
        if head > self._last_block:
            logs = self._w3.eth.get_logs(
                {
                    "fromBlock": self._last_block + 1,
                    "toBlock": head,
                    "address": [self._scheduler.address, self._jobs.address],
                }
            )
            seen = time.time()
            with self._lock:
                for log in logs:
                    topic = bytes(log["topics"][0]) if log["topics"] else b""
                    if topic == self._claim_topic:
                        args = self._scheduler.events.ClaimJobEvent().process_log(log)["args"]
                        self.claims.setdefault(bytes(args["jobId"]), seen)
                    elif topic == self._transition_topic:
                        args = self._jobs.events.JobTransitionEvent().process_log(log)["args"]
                        self.transitions.setdefault((bytes(args["_jobId"]), int(args["_to"])), seen)
            self._last_block = head
        return True

    def claimed(self, job_id: bytes) -> float | None:
        with self._lock:
            return self.claims.get(job_id)

    def reached(self, job_id: bytes, statuses: Iterable[int]) -> float | None:
        """When the job was first seen in any of `statuses` (the earliest), or None."""
        with self._lock:
            times = [self.transitions[(job_id, s)] for s in statuses if (job_id, s) in self.transitions]
        return min(times) if times else None


def _signature(abi: dict[str, Any]) -> str:
    def kind(entry: dict[str, Any]) -> str:
        if entry["type"].startswith("tuple"):
            inner = ",".join(kind(c) for c in entry["components"])
            return f"({inner}){entry['type'][5:]}"
        return str(entry["type"])

    return f"{abi['name']}({','.join(kind(i) for i in abi['inputs'])})"


@dataclass
class SlurmSighting:
    first_seen: float
    running: float | None = None
    slurm_id: str = ""


class SqueueWatcher(_Poller):
    """This run's jobs in `squeue` (a job's work dir is `jobs_dir/<its name>`).

    With `only_wanted`, it looks only while some name in `want` has not been seen running yet, so a
    fast poll costs nothing between the moments of interest.
    """

    def __init__(self, jobs_dir: Path, interval_s: float, *, only_wanted: bool = False) -> None:
        super().__init__("squeue-watcher", interval_s)
        self._jobs_dir = str(jobs_dir)
        self._only_wanted = only_wanted
        self._lock = threading.Lock()
        self._want: set[str] = set()
        self.seen: dict[str, SlurmSighting] = {}
        self.most_pending = 0
        self.most_present = 0

    def want(self, name: str) -> None:
        with self._lock:
            self._want.add(name)

    def sighting(self, name: str) -> SlurmSighting | None:
        with self._lock:
            return self.seen.get(name)

    def _round(self) -> bool:
        if self._only_wanted:
            with self._lock:
                if not self._want:
                    return False
        listing = subprocess.run(
            ["squeue", "-h", "-a", "-o", "%i|%j|%Z|%t"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        now = time.time()
        pending = present = 0
        with self._lock:
            for line in listing.stdout.splitlines():
                parts = line.split("|")
                if len(parts) != 4 or parts[2] != f"{self._jobs_dir}/{parts[1]}":
                    continue
                slurm_id, name, _, state = parts
                present += 1
                pending += state == "PD"
                sighting = self.seen.setdefault(name, SlurmSighting(now, slurm_id=slurm_id))
                if state in ("R", "CG") and sighting.running is None:
                    sighting.running = now
                    self._want.discard(name)
            self.most_pending = max(self.most_pending, pending)
            self.most_present = max(self.most_present, present)
        return True


def our_slurm_jobs(jobs_dir: Path) -> dict[str, str]:
    """Name -> compact state of this run's jobs in squeue (one listing)."""
    listing = subprocess.run(
        ["squeue", "-h", "-a", "-o", "%j|%Z|%t"], capture_output=True, text=True, timeout=60, check=True
    )
    found: dict[str, str] = {}
    for line in listing.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1] == str(jobs_dir / parts[0]):
            found[parts[0]] = parts[2]
    return found


# -- the counting proxy -------------------------------------------------------------------------


@dataclass
class CallCount:
    """JSON-RPC calls seen by the proxy (HTTP requests, batch elements, WebSocket messages)."""

    http_requests: int = 0
    calls: int = 0
    ws_messages: int = 0
    methods: Counter[str] = field(default_factory=Counter)

    def copy(self) -> CallCount:
        return CallCount(self.http_requests, self.calls, self.ws_messages, Counter(self.methods))

    def minus(self, earlier: CallCount) -> CallCount:
        methods = Counter(self.methods)
        methods.subtract(earlier.methods)
        return CallCount(
            self.http_requests - earlier.http_requests,
            self.calls - earlier.calls,
            self.ws_messages - earlier.ws_messages,
            +methods,
        )


def _json_rpc_methods(body: bytes) -> list[str]:
    """The methods of a JSON-RPC request or batch (each element one call)."""
    try:
        message = json.loads(body)
    except ValueError:
        return ["<not JSON>"]
    elements = message if isinstance(message, list) else [message]
    return [str(e.get("method", "<no method>")) if isinstance(e, dict) else "<bad element>" for e in elements]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.server.owner.count_http(_json_rpc_methods(body))
        status, content_type, answer = self._forward(body)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _forward(self, body: bytes) -> tuple[int, str, bytes]:
        headers = {"Content-Type": self.headers.get("Content-Type") or "application/json"}
        for attempt in range(2):
            connection = self._upstream()
            try:
                connection.request("POST", self.server.owner.path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                return response.status, response.getheader("Content-Type") or "application/json", answer
            except (http.client.HTTPException, OSError):
                connection.close()
                self.__dict__.pop("_connection", None)
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def _upstream(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = self.__dict__.get("_connection")
        if connection is None:
            owner = self.server.owner
            connection = http.client.HTTPConnection(owner.host, owner.port, timeout=60)
            self.__dict__["_connection"] = connection
        return connection

    def do_GET(self) -> None:
        if (self.headers.get("Upgrade") or "").lower() != "websocket":
            self.send_error(404)
            return
        self.close_connection = True
        owner = self.server.owner
        upstream = socket.create_connection((owner.host, owner.port), timeout=10)
        upstream.settimeout(None)
        # No permessage-deflate: the tunnel reads the client's messages to count them.
        lines = [self.requestline] + [
            f"{key}: {value}"
            for key, value in self.headers.items()
            if key.lower() != "sec-websocket-extensions"
        ]
        upstream.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        down = threading.Thread(target=self._pump_down, args=(upstream,), daemon=True)
        down.start()
        frames = _FrameCounter(owner.count_ws)
        try:
            while True:
                data = self.rfile.read1(65536)
                if not data:
                    break
                frames.feed(data)
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_RDWR)
            upstream.close()
            down.join(timeout=5)

    def _pump_down(self, upstream: socket.socket) -> None:
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                self.wfile.write(data)
                self.wfile.flush()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class _FrameCounter:
    """Reads the client's WebSocket frames (masked, uncompressed) and counts its JSON-RPC messages."""

    def __init__(self, count: Callable[[list[str]], None]) -> None:
        self._buffer = b""
        self._count = count

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            buffer = self._buffer
            if len(buffer) < 2:
                return
            opcode, masked, length, at = buffer[0] & 0x0F, buffer[1] & 0x80, buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, at = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, at = int.from_bytes(buffer[2:10], "big"), 10
            mask = buffer[at : at + 4] if masked else b""
            at += len(mask) if masked else 0
            if len(buffer) < at + length or (masked and len(mask) < 4):
                return
            payload = buffer[at : at + length]
            if masked:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            self._buffer = buffer[at + length :]
            if opcode == 1:  # a text message: JSON-RPC (pings and pongs are not calls)
                self._count(_json_rpc_methods(payload))


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: CountingProxy


class CountingProxy:
    """127.0.0.1:<port> forwarding to `upstream` (an http:// URL), counting the calls it forwards."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self._lock = threading.Lock()
        self._count = CallCount()
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="rpc-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def count_http(self, methods: list[str]) -> None:
        with self._lock:
            self._count.http_requests += 1
            self._count.calls += len(methods)
            self._count.methods.update(methods)

    def count_ws(self, methods: list[str]) -> None:
        with self._lock:
            self._count.ws_messages += 1
            self._count.calls += len(methods)
            self._count.methods.update(f"ws:{m}" for m in methods)

    def snapshot(self) -> CallCount:
        with self._lock:
            return self._count.copy()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- the daemon process and its metrics -----------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    """Seconds of CPU of a process, and of its children it has waited for (squeue, sbatch...)."""

    own: float
    children: float
    at: float


def cpu_times(pid: int) -> CpuTimes:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2 :].split()  # fields from the 3rd (state) on
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return CpuTimes((utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS, time.monotonic())


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) in kB from /proc/<pid>/status."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def scrape_metrics(port: int) -> dict[str, float]:
    """The supervisor's /metrics as `name` or `name{labels}` -> value."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            values[name] = float(value)
    return values


def metric(values: dict[str, float], name: str) -> float | None:
    """A metric summed over its label sets (a per-deployment metric has a `chain` label); counters
    are exposed with a `_total` suffix."""
    for key in (f"grid_supervisor_{name}_total", f"grid_supervisor_{name}"):
        found = [v for k, v in values.items() if k == key or k.startswith(key + "{")]
        if found:
            return sum(found)
    return None


# -- the provider's transactions ---------------------------------------------------------------


@dataclass
class ProviderTransactions:
    """The provider's transactions to the MetaScheduler mined in a range of blocks, by function."""

    first_block: int
    last_block: int
    sent: Counter[str] = field(default_factory=Counter)
    reverted: Counter[str] = field(default_factory=Counter)


def provider_transactions(
    w3: Web3, scheduler: Contract, provider: str, first_block: int, last_block: int
) -> ProviderTransactions:
    """Scan blocks `first_block..last_block` for the provider's transactions and their status."""
    abi: list[Any] = list(scheduler.abi)
    names = {
        function_signature_to_4byte_selector(_signature(entry)): str(entry["name"])
        for entry in abi
        if entry.get("type") == "function"
    }
    found = ProviderTransactions(first_block, last_block)
    for number in range(first_block, last_block + 1):
        block = w3.eth.get_block(number, full_transactions=True)
        transactions: list[Any] = list(block["transactions"])
        for tx in transactions:
            if tx["from"] != provider or tx.get("to") != scheduler.address:
                continue
            name = names.get(bytes(tx["input"])[:4], "<other>")
            found.sent[name] += 1
            if w3.eth.get_transaction_receipt(tx["hash"])["status"] != 1:
                found.reverted[name] += 1
    return found


def summary(values: list[float]) -> tuple[float, float, float] | None:
    """Median, 95th percentile and maximum, or None without values."""
    if not values:
        return None
    return statistics.median(values), percentile(values, 0.95), max(values)
