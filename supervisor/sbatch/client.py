"""Fetching a job's batch script from the sbatch service (PROTOCOL.md section 8).

The supervisor proves it is the job's provider by signing a fresh challenge with its key, and checks
that the script it receives hashes to the key recorded on chain, so a tampered script never runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

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

#: Fresh challenges tried before an UNAUTHENTICATED answer counts as a refusal.
CHALLENGE_ATTEMPTS = 3

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
            answer = await retry_call(
                lambda: self._fetch_once(job_id, customer, batch_location_hash),
                retry=_challenge_refused,
                attempts=CHALLENGE_ATTEMPTS,
                initial_s=0.0,
                max_s=0.0,
                jitter_s=0.0,
                on_retry=lambda failure: log.info(
                    "sbatch service refused the challenge, asking with a new one", attempt=failure.attempt
                ),
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in _PERMANENT:
                raise ScriptRefused(f"{_PERMANENT[code]} ({exc.details()})") from None
            raise SbatchServiceUnavailable(
                f"sbatch service at {self._target}: {code.name} {exc.details() or ''}".strip()
            ) from None
        digest = hashlib.sha256(answer.sbatch.encode()).hexdigest()
        if digest != batch_location_hash.lower():
            raise ScriptRefused(
                f"the script received hashes to {digest}, not to its key {batch_location_hash}"
            )
        return FetchedScript(answer.sbatch, answer.grid_logger_url)

    async def _challenge(self) -> bytes:
        answer = await self._auth.Challenge(sbatch_pb2.ChallengeRequest(), timeout=self._timeout)
        return bytes(answer.challenge)

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
