"""What a customer does on any deployment: submit a workflow with locked credits, follow the job,
cancel it, top it up.

`submit` validates the workflow locally (the sbatch service's own rules), stores it through the
service's GraphQL API, puts the returned key on chain as `batchLocationHash`, approves the credits
and calls `requestNewJob`. Every refusal (bad workflow, unknown job, too few credits, a revert) is a
`GridError` with one line saying what is wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import Web3Exception

from grid_dev.chain import (
    GridError,
    LogReader,
    Target,
    Transactor,
    connect,
    contract,
    disconnect,
    events_of,
    format_credits,
)
from grid_dev.matching import encode_operator
from grid_protocol.jobs import Job, JobStatus, StorageType
from sbatch_service.loader import parse_workflow_text
from sbatch_service.models import Job as Workflow
from sbatch_service.models import WorkflowError, validate_workflow
from supervisor.chain.contracts import ProtocolContracts, job_id_hex
from supervisor.chain.errors import ErrorDecoder, revert_data_of
from supervisor.chain.events import EventDecoder
from supervisor.chain.keys import Signer
from supervisor.chain.rpc import describe, read

SUBMIT_MUTATION = "mutation Submit($job: Job!) { submit(job: $job) }"
SBATCH_TIMEOUT_S = 30.0
#: An HTTP output to this endpoint is stored with DeepSquare's transfer service (storage type 0).
DEEPSQUARE_TRANSFER_URL = "https://transfer.deepsquare.run/"


@dataclass(frozen=True)
class Transition:
    """One status change of a job, as JobTransitionEvent logged it."""

    block_number: int
    timestamp: int
    old: JobStatus
    new: JobStatus

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
        return f"{when} UTC  block {self.block_number}  {self.old.name} -> {self.new.name}"


@dataclass(frozen=True)
class Submitted:
    job_id: str
    batch_location_hash: str
    locked: int


@dataclass(frozen=True)
class Settlement:
    """How a cold job ended, in credit-wei."""

    status: JobStatus
    max_cost: int
    final_cost: int
    refund: int
    last_error: str
    exit_code: int

    def describe(self) -> str:
        text = (
            f"job ended {self.status.name}: final cost {format_credits(self.final_cost)} credits, "
            f"refunded {format_credits(self.refund)} of {format_credits(self.max_cost)} locked"
        )
        if self.last_error:
            text += f"; last error: {self.last_error}"
        return text + f"; exit code {self.exit_code}"


def read_workflow(path: Path) -> tuple[object, Workflow]:
    """The workflow object (as the service receives it) and its validated form."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GridError(f"workflow file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise GridError(f"cannot read the workflow file {path}: {reason}") from None
    try:
        document = parse_workflow_text(text)
        return document, validate_workflow(document)
    except WorkflowError as exc:
        problems = "; ".join(f"{e.field or '(top level)'}: {e.message}" for e in exc.errors)
        raise GridError(f"workflow {path} is invalid: {problems}") from None


def graphql_url(sbatch_url: str) -> str:
    """The GraphQL endpoint of the sbatch service from its base URL or the endpoint itself."""
    parts = urlsplit(sbatch_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise GridError(f"--sbatch-url {sbatch_url!r} is not an http(s) URL")
    return sbatch_url if parts.path not in ("", "/") else sbatch_url.rstrip("/") + "/graphql"


def store_workflow(sbatch_url: str, document: object) -> str:
    """Store the workflow with the sbatch service; returns the key to put on chain."""
    url = graphql_url(sbatch_url)
    try:
        answer = requests.post(
            url, json={"query": SUBMIT_MUTATION, "variables": {"job": document}}, timeout=SBATCH_TIMEOUT_S
        )
        body = answer.json()
    except requests.RequestException as exc:
        raise GridError(f"no sbatch service answers at {url} ({type(exc).__name__})") from None
    except ValueError:
        raise GridError(f"the sbatch service at {url} answered HTTP {answer.status_code}, not JSON") from None
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors:
        first = errors[0]
        extensions = first.get("extensions") or {}
        field = extensions.get("field")
        where = f" (field {field})" if field else ""
        raise GridError(f"the sbatch service refused the workflow: {first.get('message')}{where}")
    try:
        key = body["data"]["submit"]
    except (KeyError, TypeError):
        raise GridError(f"the sbatch service at {url} gave no key: {str(body)[:200]}") from None
    if not isinstance(key, str) or not key:
        raise GridError(f"the sbatch service at {url} gave an empty key")
    return key


def parse_labels(values: Sequence[str], option: str) -> list[tuple[str, str]]:
    """`key=value` pairs of --uses."""
    labels = []
    for value in values:
        key, sep, label = value.partition("=")
        if not sep or not key:
            raise GridError(f"{option} {value!r}: expected KEY=VALUE")
        labels.append((key, label))
    return labels


AFFINITY_OPERATORS = ("==", "!=", "<=", ">=", "<", ">")


def parse_affinities(values: Sequence[str]) -> list[tuple[str, str, str]]:
    """`key<op>value` constraints of --affinity (`gpu-gen>=3`, `region==eu`)."""
    parsed = []
    for value in values:
        for op in AFFINITY_OPERATORS:
            key, sep, label = value.partition(op)
            if sep and key and not any(c in key for c in "=!<>"):
                parsed.append((key, op, label))
                break
        else:
            raise GridError(
                f"--affinity {value!r}: expected KEY OP VALUE with OP one of {', '.join(AFFINITY_OPERATORS)}"
            )
    return parsed


def storage_type(document: object) -> StorageType:
    """The storage type DeepSquare's SDK puts on chain for a workflow, read from its `output`."""
    output = document.get("output") if isinstance(document, Mapping) else None
    if not isinstance(output, Mapping):
        return StorageType.NONE
    if output.get("s3") is not None:
        return StorageType.S3
    http = output.get("http")
    if isinstance(http, Mapping):
        return StorageType.TRANSFER if http.get("url") == DEEPSQUARE_TRANSFER_URL else StorageType.HTTP
    return StorageType.NONE


def job_definition(
    document: object,
    workflow: Workflow,
    batch_location_hash: str,
    uses: Sequence[tuple[str, str]] = (),
    affinity: Sequence[tuple[str, str, str]] = (),
) -> tuple[Any, ...]:
    """The on-chain JobDefinition of a workflow (`document` as sent, `workflow` validated)."""
    resources = workflow.resources
    return (
        resources.gpus,
        resources.mem_per_cpu,
        resources.cpus_per_task,
        resources.tasks,
        batch_location_hash,
        storage_type(document),
        [[key, value] for key, value in uses],
        [((key, value), encode_operator(op)) for key, op, value in affinity],
    )


def job_name_bytes(name: str) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > 32:
        raise GridError(f"job name {name!r} is longer than 32 bytes")
    return raw.ljust(32, b"\0")


class CustomerSession:
    """A customer's key on one deployment."""

    def __init__(
        self, w3: AsyncWeb3[Any], contracts: ProtocolContracts, signer: Signer, target: Target
    ) -> None:
        self.w3 = w3
        self.contracts = contracts
        self.signer = signer
        self.target = target
        self.transactor = Transactor(w3, signer)
        self.credit: AsyncContract = contract(w3, "Credit", contracts.credit_address)
        self.constants: AsyncContract = contract(w3, "Constants", contracts.constants_address)
        self.decoder = ErrorDecoder.for_protocol()

    @classmethod
    async def open(cls, rpc_url: str, target: Target, signer: Signer) -> CustomerSession:
        w3, contracts = await connect(rpc_url, target)
        return cls(w3, contracts, signer, target)

    @property
    def address(self) -> str:
        return self.signer.address

    async def close(self) -> None:
        await disconnect(self.w3)

    async def balance(self, address: str | None = None) -> int:
        who = address or self.address
        return int(await read(lambda: self.credit.functions.balanceOf(who).call()))

    async def job(self, job_id: bytes) -> Job:
        """The job on chain; an unknown id is a GridError saying so."""
        try:
            return await self.contracts.get_job(job_id)
        except Web3Exception as exc:
            data = revert_data_of(exc)
            if data is not None and self.decoder.decode(data).name == "InvalidJob":
                raise GridError(f"no job {job_id_hex(job_id)} on this deployment") from None
            raise GridError(f"cannot read job {job_id_hex(job_id)}: {describe(exc)}") from None

    async def _ensure_allowance(self, amount: int) -> None:
        """Approve MetaScheduler for `amount` unless it may already take that much."""
        spender = self.contracts.meta_scheduler.address
        allowance = int(await read(lambda: self.credit.functions.allowance(self.address, spender).call()))
        if allowance < amount:
            await self.transactor.send(
                self.credit.functions.approve(spender, amount), f"approving {format_credits(amount)} credits"
            )

    async def _check_funds(self, amount: int) -> None:
        balance = await self.balance()
        if balance < amount:
            raise GridError(
                f"insufficient credits: {self.address} holds {format_credits(balance)}, "
                f"{format_credits(amount)} needed"
            )

    async def submit(
        self,
        workflow_path: Path,
        credits: int,
        sbatch_url: str,
        *,
        uses: Sequence[tuple[str, str]] = (),
        affinity: Sequence[tuple[str, str, str]] = (),
        job_name: str | None = None,
        delegate_spending: bool = False,
    ) -> Submitted:
        """Store the workflow, lock `credits` (credit-wei) and request the job; returns its id."""
        document, workflow = read_workflow(workflow_path)
        name = job_name_bytes(job_name if job_name is not None else workflow_path.stem[:32])
        minimum = int(await read(lambda: self.constants.functions.minimumAmount().call()))
        if credits < minimum:
            raise GridError(
                f"insufficient credits: {format_credits(credits)} locked, the grid's minimum is "
                f"{format_credits(minimum)}"
            )
        await self._check_funds(credits)
        key = await asyncio.to_thread(store_workflow, sbatch_url, document)
        definition = job_definition(document, workflow, key, uses, affinity)
        await self._ensure_allowance(credits)
        receipt = await self.transactor.send(
            self.contracts.meta_scheduler.functions.requestNewJob(
                definition, credits, name, delegate_spending
            ),
            "requesting the job",
        )
        decoder = EventDecoder(events_of(self.contracts.meta_scheduler.abi, ("NewJobRequestEvent",)))  # type: ignore[arg-type]
        for log in receipt["logs"]:
            if log["address"] == self.contracts.meta_scheduler.address:
                try:
                    event = decoder.decode(log)
                except ValueError:
                    continue
                return Submitted(str(event.args["_jobId"]), key, credits)
        raise GridError("requestNewJob succeeded but logged no NewJobRequestEvent")

    async def cancel(self, job_id: bytes) -> Job:
        """Cancel a hot job of this customer; returns the job as it is afterwards."""
        job = await self.job(job_id)
        if job.status.is_cold:
            raise GridError(f"job {job.job_id} is already {job.status.name}: nothing to cancel")
        if job.customer.lower() != self.address.lower():
            raise GridError(f"job {job.job_id} belongs to {job.customer}, not to {self.address}")
        await self.transactor.send(
            self.contracts.meta_scheduler.functions.cancelJob(job_id), "cancelling the job"
        )
        return await self.job(job_id)

    async def top_up(self, job_id: bytes, amount: int) -> Job:
        """Add `amount` credit-wei to a SCHEDULED or RUNNING job; returns the job afterwards."""
        job = await self.job(job_id)
        if job.status not in (JobStatus.SCHEDULED, JobStatus.RUNNING):
            raise GridError(
                f"job {job.job_id} is {job.status.name}: only a SCHEDULED or RUNNING job can be topped up"
            )
        if amount <= 0:
            raise GridError("a top-up needs more than 0 credits")
        await self._check_funds(amount)
        await self._ensure_allowance(amount)
        await self.transactor.send(
            self.contracts.meta_scheduler.functions.topUpJob(job_id, amount), "topping up the job"
        )
        return await self.job(job_id)

    async def transitions(
        self,
        job_id: bytes,
        *,
        poll_interval_seconds: float = 1.0,
        on_idle: Callable[[], None] | None = None,
    ) -> AsyncIterator[Transition]:
        """Every status change of the job since it was created, then each new one as it happens,
        until the job is cold. `on_idle` runs between polls (it may raise to stop following)."""
        job = await self.job(job_id)
        wanted = job.job_id.lower()
        reader = LogReader(
            self.w3,
            self.contracts.job_repository.address,
            events_of(self.contracts.job_repository.abi, ("JobTransitionEvent",)),  # type: ignore[arg-type]
            self.target.from_block,
        )
        while True:
            for event in await reader.new_events():
                if str(event.args["_jobId"]).lower() != wanted:
                    continue
                block = await read(lambda n=event.block_number: self.w3.eth.get_block(n))  # type: ignore[misc]
                transition = Transition(
                    event.block_number,
                    int(block["timestamp"]),
                    JobStatus(int(event.args["_from"])),
                    JobStatus(int(event.args["_to"])),
                )
                yield transition
                if transition.new.is_cold:
                    return
            if on_idle is not None:
                on_idle()
            await asyncio.sleep(poll_interval_seconds)

    async def settlement(self, job_id: bytes) -> Settlement:
        job = await self.job(job_id)
        return Settlement(
            status=job.status,
            max_cost=job.max_cost,
            final_cost=job.final_cost,
            refund=job.max_cost - job.final_cost if job.status.is_cold else 0,
            last_error=job.last_error,
            exit_code=job.exit_code,
        )
