"""Fetching a job's batch script from the sbatch service (PROTOCOL.md section 8).

The supervisor proves it is the job's provider by signing a fresh challenge with its key, and checks
that the script it receives hashes to the key recorded on chain, so a tampered script never runs.
Several jobs' scripts are asked for at once (GetSBatches, one challenge for them all) where the
service has that extension; from a service that answers UNIMPLEMENTED, one job a call.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import structlog
from web3 import Web3

from grid_protocol.proto import sbatch_pb2
from grid_protocol.proto.sbatch_client import async_stubs
from supervisor.chain.keys import Signer
from supervisor.config import SbatchServiceSettings
from supervisor.grpc_tls import ClientTls, aio_channel
from supervisor.retry import retry_call

log = structlog.get_logger("supervisor.sbatch")
T = TypeVar("T")

#: Fresh challenges tried before an UNAUTHENTICATED answer counts as a refusal.
CHALLENGE_ATTEMPTS = 3
#: Jobs asked for in one GetSBatches request (the service's bound).
SCRIPTS_PER_REQUEST = 64

# Refusals that will not change by asking again: the job fails with the reason on chain.
_PERMANENT = {
    grpc.StatusCode.NOT_FOUND: "the script is unknown to the sbatch service or has expired",
    grpc.StatusCode.PERMISSION_DENIED: "the sbatch service refused: the key does not match the job on chain",
    grpc.StatusCode.UNAUTHENTICATED: "the sbatch service refused this provider for the job",
    grpc.StatusCode.INVALID_ARGUMENT: "the sbatch service refused the request as malformed",
}


def _challenge_refused(exc: Exception) -> bool:
    """UNAUTHENTICATED: the challenge may have been lost (the service restarted): ask a new one."""
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAUTHENTICATED


class ScriptError(Exception):
    """The script cannot be had."""


class ScriptRefused(ScriptError):
    """A definitive refusal, or a script that does not match its key: the job must fail."""


class SbatchServiceUnavailable(ScriptError):
    """The service cannot be reached now: retry later."""


@dataclass(frozen=True)
class FetchedScript:
    script: str
    grid_logger_url: str


@dataclass(frozen=True)
class WantedScript:
    """One job's script to fetch: the job, its customer and its on-chain batchLocationHash."""

    job_id: str
    customer: str
    batch_location_hash: str


class SbatchClient:
    """One gRPC channel to the sbatch service, reused for every fetch.

    `tls=True` verifies the service against the system's roots; `client_tls` (which implies TLS)
    pins a CA, presents a client certificate for mutual TLS or overrides the checked server name.
    """

    def __init__(
        self,
        target: str,
        signer: Signer,
        *,
        tls: bool = False,
        timeout_s: float = 15.0,
        client_tls: ClientTls | None = None,
    ) -> None:
        self._target = target
        self._signer = signer
        self._timeout = timeout_s
        if client_tls is None and tls:
            client_tls = ClientTls()
        self._channel = aio_channel(target, client_tls)
        self._auth, self._sbatch = async_stubs(self._channel)
        #: Whether the service has GetSBatches: unknown (None) until it answers one.
        self._batches: bool | None = None

    @classmethod
    def from_settings(cls, settings: SbatchServiceSettings, signer: Signer) -> SbatchClient:
        """The client the `[sbatch]` section describes."""
        return cls(
            settings.grpc_target, signer, timeout_s=settings.timeout_seconds, client_tls=settings.client_tls
        )

    async def close(self) -> None:
        await self._channel.close()

    async def fetch(self, job_id: str, customer: str, batch_location_hash: str) -> FetchedScript:
        """The script stored under `batch_location_hash` for `job_id`, checked against that hash.

        A challenge can be lost between issue and use (the service restarted, or expired it): an
        UNAUTHENTICATED answer is asked again with a fresh challenge, up to CHALLENGE_ATTEMPTS times,
        before it counts as a refusal of this provider.
        """
        try:
            answer = await self._with_fresh_challenges(
                lambda: self._fetch_once(job_id, customer, batch_location_hash)
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc.code(), exc.details()) from None
        return _checked(answer.sbatch, answer.grid_logger_url, batch_location_hash)

    async def fetch_many(self, wanted: Sequence[WantedScript]) -> dict[str, FetchedScript | ScriptError]:
        """Each job's script, or why it cannot be had (by job id): SCRIPTS_PER_REQUEST to a request
        where the service has GetSBatches, else `fetch` for each, side by side."""
        outcomes: dict[str, FetchedScript | ScriptError] = {}
        for start in range(0, len(wanted), SCRIPTS_PER_REQUEST):
            chunk = wanted[start : start + SCRIPTS_PER_REQUEST]
            answered = await self._fetch_chunk(chunk) if self._batches is not False else {}
            alone = [w for w in chunk if w.job_id not in answered]
            alone_outcomes = await asyncio.gather(*map(self._outcome, alone))
            answered.update(zip((w.job_id for w in alone), alone_outcomes, strict=True))
            outcomes.update(answered)
        return outcomes

    async def _outcome(self, wanted: WantedScript) -> FetchedScript | ScriptError:
        try:
            return await self.fetch(wanted.job_id, wanted.customer, wanted.batch_location_hash)
        except ScriptError as error:
            return error

    async def _fetch_chunk(self, chunk: Sequence[WantedScript]) -> dict[str, FetchedScript | ScriptError]:
        """One GetSBatches for the chunk; the jobs it leaves out are to be asked for alone (all of them
        when the service has no GetSBatches or refuses the request's form)."""
        try:
            answer = await self._with_fresh_challenges(lambda: self._fetch_many_once(chunk))
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                if self._batches is None:
                    log.info("the sbatch service has no GetSBatches: one job a call", target=self._target)
                self._batches = False
                return {}
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                log.warning("GetSBatches refused the request: one job a call", error=exc.details())
                return {}
            error = self._error(code, exc.details())
            return {w.job_id: error for w in chunk}
        self._batches = True
        if len(answer.answers) != len(chunk) or any(
            a.job_id != w.job_id for a, w in zip(answer.answers, chunk, strict=False)
        ):
            unusable = SbatchServiceUnavailable(
                f"sbatch service at {self._target}: GetSBatches answered other jobs than those asked"
            )
            return {w.job_id: unusable for w in chunk}
        outcomes: dict[str, FetchedScript | ScriptError] = {}
        for w, one in zip(chunk, answer.answers, strict=True):
            code = _status_code(one.code)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                continue  # the answer was full: asked for alone
            try:
                if code != grpc.StatusCode.OK:
                    raise self._error(code, one.message)
                outcomes[w.job_id] = _checked(one.sbatch, answer.grid_logger_url, w.batch_location_hash)
            except ScriptError as error:
                outcomes[w.job_id] = error
        return outcomes

    async def _with_fresh_challenges(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` (which asks a challenge of its own) again on UNAUTHENTICATED, up to
        CHALLENGE_ATTEMPTS times: the challenge may have been lost (the service restarted)."""
        return await retry_call(
            call,
            retry=_challenge_refused,
            attempts=CHALLENGE_ATTEMPTS,
            initial_s=0.0,
            max_s=0.0,
            jitter_s=0.0,
            on_retry=lambda failure: log.info(
                "sbatch service refused the challenge, asking with a new one", attempt=failure.attempt
            ),
        )

    def _error(self, code: grpc.StatusCode | None, details: str | None) -> ScriptError:
        if code in _PERMANENT:
            return ScriptRefused(f"{_PERMANENT[code]} ({details})")
        name = code.name if code is not None else "unknown status"
        return SbatchServiceUnavailable(f"sbatch service at {self._target}: {name} {details or ''}".strip())

    async def _challenge(self) -> bytes:
        answer = await self._auth.Challenge(sbatch_pb2.ChallengeRequest(), timeout=self._timeout)
        return bytes(answer.challenge)

    async def _fetch_many_once(self, chunk: Sequence[WantedScript]) -> sbatch_pb2.GetSBatchesResponse:
        challenge = await self._challenge()
        signature = self._signer.sign_message(challenge).signature
        return await self._sbatch.GetSBatches(
            sbatch_pb2.GetSBatchesRequest(
                jobs=[
                    sbatch_pb2.WantedSBatch(
                        job_id=w.job_id,
                        batch_location_hash=w.batch_location_hash,
                        customer_address=bytes.fromhex(Web3.to_checksum_address(w.customer)[2:]),
                    )
                    for w in chunk
                ],
                signed_challenge=bytes(signature),
                challenge=challenge,
                provider_address=bytes.fromhex(self._signer.address[2:]),
            ),
            timeout=self._timeout,
        )

    async def _fetch_once(self, job_id: str, customer: str, batch_location_hash: str) -> Any:
        challenge = await self._challenge()
        signature = self._signer.sign_message(challenge).signature
        return await self._sbatch.GetSBatch(
            sbatch_pb2.GetSBatchRequest(
                batch_location_hash=batch_location_hash,
                signed_challenge=bytes(signature),
                challenge=challenge,
                provider_address=bytes.fromhex(self._signer.address[2:]),
                customer_address=bytes.fromhex(Web3.to_checksum_address(customer)[2:]),
                job_id=job_id,
            ),
            timeout=self._timeout,
        )


def _checked(script: str, grid_logger_url: str, batch_location_hash: str) -> FetchedScript:
    digest = hashlib.sha256(script.encode()).hexdigest()
    if digest != batch_location_hash.lower():
        raise ScriptRefused(f"the script received hashes to {digest}, not to its key {batch_location_hash}")
    return FetchedScript(script, grid_logger_url)


def _status_code(value: int) -> grpc.StatusCode | None:
    """The gRPC status of a number in an answer; None for one gRPC does not define."""
    return next((code for code in grpc.StatusCode if code.value[0] == value), None)
