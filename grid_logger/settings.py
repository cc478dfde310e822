"""Settings of `grid-logger serve`: defaults, then a TOML file, then `GRID_LOGGER_*` variables."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from supervisor.grpc_tls import ServerTls

ENV_PREFIX = "GRID_LOGGER_"
LISTEN = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]*):\d{1,5}$")


class Settings(BaseSettings):
    """Everything the log service needs; README, "Job logs"."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    #: `host:port` of the gRPC port (port 0: any free port, printed at start).
    listen_address: str = "127.0.0.1:50052"
    #: TLS: the server's certificate and key (PEM); with a client CA, clients need a certificate from it.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    #: The logs, one folder per customer.
    storage_path: Path = Path("/var/lib/grid-logger/logs")
    #: 32 bytes (raw or 64 hex digits), mode 0600: wraps each log's own key. `grid-logger keygen`.
    master_key_file: Path = Path("/etc/grid-logger/master.key")
    #: Logs not written for this long are deleted (with their key).
    retention_days: float = Field(default=30.0, gt=0)
    purge_interval_seconds: float = Field(default=3600.0, gt=0)
    #: The chain whose JobRepository says who owns a job and who runs it.
    rpc_url: str = "http://127.0.0.1:8545"
    metascheduler_address: str = Field(default="", pattern=r"^(0x[0-9a-fA-F]{40})?$")
    abi_dir: Path | None = None
    #: How long a job read from the chain is reused (readers' end of job, writers' authorisation).
    job_cache_seconds: float = Field(default=2.0, gt=0)
    #: A Read or WatchList timestamp must be within this many seconds of the server's clock.
    timestamp_window_seconds: int = Field(default=600, ge=1)
    #: Writes are accepted this long after the job ended on chain (the writer's last lines, the
    #: supervisor's messages); then the log is closed.
    write_grace_seconds: int = Field(default=600, ge=0)
    #: A Read of an ended job stops waiting for a connected writer after this long.
    end_grace_seconds: float = Field(default=30.0, ge=0)
    #: WatchList sends the full list this often, and at once when a new log appears.
    watch_list_interval_seconds: float = Field(default=10.0, gt=0)
    #: Concurrent streams; beyond, RESOURCE_EXHAUSTED.
    max_readers: int = Field(default=1000, ge=1)
    max_writers: int = Field(default=1000, ge=1)
    max_watchers: int = Field(default=1000, ge=1)
    #: The largest line (WriteRequest.data) accepted; the project's writer splits longer ones.
    max_line_bytes: int = Field(default=64 * 1024, ge=1024, le=4 * 1024 * 1024)
    #: A log stops growing at this size; one notice record says so.
    max_log_bytes: int = Field(default=1024**3, ge=1024)
    #: fsync a log before answering a Write, so an answered Write survives a power cut.
    fsync: bool = True

    @field_validator("listen_address")
    @classmethod
    def _listen(cls, value: str) -> str:
        if not LISTEN.fullmatch(value):
            raise ValueError(f"{value!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _tls_files(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        return self

    @property
    def tls(self) -> ServerTls | None:
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return ServerTls(self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)


def load_settings(config_file: Path | None = None) -> Settings:
    """Settings from the optional TOML file, each overridable by its environment variable."""
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
                TomlConfigSettingsSource(settings_cls, toml_file=config_file),
            )

    return FileSettings()
