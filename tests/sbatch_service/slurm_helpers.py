"""Submitting rendered scripts to the test Slurm cluster as the supervisor does (PROTOCOL.md section 9)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sbatch_service.loader import load_workflow
from sbatch_service.models import Job
from sbatch_service.names import SeededNames
from sbatch_service.renderer import RenderOptions, render

TERMINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
)
JOB_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Finished:
    job_id: int
    state: str
    exit_code: int
    output: str


def render_for_slurm(workflow: str | dict[str, object], storage_root: Path) -> tuple[Job, str]:
    job = load_workflow(workflow) if isinstance(workflow, str) else _validated(workflow)
    return job, render(job, SeededNames(0), RenderOptions(storage_root=str(storage_root)))


def _validated(workflow: dict[str, object]) -> Job:
    from sbatch_service.models import validate_workflow

    return validate_workflow(workflow)


def sbatch_arguments(job: Job, workdir: Path) -> list[str]:
    """The supervisor's command line: resources from the job definition, --chdir and --output always."""
    res = job.resources
    args = [
        "sbatch",
        "--parsable",
        f"--job-name=0x{secrets.token_hex(32)}",
        f"--ntasks={res.tasks}",
        f"--cpus-per-task={res.cpus_per_task}",
        f"--mem-per-cpu={res.mem_per_cpu}",
        "--time=10",
        f"--chdir={workdir}",
        f"--output={workdir}/slurm-%j.out",
    ]
    if res.gpus > 0:
        args.append(f"--gpus={res.gpus}")
    return args


def _job_fields(job_id: int) -> dict[str, str] | None:
    shown = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    if shown.returncode != 0:
        return None
    return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))


def _from_accounting(job_id: int) -> tuple[str, int] | None:
    found = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", "State,ExitCode"], capture_output=True, text=True
    )
    line = found.stdout.strip().splitlines()[0] if found.stdout.strip() else ""
    if not line:
        return None
    state, exit_code = line.split("|")
    return state.split()[0], int(exit_code.split(":")[0])


def run_on_slurm(script: str, job: Job, workdir: Path, env: dict[str, str] | None = None) -> Finished:
    """Submit with the script on stdin and poll until the job ends (deadline JOB_TIMEOUT_S)."""
    workdir.mkdir(parents=True, exist_ok=True)
    submitted = subprocess.run(
        sbatch_arguments(job, workdir),
        input=script,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.strip().split(";")[0])
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        fields = _job_fields(job_id)
        if fields is not None and fields.get("JobState") in TERMINAL_STATES:
            state, exit_code = fields["JobState"], int(fields["ExitCode"].split(":")[0])
            break
        if fields is None:
            accounted = _from_accounting(job_id)
            if accounted is not None and accounted[0] in TERMINAL_STATES:
                state, exit_code = accounted
                break
        if time.monotonic() > deadline:
            subprocess.run(["scancel", str(job_id)], check=False)
            raise AssertionError(f"job {job_id} did not finish within {JOB_TIMEOUT_S}s")
        time.sleep(0.2)
    output_file = workdir / f"slurm-{job_id}.out"
    output = output_file.read_text() if output_file.exists() else ""
    return Finished(job_id, state, exit_code, output)
