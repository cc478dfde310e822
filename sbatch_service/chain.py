"""Reading jobs from the chain: MetaScheduler.jobs() gives the JobRepository, whose get(jobId) we read.

Every fetch of a script reads its job, so a read is one `eth_call` with calldata built once and its
answer decoded straight from the ABI: web3's contract-call machinery (and its validation middleware,
which asks the node for its chain id before each call) cost several times the call itself. Several
jobs (GetSBatches) are one JSON-RPC batch of those calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from eth_utils.abi import collapse_if_tuple, function_abi_to_4byte_selector
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractLogicError

from grid_protocol.abi import ABI_DIR, load_abi
from grid_protocol.jobs import Job
from grid_protocol.rpc import MalformedBatchAnswer, answers_in_order

T = TypeVar("T")
#: JSON-RPC error code of a call that reverted (EIP-1474), as anvil and geth answer it.
REVERTED = 3


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
        async def read() -> Job:
            repository = await self._repository()
            try:
                answer = await self._w3.eth.call({"to": repository, "data": self._get_selector + job_id})
            except ContractLogicError as error:
                raise JobNotOnChain(f"no job 0x{job_id.hex()} on chain") from error
            return self._decode(answer)

        return await self._retried(read, f"cannot read job 0x{job_id.hex()}")

    async def jobs(self, job_ids: list[bytes]) -> list[Job | JobNotOnChain]:
        """The jobs in the order asked, in one JSON-RPC batch; a job the chain has not is its error."""

        async def read() -> list[Job | JobNotOnChain]:
            repository = await self._repository()
            calls = [
                (
                    "eth_call",
                    [{"to": repository, "data": "0x" + (self._get_selector + job_id).hex()}, "latest"],
                )
                for job_id in job_ids
            ]
            got = await self._w3.provider.make_batch_request(calls)  # type: ignore[arg-type]
            try:
                answers = answers_in_order(len(job_ids), got)
            except MalformedBatchAnswer as bad:
                raise ChainUnavailable(str(bad)) from None
            return [self._answer(job_id, answer) for job_id, answer in zip(job_ids, answers, strict=True)]

        return await self._retried(read, f"cannot read {len(job_ids)} jobs")

    def _answer(self, job_id: bytes, answer: Any) -> Job | JobNotOnChain:
        error = answer.get("error") if isinstance(answer, dict) else "not an object"
        if isinstance(error, dict) and (
            error.get("code") == REVERTED or "revert" in str(error.get("message", "")).lower()
        ):
            return JobNotOnChain(f"no job 0x{job_id.hex()} on chain")
        if error is not None or not isinstance(answer.get("result"), str):
            raise ChainUnavailable(f"cannot read job 0x{job_id.hex()}: {error or answer!r:.200}")
        try:
            return self._decode(bytes.fromhex(answer["result"].removeprefix("0x")))
        except ValueError as bad:  # eth_abi's decoding errors are ValueErrors
            raise ChainUnavailable(f"cannot read job 0x{job_id.hex()}: {bad}") from None

    def _decode(self, answer: bytes) -> Job:
        (raw,) = self._w3.codec.decode(self._get_outputs, answer)
        return Job.from_tuple(raw)

    async def _retried(self, read: Callable[[], Awaitable[T]], what: str) -> T:
        """`read()` again on a transient failure, then ChainUnavailable."""
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(3),
                wait=wait_exponential(multiplier=0.2, max=2),
                retry=retry_if_exception_type((OSError, TimeoutError)),
                reraise=True,
            ):
                with attempt:
                    result: T = await read()
        except (OSError, TimeoutError) as error:
            raise ChainUnavailable(f"{what}: {error}") from error
        return result

    async def close(self) -> None:
        await self._w3.provider.disconnect()
