"""The daemon runs each customer's job in a private folder, and removes it once the job has ended.

The real daemon (`tests/fixtures/daemon_seam.py`) over anvil, the sbatch service and the Slurm
cluster, with per-wallet users: the cluster's two wallet users belong to anvil's accounts 0 and 1,
which act as the two customers here.
"""

from __future__ import annotations

import asyncio
import pwd
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount

from grid_protocol.jobs import JobStatus as S
from supervisor.config import load_config
from supervisor.daemon import Daemon
from supervisor.slurm import JobUserSettings
from tests.fixtures.contracts import CREDIT
from tests.fixtures.daemon_seam import DaemonSeam, register_as_the_cluster
from tests.fixtures.supervisor import ProviderStack

#: Short enough to see a folder go within the test, long enough to see it stay right after the end.
RETENTION_DAYS = 5 / 86400


@pytest.fixture
def stack(provider_stack: ProviderStack) -> Iterator[ProviderStack]:
    register_as_the_cluster(provider_stack)
    yield provider_stack


@pytest.fixture
async def seam(stack: ProviderStack, tmp_path: Path) -> AsyncIterator[DaemonSeam]:
    text = stack.config_text(tmp_path / "seam.sqlite", job_folder_retention_days=RETENTION_DAYS)
    assert "\n[slurm]\n" in text
    config = tmp_path / "seam.toml"
    config.write_text(text.replace("\n[slurm]\n", '\n[slurm]\nusers = { mode = "per_wallet" }\n', 1))
    daemon = Daemon(load_config(config))
    assert await daemon.start(), "the daemon did not start"
    opened = DaemonSeam(stack, daemon)
    try:
        yield opened
    finally:
        await opened.close()


def request(stack: ProviderStack, customer: LocalAccount, command: str) -> str:
    """A one-CPU job of `customer`, meta-scheduled to the stack's provider; returns its id (0x hex)."""
    grid = stack.grid
    grid.send(grid.admin, grid.credit.functions.mint(customer.address, 300 * CREDIT))
    key = stack.store_workflow(command, gpus=0)
    job_id = grid.request_job(customer, 300 * CREDIT, (0, 1024, 1, 1, key, 0, [], []))
    grid.schedule(job_id, stack.provider)
    return "0x" + job_id.hex()


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=30)


def status(stack: ProviderStack, job_id: str) -> S:
    return stack.status(bytes.fromhex(job_id[2:]))


async def test_customers_jobs_run_in_private_folders_removed_after_the_retention(
    stack: ProviderStack, seam: DaemonSeam
) -> None:
    grid = stack.grid
    users = JobUserSettings(mode="per_wallet")
    user_a, user_b = users.user_for(grid.admin.address), users.user_for(grid.oracle.address)
    assert {user_a, user_b} == set(stack.cluster.wallet_users)
    ended = request(stack, grid.admin, "echo secret of $(id -un)")
    running = request(stack, grid.oracle, "echo secret of $(id -un); sleep 120")
    folder_a, folder_b = (stack.job_folder(bytes.fromhex(job[2:])) for job in (ended, running))
    output_a, output_b = folder_a / f"{folder_a.name}.out", folder_b / f"{folder_b.name}.out"

    def settled() -> bool:
        record = seam.store.get_job(ended)
        return record is not None and record.closed and status(stack, running) == S.RUNNING

    await seam.until("the first job to be settled and the second to run", settled, timeout=120)
    assert status(stack, ended) == S.FINISHED
    for folder, user in ((folder_a, user_a), (folder_b, user_b)):
        info = folder.lstat()
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o777 == 0o700, oct(info.st_mode)
        assert info.st_uid == pwd.getpwnam(user).pw_uid
    assert f"secret of {user_a}" in output_a.read_text()
    deadline = time.monotonic() + 30
    while f"secret of {user_b}" not in (output_b.read_text() if output_b.exists() else ""):
        assert time.monotonic() < deadline, "the running job wrote nothing"
        await asyncio.sleep(0.2)
    assert as_user(user_a, "cat", str(output_a)).returncode == 0
    for reader, other in ((user_b, output_a), (user_a, output_b)):
        denied = as_user(reader, "cat", str(other))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr

    # The ended job's folder goes once its retention has passed; the running job's stays.
    deadline = time.monotonic() + 60
    while folder_a.exists():
        assert time.monotonic() < deadline, "the ended job's folder was not removed"
        await seam.daemon.remove_old_job_folders()
        await asyncio.sleep(0.5)
    assert folder_b.is_dir() and output_b.exists()
    assert status(stack, running) == S.RUNNING
    record = seam.store.get_job(running)
    assert record is not None and record.slurm_job_id is not None
    stack.scancel(record.slurm_job_id)
