"""The log follower: reads the chain from a saved cursor and hands each event to a handler exactly once.

Logs come from `eth_getLogs` over bounded block ranges, from the block after the cursor up to
`head - confirmations`. The handler runs inside the same SQLite transaction that moves the cursor,
so after a crash either both the effects and the cursor are saved, or neither is. A changed block
hash at the cursor is a reorganisation: the follower walks back its saved checkpoints to a block the
chain still has, undoes (newest first) the events above it, and reads again from there.

An event whose handler fails is never dropped: it is parked in the store and handled again, with
backoff, at later reads, while the cursor moves on so that other jobs' events are not held up. An
event with the same ordering key (the same job) as a parked one is parked behind it, so one job's
events are still handled in chain order.

A WebSocket `newHeads` subscription is only a wake-up hint that makes the next read happen at once;
it reconnects with backoff on its own, and polling goes on meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from eth_typing import BlockNumber
from web3 import AsyncWeb3, WebSocketProvider
from web3.exceptions import BlockNotFound, Web3RPCError
from web3.types import FilterParams

from grid_protocol.abi import ABIEntry
from supervisor.chain.events import ChainEvent, EventDecoder, LogDecodeError
from supervisor.chain.rpc import ChainIdMismatchError, check_chain_id, describe, read
from supervisor.retry import Backoff, Failure, KeepAlive
from supervisor.store import Cursor, Store

log = structlog.get_logger(__name__)

UNDECODABLE = "<undecodable>"
HANDLED = "handled"
PARKED = "parked"
#: Seconds before a parked event is tried again: doubling from the first value up to the second.
PARK_RETRY_S = (1.0, 60.0)


class EventHandler(Protocol):
    """Records an event's effects in the store (inside the cursor's transaction); must not await."""

    def handle(self, event: ChainEvent, store: Store) -> None: ...

    def undo(self, event: ChainEvent, store: Store) -> None:
        """Revert what `handle` recorded: the event's block left the chain."""
        ...


def _order_key(handler: EventHandler, event: ChainEvent) -> str | None:
    """The handler's ordering key of an event (events with one key are handled in chain order)."""
    key = getattr(handler, "order_key", None)
    return key(event) if callable(key) else None


@dataclass(frozen=True)
class EventSource:
    """Events to follow at one contract address; `accept` keeps only the relevant ones."""

    address: str
    events: Sequence[ABIEntry]
    accept: Callable[[ChainEvent], bool] | None = None


@dataclass(frozen=True)
class FollowerSettings:
    stream: str = "main"  # cursor name in the store
    start_block: int = 0  # first block to read when there is no cursor yet
    confirmations: int = 0  # read up to head - confirmations
    max_range: int = 2000  # blocks per eth_getLogs call (halved when the node refuses)
    poll_interval_s: float = 2.0  # reading period when no hint arrives
    chain_id: int | None = None  # refuse another chain when set
    keep_checkpoints: int = 256  # cursor positions kept to find a common ancestor
    ws_backoff_initial_s: float = 0.5
    ws_backoff_max_s: float = 30.0
    ws_ping_interval_s: float = 10.0
    error_backoff_max_s: float = 30.0


@dataclass
class FollowerHealth:
    """What the follower last saw, for health and metrics."""

    last_block: int | None = None
    last_read_at: float | None = None
    last_error: str | None = None
    ws_connected: bool = False
    ws_reconnects: int = 0
    reorgs: int = 0
    events_handled: int = 0
    undecodable_logs: int = 0
    parked_events: int = 0  # events whose handler failed, waiting to be handled again
    caught_up: bool = False  # has reached head - confirmations at least once since start
    head_block: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _event_of(row: Any) -> ChainEvent:
    """The event a stored row (processed or parked) describes."""
    return ChainEvent(
        name=str(row["name"]),
        args=json.loads(row["args_json"]),
        address=str(row["address"]),
        block_number=int(row["block_number"]),
        block_hash=str(row["block_hash"]),
        tx_hash=str(row["tx_hash"]),
        log_index=int(row["log_index"]),
    )


class LogFollower:
    """Follow `sources` on the chain behind `w3` and deliver their events to `handler`. See module doc."""

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        store: Store,
        sources: Sequence[EventSource],
        handler: EventHandler,
        settings: FollowerSettings | None = None,
        *,
        ws_url: str | None = None,
    ) -> None:
        self._w3 = w3
        self._store = store
        self._sources = list(sources)
        self._handler = handler
        self.settings = settings or FollowerSettings()
        self._ws_url = ws_url
        self._decoders = {
            AsyncWeb3.to_checksum_address(s.address): (EventDecoder(s.events), s.accept)
            for s in self._sources
        }
        self._topics = sorted({t for decoder, _ in self._decoders.values() for t in decoder.topics})
        self._range = self.settings.max_range
        self._wake = asyncio.Event()
        self._stopping = False
        self._chain_checked = False
        self.health = FollowerHealth()

    # -- running ------------------------------------------------------------------------------

    def wake(self) -> None:
        """Read now (e.g. after sending a transaction whose events are awaited)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Follow until `stop()`; failures are logged and retried, never raised."""
        hint = asyncio.create_task(self._hint_loop(), name="ws-hint") if self._ws_url else None
        keep_alive = KeepAlive(
            Backoff(0.2, self.settings.error_backoff_max_s),
            on_failure=self._read_failed,
            stopped=lambda: self._stopping,
            sleep=self._sleep,
        )
        try:
            await keep_alive.forever(self._read_round)
        finally:
            if hint is not None:
                hint.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await hint

    async def _read_round(self) -> None:
        """Read once; when caught up, wait for a hint or the poll interval (else read again at once)."""
        caught_up = await self.poll_once()
        self.health.last_error = None
        if caught_up:
            await self._sleep(self.settings.poll_interval_s)

    def _read_failed(self, failure: Failure) -> None:
        self._chain_checked = False
        retry_in_s = round(failure.retry_in_s, 2)
        if isinstance(failure.error, ChainIdMismatchError):
            self.health.last_error = str(failure.error)
            log.error("wrong chain, following paused", error=str(failure.error), retry_in_s=retry_in_s)
        else:
            self.health.last_error = describe(failure.error)
            log.error(
                "reading the chain failed, will retry", error=describe(failure.error), retry_in_s=retry_in_s
            )

    async def _sleep(self, seconds: float) -> None:
        """Wait for a hint or the timeout, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    # -- one read -----------------------------------------------------------------------------

    async def _block_hash(self, number: int) -> str | None:
        try:
            block = await read(lambda: self._w3.eth.get_block(BlockNumber(number)))
        except BlockNotFound:
            return None
        if block is None or block.get("hash") is None:
            return None
        return "0x" + bytes(block["hash"]).hex()

    def _initial_cursor(self) -> Cursor:
        return Cursor(self.settings.start_block - 1, "")

    async def poll_once(self) -> bool:
        """Read one range (or handle a reorg); True when caught up with head - confirmations."""
        if not self._chain_checked:
            chain_id = await check_chain_id(self._w3, self.settings.chain_id)
            self._store.bind_chain_id(chain_id)
            self._chain_checked = True
        stream = self.settings.stream
        self._retry_parked()
        head = int(await read(lambda: self._w3.eth.block_number))
        self.health.head_block = head
        safe = head - self.settings.confirmations
        cursor = self._store.get_cursor(stream) or self._initial_cursor()
        if cursor.block_hash and cursor.block_number >= 0:
            current = await self._block_hash(cursor.block_number)
            if current != cursor.block_hash:
                await self._rollback(cursor, head)
                return False
        self.health.last_read_at = time.time()
        if safe <= cursor.block_number:
            self.health.last_block = cursor.block_number
            self.health.caught_up = True
            return True
        first = cursor.block_number + 1
        last = min(cursor.block_number + self._range, safe)
        last_hash = await self._block_hash(last)
        logs = await self._get_logs(first, last)
        if logs is None:
            return False  # range was halved: read again at once
        # The range must still be canonical: same hash at its end and at the cursor as before the read.
        if last_hash is None or await self._block_hash(last) != last_hash:
            return False
        if cursor.block_hash and await self._block_hash(cursor.block_number) != cursor.block_hash:
            return False
        self._commit(logs, Cursor(last, last_hash))
        self.health.last_block = last
        if last >= safe:
            self.health.caught_up = True
        return last >= safe

    async def _get_logs(self, first: int, last: int) -> list[Any] | None:
        params: FilterParams = {
            "fromBlock": BlockNumber(first),
            "toBlock": BlockNumber(last),
            "address": list(self._decoders),
            "topics": [self._topics],
        }
        try:
            logs = await read(lambda: self._w3.eth.get_logs(params))
        except Web3RPCError as exc:
            if last > first:
                self._range = max(1, (last - first + 1) // 2)
                log.warning(
                    "node refused the log range, halving it",
                    first=first,
                    last=last,
                    new_range=self._range,
                    error=describe(exc),
                )
                return None
            raise
        if self._range < self.settings.max_range:
            self._range = min(self.settings.max_range, self._range * 2)
        return sorted(
            (entry for entry in logs if not entry.get("removed")),
            key=lambda entry: (int(entry["blockNumber"]), int(entry["logIndex"])),
        )

    def _commit(self, logs: Sequence[Any], cursor: Cursor) -> None:
        """Handle the range's events and move the cursor, in one local transaction."""
        stream = self.settings.stream
        handled = 0
        blocked = self._parked_keys()
        with self._store.transaction():
            for entry in logs:
                address = AsyncWeb3.to_checksum_address(entry["address"])
                tx_hash = "0x" + bytes(entry["transactionHash"]).hex()
                log_index = int(entry["logIndex"])
                if self._store.is_event_processed(stream, tx_hash, log_index):
                    continue
                decoder, accept = self._decoders[address]
                try:
                    event = decoder.decode(entry)
                except LogDecodeError as exc:
                    self.health.undecodable_logs += 1
                    log.error(
                        "log does not decode, skipped",
                        reason=str(exc),
                        block=int(entry["blockNumber"]),
                        address=address,
                    )
                    self._record(entry, UNDECODABLE, {}, f"undecodable: {exc}")
                    continue
                if accept is not None and not accept(event):
                    continue
                key = _order_key(self._handler, event)
                if key is not None and key in blocked:
                    outcome = PARKED
                    self._park(event, "waiting behind an earlier parked event of the same job", 0)
                else:
                    try:
                        with self._store.savepoint("event"):
                            self._handler.handle(event, self._store)
                        outcome = HANDLED
                        handled += 1
                    except Exception as exc:
                        outcome = PARKED
                        self._park(event, describe(exc), 0)
                        if key is not None:
                            blocked.add(key)
                self._record(entry, event.name, dict(event.args), outcome)
            self._store.set_cursor(stream, cursor, keep_checkpoints=self.settings.keep_checkpoints)
            # Dedup records are needed only as far back as a rollback can reach.
            oldest = self._store.checkpoints(stream)[-1]
            self._store.prune_events_before(stream, oldest.block_number)
        self.health.events_handled += handled

    # -- parked events ------------------------------------------------------------------------

    def _park(self, event: ChainEvent, error: str, attempts: int) -> None:
        delay = min(PARK_RETRY_S[0] * 2**attempts, PARK_RETRY_S[1])
        self._store.park_event(
            self.settings.stream,
            {
                "tx_hash": event.tx_hash,
                "log_index": event.log_index,
                "block_number": event.block_number,
                "block_hash": event.block_hash,
                "address": event.address,
                "name": event.name,
                "args_json": json.dumps(dict(event.args)),
            },
            error,
            retry_at=time.time() + delay,
        )
        if attempts == 0:
            log.error(
                "event handler failed: event parked, to be handled again",
                event_name=event.name,
                tx_hash=event.tx_hash,
                log_index=event.log_index,
                block=event.block_number,
                error=error,
            )
        self.health.parked_events = len(self._store.parked_events(self.settings.stream))

    def _parked_keys(self) -> set[str]:
        keys: set[str] = set()
        for row in self._store.parked_events(self.settings.stream):
            key = _order_key(self._handler, _event_of(row))
            if key is not None:
                keys.add(key)
        return keys

    def _retry_parked(self) -> None:
        """Handle again the parked events that are due, in chain order; a job's later ones wait."""
        stream = self.settings.stream
        due = self._store.parked_events(stream, due_by=time.time())
        if not due:
            self.health.parked_events = len(self._store.parked_events(stream))
            return
        blocked: set[str] = set()
        with self._store.transaction():
            for row in self._store.parked_events(stream):
                event = _event_of(row)
                key = _order_key(self._handler, event)
                if (key is not None and key in blocked) or row["retry_at"] > time.time():
                    if key is not None:
                        blocked.add(key)
                    continue
                try:
                    with self._store.savepoint("parked"):
                        self._handler.handle(event, self._store)
                except Exception as exc:
                    if key is not None:
                        blocked.add(key)
                    self._park(event, describe(exc), int(row["attempts"]))
                    continue
                self._store.unpark_event(stream, event.tx_hash, event.log_index)
                self._store.set_event_outcome(stream, event.tx_hash, event.log_index, HANDLED)
                self.health.events_handled += 1
                log.info(
                    "parked event handled",
                    event_name=event.name,
                    tx_hash=event.tx_hash,
                    attempts=int(row["attempts"]) + 1,
                )
        self.health.parked_events = len(self._store.parked_events(stream))

    def _record(self, entry: Any, name: str, args: dict[str, Any], outcome: str) -> None:
        self._store.record_event(
            self.settings.stream,
            tx_hash="0x" + bytes(entry["transactionHash"]).hex(),
            log_index=int(entry["logIndex"]),
            block_number=int(entry["blockNumber"]),
            block_hash="0x" + bytes(entry["blockHash"]).hex(),
            address=AsyncWeb3.to_checksum_address(entry["address"]),
            name=name,
            args_json=json.dumps(args),
            outcome=outcome,
        )

    # -- reorganisations ----------------------------------------------------------------------

    async def _rollback(self, cursor: Cursor, head: int) -> None:
        stream = self.settings.stream
        ancestor: Cursor | None = None
        for checkpoint in self._store.checkpoints(stream):
            if checkpoint.block_number > head:
                continue
            if await self._block_hash(checkpoint.block_number) == checkpoint.block_hash:
                ancestor = checkpoint
                break
        if ancestor is None:
            ancestor = self._initial_cursor()
            log.error(
                "reorganisation deeper than the kept checkpoints, reading again from the start block",
                start_block=self.settings.start_block,
            )
        undone = 0
        with self._store.transaction():
            for row in self._store.events_after(stream, ancestor.block_number):
                if row["outcome"] != HANDLED:
                    continue
                self._handler.undo(_event_of(row), self._store)
                undone += 1
            self._store.forget_events_after(stream, ancestor.block_number)
            self._store.forget_parked_after(stream, ancestor.block_number)
            self._store.drop_checkpoints_after(stream, ancestor.block_number)
            self._store.set_cursor(stream, ancestor, keep_checkpoints=self.settings.keep_checkpoints)
        self.health.reorgs += 1
        log.warning(
            "chain reorganisation, events rolled back",
            cursor_was=cursor.block_number,
            common_ancestor=ancestor.block_number,
            undone=undone,
        )

    # -- WebSocket hint -----------------------------------------------------------------------

    async def _hint_loop(self) -> None:
        keep_alive = KeepAlive(
            Backoff(self.settings.ws_backoff_initial_s, self.settings.ws_backoff_max_s, jitter=0.5),
            on_failure=self._hint_down,
            stopped=lambda: self._stopping,
        )
        await keep_alive.forever(lambda: self._hint_session(keep_alive))

    async def _hint_session(self, keep_alive: KeepAlive) -> None:
        """One `newHeads` subscription, waking the reader at each head; raises when it ends."""
        assert self._ws_url is not None
        try:
            provider = WebSocketProvider(
                self._ws_url,
                websocket_kwargs={
                    "ping_interval": self.settings.ws_ping_interval_s,
                    "ping_timeout": self.settings.ws_ping_interval_s,
                    "open_timeout": 10,
                },
                max_connection_retries=1,
            )
            async with AsyncWeb3(provider) as w3:
                await w3.eth.subscribe("newHeads")
                self.health.ws_connected = True
                keep_alive.reset()  # connected: the next drop waits the first delay again
                log.info("websocket hint connected", url=self._ws_url)
                self._wake.set()  # heads may have passed while it was down
                async for _message in w3.socket.process_subscriptions():
                    self._wake.set()
            raise _HintClosed("connection closed")
        except Exception:
            if self.health.ws_connected:
                self.health.ws_connected = False
                if not self._stopping:
                    self.health.ws_reconnects += 1
            raise

    def _hint_down(self, failure: Failure) -> None:
        reason = str(failure.error) if isinstance(failure.error, _HintClosed) else describe(failure.error)
        log.warning(
            "websocket hint down, polling meanwhile", reason=reason, retry_in_s=round(failure.retry_in_s, 2)
        )


class _HintClosed(ConnectionError):
    """The subscription ended without an error."""
