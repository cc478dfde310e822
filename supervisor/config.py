"""The daemon's configuration: a TOML file, overridden by GRID_SUPERVISOR_* environment variables.

Every section is validated at start, and an invalid value is refused with the setting's dotted name
(`policy.max_queued_jobs: Input should be greater than or equal to 1`), never half-applied.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from supervisor.grpc_tls import ClientTls
from supervisor.job_logging import LoggerSettings
from supervisor.slurm.settings import SlurmSettings

ENV_PREFIX = "GRID_SUPERVISOR_"
ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
CREDIT_WEI = 10**18


class ConfigError(ValueError):
    """The configuration cannot be used; the message names every offending setting."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChainSettings(_Section):
    rpc_url: str = Field(pattern=r"^https?://")
    #: WebSocket endpoint used only as a wake-up hint; polling goes on without it.
    ws_url: str | None = Field(default=None, pattern=r"^wss?://")
    meta_scheduler: str
    #: Refuse to run when the endpoint serves another chain.
    chain_id: int | None = Field(default=None, ge=1)
    confirmations: int = Field(default=0, ge=0, le=1000)
    #: First block to read when the store has no cursor yet (the deployment block).
    start_block: int = Field(default=0, ge=0)
    poll_interval_seconds: float = Field(default=2.0, gt=0, le=600)
    receipt_deadline_seconds: float = Field(default=30.0, gt=0)
    max_fee_per_gas_gwei: Decimal | None = Field(default=None, gt=0)
    #: Jobs claimed by one transaction where the MetaScheduler can claim several (`claimNextJobs`);
    #: each claim costs about 150,000 gas, so keep it well inside the chain's block gas limit.
    claims_per_transaction: int = Field(default=25, ge=1, le=150)

    @field_validator("meta_scheduler")
    @classmethod
    def _address(cls, value: str) -> str:
        if not ADDRESS.fullmatch(value):
            raise ValueError(f"{value!r} is not an address (0x followed by 40 hex digits)")
        return value


class KeySettings(_Section):
    """The provider's key: an encrypted keystore with its password file, or a raw key file (mode 0600)."""

    file: Path
    password_file: Path | None = None


class SbatchServiceSettings(_Section):
    #: gRPC target of the sbatch service, `host:port`.
    grpc_target: str = Field(pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d+$")
    tls: bool = False
    timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    #: CA certificate (PEM) the service's certificate must chain to; unset: the system's roots.
    ca_file: Path | None = None
    #: The supervisor's certificate and key (PEM), for a service that requires mutual TLS.
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    #: The name checked in the service's certificate, when it is not the target's host.
    server_name_override: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _tls_settings(self) -> SbatchServiceSettings:
        used = [
            name
            for name in ("ca_file", "client_cert_file", "client_key_file", "server_name_override")
            if getattr(self, name) is not None
        ]
        if used and not self.tls:
            raise ValueError(f"{', '.join(used)} {'needs' if len(used) == 1 else 'need'} tls = true")
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file go together")
        return self

    @property
    def client_tls(self) -> ClientTls | None:
        """The channel's TLS, or None for clear text."""
        if not self.tls:
            return None
        return ClientTls(
            ca_file=self.ca_file,
            cert_file=self.client_cert_file,
            key_file=self.client_key_file,
            server_name_override=self.server_name_override,
        )


class PolicySettings(_Section):
    """What the operator lets in."""

    #: Jobs held claimed but not yet running in Slurm; no more are claimed beyond it.
    max_queued_jobs: int = Field(default=4, ge=1, le=10_000)
    denied_customers: frozenset[str] = frozenset()
    #: Container images refused, as written in workflows (`library/ubuntu:22.04`) or a prefix ending in `*`.
    denied_images: frozenset[str] = frozenset()
    #: Keep jobs with delegated spending alive by adding a slice when their time runs low.
    auto_top_up: bool = True
    #: Each job runs in its own folder `jobs_root/<job id>` (mode 0700, owned by the job's user, its
    #: output inside). The folder must exist, writable by the job users, sticky when shared (1777).
    jobs_root: Path = Path("/var/lib/grid-supervisor/jobs")
    #: Days a job's folder is kept after the job ended, then removed as the job's user. Keep it below
    #: `store.retention_days`: a folder whose job the store forgot is left alone.
    job_folder_retention_days: float = Field(default=7.0, gt=0)
    #: Seconds between full comparisons of chain, store and Slurm.
    reconcile_interval_seconds: float = Field(default=30.0, gt=0)
    #: Seconds between Slurm polls of the jobs this daemon tracks.
    slurm_poll_seconds: float = Field(default=5.0, gt=0)

    @field_validator("jobs_root")
    @classmethod
    def _jobs_root(cls, value: Path) -> Path:
        if not value.is_absolute() or ".." in value.parts or value == Path("/"):
            raise ValueError(f"{str(value)!r} must be an absolute folder below / without '..'")
        return value

    @field_validator("denied_customers")
    @classmethod
    def _customers(cls, value: frozenset[str]) -> frozenset[str]:
        for address in value:
            if not ADDRESS.fullmatch(address):
                raise ValueError(f"{address!r} is not an address")
        return frozenset(a.lower() for a in value)


class Prices(_Section):
    """Prices in credits per unit-minute (decimal strings keep them exact): GPU, CPU and MB of memory."""

    gpu_per_min: Decimal = Field(ge=0)
    cpu_per_min: Decimal = Field(ge=0)
    mem_per_min: Decimal = Field(ge=0)

    @field_validator("gpu_per_min", "cpu_per_min", "mem_per_min", mode="before")
    @classmethod
    def _decimal(cls, value: Any) -> Any:
        if isinstance(value, float):
            return Decimal(repr(value))
        return value

    @field_validator("gpu_per_min", "cpu_per_min", "mem_per_min")
    @classmethod
    def _wei_exact(cls, value: Decimal) -> Decimal:
        wei = value * CREDIT_WEI
        if wei != wei.to_integral_value():
            raise ValueError("a price has at most 18 decimals (one credit-wei)")
        return value

    def as_wei(self) -> tuple[int, int, int]:
        """(gpu, cpu, mem) in credit-wei per minute, the order of ProviderPrices on chain."""
        gpu, cpu, mem = (
            int(price * CREDIT_WEI) for price in (self.gpu_per_min, self.cpu_per_min, self.mem_per_min)
        )
        return gpu, cpu, mem


class RegistrationSettings(_Section):
    enabled: bool = True
    prices: Prices
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        if any(not key for key in value):
            raise ValueError("a label needs a non-empty key")
        return value


class DeploymentSettings(ChainSettings):
    """One deployment of the grid this supervisor serves (`[[chains]]`); unset parts take the file's
    top-level `[key]`, `[sbatch]` and `[registration]`."""

    #: Names the deployment in logs, metrics (`chain` label), `/readyz` and `doctor`.
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    key: KeySettings | None = None
    sbatch: SbatchServiceSettings | None = None
    registration: RegistrationSettings | None = None
    #: This deployment's state file; unset: `store.path` with the deployment's name before the suffix
    #: (`state.fuji.sqlite`), or `store.path` itself when the file lists one deployment.
    store_path: Path | None = None
    #: This chain's share of `policy.max_queued_jobs`, so a busy chain cannot take all of it.
    max_queued_jobs: int | None = Field(default=None, ge=1, le=10_000)


@dataclass(frozen=True)
class Deployment:
    """One deployment with every part resolved: what one set of chain lanes runs on."""

    name: str
    chain: ChainSettings
    key: KeySettings
    sbatch: SbatchServiceSettings
    registration: RegistrationSettings | None
    store_path: Path
    #: Queued jobs this deployment may hold (its share, at most `policy.max_queued_jobs`).
    max_queued_jobs: int
    #: The first deployment also owns the Slurm jobs and folders named by bare job ids, as they were
    #: named before names carried their deployment.
    first: bool


class StoreSettings(_Section):
    path: Path = Path("/var/lib/grid-supervisor/state.sqlite")
    #: Days a closed job and a delivered chain write (with its signed bytes) are kept, then forgotten.
    retention_days: float = Field(default=14.0, gt=0)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: `auto`: human-readable on a terminal, JSON otherwise (the journal).
    format: Literal["auto", "json", "console"] = "auto"


class MetricsSettings(_Section):
    """Prometheus metrics, `/healthz` and `/readyz` on one HTTP address."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)
    #: `/healthz` fails when the work loop has not finished a cycle for this long.
    stall_seconds: float = Field(default=120.0, gt=0)
    #: Seconds between probes of what the work loop does not always touch: the wallet balance, the
    #: provider's approval, Slurm's controller and accounting, the sbatch service.
    probe_seconds: float = Field(default=60.0, gt=0)


class SupervisorConfig(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    #: One deployment (`[chain]`), or several (`[[chains]]`): one of the two.
    chain: ChainSettings | None = None
    chains: tuple[DeploymentSettings, ...] = ()
    key: KeySettings | None = None
    sbatch: SbatchServiceSettings | None = None
    slurm: SlurmSettings
    policy: PolicySettings = PolicySettings()
    registration: RegistrationSettings | None = None
    store: StoreSettings = StoreSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    logger: LoggerSettings = LoggerSettings()

    @model_validator(mode="after")
    def _deployments_complete(self) -> SupervisorConfig:
        if self.chain is None and not self.chains:
            raise ValueError("chain: missing (set [chain] for one deployment, or [[chains]] for several)")
        if self.chain is not None and self.chains:
            raise ValueError("chain: set [chain] for one deployment or [[chains]] for several, not both")
        problems = []
        for where, chain in self._listed():
            for part in ("key", "sbatch"):
                if getattr(chain, part, None) is None and getattr(self, part) is None:
                    problems.append(
                        f"{part}: missing (set it in the file or in the environment)"
                        if where == "chain"
                        else f"{where}.{part}: missing (set [{part}] for every chain, or one in this chain's entry)"
                    )
            share = getattr(chain, "max_queued_jobs", None)
            if share is not None and share > self.policy.max_queued_jobs:
                problems.append(
                    f"{where}.max_queued_jobs ({share}) exceeds policy.max_queued_jobs "
                    f"({self.policy.max_queued_jobs}), the bound over every chain"
                )
        if problems:
            raise ValueError("; ".join(problems))
        resolved = self.deployments
        for label, values in (
            ("name", [d.name for d in resolved]),
            ("store_path", [str(d.store_path) for d in resolved]),
            (
                "chain id and meta_scheduler",
                [
                    f"{d.chain.chain_id} {d.chain.meta_scheduler.lower()}"
                    for d in resolved
                    if d.chain.chain_id
                ],
            ),
        ):
            repeated = sorted({value for value in values if values.count(value) > 1})
            if repeated:
                problems.append(f"chains: two deployments have the same {label}: {', '.join(repeated)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _listed(self) -> list[tuple[str, ChainSettings]]:
        if self.chain is not None:
            return [("chain", self.chain)]
        return [(f"chains.{index}", chain) for index, chain in enumerate(self.chains)]

    @property
    def deployments(self) -> list[Deployment]:
        """Every deployment this supervisor serves, in the file's order, each part resolved."""
        listed = self._listed()
        resolved = []
        for index, (where, chain) in enumerate(listed):
            name, key, sbatch, registration = "main", self.key, self.sbatch, self.registration
            store_path, share = self.store.path, self.policy.max_queued_jobs
            if isinstance(chain, DeploymentSettings):
                name = chain.name
                key, sbatch = chain.key or key, chain.sbatch or sbatch
                registration = chain.registration or registration
                if chain.store_path is not None:
                    store_path = chain.store_path
                elif len(listed) > 1:
                    store_path = store_path.with_name(f"{store_path.stem}.{name}{store_path.suffix}")
                share = chain.max_queued_jobs or share
                chain = ChainSettings(**chain.model_dump(include=set(ChainSettings.model_fields)))
            if key is None or sbatch is None:
                raise ConfigError(f"{where}: no key or no sbatch service")  # the validator names which
            resolved.append(
                Deployment(name, chain, key, sbatch, registration, store_path, share, first=index == 0)
            )
        return resolved

    @model_validator(mode="after")
    def _folders_outlived_by_their_records(self) -> SupervisorConfig:
        """A job folder is removed only while the store still knows its job ended."""
        if self.policy.job_folder_retention_days >= self.store.retention_days:
            raise ValueError(
                f"policy.job_folder_retention_days ({self.policy.job_folder_retention_days:g}) must be "
                f"below store.retention_days ({self.store.retention_days:g}): the store forgets a job "
                "after its retention, and the folder of a forgotten job is never removed"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file's values, which arrive as init arguments.
        return (env_settings, init_settings)


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        if not error["loc"] and error["type"] == "value_error":
            # The whole file's checks name their settings themselves, one problem per line.
            lines.extend(str(error["ctx"]["error"]).split("; "))
            continue
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "missing":
            message = "missing (set it in the file or in the environment)"
        elif error["type"] == "extra_forbidden":
            message = "unknown setting"
        lines.append(f"{where}: {message}")
    return "\n".join(lines)


def load_config(path: Path | None) -> SupervisorConfig:
    """The configuration from `path` (TOML) and the environment; ConfigError names what is wrong."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {path} does not exist") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not UTF-8 text: byte {exc.start} cannot be read") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return SupervisorConfig(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
