"""Job log figures: the real `grid-logger serve`, the real writer on a FIFO, a following reader.

1. Latency from a line written into the FIFO to the same line received by a following Read
   (median and p95 over `--samples` lines written one at a time, each stamped with its write time).
2. One job's throughput: `--lines` lines of `--line-bytes` bytes written as fast as the FIFO takes
   them, until the reader has the last one, in lines/s and bytes/s (fsync on, as deployed). The
   lines must fit the writer's buffer (20,000 by default): a job that outruns the service by more
   than that loses its oldest unsent lines, which this run would wait for forever.

Run: .venv/bin/python benchmarks/logger_bench.py [--samples 300] [--lines 20000] [--line-bytes 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grid_dev.anvil import start_anvil  # noqa: E402
from grid_logger.reader import read_log  # noqa: E402
from tests.fixtures.contracts import deploy_grid  # noqa: E402
from tests.grid_logger.helpers import Job, LoggerProcess, claimed_job, start_writer  # noqa: E402


async def latency(logger: LoggerProcess, job_fd: int, job: Job, samples: int) -> list[float]:
    """Seconds from write to receipt, one line at a time."""
    delays: list[float] = []
    lines = read_log(logger.target, None, job.customer.address, job.name, job.sign)
    for i in range(samples):
        sent = time.perf_counter()
        os.write(job_fd, f"latency {i} {sent:.9f}\n".encode())
        line = await anext(lines)
        assert line.data.startswith(f"latency {i} ".encode())
        delays.append(time.perf_counter() - sent)
        await asyncio.sleep(0.002)
    await lines.aclose()
    return delays


async def throughput(logger: LoggerProcess, job_fd: int, job: Job, count: int, size: int) -> float:
    """Seconds from the first write to the last line received."""
    payload = b"t" * max(0, size - 8)
    lines = read_log(logger.target, None, job.customer.address, job.name, job.sign, since_ns=time.time_ns())
    started = time.perf_counter()

    def produce() -> None:
        chunk = b"".join(b"%07d " % i + payload + b"\n" for i in range(count))
        view = memoryview(chunk)
        while view:
            written = os.write(job_fd, view[: 1 << 16])
            view = view[written:]

    producer = asyncio.get_running_loop().run_in_executor(None, produce)
    received = 0
    async for line in lines:
        if line.data.startswith(b"latency"):
            continue
        received += 1
        if received == count:
            break
    elapsed = time.perf_counter() - started
    await producer
    await lines.aclose()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--line-bytes", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="logger-bench-") as folder:
        work = Path(folder)
        anvil = start_anvil(log_path=work / "anvil.log")
        try:
            grid = deploy_grid(anvil)
            job = claimed_job(grid)
            logger = LoggerProcess(work / "service", anvil.http_url, grid.deployment.meta_scheduler).start()
            writer = start_writer(work, job.writer_env(logger))
            try:
                fd = writer.open()
                delays = asyncio.run(latency(logger, fd, job, args.samples))
                elapsed = asyncio.run(throughput(logger, fd, job, args.lines, args.line_bytes))
                os.close(fd)
            finally:
                writer.stop()
                logger.stop()
        finally:
            anvil.stop()
    delays.sort()
    p95 = delays[max(0, int(len(delays) * 0.95) - 1)]
    print(
        f"write-to-read latency over {len(delays)} lines: median {statistics.median(delays) * 1000:.2f} ms, "
        f"p95 {p95 * 1000:.2f} ms"
    )
    print(
        f"one job's throughput: {args.lines} lines of {args.line_bytes} bytes in {elapsed:.2f} s: "
        f"{args.lines / elapsed:,.0f} lines/s, {args.lines * args.line_bytes / elapsed / 1e6:.2f} MB/s"
    )


if __name__ == "__main__":
    main()
