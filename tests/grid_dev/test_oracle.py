"""The meta-scheduler oracle against a real anvil with the deployed protocol."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from grid_dev.chain import Target
from grid_dev.matching import encode_operator
from grid_dev.oracle import MetaSchedulerOracle, OracleSettings
from grid_protocol.jobs import JobStatus
from supervisor.chain.keys import Signer
from tests.fixtures.contracts import CREDIT, Grid

CHEAP = (0, 10**15, 0)  # gpu, cpu, mem prices (credit-wei per minute)
DEAR = (0, 10**16, 0)


def definition(
    ntasks: int = 1,
    cpus_per_task: int = 1,
    mem_per_cpu: int = 1000,
    gpus: int = 0,
    *,
    uses: tuple[tuple[str, str], ...] = (),
    affinity: tuple[tuple[str, str, str], ...] = (),
) -> tuple[Any, ...]:
    return (
        gpus,
        mem_per_cpu,
        cpus_per_task,
        ntasks,
        "0" * 64,
        0,
        [list(u) for u in uses],
        [((key, value), encode_operator(op)) for key, op, value in affinity],
    )


@pytest.fixture
def chain(clean_grid: Grid) -> Iterator[Grid]:
    yield clean_grid


@pytest.fixture
async def oracle(chain: Grid) -> AsyncIterator[MetaSchedulerOracle]:
    target = Target(chain.deployment.meta_scheduler, chain.deployment.deploy_block)
    oracle = await MetaSchedulerOracle.connect(chain.anvil.http_url, target, Signer(chain.oracle))
    yield oracle
    await oracle.close()


def status(chain: Grid, job_id: bytes) -> tuple[JobStatus, str]:
    job = chain.job(job_id)
    return JobStatus(job["status"]), job["providerAddr"]


async def test_a_job_goes_to_the_provider_whose_hardware_fits(
    chain: Grid, oracle: MetaSchedulerOracle
) -> None:
    small, big = chain.providers[0], chain.providers[1]
    chain.register_provider(small, CHEAP, cpus=2, gpus=0, mem=8000)
    chain.register_provider(big, DEAR, cpus=32, gpus=4, mem=128_000)
    fits_both = chain.request_job(chain.customers[0], 100 * CREDIT, definition(1, 2, 1000))
    needs_big = chain.request_job(chain.customers[0], 100 * CREDIT, definition(2, 4, 1000, gpus=2))

    report = await oracle.step()

    assert report.assigned == {"0x" + fits_both.hex(): small.address, "0x" + needs_big.hex(): big.address}
    assert status(chain, fits_both) == (JobStatus.META_SCHEDULED, small.address)
    assert status(chain, needs_big) == (JobStatus.META_SCHEDULED, big.address)
    assert chain.claim(small)["jobId"] == fits_both
    assert chain.claim(big)["jobId"] == needs_big


async def test_a_job_that_fits_nobody_stays_pending_with_the_reasons(
    chain: Grid, oracle: MetaSchedulerOracle
) -> None:
    provider = chain.providers[0]
    chain.register_provider(provider, CHEAP, cpus=4, gpus=1, mem=8000)
    too_big = chain.request_job(chain.customers[0], 100 * CREDIT, definition(1, 2, 1000, gpus=3))

    report = await oracle.step()

    assert report.assigned == {}
    assert report.unmatched == {"0x" + too_big.hex(): {provider.address: ["needs 3 GPUs, has 1"]}}
    assert status(chain, too_big)[0] == JobStatus.PENDING
    # A provider that fits arrives later: the job is placed on the next pass.
    chain.register_provider(chain.providers[1], DEAR, gpus=4)
    assert (await oracle.step()).assigned == {"0x" + too_big.hex(): chain.providers[1].address}


async def test_uses_and_affinity_choose_among_providers(chain: Grid, oracle: MetaSchedulerOracle) -> None:
    old_eu, new_us, new_eu = chain.providers
    chain.register_provider(old_eu, CHEAP, labels=(("region", "eu"), ("gen", "3")))
    chain.register_provider(new_us, CHEAP, labels=(("region", "us"), ("gen", "10")))
    chain.register_provider(new_eu, DEAR, labels=(("region", "eu"), ("gen", "10")))
    customer = chain.customers[0]
    in_eu = chain.request_job(customer, 100 * CREDIT, definition(uses=(("region", "eu"),)))
    recent = chain.request_job(customer, 100 * CREDIT, definition(affinity=(("gen", ">", "9"),)))
    both = chain.request_job(
        customer, 100 * CREDIT, definition(uses=(("region", "eu"),), affinity=(("gen", ">=", "4"),))
    )
    not_us = chain.request_job(customer, 100 * CREDIT, definition(affinity=(("region", "!=", "us"),)))
    nowhere = chain.request_job(customer, 100 * CREDIT, definition(uses=(("region", "asia"),)))

    report = await oracle.step()

    assert report.assigned == {
        "0x" + in_eu.hex(): old_eu.address,  # the cheaper of the two in eu
        # gen 10 > 9 as numbers (as text "10" < "9"); new_us is cheaper than new_eu
        "0x" + recent.hex(): new_us.address,
        "0x" + both.hex(): new_eu.address,
        "0x" + not_us.hex(): old_eu.address,
    }
    assert "0x" + nowhere.hex() in report.unmatched
    assert status(chain, nowhere)[0] == JobStatus.PENDING


async def test_a_banned_or_removed_provider_gets_nothing(chain: Grid, oracle: MetaSchedulerOracle) -> None:
    banned, removed, good = chain.providers
    chain.register_provider(banned, CHEAP)
    chain.register_provider(removed, CHEAP)
    chain.register_provider(good, DEAR)
    chain.send(chain.admin, chain.provider_manager.functions.ban(banned.address))
    chain.send(chain.admin, chain.provider_manager.functions.remove(removed.address))
    job = chain.request_job(chain.customers[0], 100 * CREDIT, definition())

    assert (await oracle.step()).assigned == {"0x" + job.hex(): good.address}
    assert set(oracle.providers) == {banned.address, good.address}
    assert not oracle.providers[banned.address].schedulable


async def test_providers_come_from_the_paged_list_not_from_past_events(chain: Grid) -> None:
    """An oracle that reads no event before the head still knows every listed provider and its changes."""
    first, second = chain.providers[0], chain.providers[1]
    chain.register_provider(first, DEAR)
    chain.register_provider(second, DEAR, cpus=2)
    head = chain.w3.eth.block_number
    target = Target(chain.deployment.meta_scheduler, head + 1)
    oracle = await MetaSchedulerOracle.connect(chain.anvil.http_url, target, Signer(chain.oracle))
    try:
        await oracle.step()
        assert set(oracle.providers) == {first.address, second.address}
        assert oracle.providers[first.address].cpu_price == DEAR[1]
        chain.register_provider(first, CHEAP)
        chain.send(chain.admin, chain.provider_manager.functions.remove(second.address))
        job = chain.request_job(chain.customers[0], 100 * CREDIT, definition())
        report = await oracle.step()
        assert set(oracle.providers) == {first.address}
        assert oracle.providers[first.address].cpu_price == CHEAP[1]
        assert report.assigned == {"0x" + job.hex(): first.address}
    finally:
        await oracle.close()


async def test_a_refused_job_goes_to_another_provider(chain: Grid, oracle: MetaSchedulerOracle) -> None:
    cheap, dear = chain.providers[0], chain.providers[1]
    chain.register_provider(cheap, CHEAP)
    chain.register_provider(dear, DEAR)
    job = chain.request_job(chain.customers[0], 100 * CREDIT, definition())
    assert (await oracle.step()).assigned == {"0x" + job.hex(): cheap.address}

    chain.send(cheap, chain.scheduler.functions.refuseJob(job))
    assert status(chain, job)[0] == JobStatus.PENDING

    assert (await oracle.step()).assigned == {"0x" + job.hex(): dear.address}
    assert status(chain, job) == (JobStatus.META_SCHEDULED, dear.address)


async def test_a_job_refused_by_its_only_fitting_provider_goes_back_to_it(
    chain: Grid, oracle: MetaSchedulerOracle
) -> None:
    only = chain.providers[0]
    chain.register_provider(only, CHEAP)
    job = chain.request_job(chain.customers[0], 100 * CREDIT, definition())
    await oracle.step()
    chain.send(only, chain.scheduler.functions.refuseJob(job))
    assert (await oracle.step()).assigned == {"0x" + job.hex(): only.address}


async def test_an_unclaimed_job_is_timed_out_after_claim_job_timeout_and_placed_again(
    chain: Grid, oracle: MetaSchedulerOracle
) -> None:
    slow, other = chain.providers[0], chain.providers[1]
    chain.register_provider(slow, CHEAP)
    chain.register_provider(other, DEAR)
    job = chain.request_job(chain.customers[0], 100 * CREDIT, definition())
    assert (await oracle.step()).assigned == {"0x" + job.hex(): slow.address}
    timeout_minutes = chain.constants.functions.claimJobTimeout().call()
    assert timeout_minutes == 10

    chain.advance_time(timeout_minutes * 60 - 30)  # not yet overdue
    report = await oracle.step()
    assert report.timed_out == []
    assert status(chain, job) == (JobStatus.META_SCHEDULED, slow.address)

    chain.advance_time(60)
    report = await oracle.step()
    assert report.timed_out == ["0x" + job.hex()]
    assert report.assigned == {"0x" + job.hex(): other.address}
    assert status(chain, job) == (JobStatus.META_SCHEDULED, other.address)
    # The slow provider's queue entry is stale: it cannot claim the job any more.
    assert not chain.queues.functions.hasNextClaimableJob(slow.address).call()


async def test_a_claimed_job_is_never_timed_out(chain: Grid, oracle: MetaSchedulerOracle) -> None:
    provider = chain.providers[0]
    chain.register_provider(provider, CHEAP)
    job = chain.request_job(chain.customers[0], 100 * CREDIT, definition())
    await oracle.step()
    chain.claim(provider)
    chain.advance_time(3600)
    report = await oracle.step()
    assert report.timed_out == []
    assert status(chain, job) == (JobStatus.SCHEDULED, provider.address)


async def test_a_cancelled_job_is_left_alone(chain: Grid, oracle: MetaSchedulerOracle) -> None:
    chain.register_provider(chain.providers[0], CHEAP)
    job = chain.request_job(chain.customers[0], 100 * CREDIT, definition())
    chain.send(chain.customers[0], chain.scheduler.functions.cancelJob(job))
    report = await oracle.step()
    assert report.assigned == {} and report.unmatched == {} and report.failures == []
    assert status(chain, job)[0] == JobStatus.CANCELLED


async def test_the_oracle_can_approve_waiting_providers(chain: Grid) -> None:
    target = Target(chain.deployment.meta_scheduler, chain.deployment.deploy_block)
    oracle = await MetaSchedulerOracle.connect(
        chain.anvil.http_url, target, Signer(chain.oracle), OracleSettings(approve_providers=True)
    )
    provider = chain.providers[2]
    chain.register_provider(provider, CHEAP, approve=False)
    job = chain.request_job(chain.customers[0], 100 * CREDIT, definition())

    report = await oracle.step()
    await oracle.close()

    assert report.approved == [provider.address]
    assert chain.provider_manager.functions.isValidForScheduling(provider.address).call()
    assert report.assigned == {"0x" + job.hex(): provider.address}


async def test_run_places_jobs_as_they_come_until_stopped(chain: Grid) -> None:
    target = Target(chain.deployment.meta_scheduler, chain.deployment.deploy_block)
    oracle = await MetaSchedulerOracle.connect(
        chain.anvil.http_url, target, Signer(chain.oracle), OracleSettings(poll_interval_seconds=0.2)
    )
    provider: LocalAccount = chain.providers[0]
    chain.register_provider(provider, CHEAP)
    task = asyncio.create_task(oracle.run())
    try:
        job = chain.request_job(chain.customers[0], 100 * CREDIT, definition())
        deadline = time.monotonic() + 20
        while status(chain, job)[0] != JobStatus.META_SCHEDULED:
            assert time.monotonic() < deadline, "the running oracle did not place the job"
            await asyncio.sleep(0.1)
        assert status(chain, job)[1] == provider.address
    finally:
        oracle.stop()
        await asyncio.wait_for(task, timeout=10)
        await oracle.close()
    assert task.done() and task.exception() is None


async def test_a_job_with_labels_that_are_not_utf8_does_not_stall_the_pass(
    chain: Grid, oracle: MetaSchedulerOracle
) -> None:
    from eth_abi import encode
    from eth_utils import function_signature_to_4byte_selector

    provider, customer = chain.providers[0], chain.customers[0]
    chain.register_provider(provider, CHEAP, labels=(("os", "linux"),))
    definition_type = (
        "(uint64,uint64,uint64,uint64,string,uint8,(string,string)[],((string,string),bytes2)[])"
    )
    selector = function_signature_to_4byte_selector(f"requestNewJob({definition_type},uint256,bytes32,bool)")
    raw_definition: tuple[Any, ...] = (0, 1000, 1, 1, b"0" * 64, 4, [(b"os", b"\xfflinux")], [])
    data = selector + encode(
        [definition_type.replace("string", "bytes"), "uint256", "bytes32", "bool"],
        [raw_definition, 100 * CREDIT, b"x".ljust(32, b"\0"), False],
    )
    chain.send(customer, chain.credit.functions.approve(chain.scheduler.address, 100 * CREDIT))
    tx = chain.w3.eth.send_transaction(
        {"from": customer.address, "to": chain.scheduler.address, "data": data}
    )
    assert chain.w3.eth.wait_for_transaction_receipt(tx)["status"] == 1
    odd = "0x" + chain.jobs.functions.jobIdCounter().call().to_bytes(32, "big").hex()
    normal = chain.request_job(customer, 100 * CREDIT, definition(uses=(("os", "linux"),)))

    report = await oracle.step()

    assert report.assigned == {"0x" + normal.hex(): provider.address}
    assert odd in report.unmatched  # its label matches no provider: it waits, the pass goes on
