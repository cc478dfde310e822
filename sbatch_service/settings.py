"""Settings of the sbatch service: defaults, then a YAML file, then `GRID_SBATCH_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from sbatch_service.models import Limits
from sbatch_service.renderer import RenderOptions

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
    script_ttl_seconds: int = Field(default=3600, ge=1)
    running_retention_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    challenge_ttl_seconds: int = Field(default=600, ge=1)
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

    @property
    def limits(self) -> Limits:
        return Limits(
            max_workflow_bytes=self.max_workflow_bytes,
            max_string_length=self.max_string_length,
            max_steps=self.max_steps,
            max_depth=self.max_depth,
            max_items=self.max_items,
            max_parallel_iterations=self.max_parallel_iterations,
        )

    @property
    def render_options(self) -> RenderOptions:
        return RenderOptions(storage_root=self.storage_root)


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
