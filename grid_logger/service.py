"""The LoggerAPI servicer: who may write or read which log, and how lines reach live readers.

Refusals, in the order they are checked:

- Read / WatchList: RESOURCE_EXHAUSTED (too many streams); INVALID_ARGUMENT (address or log name
  malformed); UNAUTHENTICATED (timestamp outside the window of the server's clock, signature not
  65 bytes or not from `address`); NOT_FOUND (no such job on chain); PERMISSION_DENIED (the job's
  customer is another address); UNAVAILABLE (the chain cannot be read).
- Write: RESOURCE_EXHAUSTED; UNAUTHENTICATED (no or malformed `grid-log-token`, or a token not
  signed by the job's provider for this job and customer); INVALID_ARGUMENT (log name, user, line
  length, dedup metadata); NOT_FOUND (no such job); PERMISSION_DENIED (`user` is not the job's
  customer, or a stream switching logs); FAILED_PRECONDITION (the job ended more than
  `write_grace_seconds` ago); UNAVAILABLE.

Memory does not grow with the log or the readers' speed: a reader reads the file from its own
position, a bounded batch at a time, and waits on the gRPC flow control of its own stream; a writer
appends to the file and wakes the waiting readers, never waiting for any of them.

Extensions, all in request metadata, that DeepSquare's clients do not send and so do not see:
`grid-log-since` (Unix ns: skip older lines), `grid-log-follow: 0` (end once caught up), and for
writers `grid-log-writer` + `grid-log-seq` (deduplication of a batch sent again after a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import grpc
import structlog

from grid_logger import names, signing
from grid_logger.chain import ChainUnavailable, JobCache, JobNotFound
from grid_logger.settings import Settings
from grid_logger.store import NO_WRITER, Cursor, LogFile, LogStore, StoreError
from grid_protocol.jobs import Job
from grid_protocol.proto import log_pb2, log_pb2_grpc
from supervisor.chain.keys import SIGNATURE_BYTES

log = structlog.get_logger("grid_logger")

TOKEN_METADATA = "grid-log-token"
WRITER_METADATA = "grid-log-writer"
SEQ_METADATA = "grid-log-seq"
SINCE_METADATA = "grid-log-since"
FOLLOW_METADATA = "grid-log-follow"
#: Timestamps at or above this are nanoseconds (reference clients send seconds).
NANOSECONDS_FROM = 10**14
#: A line's timestamp below this is taken as seconds (the reference writer's reconnection notice).
SECONDS_BELOW = 10**12
#: Records read per batch by a reader, and bytes.
READ_BATCH = 64
READ_BATCH_BYTES = 128 * 1024
#: Logs kept open after their last stream ends, so a writer's next batch needs no rescan.
IDLE_LOGS = 256
#: Write tokens whose signer is remembered (a writer opens one stream per batch).
WRITE_AUTH_ENTRIES = 10_000
#: A write token that does not match the job as cached is checked against the chain again, at most
#: this often per job (a job read by its reader before its claim has no provider yet).
FRESH_READ_S = 0.5
FSYNC_INTERVAL_SECONDS = 1.0
TRUNCATED_NOTICE = b"grid-logger: this log reached its size limit; later lines were not kept"


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _metadata(context: grpc.aio.ServicerContext[object, object]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            found[key] = value
    return found


def signed_seconds(timestamp: int) -> float:
    """A signed timestamp in seconds: seconds as the reference clients send, nanoseconds tolerated."""
    return timestamp / 1e9 if timestamp >= NANOSECONDS_FROM else float(timestamp)


def line_timestamp(timestamp: int, now_ns: int, skew_ns: int) -> int:
    """A line's stored timestamp (ns): seconds converted; none, or one beyond the skew ahead, is now."""
    if 0 < timestamp < SECONDS_BELOW:
        timestamp *= 1_000_000_000
    if timestamp <= 0 or timestamp > now_ns + skew_ns:
        return now_ns
    return timestamp


@dataclass
class LogState:
    """A log in use: its appender, and what its readers wait on."""

    user: str
    name: str
    key: bytes | None = None
    appender: LogFile | None = None
    writers: int = 0
    refs: int = 0
    truncated: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def bump(self) -> None:
        """Wake every reader waiting on this log."""
        event, self.changed = self.changed, asyncio.Event()
        event.set()


class Registry:
    """The logs in use, plus the most recently used idle ones (their files stay open)."""

    def __init__(self, store: LogStore) -> None:
        self._store = store
        self._active: dict[tuple[str, str], LogState] = {}
        self._idle: OrderedDict[tuple[str, str], LogState] = OrderedDict()
        self._created: dict[str, asyncio.Event] = {}
        self._watchers: dict[str, int] = {}

    def acquire(self, user: str, name: str) -> LogState:
        key = (user, name)
        state = self._active.get(key) or self._idle.pop(key, None) or LogState(user, name)
        self._active[key] = state
        state.refs += 1
        return state

    def release(self, state: LogState) -> None:
        state.refs -= 1
        if state.refs > 0:
            return
        key = (state.user, state.name)
        self._active.pop(key, None)
        self._idle[key] = state
        while len(self._idle) > IDLE_LOGS:
            _, evicted = self._idle.popitem(last=False)
            if evicted.appender is not None:
                evicted.appender.close()

    def busy(self) -> set[tuple[str, str]]:
        return set(self._active)

    def forget_idle(self) -> None:
        """Close the idle logs (before a purge may delete their files)."""
        while self._idle:
            _, state = self._idle.popitem(last=False)
            if state.appender is not None:
                state.appender.close()

    def appenders(self) -> list[LogFile]:
        return [s.appender for s in (*self._active.values(), *self._idle.values()) if s.appender is not None]

    async def appender(self, state: LogState) -> LogFile:
        async with state.lock:
            if state.appender is not None:
                return state.appender
            created = not self._store.exists(state.user, state.name)
            appender, state.key = await asyncio.to_thread(self._store.open_append, state.user, state.name)
            state.appender = appender
            if created:
                self.log_created(state.user)
            return appender

    async def cursor(self, state: LogState) -> Cursor | None:
        if not self._store.exists(state.user, state.name):
            return None
        async with state.lock:
            if state.key is None:
                state.key = await asyncio.to_thread(self._store.key, state.user, state.name)
        return self._store.cursor(state.user, state.name, state.key)

    def watch(self, user: str) -> None:
        self._watchers[user] = self._watchers.get(user, 0) + 1
        self._created.setdefault(user, asyncio.Event())

    def unwatch(self, user: str) -> None:
        self._watchers[user] -= 1
        if self._watchers[user] == 0:
            del self._watchers[user]
            del self._created[user]

    def created_event(self, user: str) -> asyncio.Event:
        return self._created[user]

    def log_created(self, user: str) -> None:
        event = self._created.get(user)
        if event is not None:
            self._created[user] = asyncio.Event()
            event.set()


@dataclass
class Counter:
    """Concurrent streams of one kind, bounded."""

    limit: int
    current: int = 0

    @contextlib.contextmanager
    def slot(self, what: str) -> Iterator[None]:
        if self.current >= self.limit:
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many {what} ({self.limit}): retry later")
        self.current += 1
        try:
            yield
        finally:
            self.current -= 1


class ReadGate:
    """Who may read: a fresh timestamp, a signature by `address`, and `address` the job's customer."""

    def __init__(self, jobs: JobCache, window_seconds: int, clock: Callable[[], float] = time.time) -> None:
        self._jobs = jobs
        self._window = window_seconds
        self._clock = clock

    def signer(self, address: str, text: bytes, timestamp: int, signature: bytes) -> str:
        """The reader's lowercase address, once its timestamp and signature are checked."""
        try:
            reader = names.address(address)
        except names.BadName as error:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        skew = signed_seconds(timestamp) - self._clock()
        if abs(skew) > self._window:
            when = "in the future" if skew > 0 else "stale"
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"timestamp {timestamp} is {when}: it must be Unix seconds within {self._window} s "
                "of the server's clock",
            )
        if len(signature) != SIGNATURE_BYTES:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "signed_hash must be a 65-byte signature")
        if signing.recover(text, signature) != reader:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "signed_hash is not a signature by address")
        return reader

    async def read(self, request: log_pb2.ReadRequest) -> tuple[str, str, bytes]:
        """(customer, log name, job id) of an authorised Read."""
        try:
            name = names.log_name(request.log_name)
        except names.BadName as error:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        text = signing.read_text(request.address, request.log_name, request.timestamp)
        reader = self.signer(request.address, text, request.timestamp, request.signed_hash)
        job_id = bytes.fromhex(name[2:])
        job = await job_or_refusal(self._jobs, job_id)
        if job.customer.lower() != reader:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"job {name} belongs to another customer")
        return reader, name, job_id

    def watch_list(self, request: log_pb2.WatchListRequest) -> str:
        text = signing.watch_list_text(request.address, request.timestamp)
        return self.signer(request.address, text, request.timestamp, request.signed_hash)


async def job_or_refusal(jobs: JobCache, job_id: bytes, *, max_age: float | None = None) -> Job:
    try:
        return await jobs.get(job_id, max_age=max_age)
    except JobNotFound:
        raise Refusal(grpc.StatusCode.NOT_FOUND, f"no job 0x{job_id.hex()} on chain") from None
    except ChainUnavailable as error:
        raise Refusal(grpc.StatusCode.UNAVAILABLE, str(error)) from None


class WriteGate:
    """Who may write: a token signed by the job's provider, for this job and its customer, while
    the job runs and `grace_seconds` after it ended."""

    def __init__(
        self,
        jobs: JobCache,
        meta_scheduler: str,
        grace_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._jobs = jobs
        self._meta_scheduler = meta_scheduler.lower()
        self._grace = grace_seconds
        self._clock = clock
        self._signers: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._read_again_at: OrderedDict[str, float] = OrderedDict()

    def _may_read_again(self, name: str) -> bool:
        """Whether a mismatching token may make the job be read from the chain again now (bounded:
        bad tokens cannot turn into a read per stream)."""
        now = self._clock()
        if now - self._read_again_at.get(name, float("-inf")) < FRESH_READ_S:
            return False
        self._read_again_at[name] = now
        self._read_again_at.move_to_end(name)
        while len(self._read_again_at) > WRITE_AUTH_ENTRIES:
            self._read_again_at.popitem(last=False)
        return True

    async def authorize(self, token: str, name: str, user: str) -> None:
        """Checked for every Write stream; only the signature recovery is remembered, the job is
        read again (through the job cache) so a job that ended closes its log."""
        key = (token, name, user)
        signer = self._signers.get(key)
        if signer is None:
            signature = signing.token_signature(token)
            if signature is None:
                raise Refusal(grpc.StatusCode.UNAUTHENTICATED, f"malformed {TOKEN_METADATA}")
            signer = (
                signing.recover(signing.write_token_text(self._meta_scheduler, name, user), signature) or ""
            )
        job = await job_or_refusal(self._jobs, bytes.fromhex(name[2:]))
        if signer != job.provider.lower() and self._may_read_again(name):
            # The job may have been read before its claim (a reader that came first): read it again,
            # at most every FRESH_READ_S per job, before refusing.
            job = await job_or_refusal(self._jobs, bytes.fromhex(name[2:]), max_age=0.0)
        if signer != job.provider.lower():
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the token is not the job's provider's for job {name} and user {user}",
            )
        if job.customer.lower() != user:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"user {user} is not the customer of job {name}")
        if not job.status.is_hot and job.end + self._grace < self._clock():
            raise Refusal(grpc.StatusCode.FAILED_PRECONDITION, f"job {name} has ended: its log is closed")
        self._signers[key] = signer
        self._signers.move_to_end(key)
        while len(self._signers) > WRITE_AUTH_ENTRIES:
            self._signers.popitem(last=False)


class LoggerServicer(log_pb2_grpc.LoggerAPIServicer):
    def __init__(self, settings: Settings, store: LogStore, jobs: JobCache) -> None:
        self._settings = settings
        self._store = store
        self._jobs = jobs
        self.registry = Registry(store)
        self._reads = ReadGate(jobs, settings.timestamp_window_seconds)
        self._writes = WriteGate(jobs, settings.metascheduler_address, settings.write_grace_seconds)
        self.readers = Counter(settings.max_readers)
        self.writers = Counter(settings.max_writers)
        self.watchers = Counter(settings.max_watchers)

    # ---- Write

    async def Write(
        self,
        request_iterator: AsyncIterator[log_pb2.WriteRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> log_pb2.WriteResponse:
        try:
            with self.writers.slot("writers"):
                await self._write(request_iterator, _metadata(context))
        except Refusal as refusal:
            log.info("write refused", code=refusal.code.name, reason=refusal.message, peer=context.peer())
            await context.abort(refusal.code, refusal.message)
        return log_pb2.WriteResponse()

    async def _write(self, requests: AsyncIterator[log_pb2.WriteRequest], metadata: dict[str, str]) -> None:
        token = metadata.get(TOKEN_METADATA)
        if not token:
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"a write needs the job's token in the {TOKEN_METADATA} metadata",
            )
        writer, seqs = _dedup(metadata)
        state: LogState | None = None
        stored_below = 0
        position = 0
        max_line = self._settings.max_line_bytes
        skew_ns = self._settings.timestamp_window_seconds * 1_000_000_000
        try:
            async for request in requests:
                if state is None:
                    try:
                        name, user = names.log_name(request.log_name), names.address(request.user)
                    except names.BadName as error:
                        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
                    await self._writes.authorize(token, name, user)
                    state = self.registry.acquire(user, name)
                    state.writers += 1
                    appender = await self.registry.appender(state)
                    stored_below = appender.next_seq(writer) if writer != NO_WRITER else 0
                elif request.log_name.lower() != state.name or request.user.lower() != state.user:
                    raise Refusal(grpc.StatusCode.PERMISSION_DENIED, "one Write stream writes one log")
                seq = 0
                if writer != NO_WRITER:
                    if position >= len(seqs):
                        raise Refusal(
                            grpc.StatusCode.INVALID_ARGUMENT, f"more lines than {SEQ_METADATA} names"
                        )
                    seq = seqs[position]
                    position += 1
                    if seq < stored_below:
                        continue  # stored by an earlier attempt of this batch
                data = request.data.rstrip(b"\r\n")
                if len(data) > max_line:
                    raise Refusal(
                        grpc.StatusCode.INVALID_ARGUMENT, f"a line is {len(data)} bytes, above {max_line}"
                    )
                now_ns = time.time_ns()
                self._append(
                    state, appender, data, line_timestamp(request.timestamp, now_ns, skew_ns), writer, seq
                )
            if state is not None and self._settings.fsync and state.appender is not None:
                await asyncio.to_thread(state.appender.sync)
        finally:
            if state is not None:
                state.writers -= 1
                state.bump()
                self.registry.release(state)

    def _append(
        self, state: LogState, appender: LogFile, data: bytes, timestamp: int, writer: bytes, seq: int
    ) -> None:
        if appender.size + len(data) > self._settings.max_log_bytes:
            if not state.truncated:
                state.truncated = True
                appender.append(TRUNCATED_NOTICE, timestamp)
                state.bump()
            return
        appender.append(data, timestamp, writer, seq)
        state.bump()

    # ---- Read

    async def Read(
        self, request: log_pb2.ReadRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> None:
        try:
            with self.readers.slot("readers"):
                customer, name, job_id = await self._reads.read(request)
                metadata = _metadata(context)
                await self._follow(context, customer, name, job_id, metadata)
        except Refusal as refusal:
            log.info("read refused", code=refusal.code.name, reason=refusal.message, peer=context.peer())
            await context.abort(refusal.code, refusal.message)
        except StoreError as error:
            log.error("log unreadable", error=str(error))
            await context.abort(grpc.StatusCode.DATA_LOSS, "the stored log cannot be read")

    async def _follow(
        self,
        context: grpc.aio.ServicerContext[object, object],
        customer: str,
        name: str,
        job_id: bytes,
        metadata: dict[str, str],
    ) -> None:
        follow = metadata.get(FOLLOW_METADATA, "1").lower() not in ("0", "false", "no")
        try:
            since = int(metadata.get(SINCE_METADATA, "0"))
        except ValueError:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT, f"{SINCE_METADATA} must be Unix nanoseconds"
            ) from None
        poll = self._settings.job_cache_seconds
        state = self.registry.acquire(customer, name)
        cursor: Cursor | None = None
        cold_since: float | None = None
        ending = not follow
        try:
            while True:
                changed = state.changed
                if cursor is None:
                    cursor = await self.registry.cursor(state)
                records = cursor.read(READ_BATCH, READ_BATCH_BYTES) if cursor is not None else []
                for record in records:
                    if record.timestamp >= since:
                        await context.write(
                            log_pb2.ReadResponse(data=record.data, timestamp=record.timestamp)
                        )
                if records:
                    continue
                if ending:
                    return
                if not await self._hot(job_id):
                    cold_since = time.monotonic() if cold_since is None else cold_since
                    if state.writers == 0 or time.monotonic() - cold_since > self._settings.end_grace_seconds:
                        ending = True  # one more pass: lines appended since the last one
                        continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), poll)
        finally:
            if cursor is not None:
                cursor.close()
            self.registry.release(state)

    async def _hot(self, job_id: bytes) -> bool:
        try:
            return (await self._jobs.get(job_id)).status.is_hot
        except (ChainUnavailable, JobNotFound):
            return True  # keep following until the chain answers

    # ---- WatchList

    async def WatchList(
        self, request: log_pb2.WatchListRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> None:
        try:
            with self.watchers.slot("watchers"):
                user = self._reads.watch_list(request)
                await self._watch(context, user)
        except Refusal as refusal:
            log.info("watch refused", code=refusal.code.name, reason=refusal.message, peer=context.peer())
            await context.abort(refusal.code, refusal.message)

    async def _watch(self, context: grpc.aio.ServicerContext[object, object], user: str) -> None:
        self.registry.watch(user)
        try:
            while True:
                created = self.registry.created_event(user)
                logs = await asyncio.to_thread(self._store.list_logs, user)
                await context.write(log_pb2.WatchListResponse(log_names=logs))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(created.wait(), self._settings.watch_list_interval_seconds)
        finally:
            self.registry.unwatch(user)

    # ---- upkeep

    async def sync_forever(self) -> None:
        """fsync what long Write streams appended, once a second."""
        while True:
            await asyncio.sleep(FSYNC_INTERVAL_SECONDS)
            for appender in self.registry.appenders():
                if appender.dirty:
                    await asyncio.to_thread(appender.sync)

    async def purge(self) -> int:
        """Delete the logs past their retention; the ones in use are kept."""
        self.registry.forget_idle()
        removed = await asyncio.to_thread(
            self._store.purge, self._settings.retention_days * 86400, self.registry.busy()
        )
        if removed:
            log.info("logs past retention deleted", count=removed)
        return removed


#: The most sequence numbers one batch may name.
MAX_BATCH_SEQS = 100_000


def _dedup(metadata: dict[str, str]) -> tuple[bytes, list[int]]:
    """The writer id and the sequence numbers of the batch's lines (`a-b,c,...`), when sent."""
    writer = metadata.get(WRITER_METADATA)
    if writer is None:
        return NO_WRITER, []
    refusal = Refusal(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{WRITER_METADATA} must be 16 hex digits and {SEQ_METADATA} increasing ranges a-b,c,...",
    )
    if not names.WRITER_ID.fullmatch(writer):
        raise refusal
    seqs: list[int] = []
    for item in metadata.get(SEQ_METADATA, "").split(","):
        first, _, last = item.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise refusal
        a, b = int(first), int(last or first)
        if b < a or (seqs and a <= seqs[-1]) or b >= 2**63 or len(seqs) + b - a + 1 > MAX_BATCH_SEQS:
            raise refusal
        seqs.extend(range(a, b + 1))
    return bytes.fromhex(writer), seqs
