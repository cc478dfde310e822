"""Where the log follower is: the cursor of each stream, and the checkpoints used to survive reorgs.

The cursor is the last block whose logs are fully handled. It moves in the same transaction as the
effects of those logs, so after a crash the follower resumes exactly after what was applied. Each
position is also kept as a checkpoint (block number and hash): after a reorganisation the follower
walks them back to the newest one still on chain, the common ancestor it rewinds to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from supervisor.store.base import StoreBase


@dataclass(frozen=True)
class Cursor:
    """The last block whose logs are fully processed, with its hash to detect reorgs."""

    block_number: int
    block_hash: str


class CursorStore(StoreBase):
    def get_cursor(self, stream: str) -> Cursor | None:
        row = self._conn.execute(
            "SELECT block_number, block_hash FROM chain_cursor WHERE stream = ?", (stream,)
        ).fetchone()
        return None if row is None else Cursor(int(row["block_number"]), str(row["block_hash"]))

    def set_cursor(self, stream: str, cursor: Cursor, *, keep_checkpoints: int = 256) -> None:
        """Move the cursor and remember its hash as a checkpoint for finding a common ancestor."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO chain_cursor (stream, block_number, block_hash, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (stream) DO UPDATE SET block_number = excluded.block_number, "
                "block_hash = excluded.block_hash, updated_at = excluded.updated_at",
                (stream, cursor.block_number, cursor.block_hash, time.time()),
            )
            conn.execute(
                "INSERT OR REPLACE INTO cursor_checkpoint (stream, block_number, block_hash) "
                "VALUES (?, ?, ?)",
                (stream, cursor.block_number, cursor.block_hash),
            )
            conn.execute(
                "DELETE FROM cursor_checkpoint WHERE stream = ? AND block_number NOT IN "
                "(SELECT block_number FROM cursor_checkpoint WHERE stream = ? "
                "ORDER BY block_number DESC LIMIT ?)",
                (stream, stream, keep_checkpoints),
            )

    def checkpoints(self, stream: str) -> list[Cursor]:
        """Saved cursor positions, newest first."""
        rows = self._conn.execute(
            "SELECT block_number, block_hash FROM cursor_checkpoint WHERE stream = ? "
            "ORDER BY block_number DESC",
            (stream,),
        ).fetchall()
        return [Cursor(int(r["block_number"]), str(r["block_hash"])) for r in rows]

    def drop_checkpoints_after(self, stream: str, block_number: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "DELETE FROM cursor_checkpoint WHERE stream = ? AND block_number > ?", (stream, block_number)
            )
