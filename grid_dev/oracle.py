"""The meta-scheduler (oracle) of the local grid: gives PENDING jobs to providers that fit them and
takes back jobs their provider left unclaimed past `claimJobTimeout`.

Each pass pages through ProviderManager's list of providers (`fetchPage`) and reads every listed
provider's record, so approvals, bans, removals and new prices show at the next pass without replaying
events since the deployment block. Jobs to place come from NewJobRequestEvent and JobRefusedEvent (which timeoutJob
emits too) and are checked on chain before anything is done with them; JobTransitionEvent to
META_SCHEDULED starts the claim clock. Everything it knows can be rebuilt from the chain, so it keeps
no state on disk. The decisions themselves are the pure functions of `grid_dev.matching`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from web3 import AsyncWeb3, Web3
from web3.contract import AsyncContract

from grid_dev.chain import GridError, LogReader, Target, Transactor, connect, contract, disconnect, events_of
from grid_dev.matching import (
    Affinity,
    JobNeeds,
    Label,
    ProviderOffer,
    choose_provider,
    claim_overdue,
    decode_operator,
    mismatches,
)
from grid_protocol.jobs import Job, JobStatus
from supervisor.chain.abi import plain_value
from supervisor.chain.contracts import ProtocolContracts
from supervisor.chain.keys import Signer
from supervisor.chain.rpc import describe, read

log = structlog.get_logger("grid_dev.oracle")

#: Providers read per `fetchPage` call, and the most pages one pass reads (a bound against a list
#: that never ends).
PROVIDER_PAGE_SIZE = 50
MAX_PROVIDER_PAGES = 10_000
JOB_EVENTS = ("NewJobRequestEvent", "JobRefusedEvent")
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


@dataclass(frozen=True)
class OracleSettings:
    #: Seconds between passes of `run()`.
    poll_interval_seconds: float = 2.0
    #: Chain seconds during which a provider that refused a job (or let it time out) is avoided for it.
    refusal_memory_seconds: int = 3600
    #: Approve providers waiting for approval (for deployments without automatic approval).
    approve_providers: bool = False


@dataclass
class StepReport:
    """What one pass did: jobs given to providers, jobs timed out, jobs that fit nobody (with why)."""

    assigned: dict[str, str] = field(default_factory=dict)
    timed_out: list[str] = field(default_factory=list)
    unmatched: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    approved: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def job_needs(job: Job) -> JobNeeds:
    """The matching view of an on-chain job."""
    definition = job.definition
    affinities = []
    for entry in definition.affinity:
        label = entry.get("label", {})
        op = decode_operator(entry.get("op", b""))
        affinities.append(Affinity(str(label.get("key", "")), str(label.get("value", "")), op or "?"))
    return JobNeeds(
        ntasks=definition.ntasks,
        cpus_per_task=definition.cpus_per_task,
        mem_per_cpu=definition.mem_per_cpu,
        gpus=definition.gpus,
        uses=tuple(Label(k, v) for k, v in definition.uses),
        affinity=tuple(affinities),
        max_cost=job.max_cost,
    )


def provider_offer(record: Mapping[str, Any], schedulable: bool) -> ProviderOffer:
    """The matching view of ProviderManager.getProvider's plain record."""
    hardware, prices = record["providerHardware"], record["providerPrices"]
    return ProviderOffer(
        address=Web3.to_checksum_address(record["addr"]),
        cpus_per_node=tuple(int(c) for c in hardware["cpusPerNode"]),
        mem_per_node=tuple(int(m) for m in hardware["memPerNode"]),
        gpus_per_node=tuple(int(g) for g in hardware["gpusPerNode"]),
        gpu_price=int(prices["gpuPricePerMin"]),
        cpu_price=int(prices["cpuPricePerMin"]),
        mem_price=int(prices["memPricePerMin"]),
        labels=tuple(Label(str(label["key"]), str(label["value"])) for label in record["labels"]),
        schedulable=schedulable and not bool(record["isBanned"]),
    )


class MetaSchedulerOracle:
    """One oracle over one deployment. `step()` does one pass; `run()` repeats it until `stop()`."""

    def __init__(
        self,
        w3: AsyncWeb3[Any],
        contracts: ProtocolContracts,
        signer: Signer,
        *,
        from_block: int,
        settings: OracleSettings | None = None,
    ) -> None:
        self.w3 = w3
        self.contracts = contracts
        self.settings = settings or OracleSettings()
        self.transactor = Transactor(w3, signer)
        self.constants: AsyncContract = contract(w3, "Constants", contracts.constants_address)
        self._job_logs = LogReader(
            w3,
            contracts.meta_scheduler.address,
            events_of(contracts.meta_scheduler.abi, JOB_EVENTS),  # type: ignore[arg-type]
            from_block,
        )
        self._transition_logs = LogReader(
            w3,
            contracts.job_repository.address,
            events_of(contracts.job_repository.abi, ("JobTransitionEvent",)),  # type: ignore[arg-type]
            from_block,
        )
        self.providers: dict[str, ProviderOffer] = {}
        self._to_place: dict[str, None] = {}  # job ids in the order they came (a set with order)
        self._awaiting_claim: set[str] = set()
        self._refusals: dict[str, dict[str, int]] = {}  # job id -> provider -> chain time
        self._block_times: dict[int, int] = {}
        self._last_reasons: dict[str, dict[str, list[str]]] = {}
        self._stopping = asyncio.Event()

    @classmethod
    async def connect(
        cls, rpc_url: str, target: Target, signer: Signer, settings: OracleSettings | None = None
    ) -> MetaSchedulerOracle:
        w3, contracts = await connect(rpc_url, target)
        return cls(w3, contracts, signer, from_block=target.from_block, settings=settings)

    @property
    def address(self) -> str:
        return self.transactor.signer.address

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Pass after pass until stop(); a failed pass is logged and the next one tries again."""
        self._stopping.clear()
        log.info("oracle started", oracle=self.address, meta_scheduler=self.contracts.meta_scheduler.address)
        while not self._stopping.is_set():
            try:
                await self.step()
            except Exception as exc:
                log.warning("oracle pass failed", error=describe(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.settings.poll_interval_seconds)
        log.info("oracle stopped")

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        """Close the connection to the node (after run() returned)."""
        await disconnect(self.w3)

    async def step(self) -> StepReport:
        """One pass: learn providers and jobs from new events, time out overdue claims, place jobs."""
        report = StepReport()
        await self._follow_providers(report)
        await self._follow_jobs()
        now = await self._block_time("latest")
        timeout_minutes = int(await read(lambda: self.constants.functions.claimJobTimeout().call()))
        for job_id in sorted(self._awaiting_claim):
            await self._isolated(job_id, report, self._check_claim(job_id, now, timeout_minutes, report))
        for job_id in list(self._to_place):
            await self._isolated(job_id, report, self._place(job_id, now, report))
        return report

    async def _isolated(self, job_id: str, report: StepReport, work: Awaitable[None]) -> None:
        """One job's trouble (an unreadable record, a failed read) never stops the others' pass."""
        try:
            await work
        except Exception as exc:
            report.failures.append(f"job {job_id}: {describe(exc)}")
            log.warning("job skipped in this pass", job=job_id, error=describe(exc))

    # -- providers ----------------------------------------------------------------------------

    async def _follow_providers(self, report: StepReport) -> None:
        listed = await self._list_providers()
        for address in listed:
            await self._reload_provider(address)
        for address in set(self.providers) - set(listed):
            self._forget_provider(address)
        if self.settings.approve_providers:
            for address in listed:
                await self._approve(address, report)

    async def _list_providers(self) -> list[str]:
        """Every address in ProviderManager's list, page by page from its head."""
        manager = self.contracts.provider_manager
        addresses: list[str] = []
        cursor = 0
        for _ in range(MAX_PROVIDER_PAGES):
            data, length, cursor = await read(
                lambda page=cursor: manager.functions.fetchPage(page, PROVIDER_PAGE_SIZE).call()  # type: ignore[misc]
            )
            for item in data[: int(length)]:
                entry = bytes(item)
                if len(entry) != 32 or any(entry[:12]):
                    log.warning("provider list entry is not an address", entry="0x" + entry.hex())
                    continue
                addresses.append(str(Web3.to_checksum_address(entry[12:])))
            if int(cursor) == 0 or int(length) == 0:
                return list(dict.fromkeys(addresses))
        raise GridError(f"the provider list has more than {MAX_PROVIDER_PAGES} pages")

    def _forget_provider(self, address: str) -> None:
        if self.providers.pop(address, None) is not None:
            log.info("provider gone", provider=address)
            self._last_reasons.clear()

    async def _reload_provider(self, address: str) -> None:
        manager = self.contracts.provider_manager
        raw = await read(lambda: manager.functions.getProvider(address).call())
        outputs = next(e for e in manager.abi if e.get("name") == "getProvider")["outputs"][0]  # type: ignore[typeddict-item]
        record = plain_value(raw, outputs)
        if record["addr"] == ZERO_ADDRESS:
            self._forget_provider(address)
            return
        # An approved record that is not banned is exactly what isValidForScheduling accepts.
        offer = provider_offer(record, schedulable=True)
        if self.providers.get(address) != offer:
            log.info(
                "provider known",
                provider=address,
                schedulable=offer.schedulable,
                cpus=sum(offer.cpus_per_node),
                mem_mb=sum(offer.mem_per_node),
                gpus=sum(offer.gpus_per_node),
                labels={label.key: label.value for label in offer.labels},
            )
            self.providers[address] = offer
            self._last_reasons.clear()

    async def _approve(self, address: str, report: StepReport) -> None:
        manager = self.contracts.provider_manager
        if not await read(lambda: manager.functions.isWaitingForApproval(address).call()):
            return
        try:
            await self.transactor.send(manager.functions.approve(address), f"approving provider {address}")
        except GridError as exc:
            report.failures.append(str(exc))
            log.warning("approval failed", provider=address, error=str(exc))
            return
        report.approved.append(address)
        log.info("provider approved", provider=address)
        await self._reload_provider(address)

    # -- jobs ---------------------------------------------------------------------------------

    async def _follow_jobs(self) -> None:
        for event in await self._job_logs.new_events():
            job_id = str(event.args["_jobId"])
            self._to_place[job_id] = None
            if event.name == "JobRefusedEvent":
                provider = Web3.to_checksum_address(event.args["_providerAddr"])
                when = await self._block_time(event.block_number)
                self._refusals.setdefault(job_id, {})[provider] = when
        for event in await self._transition_logs.new_events():
            job_id = str(event.args["_jobId"])
            if int(event.args["_to"]) == JobStatus.META_SCHEDULED:
                self._awaiting_claim.add(job_id)
            else:
                self._awaiting_claim.discard(job_id)
            if JobStatus(int(event.args["_to"])).is_cold:
                self._to_place.pop(job_id, None)
                self._refusals.pop(job_id, None)
                self._last_reasons.pop(job_id, None)

    async def _check_claim(self, job_id: str, now: int, timeout_minutes: int, report: StepReport) -> None:
        job = await self.contracts.get_job(job_id)
        if job.status != JobStatus.META_SCHEDULED:
            self._awaiting_claim.discard(job_id)
            return
        since = await self._block_time(job.block_number_state_change)
        if not claim_overdue(since, now, timeout_minutes):
            return
        scheduler = self.contracts.meta_scheduler
        try:
            await self.transactor.send(
                scheduler.functions.timeoutJob(bytes.fromhex(job_id[2:])), f"timing out job {job_id}"
            )
        except GridError as exc:
            report.failures.append(str(exc))
            log.warning("timeout failed", job=job_id, error=str(exc))
            return
        log.info("claim timed out", job=job_id, provider=job.provider, waited_s=now - since)
        report.timed_out.append(job_id)
        self._awaiting_claim.discard(job_id)
        self._refusals.setdefault(job_id, {})[Web3.to_checksum_address(job.provider)] = now
        self._to_place[job_id] = None

    async def _place(self, job_id: str, now: int, report: StepReport) -> None:
        job = await self.contracts.get_job(job_id)
        if job.status != JobStatus.PENDING:
            self._to_place.pop(job_id, None)
            return
        needs = job_needs(job)
        recent = {
            provider: when
            for provider, when in self._refusals.get(job_id, {}).items()
            if now - when <= self.settings.refusal_memory_seconds
        }
        chosen = choose_provider(needs, list(self.providers.values()), recent)
        if chosen is None:
            reasons = {address: mismatches(needs, offer) for address, offer in self.providers.items()}
            report.unmatched[job_id] = reasons
            if self._last_reasons.get(job_id) != reasons:
                self._last_reasons[job_id] = reasons
                log.info("job fits no provider yet", job=job_id, reasons=reasons or "no provider known")
            return
        scheduler = self.contracts.meta_scheduler
        try:
            await self.transactor.send(
                scheduler.functions.metaSchedule(bytes.fromhex(job_id[2:]), chosen.address),
                f"assigning job {job_id} to {chosen.address}",
            )
        except GridError as exc:
            report.failures.append(str(exc))
            log.warning("assignment failed", job=job_id, provider=chosen.address, error=str(exc))
            return
        log.info("job assigned", job=job_id, provider=chosen.address)
        report.assigned[job_id] = chosen.address
        self._to_place.pop(job_id, None)
        self._last_reasons.pop(job_id, None)
        self._awaiting_claim.add(job_id)

    async def _block_time(self, block: int | str) -> int:
        if isinstance(block, int) and block in self._block_times:
            return self._block_times[block]
        data = await read(lambda: self.w3.eth.get_block(block))  # type: ignore[arg-type]
        timestamp = int(data["timestamp"])
        if isinstance(block, int):
            if len(self._block_times) > 10_000:
                self._block_times.clear()
            self._block_times[block] = timestamp
        return timestamp
