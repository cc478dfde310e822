"""The outbox: chain writes to deliver, and each signed transaction sent for them.

An effect on chain is queued here (`enqueue`, deduplicated by key) in the same transaction as the
change that calls for it, then delivered by the sender: each signed transaction is saved as a
`tx_attempt` before it is broadcast (`record_attempt`), so after a crash the sender knows every
transaction it may have put on the wire; replacements of a stuck transaction share its nonce. An
action ends `mined` (with its receipt, and a decoded revert if any) or `failed` (not sent); a
failure the chain gave for a passing reason can be queued again (`retry_failed`).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from supervisor.store.base import StoreBase


class OutboxState(StrEnum):
    """Where an action is: to sign, signed and awaiting its receipt, mined, or given up unsent."""

    QUEUED = "queued"
    SENT = "sent"
    MINED = "mined"
    FAILED = "failed"


@dataclass(frozen=True)
class OutboxAction:
    """A chain write to deliver; `nonce` and `tx_hash` are set once it has been signed."""

    id: int
    kind: str
    dedup_key: str | None
    serial_key: str | None
    to_address: str
    data: bytes
    value: int
    state: OutboxState
    nonce: int | None
    gas_limit: int | None
    tx_hash: str | None
    block_number: int | None
    receipt_status: int | None
    error: str | None
    already_done: bool
    created_at: float
    updated_at: float
    retries: int = 0


@dataclass(frozen=True)
class TxAttempt:
    """One signed transaction for an outbox action; replacements share the nonce."""

    tx_hash: str
    outbox_id: int
    nonce: int
    raw: bytes
    gas_limit: int
    max_fee_per_gas: int | None
    max_priority_fee_per_gas: int | None
    gas_price: int | None
    created_at: float
    broadcast_at: float | None


def _int_or_none(text: str | None) -> int | None:
    return None if text is None else int(text)


def _str_or_none(number: int | None) -> str | None:
    return None if number is None else str(number)


class OutboxStore(StoreBase):
    def enqueue(
        self,
        *,
        kind: str,
        to_address: str,
        data: bytes,
        value: int = 0,
        dedup_key: str | None = None,
        serial_key: str | None = None,
        claims: int = 1,
    ) -> int:
        """Queue a chain write; with a dedup key already queued, return the existing action's id.
        `claims`: the jobs a claim write takes at most."""
        with self.transaction() as conn:
            if dedup_key is not None:
                row = conn.execute("SELECT id FROM outbox WHERE dedup_key = ?", (dedup_key,)).fetchone()
                if row is not None:
                    return int(row["id"])
            now = time.time()
            cur = conn.execute(
                "INSERT INTO outbox (kind, dedup_key, serial_key, to_address, data, value, state, "
                "created_at, updated_at, claims) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                (kind, dedup_key, serial_key, to_address, data, str(value), now, now, claims),
            )
            assert cur.lastrowid is not None
            return int(cur.lastrowid)

    def action_by_dedup_key(self, dedup_key: str) -> OutboxAction | None:
        row = self._conn.execute("SELECT * FROM outbox WHERE dedup_key = ?", (dedup_key,)).fetchone()
        return None if row is None else _action_from_row(row)

    def latest_action(self, kind: str, dedup_prefix: str) -> OutboxAction | None:
        """The newest action of a kind whose dedup key starts with `dedup_prefix`."""
        row = self._conn.execute(
            "SELECT * FROM outbox WHERE kind = ? AND substr(dedup_key, 1, ?) = ? ORDER BY id DESC LIMIT 1",
            (kind, len(dedup_prefix), dedup_prefix),
        ).fetchone()
        return None if row is None else _action_from_row(row)

    def retry_failed(self, action_id: int, reason: str) -> None:
        """Queue a failed action again (the chain refused it for a passing reason), counting retries."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'queued', nonce = NULL, tx_hash = NULL, gas_limit = NULL, "
                "already_done = 0, retries = retries + 1, error = ?, updated_at = ? "
                "WHERE id = ? AND state = 'failed'",
                (reason, time.time(), action_id),
            )

    def get_action(self, action_id: int) -> OutboxAction | None:
        row = self._conn.execute("SELECT * FROM outbox WHERE id = ?", (action_id,)).fetchone()
        return None if row is None else _action_from_row(row)

    def actions(self, state: OutboxState, limit: int | None = None) -> list[OutboxAction]:
        """Actions in one state, oldest first."""
        sql = "SELECT * FROM outbox WHERE state = ? ORDER BY id"
        params: list[Any] = [state.value]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_action_from_row(r) for r in self._conn.execute(sql, params).fetchall()]

    def outbox_depth(self) -> int:
        row = self._conn.execute("SELECT COUNT(*) FROM outbox WHERE state IN ('queued', 'sent')").fetchone()
        return int(row[0])

    def open_actions(self, kind: str, serial_key: str | None = None) -> int:
        """Actions of a kind still queued or sent (optionally for one serial key, e.g. a job)."""
        sql = "SELECT COUNT(*) FROM outbox WHERE kind = ? AND state IN ('queued', 'sent')"
        params: list[Any] = [kind]
        if serial_key is not None:
            sql += " AND serial_key = ?"
            params.append(serial_key)
        return int(self._conn.execute(sql, params).fetchone()[0])

    def open_claims(self, kind: str) -> int:
        """Jobs the claim writes of a kind still queued or sent may take (a batch counts its size)."""
        row = self._conn.execute(
            "SELECT COALESCE(SUM(claims), 0) FROM outbox WHERE kind = ? AND state IN ('queued', 'sent')",
            (kind,),
        ).fetchone()
        return int(row[0])

    def claims_mined_after(self, kind: str, block_number: int) -> int:
        """Jobs the claim writes of a kind mined successfully in blocks after `block_number` may have
        taken: done on chain, but their events not yet read by a follower whose cursor is there."""
        row = self._conn.execute(
            "SELECT COALESCE(SUM(claims), 0) FROM outbox WHERE kind = ? AND state = 'mined' "
            "AND receipt_status = 1 AND block_number > ?",
            (kind, block_number),
        ).fetchone()
        return int(row[0])

    def oldest_open_action_age(self, now: float) -> float | None:
        """Seconds since the oldest action still queued or sent was queued (None when there is none)."""
        row = self._conn.execute(
            "SELECT MIN(created_at) FROM outbox WHERE state IN ('queued', 'sent')"
        ).fetchone()
        return None if row[0] is None else max(0.0, now - float(row[0]))

    def max_sent_nonce(self) -> int | None:
        row = self._conn.execute("SELECT MAX(nonce) FROM outbox WHERE state = 'sent'").fetchone()
        return None if row[0] is None else int(row[0])

    def record_attempt(self, action_id: int, attempt: TxAttempt) -> None:
        """Save a signed transaction before it is broadcast; the action becomes 'sent' with its nonce."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO tx_attempt (tx_hash, outbox_id, nonce, raw, gas_limit, max_fee_per_gas, "
                "max_priority_fee_per_gas, gas_price, created_at, broadcast_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    attempt.tx_hash,
                    action_id,
                    attempt.nonce,
                    attempt.raw,
                    attempt.gas_limit,
                    _str_or_none(attempt.max_fee_per_gas),
                    _str_or_none(attempt.max_priority_fee_per_gas),
                    _str_or_none(attempt.gas_price),
                    attempt.created_at,
                    attempt.broadcast_at,
                ),
            )
            conn.execute(
                "UPDATE outbox SET state = 'sent', nonce = ?, gas_limit = ?, tx_hash = ?, updated_at = ? "
                "WHERE id = ?",
                (attempt.nonce, attempt.gas_limit, attempt.tx_hash, time.time(), action_id),
            )

    def mark_broadcast(self, tx_hash: str) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE tx_attempt SET broadcast_at = ? WHERE tx_hash = ?", (time.time(), tx_hash))

    def attempts(self, action_id: int) -> list[TxAttempt]:
        """Signed attempts of an action, oldest first (the last one is the current one)."""
        rows = self._conn.execute(
            "SELECT * FROM tx_attempt WHERE outbox_id = ? ORDER BY created_at, rowid", (action_id,)
        ).fetchall()
        return [
            TxAttempt(
                tx_hash=str(r["tx_hash"]),
                outbox_id=int(r["outbox_id"]),
                nonce=int(r["nonce"]),
                raw=bytes(r["raw"]),
                gas_limit=int(r["gas_limit"]),
                max_fee_per_gas=_int_or_none(r["max_fee_per_gas"]),
                max_priority_fee_per_gas=_int_or_none(r["max_priority_fee_per_gas"]),
                gas_price=_int_or_none(r["gas_price"]),
                created_at=float(r["created_at"]),
                broadcast_at=None if r["broadcast_at"] is None else float(r["broadcast_at"]),
            )
            for r in rows
        ]

    def mark_mined(self, action_id: int, *, tx_hash: str, block_number: int, receipt_status: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'mined', tx_hash = ?, block_number = ?, receipt_status = ?, "
                "error = NULL, already_done = 0, updated_at = ? WHERE id = ?",
                (tx_hash, block_number, receipt_status, time.time(), action_id),
            )

    def set_error(self, action_id: int, error: str, *, already_done: bool = False) -> None:
        """Attach a decoded revert to an action (a mined transaction that reverted keeps 'mined')."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET error = ?, already_done = ?, updated_at = ? WHERE id = ?",
                (error, int(already_done), time.time(), action_id),
            )

    def mark_failed(self, action_id: int, error: str, *, already_done: bool = False) -> None:
        """The action will not be sent (its pre-flight reverted): never retried."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'failed', error = ?, already_done = ?, updated_at = ? "
                "WHERE id = ?",
                (error, int(already_done), time.time(), action_id),
            )

    def requeue(self, action_id: int, reason: str) -> None:
        """Send again with a fresh nonce: its nonce was taken by a transaction that is not ours."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'queued', nonce = NULL, tx_hash = NULL, error = ?, updated_at = ? "
                "WHERE id = ?",
                (reason, time.time(), action_id),
            )


def _action_from_row(row: sqlite3.Row) -> OutboxAction:
    return OutboxAction(
        id=int(row["id"]),
        kind=str(row["kind"]),
        dedup_key=row["dedup_key"],
        serial_key=row["serial_key"],
        to_address=str(row["to_address"]),
        data=bytes(row["data"]),
        value=int(row["value"]),
        state=OutboxState(row["state"]),
        nonce=row["nonce"],
        gas_limit=row["gas_limit"],
        tx_hash=row["tx_hash"],
        block_number=row["block_number"],
        receipt_status=row["receipt_status"],
        error=row["error"],
        already_done=bool(row["already_done"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        retries=int(row["retries"]),
    )
