"""systemd's notification protocol (sd_notify): READY, WATCHDOG, STOPPING and STATUS datagrams.

The protocol is one datagram of `KEY=value` lines on the AF_UNIX socket named by $NOTIFY_SOCKET (a
name starting with `@` is in the abstract namespace). Without that variable every call does nothing,
so the daemon runs the same way outside systemd.

The watchdog is fed from the work loops' `cycle_done` and from nowhere else: when a cycle of any
deployment hangs, the pings stop and systemd restarts the service after `WatchdogSec`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from supervisor.daemon import Daemon

log = structlog.get_logger("supervisor.ops")

#: While the daemon catches up with the chain (before READY), each cycle asks systemd for this much
#: more start time, so a long catch-up that makes progress is not killed by TimeoutStartSec.
START_EXTENSION_S = 300.0


def notify_address(environ: Mapping[str, str]) -> str | None:
    """The socket address from $NOTIFY_SOCKET (abstract names get their leading NUL), or None."""
    path = environ.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]
    if not path.startswith("/"):
        return None  # vsock and other transports are not used on a login node
    return path


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG pings (half of $WATCHDOG_USEC), or None when no watchdog is asked for.

    $WATCHDOG_PID, when set, names the process systemd watches; another process must not ping.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    watched = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if watched and (not watched.isdigit() or int(watched) != pid):
        return None
    return int(usec) / 1_000_000 / 2


def send(message: str, address: str | None) -> bool:
    """One datagram to systemd; False (never an exception) when it cannot be delivered."""
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("systemd notification failed", error=str(exc))
        return False
    return True


def status_line(daemon: Daemon) -> str:
    """One line for `systemctl status`: where the daemon is and what is wrong."""
    follower = daemon.follower
    block = follower.health.last_block if follower is not None else None
    parts = [f"ready, block {block}" if daemon.ready else f"catching up, block {block}"]
    with contextlib.suppress(Exception):  # the store may be closing
        parts.append(f"outbox {daemon.store.outbox_depth()}")
    problems = sorted(daemon.health.problems)
    if problems:
        parts.append("problems: " + ", ".join(problems))
    return "; ".join(parts)


class SystemdNotifier:
    """A listener of every deployment's daemon speaking sd_notify: READY once each deployment caught up,
    WATCHDOG while every work loop that has begun keeps cycling, STOPPING once.

    With one deployment the STATUS line is its own; with several it lists each (`alpha: ready, block
    120; outbox 0 | beta: waiting for the chain (RPC and contracts)`).
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        deployments: Sequence[str] = ("main",),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self.address = notify_address(env)
        self.interval = watchdog_interval(env, os.getpid())
        self.deployments = tuple(deployments)
        self._clock = clock
        self._last_ping: float | None = None
        self._daemons: dict[str, Daemon] = {}
        self._waiting: dict[str, str] = {}  # deployment -> what its start-up waits for now
        self._ready: set[str] = set()
        self._begun: set[str] = set()  # deployments whose work loop has cycled (and not stopped)
        self._cycled: set[str] = set()  # those that cycled since the last ping
        self._ready_sent = False
        self._stopping_sent = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _names(self) -> list[str]:
        return [*self.deployments, *(name for name in self._daemons if name not in self.deployments)]

    def status(self) -> str:
        """The STATUS line: the one deployment's, or each deployment's after its name."""

        def one(name: str) -> str:
            if name in self._waiting:
                return f"waiting for {self._waiting[name]}"
            daemon = self._daemons.get(name)
            return "starting" if daemon is None else status_line(daemon)

        names = self._names()
        if len(names) == 1:
            return one(names[0])
        return " | ".join(f"{name}: {one(name)}" for name in names)

    def ready(self, daemon: Daemon) -> None:
        self._daemons[daemon.name] = daemon
        self._waiting.pop(daemon.name, None)
        self._ready.add(daemon.name)
        if not self._ready_sent and set(self._names()) <= self._ready:
            self._ready_sent = True
            send(f"READY=1\nSTATUS={self.status()}", self.address)

    def cycle_done(self, daemon: Daemon) -> None:
        """Ping only when every begun work loop cycled since the last ping: one stuck loop silences it."""
        name = daemon.name
        self._daemons[name] = daemon
        self._waiting.pop(name, None)
        self._begun.add(name)
        self._cycled.add(name)
        if self.address is None:
            return
        lines: list[str] = []
        now = self._clock()
        interval = self.interval
        due = interval is not None and (self._last_ping is None or now - self._last_ping >= interval)
        if due and self._begun <= self._cycled:
            lines.append("WATCHDOG=1")
            self._last_ping = now
            self._cycled = set()
        if not self._ready_sent:
            lines.append(f"EXTEND_TIMEOUT_USEC={int(START_EXTENSION_S * 1_000_000)}")
        if lines:
            lines.append(f"STATUS={self.status()}")
            send("\n".join(lines), self.address)

    def stopping(self, daemon: Daemon) -> None:
        self._begun.discard(daemon.name)
        if not self._stopping_sent:
            self._stopping_sent = True
            send("STOPPING=1\nSTATUS=draining: delivering the outbox before exit", self.address)

    def waiting(self, daemon: Daemon, what: str) -> None:
        """Start-up waits for a dependency: ask systemd for more time, and say what for."""
        self._daemons[daemon.name] = daemon
        if self._ready_sent or daemon.ready:
            return
        self._waiting[daemon.name] = what
        extend = int(START_EXTENSION_S * 1_000_000)
        send(f"EXTEND_TIMEOUT_USEC={extend}\nSTATUS={self.status()}", self.address)
