"""What a job needs to stream its output to the grid logger, from the supervisor's side. Pure.

The daemon calls `job_log_environment` for each job it submits, with the `grid_logger_url` the
sbatch service returned with the script, and puts the result in the job's environment with
`with_job_environment` (export lines after the shebang: sbatch's own `--export` would show the
token on the login node's command lines). The batch script's logging prologue
(`sbatch_service.logging_render`) starts `grid-logger write` with them.

The write token is minted here with the provider key, without a round trip: the service accepts it
for this job's log only, because it recovers the provider from it and finds that provider and this
customer on the job on chain (`grid_logger.signing`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from grid_logger import environment as env
from grid_logger import names, signing
from supervisor.chain.keys import Signer

TARGET = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):\d{1,5}$")
SCHEMES = {"grpcs://": True, "https://": True, "grpc://": False, "http://": False}


class LoggerSettings(BaseModel):
    """`[logger]` of supervisor.toml: how the provider's jobs reach the log service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Pass the logging environment to jobs (when a logger URL is known).
    enabled: bool = True
    #: `host:port` used instead of the sbatch service's `grid_logger_url` (e.g. a name the compute
    #: nodes resolve); unset: the sbatch service's.
    url: str | None = Field(default=None, pattern=TARGET.pattern)
    #: TLS to the log service, checked against `ca_file` (a path on the compute nodes; unset: the
    #: system's roots) and `server_name_override`.
    tls: bool = True
    ca_file: Path | None = None
    server_name_override: str | None = Field(default=None, min_length=1)
    #: The writer on the compute nodes.
    writer: str = "/opt/grid-supervisor/venv/bin/grid-logger"
    #: The writer's buffer while the service is unreachable, and its drain at the job's end.
    buffer_lines: int = Field(default=env.DEFAULT_BUFFER_LINES, ge=100, le=10_000_000)
    buffer_bytes: int = Field(default=env.DEFAULT_BUFFER_BYTES, ge=64 * 1024, le=1024**3)
    drain_seconds: float = Field(default=env.DEFAULT_DRAIN_SECONDS, ge=0, le=300)


def logger_target(grid_logger_url: str, settings: LoggerSettings) -> tuple[str, bool] | None:
    """The `host:port` the job dials and whether with TLS, or None when the job gets no logging.

    The sbatch service answers `host:port` as the reference does; a `grpcs://`/`https://`
    (`grpc://`/`http://`) prefix turns TLS on (off) whatever `tls` says.
    """
    if not settings.enabled:
        return None
    url, tls = (settings.url or grid_logger_url).strip(), settings.tls
    for scheme, secure in SCHEMES.items():
        if url.lower().startswith(scheme):
            url, tls = url[len(scheme) :].rstrip("/"), secure
            break
    if not TARGET.fullmatch(url):
        return None
    return url, tls


def job_log_environment(
    job_id: str,
    customer: str,
    grid_logger_url: str,
    settings: LoggerSettings,
    signer: Signer,
    meta_scheduler: str,
) -> dict[str, str]:
    """The `GRID_LOGGER_*` variables of one job; empty when logging is off or no URL is known.

    `job_id` is 0x + 64 hex digits, `customer` the job's customer and `meta_scheduler` the
    deployment's MetaScheduler address (both any case); `signer` the provider key.
    """
    target = logger_target(grid_logger_url, settings)
    if target is None:
        return {}
    url, tls = target
    log_name, user = names.log_name(job_id), names.address(customer)
    token = signing.token_from_signature(
        bytes(signer.sign_message(signing.write_token_text(meta_scheduler, log_name, user)).signature)
    )
    variables = {
        env.URL: url,
        env.LOG_NAME: log_name,
        env.USER: user,
        env.TOKEN: token,
        env.TLS: "1" if tls else "0",
        env.WRITER: settings.writer,
        env.BUFFER_LINES: str(settings.buffer_lines),
        env.BUFFER_BYTES: str(settings.buffer_bytes),
        env.DRAIN_SECONDS: f"{settings.drain_seconds:g}",
    }
    if tls and settings.ca_file is not None:
        variables[env.CA_FILE] = str(settings.ca_file)
    if tls and settings.server_name_override:
        variables[env.SERVER_NAME] = settings.server_name_override
    return variables


def with_job_environment(script: str, variables: Mapping[str, str]) -> str:
    """The script with `export NAME=value` lines (shell-quoted) right after its shebang line.

    Nothing else moves, so the supervisor's `guard_script` still finds the shebang first.
    """
    if not variables:
        return script
    for name in variables:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{name!r} is not an environment variable name")
    first, newline, rest = script.partition("\n")
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items())
    if not first.startswith("#!"):
        return exports + script
    return first + (newline or "\n") + exports + rest
