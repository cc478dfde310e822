"""Submission through libslurm's call against the real cluster: the job Slurm gets is sbatch's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

from supervisor.slurm import CommandSlurmBackend, SlurmSettings, SubmissionRefused
from supervisor.slurm.errors import BackendUnavailable
from supervisor.slurm.factory import attach_library
from supervisor.slurm.libslurm import RLIMITS, UnmappedOption, library_options, propagated_rlimits
from supervisor.slurm.runner import LocalRunner
from tests.fixtures.slurm import SlurmCluster
from tests.slurm.conftest import make_backend, new_job_name, wait_for_job
from tests.slurm.test_backends import scontrol_fields, submission

REPO = Path(__file__).resolve().parents[2]
DUMP_SCRIPT = "#!/bin/bash\nenv | sort\necho '--- limits'\nulimit -a\necho '--- umask'\numask\n"
#: Variables whose values belong to one job or allocation (its id, name, folder, devices, process).
PER_JOB_VARIABLES = frozenset(
    {
        "SLURM_JOBID", "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_TASK_PID", "SLURM_JOB_GPUS", "PWD",
        "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK",
    }
)  # fmt: skip
#: scontrol fields that differ between any two jobs: ids, names, times, order, output files, the
#: submitting process's session, which of the scheduler's passes started it.
PER_JOB_FIELDS = frozenset(
    {
        "JobId", "JobName", "Priority", "SubmitTime", "EligibleTime", "AccrueTime", "StartTime",
        "EndTime", "Deadline", "LastSchedEval", "RunTime", "SuspendTime", "SecsPreSuspend",
        "StdOut", "StdErr", "WorkDir", "AllocNode:Sid", "Reason", "Dependency", "Scheduler",
    }
)  # fmt: skip


def libslurm_backend(cluster: SlurmCluster, **overrides: object) -> CommandSlurmBackend:
    return make_backend(cluster, "local-libslurm", **overrides)


def job_output(path: Path) -> tuple[dict[str, str], list[str]]:
    """The environment a dump job printed, and its limits and umask lines."""
    environment_part, _, rest = path.read_text().partition("--- limits\n")
    environment = dict(line.split("=", 1) for line in environment_part.splitlines() if "=" in line)
    return environment, rest.splitlines()


async def test_a_job_submitted_through_libslurm_is_the_job_sbatch_submits(
    slurm_cluster: SlurmCluster, job_dir: Callable[[str], Path]
) -> None:
    """Same resources, GPUs and extra options in the controller's record; the same environment,
    resource limits and umask in the job."""
    user = slurm_cluster.service_user
    extras = {"extra_sbatch_args": ("--comment=grid-parity",)}
    folders: dict[str, Path] = {}
    fields: dict[str, dict[str, str]] = {}
    for kind in ("local-root", "local-libslurm"):
        backend = make_backend(slurm_cluster, kind, **extras)
        try:
            assert (backend.library is not None) == (kind == "local-libslurm")
            folder = job_dir(user)
            name = new_job_name()
            job = submission(name, user, folder, DUMP_SCRIPT, ntasks=2, cpus_per_task=1, gpus=1)
            slurm_id = await backend.submit(job, look_up=False)
            await wait_for_job(backend, name, lambda seen: seen.state == "COMPLETED", timeout=90)
            folders[kind] = folder
            fields[kind] = scontrol_fields(slurm_id)
        finally:
            await backend.close()
    by_sbatch, by_library = fields["local-root"], fields["local-libslurm"]
    assert by_library["Comment"] == "grid-parity" and by_library["TresPerJob"] == "gres:gpu:1"
    assert by_library["NumCPUs"] == "2" and by_library["UserId"].startswith(f"{user}(")
    assert {k: v for k, v in by_library.items() if k not in PER_JOB_FIELDS} == {
        k: v for k, v in by_sbatch.items() if k not in PER_JOB_FIELDS
    }
    for kind, folder in folders.items():
        assert (fields[kind]["WorkDir"], fields[kind]["StdOut"]) == (str(folder), str(folder / "out.txt"))
    sbatch_env, sbatch_limits = job_output(folders["local-root"] / "out.txt")
    library_env, library_limits = job_output(folders["local-libslurm"] / "out.txt")
    assert set(library_env) == set(sbatch_env)
    assert {k: v for k, v in library_env.items() if k not in PER_JOB_VARIABLES} == {
        k: v for k, v in sbatch_env.items() if k not in PER_JOB_VARIABLES
    }
    assert library_env["USER"] == user and library_env["SLURM_NTASKS"] == "2"
    assert library_env["PWD"] == str(folders["local-libslurm"]) and library_env["SLURM_GPUS"] == "1"
    assert library_limits == sbatch_limits and library_limits[-1].isdigit()


REFUSALS = {
    "too many GPUs": ({}, {"gpus": 3}),
    "too much memory": ({}, {"mem_per_cpu_mb": 10**6}),
    "no such partition": ({"partition": "nosuchpartition"}, {}),
}


@pytest.mark.parametrize("case", REFUSALS)
async def test_a_refusal_names_the_reason_sbatch_gives(
    slurm_cluster: SlurmCluster, job_dir: Callable[[str], Path], case: str
) -> None:
    """Slurm's answer to the call is sbatch's last line (sbatch may first say what it checked)."""
    settings, resources = REFUSALS[case]
    user = slurm_cluster.service_user
    reasons: dict[str, str] = {}
    for kind in ("local-root", "local-libslurm"):
        backend = make_backend(slurm_cluster, kind, **settings)
        try:
            refused_job = submission(new_job_name(), user, job_dir(user), DUMP_SCRIPT, **resources)
            with pytest.raises(SubmissionRefused) as refused:
                await backend.submit(refused_job, look_up=False)
            reasons[kind] = refused.value.reason
        finally:
            await backend.close()
    assert reasons["local-libslurm"].startswith("Batch job submission failed: ")
    assert reasons["local-root"].split("; ")[-1] == reasons["local-libslurm"]


UNREACHABLE = """
import asyncio, sys
from supervisor.slurm import JobSubmission, SlurmSettings, SlurmUnavailable
from supervisor.slurm.factory import create_backend

async def main() -> None:
    settings = SlurmSettings(partition=sys.argv[2], slurm_conf=sys.argv[1], submitter="libslurm",
                             command_timeout_seconds=20)
    backend = create_backend(settings)
    job = JobSubmission(name="0x" + "ab" * 32, script="#!/bin/bash\\ntrue\\n", unix_user=sys.argv[3],
                        workdir="/tmp", output_path="/tmp/grid-unreachable.out", time_limit_minutes=1)
    try:
        await backend.submit(job, look_up=False)
    except SlurmUnavailable as exc:
        print("unavailable:", exc)
    await backend.close()

asyncio.run(main())
"""


def test_an_unreachable_controller_is_an_outage_not_a_refusal(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """libslurm reads its configuration once a process: another process, told a port nobody serves."""
    if os.geteuid() != 0 or slurm_cluster.command_prefix:
        pytest.skip("submitting as root needs a root daemon and Slurm's commands in this root")
    conf = tmp_path / "slurm.conf"
    lines = Path(slurm_cluster.slurm_conf).read_text().splitlines()
    conf.write_text(
        "\n".join("SlurmctldPort=1" if line.startswith("SlurmctldPort=") else line for line in lines) + "\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", UNREACHABLE, str(conf), slurm_cluster.partition, slurm_cluster.service_user],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "unavailable:" in done.stdout and "Unable to contact slurm controller" in done.stdout, done.stdout


FALLBACK = """
import sys
from supervisor.slurm import SlurmSettings
from supervisor.slurm.factory import create_backend

backend = create_backend(SlurmSettings(partition="grid", slurm_conf=sys.argv[1]))
print("library:", backend.library, "|", backend.library_refusal)
"""


@pytest.mark.parametrize("content", [None, "ClusterName=grid\nSlurmctldHost=\nNodeName=\n"])
def test_a_slurm_conf_libslurm_cannot_read_costs_the_fallback_not_the_daemon(
    tmp_path: Path, content: str | None
) -> None:
    """libslurm ends its process on a configuration it cannot read (here, one without a controller
    ends it with SIGSEGV): auto tries it in a child first and keeps sbatch, saying why."""
    conf = tmp_path / "slurm.conf"
    if content is not None:
        conf.write_text(content)
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK, str(conf)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    said = (
        f"cannot initialise with {conf}" if content is not None else f"a readable slurm.conf, {conf} is not"
    )
    assert "library: None |" in done.stdout and said in done.stdout, done.stdout


def test_submitter_choice_follows_the_settings(slurm_cluster: SlurmCluster) -> None:
    """auto falls back to sbatch where an extra option has no equivalent; libslurm then refuses to
    start, naming it; sbatch never loads the library."""

    def backend(submitter: Literal["auto", "sbatch", "libslurm"], *extra: str) -> CommandSlurmBackend:
        settings = SlurmSettings(
            partition=slurm_cluster.partition,
            slurm_conf=slurm_cluster.slurm_conf,
            submitter=submitter,
            extra_sbatch_args=extra,
        )
        made = CommandSlurmBackend(LocalRunner(slurm_conf=str(slurm_cluster.slurm_conf)), settings)
        attach_library(made)
        return made

    mapped = backend("auto", "--qos=normal")
    assert mapped.library is not None and mapped.library_options == {"qos": "normal"}
    mapped.library.close()
    assert backend("auto", "--exclusive").library is None
    assert backend("sbatch").library is None
    with pytest.raises(BackendUnavailable, match=r"'--exclusive' has no libslurm equivalent"):
        backend("libslurm", "--exclusive")


def test_libslurm_submitter_needs_the_local_backend() -> None:
    with pytest.raises(ValueError, match="submitter 'libslurm' needs the local backend"):
        SlurmSettings(partition="grid", backend="pyslurm", submitter="libslurm")
    with pytest.raises(ValueError, match="without a command prefix"):
        SlurmSettings(partition="grid", submitter="libslurm", command_prefix=("/usr/sbin/chroot", "/srv"))


def test_extra_options_map_to_job_description_fields_or_are_refused_by_name() -> None:
    assert library_options(["--account=lab", "--constraint=avx2", "--reservation=r1"]) == {
        "account": "lab",
        "features": "avx2",
        "reservation": "r1",
    }
    for unmapped in ("--exclusive", "-A", "--qos", "--qos=", "--nice=5"):
        with pytest.raises(UnmappedOption, match=repr(unmapped)):
            library_options([unmapped])


@pytest.mark.parametrize(
    ("propagate", "propagate_except", "expected"),
    [
        (None, None, RLIMITS),
        ("ALL", None, RLIMITS),
        ("NONE", None, ()),
        ("nofile,CORE", None, ("CORE", "NOFILE")),
        ("ALL", "MEMLOCK,STACK", tuple(n for n in RLIMITS if n not in ("MEMLOCK", "STACK"))),
        (None, "ALL", ()),
    ],
)
def test_propagated_limits_follow_the_cluster_configuration(
    propagate: str | None, propagate_except: str | None, expected: tuple[str, ...]
) -> None:
    assert propagated_rlimits(propagate, propagate_except) == expected


def test_build_libslurm_compiles_the_binding_or_says_what_is_missing(tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).with_name("grid-supervisor")),
        "build-libslurm",
        "--into",
        str(tmp_path),
    ]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    assert [path.name.split(".")[0] for path in tmp_path.iterdir()] == ["_grid_libslurm"]
    assert str(tmp_path) in built.stdout and "libslurm API 0x" in built.stdout
    missing = subprocess.run(
        [*command, "--include-dir", str(tmp_path / "none")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1
    assert "slurm.h not found: install Slurm's development headers (libslurm-dev)" in missing.stderr
