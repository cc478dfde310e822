"""`grid-dev logs`: a job's output as its customer reads it from the grid logger.

The requests are signed with the customer's key as DeepSquare's reader signs them, so the command
works against any service that speaks `logger.v1alpha1`; the service decides who may read (the
job's customer on chain) and when the stream ends (the job ends).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc

from grid_dev.chain import GridError
from grid_logger.reader import LogLine, read_log
from supervisor.chain.keys import Signer
from supervisor.grpc_tls import ClientTls

RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def parse_since(text: str, now: float | None = None) -> int:
    """Unix nanoseconds from `10m`/`2h`/`30s`/`1d` ago, Unix seconds, or an ISO 8601 time (UTC
    unless it says otherwise)."""
    value = text.strip()
    relative = RELATIVE.fullmatch(value)
    if relative:
        moment = (time.time() if now is None else now) - float(relative.group(1)) * UNIT_SECONDS[
            relative.group(2)
        ]
        return int(moment * 1e9)
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return int(float(value) * 1e9)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise GridError(
            f"--since {text!r}: give a duration ago (30s, 10m, 2h, 1d), Unix seconds or an ISO 8601 time"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1e9)


def format_line(line: LogLine) -> str:
    """`2024-05-01T12:00:00.123456Z text`: the writer's timestamp in UTC, then the line."""
    seconds, nanoseconds = divmod(line.timestamp, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{moment}.{nanoseconds // 1000:06d}Z {line.data.decode('utf-8', errors='replace')}"


def client_tls(
    target: str, tls: bool | None, ca_file: Path | None, server_name: str | None
) -> ClientTls | None:
    """TLS unless told otherwise or the service is on loopback."""
    host = target.rsplit(":", 1)[0]
    if tls is False or (tls is None and host in LOOPBACK_HOSTS and ca_file is None):
        return None
    return ClientTls(ca_file=ca_file, server_name_override=server_name)


async def print_logs(
    target: str,
    tls: ClientTls | None,
    signer: Signer,
    job_id: str,
    *,
    follow: bool,
    since_ns: int,
    echo: Callable[[str], None],
) -> int:
    """Print the job's lines; returns how many. Refusals become a GridError naming the status."""

    def sign(text: bytes) -> bytes:
        return bytes(signer.sign_message(text).signature)

    count = 0
    try:
        async for line in read_log(
            target, tls, signer.address, job_id, sign, follow=follow, since_ns=since_ns
        ):
            echo(format_line(line))
            count += 1
    except grpc.aio.AioRpcError as error:
        raise GridError(f"the log service refused: {error.code().name}: {error.details()}") from None
    return count
