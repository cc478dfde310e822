"""What the operator endpoints report, taken from each deployment's daemon once per work cycle.

Each deployment (chain) has its own snapshot and its own verdicts; `/healthz` and `/readyz` are ok
when every deployment is. A snapshot is built on the daemons' event loop (the store is a local SQLite
file: cheap to read) and read by the HTTP thread. Ages are computed when a scrape or probe arrives,
so a work loop that stops moving shows as a growing age even though nothing updates its snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from supervisor.store import Store

if TYPE_CHECKING:
    from supervisor.daemon import Daemon


@dataclass(frozen=True)
class TransactionFigures:
    """Chain writes, from the outbox and its signed attempts (durable: they survive restarts)."""

    sent: int = 0  # actions with at least one signed transaction
    mined: int = 0
    failed: int = 0  # failed for good (not "already done")
    replaced: int = 0  # signed attempts beyond the first of each action (fee bumps)
    actions: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, state) -> count


@dataclass(frozen=True)
class Snapshot:
    """The daemon's state at the end of a work cycle."""

    taken_at: float
    ready: bool
    cycles: int
    chain_ok: bool
    slurm_ok: bool
    sbatch_ok: bool
    registered: bool
    problems: dict[str, str]
    last_block: int | None
    head_block: int | None
    last_read_at: float | None
    ws_connected: bool
    ws_reconnects: int
    reorgs: int
    events_handled: int
    parked_events: int
    outbox_depth: int
    oldest_outbox_created_at: float | None
    transactions: TransactionFigures
    open_jobs: dict[str, int]
    closed_jobs: int
    slurm_submissions: int
    sender_error: str | None
    wallet_balance_wei: int | None
    slurm_accounting: bool | None = None


def transaction_figures(store: Store) -> TransactionFigures:
    """Counts over the whole life of the state file, from the store's trigger-kept counters."""
    actions: dict[tuple[str, str], int] = {}
    mined = failed = 0
    for (kind, state, already_done), count in store.outbox_counts().items():
        actions[(kind, state)] = actions.get((kind, state), 0) + count
        if state == "mined":
            mined += count
        elif state == "failed" and not already_done:
            failed += count
    sent = store.counter("sent")
    return TransactionFigures(
        sent=sent, mined=mined, failed=failed, replaced=store.counter("attempts") - sent, actions=actions
    )


def take_snapshot(daemon: Daemon, *, wallet_balance_wei: int | None, registered: bool | None) -> Snapshot:
    """Read the daemon's health, its follower, its sender and its store (all local: no I/O beyond SQLite)."""
    now = time.time()
    store = daemon.store
    follower = daemon.follower.health if daemon.follower is not None else None
    open_by_status, closed_jobs, submissions = store.job_counts()
    open_jobs = {status.name: count for status, count in open_by_status.items()}
    oldest_age = store.oldest_open_action_age(now)
    health = daemon.health
    return Snapshot(
        taken_at=now,
        ready=daemon.ready,
        cycles=daemon.cycles,
        chain_ok=health.chain_ok,
        slurm_ok=health.slurm_ok,
        sbatch_ok=health.sbatch_ok,
        registered=health.registered if registered is None else registered,
        problems=dict(health.problems),
        last_block=None if follower is None else follower.last_block,
        head_block=None if follower is None else follower.head_block,
        last_read_at=None if follower is None else follower.last_read_at,
        ws_connected=False if follower is None else follower.ws_connected,
        ws_reconnects=0 if follower is None else follower.ws_reconnects,
        reorgs=0 if follower is None else follower.reorgs,
        events_handled=0 if follower is None else follower.events_handled,
        parked_events=0 if follower is None else follower.parked_events,
        outbox_depth=store.outbox_depth(),
        oldest_outbox_created_at=None if oldest_age is None else now - oldest_age,
        transactions=transaction_figures(store),
        open_jobs=open_jobs,
        closed_jobs=closed_jobs,
        slurm_submissions=submissions,
        sender_error=None if daemon.sender is None else daemon.sender.last_error,
        wallet_balance_wei=wallet_balance_wei,
    )


@dataclass(frozen=True)
class Verdict:
    """A probe's answer for one deployment: ok or not, and each check with what it found."""

    ok: bool
    checks: dict[str, str]


@dataclass(frozen=True)
class Report:
    """A probe's answer over every deployment: ok only when each is, and which are not."""

    chains: dict[str, Verdict]

    @property
    def ok(self) -> bool:
        return all(verdict.ok for verdict in self.chains.values())

    @property
    def failing(self) -> list[str]:
        return [name for name, verdict in self.chains.items() if not verdict.ok]

    def as_json(self) -> dict[str, object]:
        """`{"ok", "failing": [chain...], "checks": {chain: {check: found}}}`: the same shape for one
        deployment (named "main" for a `[chain]` file) as for several."""
        return {
            "ok": self.ok,
            "failing": self.failing,
            "checks": {name: verdict.checks for name, verdict in self.chains.items()},
        }


@dataclass(frozen=True)
class Deployments:
    """Every deployment's latest state, as `/healthz` and `/readyz` judge it (read at once: each part
    is replaced whole by its writer)."""

    names: tuple[str, ...]
    snapshots: Mapping[str, Snapshot]
    waiting: Mapping[str, str]  # deployment -> what its start-up waits for (before its first cycle)
    stopping: frozenset[str]

    def each(self) -> list[str]:
        """The configured deployments in order, then any other that reported."""
        return [*self.names, *(name for name in self.snapshots if name not in self.names)]


def liveness(snapshot: Snapshot | None, *, now: float, started_at: float, stall_seconds: float) -> Verdict:
    """Alive: the work loop finished a cycle within `stall_seconds` (or the process started that recently)."""
    if snapshot is None:
        waited = now - started_at
        if waited <= stall_seconds:
            return Verdict(True, {"work_loop": f"starting for {waited:.0f} s"})
        return Verdict(False, {"work_loop": f"no work cycle since the start {waited:.0f} s ago"})
    age = now - snapshot.taken_at
    if age > stall_seconds:
        return Verdict(False, {"work_loop": f"last cycle {age:.0f} s ago (limit {stall_seconds:g} s)"})
    return Verdict(True, {"work_loop": f"last cycle {age:.1f} s ago"})


def readiness(snapshot: Snapshot | None, *, now: float, started_at: float, stall_seconds: float) -> Verdict:
    """Ready: alive, caught up with the chain, chain and Slurm reachable, approved for scheduling."""
    alive = liveness(snapshot, now=now, started_at=started_at, stall_seconds=stall_seconds)
    checks = dict(alive.checks)
    if snapshot is None:
        return Verdict(False, {**checks, "chain": "not read yet"})
    failures = not alive.ok
    for name, ok, good, bad in (
        ("caught_up", snapshot.ready, f"at block {snapshot.last_block}", "still reading the chain's history"),
        ("chain", snapshot.chain_ok, "reachable", snapshot.problems.get("chain", "unreachable")),
        ("slurm", snapshot.slurm_ok, "reachable", snapshot.problems.get("slurm", "unreachable")),
        ("registered", snapshot.registered, "approved for scheduling", "not approved for scheduling"),
    ):
        checks[name] = good if ok else bad
        failures = failures or not ok
    checks["sbatch"] = "reachable" if snapshot.sbatch_ok else snapshot.problems.get("sbatch", "unreachable")
    return Verdict(not failures, checks)


def _not_begun(deployments: Deployments, name: str) -> Verdict:
    """A deployment still starting while another's work loop runs: alive (its start-up retries),
    so a chain that is down fails readiness only."""
    what = deployments.waiting.get(name)
    return Verdict(True, {"work_loop": f"not begun: waiting for {what}" if what else "not begun yet"})


def liveness_report(
    deployments: Deployments, *, now: float, started_at: float, stall_seconds: float
) -> Report:
    """Alive: every deployment whose work loop has begun finished a cycle within `stall_seconds`;
    before any has, the process started that recently."""
    begun = bool(deployments.snapshots)
    chains = {}
    for name in deployments.each():
        snapshot = deployments.snapshots.get(name)
        if snapshot is None and begun:
            chains[name] = _not_begun(deployments, name)
        else:
            chains[name] = liveness(snapshot, now=now, started_at=started_at, stall_seconds=stall_seconds)
    return Report(chains)


def readiness_report(
    deployments: Deployments, *, now: float, started_at: float, stall_seconds: float
) -> Report:
    """Ready: every deployment is (a deployment not read yet says what its start-up waits for)."""
    begun = bool(deployments.snapshots)
    chains = {}
    for name in deployments.each():
        snapshot = deployments.snapshots.get(name)
        if snapshot is None:
            alive = (
                _not_begun(deployments, name)
                if begun
                else liveness(None, now=now, started_at=started_at, stall_seconds=stall_seconds)
            )
            what = deployments.waiting.get(name)
            verdict = Verdict(
                False,
                {**alive.checks, "chain": f"not read yet: waiting for {what}" if what else "not read yet"},
            )
        else:
            verdict = readiness(snapshot, now=now, started_at=started_at, stall_seconds=stall_seconds)
        if name in deployments.stopping:
            verdict = Verdict(False, {**verdict.checks, "stopping": "draining before exit"})
        chains[name] = verdict
    return Report(chains)
