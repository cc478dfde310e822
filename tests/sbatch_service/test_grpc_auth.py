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

from grid_protocol.proto import sbatch_pb2, sbatch_pb2_grpc
from grid_protocol.proto.sbatch_client import AsyncAuthAPI, AsyncSBatchAPI, async_stubs
from sbatch_service import grpc_api
from sbatch_service.auth import NonceBook
from sbatch_service.chain import JobReader
from sbatch_service.grpc_api import SBatchServicer, ScriptGate, start_grpc_server
from sbatch_service.storage import ScriptStore
from supervisor.chain.keys import Signer
from supervisor.sbatch.client import (
    FetchedScript,
    SbatchClient,
    SbatchServiceUnavailable,
    ScriptRefused,
    WantedScript,
)
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
    target: str = ""


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
        yield Api(*async_stubs(channel), clock, store, f"127.0.0.1:{port}")
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
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api.sbatch.GetSBatches(
                await many(
                    api, [(jobs.with_script, key_of(SCRIPT), customer)], signer=provider, provider=provider
                )
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close()
        await server.stop(grace=None)
        await reader.close()
        store.close()


# -- GetSBatches: several jobs for one challenge ------------------------------------------------


async def many(
    api: Api,
    wanted: list[tuple[str, str, LocalAccount]],
    *,
    signer: LocalAccount,
    provider: LocalAccount,
    challenge: bytes | None = None,
) -> sbatch_pb2.GetSBatchesRequest:
    if challenge is None:
        challenge = (await api.auth.Challenge(sbatch_pb2.ChallengeRequest())).challenge
    return sbatch_pb2.GetSBatchesRequest(
        jobs=[
            sbatch_pb2.WantedSBatch(
                job_id=job_id, batch_location_hash=key, customer_address=bytes.fromhex(customer.address[2:])
            )
            for job_id, key, customer in wanted
        ],
        signed_challenge=sign_challenge(signer, challenge),
        challenge=challenge,
        provider_address=bytes.fromhex(provider.address[2:]),
    )


def code_of(answer: sbatch_pb2.SBatchAnswer) -> grpc.StatusCode:
    (code,) = (c for c in grpc.StatusCode if c.value[0] == answer.code)
    return code


async def test_get_sbatches_answers_each_job_as_get_sbatch_would(grid: Grid, jobs: Jobs, api: Api) -> None:
    provider, customer, other_customer = grid.providers[0], grid.customers[0], grid.customers[1]
    wanted = [
        (jobs.with_script, key_of(SCRIPT), customer),
        (jobs.unstored_key, UNSTORED_KEY, customer),
        (jobs.other_script, key_of(SCRIPT), customer),
        ("0x" + "ab" * 32, key_of(SCRIPT), customer),
        ("0x12", key_of(SCRIPT), customer),
        (
            job_with_key(grid, key_of(OTHER_SCRIPT)).upper().replace("0X", "0x"),
            key_of(OTHER_SCRIPT),
            other_customer,
        ),
        ("0x" + "cd" * 32, "not-a-key", customer),
    ]
    message = await many(api, wanted, signer=provider, provider=provider)
    answer = await api.sbatch.GetSBatches(message)
    assert [a.job_id for a in answer.answers] == [job_id for job_id, _, _ in wanted]
    assert [code_of(a) for a in answer.answers] == [
        grpc.StatusCode.OK,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ]
    assert answer.answers[0].sbatch == SCRIPT and answer.grid_logger_url == LOGGER_URL
    assert all(a.sbatch == "" and a.message for a in answer.answers[1:])
    with pytest.raises(grpc.aio.AioRpcError) as replayed:
        await api.sbatch.GetSBatches(message)
    assert replayed.value.code() == grpc.StatusCode.UNAUTHENTICATED, "one challenge buys one request"


async def test_get_sbatches_serves_many_jobs_on_one_signature(grid: Grid, jobs: Jobs, api: Api) -> None:
    provider, customer = grid.providers[0], grid.customers[0]
    extra = [job_with_key(grid, key_of(OTHER_SCRIPT)) for _ in range(3)]
    wanted = [(jobs.with_script, key_of(SCRIPT), customer)] + [
        (j, key_of(OTHER_SCRIPT), customer) for j in extra
    ]
    answer = await api.sbatch.GetSBatches(await many(api, wanted, signer=provider, provider=provider))
    assert [(a.code, a.sbatch) for a in answer.answers] == [(0, SCRIPT)] + [(0, OTHER_SCRIPT)] * 3


async def test_get_sbatches_refuses_a_malformed_or_unsigned_request_whole(
    grid: Grid, jobs: Jobs, api: Api
) -> None:
    provider, customer = grid.providers[0], grid.customers[0]
    one = (jobs.with_script, key_of(SCRIPT), customer)
    cases: list[tuple[list[tuple[str, str, LocalAccount]], LocalAccount, bytes | None, grpc.StatusCode]] = [
        ([], provider, None, grpc.StatusCode.INVALID_ARGUMENT),
        (
            [(f"0x{i:064x}", key_of(SCRIPT), customer) for i in range(65)],
            provider,
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ([one, one], provider, None, grpc.StatusCode.INVALID_ARGUMENT),
        ([one], grid.providers[1], None, grpc.StatusCode.UNAUTHENTICATED),
    ]
    for wanted, signer, challenge, code in cases:
        message = await many(api, wanted, signer=signer, provider=provider, challenge=challenge)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api.sbatch.GetSBatches(message)
        assert refused.value.code() == code, (len(wanted), signer.address)
    message = await many(api, [one], signer=provider, provider=provider)
    message.provider_address = b"\x01" * 19
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.sbatch.GetSBatches(message)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_client_fetches_many_in_one_request_and_full_answers_alone(
    grid: Grid, jobs: Jobs, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor's client: one GetSBatches for the jobs, each job's verdict its own; a job left
    out of a full answer is asked for alone, and still served."""
    monkeypatch.setattr(grpc_api, "MAX_ANSWER_BYTES", len(SCRIPT) + 1)
    provider, customer = grid.providers[0], grid.customers[0]
    client = SbatchClient(api.target, Signer(provider), timeout_s=10)
    challenges = counted_challenges(client)
    try:
        outcomes = await client.fetch_many(
            [
                WantedScript(jobs.with_script, customer.address, key_of(SCRIPT)),
                WantedScript(jobs.other_script, customer.address, key_of(OTHER_SCRIPT)),
                WantedScript(jobs.unstored_key, customer.address, UNSTORED_KEY),
            ]
        )
    finally:
        await client.close()
    assert outcomes[jobs.with_script] == FetchedScript(SCRIPT, LOGGER_URL)
    assert outcomes[jobs.other_script] == FetchedScript(OTHER_SCRIPT, LOGGER_URL)
    assert isinstance(outcomes[jobs.unstored_key], ScriptRefused)
    assert len(challenges) == 2, "one request for the three, then the one left out of the full answer"


def counted_challenges(client: SbatchClient) -> list[bytes]:
    """The challenges the client asks for (one per request it sends), as it asks them."""
    asked: list[bytes] = []
    challenge = client._challenge

    async def counting() -> bytes:
        asked.append(await challenge())
        return asked[-1]

    client._challenge = counting  # type: ignore[method-assign]
    return asked


async def test_the_client_asks_one_job_a_call_of_a_service_without_get_sbatches(
    grid: Grid, jobs: Jobs, tmp_path: Path
) -> None:
    """DeepSquare's sbatch service has GetSBatch only: UNIMPLEMENTED, then every job alone."""
    store = CountingStore(tmp_path / "s.sqlite3")
    store.put(SCRIPT, 3600)
    store.put(OTHER_SCRIPT, 3600)
    nonces = NonceBook()
    reader = JobReader(grid.anvil.http_url, grid.deployment.meta_scheduler)
    servicer = SBatchServicer(ScriptGate(nonces, reader, store, 86400), LOGGER_URL)
    server = grpc.aio.server()
    sbatch_pb2_grpc.add_AuthAPIServicer_to_server(grpc_api.AuthServicer(nonces), server)  # type: ignore[no-untyped-call]
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "sbatchapi.v1alpha1.SBatchAPI",
                {
                    "GetSBatch": grpc.unary_unary_rpc_method_handler(
                        servicer.GetSBatch,
                        request_deserializer=sbatch_pb2.GetSBatchRequest.FromString,
                        response_serializer=sbatch_pb2.GetSBatchResponse.SerializeToString,
                    )
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    provider, customer = grid.providers[0], grid.customers[0]
    client = SbatchClient(f"127.0.0.1:{port}", Signer(provider), timeout_s=10)
    challenges = counted_challenges(client)
    try:
        wanted = [
            WantedScript(jobs.with_script, customer.address, key_of(SCRIPT)),
            WantedScript(jobs.other_script, customer.address, key_of(SCRIPT)),
        ]
        first = await client.fetch_many(wanted)
        assert first[jobs.with_script] == FetchedScript(SCRIPT, LOGGER_URL)
        assert isinstance(first[jobs.other_script], ScriptRefused), "the key is not the job's"
        assert len(challenges) == 3, "the batch request, then each job alone"
        second = await client.fetch_many(wanted[:1])
        assert second == {jobs.with_script: FetchedScript(SCRIPT, LOGGER_URL)}
        assert len(challenges) == 4, "no second GetSBatches once the service said it has none"
    finally:
        await client.close()
        await server.stop(grace=None)
        await reader.close()
        store.close()
    stopped = await SbatchClient(f"127.0.0.1:{port}", Signer(provider), timeout_s=2).fetch_many(wanted)
    assert all(isinstance(o, SbatchServiceUnavailable) for o in stopped.values()), stopped
