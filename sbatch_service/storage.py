"""Durable storage of rendered scripts in SQLite (WAL), keyed by the hex SHA-256 of the script.

A script expires `ttl` seconds after it was stored; fetching it for a job that is still hot on chain
extends its life (see `extend`), so a script stays available while its job may still need it.

The same database holds the challenges handed out to supervisors and not used yet (`ChallengeStore`),
so a challenge issued just before a restart is still accepted after it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS scripts (
    key TEXT PRIMARY KEY,
    script TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS scripts_expires_at ON scripts (expires_at);
"""


def script_key(script: str) -> str:
    """The storage key of a script: the hex SHA-256 of its UTF-8 bytes, which the fetcher can verify."""
    return hashlib.sha256(script.encode()).hexdigest()


class ScriptStore:
    """Thread-safe; every write is committed (synchronous=FULL) before it returns."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def put(self, script: str, ttl_seconds: float) -> str:
        """Store a script and return its key; storing it again only pushes its expiry later."""
        key = script_key(script)
        now = self._clock()
        with self._lock:
            self._db.execute(
                "INSERT INTO scripts (key, script, created_at, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET expires_at = MAX(expires_at, excluded.expires_at)",
                (key, script, now, now + ttl_seconds),
            )
        return key

    def get(self, key: str) -> str | None:
        """The script under `key`, or None when it is unknown or expired."""
        with self._lock:
            row = self._db.execute(
                "SELECT script FROM scripts WHERE key = ? AND expires_at > ?", (key, self._clock())
            ).fetchone()
        return None if row is None else str(row[0])

    def extend(self, keys: Collection[str], seconds: float) -> None:
        """Keep live scripts at least `seconds` more (never shortens a life), in one transaction."""
        now = self._clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE scripts SET expires_at = MAX(expires_at, ?) WHERE key = ? AND expires_at > ?",
                    [(now + seconds, key, now) for key in keys],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def purge_expired(self) -> int:
        """Delete expired scripts; returns how many."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM scripts WHERE expires_at <= ?", (self._clock(),))
        return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


CHALLENGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS challenges (
    nonce TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS challenges_expires_at ON challenges (expires_at);
"""


class ChallengeStore:
    """Outstanding challenges in the service's database, on a connection of their own.

    `synchronous=NORMAL`: in WAL mode a commit survives the process (what a restart needs) without
    an fsync per challenge; a power cut may lose the last ones, whose holders simply ask again.
    The nonce book decides what is kept; this table mirrors it, so it is bounded the same way.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(CHALLENGE_SCHEMA)

    def load(self, now: float, limit: int) -> list[tuple[str, float]]:
        """The `limit` newest live challenges, oldest first; expired rows and any beyond `limit` go."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM challenges WHERE expires_at <= ?", (now,))
                self._db.execute(
                    "DELETE FROM challenges WHERE nonce NOT IN "
                    "(SELECT nonce FROM challenges ORDER BY expires_at DESC, nonce LIMIT ?)",
                    (limit,),
                )
                rows = self._db.execute(
                    "SELECT nonce, expires_at FROM challenges ORDER BY expires_at, nonce"
                ).fetchall()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [(str(nonce), float(expires)) for nonce, expires in rows]

    def record(self, nonce: str, expires_at: float, dropped: Iterable[str] = ()) -> None:
        """Add one challenge and delete the ones the book dropped, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM challenges WHERE nonce = ?", [(n,) for n in dropped])
                self._db.execute(
                    "INSERT OR REPLACE INTO challenges (nonce, expires_at) VALUES (?, ?)", (nonce, expires_at)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def remove(self, nonce: str) -> None:
        """Forget a challenge (it was used); committed before returning, so it never comes back."""
        with self._lock:
            self._db.execute("DELETE FROM challenges WHERE nonce = ?", (nonce,))

    def purge_expired(self, now: float) -> int:
        with self._lock:
            cursor = self._db.execute("DELETE FROM challenges WHERE expires_at <= ?", (now,))
        return cursor.rowcount

    def count(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM challenges").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
