"""Failures: slurmctld outage, bad output, hung commands, no accounting, SSH pool and host keys.

The outage stops the real slurmctld with `scripts/cluster.sh stop-ctld` for a few seconds; other
processes calling `cluster.sh up` meanwhile wait for it rather than ending it early.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncssh
import pytest

from grid_protocol.jobs import JobStatus
from supervisor.slurm import (
    JobSubmission,
    SlurmCommandTimeout,
    SlurmOutputError,
    SlurmUnavailable,
)
from supervisor.slurm.runner import LocalRunner
from supervisor.slurm.ssh import SshRunner
from tests.fixtures.slurm import SlurmCluster
from tests.slurm.conftest import counting, make_backend, new_job_name, settings_for, wait_for_job


def job(name: str, user: str, folder: Path, script: str, minutes: int = 5) -> JobSubmission:
    return JobSubmission(
        name=name,
        script=script,
        unix_user=user,
        workdir=str(folder),
        output_path=str(folder / f"{name[:10]}.out"),
        time_limit_minutes=minutes,
        mem_per_cpu_mb=100,
    )


async def test_controller_outage_is_reported_loses_no_job_and_recovers(
    slurm_cluster: SlurmCluster, job_dir: Callable[[str], Path]
) -> None:
    backends = [make_backend(slurm_cluster, kind) for kind in ("local", "ssh")]
    local = backends[0]
    user = slurm_cluster.service_user
    folder = job_dir(user)
    survivor = new_job_name()
    refused = new_job_name()
    try:
        await local.submit(job(survivor, user, folder, "#!/bin/bash\nsleep 15\necho survived\n"))
        await wait_for_job(local, survivor, lambda j: j.state == "RUNNING", timeout=60)
        stopped = slurm_cluster.run_script("stop-ctld")
        assert stopped.returncode == 0, stopped.stderr
        try:
            for backend in backends:
                health = await backend.health()
                assert not health.controller_reachable and not health.ok
                assert any("slurmctld" in problem for problem in health.problems)
                with pytest.raises(SlurmUnavailable):
                    await backend.query([survivor])
                with pytest.raises(SlurmUnavailable):
                    await backend.submit(job(refused, user, folder, "#!/bin/bash\ntrue\n"))
        finally:
            started = slurm_cluster.run_script("start-ctld")
            assert started.returncode == 0, started.stderr
        for backend in backends:
            assert (await backend.health()).controller_reachable
        done = await wait_for_job(local, survivor, lambda j: j.is_final, timeout=120)
        assert done.state == "COMPLETED" and done.chain_outcome().status == JobStatus.FINISHED
        assert (folder / f"{survivor[:10]}.out").read_text().strip() == "survived"
        after = await backends[1].query([survivor, refused])
        assert after.get(survivor) is not None
        assert after.not_found == {refused} and after.not_found_is_certain
    finally:
        for backend in backends:
            await backend.close()


@pytest.fixture
def stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Slurm commands replaced on PATH: squeue prints a line cut short, sinfo hangs, sacct prints junk."""
    folder = tmp_path / "bin"
    folder.mkdir()
    scripts = {
        "squeue": "#!/bin/sh\nprintf '17\\037RUNNING\\0371796235795\\n'\n",
        "sinfo": f"#!/bin/sh\necho $$ > {tmp_path}/sinfo.pid\nexec sleep 60\n",
        "sacct": "#!/bin/sh\necho 'this is not|sacct output'\n",
    }
    for program, text in scripts.items():
        path = folder / program
        path.write_text(text)
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    yield tmp_path


async def test_bad_output_and_hung_commands_give_clear_errors_within_the_timeout(
    slurm_cluster: SlurmCluster, stand_ins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = make_backend(slurm_cluster, "local", command_timeout_seconds=1.0)
    try:
        with pytest.raises(SlurmOutputError, match=r"squeue: expected 9 fields .* got 3"):
            await backend.query([new_job_name()])
        begun = time.monotonic()
        with pytest.raises(SlurmCommandTimeout, match="did not answer within 1s"):
            await backend.describe_partition()
        assert time.monotonic() - begun < 5
        hung = int((stand_ins / "sinfo.pid").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(hung, 0)  # the hung command was killed, not left behind
        monkeypatch.setenv("PATH", os.environ["PATH"].split(":", 1)[1])
        assert (await backend.health()).ok  # the same backend works once Slurm answers again
    finally:
        await backend.close()


async def test_without_accounting_the_layer_works_within_min_job_age_and_says_so(
    slurm_cluster: SlurmCluster, job_dir: Callable[[str], Path]
) -> None:
    conf = job_dir("root") / "slurm.conf"  # readable by the job's user, who runs sbatch with it
    conf.write_text(
        re.sub(
            r"^AccountingStorageType=.*$",
            "AccountingStorageType=accounting_storage/none",
            slurm_cluster.slurm_conf.read_text(),
            flags=re.M,
        )
    )
    backend = make_backend(slurm_cluster, "local", slurm_conf=str(conf))
    user = slurm_cluster.service_user
    folder = job_dir(user)
    name = new_job_name()
    try:
        health = await backend.health()
        assert health.controller_reachable and not health.accounting_available
        assert "reduced" in health.detail
        assert any("accounting is disabled" in problem for problem in health.problems)
        await backend.submit(job(name, user, folder, "#!/bin/bash\nexit 4\n"))
        ended = await wait_for_job(backend, name, lambda j: j.is_final, timeout=60)
        assert (ended.state, ended.exit_code, ended.from_accounting) == ("FAILED", 4, False)
        runner = counting(backend)
        deadline = time.monotonic() + 120
        while True:
            runner.reset()
            result = await backend.query([name])
            assert runner.count("sacct") == 0  # known disabled: not asked again
            if result.get(name) is None:
                break
            assert time.monotonic() < deadline, "the controller never forgot the job"
            await asyncio.sleep(0.5)
        assert result.not_found == {name} and not result.not_found_is_certain
        assert not result.accounting_available
    finally:
        await backend.close()


async def test_ssh_connections_are_pooled_and_rebuilt_after_a_failure(slurm_cluster: SlurmCluster) -> None:
    settings = settings_for(slurm_cluster, "ssh")
    assert settings.ssh is not None
    runner = SshRunner(settings.ssh)
    try:
        results = await asyncio.gather(*(runner.run(["id", "-un"], timeout=10) for _ in range(10)))
        assert {r.stdout.strip() for r in results} == {slurm_cluster.admin_user}
        assert runner.connections_opened == 1
        as_user = await runner.run(["id", "-un"], user=slurm_cluster.service_user, timeout=10)
        assert as_user.stdout.strip() == slurm_cluster.service_user
        assert runner.connections_opened == 2
        for connection in list(runner._connections.values()):
            connection.abort()
        again = await runner.run(["id", "-un"], timeout=10)
        assert again.returncode == 0 and runner.connections_opened == 3
        with pytest.raises(SlurmCommandTimeout):
            await runner.run(["sleep", "30"], timeout=1)
        quoted = await runner.run(["printf", "%s|", "a b", "$HOME", "; echo no"], timeout=10)
        assert quoted.stdout == "a b|$HOME|; echo no|"
    finally:
        await runner.close()


async def test_ssh_keeps_at_most_its_bound_of_connections_dropping_the_least_recently_used(
    slurm_cluster: SlurmCluster,
) -> None:
    settings = settings_for(slurm_cluster, "ssh")
    assert settings.ssh is not None
    runner = SshRunner(settings.ssh, max_connections=2)
    admin, service = slurm_cluster.admin_user, slurm_cluster.service_user
    first, second = slurm_cluster.wallet_users[:2]
    try:
        for user in (admin, service, first):
            assert (await runner.run(["id", "-un"], user=user, timeout=10)).stdout.strip() == user
        # Three users, a bound of two: the least recently used one that is not the admin went.
        assert list(runner._connections) == [admin, first]
        await runner.run(["id", "-un"], user=admin, timeout=10)
        await runner.run(["id", "-un"], user=second, timeout=10)
        assert list(runner._connections) == [admin, second]
        # Commands in flight keep their connections: four users at once all get their answer.
        users = [admin, service, first, second]
        answers = await asyncio.gather(
            *(runner.run(["sh", "-c", "sleep 1; id -un"], user=u, timeout=20) for u in users)
        )
        assert [a.stdout.strip() for a in answers] == users
        assert len(runner._connections) == 2  # back to the bound once they are done
        assert runner.connections_opened == 6  # admin, service, first, second; service and first again
    finally:
        await runner.close()


async def test_ssh_refuses_a_login_node_with_an_unknown_host_key(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{slurm_cluster.ssh_host}]:{slurm_cluster.ssh_port} {impostor}\n")
    settings = settings_for(slurm_cluster, "ssh")
    assert settings.ssh is not None
    runner = SshRunner(settings.ssh.model_copy(update={"known_hosts": known_hosts}))
    try:
        with pytest.raises(SlurmUnavailable, match="cannot reach the login node"):
            await runner.run(["true"], timeout=10)
        assert runner.connections_opened == 0
    finally:
        await runner.close()


async def test_local_runner_passes_no_daemon_secret_to_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRID_PRIVATE_KEY", "0xsecret")
    result = await LocalRunner().run(["env"], timeout=10)
    assert "GRID_PRIVATE_KEY" not in result.stdout and "PATH=" in result.stdout
