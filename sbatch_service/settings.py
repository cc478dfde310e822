"""Settings of the sbatch service: defaults, then a YAML file, then `GRID_SBATCH_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from sbatch_service.models import MAX_COUNT, SLURM_MAX_CPUS_PER_TASK, Limits
from sbatch_service.modules import GitFetcher, ModuleSettings
from sbatch_service.renderer import RenderOptions
from supervisor.grpc_tls import ServerTls

_SITE_PATHS = (
    "storage_root",
    "shared_tmp",
    "shared_world_tmp",
    "disk_tmp",
    "disk_world_tmp",
    "software_root",
    "enroot_runtime_path",
    "enroot_cache_path",
    "enroot_data_path",
    "apptainer_tmpdir",
)

ENV_PREFIX = "GRID_SBATCH_"


class Settings(BaseSettings):
    """Everything `grid-sbatch serve` needs; see the README's sbatch service section."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    graphql_host: str = "127.0.0.1"
    graphql_port: int = Field(default=8080, ge=0, le=65535)
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    rpc_url: str = "http://127.0.0.1:8545"
    metascheduler_address: str = ""
    database: Path = Path("var/sbatch.sqlite3")
    storage_root: str = "/opt/cache/shared"
    shared_tmp: str = RenderOptions.shared_tmp
    shared_world_tmp: str = RenderOptions.shared_world_tmp
    disk_tmp: str = RenderOptions.disk_tmp
    disk_world_tmp: str = RenderOptions.disk_world_tmp
    software_root: str = RenderOptions.software_root
    enroot_runtime_path: str = ""
    enroot_cache_path: str = ""
    enroot_data_path: str = ""
    apptainer_tmpdir: str = ""
    module_url_template: str = ModuleSettings.url_template
    module_allowed_hosts: list[str] = Field(default_factory=lambda: list(ModuleSettings.allowed_hosts))
    module_timeout_seconds: float = Field(default=ModuleSettings.timeout_seconds, gt=0)
    max_module_depth: int = Field(default=Limits.max_module_depth, ge=1)
    script_ttl_seconds: int = Field(default=3600, ge=1)
    running_retention_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    challenge_ttl_seconds: int = Field(default=600, ge=1)
    # Challenge is open to anyone: outstanding challenges are bounded (the oldest is dropped beyond
    # the bound) and each client address gets a token bucket of `challenge_burst` requests, refilled
    # at `challenge_rate_per_second`.
    challenge_max_outstanding: int = Field(default=10_000, ge=1)
    challenge_rate_per_second: float = Field(default=200.0, gt=0)
    challenge_burst: int = Field(default=1000, ge=1)
    challenge_rate_max_peers: int = Field(default=10_000, ge=1)
    # gRPC over TLS with this certificate and key (PEM); with a client CA, mutual TLS: supervisors
    # must present a certificate from it.
    grpc_tls_cert_file: Path | None = None
    grpc_tls_key_file: Path | None = None
    grpc_client_ca_file: Path | None = None
    logger_url: str = ""
    # GraphQL `job(batchLocationHash)` gives a stored script to anyone who knows its key, and keys are
    # public on chain: only for debugging, since scripts may hold customers' secrets.
    expose_stored_scripts: bool = False
    abi_dir: Path | None = None
    max_workflow_bytes: int = Field(default=Limits.max_workflow_bytes, ge=1)
    max_string_length: int = Field(default=Limits.max_string_length, ge=1)
    max_steps: int = Field(default=Limits.max_steps, ge=1)
    max_depth: int = Field(default=Limits.max_depth, ge=1)
    max_items: int = Field(default=Limits.max_items, ge=1)
    max_parallel_iterations: int = Field(default=Limits.max_parallel_iterations, ge=1)
    # Levels of objects and lists in a workflow document (graphql-core itself stops at 200).
    max_nesting: int = Field(default=Limits.max_nesting, ge=8, le=200)
    max_iterations: int = Field(default=Limits.max_iterations, ge=1)
    max_step_runs: int = Field(default=Limits.max_step_runs, ge=1)
    # The site's resource maxima, within what GraphQL's Int and Slurm hold.
    max_tasks: int = Field(default=Limits.max_tasks, ge=1, le=MAX_COUNT)
    max_cpus_per_task: int = Field(default=Limits.max_cpus_per_task, ge=1, le=SLURM_MAX_CPUS_PER_TASK)
    max_mem_per_cpu: int = Field(default=Limits.max_mem_per_cpu, ge=1, le=MAX_COUNT)
    max_gpus: int = Field(default=Limits.max_gpus, ge=0, le=MAX_COUNT)
    max_gpus_per_task: int = Field(default=Limits.max_gpus_per_task, ge=0, le=MAX_COUNT)

    @model_validator(mode="after")
    def _tls_files(self) -> Settings:
        if (self.grpc_tls_cert_file is None) != (self.grpc_tls_key_file is None):
            raise ValueError("grpc_tls_cert_file and grpc_tls_key_file go together")
        if self.grpc_client_ca_file is not None and self.grpc_tls_cert_file is None:
            raise ValueError("grpc_client_ca_file needs grpc_tls_cert_file and grpc_tls_key_file")
        return self

    @property
    def grpc_tls(self) -> ServerTls | None:
        """The gRPC server's TLS, or None for clear text."""
        if self.grpc_tls_cert_file is None or self.grpc_tls_key_file is None:
            return None
        return ServerTls(self.grpc_tls_cert_file, self.grpc_tls_key_file, self.grpc_client_ca_file)

    @field_validator(*_SITE_PATHS)
    @classmethod
    def _plain_path(cls, path: str) -> str:
        """Site paths go into Enroot's fstab lines and APPTAINER_BIND: no spaces, commas or colons."""
        if path and (not path.startswith("/") or any(c.isspace() or c in ",:'\"" for c in path)):
            raise ValueError("must be an absolute path without spaces, commas, colons or quotes")
        return path

    @property
    def limits(self) -> Limits:
        return Limits(
            max_workflow_bytes=self.max_workflow_bytes,
            max_string_length=self.max_string_length,
            max_steps=self.max_steps,
            max_depth=self.max_depth,
            max_items=self.max_items,
            max_parallel_iterations=self.max_parallel_iterations,
            max_module_depth=self.max_module_depth,
            max_nesting=self.max_nesting,
            max_iterations=self.max_iterations,
            max_step_runs=self.max_step_runs,
            max_tasks=self.max_tasks,
            max_cpus_per_task=self.max_cpus_per_task,
            max_mem_per_cpu=self.max_mem_per_cpu,
            max_gpus=self.max_gpus,
            max_gpus_per_task=self.max_gpus_per_task,
        )

    @property
    def render_options(self) -> RenderOptions:
        return RenderOptions(**{name: getattr(self, name) for name in _SITE_PATHS})

    @property
    def module_fetcher(self) -> GitFetcher:
        return GitFetcher(
            ModuleSettings(
                url_template=self.module_url_template,
                allowed_hosts=tuple(self.module_allowed_hosts),
                timeout_seconds=self.module_timeout_seconds,
                max_bytes=self.max_workflow_bytes,
            )
        )


def load_settings(config_file: Path | None = None) -> Settings:
    """Settings from the optional YAML file, each overridable by its environment variable."""
    if config_file is None:
        return Settings()
    if not config_file.is_file():
        raise FileNotFoundError(f"settings file not found: {config_file}")

    class FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                init_settings,
                env_settings,
                YamlConfigSettingsSource(settings_cls, yaml_file=config_file),
            )

    return FileSettings()
