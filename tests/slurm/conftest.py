"""Backends of the Slurm layer against the real cluster, each with a runner that counts Slurm calls."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from supervisor.slurm import CommandSlurmBackend, ObservedJob, SlurmSettings, SshSettings
from supervisor.slurm.factory import attach_library
from supervisor.slurm.runner import CountingRunner, LocalRunner
from supervisor.slurm.ssh import SshRunner
from tests.fixtures.slurm import SlurmCluster

SCRATCH = Path("/tmp/grid-slurm-tests")
POLL_INTERVAL_S = 0.5


def new_job_name() -> str:
    return "0x" + secrets.token_hex(32)


def settings_for(cluster: SlurmCluster, kind: str, **overrides: object) -> SlurmSettings:
    ssh = SshSettings(
        host=cluster.ssh_host,
        port=cluster.ssh_port,
        known_hosts=cluster.ssh_known_hosts,
        client_key=cluster.ssh_client_key,
        admin_user=cluster.admin_user,
    )
    values: dict[str, object] = {
        "backend": kind,
        "partition": cluster.partition,
        "command_timeout_seconds": 20.0,
        "ssh": ssh,
        # Another release's commands run in its root; over SSH its own sshd logs into that root.
        "command_prefix": cluster.command_prefix if kind == "local" else (),
    }
    values.update(overrides)
    return SlurmSettings.model_validate(values)


def make_backend(cluster: SlurmCluster, kind: str, **overrides: object) -> CommandSlurmBackend:
    """`kind` "local", "ssh", "local-root": the local backend of a daemon that is root on the login
    node (sbatch --uid, folders made in-process), or "local-libslurm": that backend submitting
    through libslurm's call (the binding built by scripts/bootstrap.sh)."""
    library = kind == "local-libslurm"
    as_root = kind in ("local-root", "local-libslurm")
    if as_root:
        if os.geteuid() != 0 or cluster.command_prefix:
            pytest.skip("submitting as root needs a root daemon and Slurm's commands in this root")
        kind = "local"
    overrides.setdefault("submitter", "libslurm" if library else "sbatch")
    settings = settings_for(cluster, kind, **overrides)
    if kind == "local":
        inner: LocalRunner | SshRunner = LocalRunner(
            slurm_conf=str(settings.slurm_conf) if settings.slurm_conf else None,
            command_prefix=settings.command_prefix,
        )
    else:
        assert settings.ssh is not None
        inner = SshRunner(settings.ssh)
    backend = CommandSlurmBackend(CountingRunner(inner), settings, root_on_login_node=as_root)
    if library:
        attach_library(backend)
    return backend


def counting(backend: CommandSlurmBackend) -> CountingRunner:
    runner = backend.runner
    assert isinstance(runner, CountingRunner)
    return runner


@pytest.fixture(params=["local", "ssh", "local-libslurm"])
async def backend(
    request: pytest.FixtureRequest, slurm_cluster: SlurmCluster
) -> AsyncIterator[CommandSlurmBackend]:
    instance = make_backend(slurm_cluster, request.param)
    try:
        yield instance
    finally:
        await instance.close()


@pytest.fixture
def job_dir() -> Iterator[Callable[[str], Path]]:
    """Fresh working directories owned by a given UNIX user (jobs write their output there)."""
    made: list[Path] = []

    def make(user: str) -> Path:
        SCRATCH.mkdir(mode=0o755, exist_ok=True)
        folder = SCRATCH / secrets.token_hex(6)
        folder.mkdir()
        shutil.chown(folder, user=user, group=user)
        made.append(folder)
        return folder

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


async def wait_for_job(
    backend: CommandSlurmBackend,
    name: str,
    condition: Callable[[ObservedJob], bool],
    timeout: float,
) -> ObservedJob:
    """Poll the backend until the named job satisfies `condition`; fail with the last view at the deadline."""
    deadline = time.monotonic() + timeout
    last: ObservedJob | None = None
    while time.monotonic() < deadline:
        last = (await backend.query([name])).get(name)
        if last is not None and condition(last):
            return last
        await asyncio.sleep(POLL_INTERVAL_S)
    raise AssertionError(f"job {name}: condition not reached within {timeout}s; last seen {last}")


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(POLL_INTERVAL_S)
    raise AssertionError(f"{what} did not happen within {timeout}s")
