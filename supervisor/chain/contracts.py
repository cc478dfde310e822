"""Typed access to the protocol's contracts, found from the MetaScheduler address alone.

Reads return dataclasses; writes return `TxCall`s for the transaction sender. Functions beyond the
reference interface (extensions) are used only when the deployed code has them: `discover` looks
for each extension's selector in the contract's dispatcher, so a deployment without them still works.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from eth_utils import function_signature_to_4byte_selector
from eth_utils.crypto import keccak
from web3 import AsyncWeb3, Web3
from web3.contract import AsyncContract

from grid_protocol.abi import ABI_DIR, ABIEntry, load_abi
from grid_protocol.jobs import Job, JobStatus
from grid_protocol.pricing import ProviderPrices
from supervisor.chain.abi import LENIENT_CODEC, canonical_type, plain_value, signature_of
from supervisor.chain.events import ChainEvent
from supervisor.chain.follower import EventSource
from supervisor.chain.rpc import batch_request, read, rpc_error_data, rpc_error_message

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"

#: Functions the supervisor can use when a deployment has them; never assumed.
#: The revert data of `InvalidJob()`, given for an id that names no job however it was read.
NO_SUCH_JOB = "0x" + function_signature_to_4byte_selector("InvalidJob()").hex()

EXTENSIONS: dict[str, tuple[str, ...]] = {
    "JobRepository": ("getStatusAndProvider", "getStatusesAndProviders"),
    "ProviderJobQueues": ("countClaimableJobs",),
    "MetaScheduler": ("withdrawableCut", "claimNextJobs"),
    "ProviderManager": ("autoApprove", "PROVIDER_REGISTRATION_TAX", "registrationTaxCredit"),
}

_ERC20_ALLOWANCE_AND_APPROVE: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "allowance",
        "inputs": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
        "stateMutability": "view",
    },
    {
        "type": "function",
        "name": "approve",
        "inputs": [{"name": "spender", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "nonpayable",
    },
]

#: The events the supervisor follows, by contract.
FOLLOWED_EVENTS: dict[str, tuple[str, ...]] = {
    "MetaScheduler": (
        "ClaimJobEvent",
        "ClaimNextCancellingJobEvent",
        "ClaimNextTopUpJobEvent",
        "JobRefusedEvent",
    ),
    "JobRepository": ("JobTransitionEvent",),
}


@dataclass(frozen=True)
class JobReadError:
    """The chain's refusal to answer for one job (a revert, with its data when the node gave it)."""

    message: str
    data: Any = None


@dataclass(frozen=True)
class ProviderQueues:
    """Which of a provider's queues hold a job now."""

    claimable: bool
    cancelling: bool
    top_up: bool


class DeploymentError(RuntimeError):
    """The address given is not a usable deployment of the protocol."""


@dataclass(frozen=True)
class TxCall:
    """A contract write for the transaction sender (`TransactionSender.submit_call`)."""

    to: str
    data: bytes
    kind: str
    serial_key: str | None = None
    dedup_key: str | None = None
    #: The jobs a claim takes at most (a batch claim several).
    claims: int = 1


@dataclass(frozen=True)
class ProviderRecord:
    """A provider's hardware, prices and labels, as registered (labels sorted, so records compare)."""

    nodes: int
    gpus_per_node: tuple[int, ...]
    cpus_per_node: tuple[int, ...]
    mem_per_node: tuple[int, ...]
    gpu_price_per_min: int
    cpu_price_per_min: int
    mem_price_per_min: int
    labels: tuple[tuple[str, str], ...]
    address: str = ""
    is_banned: bool = False

    @classmethod
    def from_plain(cls, d: Mapping[str, Any]) -> ProviderRecord:
        hardware, prices = d["providerHardware"], d["providerPrices"]
        return cls(
            nodes=int(hardware["nodes"]),
            gpus_per_node=tuple(int(v) for v in hardware["gpusPerNode"]),
            cpus_per_node=tuple(int(v) for v in hardware["cpusPerNode"]),
            mem_per_node=tuple(int(v) for v in hardware["memPerNode"]),
            gpu_price_per_min=int(prices["gpuPricePerMin"]),
            cpu_price_per_min=int(prices["cpuPricePerMin"]),
            mem_price_per_min=int(prices["memPricePerMin"]),
            labels=tuple(sorted((str(lb["key"]), str(lb["value"])) for lb in d["labels"])),
            address=str(d["addr"]),
            is_banned=bool(d["isBanned"]),
        )

    def same_offer(self, other: ProviderRecord) -> bool:
        """Same hardware, prices and labels (the address and ban flag aside)."""
        return self.offer() == other.offer()

    def offer(self) -> tuple[Any, ...]:
        return (
            self.nodes,
            self.gpus_per_node,
            self.cpus_per_node,
            self.mem_per_node,
            self.gpu_price_per_min,
            self.cpu_price_per_min,
            self.mem_price_per_min,
            self.labels,
        )


def status_report_key(job_id: bytes | str, attempt: int, status: JobStatus) -> str:
    """The outbox dedup key of a job's report of `status` in one attempt (the claim's block)."""
    return f"status:{job_id_hex(job_id)}:{attempt}:{int(status)}"


def job_id_hex(job_id: bytes | str) -> str:
    """A job id as 0x + 64 lowercase hex digits (the Slurm job name too)."""
    raw = (
        bytes.fromhex(job_id[2:] if job_id.startswith("0x") else job_id)
        if isinstance(job_id, str)
        else job_id
    )
    if len(raw) != 32:
        raise ValueError(f"a job id has 32 bytes, got {len(raw)}")
    return "0x" + raw.hex()


def _function(abi: Sequence[ABIEntry], name: str) -> ABIEntry:
    for entry in abi:
        if entry.get("type") == "function" and entry.get("name") == name:
            return entry
    raise KeyError(name)


def selector_of(entry: ABIEntry) -> bytes:
    return keccak(text=signature_of(entry))[:4]


def code_has_function(code: bytes, entry: ABIEntry) -> bool:
    """Whether deployed code dispatches `entry` (its selector is pushed with PUSH4 in the dispatcher)."""
    return b"\x63" + selector_of(entry) in code


@dataclass(frozen=True)
class ProtocolContracts:
    """The deployment reached from one MetaScheduler address."""

    w3: AsyncWeb3[Any]
    meta_scheduler: AsyncContract
    job_repository: AsyncContract
    provider_manager: AsyncContract
    provider_job_queues: AsyncContract
    credit_address: ChecksumAddress
    constants_address: ChecksumAddress
    extensions: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    async def discover(
        cls, w3: AsyncWeb3[Any], meta_scheduler_address: str, *, abi_dir: Path = ABI_DIR
    ) -> ProtocolContracts:
        """Find the other contracts through MetaScheduler's views and detect the extensions they have."""
        if not Web3.is_address(meta_scheduler_address):
            raise DeploymentError(f"MetaScheduler address {meta_scheduler_address!r} is not an address")
        address = Web3.to_checksum_address(meta_scheduler_address)
        codes: dict[str, bytes] = {}

        async def code_at(name: str, where: ChecksumAddress) -> bytes:
            code = bytes(await read(lambda: w3.eth.get_code(where)))
            if not code:
                raise DeploymentError(f"no contract code at the {name} address {where}")
            codes[name] = code
            return code

        await code_at("MetaScheduler", address)
        scheduler = w3.eth.contract(address=address, abi=load_abi("MetaScheduler", abi_dir))
        found: dict[str, ChecksumAddress] = {}
        for name, view in (
            ("JobRepository", "jobs"),
            ("ProviderManager", "providerManager"),
            ("ProviderJobQueues", "providerJobQueues"),
            ("Credit", "credit"),
            ("Constants", "constants"),
        ):
            try:
                value = await read(lambda v=view: scheduler.functions[v]().call())  # type: ignore[misc]
            except Exception as exc:
                raise DeploymentError(f"{address} does not answer MetaScheduler.{view}(): {exc}") from None
            found[name] = Web3.to_checksum_address(value)
            await code_at(name, found[name])

        def contract(name: str) -> AsyncContract:
            return w3.eth.contract(address=found[name], abi=load_abi(name, abi_dir))

        extensions: set[str] = set()
        for name, functions in EXTENSIONS.items():
            abi = load_abi(name, abi_dir)
            for function in functions:
                try:
                    entry = _function(abi, function)
                except KeyError:
                    continue
                if code_has_function(codes[name], entry):
                    extensions.add(function)
        return cls(
            w3=w3,
            meta_scheduler=scheduler,
            job_repository=contract("JobRepository"),
            provider_manager=contract("ProviderManager"),
            provider_job_queues=contract("ProviderJobQueues"),
            credit_address=found["Credit"],
            constants_address=found["Constants"],
            extensions=frozenset(extensions),
        )

    # -- reads --------------------------------------------------------------------------------

    async def _call(self, contract: AsyncContract, function: str, *args: Any) -> Any:
        return await read(lambda: contract.functions[function](*args).call())

    async def get_job(self, job_id: bytes | str) -> Job:
        raw = await self._call(self.job_repository, "get", bytes.fromhex(job_id_hex(job_id)[2:]))
        return Job.from_tuple(raw)

    async def job_status_and_provider(self, job_id: bytes | str) -> tuple[JobStatus, str]:
        """Status and provider of a job; the cheap extension when deployed, else the full record."""
        if "getStatusAndProvider" in self.extensions:
            status, provider = await self._call(
                self.job_repository, "getStatusAndProvider", bytes.fromhex(job_id_hex(job_id)[2:])
            )
            return JobStatus(int(status)), Web3.to_checksum_address(provider)
        job = await self.get_job(job_id)
        return job.status, job.provider

    async def job_views(
        self, job_ids: Sequence[str], *, batch_size: int = 200
    ) -> dict[str, tuple[JobStatus, str] | JobReadError]:
        """(status, provider) of many jobs: `batch_size` jobs to one call where the deployment has
        `getStatusesAndProviders`, else in JSON-RPC batches of `batch_size` calls, never one request
        per job. A job the chain cannot answer for (a revert, no such job) is a JobReadError in its
        place; a transport failure raises for the whole read."""
        if "getStatusesAndProviders" in self.extensions:
            return await self._job_views_at_once(job_ids, batch_size)
        cheap = "getStatusAndProvider" in self.extensions
        function = "getStatusAndProvider" if cheap else "get"
        outputs = _function(self.job_repository.abi, function)["outputs"]  # type: ignore[arg-type]
        types = [canonical_type(dict(o)) for o in outputs]
        views: dict[str, tuple[JobStatus, str] | JobReadError] = {}
        for start in range(0, len(job_ids), batch_size):
            chunk = [job_id_hex(j) for j in job_ids[start : start + batch_size]]
            requests = [
                (
                    "eth_call",
                    [
                        {
                            "to": self.job_repository.address,
                            "data": self.job_repository.encode_abi(function, args=[bytes.fromhex(j[2:])]),
                        },
                        "latest",
                    ],
                )
                for j in chunk
            ]
            answers = await batch_request(self.w3, requests)
            for job_id, answer in zip(chunk, answers, strict=True):
                if "error" in answer:
                    views[job_id] = JobReadError(rpc_error_message(answer), rpc_error_data(answer))
                    continue
                raw = bytes.fromhex(str(answer["result"])[2:])
                decoded = LENIENT_CODEC.decode(types, raw)
                if cheap:
                    status, provider = decoded
                else:
                    job = Job.from_tuple(decoded[0])
                    status, provider = job.status, job.provider
                views[job_id] = (JobStatus(int(status)), Web3.to_checksum_address(provider))
        return views

    async def _job_views_at_once(
        self, job_ids: Sequence[str], batch_size: int
    ) -> dict[str, tuple[JobStatus, str] | JobReadError]:
        repository = self.job_repository
        views: dict[str, tuple[JobStatus, str] | JobReadError] = {}
        for start in range(0, len(job_ids), batch_size):
            chunk = [job_id_hex(j) for j in job_ids[start : start + batch_size]]
            ids = [bytes.fromhex(j[2:]) for j in chunk]
            data = repository.encode_abi("getStatusesAndProviders", args=[ids])
            (answer,) = await batch_request(
                self.w3, [("eth_call", [{"to": repository.address, "data": data}, "latest"])]
            )
            if "error" in answer:
                error = JobReadError(rpc_error_message(answer), rpc_error_data(answer))
                views.update(dict.fromkeys(chunk, error))
                continue
            found, statuses, providers = LENIENT_CODEC.decode(
                ["bool[]", "uint8[]", "address[]"], bytes.fromhex(str(answer["result"])[2:])
            )
            if not len(found) == len(statuses) == len(providers) == len(chunk):
                raise RuntimeError(
                    f"JobRepository.getStatusesAndProviders answered {len(found)} jobs for {len(chunk)} asked"
                )
            for job_id, known, status, provider in zip(chunk, found, statuses, providers, strict=True):
                views[job_id] = (
                    (JobStatus(int(status)), Web3.to_checksum_address(provider))
                    if known
                    else JobReadError("InvalidJob()", NO_SUCH_JOB)
                )
        return views

    async def provider_queues(self, provider: str) -> ProviderQueues:
        """Whether each of the provider's three queues holds a job, in one JSON-RPC batch: the
        claimer's first question."""
        queues = self.provider_job_queues
        functions = ("hasNextClaimableJob", "hasCancellingJob", "hasTopUpJob")
        requests = [
            ("eth_call", [{"to": queues.address, "data": queues.encode_abi(name, args=[provider])}, "latest"])
            for name in functions
        ]
        answers = await batch_request(self.w3, requests)
        flags = []
        for name, answer in zip(functions, answers, strict=True):
            if "error" in answer:
                raise RuntimeError(f"ProviderJobQueues.{name} was refused: {rpc_error_message(answer)}")
            (flag,) = LENIENT_CODEC.decode(["bool"], bytes.fromhex(str(answer.get("result"))[2:]))
            flags.append(bool(flag))
        claimable, cancelling, top_up = flags
        return ProviderQueues(claimable=claimable, cancelling=cancelling, top_up=top_up)

    async def is_valid_for_scheduling(self, provider: str) -> bool:
        return bool(await self._call(self.provider_manager, "isValidForScheduling", provider))

    async def provider_prices(self, provider: str) -> ProviderPrices:
        gpu, cpu, mem = await self._call(self.provider_manager, "getProviderPrices", provider)
        return ProviderPrices(int(gpu), int(cpu), int(mem))

    async def provider_record(self, provider: str, *, waiting: bool = False) -> ProviderRecord:
        """The approved record (or with `waiting`, the proposal awaiting approval) of a provider."""
        function = "getWaitingForApprovalProvider" if waiting else "getProvider"
        raw = await self._call(self.provider_manager, function, provider)
        outputs = _function(self.provider_manager.abi, function)["outputs"][0]  # type: ignore[arg-type]
        return ProviderRecord.from_plain(plain_value(raw, outputs))

    async def registration_tax(self) -> tuple[int, str | None]:
        """What one `register` costs, in credit-wei, and the token it is paid in (None when unknown)."""
        if "PROVIDER_REGISTRATION_TAX" not in self.extensions:
            return 0, None
        tax = int(await self._call(self.provider_manager, "PROVIDER_REGISTRATION_TAX"))
        if tax == 0 or "registrationTaxCredit" not in self.extensions:
            return tax, None
        token = await self._call(self.provider_manager, "registrationTaxCredit")
        return tax, Web3.to_checksum_address(token)

    def _erc20(self, token: str) -> AsyncContract:
        return self.w3.eth.contract(address=Web3.to_checksum_address(token), abi=_ERC20_ALLOWANCE_AND_APPROVE)

    async def allowance(self, token: str, owner: str, spender: str) -> int:
        return int(await self._call(self._erc20(token), "allowance", owner, spender))

    def approve(self, token: str, spender: str, amount: int) -> TxCall:
        """ERC20 approve of `amount` for `spender` (the registration tax, for ProviderManager)."""
        return self._tx(self._erc20(token), "approve", [Web3.to_checksum_address(spender), amount], "approve")

    async def claimable_jobs(self, provider: str, at_most: int) -> int:
        """Jobs a batch of claims can take now: stale queue entries are not counted where the
        deployment can say so (the `countClaimableJobs` extension); else the queue's size."""
        if "countClaimableJobs" in self.extensions:
            return int(await self._call(self.provider_job_queues, "countClaimableJobs", provider, at_most))
        size = int(await self._call(self.provider_job_queues, "getClaimableJobQueueSize", provider))
        return min(size, at_most)

    async def latest_timestamp(self) -> int:
        block = await read(lambda: self.w3.eth.get_block("latest"))
        return int(block["timestamp"])

    async def top_up_slice_minutes(self) -> int:
        constants = self.w3.eth.contract(
            address=self.constants_address,
            abi=[
                {
                    "type": "function",
                    "name": "topUpSliceDurationMin",
                    "inputs": [],
                    "outputs": [{"name": "", "type": "uint64"}],
                    "stateMutability": "view",
                }
            ],
        )
        return int(await self._call(constants, "topUpSliceDurationMin"))

    # -- writes -------------------------------------------------------------------------------

    def register(self, record: ProviderRecord) -> TxCall:
        """ProviderManager.register with the record's hardware, prices and labels."""
        hardware = (
            record.nodes,
            list(record.gpus_per_node),
            list(record.cpus_per_node),
            list(record.mem_per_node),
        )
        prices = (record.gpu_price_per_min, record.cpu_price_per_min, record.mem_price_per_min)
        labels = [(key, value) for key, value in record.labels]
        data = self.provider_manager.encode_abi("register", args=[hardware, prices, labels])
        return TxCall(self.provider_manager.address, bytes.fromhex(data[2:]), "register", dedup_key=None)

    def _tx(
        self,
        contract: AsyncContract,
        function: str,
        args: Sequence[Any],
        kind: str,
        *,
        serial_key: str | None = None,
        dedup_key: str | None = None,
    ) -> TxCall:
        data = contract.encode_abi(function, args=list(args))
        return TxCall(contract.address, bytes.fromhex(data[2:]), kind, serial_key, dedup_key)

    def claim_next_job(self) -> TxCall:
        return self._tx(self.meta_scheduler, "claimNextJob", [], "claim_next_job")

    @property
    def claims_in_batches(self) -> bool:
        """Whether one transaction can claim several jobs (the `claimNextJobs` extension)."""
        return "claimNextJobs" in self.extensions

    def claim_next_jobs(self, count: int) -> TxCall:
        """Up to `count` jobs in one transaction, where the deployment can (else one job)."""
        if count == 1 or not self.claims_in_batches:
            return self.claim_next_job()
        return replace(
            self._tx(self.meta_scheduler, "claimNextJobs", [count], "claim_next_job"), claims=count
        )

    def claim_next_cancelling_job(self) -> TxCall:
        return self._tx(self.meta_scheduler, "claimNextCancellingJob", [], "claim_next_cancelling_job")

    def claim_next_top_up_job(self) -> TxCall:
        return self._tx(self.meta_scheduler, "claimNextTopUpJob", [], "claim_next_top_up_job")

    def refuse_job(self, job_id: bytes | str, *, attempt: int = 0) -> TxCall:
        """refuseJob, once per attempt (`attempt`: the block of the claim it answers)."""
        jid = job_id_hex(job_id)
        return self._tx(
            self.meta_scheduler,
            "refuseJob",
            [bytes.fromhex(jid[2:])],
            "refuse_job",
            serial_key=jid,
            dedup_key=f"refuse:{jid}:{attempt}",
        )

    def provider_set_job_status(
        self,
        job_id: bytes | str,
        status: JobStatus,
        *,
        duration_minute: int = 0,
        last_error: str = "",
        exit_code: int = 0,
        attempt: int = 0,
    ) -> TxCall:
        """A status report; one per (job, attempt, status), sent after the job's earlier reports.

        `attempt` is the block of the claim the report belongs to: a job handed back and claimed
        again reports its statuses anew.
        """
        jid = job_id_hex(job_id)
        return self._tx(
            self.meta_scheduler,
            "providerSetJobStatus",
            [bytes.fromhex(jid[2:]), int(status), duration_minute, last_error, exit_code],
            "provider_set_job_status",
            serial_key=jid,
            dedup_key=status_report_key(jid, attempt, status),
        )

    def top_up_job_delegate(self, job_id: bytes | str, slice_index: int) -> TxCall:
        jid = job_id_hex(job_id)
        return self._tx(
            self.meta_scheduler,
            "topUpJobDelegate",
            [bytes.fromhex(jid[2:])],
            "top_up_job_delegate",
            serial_key=jid,
            dedup_key=f"topup:{jid}:{slice_index}",
        )

    # -- events -------------------------------------------------------------------------------

    def follower_sources(
        self, provider: str, tracked: Callable[[str], bool] = lambda job_id: False
    ) -> list[EventSource]:
        """The events the supervisor of `provider` acts on: its claims, cancellations, top-ups and
        refusals; every transition to META_SCHEDULED, as the hint that a job may be claimable; and
        every transition of a job it `tracked`, which keeps that job's chain status without a read."""
        me = Web3.to_checksum_address(provider)

        def mine(event: ChainEvent) -> bool:
            who = event.args.get("providerAddr", event.args.get("_providerAddr"))
            return isinstance(who, str) and Web3.to_checksum_address(who) == me

        def relevant_transition(event: ChainEvent) -> bool:
            if int(event.args.get("_to", -1)) == int(JobStatus.META_SCHEDULED):
                return True
            return tracked(job_id_hex(str(event.args.get("_jobId"))))

        def events(contract: AsyncContract, name: str) -> list[ABIEntry]:
            wanted = FOLLOWED_EVENTS[name]
            return [e for e in contract.abi if e.get("type") == "event" and e.get("name") in wanted]  # type: ignore[misc]

        return [
            EventSource(self.meta_scheduler.address, events(self.meta_scheduler, "MetaScheduler"), mine),
            EventSource(
                self.job_repository.address, events(self.job_repository, "JobRepository"), relevant_transition
            ),
        ]
