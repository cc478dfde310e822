"""The supervisor's durable state: one SQLite file (WAL) holding the chain cursor, the jobs and the outbox.

Nothing is acknowledged before it is written here. Every write happens inside `Store.transaction()`,
so the cursor of the log follower moves in the same local transaction as the effects of the logs it
covers, and a transaction's signed bytes are saved before they are broadcast.

The store is used from one asyncio event loop: its calls are short local writes and do not await,
so two tasks never interleave inside one transaction.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from supervisor.core.status import JobStatus

# Each entry upgrades the schema by one version; applied in order, each in its own transaction.
MIGRATIONS: tuple[str, ...] = (
    # 1: cursor, processed events, jobs, outbox and the attempts of each outbox action.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE chain_cursor (
        stream       TEXT PRIMARY KEY,
        block_number INTEGER NOT NULL,
        block_hash   TEXT NOT NULL,
        updated_at   REAL NOT NULL
    );
    CREATE TABLE cursor_checkpoint (
        stream       TEXT NOT NULL,
        block_number INTEGER NOT NULL,
        block_hash   TEXT NOT NULL,
        PRIMARY KEY (stream, block_number)
    );
    CREATE TABLE processed_event (
        stream       TEXT NOT NULL,
        tx_hash      TEXT NOT NULL,
        log_index    INTEGER NOT NULL,
        block_number INTEGER NOT NULL,
        block_hash   TEXT NOT NULL,
        address      TEXT NOT NULL,
        name         TEXT NOT NULL,
        args_json    TEXT NOT NULL,
        outcome      TEXT NOT NULL,
        handled_at   REAL NOT NULL,
        PRIMARY KEY (stream, tx_hash, log_index)
    );
    CREATE INDEX processed_event_block ON processed_event (stream, block_number);
    CREATE TABLE job (
        job_id                TEXT PRIMARY KEY,
        status                INTEGER NOT NULL,
        customer              TEXT,
        slurm_job_id          INTEGER,
        last_reported_status  INTEGER,
        max_duration_minute   INTEGER,
        definition_json       TEXT,
        claimed_block         INTEGER,
        created_at            REAL NOT NULL,
        updated_at            REAL NOT NULL
    );
    CREATE TABLE outbox (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        kind          TEXT NOT NULL,
        dedup_key     TEXT UNIQUE,
        serial_key    TEXT,
        to_address    TEXT NOT NULL,
        data          BLOB NOT NULL,
        value         TEXT NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'mined', 'failed')),
        nonce         INTEGER,
        gas_limit     INTEGER,
        tx_hash       TEXT,
        block_number  INTEGER,
        receipt_status INTEGER,
        error         TEXT,
        already_done  INTEGER NOT NULL DEFAULT 0,
        created_at    REAL NOT NULL,
        updated_at    REAL NOT NULL
    );
    CREATE INDEX outbox_state ON outbox (state, id);
    CREATE TABLE tx_attempt (
        tx_hash                  TEXT PRIMARY KEY,
        outbox_id                INTEGER NOT NULL REFERENCES outbox (id),
        nonce                    INTEGER NOT NULL,
        raw                      BLOB NOT NULL,
        gas_limit                INTEGER NOT NULL,
        max_fee_per_gas          TEXT,
        max_priority_fee_per_gas TEXT,
        gas_price                TEXT,
        created_at               REAL NOT NULL,
        broadcast_at             REAL
    );
    CREATE INDEX tx_attempt_outbox ON tx_attempt (outbox_id, created_at);
    """,
    # 2: what the daemon tracks per job beyond the chain status.
    """
    ALTER TABLE job ADD COLUMN ours INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE job ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE job ADD COLUMN extra_minutes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE job ADD COLUMN delegate_top_up INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE job ADD COLUMN top_up_slices INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE job ADD COLUMN closed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE job ADD COLUMN note TEXT;
    CREATE INDEX job_open ON job (closed, created_at);
    """,
    # 3: events whose handler failed, kept for retry; when each job's current claim was recorded.
    """
    CREATE TABLE parked_event (
        stream       TEXT NOT NULL,
        tx_hash      TEXT NOT NULL,
        log_index    INTEGER NOT NULL,
        block_number INTEGER NOT NULL,
        block_hash   TEXT NOT NULL,
        address      TEXT NOT NULL,
        name         TEXT NOT NULL,
        args_json    TEXT NOT NULL,
        error        TEXT NOT NULL,
        attempts     INTEGER NOT NULL,
        parked_at    REAL NOT NULL,
        retry_at     REAL NOT NULL,
        PRIMARY KEY (stream, tx_hash, log_index)
    );
    ALTER TABLE job ADD COLUMN claimed_at REAL;
    ALTER TABLE job ADD COLUMN lookup_since REAL;
    UPDATE job SET claimed_at = created_at;
    ALTER TABLE outbox ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
    -- Counters kept by triggers: O(1) to read, and they outlive the rows that retention deletes.
    CREATE TABLE counter (
        name TEXT PRIMARY KEY,
        n    INTEGER NOT NULL
    );
    INSERT INTO counter (name, n) VALUES
        ('attempts', (SELECT COUNT(*) FROM tx_attempt)),
        ('sent', (SELECT COUNT(DISTINCT outbox_id) FROM tx_attempt)),
        ('slurm_submissions', (SELECT COUNT(slurm_job_id) FROM job));
    CREATE TABLE outbox_count (
        kind         TEXT NOT NULL,
        state        TEXT NOT NULL,
        already_done INTEGER NOT NULL,
        n            INTEGER NOT NULL,
        PRIMARY KEY (kind, state, already_done)
    );
    INSERT INTO outbox_count (kind, state, already_done, n)
        SELECT kind, state, already_done, COUNT(*) FROM outbox GROUP BY kind, state, already_done;
    CREATE TABLE job_count (
        status INTEGER NOT NULL,
        closed INTEGER NOT NULL,
        n      INTEGER NOT NULL,
        PRIMARY KEY (status, closed)
    );
    INSERT INTO job_count (status, closed, n) SELECT status, closed, COUNT(*) FROM job GROUP BY status, closed;
    CREATE TRIGGER attempt_counted AFTER INSERT ON tx_attempt BEGIN
        UPDATE counter SET n = n + 1 WHERE name = 'attempts';
        UPDATE counter SET n = n + 1 WHERE name = 'sent'
            AND (SELECT COUNT(*) FROM tx_attempt WHERE outbox_id = NEW.outbox_id) = 1;
    END;
    CREATE TRIGGER outbox_counted AFTER INSERT ON outbox BEGIN
        INSERT INTO outbox_count (kind, state, already_done, n) VALUES (NEW.kind, NEW.state, NEW.already_done, 1)
            ON CONFLICT (kind, state, already_done) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER outbox_recounted AFTER UPDATE OF state, already_done ON outbox BEGIN
        UPDATE outbox_count SET n = n - 1
            WHERE kind = OLD.kind AND state = OLD.state AND already_done = OLD.already_done;
        INSERT INTO outbox_count (kind, state, already_done, n) VALUES (NEW.kind, NEW.state, NEW.already_done, 1)
            ON CONFLICT (kind, state, already_done) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER job_counted AFTER INSERT ON job BEGIN
        INSERT INTO job_count (status, closed, n) VALUES (NEW.status, NEW.closed, 1)
            ON CONFLICT (status, closed) DO UPDATE SET n = n + 1;
        UPDATE counter SET n = n + 1 WHERE name = 'slurm_submissions' AND NEW.slurm_job_id IS NOT NULL;
    END;
    CREATE TRIGGER job_recounted AFTER UPDATE OF status, closed, slurm_job_id ON job BEGIN
        UPDATE job_count SET n = n - 1 WHERE status = OLD.status AND closed = OLD.closed;
        INSERT INTO job_count (status, closed, n) VALUES (NEW.status, NEW.closed, 1)
            ON CONFLICT (status, closed) DO UPDATE SET n = n + 1;
        UPDATE counter SET n = n + 1 WHERE name = 'slurm_submissions'
            AND OLD.slurm_job_id IS NULL AND NEW.slurm_job_id IS NOT NULL;
    END;
    -- A closed job forgotten by retention still counts as closed; an open one deleted does not count.
    CREATE TRIGGER job_uncounted AFTER DELETE ON job WHEN OLD.closed = 0 BEGIN
        UPDATE job_count SET n = n - 1 WHERE status = OLD.status AND closed = 0;
    END;
    CREATE INDEX job_closed_updated ON job (closed, updated_at);
    CREATE INDEX outbox_state_updated ON outbox (state, updated_at);
    CREATE TABLE orphan_slurm_job (
        slurm_job_id INTEGER PRIMARY KEY,
        job_id       TEXT NOT NULL,
        noted_at     REAL NOT NULL
    );
    """,
)

#: SQLite's INTEGER is 64-bit signed; on-chain uint64 durations (a free job's is 2^64-1) are capped.
SQLITE_MAX_INT = 2**63 - 1


class StoreError(RuntimeError):
    """The state file cannot be used as it is (newer schema, other chain, unreadable)."""


class OutboxState(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    MINED = "mined"
    FAILED = "failed"


@dataclass(frozen=True)
class Cursor:
    """The last block whose logs are fully processed, with its hash to detect reorgs."""

    block_number: int
    block_hash: str


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    status: JobStatus
    customer: str | None
    slurm_job_id: int | None
    last_reported_status: JobStatus | None
    max_duration_minute: int | None
    definition: dict[str, Any] | None
    claimed_block: int | None
    created_at: float
    updated_at: float
    claimed_at: float | None = None
    lookup_since: float | None = None
    ours: bool = True
    cancel_requested: bool = False
    extra_minutes: int = 0
    delegate_top_up: bool = False
    top_up_slices: int = 0
    closed: bool = False
    note: str | None = None


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


class Store:
    """The SQLite state file. Open with `Store.open(path)`; close with `close()`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._in_transaction = False

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

    def close(self) -> None:
        self._conn.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for event handlers that keep tables of their own (inside `transaction()`)."""
        return self._conn

    @property
    def schema_version(self) -> int:
        row = self._conn.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    def _migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StoreError(
                f"state file {self.path} has schema version {current}, newer than this program "
                f"knows ({len(MIGRATIONS)}): upgrade the supervisor"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            script = MIGRATIONS[version - 1]
            # executescript commits on its own; wrap the script so the version bump is atomic with it.
            self._conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")

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
        finally:
            self._in_transaction = False

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

    # -- meta ---------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def bind_chain_id(self, chain_id: int) -> None:
        """Tie the state file to one chain; a file made for another chain is refused."""
        known = self.get_meta("chain_id")
        if known is None:
            self.set_meta("chain_id", str(chain_id))
        elif int(known) != chain_id:
            raise StoreError(
                f"state file {self.path} belongs to chain id {known}, but the RPC serves chain id {chain_id}"
            )

    def bind_deployment(self, chain_id: int, meta_scheduler: str) -> None:
        """Tie the state file to one deployment: a chain and its MetaScheduler.

        Jobs of another deployment mean nothing here (their ids repeat across deployments), so a file
        made for another one is refused rather than acted on.
        """
        self.bind_chain_id(chain_id)
        known = self.get_meta("meta_scheduler")
        if known is None:
            self.set_meta("meta_scheduler", meta_scheduler)
        elif known.lower() != meta_scheduler.lower():
            raise StoreError(
                f"state file {self.path} belongs to the MetaScheduler {known} on chain id {chain_id}, "
                f"not to {meta_scheduler}: point store.path at a new file for this deployment"
            )

    # -- cursor -------------------------------------------------------------------------------

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

    # -- jobs ---------------------------------------------------------------------------------

    def record_claim(
        self,
        job_id: str,
        *,
        customer: str,
        max_duration_minute: int,
        definition: dict[str, Any],
        claimed_block: int,
        lookup_margin_s: float = 2.0,
    ) -> bool:
        """Record this provider's claim of a job; True when it starts a new attempt.

        A job handed back (refused, timed out) and claimed again is a new attempt: what belonged to
        the previous one (its Slurm job, its reports, cancellation and top-ups) is cleared, so nothing
        of it is taken for the new one. The same claim recorded twice changes nothing.

        `lookup_since` bounds the Slurm jobs that can belong to the attempt. Slurm keeps submission
        times to the second, so a first attempt looks `lookup_margin_s` before its claim; an attempt
        after one that had a Slurm job starts at the next whole second, and is submitted no earlier,
        so the earlier attempt's Slurm job of the same name is never taken for it.
        """
        now = time.time()
        existing = self.get_job(job_id)
        if existing is not None and existing.claimed_block == claimed_block:
            return False
        had_slurm_job = existing is not None and existing.slurm_job_id is not None
        lookup_since = float(math.floor(now) + 1) if had_slurm_job else now - lookup_margin_s
        with self.transaction() as conn:
            if existing is not None and existing.slurm_job_id is not None:
                # The previous attempt's Slurm job may still be queued or running: have it cancelled.
                conn.execute(
                    "INSERT OR IGNORE INTO orphan_slurm_job (slurm_job_id, job_id, noted_at) VALUES (?, ?, ?)",
                    (existing.slurm_job_id, job_id, now),
                )
            conn.execute("DELETE FROM job WHERE job_id = ?", (job_id,))
            conn.execute(
                "INSERT INTO job (job_id, status, customer, max_duration_minute, definition_json, "
                "claimed_block, created_at, updated_at, claimed_at, lookup_since) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    int(JobStatus.SCHEDULED),
                    customer,
                    min(max_duration_minute, SQLITE_MAX_INT),
                    json.dumps(definition, sort_keys=True),
                    claimed_block,
                    existing.created_at if existing is not None else now,
                    now,
                    now,
                    lookup_since,
                ),
            )
        return True

    def orphan_slurm_jobs(self) -> list[tuple[int, str]]:
        """(Slurm job id, job id) of Slurm jobs left by an earlier attempt of a re-claimed job."""
        rows = self._conn.execute(
            "SELECT slurm_job_id, job_id FROM orphan_slurm_job ORDER BY noted_at"
        ).fetchall()
        return [(int(r["slurm_job_id"]), str(r["job_id"])) for r in rows]

    def forget_orphan(self, slurm_job_id: int) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM orphan_slurm_job WHERE slurm_job_id = ?", (slurm_job_id,))

    # -- retention ----------------------------------------------------------------------------

    def prune(self, before: float) -> tuple[int, int]:
        """Forget what nothing will read again, last changed before `before`: closed jobs, and chain
        writes that are mined or given up (with their signed attempts) and belong to no open job.

        The counters behind the metrics are kept by triggers and outlive the rows, so they never go
        down. Returns (jobs, actions) forgotten.
        """
        final = (
            "FROM outbox WHERE state IN ('mined', 'failed') AND updated_at < ? "
            "AND (serial_key IS NULL OR serial_key NOT IN (SELECT job_id FROM job WHERE closed = 0))"
        )
        with self.transaction() as conn:
            conn.execute(f"DELETE FROM tx_attempt WHERE outbox_id IN (SELECT id {final})", (before,))
            actions = conn.execute(f"DELETE {final}", (before,)).rowcount
            jobs = conn.execute("DELETE FROM job WHERE closed = 1 AND updated_at < ?", (before,)).rowcount
        return jobs, actions

    def counter(self, name: str) -> int:
        row = self._conn.execute("SELECT n FROM counter WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def outbox_counts(self) -> dict[tuple[str, str, bool], int]:
        """Chain writes ever queued, by (kind, current state, already done)."""
        return {
            (str(kind), str(state), bool(done)): int(n)
            for kind, state, done, n in self._conn.execute(
                "SELECT kind, state, already_done, n FROM outbox_count WHERE n > 0"
            )
        }

    def job_counts(self) -> tuple[dict[JobStatus, int], int, int]:
        """Open jobs by chain status, jobs ever closed, and Slurm submissions ever made."""
        open_by_status = {status: 0 for status in JobStatus}
        closed = 0
        for status, is_closed, n in self._conn.execute("SELECT status, closed, n FROM job_count"):
            if is_closed:
                closed += int(n)
            else:
                open_by_status[JobStatus(int(status))] += int(n)
        return open_by_status, closed, self.counter("slurm_submissions")

    def upsert_job(
        self,
        job_id: str,
        status: JobStatus,
        *,
        customer: str | None = None,
        max_duration_minute: int | None = None,
        definition: dict[str, Any] | None = None,
        claimed_block: int | None = None,
    ) -> None:
        """Create the job or update its chain status (other fields only when given)."""
        now = time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO job (job_id, status, customer, max_duration_minute, definition_json, "
                "claimed_block, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, "
                "customer = COALESCE(excluded.customer, job.customer), "
                "max_duration_minute = COALESCE(excluded.max_duration_minute, job.max_duration_minute), "
                "definition_json = COALESCE(excluded.definition_json, job.definition_json), "
                "claimed_block = COALESCE(excluded.claimed_block, job.claimed_block), "
                "updated_at = excluded.updated_at",
                (
                    job_id,
                    int(status),
                    customer,
                    None if max_duration_minute is None else min(max_duration_minute, SQLITE_MAX_INT),
                    None if definition is None else json.dumps(definition, sort_keys=True),
                    claimed_block,
                    now,
                    now,
                ),
            )

    def set_job_slurm_id(self, job_id: str, slurm_job_id: int) -> None:
        self._update_job(job_id, "slurm_job_id", slurm_job_id)

    def set_job_reported_status(self, job_id: str, status: JobStatus) -> None:
        self._update_job(job_id, "last_reported_status", int(status))

    _JOB_COLUMNS = frozenset(
        {
            "status",
            "slurm_job_id",
            "last_reported_status",
            "ours",
            "cancel_requested",
            "delegate_top_up",
            "top_up_slices",
            "closed",
            "note",
        }
    )

    def update_job(self, job_id: str, **fields: int | str | bool | None) -> None:
        """Set some of a job's daemon fields (see `_JOB_COLUMNS`); KeyError for an unknown job."""
        unknown = set(fields) - self._JOB_COLUMNS
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        values = [int(v) if isinstance(v, bool) else v for v in fields.values()]
        with self.transaction() as conn:
            cur = conn.execute(
                f"UPDATE job SET {assignments}, updated_at = ? WHERE job_id = ?",
                (*values, time.time(), job_id),
            )
            if cur.rowcount == 0:
                raise KeyError(f"unknown job {job_id}")

    def add_extra_minutes(self, job_id: str, minutes: int) -> None:
        """Minutes bought by a top-up (negative to undo one); the Slurm time limit follows the total."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE job SET extra_minutes = extra_minutes + ?, updated_at = ? WHERE job_id = ?",
                (minutes, time.time(), job_id),
            )

    def open_jobs(self) -> list[JobRecord]:
        """Jobs the daemon still acts on (not closed), oldest first."""
        rows = self._conn.execute("SELECT * FROM job WHERE closed = 0 ORDER BY created_at, job_id").fetchall()
        return [_job_from_row(r) for r in rows]

    def _update_job(self, job_id: str, column: str, value: int) -> None:
        self.update_job(job_id, **{column: value})

    def delete_job(self, job_id: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM job WHERE job_id = ?", (job_id,))

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._conn.execute("SELECT * FROM job WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _job_from_row(row)

    def list_jobs(self, statuses: Sequence[JobStatus] | None = None) -> list[JobRecord]:
        if statuses is None:
            rows = self._conn.execute("SELECT * FROM job ORDER BY created_at, job_id").fetchall()
        else:
            marks = ",".join("?" for _ in statuses)
            rows = self._conn.execute(
                f"SELECT * FROM job WHERE status IN ({marks}) ORDER BY created_at, job_id",
                [int(s) for s in statuses],
            ).fetchall()
        return [_job_from_row(r) for r in rows]

    # -- outbox -------------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        kind: str,
        to_address: str,
        data: bytes,
        value: int = 0,
        dedup_key: str | None = None,
        serial_key: str | None = None,
    ) -> int:
        """Queue a chain write; with a dedup key already queued, return the existing action's id."""
        with self.transaction() as conn:
            if dedup_key is not None:
                row = conn.execute("SELECT id FROM outbox WHERE dedup_key = ?", (dedup_key,)).fetchone()
                if row is not None:
                    return int(row["id"])
            now = time.time()
            cur = conn.execute(
                "INSERT INTO outbox (kind, dedup_key, serial_key, to_address, data, value, state, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (kind, dedup_key, serial_key, to_address, data, str(value), now, now),
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


def _job_from_row(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        job_id=str(row["job_id"]),
        status=JobStatus(int(row["status"])),
        customer=row["customer"],
        slurm_job_id=row["slurm_job_id"],
        last_reported_status=None
        if row["last_reported_status"] is None
        else JobStatus(int(row["last_reported_status"])),
        max_duration_minute=row["max_duration_minute"],
        definition=None if row["definition_json"] is None else json.loads(row["definition_json"]),
        claimed_block=row["claimed_block"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        claimed_at=None if row["claimed_at"] is None else float(row["claimed_at"]),
        lookup_since=None if row["lookup_since"] is None else float(row["lookup_since"]),
        ours=bool(row["ours"]),
        cancel_requested=bool(row["cancel_requested"]),
        extra_minutes=int(row["extra_minutes"]),
        delegate_top_up=bool(row["delegate_top_up"]),
        top_up_slices=int(row["top_up_slices"]),
        closed=bool(row["closed"]),
        note=row["note"],
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
