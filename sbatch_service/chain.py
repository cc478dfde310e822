"""Reading jobs from the chain: MetaScheduler.jobs() gives the JobRepository, whose get(jobId) we read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractLogicError

from grid_contracts.artifacts import ABI_DIR, load_artifact

HOT_STATUSES = frozenset({0, 1, 2, 3})


class ChainUnavailable(RuntimeError):
    """The RPC endpoint could not answer."""


class JobNotOnChain(LookupError):
    """JobRepository.get reverted: no such job."""


@dataclass(frozen=True)
class OnChainJob:
    """The fields of JobRepository.get that decide who may fetch a script."""

    job_id: bytes
    status: int
    customer: str
    provider: str
    batch_location_hash: str

    @property
    def is_hot(self) -> bool:
        return self.status in HOT_STATUSES


def job_from_tuple(raw: Any) -> OnChainJob:
    """Decode the Job struct (field order of reference-abi/IJobRepository.json)."""
    job_id, status, customer, provider, definition = raw[0], raw[1], raw[2], raw[3], raw[4]
    return OnChainJob(
        job_id=bytes(job_id),
        status=int(status),
        customer=str(customer),
        provider=str(provider),
        batch_location_hash=str(definition[4]),
    )


class JobReader:
    """Reads jobs over JSON-RPC; transient failures are retried, then reported as ChainUnavailable."""

    def __init__(self, rpc_url: str, metascheduler_address: str, abi_dir: Path | None = None) -> None:
        self._w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
        self._abi_dir = abi_dir or ABI_DIR
        self._scheduler = self._w3.eth.contract(
            address=AsyncWeb3.to_checksum_address(metascheduler_address),
            abi=load_artifact("MetaScheduler", self._abi_dir)["abi"],
        )
        self._jobs: Any = None

    async def _repository(self) -> Any:
        if self._jobs is None:
            address = await self._scheduler.functions.jobs().call()
            self._jobs = self._w3.eth.contract(
                address=address, abi=load_artifact("JobRepository", self._abi_dir)["abi"]
            )
        return self._jobs

    async def job(self, job_id: bytes) -> OnChainJob:
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
        return job_from_tuple(raw)

    async def close(self) -> None:
        await self._w3.provider.disconnect()
