"""Reading jobs from the chain: MetaScheduler.jobs() gives the JobRepository, whose get(jobId) we read.

Every fetch of a script reads its job, so a read is one `eth_call` with calldata built once and its
answer decoded straight from the ABI: web3's contract-call machinery (and its validation middleware,
which asks the node for its chain id before each call) cost several times the call itself.
"""

from __future__ import annotations

from pathlib import Path

from eth_utils.abi import collapse_if_tuple, function_abi_to_4byte_selector
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
        self._w3.middleware_onion.remove("validation")
        self._abi_dir = abi_dir or ABI_DIR
        (get,) = (
            entry
            for entry in load_abi("JobRepository", self._abi_dir)
            if entry.get("type") == "function" and entry.get("name") == "get"
        )
        self._get_selector = function_abi_to_4byte_selector(get)  # type: ignore[arg-type]
        self._get_outputs = [collapse_if_tuple(dict(output)) for output in get["outputs"]]
        self._scheduler = self._w3.eth.contract(
            address=AsyncWeb3.to_checksum_address(metascheduler_address),
            abi=load_abi("MetaScheduler", self._abi_dir),
        )
        self._repository_address: str | None = None

    async def _repository(self) -> str:
        """The JobRepository's address, asked of the MetaScheduler once."""
        if self._repository_address is None:
            self._repository_address = str(await self._scheduler.functions.jobs().call())
        return self._repository_address

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
                    answer = await self._w3.eth.call({"to": repository, "data": self._get_selector + job_id})
                    (raw,) = self._w3.codec.decode(self._get_outputs, answer)
        except (OSError, TimeoutError) as error:
            raise ChainUnavailable(f"cannot read job 0x{job_id.hex()}: {error}") from error
        except ContractLogicError as error:
            raise JobNotOnChain(f"no job 0x{job_id.hex()} on chain") from error
        return Job.from_tuple(raw)

    async def close(self) -> None:
        await self._w3.provider.disconnect()
