"""The logs at rest: encrypted, authenticated, bound to their owner and name, cut clean after a
crash, deleted after their retention."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import grpc
import pytest

from grid_logger.reader import read_request
from grid_logger.store import (
    HEADER_BYTES,
    LogStore,
    MasterKeyError,
    StoreError,
    create_master_key,
    load_master_key,
)
from grid_protocol.proto import log_pb2_grpc
from tests.fixtures.contracts import Grid
from tests.grid_logger.helpers import (
    LoggerProcess,
    claimed_job,
    collect,
    collect_until,
    running_writer,
    wait_for,
)

SECRET_LINE = b"the customer's secret result 0123456789"


async def test_stored_logs_are_not_readable_as_plain_text(
    grid: Grid, logger: LoggerProcess, tmp_path: Path
) -> None:
    job = claimed_job(grid)
    with running_writer(tmp_path, job.writer_env(logger)) as writer:
        fd = writer.open()
        os.write(fd, SECRET_LINE + b"\n" + SECRET_LINE.upper() + b"\n")
        assert len(await collect_until(logger, job, 2)) == 2
        writer.stop()
        os.close(fd)
    files = [path for path in logger.storage.rglob("*") if path.is_file()]
    assert files, "the service stored the log"
    for path in files:
        content = path.read_bytes()
        for needle in (SECRET_LINE, SECRET_LINE.upper(), SECRET_LINE[:12], b"secret"):
            assert needle not in content, path
    log_file = logger.storage / job.customer.address.lower() / f"{job.name}.log"
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(log_file.parent.stat().st_mode) == 0o700
    store = LogStore(logger.storage, load_master_key(logger.workdir / "master.key"))
    cursor = store.cursor(
        job.customer.address.lower(), job.name, store.key(job.customer.address.lower(), job.name)
    )
    assert [record.data for record in cursor.read(10)] == [SECRET_LINE, SECRET_LINE.upper()]
    cursor.close()


def test_a_record_cut_by_a_crash_is_removed_and_a_tampered_one_is_refused(tmp_path: Path) -> None:
    create_master_key(tmp_path / "key")
    store = LogStore(tmp_path / "logs", load_master_key(tmp_path / "key"))
    user, name = "0x" + "11" * 20, "0x" + "22" * 32
    appender, key = store.open_append(user, name)
    for i in range(3):
        appender.append(f"line {i}".encode(), 1_000 + i)
    appender.close()
    path = store.path(user, name)
    complete = path.stat().st_size
    with path.open("ab") as file:
        file.write(b"\x00\x00\x01\x00partial")  # a record head and a few bytes: a crash mid-write
    cursor = store.cursor(user, name, key)
    assert [r.data for r in cursor.read(10)] == [b"line 0", b"line 1", b"line 2"], "readers stop before it"
    cursor.close()
    appender, _ = store.open_append(user, name)
    assert path.stat().st_size == complete and appender.count == 3
    appender.append(b"line 3", 1_003)
    appender.close()
    cursor = store.cursor(user, name, key)
    assert [r.timestamp for r in cursor.read(10)] == [1_000, 1_001, 1_002, 1_003]
    cursor.close()
    raw = bytearray(path.read_bytes())
    raw[HEADER_BYTES + 40] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="fails authentication"):
        store.cursor(user, name, key).read(10)


def test_a_log_moved_under_another_owner_or_key_does_not_open(tmp_path: Path) -> None:
    create_master_key(tmp_path / "key")
    create_master_key(tmp_path / "other")
    store = LogStore(tmp_path / "logs", load_master_key(tmp_path / "key"))
    owner, thief, name = "0x" + "11" * 20, "0x" + "33" * 20, "0x" + "22" * 32
    appender, _ = store.open_append(owner, name)
    appender.append(b"private", 1)
    appender.close()
    (tmp_path / "logs" / thief).mkdir(mode=0o700)
    os.link(store.path(owner, name), store.path(thief, name))
    with pytest.raises(StoreError):
        store.key(thief, name)
    with pytest.raises(StoreError):
        LogStore(tmp_path / "logs", load_master_key(tmp_path / "other")).key(owner, name)


def test_the_master_key_file_must_be_private_and_32_bytes(tmp_path: Path) -> None:
    path = tmp_path / "key"
    create_master_key(path)
    with pytest.raises(FileExistsError):
        create_master_key(path)
    assert len(load_master_key(path)) == 32
    path.chmod(0o644)
    with pytest.raises(MasterKeyError, match="group or others"):
        load_master_key(path)
    short = tmp_path / "short"
    short.write_bytes(b"0123")
    short.chmod(0o600)
    with pytest.raises(MasterKeyError, match="32 bytes"):
        load_master_key(short)


async def test_a_tampered_log_is_data_loss_for_its_reader(
    grid: Grid, logger: LoggerProcess, tmp_path: Path
) -> None:
    job = claimed_job(grid)
    with running_writer(tmp_path, job.writer_env(logger)) as writer:
        fd = writer.open()
        os.write(fd, b"one\ntwo\n")
        await collect_until(logger, job, 2)
        writer.stop()
        os.close(fd)
    path = logger.storage / job.customer.address.lower() / f"{job.name}.log"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with grpc.insecure_channel(logger.target) as channel:
        api = log_pb2_grpc.LoggerAPIStub(channel)  # type: ignore[no-untyped-call]
        call = api.Read(
            read_request(job.customer.address, job.name, job.sign), metadata=(("grid-log-follow", "0"),)
        )
        received = []
        with pytest.raises(grpc.RpcError) as refused:
            for message in call:
                received.append(message.data)
    assert refused.value.code() == grpc.StatusCode.DATA_LOSS
    assert received == [b"one"], "records before the tampered one are still served"


async def test_retention_deletes_logs_not_written_for_longer_than_it(grid: Grid, tmp_path: Path) -> None:
    job, recent = claimed_job(grid), claimed_job(grid)
    logger = LoggerProcess(
        tmp_path / "service",
        grid.anvil.http_url,
        grid.deployment.meta_scheduler,
        extra_env={"GRID_LOGGER_RETENTION_DAYS": "1", "GRID_LOGGER_PURGE_INTERVAL_SECONDS": "0.5"},
    ).start()
    try:
        for each in (job, recent):
            with running_writer(tmp_path, each.writer_env(logger), name=each.name) as writer:
                fd = writer.open()
                os.write(fd, b"kept for a day\n")
                await collect_until(logger, each, 1)
                writer.stop()
                os.close(fd)
        old = logger.storage / job.customer.address.lower() / f"{job.name}.log"
        two_days_ago = time.time() - 2 * 86400
        os.utime(old, (two_days_ago, two_days_ago))
        wait_for("the old log to be purged", lambda: not old.exists(), 15)
        assert (logger.storage / recent.customer.address.lower() / f"{recent.name}.log").exists()
        assert await collect(logger, job, follow=False) == []
        assert [line.data for line in await collect(logger, recent, follow=False)] == [b"kept for a day"]
    finally:
        logger.stop()
