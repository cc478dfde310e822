"""The job record of JobRepository.get and its statuses, decoded once for every party of the grid.

Statuses and their transition rule mirror Tools.sol (PROTOCOL.md section 2). `Job.from_tuple` reads
the struct as web3 returns it; `Job.from_plain` reads it as a dict by field name (events, decoded
structs). Both give the same values: checksum addresses, bytes as 0x-hex strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_utils.address import to_checksum_address


class JobStatus(IntEnum):
    PENDING = 0
    META_SCHEDULED = 1
    SCHEDULED = 2
    RUNNING = 3
    CANCELLED = 4
    FINISHED = 5
    FAILED = 6
    OUT_OF_CREDITS = 7
    PANICKED = 8

    @property
    def is_hot(self) -> bool:
        """Hot jobs can still change; cold ones are terminal and settled."""
        return self <= JobStatus.RUNNING

    @property
    def is_cold(self) -> bool:
        return not self.is_hot


_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.META_SCHEDULED, JobStatus.CANCELLED}),
    JobStatus.META_SCHEDULED: frozenset({JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.CANCELLED}),
    JobStatus.SCHEDULED: frozenset(
        {JobStatus.PENDING, JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}
    ),
    JobStatus.RUNNING: frozenset(
        {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.OUT_OF_CREDITS}
    ),
}


class TransitionError(ValueError):
    """A refused transition, named as the contract's custom error would name it."""

    def __init__(self, error: str, *args: int) -> None:
        self.error = error
        self.args_ = args
        super().__init__(f"{error}({', '.join(str(a) for a in args)})")


def check_transition(current: JobStatus, nxt: JobStatus) -> None:
    """Raise TransitionError exactly as the contract reverts, with the same precedence."""
    if current == nxt:
        raise TransitionError("SameStatusError")
    if current.is_cold:
        raise TransitionError("JobHotStatusOnly", int(current))
    if nxt == JobStatus.PANICKED:
        return
    if nxt not in _ALLOWED[current]:
        raise TransitionError("InvalidTransition", int(current), int(nxt))


def is_allowed(current: JobStatus, nxt: JobStatus) -> bool:
    try:
        check_transition(current, nxt)
    except TransitionError:
        return False
    return True


class StorageType(IntEnum):
    """`JobDefinition.storageType`: where the job's output goes, as DeepSquare's clients set it."""

    TRANSFER = 0  # DeepSquare's transfer service
    HTTP = 1
    S3 = 2
    CUSTOM = 3
    NONE = 4


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


@dataclass(frozen=True)
class JobDefinition:
    gpus: int
    mem_per_cpu: int
    cpus_per_task: int
    ntasks: int
    batch_location_hash: str
    storage_type: int
    uses: tuple[tuple[str, str], ...]
    #: Each as `{"label": {"key", "value"}, "op": "0x<4 hex digits>"}`.
    affinity: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_plain(cls, d: Mapping[str, Any]) -> JobDefinition:
        """From the plain dict of an event argument or a decoded struct."""
        return cls(
            gpus=int(d["gpus"]),
            mem_per_cpu=int(d["memPerCpu"]),
            cpus_per_task=int(d["cpusPerTask"]),
            ntasks=int(d["ntasks"]),
            batch_location_hash=str(d["batchLocationHash"]),
            storage_type=int(d["storageType"]),
            uses=tuple((str(u["key"]), str(u["value"])) for u in d.get("uses", [])),
            affinity=tuple(d.get("affinity", [])),
        )

    @classmethod
    def from_tuple(cls, raw: Sequence[Any]) -> JobDefinition:
        """From the struct as web3 returns it (field order of the JobDefinition struct)."""
        gpus, mem_per_cpu, cpus_per_task, ntasks, location, storage, uses, affinity = raw
        return cls(
            gpus=int(gpus),
            mem_per_cpu=int(mem_per_cpu),
            cpus_per_task=int(cpus_per_task),
            ntasks=int(ntasks),
            batch_location_hash=str(location),
            storage_type=int(storage),
            uses=tuple((str(key), str(value)) for key, value in uses),
            affinity=tuple(
                {"label": {"key": str(label[0]), "value": str(label[1])}, "op": _hex(op)}
                for label, op in affinity
            ),
        )


@dataclass(frozen=True)
class Job:
    """JobRepository.get, with names."""

    job_id: str
    status: JobStatus
    customer: str
    provider: str
    definition: JobDefinition
    max_cost: int
    final_cost: int
    pending_top_up: int
    delegate_spending_authority: bool
    submit: int
    start: int
    end: int
    cancel_request_timestamp: int
    block_number_state_change: int
    panic_timestamp: int
    job_name: str
    has_cancel_request: bool
    last_error: str
    exit_code: int

    @classmethod
    def from_plain(cls, d: Mapping[str, Any]) -> Job:
        """From the struct as a dict by field name (`supervisor.chain.abi.plain_value`)."""
        cost, times = d["cost"], d["time"]
        return cls(
            job_id=str(d["jobId"]),
            status=JobStatus(int(d["status"])),
            customer=str(d["customerAddr"]),
            provider=str(d["providerAddr"]),
            definition=JobDefinition.from_plain(d["definition"]),
            max_cost=int(cost["maxCost"]),
            final_cost=int(cost["finalCost"]),
            pending_top_up=int(cost["pendingTopUp"]),
            delegate_spending_authority=bool(cost["delegateSpendingAuthority"]),
            submit=int(times["submit"]),
            start=int(times["start"]),
            end=int(times["end"]),
            cancel_request_timestamp=int(times["cancelRequestTimestamp"]),
            block_number_state_change=int(times["blockNumberStateChange"]),
            panic_timestamp=int(times["panicTimestamp"]),
            job_name=str(d["jobName"]),
            has_cancel_request=bool(d["hasCancelRequest"]),
            last_error=str(d["lastError"]),
            exit_code=int(d["exitCode"]),
        )

    @classmethod
    def from_tuple(cls, raw: Sequence[Any]) -> Job:
        """From the struct as web3 returns it (field order of the Job struct in JobRepository's ABI)."""
        (
            job_id,
            status,
            customer,
            provider,
            definition,
            cost,
            times,
            job_name,
            has_cancel_request,
            last_error,
            exit_code,
        ) = raw
        max_cost, final_cost, pending_top_up, delegate = cost
        submit, start, end, cancel_requested_at, state_changed_at, panicked_at = times
        return cls(
            job_id=_hex(job_id),
            status=JobStatus(int(status)),
            customer=to_checksum_address(customer),
            provider=to_checksum_address(provider),
            definition=JobDefinition.from_tuple(definition),
            max_cost=int(max_cost),
            final_cost=int(final_cost),
            pending_top_up=int(pending_top_up),
            delegate_spending_authority=bool(delegate),
            submit=int(submit),
            start=int(start),
            end=int(end),
            cancel_request_timestamp=int(cancel_requested_at),
            block_number_state_change=int(state_changed_at),
            panic_timestamp=int(panicked_at),
            job_name=_hex(job_name),
            has_cancel_request=bool(has_cancel_request),
            last_error=str(last_error),
            exit_code=int(exit_code),
        )
