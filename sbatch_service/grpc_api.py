"""The supervisor API over gRPC (`sbatchapi.v1alpha1`): AuthAPI.Challenge and SBatchAPI.GetSBatch.

Challenge is open to anyone, so it is rate-limited per client address (RESOURCE_EXHAUSTED) and the
challenges it hands out are bounded in number (see `NonceBook`).

GetSBatch checks, in order, and refuses with:
- INVALID_ARGUMENT: malformed addresses, job id or key;
- UNAUTHENTICATED: unknown, used or expired challenge (checked, and the challenge consumed, before
  the costlier signature recovery), signature not from `provider_address`, no such job on chain, or
  the job does not have that provider and that customer;
- UNAVAILABLE: the chain cannot be read;
- PERMISSION_DENIED: the key is not the job's on-chain `batchLocationHash`;
- NOT_FOUND: no live script under the key.

GetSBatches (an extension: DeepSquare's service has GetSBatch only) answers several jobs of one
provider for one challenge: the request as a whole is refused INVALID_ARGUMENT (no jobs, more than
MAX_SCRIPTS_PER_REQUEST, a job twice, a malformed provider address), UNAUTHENTICATED (the challenge or
its signature, as above) or UNAVAILABLE (the chain cannot be read); past those, each job gets the
answer GetSBatch would have given it alone, as a code and a message beside the others'. Its jobs are
read from the chain in one request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote

import grpc
import structlog
from web3 import Web3

from grid_protocol.jobs import Job
from grid_protocol.proto import sbatch_pb2, sbatch_pb2_grpc
from sbatch_service.auth import NonceBook, PeerRateLimiter, recover_signer
from sbatch_service.chain import ChainUnavailable, JobNotOnChain
from sbatch_service.storage import ScriptStore
from supervisor.grpc_tls import ServerTls, add_port
from supervisor.redaction import redact_text

log = structlog.get_logger("sbatch_service.grpc")

JOB_ID_PATTERN = re.compile(r"^0x[0-9a-fA-F]{64}$")
KEY_PATTERN = re.compile(r"^[0-9a-f]{64}$")
ADDRESS_BYTES = 20
#: The largest request accepted; both requests are well under a kilobyte.
MAX_REQUEST_BYTES = 64 * 1024
#: IPv6 clients are limited per /64: one host usually holds a whole one.
IPV6_PREFIX = 64
#: Jobs one GetSBatches request may ask for.
MAX_SCRIPTS_PER_REQUEST = 64
#: The scripts one GetSBatches answer carries at most, in bytes (the client's default limit for a
#: message is 4 MiB); the jobs past it are answered RESOURCE_EXHAUSTED, to be asked for alone.
MAX_ANSWER_BYTES = 3 * 1024 * 1024


def peer_address(peer: str) -> str:
    """The client's address in a gRPC peer string (`ipv4:10.0.0.1:5000`, `ipv6:%5B::1%5D:5000`).

    IPv4-mapped IPv6 addresses count as the IPv4 address, other IPv6 addresses as their /64.
    """
    kind, _, rest = unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    host = rest.rsplit(":", 1)[0].strip("[]").split("%", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


class JobSource(Protocol):
    async def job(self, job_id: bytes) -> Job: ...

    async def jobs(self, job_ids: list[bytes]) -> list[Job | JobNotOnChain]:
        """The jobs in the order asked, in one request; raises ChainUnavailable."""
        ...


class Refusal(Exception):
    """A request refused with a gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GroupedExtensions:
    """Retention extensions asked while one is being written share the next write: a burst of
    fetches costs a few fsyncs instead of one each, and each fetch still answers only once its own
    extension is durable."""

    def __init__(self, store: ScriptStore, seconds: float) -> None:
        self._store, self._seconds = store, seconds
        self._lock = asyncio.Lock()
        self._next: set[str] = set()
        self._next_written: asyncio.Future[None] | None = None

    async def extend(self, key: str) -> None:
        self._next.add(key)
        if self._next_written is None:
            self._next_written = asyncio.ensure_future(self._write())
        await asyncio.shield(self._next_written)

    async def _write(self) -> None:
        async with self._lock:  # keys asked while the previous write runs wait here, together
            keys, self._next, self._next_written = self._next, set(), None
            await asyncio.to_thread(self._store.extend, keys, self._seconds)


@dataclass
class ScriptGate:
    """Decides whether a GetSBatch request gets its script; the servicer only translates."""

    nonces: NonceBook
    jobs: JobSource
    store: ScriptStore
    running_retention_seconds: float
    _extensions: GroupedExtensions = field(init=False)

    def __post_init__(self) -> None:
        self._extensions = GroupedExtensions(self.store, self.running_retention_seconds)

    async def fetch(self, request: sbatch_pb2.GetSBatchRequest) -> str:
        wanted = _wanted(request.job_id, request.batch_location_hash, request.customer_address)
        provider = _provider(request.provider_address)
        await self._authenticate(request.challenge, request.signed_challenge, provider)
        try:
            job = await self.jobs.job(wanted.job_id)
        except ChainUnavailable as error:
            raise Refusal(grpc.StatusCode.UNAVAILABLE, str(error)) from None
        except JobNotOnChain as error:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, str(error)) from None
        return await self._script(wanted, provider, job)

    async def fetch_many(self, request: sbatch_pb2.GetSBatchesRequest) -> list[str | Refusal]:
        """Each job's script or refusal, in the order asked; a Refusal raised refuses the request."""
        if not 0 < len(request.jobs) <= MAX_SCRIPTS_PER_REQUEST:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT, f"ask for 1 to {MAX_SCRIPTS_PER_REQUEST} jobs at once"
            )
        if len({entry.job_id.lower() for entry in request.jobs}) != len(request.jobs):
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "a job is asked for twice")
        provider = _provider(request.provider_address)
        answers: list[str | Refusal | None] = []
        wanted: list[Wanted] = []
        for entry in request.jobs:
            try:
                wanted.append(_wanted(entry.job_id, entry.batch_location_hash, entry.customer_address))
                answers.append(None)
            except Refusal as refusal:
                answers.append(refusal)
        await self._authenticate(request.challenge, request.signed_challenge, provider)
        try:
            jobs = await self.jobs.jobs([w.job_id for w in wanted]) if wanted else []
        except ChainUnavailable as error:
            raise Refusal(grpc.StatusCode.UNAVAILABLE, str(error)) from None
        outcomes = iter(
            await asyncio.gather(
                *(self._outcome(w, provider, job) for w, job in zip(wanted, jobs, strict=True))
            )
        )
        served: list[str | Refusal] = []
        size = 0
        for answer in answers:
            outcome = next(outcomes) if answer is None else answer
            if isinstance(outcome, str):
                size += len(outcome)
                if size > MAX_ANSWER_BYTES:
                    outcome = Refusal(
                        grpc.StatusCode.RESOURCE_EXHAUSTED, "answer full: ask for this job alone"
                    )
            served.append(outcome)
        return served

    async def _authenticate(self, challenge: bytes, signed: bytes, provider: str) -> None:
        # The nonce first: a challenge buys at most one signature recovery, whatever follows.
        if not await asyncio.to_thread(self.nonces.consume, challenge):
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "unknown, used or expired challenge")
        signer = recover_signer(challenge, signed)
        if signer is None or signer != provider:
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED, "the challenge is not signed by provider_address")

    async def _outcome(self, wanted: Wanted, provider: str, job: Job | JobNotOnChain) -> str | Refusal:
        if isinstance(job, JobNotOnChain):
            return Refusal(grpc.StatusCode.UNAUTHENTICATED, str(job))
        try:
            return await self._script(wanted, provider, job)
        except Refusal as refusal:
            return refusal

    async def _script(self, wanted: Wanted, provider: str, job: Job) -> str:
        """The job's script for its provider, after the checks that need the job as the chain has it."""
        if job.provider != provider or job.customer != wanted.customer:
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED, "the job does not belong to this provider and customer"
            )
        if job.definition.batch_location_hash.lower() != wanted.key:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, "the key is not the job's batchLocationHash")
        script = await asyncio.to_thread(self.store.get, wanted.key)
        if script is None:
            raise Refusal(grpc.StatusCode.NOT_FOUND, "no script under this key (unknown or expired)")
        if job.status.is_hot:
            await self._extensions.extend(wanted.key)
        return script


@dataclass(frozen=True)
class Wanted:
    """One job's part of a request, checked for form."""

    job_id: bytes
    key: str
    customer: str


def _wanted(job_id: str, key: str, customer: bytes) -> Wanted:
    if len(customer) != ADDRESS_BYTES:
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "addresses must be 20 raw bytes")
    if not JOB_ID_PATTERN.fullmatch(job_id):
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "job_id must be 0x followed by 64 hex digits")
    if not KEY_PATTERN.fullmatch(key):
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "batch_location_hash must be 64 lowercase hex digits")
    return Wanted(bytes.fromhex(job_id[2:]), key, Web3.to_checksum_address(customer))


def _provider(address: bytes) -> str:
    if len(address) != ADDRESS_BYTES:
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "addresses must be 20 raw bytes")
    return Web3.to_checksum_address(address)


class AuthServicer(sbatch_pb2_grpc.AuthAPIServicer):
    def __init__(self, nonces: NonceBook, limiter: PeerRateLimiter | None = None) -> None:
        self._nonces = nonces
        self._limiter = limiter

    async def Challenge(
        self, request: sbatch_pb2.ChallengeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sbatch_pb2.ChallengeResponse:
        if self._limiter is not None and not self._limiter.allow(peer_address(context.peer())):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "too many challenges asked from this address: retry later"
            )
            raise AssertionError("unreachable: abort raises")
        return sbatch_pb2.ChallengeResponse(challenge=await asyncio.to_thread(self._nonces.issue))


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
            await context.abort(refusal.code, _logged(refusal, "script refused", job_id=request.job_id))
            raise AssertionError("unreachable: abort raises") from None
        log.info("script served", job_id=request.job_id, key=request.batch_location_hash)
        return sbatch_pb2.GetSBatchResponse(sbatch=script, grid_logger_url=self._logger_url)

    async def GetSBatches(
        self, request: sbatch_pb2.GetSBatchesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> sbatch_pb2.GetSBatchesResponse:
        try:
            outcomes = await self._gate.fetch_many(request)
        except Refusal as refusal:
            await context.abort(refusal.code, _logged(refusal, "scripts refused", jobs=len(request.jobs)))
            raise AssertionError("unreachable: abort raises") from None
        answers = []
        for entry, outcome in zip(request.jobs, outcomes, strict=True):
            if isinstance(outcome, Refusal):
                reason = _logged(outcome, "script refused", job_id=entry.job_id)
                answers.append(
                    sbatch_pb2.SBatchAnswer(job_id=entry.job_id, code=outcome.code.value[0], message=reason)
                )
            else:
                log.info("script served", job_id=entry.job_id, key=entry.batch_location_hash)
                answers.append(sbatch_pb2.SBatchAnswer(job_id=entry.job_id, sbatch=outcome))
        served = sum(1 for outcome in outcomes if isinstance(outcome, str))
        log.info("scripts answered", jobs=len(answers), served=served)
        return sbatch_pb2.GetSBatchesResponse(answers=answers, grid_logger_url=self._logger_url)


def _logged(refusal: Refusal, event: str, **fields: object) -> str:
    """The refusal's message as the client gets it, logged: the chain's errors may name the RPC URL,
    and with it an API key."""
    reason = redact_text(refusal.message)
    log.info(event, **fields, code=refusal.code.name, reason=reason)
    return reason


async def start_grpc_server(
    address: str,
    nonces: NonceBook,
    gate: ScriptGate,
    logger_url: str,
    *,
    limiter: PeerRateLimiter | None = None,
    tls: ServerTls | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start serving on address (host:port, port 0 for any); returns the server and its port.

    `limiter` bounds Challenge calls per client address (None: unlimited); `tls` serves TLS, and
    mutual TLS when it names a client CA.
    """
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)])
    sbatch_pb2_grpc.add_AuthAPIServicer_to_server(AuthServicer(nonces, limiter), server)  # type: ignore[no-untyped-call]
    sbatch_pb2_grpc.add_SBatchAPIServicer_to_server(  # type: ignore[no-untyped-call]
        SBatchServicer(gate, logger_url), server
    )
    port = add_port(server, address, tls)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return server, port
