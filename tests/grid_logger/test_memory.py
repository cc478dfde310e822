"""Bounded memory with many readers that do not read, and a writer they never hold up: the real
service as a process, its resident memory read from /proc, on loopback."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc

from grid_logger.reader import read_request, stub
from grid_protocol.proto import log_pb2
from tests.fixtures.contracts import Grid
from tests.grid_logger.helpers import LoggerProcess, claimed_job, collect_until, running_writer

READERS = 120
LINES = 4000
LINE = b"m" * 1000
#: Resident memory the stalled readers may add: each could otherwise hold the 4 MB log.
BOUND_KIB = 48 * 1024


async def test_stalled_readers_cost_bounded_memory_and_never_hold_up_the_writer(
    grid: Grid, tmp_path: Path
) -> None:
    job = claimed_job(grid)
    logger = LoggerProcess(
        tmp_path / "service",
        grid.anvil.http_url,
        grid.deployment.meta_scheduler,
        extra_env={"GRID_LOGGER_MAX_READERS": str(READERS)},
    ).start()
    try:
        with running_writer(tmp_path, job.writer_env(logger)) as writer:
            fd = writer.open()
            os.write(fd, b"".join(b"%05d " % i + LINE + b"\n" for i in range(LINES)))
            await collect_until(logger, job, LINES, timeout=60)
            baseline = logger.rss_kib()
            # Without BDP probing the stalled client keeps its windows at 64 KiB, as a slow reader's
            # network would: the service then waits on each stream's flow control.
            async with grpc.aio.insecure_channel(
                logger.target, options=[("grpc.http2.bdp_probe", 0)]
            ) as channel:
                api = stub(channel)
                calls = [
                    api.Read(read_request(job.customer.address, job.name, job.sign)) for _ in range(READERS)
                ]
                for call in calls:  # each stream is open and served: then nobody reads any more
                    assert isinstance(await call.read(), log_pb2.ReadResponse)
                peak = 0
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    peak = max(peak, logger.rss_kib())
                    await asyncio.sleep(0.1)
                one_more = api.Read(read_request(job.customer.address, job.name, job.sign))
                try:
                    await one_more.read()
                    raise AssertionError("a reader beyond max_readers was served")
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                started = time.monotonic()
                os.write(fd, b"".join(b"after %04d\n" % i for i in range(1000)))
                calls[0].cancel()  # one reader slot for the check; the others stay stalled
                got = await collect_until(logger, job, LINES + 1000, timeout=30)
                assert time.monotonic() - started < 10
                assert got[-1].data == b"after 0999"
                print(f"rss baseline {baseline} KiB, peak with {READERS} stalled readers {peak} KiB")
                assert peak - baseline < BOUND_KIB
                for call in calls:
                    call.cancel()
            writer.stop()
            os.close(fd)
    finally:
        logger.stop()
