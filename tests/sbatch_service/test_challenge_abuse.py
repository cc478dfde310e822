"""AuthAPI.Challenge is open to anyone: the challenges it hands out are bounded, callers are rate-limited
per address, GetSBatch checks the nonce before it recovers a signature, and challenges outlive a
restart of the service. Against the real service (`grid-sbatch serve`), a real anvil and loopback
floods bounded in count and time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from grid_protocol.proto import sbatch_pb2
from grid_protocol.proto.sbatch_client import AsyncAuthAPI, AsyncSBatchAPI, async_stubs
from sbatch_service.auth import NonceBook, PeerRateLimiter, sign_challenge
from sbatch_service.chain import JobReader
from sbatch_service.grpc_api import ScriptGate, peer_address, start_grpc_server
from sbatch_service.settings import Settings
from sbatch_service.storage import ChallengeStore, ScriptStore, script_key
from supervisor.chain.keys import Signer
from supervisor.sbatch.client import SbatchClient
from tests.fixtures.contracts import CREDIT, WORKED_EXAMPLE_DEFINITION, Grid
from tests.fixtures.sbatch import SbatchProcess, start_sbatch_service
from tests.sbatch_service.flood import Flood, flood_challenges

FLOOD = 10_000
#: The service's default token bucket per address.
BURST = int(Settings.model_fields["challenge_burst"].default)
RATE = float(Settings.model_fields["challenge_rate_per_second"].default)
#: The service's resident memory may grow this much under a flood (allocator and gRPC buffers).
RSS_GROWTH_BOUND_KIB = 16 * 1024
SCRIPT = "#!/bin/bash\ntrue\necho 'abuse'\n"
WORKFLOW = {
    "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 512, "gpus": 0},
    "steps": [{"name": "hello", "run": {"command": "echo through the flood"}}],
}


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rows(database: Path) -> int:
    with sqlite3.connect(database) as db:
        return int(db.execute("SELECT COUNT(*) FROM challenges").fetchone()[0])


# -- the nonce book and its table --------------------------------------------------------------


def test_the_book_is_bounded_and_drops_the_oldest(tmp_path: Path) -> None:
    record = ChallengeStore(tmp_path / "sbatch.sqlite3")
    book = NonceBook(600, max_outstanding=100, record=record)
    issued = [book.issue() for _ in range(FLOOD)]
    assert len(book) == 100 and record.count() == 100
    assert not any(book.consume(challenge) for challenge in issued[:-100])
    assert all(book.consume(challenge) for challenge in issued[-100:])
    assert not any(book.consume(challenge) for challenge in issued[-100:])  # used once
    assert len(book) == 0 and record.count() == 0
    record.close()


def test_expired_challenges_leave_memory_and_the_database(tmp_path: Path) -> None:
    clock = Clock()
    record = ChallengeStore(tmp_path / "sbatch.sqlite3")
    book = NonceBook(600, clock, record=record)
    old = [book.issue() for _ in range(50)]
    clock.now += 300
    young = [book.issue() for _ in range(20)]
    clock.now += 301  # the first 50 have expired, the last 20 have not
    assert book.purge_expired() == 50
    assert len(book) == 20 and record.count() == 20
    assert not any(book.consume(challenge) for challenge in old)
    assert all(book.consume(challenge) for challenge in young)
    record.close()


def test_challenges_outlive_the_book_and_a_used_one_never_returns(tmp_path: Path) -> None:
    database = tmp_path / "sbatch.sqlite3"
    clock = Clock()
    first = ChallengeStore(database)
    book = NonceBook(600, clock, max_outstanding=10, record=first)
    expiring = book.issue()
    clock.now += 100
    used, kept = book.issue(), book.issue()
    assert book.consume(used)
    first.close()

    clock.now += 550  # `expiring` is past its 600 s, `kept` is not
    second = ChallengeStore(database)
    again = NonceBook(600, clock, max_outstanding=10, record=second)
    assert len(again) == 1 and second.count() == 1  # the expired row was purged on load
    assert again.consume(kept)
    assert not again.consume(used) and not again.consume(expiring)
    second.close()


def test_a_restart_keeps_the_newest_within_the_bound(tmp_path: Path) -> None:
    database = tmp_path / "sbatch.sqlite3"
    clock = Clock()
    record = ChallengeStore(database)
    book = NonceBook(600, clock, max_outstanding=40, record=record)
    issued = []
    for _ in range(40):
        issued.append(book.issue())
        clock.now += 1
    record.close()
    smaller = ChallengeStore(database)
    again = NonceBook(600, clock, max_outstanding=10, record=smaller)
    assert len(again) == 10 and smaller.count() == 10
    assert [again.consume(c) for c in issued] == [False] * 30 + [True] * 10
    smaller.close()


# -- the rate limit ----------------------------------------------------------------------------


def test_a_token_bucket_per_address() -> None:
    clock = Clock()
    limiter = PeerRateLimiter(2.0, 5, clock=clock)
    assert [limiter.allow("10.0.0.1") for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("10.0.0.2")  # another address has its own bucket
    clock.now += 1.0  # two tokens back
    assert [limiter.allow("10.0.0.1") for _ in range(3)] == [True, True, False]
    clock.now += 100.0  # never more than the burst
    assert sum(limiter.allow("10.0.0.1") for _ in range(10)) == 5


def test_the_table_of_buckets_is_bounded() -> None:
    limiter = PeerRateLimiter(1.0, 1, max_peers=100)
    for n in range(5000):
        limiter.allow(f"10.1.{n // 256}.{n % 256}")
    assert len(limiter) == 100


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:50432", "127.0.0.1"),
        ("ipv6:%5B::1%5D:33592", "::/64"),
        ("ipv6:[2001:db8:1:2:aaaa::7]:443", "2001:db8:1:2::/64"),
        ("ipv6:%5B::ffff:192.0.2.7%5D:80", "192.0.2.7"),
        ("unix:/run/sbatch.sock", "unix:/run/sbatch.sock"),
    ],
)
def test_peer_addresses(peer: str, address: str) -> None:
    assert peer_address(peer) == address


# -- the gRPC API in this process --------------------------------------------------------------


@dataclass
class Api:
    auth: AsyncAuthAPI
    sbatch: AsyncSBatchAPI
    v6_auth: AsyncAuthAPI
    job_id: str


@pytest.fixture(scope="module")
def served_job(grid: Grid) -> str:
    provider = grid.providers[0]
    if not grid.provider_manager.functions.isValidForScheduling(provider.address).call():
        grid.register_provider(provider)
    definition = (*WORKED_EXAMPLE_DEFINITION[:4], script_key(SCRIPT), *WORKED_EXAMPLE_DEFINITION[5:])
    job_id = grid.request_job(grid.customers[0], 200 * CREDIT, definition)
    grid.schedule(job_id, provider)
    return "0x" + job_id.hex()


@pytest.fixture
async def api(grid: Grid, served_job: str, tmp_path: Path) -> AsyncIterator[Api]:
    store = ScriptStore(tmp_path / "scripts.sqlite3")
    store.put(SCRIPT, 3600)
    nonces = NonceBook()
    reader = JobReader(grid.anvil.http_url, grid.deployment.meta_scheduler)
    gate = ScriptGate(nonces, reader, store, running_retention_seconds=86400)
    server, port = await start_grpc_server("localhost:0", nonces, gate, "", limiter=PeerRateLimiter(0.001, 5))
    v4 = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    v6 = grpc.aio.insecure_channel(f"[::1]:{port}")
    try:
        auth, sbatch = async_stubs(v4)
        yield Api(auth, sbatch, async_stubs(v6)[0], served_job)
    finally:
        await v4.close()
        await v6.close()
        await server.stop(grace=None)
        await reader.close()
        store.close()


def get_request(grid: Grid, api: Api, challenge: bytes, signature: bytes) -> sbatch_pb2.GetSBatchRequest:
    return sbatch_pb2.GetSBatchRequest(
        batch_location_hash=script_key(SCRIPT),
        signed_challenge=signature,
        challenge=challenge,
        provider_address=bytes.fromhex(grid.providers[0].address[2:]),
        customer_address=bytes.fromhex(grid.customers[0].address[2:]),
        job_id=api.job_id,
    )


async def refusal(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_the_nonce_is_checked_before_the_signature(grid: Grid, api: Api) -> None:
    forged = b'{"message":"login","nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}'
    error = await refusal(api.sbatch.GetSBatch(get_request(grid, api, forged, b"\x00" * 65)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "unknown, used or expired challenge"  # not the signature's refusal

    # A real challenge is used up by its first request, even one with a bad signature: each challenge
    # buys one signature recovery at most.
    challenge = (await api.auth.Challenge(sbatch_pb2.ChallengeRequest())).challenge
    bad = sign_challenge(grid.providers[1].key, challenge)
    error = await refusal(api.sbatch.GetSBatch(get_request(grid, api, challenge, bad)))
    assert error.details() == "the challenge is not signed by provider_address"
    good = sign_challenge(grid.providers[0].key, challenge)
    error = await refusal(api.sbatch.GetSBatch(get_request(grid, api, challenge, good)))
    assert error.details() == "unknown, used or expired challenge"

    fresh = (await api.auth.Challenge(sbatch_pb2.ChallengeRequest())).challenge
    answer = await api.sbatch.GetSBatch(
        get_request(grid, api, fresh, sign_challenge(grid.providers[0].key, fresh))
    )
    assert answer.sbatch == SCRIPT


async def test_challenges_are_rate_limited_per_address(api: Api) -> None:
    answers = []
    for _ in range(8):
        try:
            await api.auth.Challenge(sbatch_pb2.ChallengeRequest())
            answers.append("ok")
        except grpc.aio.AioRpcError as exc:
            answers.append(exc.code().name)
    assert answers == ["ok"] * 5 + ["RESOURCE_EXHAUSTED"] * 3
    # Another address still gets its challenges.
    assert (await api.v6_auth.Challenge(sbatch_pb2.ChallengeRequest())).challenge


# -- the real service --------------------------------------------------------------------------


@dataclass
class Service:
    process: SbatchProcess
    key: str
    job_id: str


def start(
    workdir: Path, grid: Grid, env: dict[str, str], process: SbatchProcess | None = None
) -> SbatchProcess:
    return start_sbatch_service(
        workdir,
        rpc_url=grid.anvil.http_url,
        metascheduler_address=grid.deployment.meta_scheduler,
        extra_env={"GRID_SBATCH_GRPC_HOST": "localhost", **env},
        graphql_port=process.graphql_port if process else None,
        grpc_port=process.grpc_port if process else None,
    )


def schedule(grid: Grid, service: SbatchProcess) -> Service:
    provider = grid.providers[0]
    if not grid.provider_manager.functions.isValidForScheduling(provider.address).call():
        grid.register_provider(provider)
    key = service.submit(WORKFLOW)
    definition = (*WORKED_EXAMPLE_DEFINITION[:4], key, *WORKED_EXAMPLE_DEFINITION[5:])
    job_id = grid.request_job(grid.customers[0], 200 * CREDIT, definition)
    grid.schedule(job_id, provider)
    return Service(service, key, "0x" + job_id.hex())


async def test_a_challenge_issued_before_a_restart_is_accepted_after_it(grid: Grid, tmp_path: Path) -> None:
    service = schedule(grid, start(tmp_path, grid, {}))
    channel = grpc.aio.insecure_channel(service.process.grpc_target)
    auth, sbatch = async_stubs(channel)
    challenge = (await auth.Challenge(sbatch_pb2.ChallengeRequest())).challenge
    message = sbatch_pb2.GetSBatchRequest(
        batch_location_hash=service.key,
        signed_challenge=sign_challenge(grid.providers[0].key, challenge),
        challenge=challenge,
        provider_address=bytes.fromhex(grid.providers[0].address[2:]),
        customer_address=bytes.fromhex(grid.customers[0].address[2:]),
        job_id=service.job_id,
    )
    restarted: list[SbatchProcess] = []
    try:
        service.process.stop()
        restarted.append(start(tmp_path, grid, {}, service.process))
        answer = await sbatch.GetSBatch(message, timeout=30)
        assert "through the flood" in answer.sbatch
        restarted[-1].stop()
        restarted.append(start(tmp_path, grid, {}, restarted[-1]))
        error = await refusal(sbatch.GetSBatch(message, timeout=30))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # it was used before this restart
    finally:
        await channel.close()
        for process in (service.process, *restarted):
            process.stop()
    assert rows(service.process.database) == 0


async def fetch_during(flood: Flood, grid: Grid, service: Service, target: str) -> tuple[int, int]:
    """A supervisor's real fetch once the flood is under way; returns the flood's count at its start and end."""
    deadline = time.monotonic() + 60
    while flood.sent < flood.count // 10:
        assert time.monotonic() < deadline, "the flood did not start"
        await asyncio.sleep(0.01)
    started = flood.sent
    client = SbatchClient(target, Signer(grid.providers[0]), timeout_s=30)
    try:
        fetched = await client.fetch(service.job_id, grid.customers[0].address, service.key)
    finally:
        await client.close()
    assert "through the flood" in fetched.script
    return started, flood.sent


async def flood_with_a_fetch(grid: Grid, service: Service) -> tuple[Flood, Flood, int, float]:
    """A warm-up (gRPC's own first allocations), then the flood from 127.0.0.1 and a supervisor's
    fetch from [::1]; returns both floods, the flood's count when the fetch was answered, and the
    seconds from the warm-up's end to the flood's (the bucket refills all along)."""
    pid = service.process.process.pid
    port = service.process.grpc_port
    warm = await flood_challenges(f"127.0.0.1:{port}", Flood(2 * BURST), pid=pid)
    warm_ended = time.monotonic()
    assert not warm.other_errors
    flood = Flood(FLOOD)
    _, (_, fetched_at) = await asyncio.gather(
        flood_challenges(f"127.0.0.1:{port}", flood, pid=pid),
        fetch_during(flood, grid, service, f"[::1]:{port}"),
    )
    return warm, flood, fetched_at, time.monotonic() - warm_ended


async def test_a_flood_of_challenges_is_refused_and_memory_stays_flat(grid: Grid, tmp_path: Path) -> None:
    """The default limits: one address gets its burst and then its rate, nothing more."""
    service = schedule(grid, start(tmp_path, grid, {}))
    try:
        warm, flood, fetched_at, refill_seconds = await flood_with_a_fetch(grid, service)
        outstanding = rows(service.process.database)
    finally:
        service.process.stop()
    assert flood.finished and not flood.other_errors
    assert fetched_at < FLOOD, "the fetch was answered while the flood went on"
    assert flood.issued + flood.refused == FLOOD
    assert warm.issued <= BURST + RATE * warm.seconds + 1, warm  # the burst, then the rate
    assert warm.refused > 0, warm  # the warm-up emptied the bucket: the flood has only the rate
    assert flood.issued <= RATE * refill_seconds + 10, (flood, refill_seconds)
    assert outstanding == warm.issued + flood.issued  # the fetch used its own challenge
    assert flood.rss_growth_kib < RSS_GROWTH_BOUND_KIB, flood


async def test_challenges_beyond_the_bound_are_dropped_and_memory_stays_flat(
    grid: Grid, tmp_path: Path
) -> None:
    """No rate limit to speak of: every call is answered, and the table stays at its bound."""
    env = {
        "GRID_SBATCH_CHALLENGE_RATE_PER_SECOND": "1000000",
        "GRID_SBATCH_CHALLENGE_BURST": "1000000",
        "GRID_SBATCH_CHALLENGE_MAX_OUTSTANDING": "1000",
    }
    service = schedule(grid, start(tmp_path, grid, env))
    try:
        _, flood, fetched_at, _ = await flood_with_a_fetch(grid, service)
        outstanding = rows(service.process.database)
    finally:
        service.process.stop()
    assert flood.finished and not flood.other_errors
    assert flood.issued == FLOOD and flood.refused == 0
    assert fetched_at < FLOOD, "the fetch was answered while the flood went on"
    assert outstanding == 1000
    assert flood.rss_growth_kib < RSS_GROWTH_BOUND_KIB, flood
