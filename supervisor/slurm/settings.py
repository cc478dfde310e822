"""Operator settings of the Slurm layer (embedded in the daemon's TOML configuration)."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from supervisor.slurm.models import UNIX_USER_PATTERN

ADDRESS_PATTERN = re.compile(r"^0x[0-9a-fA-F]{40}$")
SAMPLE_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"

# Options this layer sets itself from the on-chain definition: the operator's extras may not touch them.
RESERVED_SBATCH_OPTIONS = frozenset(
    {
        "-J", "--job-name", "-n", "--ntasks", "-c", "--cpus-per-task", "--mem-per-cpu", "--mem",
        "--mem-per-gpu", "-G", "--gpus", "--gres", "-t", "--time", "-p", "--partition", "-D",
        "--chdir", "-o", "--output", "--uid", "--gid", "--parsable", "--wrap", "-a", "--array",
        "--export", "--get-user-env", "--gpus-per-node", "--gpus-per-task", "--cpus-per-gpu",
        "-N", "--nodes", "--ntasks-per-node", "--time-min", "-W", "--wait", "--test-only",
    }
)  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SshSettings(_Strict):
    """The login node reached over SSH: host key checked against `known_hosts`, key authentication."""

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    known_hosts: Path
    client_key: Path
    admin_user: str
    login_as_job_user: bool = True
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    keepalive_seconds: float = Field(default=30.0, gt=0)

    @field_validator("admin_user")
    @classmethod
    def _user_name(cls, value: str) -> str:
        if not UNIX_USER_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid UNIX user name")
        return value


class JobUserSettings(_Strict):
    """Which UNIX user runs a customer's job.

    `service_account`: every job runs as `service_account`. `per_wallet`: each customer has a user
    named by `template`, a Python format string over the customer's address with the fields
    `address` (0x + 40 lowercase hex) and `hex` (the 40 hex digits), e.g. `grid-{hex:.12}`.
    """

    mode: Literal["service_account", "per_wallet"] = "service_account"
    service_account: str = "grid-svc"
    template: str = "grid-{hex:.12}"

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, value: str) -> str:
        if not UNIX_USER_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid UNIX user name")
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        unknown = fields - {"address", "hex"}
        if unknown:
            raise ValueError(f"template {value!r} uses unknown fields {sorted(unknown)}: use address, hex")
        sample = _format_user(value, SAMPLE_ADDRESS)
        if not UNIX_USER_PATTERN.fullmatch(sample):
            raise ValueError(f"template {value!r} gives {sample!r}, not a valid UNIX user name")
        return value

    def user_for(self, customer_address: str) -> str:
        """The UNIX user for a customer's job (pure: whether it exists is checked at submission)."""
        if self.mode == "service_account":
            return self.service_account
        if not ADDRESS_PATTERN.fullmatch(customer_address):
            raise ValueError(f"{customer_address!r} is not an address (0x followed by 40 hex digits)")
        return _format_user(self.template, customer_address)


def _format_user(template: str, address: str) -> str:
    lower = address.lower()
    return template.format(address=lower, hex=lower[2:])


class SlurmSettings(_Strict):
    """The Slurm layer: which backend, where jobs go, extra sbatch options, timeouts, job users."""

    backend: Literal["local", "ssh", "pyslurm"] = "local"
    partition: str
    extra_sbatch_args: tuple[str, ...] = ()
    command_timeout_seconds: float = Field(default=30.0, gt=0)
    accounting_lookback_days: int = Field(default=60, ge=1)
    slurm_conf: Path | None = None
    #: Prepended to every command the backend runs, e.g. `["/usr/sbin/chroot", "/srv/slurm-root"]` when
    #: the Slurm client lives in another root or container than the daemon (locally, before `runuser`).
    command_prefix: tuple[str, ...] = ()
    ssh: SshSettings | None = None
    users: JobUserSettings = JobUserSettings()
    #: A daemon that is root on the login node (local backend, no command prefix) submits another
    #: user's job with `sbatch --uid/--gid` and makes its folder in-process: one process per job
    #: instead of three through `runuser`. False keeps `runuser` (a site whose sbatch refuses --uid).
    submit_as_root: bool = True
    #: How jobs reach Slurm on the local backend. `libslurm`: libslurm's own submission call in a
    #: few worker threads, no process per job (needs the binding: `grid-supervisor build-libslurm`);
    #: `sbatch`: one sbatch process per job; `auto`: libslurm where its binding loads and the extra
    #: options have an equivalent there, else sbatch.
    submitter: Literal["auto", "sbatch", "libslurm"] = "auto"
    #: `host:port` (UDP) where slurmctld's hook tells the daemon a job started or ended
    #: (scripts/slurmctld-wakeup.sh); unset: Slurm is only polled.
    wakeup_listen: str | None = Field(default=None, pattern=r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):\d{1,5}$")

    @field_validator("extra_sbatch_args")
    @classmethod
    def _extras(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arg in value:
            option = arg.split("=", 1)[0]
            short = arg[:2] if arg.startswith("-") and not arg.startswith("--") else None
            if option in RESERVED_SBATCH_OPTIONS or short in RESERVED_SBATCH_OPTIONS:
                raise ValueError(f"extra sbatch option {arg!r} would override what the job definition sets")
            if "\n" in arg or "\0" in arg:
                raise ValueError(f"extra sbatch option {arg!r} contains a line break or NUL")
        return value

    @field_validator("command_prefix")
    @classmethod
    def _prefix(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arg in value:
            if not arg or "\n" in arg or "\0" in arg:
                raise ValueError(f"command prefix argument {arg!r} is empty or contains a line break or NUL")
        if value and not Path(value[0]).is_absolute():
            raise ValueError(
                f"the command prefix must start with an absolute path (the daemon's PATH is not the "
                f"shell's), got {value[0]!r}"
            )
        return value

    @model_validator(mode="after")
    def _backend_needs(self) -> SlurmSettings:
        if self.backend == "ssh" and self.ssh is None:
            raise ValueError(
                "backend 'ssh' needs an [ssh] section (host, known_hosts, client_key, admin_user)"
            )
        if self.submitter == "libslurm" and (self.backend != "local" or self.command_prefix):
            raise ValueError(
                "submitter 'libslurm' needs the local backend without a command prefix (the daemon "
                "calls the login node's own libslurm)"
            )
        return self
