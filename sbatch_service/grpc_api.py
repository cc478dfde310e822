"""The supervisor API over gRPC (`sbatchapi.v1alpha1`): AuthAPI.Challenge and SBatchAPI.GetSBatch.

GetSBatch checks, in order, and refuses with:
- INVALID_ARGUMENT: malformed addresses, job id or key;
- UNAUTHENTICATED: signature not from `provider_address`, unknown, used or expired challenge,
  no such job on chain, or the job does not have that provider and that customer;
- UNAVAILABLE: the chain cannot be read;
- PERMISSION_DENIED: the key is not the job's on-chain `batchLocationHash`;
- NOT_FOUND: no live script under the key.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Protocol

import grpc
import structlog
from web3 import Web3

from sbatch_service.auth import NonceBook, recover_signer
from sbatch_service.chain import ChainUnavailable, JobNotOnChain, OnChainJob
from sbatch_service.proto import sbatch_pb2, sbatch_pb2_grpc
from sbatch_service.storage import ScriptStore

log = structlog.get_logger("sbatch_service.grpc")

JOB_ID_PATTERN = re.compile(r"^0x[0-9a-fA-F]{64}$")
KEY_PATTERN = re.compile(r"^[0-9a-f]{64}$")
ADDRESS_BYTES = 20


class JobSource(Protocol):
    async def job(self, job_id: bytes) -> OnChainJob: ...


class Refusal(Exception):
    """A request refused with a gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ScriptGate:
    """Decides whether a GetSBatch request gets its script; the servicer only translates."""

    nonces: NonceBook
    jobs: JobSource
    store: ScriptStore
    running_retention_seconds: float

    async def fetch(self, request: sbatch_pb2.GetSBatchRequest) -> str:
        if len(request.provider_address) != ADDRESS_BYTES or len(request.customer_address) != ADDRESS_BYTES:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "addresses must be 20 raw bytes")
        if not JOB_ID_PATTERN.fullmatch(request.job_id):
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "job_id must be 0x followed by 64 hex digits")
        key = request.batch_location_hash
        if not KEY_PATTERN.fullmatch(key):
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT, "batch_location_hash must be 64 lowercase hex digits"
            )
        provider = Web3.to_checksum_address(request.provider_address)
        customer = Web3.to_checksum_address(request.customer_address)
        signer = recover_signer(request.challenge, request.signed_challenge)
        if signer is None or signer != provider:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "the challenge is not signed by provider_address")
        if not self.nonces.consume(request.challenge):
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "unknown, used or expired challenge")
        try:
            job = await self.jobs.job(bytes.fromhex(request.job_id[2:]))
        except ChainUnavailable as error:
            raise Refusal(grpc.StatusCode.UNAVAILABLE, str(error)) from None
        except JobNotOnChain as error:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, str(error)) from None
        if job.provider != provider or job.customer != customer:
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED, "the job does not belong to this provider and customer"
            )
        if job.batch_location_hash.lower() != key:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, "the key is not the job's batchLocationHash")
        script = await asyncio.to_thread(self.store.get, key)
        if script is None:
            raise Refusal(grpc.StatusCode.NOT_FOUND, "no script under this key (unknown or expired)")
        if job.is_hot:
            await asyncio.to_thread(self.store.extend, key, self.running_retention_seconds)
        return script


class AuthServicer(sbatch_pb2_grpc.AuthAPIServicer):
    def __init__(self, nonces: NonceBook) -> None:
        self._nonces = nonces

    async def Challenge(
        self, request: sbatch_pb2.ChallengeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sbatch_pb2.ChallengeResponse:
        return sbatch_pb2.ChallengeResponse(challenge=self._nonces.issue())


class SBatchServicer(sbatch_pb2_grpc.SBatchAPIServicer):
    def __init__(self, gate: ScriptGate, logger_url: str) -> None:
        self._gate = gate
        self._logger_url = logger_url

    async def GetSBatch(
        self, request: sbatch_pb2.GetSBatchRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sbatch_pb2.GetSBatchResponse:
        try:
            script = await self._gate.fetch(request)
        except Refusal as refusal:
            log.info("script refused", job_id=request.job_id, code=refusal.code.name, reason=refusal.message)
            await context.abort(refusal.code, refusal.message)
            raise AssertionError("unreachable: abort raises") from None
        log.info("script served", job_id=request.job_id, key=request.batch_location_hash)
        return sbatch_pb2.GetSBatchResponse(sbatch=script, grid_logger_url=self._logger_url)


async def start_grpc_server(
    address: str, nonces: NonceBook, gate: ScriptGate, logger_url: str
) -> tuple[grpc.aio.Server, int]:
    """Start serving on address (host:port, port 0 for any); returns the server and its port."""
    server = grpc.aio.server()
    sbatch_pb2_grpc.add_AuthAPIServicer_to_server(AuthServicer(nonces), server)  # type: ignore[no-untyped-call]
    sbatch_pb2_grpc.add_SBatchAPIServicer_to_server(  # type: ignore[no-untyped-call]
        SBatchServicer(gate, logger_url), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return server, port
