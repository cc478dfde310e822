"""`grid-logger write`: the job's side. Lines written into a FIFO go to the log service.

Three promises to the job:

- **It never blocks the job.** A thread reads the FIFO whatever happens to the service and puts
  each line in a bounded buffer; when the buffer is full the oldest unsent lines make room, and one
  notice line in the log says how many were dropped there.
- **No line is lost or doubled while the buffer holds.** Lines go in batches, each one Write call
  whose answer means the service stored (and fsynced) the batch. A batch that failed is sent again
  with the same `grid-log-writer` id and `grid-log-seq`, and the service skips what it already has,
  so a service that is down, or restarted mid-batch, gets every line once, in order.
- **It ends when told, in bounded time.** On SIGTERM/SIGINT (or when `--watch-pid` is gone) it
  reads what is left in the FIFO, delivers for at most `GRID_LOGGER_DRAIN_SECONDS`, removes the
  FIFO and exits 0; its own messages go to its stderr (the job's output file), never to the log.

Only grpcio and protobuf are needed, so compute nodes run it from the daemon's install.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc

from grid_logger import environment as env
from grid_logger import names
from grid_protocol.proto import log_pb2, log_pb2_grpc
from supervisor.grpc_tls import ClientTls
from supervisor.retry import Backoff

TARGET = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):\d{1,5}$")
#: Lines longer than this are cut into pieces of this size (the service takes up to 64 KiB).
MAX_LINE_BYTES = 16 * 1024
BATCH_LINES = 1000
BATCH_BYTES = 1024 * 1024
SEND_TIMEOUT_SECONDS = 10.0
#: Waits between sends while the service is unreachable: 0.1 s, doubling up to 1 s.
RESEND_BACKOFF = Backoff(0.1, 1.0)
READ_CHUNK = 64 * 1024
#: Refusals that no retry changes: the writer stops sending (and keeps draining the FIFO).
PERMANENT = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
CHANNEL_OPTIONS = [
    # Reconnect within a second or two once the service is back (gRPC's default waits up to 2 min).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 20_000),
]


class ConfigError(ValueError):
    """A setting the writer cannot start without is missing or malformed."""


@dataclass(frozen=True)
class WriterSettings:
    url: str
    log_name: str
    user: str
    token: str
    pipe: Path
    tls: ClientTls | None
    buffer_lines: int = env.DEFAULT_BUFFER_LINES
    buffer_bytes: int = env.DEFAULT_BUFFER_BYTES
    drain_seconds: float = env.DEFAULT_DRAIN_SECONDS
    watch_pid: int | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        pipe: Path | None = None,
        watch_pid: int | None = None,
    ) -> WriterSettings:
        values = os.environ if environ is None else environ

        def need(name: str) -> str:
            value = values.get(name, "")
            if not value:
                raise ConfigError(f"${name} is not set")
            return value

        url = need(env.URL)
        if not TARGET.fullmatch(url):
            raise ConfigError(f"${env.URL} must be host:port, got {url[:80]!r}")
        try:
            log_name = names.log_name(need(env.LOG_NAME))
            user = names.address(need(env.USER))
        except names.BadName as error:
            raise ConfigError(str(error)) from None
        fifo = pipe or (Path(values[env.PIPE]) if values.get(env.PIPE) else None)
        if fifo is None:
            raise ConfigError(f"no FIFO: pass --pipe or set ${env.PIPE}")
        tls = None
        if values.get(env.TLS, "1").lower() not in ("0", "false", "no", "off"):
            ca = values.get(env.CA_FILE)
            tls = ClientTls(
                ca_file=Path(ca) if ca else None, server_name_override=values.get(env.SERVER_NAME) or None
            )
        try:
            return cls(
                url=url,
                log_name=log_name,
                user=user,
                token=need(env.TOKEN),
                pipe=fifo,
                tls=tls,
                buffer_lines=int(values.get(env.BUFFER_LINES, env.DEFAULT_BUFFER_LINES)),
                buffer_bytes=int(values.get(env.BUFFER_BYTES, env.DEFAULT_BUFFER_BYTES)),
                drain_seconds=float(values.get(env.DRAIN_SECONDS, env.DEFAULT_DRAIN_SECONDS)),
                watch_pid=watch_pid,
            )
        except ValueError as error:
            raise ConfigError(f"a buffer or drain setting is not a number: {error}") from None


@dataclass
class Entry:
    data: bytes
    timestamp: int
    #: The line's number in this writer's output; a notice has the number of the last line it covers.
    seq: int
    #: Above 0: a notice standing for this many lines dropped here.
    dropped: int = 0


def dropped_notice(count: int, lines: int, size: int) -> bytes:
    return (
        f"grid-logger: {count} line{'s' if count != 1 else ''} dropped here: the log service could not be "
        f"reached and the writer's buffer ({lines} lines, {size} bytes) was full"
    ).encode()


def seq_ranges(entries: list[Entry]) -> str:
    """`a-b,c,d-e`: the sequence numbers of a batch, for the `grid-log-seq` metadata."""
    ranges: list[list[int]] = []
    for entry in entries:
        if ranges and ranges[-1][1] + 1 == entry.seq:
            ranges[-1][1] = entry.seq
        else:
            ranges.append([entry.seq, entry.seq])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


class LineBuffer:
    """Lines waiting for the service: at most `max_lines` and `max_bytes`, the oldest dropped first.

    `put` never blocks. Each line gets its sequence number when it comes in and keeps it until the
    service has it; a batch that failed goes back to the front, where it is the first to make room,
    so what survives an outage is always the newest lines, after one notice for the dropped ones.
    """

    def __init__(
        self, max_lines: int, max_bytes: int, batch_lines: int = BATCH_LINES, batch_bytes: int = BATCH_BYTES
    ) -> None:
        self.max_lines = max(1, max_lines)
        self.max_bytes = max(1, max_bytes)
        self._batch_lines = max(1, min(batch_lines, self.max_lines))
        self._batch_bytes = batch_bytes
        self._pending: deque[Entry] = deque()
        self._lines = 0
        self._bytes = 0
        self._inflight: list[Entry] = []
        self._next_seq = 0
        self._closed = False
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, data: bytes, timestamp: int) -> None:
        with self._cond:
            self._pending.append(Entry(data, timestamp, self._next_seq))
            self._next_seq += 1
            self._lines += 1
            self._bytes += len(data)
            self._make_room()
            self._cond.notify()

    def _make_room(self) -> None:
        while self._lines > self.max_lines or self._bytes > self.max_bytes:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        """Drop the oldest waiting line into the notice in front of it (notices merge)."""
        count, last = 0, None
        while self._pending and self._pending[0].dropped:
            last = self._pending.popleft()
            count += last.dropped
        if self._pending:
            last = self._pending.popleft()
            self._lines -= 1
            self._bytes -= len(last.data)
            self.dropped += 1
            count += 1
        while self._pending and self._pending[0].dropped:
            last = self._pending.popleft()
            count += last.dropped
        if last is not None:
            self._pending.appendleft(Entry(b"", last.timestamp, last.seq, count))

    def take(self, timeout: float) -> list[Entry] | None:
        """The next batch (the one in flight again, after a failure); None when nothing waits."""
        with self._cond:
            if not self._inflight:
                if not self._pending and not self._closed:
                    self._cond.wait(timeout)
                size = 0
                while self._pending and len(self._inflight) < self._batch_lines and size < self._batch_bytes:
                    entry = self._pending.popleft()
                    if not entry.dropped:
                        self._lines -= 1
                        self._bytes -= len(entry.data)
                    size += len(entry.data)
                    self._inflight.append(entry)
            return list(self._inflight) if self._inflight else None

    def ack(self) -> None:
        """The batch in flight is stored."""
        with self._cond:
            self._inflight = []

    def requeue(self) -> None:
        """The batch in flight failed: back to the front, where it is the first to make room."""
        with self._cond:
            for entry in reversed(self._inflight):
                self._pending.appendleft(entry)
                if not entry.dropped:
                    self._lines += 1
                    self._bytes += len(entry.data)
            self._inflight = []
            self._make_room()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def empty(self) -> bool:
        with self._cond:
            return not self._pending and not self._inflight


def open_fifo(path: Path) -> int:
    """Create the FIFO under a temporary name, open it read-write (it never sees EOF when the
    job's writers close), and only then move it to `path`: a FIFO found there has a reader."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    os.mkfifo(temporary, 0o600)
    fd = os.open(temporary, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    os.replace(temporary, path)
    return fd


class FifoReader(threading.Thread):
    """Reads the FIFO into the buffer; at `stop` it reads what is left, then closes the buffer."""

    def __init__(self, fd: int, buffer: LineBuffer) -> None:
        super().__init__(name="fifo-reader", daemon=True)
        self._fd = fd
        self._buffer = buffer
        self._stopping = threading.Event()
        self._partial = bytearray()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        try:
            while not self._stopping.is_set():
                if poller.poll(200):
                    self._read_available()
            self._read_available()
            if self._partial:
                self._buffer.put(bytes(self._partial), time.time_ns())
        finally:
            self._buffer.close()

    def _read_available(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, READ_CHUNK)
            except BlockingIOError:
                return
            if not chunk:
                return
            now = time.time_ns()
            self._partial += chunk
            *lines, rest = self._partial.split(b"\n")
            for line in lines:
                for start in range(0, max(len(line), 1), MAX_LINE_BYTES):
                    self._buffer.put(bytes(line[start : start + MAX_LINE_BYTES]), now)
            while len(rest) >= MAX_LINE_BYTES:
                self._buffer.put(bytes(rest[:MAX_LINE_BYTES]), now)
                rest = rest[MAX_LINE_BYTES:]
            self._partial = bytearray(rest)


def _say(message: str) -> None:
    with contextlib.suppress(OSError):
        sys.stderr.write(f"grid-logger: {message}\n")
        sys.stderr.flush()


def channel(settings: WriterSettings) -> grpc.Channel:
    if settings.tls is None:
        return grpc.insecure_channel(settings.url, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(
        settings.url, settings.tls.credentials(), options=[*CHANNEL_OPTIONS, *settings.tls.options()]
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_writer(settings: WriterSettings) -> int:
    """Run until told to stop; 0 whatever the service did (the job must not fail for its log)."""
    fd = open_fifo(settings.pipe)
    buffer = LineBuffer(settings.buffer_lines, settings.buffer_bytes)
    reader = FifoReader(fd, buffer)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    reader.start()
    link = channel(settings)
    write = log_pb2_grpc.LoggerAPIStub(link).Write  # type: ignore[no-untyped-call]
    writer_id = secrets.token_hex(8)
    drain_until: float | None = None
    refused = False
    unreachable = False
    failures = 0  # sends failed in a row
    reported_drops = 0
    next_pid_check = 0.0
    try:
        while True:
            now = time.monotonic()
            if settings.watch_pid is not None and now >= next_pid_check:
                next_pid_check = now + 0.5
                if not _alive(settings.watch_pid):
                    stop.set()
            if stop.is_set() and drain_until is None:
                drain_until = now + settings.drain_seconds
                reader.stop()
            if drain_until is not None and (now > drain_until or (buffer.closed and buffer.empty())):
                if not buffer.empty():
                    _say("stopping with lines the log service has not received (see the job's output file)")
                break
            batch = buffer.take(0.2)
            if buffer.dropped > reported_drops:
                _say(f"{buffer.dropped - reported_drops} lines dropped: the writer's buffer was full")
                reported_drops = buffer.dropped
            if batch is None:
                continue
            if refused:
                buffer.ack()
                continue
            try:
                write(
                    _requests(settings, batch, buffer),
                    metadata=(
                        ("grid-log-token", settings.token),
                        ("grid-log-writer", writer_id),
                        ("grid-log-seq", seq_ranges(batch)),
                    ),
                    timeout=SEND_TIMEOUT_SECONDS,
                )
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
                if code in PERMANENT:
                    details = error.details() if isinstance(error, grpc.Call) else ""
                    _say(
                        f"the log service refused this job's lines ({code.name}: {details}); not sending more"
                    )
                    refused = True
                    buffer.ack()
                    continue
                if not unreachable:
                    unreachable = True
                    _say(
                        f"log service unreachable ({code.name}); keeping up to {settings.buffer_lines} lines"
                    )
                buffer.requeue()
                failures += 1
                stop.wait(RESEND_BACKOFF.delay(failures))
                continue
            buffer.ack()
            failures = 0
            if unreachable:
                unreachable = False
                _say("log service reachable again")
    finally:
        reader.stop()
        reader.join(timeout=2)
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            settings.pipe.unlink()
        link.close()
    return 0


def _requests(
    settings: WriterSettings, entries: list[Entry], buffer: LineBuffer
) -> Iterator[log_pb2.WriteRequest]:
    for entry in entries:
        data = (
            dropped_notice(entry.dropped, buffer.max_lines, buffer.max_bytes) if entry.dropped else entry.data
        )
        yield log_pb2.WriteRequest(
            log_name=settings.log_name, user=settings.user, data=data, timestamp=entry.timestamp
        )
