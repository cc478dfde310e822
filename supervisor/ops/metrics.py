"""Prometheus metrics, `/healthz` and `/readyz`, served on a thread of their own.

The server runs beside the daemons' event loop, so a probe still answers (and says "stalled") when
a loop is stuck. Values come from the snapshot the listener takes at the end of each deployment's
work cycles; each deployment's wallet balance, approval, chain and sbatch service, and Slurm's
controller and accounting, are probed at most every `metrics.probe_seconds`, in a task of their own
so a slow probe never delays a cycle. Every deployment's families carry its name as `chain`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisor.chain.rpc import describe
from supervisor.config import MetricsSettings
from supervisor.ops.probes import probe_sbatch
from supervisor.ops.state import (
    Deployments,
    Report,
    Snapshot,
    liveness_report,
    readiness_report,
    take_snapshot,
)
from supervisor.slurm.models import SlurmHealth

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from supervisor.daemon import Daemon

log = structlog.get_logger("supervisor.ops")

PREFIX = "grid_supervisor"
#: A probe must not outlive a few RPC or command timeouts.
PROBE_TIMEOUT_S = 60.0


class OpsState:
    """The latest snapshot of each deployment, shared between the daemons' loop (writer) and the HTTP
    thread (reader). Each mapping is replaced whole: a reader never sees half an update."""

    def __init__(
        self,
        settings: MetricsSettings,
        *,
        deployments: Sequence[str] = ("main",),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.started_at = clock()
        self.names = tuple(deployments)
        self.snapshots: dict[str, Snapshot] = {}
        self.waiting: dict[str, str] = {}
        self.stopping: frozenset[str] = frozenset()

    def record(self, name: str, snapshot: Snapshot) -> None:
        self.snapshots = {**self.snapshots, name: snapshot}

    def wait(self, name: str, what: str) -> None:
        self.waiting = {**self.waiting, name: what}

    def stop(self, name: str) -> None:
        self.stopping = self.stopping | {name}

    def deployments(self) -> Deployments:
        return Deployments(self.names, self.snapshots, self.waiting, self.stopping)

    def liveness(self) -> Report:
        return liveness_report(
            self.deployments(),
            now=self.clock(),
            started_at=self.started_at,
            stall_seconds=self.settings.stall_seconds,
        )

    def readiness(self) -> Report:
        return readiness_report(
            self.deployments(),
            now=self.clock(),
            started_at=self.started_at,
            stall_seconds=self.settings.stall_seconds,
        )


class _Families:
    """Metric families in the order first seen, each with one sample per deployment (`chain` label)."""

    def __init__(self) -> None:
        self._families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def gauge(self, name: str, doc: str, chain: str, value: float | None, **labels: str) -> None:
        self._add(GaugeMetricFamily, name, doc, chain, value, labels)

    def counter(self, name: str, doc: str, chain: str, value: float, **labels: str) -> None:
        self._add(CounterMetricFamily, name, doc, chain, value, labels)

    def _add(
        self,
        kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
        name: str,
        doc: str,
        chain: str,
        value: float | None,
        labels: dict[str, str],
    ) -> None:
        if value is None:
            return
        family = self._families.get(name)
        if family is None:
            family = kind(f"{PREFIX}_{name}", doc, labels=["chain", *labels])
            self._families[name] = family
        family.add_metric([chain, *labels.values()], float(value))

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


class SupervisorCollector(Collector):
    """Turns the latest snapshots into metric families at scrape time (ages computed then).

    `up` and `start_time_seconds` are the process's; every other family has a `chain` label naming
    the deployment (`main` for a `[chain]` file) and a sample per deployment that has cycled.
    """

    def __init__(self, state: OpsState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        now = state.clock()
        snapshots = state.snapshots
        alive = state.liveness().ok
        yield GaugeMetricFamily(
            f"{PREFIX}_up",
            "1 while every deployment's work loop finishes cycles within metrics.stall_seconds.",
            value=alive,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_start_time_seconds", "When the process started (Unix time).", value=state.started_at
        )
        families = _Families()
        for name in state.deployments().each():
            snap = snapshots.get(name)
            if snap is not None:
                _deployment_samples(families, name, snap, now)
        yield from families


def _deployment_samples(families: _Families, chain: str, snap: Snapshot, now: float) -> None:
    """One deployment's samples, labelled with its name."""
    gauge, counter = families.gauge, families.counter
    gauge("ready", "1 once caught up with the chain after the first work cycle.", chain, snap.ready)
    counter("work_cycles", "Work cycles finished since the start.", chain, snap.cycles)
    gauge("last_cycle_age_seconds", "Seconds since the last work cycle ended.", chain, now - snap.taken_at)
    for name, ok in (("chain", snap.chain_ok), ("slurm", snap.slurm_ok), ("sbatch", snap.sbatch_ok)):
        gauge("dependency_up", "1 when the dependency answered at the last use.", chain, ok, dependency=name)
    if snap.slurm_accounting is not None:
        gauge(
            "slurm_accounting_available",
            "1 when Slurm's accounting (sacct) answers: finished jobs are known for sure.",
            chain,
            snap.slurm_accounting,
        )
    gauge("registered", "1 when the provider is approved for scheduling.", chain, snap.registered)

    gauge("chain_last_block", "Last block whose logs are processed.", chain, snap.last_block)
    gauge("chain_head_block", "Chain head at the last read.", chain, snap.head_block)
    if snap.last_block is not None and snap.head_block is not None:
        gauge(
            "chain_cursor_lag_blocks",
            "Blocks between the chain head and the processed cursor.",
            chain,
            max(0, snap.head_block - snap.last_block),
        )
    if snap.last_read_at is not None:
        gauge(
            "chain_last_block_age_seconds",
            "Seconds since the last block was seen (the follower's last successful read).",
            chain,
            now - snap.last_read_at,
        )
    gauge("chain_websocket_connected", "1 while the new-heads hint is connected.", chain, snap.ws_connected)
    counter(
        "chain_websocket_reconnects", "WebSocket reconnections since the start.", chain, snap.ws_reconnects
    )
    counter("chain_reorgs", "Chain reorganisations handled since the start.", chain, snap.reorgs)
    counter("chain_events_handled", "Events handled since the start.", chain, snap.events_handled)
    gauge(
        "chain_parked_events",
        "Events whose handler failed, waiting to be handled again (alert when above 0 for long).",
        chain,
        snap.parked_events,
    )

    gauge("outbox_depth", "Chain writes queued or sent, not yet mined.", chain, snap.outbox_depth)
    gauge(
        "outbox_oldest_age_seconds",
        "Age of the oldest chain write not yet mined (0 when the outbox is empty).",
        chain,
        0.0 if snap.oldest_outbox_created_at is None else now - snap.oldest_outbox_created_at,
    )
    tx = snap.transactions
    counter("transactions_sent", "Chain writes signed and broadcast (first attempts).", chain, tx.sent)
    counter("transactions_mined", "Chain writes mined.", chain, tx.mined)
    counter("transactions_failed", "Chain writes that failed for good.", chain, tx.failed)
    counter("transactions_replaced", "Replacement transactions with a higher fee.", chain, tx.replaced)
    for (kind, action_state), count in sorted(tx.actions.items()):
        gauge(
            "chain_actions",
            "Chain writes of the outbox by kind (claims, reports, refusals...) and state.",
            chain,
            count,
            kind=kind,
            state=action_state,
        )
    gauge("wallet_balance_wei", "The provider wallet's balance for gas.", chain, snap.wallet_balance_wei)

    for status, count in sorted(snap.open_jobs.items()):
        gauge("jobs", "Open jobs by chain status.", chain, count, status=status)
    gauge("jobs_closed", "Jobs settled and closed in the store.", chain, snap.closed_jobs)
    counter(
        "slurm_submissions",
        "Jobs submitted to Slurm (jobs in the store with a Slurm id).",
        chain,
        snap.slurm_submissions,
    )


@dataclass
class ProbeResults:
    """What a deployment's last probes found; None until a probe has answered."""

    wallet_balance_wei: int | None = None
    registered: bool | None = None
    chain_error: str | None = None  # the last chain probe's failure (None: it read the chain)
    slurm: SlurmHealth | None = None
    sbatch_error: str | None = None
    sbatch_probed: bool = False


class MetricsListener:
    """A listener of every deployment's daemon: takes a snapshot after each of its cycles and probes
    its chain, its sbatch service and Slurm now and then, in a task per deployment."""

    def __init__(self, state: OpsState) -> None:
        self.state = state
        self.probes: dict[str, ProbeResults] = {}
        self._last_probe: dict[str, float] = {}
        self._probe_tasks: dict[str, asyncio.Task[None]] = {}

    def ready(self, daemon: Daemon) -> None:
        self.cycle_done(daemon)

    def waiting(self, daemon: Daemon, what: str) -> None:
        """Before its loops run, /readyz says what a deployment waits for."""
        self.state.wait(daemon.name, what)

    def cycle_done(self, daemon: Daemon) -> None:
        self._maybe_probe(daemon)
        probes = self.probes.setdefault(daemon.name, ProbeResults())
        try:
            snapshot = take_snapshot(
                daemon, wallet_balance_wei=probes.wallet_balance_wei, registered=probes.registered
            )
        except Exception as exc:  # metrics never stop the daemon
            log.warning("metrics snapshot failed", error=describe(exc))
            return
        self.state.record(daemon.name, with_probes(snapshot, probes))

    def stopping(self, daemon: Daemon) -> None:
        self.state.stop(daemon.name)
        task = self._probe_tasks.get(daemon.name)
        if task is not None:
            task.cancel()

    def _maybe_probe(self, daemon: Daemon) -> None:
        now = time.monotonic()
        task = self._probe_tasks.get(daemon.name)
        busy = task is not None and not task.done()
        last = self._last_probe.get(daemon.name, float("-inf"))
        if busy or now - last < self.state.settings.probe_seconds:
            return
        self._last_probe[daemon.name] = now
        self._probe_tasks[daemon.name] = asyncio.get_running_loop().create_task(
            self._probe(daemon), name=f"ops-probes {daemon.name}"
        )

    async def _probe(self, daemon: Daemon) -> None:
        """Chain, Slurm and sbatch probes side by side; each bounded, none raising."""
        probes = self.probes.setdefault(daemon.name, ProbeResults())
        await asyncio.gather(
            self._probe_chain(daemon, probes),
            self._probe_slurm(daemon, probes),
            self._probe_sbatch(daemon, probes),
        )
        log.debug(
            "dependencies probed",
            wallet_balance_wei=probes.wallet_balance_wei,
            registered=probes.registered,
            chain_error=probes.chain_error,
            slurm_reachable=None if probes.slurm is None else probes.slurm.controller_reachable,
            slurm_accounting=None if probes.slurm is None else probes.slurm.accounting_available,
            sbatch_error=probes.sbatch_error,
        )

    async def _probe_chain(self, daemon: Daemon, probes: ProbeResults) -> None:
        contracts = daemon.contracts
        if contracts is None:
            return
        provider = daemon.provider
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                probes.wallet_balance_wei = int(await contracts.w3.eth.get_balance(provider))  # type: ignore[arg-type]
                probes.registered = await contracts.is_valid_for_scheduling(provider)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            probes.chain_error = "the probe timed out" if isinstance(exc, TimeoutError) else describe(exc)
            log.warning("reading the wallet balance failed", error=probes.chain_error)
        else:
            probes.chain_error = None

    async def _probe_slurm(self, daemon: Daemon, probes: ProbeResults) -> None:
        if daemon.slurm is None:
            return
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                probes.slurm = await daemon.slurm.health()
        except TimeoutError:
            probes.slurm = SlurmHealth(False, False, problems=("Slurm's health probe timed out",))

    async def _probe_sbatch(self, daemon: Daemon, probes: ProbeResults) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                probes.sbatch_error = await probe_sbatch(daemon.deployment.sbatch)
        except TimeoutError:
            probes.sbatch_error = "the probe timed out"
        probes.sbatch_probed = True


def with_probes(snapshot: Snapshot, probes: ProbeResults) -> Snapshot:
    """The daemon's own view, darkened by what the probes found (a dependency is up when both agree)."""
    problems = dict(snapshot.problems)
    chain_ok, slurm_ok, sbatch_ok = snapshot.chain_ok, snapshot.slurm_ok, snapshot.sbatch_ok
    accounting: bool | None = None
    if probes.chain_error is not None:
        chain_ok = False
        problems.setdefault("chain", probes.chain_error)
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
        snapshot,
        chain_ok=chain_ok,
        slurm_ok=slurm_ok,
        sbatch_ok=sbatch_ok,
        problems=problems,
        slurm_accounting=accounting,
    )


# ---------------------------------------------------------------------------------- HTTP


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the journal."""


def _json(start_response: StartResponse, report: Report) -> list[bytes]:
    body = json.dumps(report.as_json()).encode()
    status = "200 OK" if report.ok else "503 Service Unavailable"
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
