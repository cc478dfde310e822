"""The jobs the log service decides on: who is the customer, who the provider, is it over.

Read through the MetaScheduler's JobRepository (`jobs()`, then `get(jobId)`), and kept a few
seconds per job, so a thousand readers of one job cost one chain read per period.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractLogicError

from grid_protocol.abi import ABI_DIR, load_abi
from grid_protocol.jobs import Job


class ChainUnavailable(RuntimeError):
    """The RPC endpoint did not answer."""


class JobNotFound(LookupError):
    """JobRepository.get reverted: no such job."""


class JobSource(Protocol):
    async def job(self, job_id: bytes) -> Job: ...


class JobReader:
    """JobRepository.get over JSON-RPC."""

    def __init__(self, rpc_url: str, meta_scheduler: str, abi_dir: Path | None = None) -> None:
        self._w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
        self._abi_dir = abi_dir or ABI_DIR
        self._scheduler = self._w3.eth.contract(
            address=AsyncWeb3.to_checksum_address(meta_scheduler),
            abi=load_abi("MetaScheduler", self._abi_dir),
        )
        self._jobs: Any = None

    async def job(self, job_id: bytes) -> Job:
        try:
            if self._jobs is None:
                address = await self._scheduler.functions.jobs().call()
                self._jobs = self._w3.eth.contract(
                    address=address, abi=load_abi("JobRepository", self._abi_dir)
                )
            raw = await self._jobs.functions.get(job_id).call()
        except ContractLogicError:
            raise JobNotFound(f"no job 0x{job_id.hex()} on chain") from None
        except Exception as error:  # aiohttp, timeouts and web3's RPC errors alike: the chain did not answer
            raise ChainUnavailable(f"cannot read job 0x{job_id.hex()}: {type(error).__name__}") from None
        return Job.from_tuple(raw)

    async def close(self) -> None:
        await self._w3.provider.disconnect()


class JobCache:
    """Jobs read at most once per `ttl_seconds` each, one read in flight per job, `max_jobs` kept."""

    def __init__(
        self,
        source: JobSource,
        ttl_seconds: float,
        *,
        max_jobs: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._ttl = ttl_seconds
        self._max = max_jobs
        self._clock = clock
        self._jobs: OrderedDict[bytes, tuple[float, Job]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[Job]] = {}

    async def get(self, job_id: bytes, *, max_age: float | None = None) -> Job:
        """The job as read at most `ttl_seconds` ago (or `max_age`, when shorter)."""
        ttl = self._ttl if max_age is None else min(self._ttl, max_age)
        cached = self._jobs.get(job_id)
        if cached is not None and self._clock() - cached[0] < ttl:
            return cached[1]
        pending = self._pending.get(job_id)
        if pending is not None and max_age is None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._pending[job_id] = future
        try:
            job = await self._source.job(job_id)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved here: waiters get it, and asyncio does not report it unseen
            raise
        finally:
            self._pending.pop(job_id, None)
        future.set_result(job)
        self._jobs[job_id] = (self._clock(), job)
        self._jobs.move_to_end(job_id)
        while len(self._jobs) > self._max:
            self._jobs.popitem(last=False)
        return job
