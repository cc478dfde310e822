"""Write then Read, Read live until the job ends on chain, WatchList, and `since`: the real
service, the real writer on a FIFO, the job on a real chain."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from grid_logger.reader import LogLine, read_log, watch_list
from tests.fixtures.contracts import Grid
from tests.grid_logger.helpers import LoggerProcess, claimed_job, collect, collect_until, running_writer


async def test_every_line_comes_back_in_order_with_its_timestamp(
    grid: Grid, logger: LoggerProcess, tmp_path: Path
) -> None:
    job = claimed_job(grid)
    lines = [f"line {i:04d} " + "x" * (i % 50) for i in range(500)] + ["", "\tunicode: é ✓", "last"]
    before = time.time_ns()
    with running_writer(tmp_path, job.writer_env(logger)) as writer:
        fd = writer.open()
        os.write(fd, "".join(f"{line}\n" for line in lines).encode())
        os.close(fd)
        got = await collect_until(logger, job, len(lines))
        assert writer.stop() == 0
    after = time.time_ns()
    assert [line.data.decode() for line in got] == lines
    stamps = [line.timestamp for line in got]
    assert stamps == sorted(stamps)
    assert before <= stamps[0] and stamps[-1] <= after


async def test_a_partial_last_line_is_sent_when_the_writer_stops(
    grid: Grid, logger: LoggerProcess, tmp_path: Path
) -> None:
    job = claimed_job(grid)
    with running_writer(tmp_path, job.writer_env(logger)) as writer:
        fd = writer.open()
        os.write(fd, b"complete\nno newline at the end")
        got = await collect_until(logger, job, 1)
        assert [line.data for line in got] == [b"complete"]
        assert writer.stop() == 0
        os.close(fd)
    assert [line.data for line in await collect(logger, job, follow=False)] == [
        b"complete",
        b"no newline at the end",
    ]


async def test_read_follows_live_and_ends_when_the_job_ends_on_chain(
    grid: Grid, logger: LoggerProcess, tmp_path: Path
) -> None:
    job = claimed_job(grid)
    received: list[LogLine] = []
    first = asyncio.Event()

    async def follow() -> None:
        async for line in read_log(logger.target, None, job.customer.address, job.name, job.sign):
            received.append(line)
            first.set()

    with running_writer(tmp_path, job.writer_env(logger)) as writer:
        fd = writer.open()
        reader = asyncio.create_task(follow())
        for i in range(20):
            os.write(fd, f"live {i}\n".encode())
            await asyncio.wait_for(_arrived(received, i + 1), 10)
        assert not reader.done(), "the job still runs: the stream stays open"
        assert writer.stop() == 0
        os.close(fd)
    await asyncio.sleep(1)
    assert not reader.done(), "no writer, but the job is still hot on chain: the stream stays open"
    await asyncio.to_thread(job.finish)
    await asyncio.wait_for(reader, 15)
    assert [line.data for line in received] == [f"live {i}".encode() for i in range(20)]


async def _arrived(received: list[LogLine], count: int) -> None:
    while len(received) < count:
        await asyncio.sleep(0.01)


async def test_since_skips_older_lines(grid: Grid, logger: LoggerProcess, tmp_path: Path) -> None:
    job = claimed_job(grid)
    with running_writer(tmp_path, job.writer_env(logger)) as writer:
        fd = writer.open()
        os.write(fd, b"old 1\nold 2\n")
        old = await collect_until(logger, job, 2)
        cut = old[-1].timestamp + 1
        time.sleep(0.01)
        os.write(fd, b"new 1\nnew 2\n")
        await collect_until(logger, job, 4)
        assert writer.stop() == 0
        os.close(fd)
    since = await collect(logger, job, follow=False, since_ns=cut)
    assert [line.data for line in since] == [b"new 1", b"new 2"]


async def test_watch_list_lists_the_customers_logs_and_follows_new_ones(
    grid: Grid, logger: LoggerProcess, tmp_path: Path
) -> None:
    job = claimed_job(grid, customer_index=1)
    other = claimed_job(grid, customer_index=2)
    for each in (job, other):
        with running_writer(tmp_path, each.writer_env(logger), name=each.name) as writer:
            fd = writer.open()
            os.write(fd, b"hello\n")
            await collect_until(logger, each, 1)
            writer.stop()
            os.close(fd)
    updates = watch_list(logger.target, None, job.customer.address, job.sign)
    first = await asyncio.wait_for(anext(updates), 10)
    assert job.name in first and other.name not in first
    newer = claimed_job(grid, customer_index=1)
    with running_writer(tmp_path, newer.writer_env(logger), name=newer.name) as writer:
        fd = writer.open()
        os.write(fd, b"hello\n")
        started = time.monotonic()
        second = await asyncio.wait_for(anext(updates), 10)
        assert newer.name in second and job.name in second
        assert time.monotonic() - started < 5, "a new log is announced at once, not at the 10 s tick"
        writer.stop()
        os.close(fd)
    await updates.aclose()
