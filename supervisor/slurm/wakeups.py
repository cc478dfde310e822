"""Wake-ups from Slurm itself: a job of ours started or ended, so look now rather than at the next poll.

slurmctld runs `scripts/slurmctld-wakeup.sh` as its PrologSlurmctld (a job is allocated) and
EpilogSlurmctld (a job ended); the hook sends one UDP datagram, `<Slurm job id> <job name>`, to each
supervisor listed beside it. A datagram carries no state: it only makes the work lane query Slurm
at once, and polling stays the fallback for a datagram lost or a hook not installed. Anything on
the host can send to the port, so the listener binds to loopback by default and a datagram that is
not about a job this supervisor tracks is ignored.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("supervisor.slurm")

#: Larger datagrams are not ours: the hook sends a job id and a job name of at most 200 bytes.
MAX_DATAGRAM_BYTES = 512
_WAKEUP = re.compile(r"^(\d{1,20}) (\S{1,200})\n?$")


def parse_wakeup(data: bytes) -> tuple[int, str] | None:
    """(Slurm job id, job name) of a hook's datagram, or None when it is not one."""
    if len(data) > MAX_DATAGRAM_BYTES:
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    found = _WAKEUP.fullmatch(text)
    if found is None:
        return None
    return int(found.group(1)), found.group(2)


@dataclass
class WakeupCounts:
    """What the listener received, for the metrics and the tests."""

    woken: int = 0
    ignored: int = 0


class WakeupProtocol(asyncio.DatagramProtocol):
    """Calls `wake(name)` for each datagram about a job `wanted(name)` accepts; ignores the rest."""

    def __init__(self, wanted: Callable[[str], bool], wake: Callable[[str], None]) -> None:
        self._wanted = wanted
        self._wake = wake
        self.counts = WakeupCounts()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        parsed = parse_wakeup(data)
        if parsed is None or not self._wanted(parsed[1]):
            self.counts.ignored += 1
            return
        self.counts.woken += 1
        self._wake(parsed[1])

    def error_received(self, exc: Exception) -> None:
        log.warning("Slurm wake-up socket error", error=str(exc))


@dataclass
class WakeupListener:
    """The bound socket; `close()` releases it."""

    transport: asyncio.DatagramTransport
    protocol: WakeupProtocol

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def close(self) -> None:
        self.transport.close()


async def listen(address: str, wanted: Callable[[str], bool], wake: Callable[[str], None]) -> WakeupListener:
    """Bind `host:port` (port 0: any free one, see `address`) and start handing wake-ups over."""
    host, _, port = address.rpartition(":")
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: WakeupProtocol(wanted, wake), local_addr=(host.strip("[]"), int(port))
    )
    listener = WakeupListener(transport, protocol)
    bound_host, bound_port = listener.address
    log.info("listening for Slurm wake-ups", address=f"{bound_host}:{bound_port}")
    return listener
