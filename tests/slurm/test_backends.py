"""The local and SSH backends against the real single-node cluster (with slurmdbd accounting)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from grid_protocol.jobs import JobStatus
from supervisor.core.slurm_states import ACTIVE_STATES, WAITING_STATES
from supervisor.slurm import (
    CommandSlurmBackend,
    JobAlreadySubmitted,
    JobSubmission,
    JobUserSettings,
    UnixUserMissing,
)
from supervisor.slurm.commands import FIELD_SEPARATOR, TIME_FORMAT_ENV, squeue_argv
from tests.fixtures.slurm import SlurmCluster
from tests.slurm.conftest import counting, new_job_name, wait_for_job

HOSTILE_SCRIPT = """#!/bin/bash
#SBATCH --time=999
#SBATCH --ntasks=4
#SBATCH --cpus-per-task=7
#SBATCH --job-name=renamed
#SBATCH --output=/tmp/elsewhere.out
#SBATCH --partition=other
echo started
sleep 120
"""
FIRST_WALLET = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def scontrol_fields(slurm_job_id: int) -> dict[str, str]:
    """What the controller itself records about a job (`scontrol show job`), as key=value pairs."""
    shown = subprocess.run(
        ["scontrol", "show", "job", str(slurm_job_id)], capture_output=True, text=True, check=True
    ).stdout
    fields: dict[str, str] = {}
    for token in shown.split():
        key, sep, value = token.partition("=")
        if sep:
            fields.setdefault(key, value)
    return fields


def submission(name: str, user: str, folder: Path, script: str, **resources: int) -> JobSubmission:
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
        unix_user=user,
        workdir=str(folder),
        output_path=str(folder / "out.txt"),
        **values,
    )


def quick(code: int) -> str:
    return f"#!/bin/bash\necho working\nexit {code}\n"


async def test_exact_resources_reach_slurm_and_script_lines_cannot_change_them(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster, job_dir: Callable[[str], Path]
) -> None:
    folder = job_dir(slurm_cluster.service_user)
    name = new_job_name()
    job = submission(
        name, slurm_cluster.service_user, folder, HOSTILE_SCRIPT,
        ntasks=2, cpus_per_task=1, mem_per_cpu_mb=150, gpus=1, time_limit_minutes=3,
    )  # fmt: skip
    slurm_id = await backend.submit(job)
    try:
        fields = scontrol_fields(slurm_id)
        assert fields["JobName"] == name
        assert fields["UserId"].startswith(f"{slurm_cluster.service_user}(")
        assert fields["Partition"] == slurm_cluster.partition
        assert fields["NumTasks"] == "2"
        assert fields["CPUs/Task"] == "1"
        assert fields["MinMemoryCPU"] == "150M"
        assert fields["TresPerJob"] == "gres:gpu:1"
        assert fields["TimeLimit"] == "00:03:00"
        assert fields["WorkDir"] == str(folder)
        assert fields["StdOut"] == str(folder / "out.txt")
        running = await wait_for_job(backend, name, lambda j: j.state == "RUNNING", timeout=60)
        assert running.slurm_job_id == slurm_id
        assert running.chain_outcome().status == JobStatus.RUNNING
    finally:
        await backend.cancel(slurm_id)
    ended = await wait_for_job(backend, name, lambda j: j.is_final, timeout=60)
    assert ended.state == "CANCELLED"
    assert ended.chain_outcome(cancel_requested=True).status == JobStatus.CANCELLED
    outcome = ended.chain_outcome(cancel_requested=False)
    assert outcome.status == JobStatus.FAILED
    assert outcome.last_error is not None and "cancelled" in outcome.last_error
    await backend.cancel(slurm_id)  # cancelling an ended job is not an error


async def test_job_found_by_name_and_second_submit_detected_before_it_happens(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster, job_dir: Callable[[str], Path]
) -> None:
    folder = job_dir(slurm_cluster.service_user)
    name = new_job_name()
    job = submission(name, slurm_cluster.service_user, folder, "#!/bin/bash\nsleep 60\n")
    before = await backend.query([name])
    assert before.get(name) is None and before.not_found == {name} and before.not_found_is_certain
    slurm_id = await backend.submit(job)
    try:
        found = (await backend.query([name])).get(name)
        assert found is not None and found.slurm_job_id == slurm_id and found.name == name
        runner = counting(backend)
        runner.reset()
        with pytest.raises(JobAlreadySubmitted) as refused:
            await backend.submit(job)
        assert refused.value.slurm_job_id == slurm_id
        assert runner.count("sbatch") == 0
    finally:
        await backend.cancel(slurm_id)


async def test_a_first_submission_without_look_up_runs_sbatch_alone(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster, job_dir: Callable[[str], Path]
) -> None:
    """The daemon's durable submit intent says no earlier sbatch of the attempt was begun: then the
    name is not looked up (squeue, sacct), and only sbatch runs (nothing, through libslurm)."""
    folder = job_dir(slurm_cluster.service_user)
    name = new_job_name()
    job = submission(name, slurm_cluster.service_user, folder, "#!/bin/bash\nsleep 60\n")
    runner = counting(backend)
    runner.reset()
    slurm_id = await backend.submit(job, look_up=False)
    try:
        sbatch_runs = 0 if backend.library is not None else 1
        assert (runner.count("squeue"), runner.count("sacct"), runner.count("sbatch")) == (0, 0, sbatch_runs)
        found = (await backend.query([name])).get(name)
        assert found is not None and found.slurm_job_id == slurm_id
        with pytest.raises(JobAlreadySubmitted):
            await backend.submit(job)  # with the look-up (the intent was there): found, not sent again
    finally:
        await backend.cancel(slurm_id)


async def test_completed_failed_and_cancelled_map_to_chain_statuses_also_from_accounting(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster, job_dir: Callable[[str], Path]
) -> None:
    folder = job_dir(slurm_cluster.service_user)
    user = slurm_cluster.service_user
    completed, failed, cancelled = new_job_name(), new_job_name(), new_job_name()
    await backend.submit(submission(completed, user, folder, quick(0)))
    await backend.submit(submission(failed, user, folder, quick(3)))
    cancelled_id = await backend.submit(submission(cancelled, user, folder, "#!/bin/bash\nsleep 120\n"))
    await wait_for_job(backend, cancelled, lambda j: j.state == "RUNNING", timeout=60)
    await backend.cancel(cancelled_id)

    names = [completed, failed, cancelled]
    for name in names:
        await wait_for_job(backend, name, lambda j: j.is_final, timeout=60)
    # Long after: once the controller has forgotten them, accounting still knows.
    for name in names:
        await wait_for_job(backend, name, lambda j: j.from_accounting, timeout=120)
    result = await backend.query(names)
    assert result.not_found == frozenset()
    done, bad, stopped = (result.jobs[n] for n in names)
    assert all(job.from_accounting for job in (done, bad, stopped))
    assert (done.state, done.exit_code) == ("COMPLETED", 0)
    assert done.chain_outcome().status == JobStatus.FINISHED
    assert (bad.state, bad.exit_code, bad.signal) == ("FAILED", 3, None)
    failure = bad.chain_outcome()
    assert failure.status == JobStatus.FAILED and failure.last_error is not None
    assert "exit code 3" in failure.last_error
    assert stopped.state == "CANCELLED"
    assert stopped.chain_outcome(cancel_requested=True).status == JobStatus.CANCELLED
    assert done.end_time is not None and done.start_time is not None and done.end_time >= done.start_time
    # A finished job still blocks a second submission of the same name.
    with pytest.raises(JobAlreadySubmitted):
        await backend.submit(submission(completed, user, folder, quick(0)))


async def test_two_hundred_jobs_in_a_constant_number_of_calls(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster, job_dir: Callable[[str], Path]
) -> None:
    folder = job_dir(slurm_cluster.service_user)
    names = [new_job_name() for _ in range(200)]
    ids = []
    for name in names:  # held jobs, submitted directly: this is setup, not the layer under test
        submitted = subprocess.run(
            ["sbatch", "--parsable", "--hold", f"--job-name={name}", "--time=1", f"--chdir={folder}",
             "--output=/dev/null", f"--partition={slurm_cluster.partition}"],
            input="#!/bin/bash\ntrue\n", capture_output=True, text=True, check=True,
        )  # fmt: skip
        ids.append(submitted.stdout.strip().split(";")[0])
    try:
        runner = counting(backend)
        unknown = [new_job_name() for _ in range(50)]
        per_cycle = []
        for wanted in (names[:1], names[:20], names, names + unknown):
            runner.reset()
            result = await backend.query(wanted)
            per_cycle.append(runner.count())
            assert set(result.jobs) == set(wanted) & set(names)
        assert per_cycle[:3] == [1, 1, 1]  # all live: one squeue --json
        assert per_cycle[3] == 2  # plus one sacct for every name the queue does not have
        result = await backend.query(names + unknown)
        assert result.not_found == frozenset(unknown) and result.not_found_is_certain
        assert all(result.jobs[n].state == "PENDING" for n in names)
        assert all(result.jobs[n].chain_outcome().status == JobStatus.SCHEDULED for n in names)
    finally:
        subprocess.run(["scancel", *ids], check=False)


async def test_hardware_description_matches_the_configuration(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster
) -> None:
    hardware = await backend.describe_partition()
    assert hardware.partition == slurm_cluster.partition
    assert [n.name for n in hardware.nodes] == [slurm_cluster.node_name]
    assert hardware.node_count == 1
    assert hardware.cpus_per_node == [slurm_cluster.cpus_per_node]
    assert hardware.memory_mb_per_node == [slurm_cluster.memory_mb_per_node]
    assert hardware.gpus_per_node == [slurm_cluster.gpus_per_node]


async def test_health_reports_controller_and_accounting(backend: CommandSlurmBackend) -> None:
    health = await backend.health()
    assert health.controller_reachable and health.accounting_available and health.ok
    assert health.problems == ()


async def test_missing_unix_user_is_a_clear_refusal(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster, job_dir: Callable[[str], Path]
) -> None:
    folder = job_dir(slurm_cluster.service_user)
    job = submission(new_job_name(), "grid-nosuchuser", folder, quick(0))
    with pytest.raises(UnixUserMissing, match="grid-nosuchuser"):
        await backend.submit(job)
    assert counting(backend).count("sbatch") == 0


async def test_per_wallet_user_runs_the_job(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster, job_dir: Callable[[str], Path]
) -> None:
    user = JobUserSettings(mode="per_wallet").user_for(FIRST_WALLET)
    assert user in slurm_cluster.wallet_users
    folder = job_dir(user)
    name = new_job_name()
    slurm_id = await backend.submit(submission(name, user, folder, "#!/bin/bash\nid -un\n"))
    done = await wait_for_job(backend, name, lambda j: j.is_final, timeout=60)
    assert done.slurm_job_id == slurm_id and done.state == "COMPLETED" and done.user == user
    assert (folder / "out.txt").read_text().strip() == user


async def test_another_users_job_name_cannot_forge_a_line_for_one_of_ours(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster, job_dir: Callable[[str], Path]
) -> None:
    """A job name may hold a line break: in a listing of every job with names, another user's job
    named `x<newline><a line saying our job completed>` would read as ours. The listing of every job
    leaves names out and is matched on ids; a look-up by name asks Slurm for that exact name."""
    user = slurm_cluster.service_user
    name = new_job_name()
    slurm_id = await backend.submit(submission(name, user, job_dir(user), "#!/bin/bash\nsleep 120\n"))
    forged = FIELD_SEPARATOR.join([str(slurm_id), "COMPLETED", "1", "1", "2", "5", user, "None", name])
    other = slurm_cluster.wallet_users[1]
    foreign = subprocess.run(
        ["runuser", "-u", other, "--", "sbatch", "--parsable", "--hold", f"--job-name=x\n{forged}",
         f"--chdir={job_dir(other)}", "--output=/dev/null", "--mem-per-cpu=100", "--wrap=true",
         f"--partition={slurm_cluster.partition}"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    foreign_id = foreign.stdout.strip().split(";")[0]
    try:
        every_job = squeue_argv(names=[name])[:-1]  # lines with names, for every job on the cluster
        listing = subprocess.run(
            every_job, capture_output=True, text=True, env={**os.environ, **TIME_FORMAT_ENV}, check=True
        ).stdout
        assert forged in listing.splitlines()  # the forgery is real: unfiltered, it reads as a line
        for slurm_ids in ({}, {name: slurm_id}):
            seen = (await backend.query([name], slurm_ids=slurm_ids)).get(name)
            assert seen is not None and seen.slurm_job_id == slurm_id
            assert seen.state in WAITING_STATES | ACTIVE_STATES and seen.user == user  # not the forgery
    finally:
        await backend.cancel(slurm_id)
        subprocess.run(["scancel", foreign_id], check=False)
