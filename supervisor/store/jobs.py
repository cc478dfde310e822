"""The jobs this provider has claimed, as the daemon tracks them, and the Slurm jobs left behind.

A row per job holds its chain status (moved by the follower's events) and what the daemon keeps of
its own (Slurm job id, last status reported, cancellation, top-ups, whether it is closed). A job
claimed again is a new attempt: `record_claim` replaces the row, and notes the previous attempt's
Slurm job in `orphan_slurm_job` so that it gets cancelled.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grid_protocol.jobs import JobStatus
from supervisor.store.base import StoreBase
from supervisor.store.schema import SQLITE_MAX_INT

#: Job ids per query when rows written are read again (under SQLite's default bound of parameters).
REREAD_CHUNK = 500


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    status: JobStatus
    customer: str | None
    slurm_job_id: int | None
    last_reported_status: JobStatus | None
    max_duration_minute: int | None
    #: The job definition as the ClaimJobEvent carried it, kept as JSON: most reads of a record never
    #: look at it (see `definition`), and parsing it for every open job in every cycle costs the most.
    definition_json: str | None
    claimed_block: int | None
    created_at: float
    updated_at: float
    claimed_at: float | None = None
    lookup_since: float | None = None
    #: Set, durably, just before this attempt's sbatch; None: no sbatch of this attempt was begun.
    submit_intent_at: float | None = None
    #: The Slurm name this attempt's submission was begun under (set with `submit_intent_at`).
    slurm_name: str | None = None
    ours: bool = True
    cancel_requested: bool = False
    extra_minutes: int = 0
    delegate_top_up: bool = False
    top_up_slices: int = 0
    closed: bool = False
    note: str | None = None

    @functools.cached_property
    def definition(self) -> dict[str, Any] | None:
        """The job definition (parsed on first use)."""
        parsed: dict[str, Any] | None = (
            None if self.definition_json is None else json.loads(self.definition_json)
        )
        return parsed


class JobStore(StoreBase):
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        super().__init__(conn, path)
        #: The open jobs as last read, keyed on `version()`, in their order.
        self._open_jobs_read: tuple[tuple[int, int], dict[str, JobRecord]] | None = None
        #: Jobs this connection wrote since that read (committed or not): after commits of this
        #: connection alone, only their rows are read again.
        self._jobs_written: set[str] = set()

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
        # The previous attempt is read in the transaction that replaces it: the decision and the
        # writes (orphaned Slurm job, fresh row) are one change, seen whole or not at all.
        with self.transaction() as conn:
            self._jobs_written.add(job_id)
            existing = self.get_job(job_id)
            if existing is not None and existing.claimed_block == claimed_block:
                return False
            had_slurm_job = existing is not None and existing.slurm_job_id is not None
            lookup_since = float(math.floor(now) + 1) if had_slurm_job else now - lookup_margin_s
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
            self._jobs_written.add(job_id)
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
            "submit_intent_at",
            "slurm_name",
        }
    )

    def update_job(self, job_id: str, **fields: float | str | bool | None) -> None:
        """Set some of a job's daemon fields (see `_JOB_COLUMNS`); KeyError for an unknown job."""
        unknown = set(fields) - self._JOB_COLUMNS
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        values = [int(v) if isinstance(v, bool) else v for v in fields.values()]
        with self.transaction() as conn:
            self._jobs_written.add(job_id)
            cur = conn.execute(
                f"UPDATE job SET {assignments}, updated_at = ? WHERE job_id = ?",
                (*values, time.time(), job_id),
            )
            if cur.rowcount == 0:
                raise KeyError(f"unknown job {job_id}")

    def add_extra_minutes(self, job_id: str, minutes: int) -> None:
        """Minutes bought by a top-up (negative to undo one); the Slurm time limit follows the total."""
        with self.transaction() as conn:
            self._jobs_written.add(job_id)
            conn.execute(
                "UPDATE job SET extra_minutes = extra_minutes + ?, updated_at = ? WHERE job_id = ?",
                (minutes, time.time(), job_id),
            )

    def open_jobs(self) -> list[JobRecord]:
        """Jobs the daemon still acts on (not closed), oldest first.

        Every work cycle asks, with thousands of jobs open and most of them unchanged: the records
        (immutable) are read again only after something was committed, and after commits of this
        connection only those of the jobs it wrote (a burst commits a group of jobs at a time).
        """
        if self._in_transaction:  # what a transaction sees may still be undone: read, keep nothing
            return list(self._read_open_jobs().values())
        version = self.version()
        read = self._open_jobs_read
        if read is not None and read[0] == version:
            return list(read[1].values())
        if read is not None and read[0][1] == version[1]:  # only this connection committed since
            records = self._reread(read[1], self._jobs_written)
        else:
            records = self._read_open_jobs()
        self._open_jobs_read, self._jobs_written = (version, records), set()
        return list(records.values())

    def _read_open_jobs(self) -> dict[str, JobRecord]:
        rows = self._conn.execute("SELECT * FROM job WHERE closed = 0 ORDER BY created_at, job_id").fetchall()
        return {str(r["job_id"]): _job_from_row(r) for r in rows}

    def _reread(self, previous: dict[str, JobRecord], written: set[str]) -> dict[str, JobRecord]:
        """`previous` with the rows of the `written` jobs read again, in the same order."""
        fresh: dict[str, JobRecord] = {}
        ids = list(written)
        for start in range(0, len(ids), REREAD_CHUNK):
            chunk = ids[start : start + REREAD_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for row in self._conn.execute(
                f"SELECT * FROM job WHERE closed = 0 AND job_id IN ({marks})", chunk
            ).fetchall():
                fresh[str(row["job_id"])] = _job_from_row(row)
        records = {
            job_id: fresh.pop(job_id) if job_id in written else record
            for job_id, record in previous.items()
            if job_id not in written or job_id in fresh
        }
        if not fresh:
            return records
        newest = _order(next(reversed(records.values()))) if records else None
        arrivals = sorted(fresh.values(), key=_order)
        if newest is not None and _order(arrivals[0]) < newest:
            return {j.job_id: j for j in sorted([*records.values(), *arrivals], key=_order)}
        records.update((j.job_id, j) for j in arrivals)
        return records

    def _update_job(self, job_id: str, column: str, value: int) -> None:
        self.update_job(job_id, **{column: value})

    def delete_job(self, job_id: str) -> None:
        with self.transaction() as conn:
            self._jobs_written.add(job_id)
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


def _order(job: JobRecord) -> tuple[float, str]:
    """Where a job stands among the open ones (`open_jobs`' ORDER BY)."""
    return job.created_at, job.job_id


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
        definition_json=row["definition_json"],
        claimed_block=row["claimed_block"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        claimed_at=None if row["claimed_at"] is None else float(row["claimed_at"]),
        lookup_since=None if row["lookup_since"] is None else float(row["lookup_since"]),
        submit_intent_at=None if row["submit_intent_at"] is None else float(row["submit_intent_at"]),
        slurm_name=row["slurm_name"],
        ours=bool(row["ours"]),
        cancel_requested=bool(row["cancel_requested"]),
        extra_minutes=int(row["extra_minutes"]),
        delegate_top_up=bool(row["delegate_top_up"]),
        top_up_slices=int(row["top_up_slices"]),
        closed=bool(row["closed"]),
        note=row["note"],
    )
