"""The Slurm layer against every Slurm release here: 22.05 (this machine), 24.11 and 26.05 (Debian roots).

Each test runs the local backend (through the release's `command_prefix`) and the SSH backend (through
the release's own sshd) on the real clusters of `scripts/cluster.sh --release R`. Failures are real:
Slurm's own refusals, a stopped slurmctld, a controller or login node that accepts connections and
never answers, and another user's job whose name is not UTF-8.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from grid_protocol.jobs import JobStatus
from supervisor.slurm import (
    CommandSlurmBackend,
    JobAlreadySubmitted,
    JobSubmission,
    SlurmCommandTimeout,
    SlurmUnavailable,
    SubmissionRefused,
)
from supervisor.slurm.runner import CountingRunner
from supervisor.slurm.ssh import SshRunner
from tests.fixtures.slurm import RELEASES, SlurmCluster
from tests.slurm.conftest import counting, make_backend, new_job_name, wait_for_job

KINDS = ("local", "ssh")
CASES = [(release, kind) for release in RELEASES for kind in KINDS]


def submission(
    cluster: SlurmCluster, folder: Path, name: str, script: str, **resources: int
) -> JobSubmission:
    values: dict[str, Any] = {
        "ntasks": 1,
        "cpus_per_task": 1,
        "mem_per_cpu_mb": 100,
        "gpus": 0,
        "time_limit_minutes": 2,
    }
    values.update(resources)
    return JobSubmission(
        name=name,
        script=script,
        unix_user=cluster.service_user,
        workdir=str(folder),
        output_path=str(folder / f"{name[:10]}.out"),
        **values,
    )


@pytest.fixture(params=CASES, ids=[f"{release}-{kind}" for release, kind in CASES])
async def cluster_backend(
    request: pytest.FixtureRequest, slurm_release: Callable[[str], SlurmCluster]
) -> AsyncIterator[tuple[SlurmCluster, CommandSlurmBackend]]:
    release, kind = request.param
    cluster = slurm_release(release)
    backend = make_backend(cluster, kind)
    try:
        yield cluster, backend
    finally:
        await backend.close()


async def test_jobs_run_end_with_their_exit_codes_and_are_found_live_and_in_accounting(
    cluster_backend: tuple[SlurmCluster, CommandSlurmBackend], job_dir: Callable[[str], Path]
) -> None:
    cluster, backend = cluster_backend
    folder = job_dir(cluster.service_user)
    health = await backend.health()
    assert health.ok and health.problems == (), health
    done, failed, long = new_job_name(), new_job_name(), new_job_name()
    await backend.submit(submission(cluster, folder, done, "#!/bin/bash\necho finished on $SLURM_JOB_ID\n"))
    await backend.submit(submission(cluster, folder, failed, "#!/bin/bash\nexit 3\n"))
    long_id = await backend.submit(submission(cluster, folder, long, "#!/bin/bash\nsleep 300\n"))
    running = await wait_for_job(backend, long, lambda j: j.state == "RUNNING", timeout=60)
    assert running.slurm_job_id == long_id and running.chain_outcome().status == JobStatus.RUNNING
    assert running.time_limit_minutes == 2 and running.user == cluster.service_user
    with pytest.raises(JobAlreadySubmitted) as again:
        await backend.submit(submission(cluster, folder, long, "#!/bin/bash\nsleep 300\n"))
    assert again.value.slurm_job_id == long_id
    await backend.extend_time_limit(long_id, 5)
    await wait_for_job(backend, long, lambda j: j.time_limit_minutes == 7, timeout=30)
    await backend.cancel(long_id)
    stopped = await wait_for_job(backend, long, lambda j: j.is_final, timeout=60)
    assert stopped.state == "CANCELLED"
    assert stopped.chain_outcome(cancel_requested=True).status == JobStatus.CANCELLED
    await backend.cancel(long_id)  # cancelling an ended job is not an error
    for name in (done, failed):
        await wait_for_job(backend, name, lambda j: j.is_final, timeout=60)
    # Once the controller forgets them (MinJobAge), accounting answers with the same outcome.
    names = [done, failed, long]
    for name in names:
        await wait_for_job(backend, name, lambda j: j.from_accounting, timeout=120)
    result = await backend.query(names)
    assert result.not_found == frozenset() and result.accounting_available
    ok, bad, cancelled = (result.jobs[name] for name in names)
    assert (ok.state, ok.exit_code, ok.chain_outcome().status) == ("COMPLETED", 0, JobStatus.FINISHED)
    assert (bad.state, bad.exit_code, bad.signal) == ("FAILED", 3, None)
    assert bad.chain_outcome().status == JobStatus.FAILED
    assert cancelled.state == "CANCELLED" and cancelled.time_limit_minutes == 7
    assert ok.start_time is not None and ok.end_time is not None and ok.end_time >= ok.start_time
    output = (folder / f"{done[:10]}.out").read_text().strip()
    assert output == f"finished on {ok.slurm_job_id}"


async def test_the_partition_is_described_as_configured(
    cluster_backend: tuple[SlurmCluster, CommandSlurmBackend],
) -> None:
    cluster, backend = cluster_backend
    hardware = await backend.describe_partition()
    assert [n.name for n in hardware.nodes] == [cluster.node_name]
    assert hardware.cpus_per_node == [cluster.cpus_per_node]
    assert hardware.memory_mb_per_node == [cluster.memory_mb_per_node]
    assert hardware.gpus_per_node == [cluster.gpus_per_node]


async def test_slurms_refusals_are_definite_and_create_no_job(
    cluster_backend: tuple[SlurmCluster, CommandSlurmBackend], job_dir: Callable[[str], Path]
) -> None:
    cluster, backend = cluster_backend
    folder = job_dir(cluster.service_user)
    script = "#!/bin/bash\ntrue\n"
    names = [new_job_name() for _ in range(3)]
    oversized = [
        submission(cluster, folder, names[0], script, gpus=cluster.gpus_per_node + 3),
        submission(cluster, folder, names[1], script, mem_per_cpu_mb=cluster.memory_mb_per_node * 4),
    ]
    for job in oversized:
        with pytest.raises(
            SubmissionRefused, match="Requested node configuration is not available"
        ) as refused:
            await backend.submit(job)
        assert refused.value.refuses_job
    kind = "local" if backend.settings.backend == "local" else "ssh"
    elsewhere = make_backend(cluster, kind, partition="nosuchpartition")
    try:
        with pytest.raises(SubmissionRefused, match="Invalid partition name specified") as refused:
            await elsewhere.submit(submission(cluster, folder, names[2], script))
        assert refused.value.refuses_job
    finally:
        await elsewhere.close()
    # Nothing runs or waits: Slurm keeps a job it refused on resources as FAILED (BadConstraints), never run.
    result = await backend.query(names)
    assert result.not_found_is_certain
    for name in names:
        seen = result.get(name)
        assert seen is None or (seen.state == "FAILED" and seen.elapsed_seconds == 0), seen


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a hung controller or login node."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        server.close()


@pytest.mark.parametrize("release", RELEASES)
async def test_a_hung_controller_or_login_node_is_unavailable_within_the_timeout(
    release: str, slurm_release: Callable[[str], SlurmCluster], job_dir: Callable[[str], Path]
) -> None:
    cluster = slurm_release(release)
    folder = job_dir(cluster.service_user)
    conf = job_dir("root") / "slurm.conf"  # under /tmp: the same path inside the release's root
    with silent_listener() as port:
        conf.write_text(
            re.sub(r"^SlurmctldPort=.*$", f"SlurmctldPort={port}", cluster.slurm_conf.read_text(), flags=re.M)
        )
        local = make_backend(cluster, "local", slurm_conf=str(conf), command_timeout_seconds=2.0)
        ssh_settings = make_backend(cluster, "ssh").settings.ssh
        assert ssh_settings is not None
        login = make_backend(
            cluster,
            "ssh",
            command_timeout_seconds=3.0,
            ssh=ssh_settings.model_copy(update={"port": port, "connect_timeout_seconds": 1.5}),
        )
        name = new_job_name()
        try:
            for backend in (local, login):
                begun = time.monotonic()
                with pytest.raises(SlurmUnavailable) as hung:
                    await backend.submit(submission(cluster, folder, name, "#!/bin/bash\ntrue\n"))
                assert not hung.value.refuses_job
                with pytest.raises(SlurmUnavailable):
                    await backend.query([name])
                assert time.monotonic() - begun < 12
            with pytest.raises(SlurmCommandTimeout):
                await local.query([name])
        finally:
            await local.close()
            await login.close()
    answering = make_backend(cluster, "local")
    try:
        assert (await answering.query([name])).not_found == {name}  # nothing was submitted
    finally:
        await answering.close()


@pytest.mark.parametrize("release", [release for release in RELEASES if release != "bookworm"])
async def test_a_stopped_controller_is_unavailable_for_submissions_and_queries(
    release: str, slurm_release: Callable[[str], SlurmCluster], job_dir: Callable[[str], Path]
) -> None:
    """(This machine's 22.05 is rehearsed in test_failures, carefully: other tests share it.)"""
    cluster = slurm_release(release)
    folder = job_dir(cluster.service_user)
    backends = [make_backend(cluster, kind) for kind in KINDS]
    name = new_job_name()
    try:
        stopped = cluster.run_script("stop-ctld")
        assert stopped.returncode == 0, stopped.stderr
        try:
            for backend in backends:
                with pytest.raises(SlurmUnavailable) as down:
                    await backend.submit(submission(cluster, folder, name, "#!/bin/bash\ntrue\n"))
                assert not down.value.refuses_job
                with pytest.raises(SlurmUnavailable):
                    await backend.query([name])
                health = await backend.health()
                assert not health.controller_reachable and not health.ok
        finally:
            started = cluster.run_script("start-ctld")
            assert started.returncode == 0, started.stderr
        slurm_id = await backends[0].submit(submission(cluster, folder, name, "#!/bin/bash\ntrue\n"))
        done = await wait_for_job(backends[1], name, lambda j: j.is_final, timeout=60)
        assert done.slurm_job_id == slurm_id and done.state == "COMPLETED"
    finally:
        for backend in backends:
            await backend.close()


@pytest.mark.parametrize("release", RELEASES)
async def test_another_users_job_name_that_is_not_utf8_does_not_hide_slurm_over_ssh(
    release: str, slurm_release: Callable[[str], SlurmCluster], job_dir: Callable[[str], Path]
) -> None:
    cluster = slurm_release(release)
    other = cluster.wallet_users[1]
    foreign_folder = job_dir(other)
    foreign = subprocess.run(
        [*cluster.command("runuser", "-u", other, "--", "sbatch"), "--parsable", "--hold",
         b"--job-name=\xffgrid-\xfe", f"--chdir={foreign_folder}", "--output=/dev/null", "--mem-per-cpu=100",
         "--wrap=true"],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    foreign_id = foreign.stdout.decode().strip().split(";")[0]
    ssh = make_backend(cluster, "ssh")
    folder = job_dir(cluster.service_user)
    name = new_job_name()
    try:
        raw = subprocess.run(
            cluster.command("squeue", "--json", "--all", "--states=all"),
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout
        assert b'"\xffgrid-\xfe"' in raw  # Slurm prints the name's bytes as they are
        slurm_id = await ssh.submit(submission(cluster, folder, name, "#!/bin/bash\nsleep 2\n"))
        seen = await wait_for_job(ssh, name, lambda j: j.is_final, timeout=60)
        assert seen.slurm_job_id == slurm_id and seen.state == "COMPLETED"
        assert (await ssh.health()).controller_reachable
        assert counting_connections(ssh) == 2  # one per login user, never dropped by the foreign bytes
    finally:
        await ssh.close()
        subprocess.run(cluster.command("scancel", foreign_id), capture_output=True, timeout=30, check=False)


def counting_connections(backend: CommandSlurmBackend) -> int:
    runner = backend.runner
    inner = runner.inner if isinstance(runner, CountingRunner) else runner
    assert isinstance(inner, SshRunner)
    return inner.connections_opened


@pytest.mark.parametrize("release", RELEASES)
async def test_a_look_up_that_fails_for_another_cause_is_unavailable_never_a_refusal(
    release: str, slurm_release: Callable[[str], SlurmCluster], job_dir: Callable[[str], Path]
) -> None:
    """squeue refusing its configuration fails the look-up before sbatch: nothing is submitted."""
    cluster = slurm_release(release)
    folder = job_dir(cluster.service_user)
    conf = job_dir("root") / "slurm.conf"
    conf.write_text("NoSuchKey=1\n")
    broken = make_backend(cluster, "local", slurm_conf=str(conf))
    name = new_job_name()
    try:
        with pytest.raises(SlurmUnavailable, match=r"look-up .* failed, nothing was submitted") as failed:
            await broken.submit(submission(cluster, folder, name, "#!/bin/bash\ntrue\n"))
        assert not failed.value.refuses_job
        assert "Unable to process configuration file" in str(failed.value)
        assert counting(broken).count("sbatch") == 0
    finally:
        await broken.close()
