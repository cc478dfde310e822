"""What DeepSquare's SDK reads and sends beyond the protocol's core: each getter and rule behaves as named."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi import decode, encode
from eth_utils import to_checksum_address
from web3.exceptions import ContractLogicError

from grid_dev.anvil import Anvil
from grid_protocol.abi import load_artifact
from grid_protocol.jobs import JobStatus
from tests.contracts.conftest import job_in
from tests.fixtures.contracts import (
    CREDIT,
    WORKED_EXAMPLE_DEFINITION,
    WORKED_EXAMPLE_PRICES,
    Grid,
    Reverted,
    decode_revert,
    deploy_grid,
)

DEFINITION_TYPE = "(uint64,uint64,uint64,uint64,string,uint8,(string,string)[],((string,string),bytes2)[])"
PRICES_TYPE = "(uint256,uint256,uint256)"
JOB_TYPE = (
    f"(bytes32,uint8,address,address,{DEFINITION_TYPE},(uint256,uint256,uint256,bool),"
    "(uint256,uint256,uint256,uint256,uint256,uint256),bytes32,bool,string,int64)"
)


def _definition(storage_type: int) -> tuple[Any, ...]:
    values = list(WORKED_EXAMPLE_DEFINITION)
    values[5] = storage_type
    return tuple(values)


def call_tools(grid: Grid, name: str, types: list[str], args: list[Any], returns: list[str]) -> Any:
    """eth_call of a public function of the deployed Tools library, as a client calls it."""
    selectors: dict[str, str] = load_artifact("Tools")["methodIdentifiers"]
    (selector,) = [s for signature, s in selectors.items() if signature.startswith(f"{name}(")]
    data = "0x" + selector + encode(types, args).hex()
    try:
        raw = grid.w3.eth.call({"to": grid.deployment.tools, "data": data})  # type: ignore[typeddict-item]
    except ContractLogicError as exc:
        raise decode_revert(exc) from exc
    return decode(returns, raw)


@pytest.mark.parametrize("storage_type", [0, 1, 2, 3, 4])
def test_every_storage_type_of_deepsquare_clients_is_accepted(market: Grid, storage_type: int) -> None:
    job_id = market.request_job(market.customers[0], 150 * CREDIT, _definition(storage_type))
    assert market.job(job_id)["definition"][5] == storage_type
    assert market.job(job_id)["status"] == JobStatus.PENDING


@pytest.mark.parametrize("storage_type", [5, 255])
def test_an_unknown_storage_type_is_refused_as_an_invalid_definition(market: Grid, storage_type: int) -> None:
    customer = market.customers[0]
    market.send(customer, market.credit.functions.approve(market.scheduler.address, 150 * CREDIT))
    counter = market.jobs.functions.jobIdCounter().call()
    with pytest.raises(Reverted) as refused:
        market.send(
            customer,
            market.scheduler.functions.requestNewJob(
                _definition(storage_type), 150 * CREDIT, b"x".ljust(32, b"\0"), True
            ),
        )
    assert refused.value.error == "InvalidJobDefinition"
    assert market.jobs.functions.jobIdCounter().call() == counter
    (valid,) = call_tools(
        market, "isJobDefinitionValid", [DEFINITION_TYPE], [_definition(storage_type)], ["bool"]
    )
    assert valid is False


def test_job_repository_getters(market: Grid) -> None:
    first, second = market.customers[0], market.customers[1]
    before = market.jobs.functions.jobIdCounter().call()
    a = market.request_job(first, 150 * CREDIT)
    b = market.request_job(second, 150 * CREDIT)
    c = market.request_job(first, 150 * CREDIT)
    assert market.jobs.functions.jobIdCounter().call() == before + 3
    assert int.from_bytes(c, "big") == before + 3
    assert tuple(market.jobs.functions.jobs(a).call()) == tuple(market.jobs.functions.get(a).call())
    ids = market.jobs.functions.getByCustomer(first.address).call()
    assert ids[-2:] == [a, c]
    assert [market.jobs.functions.jobIdByCustomer(first.address, i).call() for i in range(len(ids))] == ids
    assert market.jobs.functions.jobIdByCustomer(second.address, 0).call() == b
    with pytest.raises(ContractLogicError):
        market.jobs.functions.jobIdByCustomer(second.address, 1).call()
    unknown = market.jobs.functions.jobs((10**9).to_bytes(32, "big")).call()
    assert unknown[0] == b"\0" * 32 and unknown[2] == "0x" + "0" * 40


def test_queue_bounds_follow_pushes_and_pops(market: Grid) -> None:
    provider = market.providers[0]
    queues = market.queues.functions
    assert queues.providerClaimableJobsQueues(provider.address).call() == [0, 0]
    jobs = [market.request_job(market.customers[0], 150 * CREDIT) for _ in range(3)]
    for job_id in jobs:
        market.schedule(job_id, provider)
    assert queues.providerClaimableJobsQueues(provider.address).call() == [0, 3]
    assert queues.nextClaimableJob(provider.address).call() == jobs[0]
    assert queues.getClaimableJobs(provider.address, 0, 10).call() == jobs
    assert queues.getClaimableJobs(provider.address, 1, 1).call() == [jobs[1]]
    assert queues.getClaimableJobs(provider.address, 3, 5).call() == []
    with pytest.raises(ContractLogicError) as past_end:
        queues.getClaimableJobs(provider.address, 4, 1).call()
    assert decode_revert(past_end.value).error == "OutOfBounds"

    assert queues.countClaimableJobs(provider.address, 10).call() == 3
    assert queues.countClaimableJobs(provider.address, 2).call() == 2
    # A refused head is stale: the next claim skips it, and the bounds move past both.
    market.send(provider, market.scheduler.functions.refuseJob(jobs[0]))
    assert queues.countClaimableJobs(provider.address, 10).call() == 2
    assert queues.nextClaimableJob(provider.address).call() == jobs[1]
    assert market.claim(provider)["jobId"] == jobs[1]
    assert queues.providerClaimableJobsQueues(provider.address).call() == [2, 3]
    assert market.claim(provider)["jobId"] == jobs[2]
    with pytest.raises(ContractLogicError) as nothing:
        queues.nextClaimableJob(provider.address).call()
    assert decode_revert(nothing.value).error == "Empty"

    running = job_in(market, JobStatus.RUNNING)
    assert queues.providerCancellingJobsQueues(provider.address).call() == [0, 0]
    market.send(market.customers[0], market.scheduler.functions.cancelJob(running))
    assert queues.providerCancellingJobsQueues(provider.address).call() == [0, 1]
    market.send(provider, market.scheduler.functions.claimNextCancellingJob())
    assert queues.providerCancellingJobsQueues(provider.address).call() == [1, 1]

    topped = job_in(market, JobStatus.RUNNING)
    market.send(market.customers[0], market.credit.functions.approve(market.scheduler.address, 50 * CREDIT))
    market.send(market.customers[0], market.scheduler.functions.topUpJob(topped, 50 * CREDIT))
    assert queues.providerTopUpJobsQueues(provider.address).call() == [0, 1]
    market.send(provider, market.scheduler.functions.claimNextTopUpJob())
    assert queues.providerTopUpJobsQueues(provider.address).call() == [1, 1]


def test_provider_records_as_the_sdk_reads_them(market: Grid) -> None:
    provider, newcomer = market.providers[0], market.providers[1]
    manager = market.provider_manager.functions
    record = manager.getProvider(provider.address).call()
    addr, hardware, prices, banned = manager.providers(provider.address).call()
    assert (addr, hardware, prices, banned) == (record[0], record[1], record[2], record[4])
    assert tuple(prices) == WORKED_EXAMPLE_PRICES
    assert manager.waitingApprovalProviders(provider.address).call()[0] == "0x" + "0" * 40

    market.register_provider(newcomer, nodes=2, cpus=4, approve=False)
    waiting = manager.waitingApprovalProviders(newcomer.address).call()
    assert waiting[0] == newcomer.address and tuple(waiting[1]) == (2, [2, 2], [4, 4], [64_000, 64_000])
    assert manager.providers(newcomer.address).call()[0] == "0x" + "0" * 40
    market.send(market.admin, market.provider_manager.functions.ban(newcomer.address))
    assert manager.waitingApprovalProviders(newcomer.address).call()[3] is True

    assert manager.jobCountByProvider(provider.address).call() == 0
    job_in(market, JobStatus.RUNNING)
    job_in(market, JobStatus.FINISHED)
    assert (
        manager.jobCountByProvider(provider.address).call()
        == 2
        == manager.getJobCount(provider.address).call()
    )


def _listed(grid: Grid) -> list[str]:
    """Every provider address in the list, read two per page as a client pages through it."""
    addresses: list[str] = []
    cursor = 0
    for _ in range(100):
        data, length, cursor = grid.provider_manager.functions.fetchPage(cursor, 2).call()
        assert len(data) == length <= 2
        addresses += [to_checksum_address(item[12:]) for item in data]
        if cursor == 0:
            return addresses
    raise AssertionError("fetchPage never reached the end of the list")


def _as_data(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def test_the_provider_list_pages_and_unlinks(anvil: Anvil) -> None:
    grid = deploy_grid(anvil)
    snapshot = grid.snapshot()
    try:
        manager = grid.provider_manager.functions
        assert (manager.head().call(), manager.tail().call(), manager.elementCount().call()) == (0, 0, 0)
        assert manager.fetchPage(0, 5).call() == [[], 0, 0]
        first, second, third = grid.providers
        receipt = grid.send(
            first, grid.provider_manager.functions.register((1, [0], [4], [8000]), (1, 1, 1), [])
        )
        assert [e["args"]["id"] for e in grid.events(grid.provider_manager, "NewHead", receipt)] == [1]
        assert [dict(e["args"]) for e in grid.events(grid.provider_manager, "ObjectCreated", receipt)] == [
            {"id": 1, "data": _as_data(first.address)}
        ]
        grid.register_provider(second)
        receipt = grid.send(
            third, grid.provider_manager.functions.register((1, [0], [4], [8000]), (1, 1, 1), [])
        )
        assert [dict(e["args"]) for e in grid.events(grid.provider_manager, "ObjectsLinked", receipt)] == [
            {"prev": 2, "next": 3}
        ]
        assert [e["args"]["id"] for e in grid.events(grid.provider_manager, "NewTail", receipt)] == [3]
        # Registering again (a new proposal) does not list the provider twice.
        grid.register_provider(first)
        assert _listed(grid) == [first.address, second.address, third.address]
        assert (manager.head().call(), manager.tail().call(), manager.idCounter().call()) == (1, 3, 3)
        assert manager.elementCount().call() == 3
        assert manager.get(2).call() == [2, 3, 1, _as_data(second.address)]
        assert manager.objects(2).call() == manager.get(2).call()
        assert manager.findIdForDataFrom(_as_data(third.address), 0).call() == 3
        assert manager.findIdForDataFrom(_as_data(first.address), 2).call() == 0
        assert manager.findIdForDataFrom(_as_data(grid.admin.address), 0).call() == 0

        receipt = grid.send(grid.admin, grid.provider_manager.functions.remove(second.address))
        assert [dict(e["args"]) for e in grid.events(grid.provider_manager, "ObjectsLinked", receipt)] == [
            {"prev": 1, "next": 3}
        ]
        assert [e["args"]["id"] for e in grid.events(grid.provider_manager, "ObjectRemoved", receipt)] == [2]
        assert _listed(grid) == [first.address, third.address]
        assert manager.get(2).call() == [0, 0, 0, b"\0" * 32]
        grid.send(grid.admin, grid.provider_manager.functions.remove(first.address))
        assert (manager.head().call(), manager.tail().call()) == (3, 3)
        grid.send(grid.admin, grid.provider_manager.functions.remove(third.address))
        assert (manager.head().call(), manager.tail().call(), manager.elementCount().call()) == (0, 0, 0)
        # A removed provider that registers again comes back under a new id.
        grid.register_provider(second)
        assert _listed(grid) == [second.address]
        assert manager.findIdForDataFrom(_as_data(second.address), 0).call() == 4
    finally:
        grid.revert_to(snapshot)


def test_registration_tax(grid: Grid) -> None:
    snapshot = grid.snapshot()
    try:
        manager = grid.provider_manager
        provider, treasury = grid.providers[1], grid.customers[4]
        assert manager.functions.PROVIDER_REGISTRATION_TAX().call() == 0
        tax = 5 * CREDIT
        with pytest.raises(Reverted):
            grid.send(
                provider,
                manager.functions.setProviderRegistrationTax(grid.credit.address, tax, provider.address),
            )
        with pytest.raises(Reverted) as no_token:
            grid.send(
                grid.admin,
                manager.functions.setProviderRegistrationTax("0x" + "0" * 40, tax, treasury.address),
            )
        assert no_token.value.error == "Empty"
        grid.send(
            grid.admin,
            manager.functions.setProviderRegistrationTax(grid.credit.address, tax, treasury.address),
        )
        assert manager.functions.PROVIDER_REGISTRATION_TAX().call() == tax

        hardware = (1, [0], [4], [8000])
        with pytest.raises(Reverted):
            grid.send(provider, manager.functions.register(hardware, (1, 1, 1), []))
        assert manager.functions.isWaitingForApproval(provider.address).call() is False

        grid.send(grid.customers[0], grid.credit.functions.transfer(provider.address, 20 * CREDIT))
        grid.send(provider, grid.credit.functions.approve(manager.address, tax))
        before = grid.balance(treasury)
        grid.send(provider, manager.functions.register(hardware, (1, 1, 1), []))
        assert grid.balance(treasury) - before == tax
        assert grid.balance(provider) == 15 * CREDIT
        assert manager.functions.isWaitingForApproval(provider.address).call() is True
    finally:
        grid.revert_to(snapshot)


@pytest.mark.parametrize("status", list(JobStatus))
def test_tools_status_rules(grid: Grid, status: JobStatus) -> None:
    def rule(name: str) -> bool:
        (answer,) = call_tools(grid, name, ["uint8"], [status], ["bool"])
        return bool(answer)

    assert rule("isJobHot") is (status <= JobStatus.RUNNING)
    assert rule("isJobCold") is (status > JobStatus.RUNNING)
    assert rule("isDelegateTopable") is (status in (JobStatus.SCHEDULED, JobStatus.RUNNING))


def test_tools_transition_check_reverts_with_the_protocol_errors(grid: Grid) -> None:
    assert call_tools(grid, "checkNewJobStatus", ["uint8", "uint8"], [0, 1], []) == ()
    with pytest.raises(Reverted) as same:
        call_tools(grid, "checkNewJobStatus", ["uint8", "uint8"], [3, 3], [])
    assert same.value.error == "SameStatusError"
    with pytest.raises(Reverted) as invalid:
        call_tools(grid, "checkNewJobStatus", ["uint8", "uint8"], [0, 5], [])
    assert (invalid.value.error, invalid.value.args_) == ("InvalidTransition", (0, 5))


def test_tools_pricing_on_the_worked_example(market: Grid) -> None:
    """PROTOCOL.md section 3: 10.56384 credits per minute; 200 credits buy 18 minutes."""
    args = [WORKED_EXAMPLE_DEFINITION, WORKED_EXAMPLE_PRICES]
    (minutes,) = call_tools(
        market,
        "convertCreditToDuration",
        [DEFINITION_TYPE, PRICES_TYPE, "uint256"],
        [*args, 200 * CREDIT],
        ["uint64"],
    )
    assert minutes == 18
    (credits,) = call_tools(
        market, "convertDurationToCredit", [DEFINITION_TYPE, PRICES_TYPE, "uint64"], [*args, 10], ["uint256"]
    )
    assert credits == 105_638_400_000_000_000_000
    (valid,) = call_tools(
        market, "isJobDefinitionValid", [DEFINITION_TYPE], [WORKED_EXAMPLE_DEFINITION], ["bool"]
    )
    assert valid is True
    no_tasks: tuple[Any, ...] = (1, 1024, 2, 0, "0" * 64, 0, [], [])
    (valid,) = call_tools(market, "isJobDefinitionValid", [DEFINITION_TYPE], [no_tasks], ["bool"])
    assert valid is False

    def remaining(job_id: bytes) -> int:
        raw = market.jobs.functions.get(job_id).call()
        (answer,) = call_tools(
            market, "getRemainingTime", [JOB_TYPE, PRICES_TYPE], [raw, WORKED_EXAMPLE_PRICES], ["uint64"]
        )
        return int(answer)

    scheduled = job_in(market, JobStatus.SCHEDULED)
    assert remaining(scheduled) == 18
    running = job_in(market, JobStatus.RUNNING)
    market.advance_time(5 * 60 + 1)
    assert remaining(running) == 13
    market.advance_time(60 * 60)
    assert remaining(running) == 0
    assert remaining(job_in(market, JobStatus.FINISHED)) == 0
