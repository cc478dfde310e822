"""Retention and the counters behind the metrics.

The state file would grow with every job ever run: `prune` forgets closed jobs and delivered chain
writes nothing will read again. The metrics must not go down when it does, so they are read from
counters that triggers keep (see migration 3) rather than from counting rows.
"""

from __future__ import annotations

from grid_protocol.jobs import JobStatus
from supervisor.store.base import StoreBase


class RetentionStore(StoreBase):
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
