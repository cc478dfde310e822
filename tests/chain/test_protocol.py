"""The chain layer on the deployed protocol: discovery, a job's events followed and reported, every
custom error decoded from a real revert."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.types import Wei

from grid_protocol.jobs import Job, JobDefinition, JobStatus
from sbatch_service.chain import JobReader
from supervisor.chain.contracts import (
    DeploymentError,
    JobReadError,
    ProtocolContracts,
    ProviderQueues,
    code_has_function,
    job_id_hex,
)
from supervisor.chain.errors import ErrorDecoder, revert_data_of
from supervisor.chain.events import ChainEvent
from supervisor.chain.follower import FollowerSettings, LogFollower
from supervisor.chain.keys import Signer
from supervisor.chain.rpc import connect_http
from supervisor.chain.sender import SenderSettings, TransactionSender
from supervisor.store import OutboxState, Store
from tests.fixtures.chain_layer import deploy_probe, eventually
from tests.fixtures.contracts import CREDIT, Grid

ZERO = "0x0000000000000000000000000000000000000000"

# Every error of the protocol with the arguments ChainProbe.fail(i) reverts with.
EXPECTED_ERRORS: list[tuple[str, dict[str, Any]]] = [
    ("AlreadyDone", {}),
    ("ArrayLengthMismatch", {}),
    ("Banned", {}),
    ("CustomerMetaSchedulerProviderOnly", {}),
    (
        "CustomerOnly",
        {
            "current": Web3.to_checksum_address("0x" + "0" * 36 + "1111"),
            "expected": Web3.to_checksum_address("0x" + "0" * 36 + "2222"),
        },
    ),
    ("Empty", {}),
    ("InsufficientFunds", {"available": 7, "required": 100 * CREDIT}),
    ("InvalidJob", {}),
    ("InvalidJobDefinition", {}),
    ("InvalidNodesCount", {}),
    ("InvalidTotalCpus", {}),
    ("InvalidTotalMem", {}),
    ("InvalidTransition", {"from": 2, "to": 5}),
    ("JobHotStatusOnly", {"current": 5}),
    (
        "JobProviderOnly",
        {
            "current": Web3.to_checksum_address("0x" + "0" * 36 + "3333"),
            "expected": Web3.to_checksum_address("0x" + "0" * 36 + "4444"),
        },
    ),
    ("MetaScheduledScheduledStatusOnly", {"current": 3}),
    ("NewJobRequestDisabled", {}),
    ("NoJob", {}),
    ("NoProvider", {}),
    ("NoSpendingAuthority", {}),
    ("OutOfBounds", {}),
    ("ProviderNotJoined", {}),
    ("RemainingTimeAboveLimit", {"remaining": 45, "limit": 30}),
    ("RunningColdStatusOnly", {"current": 2}),
    ("RunningScheduledStatusOnly", {"current": 0}),
    ("SameStatusError", {}),
    ("WaitingApprovalOnly", {}),
    ("Error", {"message": "plain reason"}),
    ("Panic", {"code": 0x32}),
]


def test_every_custom_error_is_decoded_with_its_arguments(grid: Grid) -> None:
    decoder = ErrorDecoder.for_protocol()
    assert {name for name, _ in EXPECTED_ERRORS[:27]} == decoder.names
    probe = deploy_probe(grid.anvil)
    for which, (name, args) in enumerate(EXPECTED_ERRORS):
        with pytest.raises(ContractLogicError) as caught:
            probe.functions.fail(which).call()
        decoded = decoder.decode(revert_data_of(caught.value))
        assert (decoded.name, decoded.args) == (name, args), which
    assert decoder.decode("0xdeadbeef").name == "UnknownRevert"
    assert decoder.decode("0x").name == "EmptyRevert"
    assert (
        decoder.decode("0x" + decoder_selector("InvalidTransition(uint8,uint8)") + "00").name
        == "UnknownRevert"
    )


def decoder_selector(signature: str) -> str:
    return Web3.keccak(text=signature)[:4].hex()


async def test_discovery_from_the_meta_scheduler_address(grid: Grid) -> None:
    w3 = connect_http(grid.anvil.http_url)
    contracts = await ProtocolContracts.discover(w3, grid.deployment.meta_scheduler)
    assert contracts.job_repository.address == Web3.to_checksum_address(grid.deployment.job_repository)
    assert contracts.provider_manager.address == Web3.to_checksum_address(grid.deployment.provider_manager)
    assert contracts.provider_job_queues.address == Web3.to_checksum_address(
        grid.deployment.provider_job_queues
    )
    assert contracts.credit_address == Web3.to_checksum_address(grid.deployment.credit)
    assert {"getStatusAndProvider", "withdrawableCut", "autoApprove"} <= contracts.extensions

    probe = deploy_probe(grid.anvil)
    probe_code = bytes(grid.w3.eth.get_code(probe.address))
    get_status = next(e for e in contracts.job_repository.abi if e.get("name") == "getStatusAndProvider")
    assert not code_has_function(probe_code, get_status)  # type: ignore[arg-type]
    with pytest.raises(DeploymentError, match=r"does not answer MetaScheduler\.jobs"):
        await ProtocolContracts.discover(w3, probe.address)
    with pytest.raises(DeploymentError, match="no contract code"):
        await ProtocolContracts.discover(w3, "0x000000000000000000000000000000000000dEaD")
    with pytest.raises(DeploymentError, match="is not an address"):
        await ProtocolContracts.discover(w3, "scheduler")
    await w3.provider.disconnect()


class JobEvents:
    """A handler keeping the events it saw and the claimed jobs in the store."""

    def __init__(self) -> None:
        self.seen: list[ChainEvent] = []

    def handle(self, event: ChainEvent, store: Store) -> None:
        self.seen.append(event)
        if event.name == "ClaimJobEvent":
            store.upsert_job(
                event.args["jobId"],
                JobStatus.SCHEDULED,
                customer=event.args["customerAddr"],
                max_duration_minute=int(event.args["maxDurationMinute"]),
                definition=dict(event.args["jobDefinition"]),
                claimed_block=event.block_number,
            )

    def undo(self, event: ChainEvent, store: Store) -> None:
        if event.name == "ClaimJobEvent":
            store.delete_job(event.args["jobId"])

    def names(self) -> list[str]:
        return [e.name for e in self.seen]


@pytest.fixture
async def provider_side(clean_grid: Grid, tmp_path: Path) -> AsyncIterator[tuple[Any, ...]]:
    """The first provider registered; its contracts, sender and follower running."""
    grid = clean_grid
    provider = grid.providers[0]
    grid.register_provider(provider)
    w3 = connect_http(grid.anvil.http_url)
    store = Store.open(tmp_path / "state.db")
    contracts = await ProtocolContracts.discover(w3, grid.deployment.meta_scheduler)
    sender = TransactionSender(w3, Signer(provider), store, SenderSettings(poll_interval_s=0.05))
    await sender.start()
    handler = JobEvents()
    start = grid.w3.eth.block_number
    follower = LogFollower(
        w3,
        store,
        contracts.follower_sources(provider.address),
        handler,
        FollowerSettings(poll_interval_s=0.05, start_block=start),
    )
    task = asyncio.create_task(follower.run())
    yield grid, provider, contracts, sender, handler, store
    follower.stop()
    await asyncio.wait_for(task, 10)
    await sender.stop()
    await w3.provider.disconnect()
    store.close()


async def test_a_job_claimed_followed_and_reported(provider_side: tuple[Any, ...]) -> None:
    grid, provider, contracts, sender, handler, store = provider_side
    customer = grid.customers[0]
    job_id = grid.request_job(customer, 200 * CREDIT)
    jid = job_id_hex(job_id)
    grid.schedule(job_id, provider)
    await eventually(lambda: "JobTransitionEvent" in handler.names(), what="the meta-scheduling hint")
    hint = handler.seen[0]
    assert hint.args["_jobId"] == jid and hint.args["_to"] == JobStatus.META_SCHEDULED
    assert await contracts.provider_queues(provider.address) == ProviderQueues(
        claimable=True, cancelling=False, top_up=False
    )

    claim = await asyncio.wait_for(sender.wait(sender.submit_call(contracts.claim_next_job())), 30)
    assert claim.success
    await eventually(lambda: store.get_job(jid) is not None, what="the ClaimJobEvent handled")
    record = store.get_job(jid)
    assert record is not None and record.max_duration_minute == 18 and record.customer == customer.address
    assert record.definition is not None
    definition = JobDefinition.from_plain(record.definition)
    assert (definition.gpus, definition.mem_per_cpu, definition.cpus_per_task, definition.ntasks) == (
        1,
        1024,
        2,
        1,
    )

    job = await contracts.get_job(job_id)
    assert (job.status, job.provider, job.max_cost) == (JobStatus.SCHEDULED, provider.address, 200 * CREDIT)
    assert await contracts.job_status_and_provider(jid) == (JobStatus.SCHEDULED, provider.address)
    bare = replace(contracts, extensions=frozenset())  # a deployment without the extension
    assert await bare.job_status_and_provider(jid) == (JobStatus.SCHEDULED, provider.address)

    # A report the protocol refuses is decoded, not sent.
    wrong = await sender.wait(
        sender.submit_call(contracts.provider_set_job_status(jid, JobStatus.FINISHED)), 30
    )
    assert wrong.state == OutboxState.FAILED and wrong.error == "InvalidTransition(from=2, to=5)"
    running = sender.submit_call(contracts.provider_set_job_status(jid, JobStatus.RUNNING))
    assert sender.submit_call(contracts.provider_set_job_status(jid, JobStatus.RUNNING)) == running  # dedup
    assert (await sender.wait(running, 30)).success
    # The same report again (without its dedup key, as after a lost local record) counts as delivered.
    call = contracts.provider_set_job_status(jid, JobStatus.RUNNING)
    repeat = await sender.wait(sender.submit(call.to, call.data, kind=call.kind), 30)
    assert repeat.error == "SameStatusError()" and repeat.delivered
    assert (await contracts.get_job(jid)).status == JobStatus.RUNNING


async def test_refusals_of_its_own_jobs_only(provider_side: tuple[Any, ...]) -> None:
    grid, provider, contracts, sender, handler, _ = provider_side
    other = grid.providers[1]
    grid.register_provider(other)
    mine = grid.request_job(grid.customers[0], 200 * CREDIT)
    theirs = grid.request_job(grid.customers[1], 200 * CREDIT)
    grid.schedule(mine, provider)
    grid.schedule(theirs, other)
    grid.send(other, grid.scheduler.functions.refuseJob(theirs))
    refused = await sender.wait(sender.submit_call(contracts.refuse_job(mine)), 30)
    assert refused.success
    await eventually(lambda: "JobRefusedEvent" in handler.names(), what="the refusal")
    refusals = [e for e in handler.seen if e.name == "JobRefusedEvent"]
    assert [e.args["_jobId"] for e in refusals] == [job_id_hex(mine)]
    # Not its own (now refused back to nobody): the revert is decoded with its arguments.
    denied = await sender.wait(sender.submit_call(contracts.refuse_job(theirs)), 30)
    assert denied.state == OutboxState.FAILED
    assert denied.error == f"JobProviderOnly(current={provider.address}, expected={ZERO})"
    nothing = await sender.wait(sender.submit_call(contracts.claim_next_job()), 30)
    assert nothing.error == "NoJob()"


def requested_jobs(grid: Grid, count: int, *, scheduled: int) -> tuple[LocalAccount, list[bytes]]:
    """`count` jobs requested by a customer, the first `scheduled` meta-scheduled to a registered provider."""
    provider = grid.providers[0]
    grid.register_provider(provider)
    jobs = [grid.request_job(grid.customers[0], 100 * CREDIT) for _ in range(count)]
    for job_id in jobs[:scheduled]:
        grid.schedule(job_id, provider)
    return provider, jobs


@pytest.mark.parametrize(
    "read_with",
    ["getStatusesAndProviders", "getStatusAndProvider", "get"],
    ids=["one call per batch", "cheap call per job", "whole record per job"],
)
async def test_job_views_read_many_jobs_in_batches_and_isolate_a_refusal(
    clean_grid: Grid, read_with: str
) -> None:
    grid = clean_grid
    provider, jobs = requested_jobs(grid, 7, scheduled=3)
    w3 = connect_http(grid.anvil.http_url)
    try:
        contracts = await ProtocolContracts.discover(w3, grid.deployment.meta_scheduler)
        unused = {"getStatusesAndProviders", "getStatusAndProvider"} - {read_with}
        contracts = replace(contracts, extensions=contracts.extensions - unused)
        ghost = "0x" + "ee" * 32
        ids = ["0x" + j.hex() for j in jobs] + [ghost]
        views = await contracts.job_views(ids, batch_size=3)
    finally:
        await w3.provider.disconnect()
    assert set(views) == set(ids)
    for key in ids[:3]:
        assert views[key] == (JobStatus.META_SCHEDULED, provider.address)
    for key in ids[3:7]:
        assert views[key] == (JobStatus.PENDING, ZERO)
    refusal = views[ghost]
    assert isinstance(refusal, JobReadError) and "0x71c8f460" in str(refusal.data)  # InvalidJob()


class MethodRecorder:
    """An HTTP proxy in front of anvil that records the JSON-RPC methods asked through it (and, with
    `reverse_batches`, answers each batch in the reverse order of its calls)."""

    def __init__(self, target: str, *, reverse_batches: bool = False) -> None:
        self.methods: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sent = json.loads(body)
                recorder.methods += [call["method"] for call in (sent if isinstance(sent, list) else [sent])]
                request = urllib.request.Request(target, body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as answer:
                    reply = answer.read()
                if reverse_batches and isinstance(sent, list):  # JSON-RPC 2.0 allows any order
                    reply = json.dumps(json.loads(reply)[::-1]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


async def test_reads_and_gas_estimates_cost_one_request_each(grid: Grid) -> None:
    """The chain id is checked once at start: no call or estimate asks the node for it again."""
    recorder = MethodRecorder(grid.anvil.http_url)
    w3 = connect_http(recorder.url)
    try:
        contracts = await ProtocolContracts.discover(w3, grid.deployment.meta_scheduler)
        recorder.methods.clear()
        provider = grid.providers[0].address
        for _ in range(3):
            await contracts.provider_prices(provider)
        gas = await w3.eth.estimate_gas({"from": provider, "to": grid.customers[0].address, "value": Wei(1)})
        assert gas == 21000
        assert recorder.methods == ["eth_call", "eth_call", "eth_call", "eth_estimateGas"]
    finally:
        await w3.provider.disconnect()
        recorder.close()


async def test_batches_answered_in_any_order_are_matched_to_their_calls(clean_grid: Grid) -> None:
    """A node may answer a batch out of order: the supervisor's reads and the sbatch service's job
    reads match each answer to its call by id."""
    grid = clean_grid
    provider, jobs = requested_jobs(grid, 5, scheduled=2)
    recorder = MethodRecorder(grid.anvil.http_url, reverse_batches=True)
    w3 = connect_http(recorder.url)
    try:
        contracts = await ProtocolContracts.discover(w3, grid.deployment.meta_scheduler)
        contracts = replace(contracts, extensions=contracts.extensions - {"getStatusesAndProviders"})
        ids = ["0x" + j.hex() for j in jobs]
        views = await contracts.job_views(ids, batch_size=5)
        read = await JobReader(recorder.url, grid.deployment.meta_scheduler).jobs(jobs)
    finally:
        await w3.provider.disconnect()
        recorder.close()
    assert [views[key] for key in ids] == [(JobStatus.META_SCHEDULED, provider.address)] * 2 + [
        (JobStatus.PENDING, ZERO)
    ] * 3
    assert all(isinstance(job, Job) for job in read)
    assert [(job.job_id, job.status) for job in read if isinstance(job, Job)] == list(
        zip(ids, [JobStatus.META_SCHEDULED] * 2 + [JobStatus.PENDING] * 3, strict=True)
    )
