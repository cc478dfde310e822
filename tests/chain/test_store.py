"""The SQLite state store: migrations, cursor with checkpoints, jobs and the outbox."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from grid_protocol.jobs import JobStatus
from supervisor.store import MIGRATIONS, Cursor, OutboxState, Store, StoreError, TxAttempt


def test_new_file_is_migrated_to_the_latest_version_in_wal_mode(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    assert store.schema_version == len(MIGRATIONS)
    mode = sqlite3.connect(tmp_path / "state.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()
    reopened = Store.open(tmp_path / "state.db")  # a second open applies nothing and keeps the data
    assert reopened.schema_version == len(MIGRATIONS)
    reopened.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this program knows"):
        Store.open(tmp_path / "state.db")


def test_a_file_that_is_not_sqlite_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        Store.open(tmp_path / "state.db")


def test_the_file_is_bound_to_one_chain(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    store.bind_chain_id(31337)
    store.bind_chain_id(31337)
    with pytest.raises(StoreError, match="belongs to chain id 31337, but the RPC serves chain id 1"):
        store.bind_chain_id(1)


def test_a_refused_deployment_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    store.set_meta("meta_scheduler", "0x" + "aa" * 20)  # bound to a contract, not yet to a chain
    with pytest.raises(StoreError, match="belongs to the MetaScheduler"):
        store.bind_deployment(31337, "0x" + "bb" * 20)
    assert store.get_meta("chain_id") is None  # both bindings are one transaction
    store.bind_deployment(31337, "0x" + "AA" * 20)
    assert (store.get_meta("chain_id"), store.get_meta("meta_scheduler")) == ("31337", "0x" + "aa" * 20)
    store.close()


def test_a_re_claim_replaces_the_attempt_and_notes_its_slurm_job_together(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")

    def claim(block: int) -> bool:
        return store.record_claim(
            "0x01", customer="0xc", max_duration_minute=5, definition={}, claimed_block=block
        )

    assert claim(1)
    assert not claim(1)
    store.set_job_slurm_id("0x01", 42)
    with pytest.raises(RuntimeError), store.transaction():
        assert claim(2)
        raise RuntimeError("the handler failed after the claim")
    job = store.get_job("0x01")
    assert job is not None and (job.claimed_block, job.slurm_job_id) == (1, 42)
    assert store.orphan_slurm_jobs() == []
    assert claim(2)
    job = store.get_job("0x01")
    assert job is not None and (job.claimed_block, job.slurm_job_id) == (2, None)
    assert store.orphan_slurm_jobs() == [(42, "0x01")]
    store.close()


def test_the_submit_intent_belongs_to_one_attempt(tmp_path: Path) -> None:
    """Set before sbatch, it survives a reopen (a crash) and a repeated claim event, and a new
    attempt (a re-claim) starts without one."""
    store = Store.open(tmp_path / "state.db")

    def claim(block: int) -> bool:
        return store.record_claim(
            "0x01", customer="0xc", max_duration_minute=5, definition={}, claimed_block=block
        )

    assert claim(1)
    assert store.get_job("0x01").submit_intent_at is None  # type: ignore[union-attr]
    store.update_job("0x01", submit_intent_at=1234.5)
    store.close()
    store = Store.open(tmp_path / "state.db")
    assert not claim(1)
    assert store.get_job("0x01").submit_intent_at == 1234.5  # type: ignore[union-attr]
    assert claim(2)
    assert store.get_job("0x01").submit_intent_at is None  # type: ignore[union-attr]
    store.close()


def test_cursor_and_checkpoints(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    assert store.get_cursor("main") is None
    for n in range(10):
        store.set_cursor("main", Cursor(n, f"0x{n:064x}"), keep_checkpoints=4)
    assert store.get_cursor("main") == Cursor(9, f"0x{9:064x}")
    assert [c.block_number for c in store.checkpoints("main")] == [9, 8, 7, 6]
    store.drop_checkpoints_after("main", 7)
    assert [c.block_number for c in store.checkpoints("main")] == [7, 6]
    assert store.get_cursor("other") is None


def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    with pytest.raises(RuntimeError), store.transaction():
        store.set_cursor("main", Cursor(5, "0x05"))
        store.upsert_job("0x01", JobStatus.SCHEDULED)
        raise RuntimeError("handler failed")
    assert store.get_cursor("main") is None
    assert store.get_job("0x01") is None


def test_jobs_round_trip(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    store.upsert_job(
        "0xab", JobStatus.SCHEDULED, customer="0xc", max_duration_minute=18, definition={"gpus": 1}
    )
    store.upsert_job("0xab", JobStatus.RUNNING)
    store.set_job_slurm_id("0xab", 42)
    store.set_job_reported_status("0xab", JobStatus.RUNNING)
    job = store.get_job("0xab")
    assert job is not None
    assert (job.status, job.customer, job.max_duration_minute, job.definition) == (
        JobStatus.RUNNING,
        "0xc",
        18,
        {"gpus": 1},
    )
    assert (job.slurm_job_id, job.last_reported_status) == (42, JobStatus.RUNNING)
    assert [j.job_id for j in store.list_jobs([JobStatus.RUNNING])] == ["0xab"]
    assert store.list_jobs([JobStatus.FINISHED]) == []
    with pytest.raises(KeyError):
        store.set_job_slurm_id("0xunknown", 1)


def test_outbox_lifecycle_and_dedup(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    first = store.enqueue(kind="report", to_address="0xto", data=b"\x01", value=2**200, dedup_key="k")
    assert store.enqueue(kind="report", to_address="0xto", data=b"\x01", dedup_key="k") == first
    second = store.enqueue(kind="report", to_address="0xto", data=b"\x02")
    assert [a.id for a in store.actions(OutboxState.QUEUED)] == [first, second]
    assert store.get_action(first).value == 2**200  # type: ignore[union-attr]
    attempt = TxAttempt("0xh1", first, 7, b"raw", 21000, 10**30, 10**9, None, 1.0, None)
    store.record_attempt(first, attempt)
    action = store.get_action(first)
    assert action is not None and (action.state, action.nonce, action.tx_hash) == (
        OutboxState.SENT,
        7,
        "0xh1",
    )
    assert store.attempts(first) == [attempt]
    assert store.max_sent_nonce() == 7 and store.outbox_depth() == 2
    store.mark_mined(first, tx_hash="0xh1", block_number=3, receipt_status=1)
    store.mark_failed(second, "NoJob()")
    assert store.outbox_depth() == 0
    assert store.get_action(second).error == "NoJob()"  # type: ignore[union-attr]


def test_claims_mined_beyond_the_cursor_still_take_room(tmp_path: Path) -> None:
    """A claim mined but not yet followed is neither in flight nor held: `claims_mined_after` counts
    it, a batch claim by the jobs it may take."""
    store = Store.open(tmp_path / "state.db")
    sizes = (1, 20, 1, 3, 5)
    ids = [
        store.enqueue(kind="claim_next_job", to_address="0xto", data=bytes([i]), claims=size)
        for i, size in enumerate(sizes)
    ]
    for action_id, block, status in zip(ids[:3], (5, 9, 12), (1, 1, 0), strict=True):
        store.mark_mined(action_id, tx_hash=f"0x{action_id}", block_number=block, receipt_status=status)
    store.enqueue(kind="report", to_address="0xto", data=b"r")
    assert store.claims_mined_after("claim_next_job", 4) == 21, "the reverted claim at block 12 took no job"
    assert store.claims_mined_after("claim_next_job", 5) == 20
    assert store.claims_mined_after("claim_next_job", 9) == 0
    assert store.open_actions("claim_next_job") == 2
    assert store.open_claims("claim_next_job") == 8
    assert store.open_claims("claim_next_cancelling_job") == 0


def test_retention_forgets_closed_jobs_and_delivered_writes_but_no_count(tmp_path: Path) -> None:
    from supervisor.ops.state import transaction_figures

    store = Store.open(tmp_path / "state.db")
    nonce = 0

    def delivered(kind: str, serial_key: str | None, *, attempts: int = 1) -> int:
        nonlocal nonce
        action = store.enqueue(kind=kind, to_address="0x" + "11" * 20, data=b"x", serial_key=serial_key)
        for n in range(attempts):
            attempt = TxAttempt(f"0x{nonce:04x}{n}", action, nonce, b"raw", 21000, 1, 1, None, 1.0, None)
            store.record_attempt(action, attempt)
        store.mark_mined(action, tx_hash=f"0x{nonce:04x}{attempts - 1}", block_number=1, receipt_status=1)
        nonce += 1
        return action

    for i in range(5):
        job = f"0x{i:064x}"
        store.record_claim(
            job, customer="0x" + "22" * 20, max_duration_minute=5, definition={}, claimed_block=i
        )
        delivered("provider_set_job_status", job, attempts=2 if i == 0 else 1)
        if i < 3:
            store.update_job(job, closed=True)
    delivered("claim_next_job", None)
    failed = store.enqueue(kind="refuse_job", to_address="0x" + "11" * 20, data=b"x")
    store.mark_failed(failed, "MetaScheduledScheduledStatusOnly(current=5)")
    before = transaction_figures(store)
    counts_before = store.job_counts()

    assert store.prune(time.time() - 3600) == (0, 0)  # nothing is old enough
    assert store.prune(time.time() + 1) == (3, 5)  # 3 closed jobs; their 3 reports, the claim, the refusal
    assert [j.job_id for j in store.open_jobs()] == [f"0x{3:064x}", f"0x{4:064x}"]
    remaining = store.connection.execute("SELECT serial_key FROM outbox ORDER BY id").fetchall()
    assert [r[0] for r in remaining] == [f"0x{3:064x}", f"0x{4:064x}"]  # open jobs keep their reports
    assert store.connection.execute("SELECT COUNT(*) FROM tx_attempt").fetchone()[0] == 2
    assert transaction_figures(store) == before
    assert store.job_counts() == counts_before
    store.close()


def test_open_jobs_follow_every_commit_of_this_connection_and_of_others(tmp_path: Path) -> None:
    """The open records are read again only after a commit, whoever made it."""
    store = Store.open(tmp_path / "state.db")
    store.record_claim("0x01", customer="0xc", max_duration_minute=5, definition={"a": 1}, claimed_block=1)
    first = store.open_jobs()
    assert [job.job_id for job in first] == ["0x01"] and first[0].definition == {"a": 1}
    assert store.open_jobs() == first
    store.update_job("0x01", status=int(JobStatus.RUNNING))
    assert [job.status for job in store.open_jobs()] == [JobStatus.RUNNING]
    with pytest.raises(RuntimeError), store.transaction():
        store.update_job("0x01", note="undone")
        assert store.open_jobs()[0].note == "undone"  # the transaction sees its own write
        raise RuntimeError("rolled back")
    assert store.open_jobs()[0].note is None
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    other.execute("UPDATE job SET note = 'from another process' WHERE job_id = '0x01'")
    assert store.open_jobs()[0].note == "from another process"
    other.execute("UPDATE job SET closed = 1")
    assert store.open_jobs() == []
    other.close()
    store.close()


def test_open_jobs_after_own_commits_read_again_only_the_jobs_written(tmp_path: Path) -> None:
    """After this connection's commits, only the rows it wrote are read again; the list is the same
    as a full read's, order included (a claim recorded, one closed, one deleted, one re-claimed)."""
    store = Store.open(tmp_path / "state.db")
    truth = Store.open(tmp_path / "state.db")  # another connection: reads every row each time
    for n in range(1, 6):
        store.record_claim(
            f"0x{n:02x}", customer="0xc", max_duration_minute=5, definition={}, claimed_block=n
        )
    assert store.open_jobs() == truth.open_jobs()
    statements: list[str] = []
    store.connection.set_trace_callback(statements.append)
    steps: list[Callable[[], object]] = [
        lambda: store.update_job("0x03", status=int(JobStatus.RUNNING)),
        lambda: store.update_job("0x02", closed=True),
        lambda: store.delete_job("0x04"),
        lambda: store.record_claim(
            "0x06", customer="0xc", max_duration_minute=5, definition={}, claimed_block=6
        ),
        lambda: store.record_claim(
            "0x01", customer="0xd", max_duration_minute=7, definition={}, claimed_block=9
        ),
        lambda: store.add_extra_minutes("0x05", 30),
    ]
    for step in steps:
        step()
        statements.clear()
        assert store.open_jobs() == truth.open_jobs()
        full_reads = [s for s in statements if "closed = 0 ORDER BY" in s]
        assert full_reads == [], statements
    assert [j.job_id for j in store.open_jobs()] == ["0x01", "0x03", "0x05", "0x06"]
    assert store.open_jobs()[0].customer == "0xd" and store.open_jobs()[2].extra_minutes == 30
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    other.execute("UPDATE job SET note = 'elsewhere' WHERE job_id = '0x05'")
    other.close()
    statements.clear()
    assert store.open_jobs()[2].note == "elsewhere"  # another's commit: everything read again
    assert any("closed = 0 ORDER BY" in s for s in statements)
    store.close()
    truth.close()
