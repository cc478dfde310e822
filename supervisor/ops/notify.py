"""systemd's notification protocol (sd_notify): READY, WATCHDOG, STOPPING and STATUS datagrams.

The protocol is one datagram of `KEY=value` lines on the AF_UNIX socket named by $NOTIFY_SOCKET (a
name starting with `@` is in the abstract namespace). Without that variable every call does nothing,
so the daemon runs the same way outside systemd.

The watchdog is fed from the work loop's `cycle_done` and from nowhere else: when a cycle hangs, the
pings stop and systemd restarts the service after `WatchdogSec`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping
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
    """A daemon listener speaking sd_notify: READY once caught up, WATCHDOG per live cycle, STOPPING."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self.address = notify_address(env)
        self.interval = watchdog_interval(env, os.getpid())
        self._clock = clock
        self._last_ping: float | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, daemon: Daemon) -> None:
        send(f"READY=1\nSTATUS={status_line(daemon)}", self.address)

    def cycle_done(self, daemon: Daemon) -> None:
        if self.address is None:
            return
        lines: list[str] = []
        now = self._clock()
        if self.interval is not None and (self._last_ping is None or now - self._last_ping >= self.interval):
            lines.append("WATCHDOG=1")
            self._last_ping = now
        if not daemon.ready:
            lines.append(f"EXTEND_TIMEOUT_USEC={int(START_EXTENSION_S * 1_000_000)}")
        if lines:
            lines.append(f"STATUS={status_line(daemon)}")
            send("\n".join(lines), self.address)

    def stopping(self, daemon: Daemon) -> None:
        send("STOPPING=1\nSTATUS=draining: delivering the outbox before exit", self.address)

    def waiting(self, daemon: Daemon, what: str) -> None:
        """Start-up waits for a dependency: ask systemd for more time, and say what for."""
        if daemon.ready:
            return
        extend = int(START_EXTENSION_S * 1_000_000)
        send(f"EXTEND_TIMEOUT_USEC={extend}\nSTATUS=waiting for {what}", self.address)
