"""The log service down, killed or restarted while a job writes: what survives, exactly, and the
job is never held up. The real service (SIGKILLed), the real writer, a FIFO, a real chain."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

from grid_logger.writer import dropped_notice
from tests.fixtures.contracts import Grid
from tests.grid_logger.helpers import LoggerProcess, claimed_job, collect_until, running_writer, wait_for


def own_logger(grid: Grid, folder: Path) -> LoggerProcess:
    return LoggerProcess(folder, grid.anvil.http_url, grid.deployment.meta_scheduler).start()


def dropped_reported(stderr: str) -> int:
    return sum(
        int(count) for count in re.findall(r"(\d+) lines dropped: the writer's buffer was full", stderr)
    )


async def test_a_kill_and_restart_mid_stream_loses_and_doubles_no_line(grid: Grid, tmp_path: Path) -> None:
    """SIGKILL while batches are in flight, lines written while it is down, then a restart: every
    line, once, in order (the buffer, 20,000 lines, holds the outage)."""
    job = claimed_job(grid)
    logger = own_logger(grid, tmp_path / "service")
    total = 3000
    try:
        with running_writer(tmp_path, job.writer_env(logger)) as writer:
            fd = writer.open()
            written = 0

            def produce() -> None:
                nonlocal written
                for i in range(total):
                    os.write(fd, f"stream {i:05d}\n".encode())
                    written = i + 1
                    if i % 10 == 0:
                        time.sleep(0.002)

            producer = threading.Thread(target=produce)
            producer.start()
            wait_for("a third of the lines written", lambda: written > total // 3, 30)
            logger.kill()
            killed_at = written
            wait_for("more lines written while the service is down", lambda: written > killed_at + 300, 30)
            logger.start()
            producer.join(timeout=60)
            got = await collect_until(logger, job, total, timeout=60)
            assert writer.stop() == 0
            os.close(fd)
        assert [line.data for line in got] == [f"stream {i:05d}".encode() for i in range(total)]
        assert "log service unreachable" in writer.stderr()
    finally:
        logger.stop()


async def test_past_the_buffer_the_oldest_unsent_lines_are_dropped_with_one_notice(
    grid: Grid, tmp_path: Path
) -> None:
    """Buffer of 100 lines: 10 lines delivered, the service killed, 250 lines written, the service
    back. Survive: the 10, one notice for the 150 oldest unsent lines, and the newest 100."""
    job = claimed_job(grid)
    logger = own_logger(grid, tmp_path / "service")
    try:
        with running_writer(tmp_path, job.writer_env(logger, GRID_LOGGER_BUFFER_LINES="100")) as writer:
            fd = writer.open()
            os.write(fd, "".join(f"before {i}\n" for i in range(10)).encode())
            await collect_until(logger, job, 10)
            logger.kill()
            for i in range(250):
                os.write(fd, f"during {i}\n".encode())
            wait_for("the writer to drop 150 lines", lambda: dropped_reported(writer.stderr()) == 150, 30)
            logger.start()
            got = await collect_until(logger, job, 111, timeout=30)
            assert writer.stop() == 0
            os.close(fd)
        expected = (
            [f"before {i}".encode() for i in range(10)]
            + [dropped_notice(150, 100, 8 * 1024 * 1024)]
            + [f"during {i}".encode() for i in range(150, 250)]
        )
        assert [line.data for line in got] == expected
    finally:
        logger.stop()


async def test_the_job_is_never_held_up_by_a_service_that_is_down_or_hung(grid: Grid, tmp_path: Path) -> None:
    """4 MiB into the FIFO (64 times what it holds) with the service hung (SIGSTOP), then down: the
    writes return at once; stopping the writer takes its drain time at most."""
    job = claimed_job(grid)
    logger = own_logger(grid, tmp_path / "service")
    assert logger.process is not None
    try:
        environment = job.writer_env(logger, GRID_LOGGER_BUFFER_LINES="1000", GRID_LOGGER_DRAIN_SECONDS="2")
        with running_writer(tmp_path, environment) as writer:
            fd = writer.open()
            os.write(fd, b"first\n")
            await collect_until(logger, job, 1)
            os.kill(logger.process.pid, signal.SIGSTOP)
            line = b"z" * 1023 + b"\n"
            started = time.monotonic()
            for _ in range(4096):
                os.write(fd, line)
            assert time.monotonic() - started < 10, "the FIFO was not drained while the service hung"
            os.kill(logger.process.pid, signal.SIGCONT)
            logger.kill()
            started = time.monotonic()
            for _ in range(4096):
                os.write(fd, line)
            assert time.monotonic() - started < 10, "the FIFO was not drained while the service was down"
            started = time.monotonic()
            assert writer.stop() == 0
            assert time.monotonic() - started < 2 + 5
            os.close(fd)
        assert not writer.fifo.exists(), "the writer removes its FIFO"
        assert "not received" in writer.stderr()
    finally:
        if logger.process is not None and logger.process.poll() is None:
            os.kill(logger.process.pid, signal.SIGCONT)
        logger.stop()
