"""The schema of the state file: its DDL, as migrations applied in order, and the version it is at.

The schema version is SQLite's `user_version`; a file at version N has had the first N entries of
`MIGRATIONS` applied. Released entries are never edited (existing state files depend on them): a
change of schema is a new entry at the end.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from supervisor.store.base import StoreError

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
    # 4: when a submission to Slurm was begun: only a job whose submission may have reached sbatch
    # needs its name looked up in Slurm before it is submitted (again).
    """
    ALTER TABLE job ADD COLUMN submit_intent_at REAL;
    """,
    # 5: the Slurm name a submission was begun under (it carries the deployment); NULL for the jobs
    # submitted before, which Slurm knows by their bare job id.
    """
    ALTER TABLE job ADD COLUMN slurm_name TEXT;
    """,
    # 6: how many jobs a claim write takes at most (a batch claim takes several): places in the
    # claim budget are counted by it.
    """
    ALTER TABLE outbox ADD COLUMN claims INTEGER NOT NULL DEFAULT 1;
    """,
)

#: SQLite's INTEGER is 64-bit signed; on-chain uint64 durations (a free job's is 2^64-1) are capped.
SQLITE_MAX_INT = 2**63 - 1


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations the file lacks; a file newer than this program is refused, not touched."""
    current = schema_version(conn)
    if current > len(MIGRATIONS):
        raise StoreError(
            f"state file {path} has schema version {current}, newer than this program "
            f"knows ({len(MIGRATIONS)}): upgrade the supervisor"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        script = MIGRATIONS[version - 1]
        # executescript commits on its own; wrap the script so the version bump is atomic with it.
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
