"""The supervisor's durable state: one SQLite file (WAL) holding the chain cursor, the jobs and the outbox.

Nothing is acknowledged before it is written here. Every write happens inside `Store.transaction()`,
so the cursor of the log follower moves in the same local transaction as the effects of the logs it
covers, and a transaction's signed bytes are saved before they are broadcast.

The store is used from one asyncio event loop: its calls are short local writes and do not await,
so two tasks never interleave inside one transaction.

Along the data path, one module per part of the file:

- `schema`: the DDL, as numbered migrations, and the schema version;
- `meta`: the deployment (chain, MetaScheduler) the file is bound to;
- `cursor`: where the log follower is, and the checkpoints that find a common ancestor on a reorg;
- `events`: events handled (dedup, undo on a reorg) and events parked for retry;
- `jobs`: the jobs claimed and what the daemon tracks of each;
- `outbox`: chain writes to deliver and their signed transactions;
- `retention`: pruning, and the counters that outlive the pruned rows.

`Store` is the one facade: it combines them over one connection, so a caller's `transaction()`
covers writes to any table.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from supervisor.store.base import StoreBase, StoreError
from supervisor.store.cursor import Cursor, CursorStore
from supervisor.store.events import EventStore
from supervisor.store.jobs import JobRecord, JobStore
from supervisor.store.meta import MetaStore
from supervisor.store.outbox import OutboxAction, OutboxState, OutboxStore, TxAttempt
from supervisor.store.retention import RetentionStore
from supervisor.store.schema import MIGRATIONS, SQLITE_MAX_INT, migrate, schema_version

__all__ = [
    "MIGRATIONS",
    "SQLITE_MAX_INT",
    "Cursor",
    "JobRecord",
    "OutboxAction",
    "OutboxState",
    "Store",
    "StoreError",
    "TxAttempt",
]


class Store(MetaStore, CursorStore, EventStore, JobStore, OutboxStore, RetentionStore, StoreBase):
    """The SQLite state file. Open with `Store.open(path)`; close with `close()`."""

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """Open (or create) the state file, switch it to WAL and apply pending migrations."""
        path = Path(path)
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state file {path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            store = cls(conn, path)
            store._migrate()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"state file {path} is not a usable SQLite database: {exc}") from exc
        except StoreError:
            conn.close()
            raise
        return store

    @property
    def schema_version(self) -> int:
        return schema_version(self._conn)

    def _migrate(self) -> None:
        migrate(self._conn, self.path)
