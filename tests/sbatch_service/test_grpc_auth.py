"""gRPC GetSBatch against a real anvil with the deployed protocol: who gets a script, refusal codes."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from eth_account.signers.local import LocalAccount

from grid_protocol.proto import sbatch_pb2
from grid_protocol.proto.sbatch_client import AsyncAuthAPI, AsyncSBatchAPI, async_stubs
from sbatch_service.auth import NonceBook
from sbatch_service.chain import JobReader
from sbatch_service.grpc_api import ScriptGate, start_grpc_server
from sbatch_service.storage import ScriptStore
from tests.fixtures.contracts import CREDIT, WORKED_EXAMPLE_DEFINITION, Grid
from tests.fixtures.sbatch import sign_challenge

SCRIPT = "#!/bin/bash\ntrue\necho 'served'\n"
UNSTORED_KEY = hashlib.sha256(b"never stored").hexdigest()
OTHER_SCRIPT = "#!/bin/bash\ntrue\necho other\n"
LOGGER_URL = "https://logs.example.test"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Jobs:
    """Jobs on chain, each meta-scheduled to providers[0] for customers[0]."""

    with_script: str
    unstored_key: str
    other_script: str


@dataclass
class Api:
    auth: AsyncAuthAPI
    sbatch: AsyncSBatchAPI
    clock: Clock
    store: CountingStore


def job_with_key(grid: Grid, key: str) -> str:
    definition = (*WORKED_EXAMPLE_DEFINITION[:4], key, *WORKED_EXAMPLE_DEFINITION[5:])
    job_id = grid.request_job(grid.customers[0], 200 * CREDIT, definition)
    grid.schedule(job_id, grid.providers[0])
    return "0x" + job_id.hex()


@pytest.fixture(scope="module")
def jobs(grid: Grid) -> Jobs:
    for provider in grid.providers[:2]:
        grid.register_provider(provider)
    return Jobs(
        with_script=job_with_key(grid, hashlib.sha256(SCRIPT.encode()).hexdigest()),
        unstored_key=job_with_key(grid, UNSTORED_KEY),
        other_script=job_with_key(grid, hashlib.sha256(OTHER_SCRIPT.encode()).hexdigest()),
    )


class CountingStore(ScriptStore):
    """The real store, counting its retention-extension transactions."""

    extensions = 0

    def extend(self, keys: Collection[str], seconds: float) -> None:
        self.extensions += 1
        super().extend(keys, seconds)


@pytest.fixture
async def api(grid: Grid, jobs: Jobs, tmp_path: Path) -> AsyncIterator[Api]:
    clock = Clock()
    store = CountingStore(tmp_path / "scripts.sqlite3")
    store.put(SCRIPT, 3600)
    store.put(OTHER_SCRIPT, 3600)
    nonces = NonceBook(ttl_seconds=600, clock=clock)
    reader = JobReader(grid.anvil.http_url, grid.deployment.meta_scheduler)
    gate = ScriptGate(nonces, reader, store, running_retention_seconds=86400)
    server, port = await start_grpc_server("127.0.0.1:0", nonces, gate, LOGGER_URL)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Api(*async_stubs(channel), clock, store)
    finally:
        await channel.close()
        await server.stop(grace=None)
        await reader.close()
        store.close()


async def request(
    api: Api,
    job_id: str,
    key: str,
    *,
    signer: LocalAccount,
    provider: LocalAccount,
    customer: LocalAccount,
    challenge: bytes | None = None,
) -> sbatch_pb2.GetSBatchRequest:
    if challenge is None:
        challenge = (await api.auth.Challenge(sbatch_pb2.ChallengeRequest())).challenge
    return sbatch_pb2.GetSBatchRequest(
        batch_location_hash=key,
        signed_challenge=sign_challenge(signer, challenge),
        challenge=challenge,
        provider_address=bytes.fromhex(provider.address[2:]),
        customer_address=bytes.fromhex(customer.address[2:]),
        job_id=job_id,
    )


async def refusal_code(api: Api, message: sbatch_pb2.GetSBatchRequest) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.sbatch.GetSBatch(message)
    code: grpc.StatusCode = caught.value.code()
    return code


def key_of(script: str) -> str:
    return hashlib.sha256(script.encode()).hexdigest()


async def test_the_jobs_provider_gets_the_exact_script(grid: Grid, jobs: Jobs, api: Api) -> None:
    provider, customer = grid.providers[0], grid.customers[0]
    message = await request(
        api, jobs.with_script, key_of(SCRIPT), signer=provider, provider=provider, customer=customer
    )
    answer = await api.sbatch.GetSBatch(message)
    assert answer.sbatch == SCRIPT
    assert hashlib.sha256(answer.sbatch.encode()).hexdigest() == message.batch_location_hash
    assert answer.grid_logger_url == LOGGER_URL


async def test_fetches_at_once_share_their_retention_writes(
    grid: Grid, jobs: Jobs, api: Api, tmp_path: Path
) -> None:
    """A burst of fetches of hot jobs: every one answered, both scripts kept for the running
    retention, in fewer write transactions than fetches."""
    provider, customer = grid.providers[0], grid.customers[0]
    asked = [(jobs.with_script, SCRIPT), (jobs.other_script, OTHER_SCRIPT)] * 10
    messages = [
        await request(api, job_id, key_of(script), signer=provider, provider=provider, customer=customer)
        for job_id, script in asked
    ]
    before = time.time()
    answers = await asyncio.gather(*(api.sbatch.GetSBatch(m) for m in messages))
    assert [a.sbatch for a in answers] == [script for _, script in asked]
    with sqlite3.connect(tmp_path / "scripts.sqlite3") as db:
        expiries = [row[0] for row in db.execute("SELECT expires_at FROM scripts")]
    assert len(expiries) == 2 and all(e >= before + 86400 for e in expiries)
    assert 1 <= api.store.extensions < len(asked)


async def test_challenge_format(api: Api) -> None:
    import base64
    import json

    body = json.loads((await api.auth.Challenge(sbatch_pb2.ChallengeRequest())).challenge)
    assert body["message"] == "login"
    assert len(base64.b64decode(body["nonce"])) == 16


async def test_signature_with_v_0_or_1_is_accepted(grid: Grid, jobs: Jobs, api: Api) -> None:
    provider, customer = grid.providers[0], grid.customers[0]
    message = await request(
        api, jobs.with_script, key_of(SCRIPT), signer=provider, provider=provider, customer=customer
    )
    signature = message.signed_challenge
    message.signed_challenge = signature[:64] + bytes([signature[64] - 27])
    assert (await api.sbatch.GetSBatch(message)).sbatch == SCRIPT


async def test_wrong_signer_is_unauthenticated(grid: Grid, jobs: Jobs, api: Api) -> None:
    message = await request(
        api,
        jobs.with_script,
        key_of(SCRIPT),
        signer=grid.providers[1],
        provider=grid.providers[0],
        customer=grid.customers[0],
    )
    assert await refusal_code(api, message) == grpc.StatusCode.UNAUTHENTICATED


async def test_another_provider_is_unauthenticated(grid: Grid, jobs: Jobs, api: Api) -> None:
    other = grid.providers[1]
    message = await request(
        api, jobs.with_script, key_of(SCRIPT), signer=other, provider=other, customer=grid.customers[0]
    )
    assert await refusal_code(api, message) == grpc.StatusCode.UNAUTHENTICATED


async def test_another_customer_is_unauthenticated(grid: Grid, jobs: Jobs, api: Api) -> None:
    provider = grid.providers[0]
    message = await request(
        api, jobs.with_script, key_of(SCRIPT), signer=provider, provider=provider, customer=grid.customers[1]
    )
    assert await refusal_code(api, message) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_replayed_challenge_is_unauthenticated(grid: Grid, jobs: Jobs, api: Api) -> None:
    provider, customer = grid.providers[0], grid.customers[0]
    message = await request(
        api, jobs.with_script, key_of(SCRIPT), signer=provider, provider=provider, customer=customer
    )
    assert (await api.sbatch.GetSBatch(message)).sbatch == SCRIPT
    assert await refusal_code(api, message) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_challenge_never_issued_is_unauthenticated(grid: Grid, jobs: Jobs, api: Api) -> None:
    provider, customer = grid.providers[0], grid.customers[0]
    forged = b'{"message":"login","nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}'
    message = await request(
        api,
        jobs.with_script,
        key_of(SCRIPT),
        signer=provider,
        provider=provider,
        customer=customer,
        challenge=forged,
    )
    assert await refusal_code(api, message) == grpc.StatusCode.UNAUTHENTICATED


async def test_an_expired_challenge_is_unauthenticated(grid: Grid, jobs: Jobs, api: Api) -> None:
    provider, customer = grid.providers[0], grid.customers[0]
    message = await request(
        api, jobs.with_script, key_of(SCRIPT), signer=provider, provider=provider, customer=customer
    )
    api.clock.now += 600
    assert await refusal_code(api, message) == grpc.StatusCode.UNAUTHENTICATED
    fresh = await request(
        api, jobs.with_script, key_of(SCRIPT), signer=provider, provider=provider, customer=customer
    )
    api.clock.now += 599
    assert (await api.sbatch.GetSBatch(fresh)).sbatch == SCRIPT


async def test_an_unknown_key_is_not_found(grid: Grid, jobs: Jobs, api: Api) -> None:
    provider, customer = grid.providers[0], grid.customers[0]
    message = await request(
        api, jobs.unstored_key, UNSTORED_KEY, signer=provider, provider=provider, customer=customer
    )
    assert await refusal_code(api, message) == grpc.StatusCode.NOT_FOUND


async def test_a_key_that_is_not_the_jobs_is_permission_denied(grid: Grid, jobs: Jobs, api: Api) -> None:
    provider, customer = grid.providers[0], grid.customers[0]
    # A stored script, but not the one this job put on chain.
    message = await request(
        api, jobs.other_script, key_of(SCRIPT), signer=provider, provider=provider, customer=customer
    )
    assert await refusal_code(api, message) == grpc.StatusCode.PERMISSION_DENIED


async def test_an_unknown_job_is_unauthenticated(grid: Grid, jobs: Jobs, api: Api) -> None:
    provider, customer = grid.providers[0], grid.customers[0]
    message = await request(
        api, "0x" + "ab" * 32, key_of(SCRIPT), signer=provider, provider=provider, customer=customer
    )
    assert await refusal_code(api, message) == grpc.StatusCode.UNAUTHENTICATED


async def test_malformed_requests_are_invalid_arguments(grid: Grid, jobs: Jobs, api: Api) -> None:
    provider, customer = grid.providers[0], grid.customers[0]
    base = await request(
        api, jobs.with_script, key_of(SCRIPT), signer=provider, provider=provider, customer=customer
    )
    for change in (
        {"job_id": "12"},
        {"batch_location_hash": "not-a-key"},
        {"provider_address": b"\x01" * 19},
        {"customer_address": b""},
    ):
        message = sbatch_pb2.GetSBatchRequest()
        message.CopyFrom(base)
        for name, value in change.items():
            setattr(message, name, value)
        assert await refusal_code(api, message) == grpc.StatusCode.INVALID_ARGUMENT, change


async def test_an_unreachable_chain_is_unavailable(grid: Grid, jobs: Jobs, tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "s.sqlite3")
    store.put(SCRIPT, 3600)
    nonces = NonceBook()
    reader = JobReader("http://127.0.0.1:9", grid.deployment.meta_scheduler)
    server, port = await start_grpc_server(
        "127.0.0.1:0", nonces, ScriptGate(nonces, reader, store, 86400), LOGGER_URL
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        api = Api(*async_stubs(channel), Clock(), store)
        provider, customer = grid.providers[0], grid.customers[0]
        message = await request(
            api, jobs.with_script, key_of(SCRIPT), signer=provider, provider=provider, customer=customer
        )
        assert await refusal_code(api, message) == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close()
        await server.stop(grace=None)
        await reader.close()
        store.close()
