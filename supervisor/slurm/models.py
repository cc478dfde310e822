"""What goes to Slurm (a submission) and what comes back (observed jobs, hardware, health)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath

from supervisor.core.slurm_states import FINAL_STATES, ChainOutcome, chain_outcome
from supervisor.slurm.errors import InvalidSubmission
from supervisor.slurm.naming import is_slurm_name

UNIX_USER_PATTERN = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def check_job_name(name: str) -> str:
    """The Slurm job name is the on-chain job id (`0x` and 64 lowercase hex digits), after its
    deployment's chain id and MetaScheduler (see supervisor.slurm.naming)."""
    if not is_slurm_name(name):
        raise InvalidSubmission(
            f"job name {name!r} is not a job id (0x followed by 64 lowercase hex digits) "
            "after its chain id and MetaScheduler"
        )
    return name


def check_unix_user(user: str) -> str:
    if not UNIX_USER_PATTERN.fullmatch(user):
        raise InvalidSubmission(f"{user!r} is not a valid UNIX user name")
    return user


@dataclass(frozen=True)
class JobSubmission:
    """One job for sbatch. Resources come from the on-chain definition and go on the command line."""

    name: str
    script: str
    unix_user: str
    workdir: str
    output_path: str
    time_limit_minutes: int
    ntasks: int = 1
    cpus_per_task: int = 1
    mem_per_cpu_mb: int = 1024
    gpus: int = 0
    #: The backend makes `workdir` before sbatch, mode 0700 as `unix_user`, in an existing parent, and
    #: checks it; `output_path` must be inside it (see supervisor.slurm.job_folders).
    private_workdir: bool = False

    def __post_init__(self) -> None:
        check_job_name(self.name)
        check_unix_user(self.unix_user)
        for label, value, least in (
            ("ntasks", self.ntasks, 1),
            ("cpus_per_task", self.cpus_per_task, 1),
            ("mem_per_cpu_mb", self.mem_per_cpu_mb, 1),
            ("gpus", self.gpus, 0),
            ("time_limit_minutes", self.time_limit_minutes, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidSubmission(f"{label} must be an integer >= {least}, got {value!r}")
        for label, path in (("workdir", self.workdir), ("output_path", self.output_path)):
            if not PurePosixPath(path).is_absolute() or "\n" in path or "\0" in path:
                raise InvalidSubmission(f"{label} must be an absolute path on the cluster, got {path!r}")
        if self.private_workdir:
            workdir = PurePosixPath(self.workdir)
            if ".." in workdir.parts or workdir.parent == workdir:
                raise InvalidSubmission(f"a private workdir needs a parent and no '..', got {self.workdir!r}")
            if PurePosixPath(self.output_path).parent != workdir:
                raise InvalidSubmission(f"the output {self.output_path!r} must be inside the private workdir")
        if not self.script.strip():
            raise InvalidSubmission("the batch script is empty")


@dataclass(frozen=True)
class ObservedJob:
    """A Slurm job as seen by squeue (live) or sacct (accounting, `from_accounting`)."""

    slurm_job_id: int
    name: str
    state: str
    exit_code: int | None
    signal: int | None
    elapsed_seconds: int
    start_time: datetime | None
    end_time: datetime | None
    reason: str | None
    time_limit_minutes: int | None
    user: str | None
    from_accounting: bool

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    def chain_outcome(self, *, cancel_requested: bool = False) -> ChainOutcome:
        return chain_outcome(
            self.state, self.exit_code, self.signal, cancel_requested=cancel_requested, reason=self.reason
        )


@dataclass(frozen=True)
class NodeHardware:
    name: str
    cpus: int
    memory_mb: int
    gpus: int


@dataclass(frozen=True)
class PartitionHardware:
    """The partition's nodes, in the per-node shape of the protocol's ProviderHardware."""

    partition: str
    nodes: tuple[NodeHardware, ...]

    @property
    def node_count(self) -> int:
        return len(self.nodes)

    @property
    def cpus_per_node(self) -> list[int]:
        return [n.cpus for n in self.nodes]

    @property
    def gpus_per_node(self) -> list[int]:
        return [n.gpus for n in self.nodes]

    @property
    def memory_mb_per_node(self) -> list[int]:
        return [n.memory_mb for n in self.nodes]


@dataclass(frozen=True)
class SlurmHealth:
    """Whether Slurm answers, and how strong the guarantee about finished jobs is."""

    controller_reachable: bool
    accounting_available: bool
    detail: str = ""
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.controller_reachable and self.accounting_available

    @property
    def finished_jobs_guarantee(self) -> str:
        if self.accounting_available:
            return "accounting: finished jobs are read from sacct whenever asked"
        return "reduced: without accounting, a finished job is visible only until Slurm's MinJobAge"
