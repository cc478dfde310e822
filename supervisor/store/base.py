"""The connection every part of the store shares, and the one way to write through it: `transaction()`.

Each table's methods live in their own module (a mixin of `StoreBase`); `supervisor.store.Store`
combines them over one connection, so what one chain event or one step changes, in any table,
commits or rolls back together.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class StoreError(RuntimeError):
    """The state file cannot be used as it is (newer schema, other chain, unreadable)."""


class StoreBase:
    """One SQLite connection (autocommit mode: transactions are explicit) and its transaction state."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._in_transaction = False
        self._commits = 0  # transactions this connection committed: see `version()`

    def close(self) -> None:
        self._conn.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for event handlers that keep tables of their own (inside `transaction()`)."""
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic local transaction; nested uses join the outer one."""
        if self._in_transaction:
            yield self._conn
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")
            self._commits += 1
        finally:
            self._in_transaction = False

    def version(self) -> tuple[int, int]:
        """Changes whenever anything was committed, by this connection or another one (SQLite's
        `data_version` counts only the others): what a reader may key a cache on."""
        (others,) = self._conn.execute("PRAGMA data_version").fetchone()
        return self._commits, int(others)

    @contextmanager
    def savepoint(self, name: str) -> Iterator[sqlite3.Connection]:
        """A nested unit inside a transaction, undone alone when its body raises."""
        self._conn.execute(f"SAVEPOINT {name}")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
            raise
        else:
            self._conn.execute(f"RELEASE {name}")
