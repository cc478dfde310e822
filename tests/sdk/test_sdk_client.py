"""DeepSquare's TypeScript SDK as a customer runs it, call for call, against the whole provider side.

`SdkClient` makes the calls of `@deepsquare/deepsquare-client`'s client class with the ABIs the SDK
ships (`../shared/reference-abi/sdk/`), never the project's: the contract addresses come from
MetaScheduler's views as the SDK loads them, transactions are simulated with `eth_call` and then signed
with the customer's key, and the workflow goes to the sbatch service with the SDK's own GraphQL
mutation text. The jobs run on the real Slurm cluster through `grid-supervisor run`; the real
meta-scheduler of the local grid places them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from eth_account.signers.local import LocalAccount
from web3 import Web3

from grid_contracts.artifacts import REPO_ROOT
from grid_dev.chain import Target
from grid_dev.oracle import MetaSchedulerOracle
from grid_protocol.jobs import JobStatus as S
from supervisor.chain.keys import Signer
from tests.fixtures.contracts import CREDIT
from tests.fixtures.supervisor import (
    PRICES_WEI,
    ProviderStack,
    SupervisorProcess,
    credits_per_minute,
    wait_for,
)

SDK_ABI_DIR = REPO_ROOT.parent / "shared" / "reference-abi" / "sdk"
#: The SDK's documents, as graphql-request prints them from its generated TypedDocumentNodes.
SUBMIT_DOCUMENT = "mutation Submit($job: Job!) {\n  submit(job: $job)\n}"

pytestmark = pytest.mark.skipif(not SDK_ABI_DIR.is_dir(), reason=f"the SDK's ABIs not found at {SDK_ABI_DIR}")


def sdk_abi(name: str) -> list[dict[str, Any]]:
    abi: list[dict[str, Any]] = json.loads((SDK_ABI_DIR / f"{name}.json").read_text())
    return abi


class SdkClient:
    """The SDK's client class: one customer's wallet, one MetaScheduler, one sbatch service endpoint."""

    def __init__(self, w3: Web3, meta_scheduler: str, wallet: LocalAccount, sbatch_endpoint: str) -> None:
        self.w3 = w3
        self.wallet = wallet
        self.sbatch_endpoint = sbatch_endpoint
        self.meta_scheduler = w3.eth.contract(
            address=Web3.to_checksum_address(meta_scheduler), abi=sdk_abi("MetaScheduler")
        )
        views = self.meta_scheduler.functions
        self.credit = w3.eth.contract(address=views.credit().call(), abi=sdk_abi("Credit"))
        self.provider_manager = w3.eth.contract(
            address=views.providerManager().call(), abi=sdk_abi("ProviderManager")
        )
        self.jobs = w3.eth.contract(address=views.jobs().call(), abi=sdk_abi("JobRepository"))
        self.queues = w3.eth.contract(
            address=views.providerJobQueues().call(), abi=sdk_abi("ProviderJobQueues")
        )

    def _write(self, call: Any) -> Any:
        """simulateContract, then writeContract: an eth_call that must succeed, then the signed send."""
        result = call.call({"from": self.wallet.address})
        tx = call.build_transaction(
            {"from": self.wallet.address, "nonce": self.w3.eth.get_transaction_count(self.wallet.address)}
        )
        signed = self.wallet.sign_transaction(tx)
        receipt = self.w3.eth.wait_for_transaction_receipt(
            self.w3.eth.send_raw_transaction(signed.raw_transaction)
        )
        assert receipt["status"] == 1
        return result

    def set_allowance(self, amount: int) -> None:
        self._write(self.credit.functions.approve(self.meta_scheduler.address, amount))

    def store(self, job: dict[str, Any]) -> str:
        """The sbatch service's `submit` with the SDK's mutation and variables; returns the key."""
        answer = requests.post(
            self.sbatch_endpoint, json={"query": SUBMIT_DOCUMENT, "variables": {"job": job}}, timeout=30
        )
        answer.raise_for_status()
        body = answer.json()
        assert "errors" not in body, body
        key: str = body["data"]["submit"]
        return key

    def submit_job(
        self,
        job: dict[str, Any],
        job_name: str,
        max_amount: int,
        *,
        storage_type: int,
        uses: list[dict[str, str]],
    ) -> bytes:
        key = self.store(job)
        resources = job["resources"]
        definition = {
            "ntasks": resources["tasks"],
            "gpus": resources["gpus"],
            "cpusPerTask": resources["cpusPerTask"],
            "memPerCpu": resources["memPerCpu"],
            "storageType": storage_type,
            "batchLocationHash": key,
            "uses": uses,
            "affinity": [],
        }
        name = job_name.encode().ljust(32, b"\0")  # viem's toHex, padded to bytes32
        job_id: bytes = self._write(
            self.meta_scheduler.functions.requestNewJob(definition, max_amount, name, True)
        )
        return job_id

    def top_up(self, job_id: bytes, amount: int) -> None:
        self._write(self.meta_scheduler.functions.topUpJob(job_id, amount))

    def cancel(self, job_id: bytes) -> None:
        self._write(self.meta_scheduler.functions.cancelJob(job_id))

    def job(self, job_id: bytes) -> dict[str, Any]:
        """`jobs(id)`, named as the SDK's ABI names the outputs."""
        names = [
            o["name"] for o in next(e for e in sdk_abi("JobRepository") if e.get("name") == "jobs")["outputs"]
        ]
        return dict(zip(names, self.jobs.functions.jobs(job_id).call(), strict=True))

    def list_jobs(self) -> list[bytes]:
        ids: list[bytes] = self.jobs.functions.getByCustomer(self.wallet.address).call()
        return ids

    def transitions(self, job_id: bytes) -> list[tuple[int, int]]:
        """(from, to) of every JobTransitionEvent of the job, decoded with the SDK's ABI."""
        events = self.jobs.events.JobTransitionEvent().get_logs(from_block=0)
        return [(e["args"]["_from"], e["args"]["_to"]) for e in events if e["args"]["_jobId"] == job_id]

    def providers(self, page_size: int = 1) -> list[str]:
        """Every provider of the grid, paged through the linked list."""
        found: list[str] = []
        cursor = 0
        for _ in range(1000):
            data, length, cursor = self.provider_manager.functions.fetchPage(cursor, page_size).call()
            found += [Web3.to_checksum_address(item[12:]) for item in data[:length]]
            if cursor == 0:
                return found
        raise AssertionError("the provider list does not end")


def hello_job(command: str) -> dict[str, Any]:
    """A workflow as an SDK user writes it (the SDK's GraphQL `Job` input)."""
    return {
        "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 1024, "gpus": 1},
        "env": [{"key": "GREETING", "value": "hello"}],
        "steps": [{"name": "main", "run": {"command": command}}],
    }


def place(stack: ProviderStack) -> dict[str, str]:
    """One pass of the local grid's meta-scheduler; returns the jobs it placed."""

    async def one_pass() -> dict[str, str]:
        target = Target(stack.grid.deployment.meta_scheduler, stack.grid.deployment.deploy_block)
        oracle = await MetaSchedulerOracle.connect(
            stack.grid.anvil.http_url, target, Signer(stack.grid.oracle)
        )
        try:
            return (await oracle.step()).assigned
        finally:
            await oracle.close()

    return asyncio.run(one_pass())


@pytest.fixture(scope="module")
def supervisor(provider_stack: ProviderStack) -> Iterator[SupervisorProcess]:
    process = provider_stack.supervisor(max_queued_jobs=4)
    process.start()
    provider_stack.wait_registered()
    yield process
    process.stop()


@pytest.fixture
def sdk(provider_stack: ProviderStack, supervisor: SupervisorProcess) -> SdkClient:
    grid = provider_stack.grid
    return SdkClient(
        grid.w3, grid.deployment.meta_scheduler, provider_stack.customer, provider_stack.sbatch.graphql_url
    )


def test_the_sdk_lists_providers_without_reading_events(
    sdk: SdkClient, provider_stack: ProviderStack
) -> None:
    provider = provider_stack.provider.address
    assert sdk.providers(page_size=1) == sdk.providers(page_size=50)
    assert provider in sdk.providers()
    addr, hardware, prices, banned = sdk.provider_manager.functions.providers(provider).call()
    cluster = provider_stack.cluster
    assert addr == provider and banned is False
    assert tuple(hardware) == (
        1,
        [cluster.gpus_per_node],
        [cluster.cpus_per_node],
        [cluster.memory_mb_per_node],
    )
    assert tuple(prices) == PRICES_WEI
    assert sdk.provider_manager.functions.waitingApprovalProviders(provider).call()[0] == "0x" + "0" * 40


@pytest.mark.parametrize("storage_type", [4, 2], ids=["no-output", "s3-output"])
def test_a_job_submitted_by_the_sdk_runs_and_settles_to_the_wei(
    sdk: SdkClient, provider_stack: ProviderStack, storage_type: int
) -> None:
    grid, provider = provider_stack.grid, provider_stack.provider
    max_amount = 500 * CREDIT
    customer_before, provider_before = grid.balance(sdk.wallet), grid.balance(provider)
    runs_before = sdk.provider_manager.functions.jobCountByProvider(provider.address).call()

    sdk.set_allowance(max_amount)
    job_id = sdk.submit_job(
        hello_job('echo "$GREETING from the sdk"'),
        "sdk-hello",
        max_amount,
        storage_type=storage_type,
        uses=[{"key": "os", "value": "linux"}],
    )
    assert sdk.job(job_id)["status"] == S.PENDING
    assert job_id in sdk.list_jobs()
    assert place(provider_stack) == {"0x" + job_id.hex(): provider.address}

    wait_for("the job to settle", lambda: sdk.job(job_id)["status"] == S.FINISHED, 120)
    assert sdk.transitions(job_id) == [
        (S.PENDING, S.META_SCHEDULED),
        (S.META_SCHEDULED, S.SCHEDULED),
        (S.SCHEDULED, S.RUNNING),
        (S.RUNNING, S.FINISHED),
    ]
    job = sdk.job(job_id)
    assert job["definition"][5] == storage_type
    assert job["jobName"] == b"sdk-hello".ljust(32, b"\0")
    assert (job["customerAddr"], job["providerAddr"]) == (sdk.wallet.address, provider.address)
    duration = provider_stack.reported_duration(job_id, S.FINISHED)
    final_cost = min(max(duration, 1) * credits_per_minute(1, 1, 1024, 1), max_amount)
    max_cost, paid, pending, delegate = job["cost"]
    assert (max_cost, paid, pending, delegate) == (max_amount, final_cost, 0, True)
    assert grid.balance(provider) - provider_before == final_cost - final_cost * 20 // 100
    assert customer_before - grid.balance(sdk.wallet) == final_cost
    assert sdk.provider_manager.functions.jobCountByProvider(provider.address).call() == runs_before + 1
    output = provider_stack.job_output(job_id).read_text()
    assert "hello from the sdk" in output


def test_the_sdk_tops_up_and_cancels_a_running_job(sdk: SdkClient, provider_stack: ProviderStack) -> None:
    grid, provider = provider_stack.grid, provider_stack.provider
    max_amount, extra = 200 * CREDIT, 150 * CREDIT
    customer_before, provider_before = grid.balance(sdk.wallet), grid.balance(provider)
    sdk.set_allowance(max_amount)
    job_id = sdk.submit_job(hello_job("sleep 600"), "sdk-long", max_amount, storage_type=4, uses=[])
    place(provider_stack)
    wait_for("the job to run", lambda: sdk.job(job_id)["status"] == S.RUNNING, 90)

    sdk.set_allowance(extra)
    sdk.top_up(job_id, extra)
    assert sdk.job(job_id)["cost"][0] == max_amount + extra
    # The supervisor claims the top-up: its queue's head passes the entry, the pending credits are taken.
    wait_for(
        "the provider to claim the top-up",
        lambda: (
            sdk.queues.functions.providerTopUpJobsQueues(provider.address).call()[0]
            == sdk.queues.functions.providerTopUpJobsQueues(provider.address).call()[1]
            and sdk.job(job_id)["cost"][2] == 0
        ),
        60,
    )

    sdk.cancel(job_id)
    wait_for("the job to be cancelled", lambda: sdk.job(job_id)["status"] == S.CANCELLED, 90)
    assert sdk.transitions(job_id)[-1] == (S.RUNNING, S.CANCELLED)
    duration = provider_stack.reported_duration(job_id, S.CANCELLED)
    final_cost = max(duration, 1) * credits_per_minute(1, 1, 1024, 1)
    assert sdk.job(job_id)["cost"][1] == final_cost
    assert grid.balance(provider) - provider_before == final_cost - final_cost * 20 // 100
    assert customer_before - grid.balance(sdk.wallet) == final_cost


def test_sdk_workflow_refusals_name_the_field(sdk: SdkClient) -> None:
    answer = requests.post(
        sdk.sbatch_endpoint,
        json={
            "query": SUBMIT_DOCUMENT,
            "variables": {
                "job": {
                    **hello_job("true"),
                    "resources": {"tasks": 0, "cpusPerTask": 1, "memPerCpu": 1, "gpus": 0},
                }
            },
        },
        timeout=30,
    ).json()
    (error,) = answer["errors"]
    assert error["extensions"]["type"] == "validation"
    assert error["extensions"]["field"] == "resources.tasks"
