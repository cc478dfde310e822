"""A bounded flood of AuthAPI.Challenge calls over loopback, with the service's memory sampled.

Shared by the abuse tests and `benchmarks/challenge_flood.py`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from grid_protocol.proto import sbatch_pb2
from grid_protocol.proto.sbatch_client import async_stubs

RSS_SAMPLE_S = 0.05


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class Flood:
    """Counts of one flood, updated while it runs."""

    count: int
    sent: int = 0
    issued: int = 0
    refused: int = 0
    other_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rss_before_kib: int = 0
    rss_peak_kib: int = 0
    rss_after_kib: int = 0

    @property
    def finished(self) -> bool:
        return self.sent >= self.count

    @property
    def rss_growth_kib(self) -> int:
        return self.rss_after_kib - self.rss_before_kib


async def flood_challenges(
    target: str, flood: Flood, *, pid: int, concurrency: int = 32, timeout_s: float = 120.0
) -> Flood:
    """Send `flood.count` Challenge calls to `target` from `concurrency` tasks on one channel."""
    channel = grpc.aio.insecure_channel(target)
    auth, _ = async_stubs(channel)
    flood.rss_before_kib = flood.rss_peak_kib = rss_kib(pid)
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            flood.rss_peak_kib = max(flood.rss_peak_kib, rss_kib(pid))
            await asyncio.sleep(RSS_SAMPLE_S)

    async def worker() -> None:
        while flood.sent < flood.count:
            flood.sent += 1
            try:
                await auth.Challenge(sbatch_pb2.ChallengeRequest(), timeout=10)
                flood.issued += 1
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    flood.refused += 1
                else:
                    flood.other_errors.append(f"{exc.code().name}: {exc.details()}")

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        flood.seconds = time.perf_counter() - started
        done.set()
        await sampler
        await channel.close()
    flood.rss_after_kib = rss_kib(pid)
    flood.rss_peak_kib = max(flood.rss_peak_kib, flood.rss_after_kib)
    return flood
