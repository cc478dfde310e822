"""Chain events the follower has seen: the handled ones (dedup and reorg undo) and the parked ones.

`processed_event` records every event handled, with its outcome, so an event read twice (a range
read again after a crash, an overlapping poll) is applied once, and a reorganisation knows which
events to undo. Records older than the reorg window are pruned. `parked_event` keeps events whose
handler failed, to be handled again later in chain order; one row per event, counting attempts.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from supervisor.store.base import StoreBase


class EventStore(StoreBase):
    # -- processed events ---------------------------------------------------------------------

    def is_event_processed(self, stream: str, tx_hash: str, log_index: int) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM processed_event WHERE stream = ? AND tx_hash = ? AND log_index = ?",
            (stream, tx_hash, log_index),
        ).fetchone()
        return row is not None

    def record_event(
        self,
        stream: str,
        *,
        tx_hash: str,
        log_index: int,
        block_number: int,
        block_hash: str,
        address: str,
        name: str,
        args_json: str,
        outcome: str,
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO processed_event (stream, tx_hash, log_index, block_number, block_hash, address, "
                "name, args_json, outcome, handled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stream,
                    tx_hash,
                    log_index,
                    block_number,
                    block_hash,
                    address,
                    name,
                    args_json,
                    outcome,
                    time.time(),
                ),
            )

    def set_event_outcome(self, stream: str, tx_hash: str, log_index: int, outcome: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE processed_event SET outcome = ? WHERE stream = ? AND tx_hash = ? AND log_index = ?",
                (outcome, stream, tx_hash, log_index),
            )

    def events_after(self, stream: str, block_number: int) -> list[sqlite3.Row]:
        """Processed events above a block, newest first (the order in which to undo them)."""
        return self._conn.execute(
            "SELECT * FROM processed_event WHERE stream = ? AND block_number > ? "
            "ORDER BY block_number DESC, log_index DESC",
            (stream, block_number),
        ).fetchall()

    def forget_events_after(self, stream: str, block_number: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "DELETE FROM processed_event WHERE stream = ? AND block_number > ?", (stream, block_number)
            )

    def prune_events_before(self, stream: str, block_number: int) -> int:
        """Forget dedup records older than the reorg window; returns how many were removed."""
        with self.transaction() as conn:
            cur = conn.execute(
                "DELETE FROM processed_event WHERE stream = ? AND block_number < ?", (stream, block_number)
            )
            return cur.rowcount

    # -- parked events ------------------------------------------------------------------------

    def park_event(self, stream: str, row: dict[str, Any], error: str, *, retry_at: float) -> None:
        """Keep an event whose handler failed, to be handled again; one row per event."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO parked_event (stream, tx_hash, log_index, block_number, block_hash, address, "
                "name, args_json, error, attempts, parked_at, retry_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) "
                "ON CONFLICT (stream, tx_hash, log_index) DO UPDATE SET error = excluded.error, "
                "attempts = parked_event.attempts + 1, retry_at = excluded.retry_at",
                (
                    stream,
                    row["tx_hash"],
                    row["log_index"],
                    row["block_number"],
                    row["block_hash"],
                    row["address"],
                    row["name"],
                    row["args_json"],
                    error,
                    time.time(),
                    retry_at,
                ),
            )

    def parked_events(self, stream: str, *, due_by: float | None = None) -> list[sqlite3.Row]:
        """Parked events in chain order (all, or those due for a retry by `due_by`)."""
        query = "SELECT * FROM parked_event WHERE stream = ?"
        params: tuple[Any, ...] = (stream,)
        if due_by is not None:
            query += " AND retry_at <= ?"
            params = (stream, due_by)
        return self._conn.execute(query + " ORDER BY block_number, log_index", params).fetchall()

    def unpark_event(self, stream: str, tx_hash: str, log_index: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "DELETE FROM parked_event WHERE stream = ? AND tx_hash = ? AND log_index = ?",
                (stream, tx_hash, log_index),
            )

    def forget_parked_after(self, stream: str, block_number: int) -> None:
        """A reorganisation removed these blocks: their parked events are no longer on chain."""
        with self.transaction() as conn:
            conn.execute(
                "DELETE FROM parked_event WHERE stream = ? AND block_number > ?", (stream, block_number)
            )
