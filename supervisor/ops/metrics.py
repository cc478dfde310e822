"""Prometheus metrics, `/healthz` and `/readyz`, served on a thread of their own.

The server runs beside the daemon's event loop, so a probe still answers (and says "stalled") when
the loop is stuck. Values come from the snapshot the daemon's listener takes at the end of each work
cycle; the wallet balance, the provider's approval, Slurm's controller and accounting and the sbatch service
are probed at most every `metrics.probe_seconds`, in a task of their own so a slow probe never
delays a cycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisor.chain.rpc import describe
from supervisor.config import MetricsSettings, SbatchServiceSettings
from supervisor.ops.probes import probe_sbatch
from supervisor.ops.state import Snapshot, Verdict, liveness, readiness, take_snapshot
from supervisor.slurm.models import SlurmHealth

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from supervisor.daemon import Daemon

log = structlog.get_logger("supervisor.ops")

PREFIX = "grid_supervisor"
#: A probe must not outlive a few RPC or command timeouts.
PROBE_TIMEOUT_S = 60.0


class OpsState:
    """The latest snapshot, shared between the daemon's loop (writer) and the HTTP thread (reader)."""

    def __init__(self, settings: MetricsSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.started_at = clock()
        self.snapshot: Snapshot | None = None  # replaced whole: a reader never sees half an update
        self.stopping = False

    def liveness(self) -> Verdict:
        return liveness(
            self.snapshot,
            now=self.clock(),
            started_at=self.started_at,
            stall_seconds=self.settings.stall_seconds,
        )

    def readiness(self) -> Verdict:
        verdict = readiness(
            self.snapshot,
            now=self.clock(),
            started_at=self.started_at,
            stall_seconds=self.settings.stall_seconds,
        )
        if self.stopping:
            return Verdict(False, {**verdict.checks, "stopping": "draining before exit"})
        return verdict


class SupervisorCollector(Collector):
    """Turns the latest snapshot into metric families at scrape time (ages computed then)."""

    def __init__(self, state: OpsState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        now = state.clock()
        snap = state.snapshot
        alive = state.liveness().ok

        def gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
            if value is not None:
                yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> Metric:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)

        yield from gauge("up", "1 while the work loop finishes cycles within metrics.stall_seconds.", alive)
        yield from gauge("start_time_seconds", "When the process started (Unix time).", state.started_at)
        if snap is None:
            return
        yield from gauge("ready", "1 once caught up with the chain after the first work cycle.", snap.ready)
        yield counter("work_cycles", "Work cycles finished since the start.", snap.cycles)
        yield from gauge(
            "last_cycle_age_seconds", "Seconds since the last work cycle ended.", now - snap.taken_at
        )

        up = GaugeMetricFamily(
            f"{PREFIX}_dependency_up",
            "1 when the dependency answered at the last use.",
            labels=["dependency"],
        )
        for name, ok in (("chain", snap.chain_ok), ("slurm", snap.slurm_ok), ("sbatch", snap.sbatch_ok)):
            up.add_metric([name], float(ok))
        yield up
        if snap.slurm_accounting is not None:
            yield from gauge(
                "slurm_accounting_available",
                "1 when Slurm's accounting (sacct) answers: finished jobs are known for sure.",
                snap.slurm_accounting,
            )
        yield from gauge("registered", "1 when the provider is approved for scheduling.", snap.registered)

        yield from gauge("chain_last_block", "Last block whose logs are processed.", snap.last_block)
        yield from gauge("chain_head_block", "Chain head at the last read.", snap.head_block)
        if snap.last_block is not None and snap.head_block is not None:
            yield from gauge(
                "chain_cursor_lag_blocks",
                "Blocks between the chain head and the processed cursor.",
                max(0, snap.head_block - snap.last_block),
            )
        if snap.last_read_at is not None:
            yield from gauge(
                "chain_last_block_age_seconds",
                "Seconds since the last block was seen (the follower's last successful read).",
                now - snap.last_read_at,
            )
        yield from gauge(
            "chain_websocket_connected", "1 while the new-heads hint is connected.", snap.ws_connected
        )
        yield counter(
            "chain_websocket_reconnects", "WebSocket reconnections since the start.", snap.ws_reconnects
        )
        yield counter("chain_reorgs", "Chain reorganisations handled since the start.", snap.reorgs)
        yield counter("chain_events_handled", "Events handled since the start.", snap.events_handled)
        yield from gauge(
            "chain_parked_events",
            "Events whose handler failed, waiting to be handled again (alert when above 0 for long).",
            snap.parked_events,
        )

        yield from gauge("outbox_depth", "Chain writes queued or sent, not yet mined.", snap.outbox_depth)
        yield from gauge(
            "outbox_oldest_age_seconds",
            "Age of the oldest chain write not yet mined (0 when the outbox is empty).",
            0.0 if snap.oldest_outbox_created_at is None else now - snap.oldest_outbox_created_at,
        )
        tx = snap.transactions
        yield counter("transactions_sent", "Chain writes signed and broadcast (first attempts).", tx.sent)
        yield counter("transactions_mined", "Chain writes mined.", tx.mined)
        yield counter("transactions_failed", "Chain writes that failed for good.", tx.failed)
        yield counter("transactions_replaced", "Replacement transactions with a higher fee.", tx.replaced)
        actions = GaugeMetricFamily(
            f"{PREFIX}_chain_actions",
            "Chain writes of the outbox by kind (claims, reports, refusals...) and state.",
            labels=["kind", "state"],
        )
        for (kind, action_state), count in sorted(tx.actions.items()):
            actions.add_metric([kind, action_state], count)
        yield actions
        yield from gauge(
            "wallet_balance_wei", "The provider wallet's balance for gas.", snap.wallet_balance_wei
        )

        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Open jobs by chain status.", labels=["status"])
        for status, count in sorted(snap.open_jobs.items()):
            jobs.add_metric([status], count)
        yield jobs
        yield from gauge("jobs_closed", "Jobs settled and closed in the store.", snap.closed_jobs)
        yield counter(
            "slurm_submissions",
            "Jobs submitted to Slurm (jobs in the store with a Slurm id).",
            snap.slurm_submissions,
        )


@dataclass
class ProbeResults:
    """What the last probes found; None until a probe has answered."""

    wallet_balance_wei: int | None = None
    registered: bool | None = None
    slurm: SlurmHealth | None = None
    sbatch_error: str | None = None
    sbatch_probed: bool = False


class MetricsListener:
    """A daemon listener: takes a snapshot after every cycle and probes the rest now and then."""

    def __init__(self, state: OpsState, sbatch: SbatchServiceSettings) -> None:
        self.state = state
        self.probes = ProbeResults()
        self._sbatch = sbatch
        self._last_probe = float("-inf")
        self._probe_task: asyncio.Task[None] | None = None

    def ready(self, daemon: Daemon) -> None:
        self.cycle_done(daemon)

    def waiting(self, daemon: Daemon, what: str) -> None:
        """Nothing to measure before the loops run: /readyz already answers not ready."""

    def cycle_done(self, daemon: Daemon) -> None:
        self._maybe_probe(daemon)
        try:
            snapshot = take_snapshot(
                daemon,
                wallet_balance_wei=self.probes.wallet_balance_wei,
                registered=self.probes.registered,
            )
        except Exception as exc:  # metrics never stop the daemon
            log.warning("metrics snapshot failed", error=describe(exc))
            return
        self.state.snapshot = with_probes(snapshot, self.probes)

    def stopping(self, daemon: Daemon) -> None:
        self.state.stopping = True
        if self._probe_task is not None:
            self._probe_task.cancel()

    def _maybe_probe(self, daemon: Daemon) -> None:
        now = time.monotonic()
        busy = self._probe_task is not None and not self._probe_task.done()
        if busy or now - self._last_probe < self.state.settings.probe_seconds:
            return
        self._last_probe = now
        self._probe_task = asyncio.get_running_loop().create_task(self._probe(daemon), name="ops-probes")

    async def _probe(self, daemon: Daemon) -> None:
        """Chain, Slurm and sbatch probes side by side; each bounded, none raising."""
        await asyncio.gather(self._probe_chain(daemon), self._probe_slurm(daemon), self._probe_sbatch())
        probes = self.probes
        log.debug(
            "dependencies probed",
            wallet_balance_wei=probes.wallet_balance_wei,
            registered=probes.registered,
            slurm_reachable=None if probes.slurm is None else probes.slurm.controller_reachable,
            slurm_accounting=None if probes.slurm is None else probes.slurm.accounting_available,
            sbatch_error=probes.sbatch_error,
        )

    async def _probe_chain(self, daemon: Daemon) -> None:
        contracts = daemon.contracts
        if contracts is None:
            return
        provider = daemon.provider
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                self.probes.wallet_balance_wei = int(await contracts.w3.eth.get_balance(provider))  # type: ignore[arg-type]
                self.probes.registered = await contracts.is_valid_for_scheduling(provider)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("reading the wallet balance failed", error=describe(exc))

    async def _probe_slurm(self, daemon: Daemon) -> None:
        if daemon.slurm is None:
            return
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                self.probes.slurm = await daemon.slurm.health()
        except TimeoutError:
            self.probes.slurm = SlurmHealth(False, False, problems=("Slurm's health probe timed out",))

    async def _probe_sbatch(self) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                self.probes.sbatch_error = await probe_sbatch(self._sbatch)
        except TimeoutError:
            self.probes.sbatch_error = "the probe timed out"
        self.probes.sbatch_probed = True


def with_probes(snapshot: Snapshot, probes: ProbeResults) -> Snapshot:
    """The daemon's own view, darkened by what the probes found (a dependency is up when both agree)."""
    problems = dict(snapshot.problems)
    slurm_ok, sbatch_ok = snapshot.slurm_ok, snapshot.sbatch_ok
    accounting: bool | None = None
    if probes.slurm is not None:
        accounting = probes.slurm.accounting_available
        if not probes.slurm.controller_reachable:
            slurm_ok = False
            problems.setdefault("slurm", "; ".join(probes.slurm.problems) or "slurmctld does not answer")
    if probes.sbatch_probed:
        if probes.sbatch_error is not None:
            sbatch_ok = False
            problems.setdefault("sbatch", probes.sbatch_error)
        else:
            sbatch_ok = sbatch_ok or "sbatch" not in snapshot.problems
    return dataclasses.replace(
        snapshot, slurm_ok=slurm_ok, sbatch_ok=sbatch_ok, problems=problems, slurm_accounting=accounting
    )


# ---------------------------------------------------------------------------------- HTTP


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the journal."""


def _json(start_response: StartResponse, verdict: Verdict) -> list[bytes]:
    body = json.dumps({"ok": verdict.ok, "checks": verdict.checks}).encode()
    status = "200 OK" if verdict.ok else "503 Service Unavailable"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class OpsServer:
    """`/metrics`, `/healthz` and `/readyz` on `metrics.host:metrics.port`, in a daemon thread."""

    def __init__(self, state: OpsState) -> None:
        self.state = state
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SupervisorCollector(state))
        self._metrics_app = make_wsgi_app(self.registry)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _json(start_response, self.state.liveness())
        if path == "/readyz":
            return _json(start_response, self.state.readiness())
        body = b"not found: /metrics, /healthz, /readyz\n"
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    def start(self) -> tuple[str, int]:
        """Bind and serve; returns the bound address. OSError names the address when it cannot bind."""
        host, port = self.state.settings.host, self.state.settings.port
        server_class = _IPv6Server if ":" in host else _Server
        try:
            server = make_server(host, port, self.app, server_class=server_class, handler_class=_QuietHandler)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="ops-http", daemon=True)
        self._thread.start()
        bound = server.server_address
        log.info("metrics and health endpoints listening", host=host, port=bound[1])
        return host, int(bound[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
