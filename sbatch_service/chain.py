"""Reading jobs from the chain: MetaScheduler.jobs() gives the JobRepository, whose get(jobId) we read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractLogicError

from grid_protocol.abi import ABI_DIR, load_abi
from grid_protocol.jobs import Job


class ChainUnavailable(RuntimeError):
    """The RPC endpoint could not answer."""


class JobNotOnChain(LookupError):
    """JobRepository.get reverted: no such job."""


class JobReader:
    """Reads jobs over JSON-RPC; transient failures are retried, then reported as ChainUnavailable."""

    def __init__(self, rpc_url: str, metascheduler_address: str, abi_dir: Path | None = None) -> None:
        self._w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
        self._abi_dir = abi_dir or ABI_DIR
        self._scheduler = self._w3.eth.contract(
            address=AsyncWeb3.to_checksum_address(metascheduler_address),
            abi=load_abi("MetaScheduler", self._abi_dir),
        )
        self._jobs: Any = None

    async def _repository(self) -> Any:
        if self._jobs is None:
            address = await self._scheduler.functions.jobs().call()
            self._jobs = self._w3.eth.contract(address=address, abi=load_abi("JobRepository", self._abi_dir))
        return self._jobs

    async def job(self, job_id: bytes) -> Job:
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(3),
                wait=wait_exponential(multiplier=0.2, max=2),
                retry=retry_if_exception_type((OSError, TimeoutError)),
                reraise=True,
            ):
                with attempt:
                    repository = await self._repository()
                    raw = await repository.functions.get(job_id).call()
        except (OSError, TimeoutError) as error:
            raise ChainUnavailable(f"cannot read job 0x{job_id.hex()}: {error}") from error
        except ContractLogicError as error:
            raise JobNotOnChain(f"no job 0x{job_id.hex()} on chain") from error
        return Job.from_tuple(raw)

    async def close(self) -> None:
        await self._w3.provider.disconnect()
