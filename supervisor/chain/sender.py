"""The transaction sender: the only owner of the provider's nonce.

Callers queue chain writes in the SQLite outbox (`submit`) and may wait for their outcome (`wait`).
One task (the dispatcher) pre-flights queued actions with `eth_estimateGas` (which also surfaces
reverts), assigns nonces in order, signs, saves the signed bytes and hash in the outbox, and only
then broadcasts. Several transactions are in flight at once. A second task (the watcher) follows
them to their receipts, re-broadcasts the same bytes when a transaction left the pool, and replaces
the oldest pending one with higher fees when it misses its receipt deadline.

After a crash, `start()` re-broadcasts every signed but unmined transaction with its saved bytes,
so nothing is re-signed with a new nonce and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from eth_typing import ChecksumAddress, HexStr
from hexbytes import HexBytes
from web3 import AsyncWeb3, Web3
from web3.exceptions import BadResponseFormat, ContractLogicError, TransactionNotFound, Web3RPCError

from supervisor.chain.errors import DecodedRevert, ErrorDecoder, revert_data_of
from supervisor.chain.keys import Signer
from supervisor.chain.rpc import (
    batch_request,
    check_chain_id,
    describe,
    is_transient,
    read,
    rpc_error_data,
    rpc_error_message,
)
from supervisor.redaction import redact_text
from supervisor.retry import Backoff, Failure, KeepAlive
from supervisor.store import OutboxAction, OutboxState, Store, TxAttempt

log = structlog.get_logger(__name__)

GWEI = 10**9


@dataclass(frozen=True)
class SenderSettings:
    """Tuning of the sender; the defaults suit a chain with blocks every few seconds."""

    chain_id: int | None = None  # refuse to run against another chain when set
    gas_margin: float = 1.25  # gas limit = estimate x margin
    receipt_deadline_s: float = 30.0  # after this without a receipt: resend if dropped, else replace
    fee_bump: float = 1.25  # replacement fee factor (nodes require at least +10 %)
    max_fee_per_gas_cap: int | None = None  # never bid above this (wei)
    default_priority_fee: int = 1 * GWEI
    poll_interval_s: float = 1.0  # watcher period
    batch_size: int = 64  # actions pre-flighted together
    backoff_max_s: float = 30.0


@dataclass(frozen=True)
class TxOutcome:
    """What became of an outbox action."""

    action_id: int
    state: OutboxState
    tx_hash: str | None
    block_number: int | None
    success: bool  # mined with status 1
    error: str | None  # decoded revert, e.g. "InvalidTransition(from=2, to=5)"
    already_done: bool  # the revert says the goal already holds

    @property
    def delivered(self) -> bool:
        """The chain is in the state the action asked for."""
        return self.success or self.already_done


@dataclass(frozen=True)
class FeeBid:
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    gas_price: int | None = None

    @property
    def is_eip1559(self) -> bool:
        return self.max_fee_per_gas is not None


class PreflightRevert(Exception):
    """eth_estimateGas says the call reverts."""

    def __init__(self, revert: DecodedRevert) -> None:
        super().__init__(str(revert))
        self.revert = revert


def bump_fees(previous: FeeBid, current: FeeBid, factor: float, cap: int | None) -> FeeBid:
    """A replacement bid: at least `factor` times the previous one and no lower than the market now."""

    def up(value: int) -> int:
        return max(math.ceil(value * factor), value + 1)

    def capped(value: int) -> int:
        return value if cap is None else min(value, cap)

    if previous.is_eip1559:
        assert previous.max_fee_per_gas is not None and previous.max_priority_fee_per_gas is not None
        priority = max(up(previous.max_priority_fee_per_gas), current.max_priority_fee_per_gas or 0)
        max_fee = max(up(previous.max_fee_per_gas), current.max_fee_per_gas or 0, priority)
        return FeeBid(max_fee_per_gas=capped(max_fee), max_priority_fee_per_gas=capped(priority))
    assert previous.gas_price is not None
    return FeeBid(gas_price=capped(max(up(previous.gas_price), current.gas_price or 0)))


# Node answers meaning "bid more" (geth, anvil, erigon, nethermind wordings).
#: Refusals that pass once the account is funded: the transaction waits rather than being given up.
WAIT_REFUSALS = ("insufficient funds", "insufficient balance")
FILLER_GAS = 21_000
FEE_REFUSALS = (
    "underpriced",
    "less than block base fee",
    "fee too low",
    "feetoolow",
    "fee cap less than",
    "max fee per gas less than",
)


class TransactionSender:
    """Queue, sign, broadcast and follow the provider's transactions. See the module docstring."""

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        signer: Signer,
        store: Store,
        settings: SenderSettings | None = None,
        decoder: ErrorDecoder | None = None,
    ) -> None:
        self._w3 = w3
        self._signer = signer
        self._store = store
        self.settings = settings or SenderSettings()
        self._decoder = decoder or ErrorDecoder.for_protocol()
        self._chain_id: int | None = None
        self._next_nonce: int | None = None
        self._resync_nonce = False
        self._wake_dispatcher = asyncio.Event()
        self._wake_watcher = asyncio.Event()
        self._waiters: dict[int, list[asyncio.Future[TxOutcome]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._broadcasting: set[str] = set()  # hashes the dispatcher is about to broadcast
        self._receipt_missing_since: dict[int, float] = {}  # nonce used on chain, no receipt of ours
        self._stopping = False
        self.last_error: str | None = None
        #: Transactions given up because the node refused them for good (each nonce refilled).
        self.abandoned = 0

    @property
    def address(self) -> ChecksumAddress:
        return self._signer.address

    # -- public interface ---------------------------------------------------------------------

    async def start(self) -> None:
        """Check the chain, resync the nonce, re-broadcast what was signed but not mined, start the tasks."""
        self._chain_id = await check_chain_id(self._w3, self.settings.chain_id)
        self._store.bind_chain_id(self._chain_id)
        await self._resync(initial=True)
        for action in self._store.actions(OutboxState.SENT):
            attempts = self._store.attempts(action.id)
            if attempts:
                log.info(
                    "resending signed transaction after restart",
                    action=action.id,
                    nonce=action.nonce,
                    tx_hash=attempts[-1].tx_hash,
                )
                await self._broadcast(action, attempts[-1])
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="tx-dispatcher"),
            asyncio.create_task(self._watch_loop(), name="tx-watcher"),
        ]

    async def stop(self, *, drain_timeout_s: float | None = None) -> None:
        """Stop the tasks; with a drain timeout, first wait (bounded) for the outbox to empty."""
        if drain_timeout_s is not None:
            deadline = time.monotonic() + drain_timeout_s
            while self._store.outbox_depth() > 0 and time.monotonic() < deadline:
                self._wake_watcher.set()
                await asyncio.sleep(min(0.1, self.settings.poll_interval_s))
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def submit(
        self,
        to: str,
        data: bytes = b"",
        *,
        value: int = 0,
        kind: str = "call",
        dedup_key: str | None = None,
        serial_key: str | None = None,
        claims: int = 1,
    ) -> int:
        """Queue a write in the outbox (durable on return) and return its id.

        `dedup_key`: queuing the same key again returns the first action instead of a second one.
        `serial_key`: actions sharing it (e.g. one job's reports) are sent one after the other,
        each pre-flighted only once the previous one is mined.
        """
        action_id = self._store.enqueue(
            kind=kind,
            to_address=Web3.to_checksum_address(to),
            data=bytes(data),
            value=value,
            dedup_key=dedup_key,
            serial_key=serial_key,
            claims=claims,
        )
        self._wake_dispatcher.set()
        return action_id

    def wake(self) -> None:
        """Look at the outbox now (an action was queued again behind the sender's back)."""
        self._wake_dispatcher.set()

    def submit_call(self, call: Any) -> int:
        """Queue a contract write built by `ProtocolContracts` (a `TxCall`)."""
        return self.submit(
            call.to,
            call.data,
            kind=call.kind,
            dedup_key=call.dedup_key,
            serial_key=call.serial_key,
            claims=call.claims,
        )

    async def wait(self, action_id: int, timeout_s: float | None = None) -> TxOutcome:
        """The outcome of an action once it is mined or failed."""
        outcome = self.outcome(action_id)
        if outcome.state in (OutboxState.MINED, OutboxState.FAILED):
            return outcome
        future: asyncio.Future[TxOutcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(action_id, []).append(future)
        return await asyncio.wait_for(future, timeout_s)

    async def send(self, to: str, data: bytes = b"", **kwargs: Any) -> TxOutcome:
        """Submit and wait."""
        return await self.wait(self.submit(to, data, **kwargs))

    def outcome(self, action_id: int) -> TxOutcome:
        action = self._store.get_action(action_id)
        if action is None:
            raise KeyError(f"no outbox action {action_id}")
        return TxOutcome(
            action_id=action.id,
            state=action.state,
            tx_hash=action.tx_hash,
            block_number=action.block_number,
            success=action.state == OutboxState.MINED and action.receipt_status == 1,
            error=action.error,
            already_done=action.already_done,
        )

    # -- nonce --------------------------------------------------------------------------------

    async def _resync(self, *, initial: bool = False) -> None:
        """Local nonce = the next after both the chain's pending count and our signed transactions."""
        pending = int(await read(lambda: self._w3.eth.get_transaction_count(self._signer.address, "pending")))
        max_sent = self._store.max_sent_nonce()
        ours = 0 if max_sent is None else max_sent + 1
        candidate = max(pending, ours)
        if not initial and self._next_nonce is not None:
            candidate = max(candidate, pending)
        if self._next_nonce != candidate:
            log.info("nonce resynced", address=self._signer.address, nonce=candidate, chain_pending=pending)
        self._next_nonce = candidate
        self._resync_nonce = False

    # -- dispatcher -----------------------------------------------------------------------------

    def _keep_alive(self, paused: str) -> KeepAlive:
        """The backoff of a sender task: `paused` is logged at each failure, which `last_error` keeps."""

        def failed(failure: Failure) -> None:
            self.last_error = describe(failure.error)
            log.error(paused, error=describe(failure.error), retry_in_s=round(failure.retry_in_s, 2))

        return KeepAlive(
            Backoff(0.2, self.settings.backoff_max_s), on_failure=failed, stopped=lambda: self._stopping
        )

    async def _dispatch_loop(self) -> None:
        await self._keep_alive("sending transactions paused").forever(self._dispatch_round)

    async def _dispatch_round(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake_dispatcher.wait(), self.settings.poll_interval_s)
        self._wake_dispatcher.clear()
        while await self._dispatch_batch():
            pass

    def _eligible(self, queued: Sequence[OutboxAction]) -> list[OutboxAction]:
        busy = {a.serial_key for a in self._store.actions(OutboxState.SENT) if a.serial_key is not None}
        chosen: list[OutboxAction] = []
        for action in queued:
            if action.serial_key is not None:
                if action.serial_key in busy:
                    continue
                busy.add(action.serial_key)
            chosen.append(action)
        return chosen

    async def _dispatch_batch(self) -> bool:
        """Pre-flight, sign, save and broadcast one batch; True when more may be waiting."""
        queued = self._store.actions(OutboxState.QUEUED, limit=self.settings.batch_size * 4)
        batch = self._eligible(queued)[: self.settings.batch_size]
        if not batch:
            return False
        if self._resync_nonce or self._next_nonce is None:
            await self._resync()
        # Side by side: the fee bid does not depend on the estimates, and each is a round trip.
        fees, estimates = await asyncio.gather(self._current_fees(), self._estimate_all(batch))
        signed: list[tuple[OutboxAction, TxAttempt]] = []
        failed = 0
        for action, estimate in zip(batch, estimates, strict=True):
            if isinstance(estimate, PreflightRevert):
                self._store.mark_failed(
                    action.id, str(estimate.revert), already_done=estimate.revert.already_done
                )
                log.warning(
                    "transaction not sent: it would revert",
                    action=action.id,
                    kind=action.kind,
                    error=str(estimate.revert),
                    already_done=estimate.revert.already_done,
                )
                self._resolve(action.id)
                failed += 1
                continue
            if isinstance(estimate, BaseException):
                if isinstance(estimate, asyncio.CancelledError):
                    raise estimate
                # Stays queued; a later batch retries it.
                log.warning("gas estimate failed, will retry", action=action.id, error=describe(estimate))
                self.last_error = describe(estimate)
                continue
            assert self._next_nonce is not None
            nonce = self._next_nonce
            gas_limit = math.ceil(estimate * self.settings.gas_margin)
            signed.append((action, self._sign(action, nonce, gas_limit, fees)))
            self._next_nonce = nonce + 1
        # Durable before any broadcast: one local transaction for the whole batch.
        with self._store.transaction():
            for action, attempt in signed:
                self._store.record_attempt(action.id, attempt)
        self._broadcasting.update(attempt.tx_hash for _, attempt in signed)
        broadcast: list[str] = []
        refused: list[tuple[OutboxAction, TxAttempt, str]] = []
        try:
            results = await self._broadcast_all(signed)
            for (action, attempt), result in zip(signed, results, strict=True):
                if result != "unreachable":
                    broadcast.append(attempt.tx_hash)
                if result == "refused":
                    refused.append((action, attempt, self.last_error or "refused by the node"))
        finally:
            with self._store.transaction():
                for tx_hash in broadcast:
                    self._store.mark_broadcast(tx_hash)
            self._broadcasting.difference_update(attempt.tx_hash for _, attempt in signed)
        for action, attempt, reason in refused:
            await self._abandon(action, attempt, reason)
        if signed:
            self._wake_watcher.set()
        return bool(signed) or failed > 0

    async def _estimate_all(self, batch: Sequence[OutboxAction]) -> list[int | BaseException]:
        """The gas of each action, pre-flighted in JSON-RPC batches: a number, a PreflightRevert (the
        chain refuses it now), or another failure (it stays queued for a later batch)."""
        requests = [("eth_estimateGas", [self._call_params(action)]) for action in batch]
        try:
            answers = await batch_request(self._w3, requests)
        except Exception as exc:
            if not is_transient(exc):
                raise
            return [exc for _ in batch]
        estimates: list[int | BaseException] = []
        for answer in answers:
            if "error" not in answer:
                estimates.append(int(str(answer.get("result")), 16))
                continue
            message, data = rpc_error_message(answer), rpc_error_data(answer)
            if data is not None or "revert" in message.lower():
                estimates.append(PreflightRevert(self._decoder.decode(data)))
            else:
                estimates.append(RuntimeError(f"gas estimate refused: {message[:200]}"))
        return estimates

    def _call_params(self, action: OutboxAction) -> dict[str, str]:
        return {
            "from": self._signer.address,
            "to": action.to_address,
            "value": hex(action.value),
            "data": "0x" + bytes(action.data).hex(),
        }

    async def _current_fees(self) -> FeeBid:
        """The bid for a batch: the latest block and the node's priority fee are asked side by side
        (a node without EIP-1559 refuses the second; its answer is then not used)."""
        block, tip = await asyncio.gather(
            read(lambda: self._w3.eth.get_block("latest")),
            read(lambda: self._w3.eth.max_priority_fee),
            return_exceptions=True,
        )
        if isinstance(block, BaseException):
            raise block
        base_fee = block.get("baseFeePerGas")
        cap = self.settings.max_fee_per_gas_cap
        if base_fee is not None:
            if isinstance(tip, Web3RPCError):
                priority = self.settings.default_priority_fee
            elif isinstance(tip, BaseException):
                raise tip
            else:
                priority = int(tip)
            max_fee = 2 * int(base_fee) + priority
            if cap is not None:
                max_fee, priority = min(max_fee, cap), min(priority, cap)
            return FeeBid(max_fee_per_gas=max_fee, max_priority_fee_per_gas=priority)
        gas_price = int(await read(lambda: self._w3.eth.gas_price))
        return FeeBid(gas_price=gas_price if cap is None else min(gas_price, cap))

    def _sign(self, action: OutboxAction, nonce: int, gas_limit: int, fees: FeeBid) -> TxAttempt:
        tx: dict[str, Any] = {
            "chainId": self._chain_id,
            "nonce": nonce,
            "to": action.to_address,
            "value": action.value,
            "data": action.data,
            "gas": gas_limit,
        }
        if fees.is_eip1559:
            tx.update(
                type=2,
                maxFeePerGas=fees.max_fee_per_gas,
                maxPriorityFeePerGas=fees.max_priority_fee_per_gas,
            )
        else:
            tx["gasPrice"] = fees.gas_price
        signed = self._signer.sign_transaction(tx)
        return TxAttempt(
            tx_hash="0x" + bytes(signed.hash).hex(),
            outbox_id=action.id,
            nonce=nonce,
            raw=bytes(signed.raw_transaction),
            gas_limit=gas_limit,
            max_fee_per_gas=fees.max_fee_per_gas,
            max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
            gas_price=fees.gas_price,
            created_at=time.time(),
            broadcast_at=None,
        )

    async def _broadcast(self, action: OutboxAction, attempt: TxAttempt, *, mark: bool = True) -> str:
        """Send saved bytes: "ok", "fee_too_low", "refused" or "unreachable"; receipts decide the rest.

        Unless the node was unreachable, the attempt's broadcast time is set (`mark`), so that the
        receipt deadline paces the next try.
        """
        result = await self._try_broadcast(action, attempt)
        if mark and result != "unreachable":
            self._store.mark_broadcast(attempt.tx_hash)
        return result

    async def _broadcast_all(self, signed: Sequence[tuple[OutboxAction, TxAttempt]]) -> list[str]:
        """Send a batch's saved bytes in nonce order in JSON-RPC batches, each answer read as
        `_try_broadcast` reads one: "ok", "fee_too_low", "refused" or "unreachable"."""
        if not signed:
            return []
        requests = [("eth_sendRawTransaction", ["0x" + attempt.raw.hex()]) for _, attempt in signed]
        try:
            answers = await batch_request(self._w3, requests)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("broadcast failed, will resend", transactions=len(signed), error=describe(exc))
            self.last_error = describe(exc)
            return ["unreachable" for _ in signed]
        return [
            "ok" if "error" not in answer else self._refusal(action, attempt, rpc_error_message(answer))
            for (action, attempt), answer in zip(signed, answers, strict=True)
        ]

    def _refusal(self, action: OutboxAction, attempt: TxAttempt, text: str) -> str:
        """What a node's error answer to a broadcast means for the attempt."""
        message = text.lower()
        error = redact_text(text.strip())[:300]
        if any(m in message for m in ("already known", "known transaction", "already imported")):
            return "ok"
        if "nonce too low" in message or "nonce is too low" in message:
            # Mined already (ours) or taken by another transaction: the watcher tells which.
            log.info("node says nonce too low, checking receipts", action=action.id, nonce=attempt.nonce)
            self._wake_watcher.set()
            return "ok"
        if any(m in message for m in FEE_REFUSALS):
            log.warning("node refuses the fee", action=action.id, nonce=attempt.nonce, error=error)
            return "fee_too_low"
        self.last_error = error
        if any(m in message for m in WAIT_REFUSALS):
            log.warning("broadcast refused for now", action=action.id, nonce=attempt.nonce, error=error)
            return "unreachable"
        log.error("broadcast refused", action=action.id, nonce=attempt.nonce, error=error)
        return "refused"

    async def _try_broadcast(self, action: OutboxAction, attempt: TxAttempt) -> str:
        try:
            await self._w3.eth.send_raw_transaction(HexBytes(attempt.raw))
        except Web3RPCError as exc:
            return self._refusal(action, attempt, describe(exc))
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning(
                "broadcast failed, will resend", action=action.id, nonce=attempt.nonce, error=describe(exc)
            )
            self.last_error = describe(exc)
            return "unreachable"
        return "ok"

    # -- watcher --------------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        await self._keep_alive("following transactions paused").forever(self._watch_round)

    async def _watch_round(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake_watcher.wait(), self.settings.poll_interval_s)
        self._wake_watcher.clear()
        await self._watch_once()

    async def _watch_once(self) -> None:
        sent = self._store.actions(OutboxState.SENT)
        if not sent:
            return
        mined_count = int(
            await read(lambda: self._w3.eth.get_transaction_count(self._signer.address, "latest"))
        )
        settled = [a for a in sent if a.nonce is not None and a.nonce < mined_count]
        pending = [a for a in sent if a.nonce is not None and a.nonce >= mined_count]
        if settled:
            await self._settle(settled)
        now = time.time()
        for action in pending:
            attempts = self._store.attempts(action.id)
            if not attempts:
                continue
            last = attempts[-1]
            if last.broadcast_at is None:
                if last.tx_hash not in self._broadcasting:
                    await self._broadcast(action, last)
                continue
            if now - last.broadcast_at < self.settings.receipt_deadline_s:
                continue
            await self._unstick(action, last, is_head=action.nonce == mined_count)

    async def _find_mined(
        self, actions: Sequence[OutboxAction]
    ) -> list[tuple[TxAttempt, int, int, DecodedRevert | None] | None]:
        """The mined attempt of each action whose nonce is used, (attempt, block, status, revert), or
        None: the receipts of all their attempts asked for in JSON-RPC batches."""
        attempts = {action.id: list(reversed(self._store.attempts(action.id))) for action in actions}
        asked = [attempt for action in actions for attempt in attempts[action.id]]
        answers = await batch_request(
            self._w3, [("eth_getTransactionReceipt", [attempt.tx_hash]) for attempt in asked]
        )
        receipts: dict[str, dict[str, Any]] = {}
        for attempt, answer in zip(asked, answers, strict=True):
            if "error" in answer:
                raise BadResponseFormat(f"receipt of {attempt.tx_hash}: {rpc_error_message(answer)[:200]}")
            if isinstance(answer.get("result"), dict):
                receipts[attempt.tx_hash] = answer["result"]
        found: list[tuple[TxAttempt, int, int, DecodedRevert | None] | None] = []
        for action in actions:
            mined = None
            for attempt in attempts[action.id]:
                receipt = receipts.get(attempt.tx_hash)
                if receipt is None:
                    continue
                status, block_number = int(str(receipt["status"]), 16), int(str(receipt["blockNumber"]), 16)
                revert = None if status == 1 else await self._replay_revert(action, block_number)
                mined = (attempt, block_number, status, revert)
                break
            found.append(mined)
        return found

    async def _settle(self, actions: Sequence[OutboxAction]) -> None:
        """Record the receipts of actions whose nonces are used on chain, in one local transaction."""
        found = await self._find_mined(actions)
        with self._store.transaction():
            for action, mined in zip(actions, found, strict=True):
                if mined is None:
                    # None of ours was mined with this nonce: another transaction of the account took it,
                    # unless the node has not indexed the receipt yet; so wait a deadline before deciding.
                    first_missed = self._receipt_missing_since.setdefault(action.id, time.monotonic())
                    if time.monotonic() - first_missed < self.settings.receipt_deadline_s:
                        continue
                    del self._receipt_missing_since[action.id]
                    log.warning(
                        "nonce taken by another transaction, sending again with a new nonce",
                        action=action.id,
                        nonce=action.nonce,
                    )
                    self._store.requeue(action.id, f"nonce {action.nonce} was used by another transaction")
                    self._resync_nonce = True
                    continue
                self._receipt_missing_since.pop(action.id, None)
                attempt, block_number, status, revert = mined
                self._store.mark_mined(
                    action.id, tx_hash=attempt.tx_hash, block_number=block_number, receipt_status=status
                )
                if revert is not None:
                    self._store.set_error(action.id, str(revert), already_done=revert.already_done)
                    log.warning(
                        "transaction mined but reverted",
                        action=action.id,
                        tx_hash=attempt.tx_hash,
                        error=str(revert),
                        already_done=revert.already_done,
                    )
                else:
                    log.info(
                        "transaction mined",
                        action=action.id,
                        nonce=attempt.nonce,
                        tx_hash=attempt.tx_hash,
                        block=block_number,
                    )
        for action, mined in zip(actions, found, strict=True):
            if mined is not None:
                self._resolve(action.id)
        if self._resync_nonce:
            self._wake_dispatcher.set()

    async def _replay_revert(self, action: OutboxAction, block_number: int) -> DecodedRevert:
        params: dict[str, Any] = {
            "from": self._signer.address,
            "to": action.to_address,
            "value": action.value,
            "data": HexBytes(action.data),
            "gas": action.gas_limit,
        }
        try:
            await self._w3.eth.call(params, max(block_number - 1, 0))  # type: ignore[arg-type]
        except ContractLogicError as exc:
            return self._decoder.decode(revert_data_of(exc))
        except Exception as exc:
            return DecodedRevert("UnknownRevert", {"reason": describe(exc)})
        return DecodedRevert("UnknownRevert", {"reason": "the call succeeds when replayed"})

    async def _unstick(self, action: OutboxAction, last: TxAttempt, *, is_head: bool) -> None:
        """Past the receipt deadline: resend if the node forgot it, replace if it is the blocking one."""
        try:
            in_pool = await read(lambda: self._w3.eth.get_transaction(HexStr(last.tx_hash)))
        except TransactionNotFound:
            in_pool = None
        if in_pool is None:
            log.warning(
                "transaction dropped from the pool, resending",
                action=action.id,
                nonce=last.nonce,
                tx_hash=last.tx_hash,
            )
            result = await self._broadcast(action, last)
            if result == "refused":
                await self._abandon(action, last, self.last_error or "refused by the node")
            if result != "fee_too_low":
                return
        elif not is_head:
            return  # it waits behind the oldest pending nonce, which is the one to replace
        await self._replace(action, last)

    async def _replace(self, action: OutboxAction, last: TxAttempt) -> None:
        current = await self._current_fees()
        previous = FeeBid(last.max_fee_per_gas, last.max_priority_fee_per_gas, last.gas_price)
        bid = bump_fees(previous, current, self.settings.fee_bump, self.settings.max_fee_per_gas_cap)
        if bid == previous:
            log.error("transaction stuck at the fee cap", action=action.id, nonce=last.nonce)
            self._store.mark_broadcast(last.tx_hash)
            return
        replacement = self._sign(action, last.nonce, last.gas_limit, bid)
        self._store.record_attempt(action.id, replacement)  # durable before broadcast
        log.warning(
            "transaction stuck, replacing with a higher fee",
            action=action.id,
            nonce=last.nonce,
            old_tx_hash=last.tx_hash,
            new_tx_hash=replacement.tx_hash,
            max_fee_per_gas=bid.max_fee_per_gas,
            gas_price=bid.gas_price,
        )
        await self._broadcast(action, replacement)

    async def _abandon(self, action: OutboxAction, attempt: TxAttempt, reason: str) -> None:
        """The node refuses the transaction for good (gas above the block limit, say): give it up and
        fill its nonce with a transfer of nothing to ourselves, so the transactions behind it go on.

        The filler is an outbox action of its own, saved before it is broadcast like any other.
        """
        fees = await self._current_fees()
        filler_id = self._store.enqueue(kind="nonce_filler", to_address=self._signer.address, data=b"")
        filler = self._store.get_action(filler_id)
        assert filler is not None
        signed = self._sign(filler, attempt.nonce, FILLER_GAS, fees)
        with self._store.transaction():
            self._store.record_attempt(filler_id, signed)
            self._store.mark_failed(action.id, f"the node refuses the transaction: {reason}")
        self.abandoned += 1
        log.error(
            "transaction given up: the node refuses it; its nonce is filled by a transfer to self",
            action=action.id,
            kind=action.kind,
            nonce=attempt.nonce,
            filler_tx_hash=signed.tx_hash,
            error=reason,
        )
        self._resolve(action.id)
        await self._broadcast(filler, signed)
        self._wake_watcher.set()

    def _resolve(self, action_id: int) -> None:
        futures = self._waiters.pop(action_id, [])
        if not futures:
            return
        outcome = self.outcome(action_id)
        for future in futures:
            if not future.done():
                future.set_result(outcome)
