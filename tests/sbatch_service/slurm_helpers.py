"""Submitting rendered scripts to the test Slurm cluster as the supervisor does (PROTOCOL.md section 9)."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbatch_service.loader import parse_workflow_text
from sbatch_service.models import Job
from sbatch_service.modules import ModuleFetcher, prepare
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


def site_options(storage_root: Path) -> RenderOptions:
    """The job folders and the four cache folders under one test folder (the world ones made here,
    as a provider makes them)."""
    caches = storage_root.parent / "caches"
    for world in ("world-tmp", "disk-world-tmp"):
        (caches / world).mkdir(parents=True, exist_ok=True)
    return RenderOptions(
        storage_root=str(storage_root),
        shared_tmp=f"{caches}/persistent/user-{{uid}}",
        shared_world_tmp=f"{caches}/world-tmp",
        disk_tmp=f"{caches}/disk/user-{{uid}}",
        disk_world_tmp=f"{caches}/disk-world-tmp",
        software_root=f"{caches}/software",
    )


def render_for_slurm(
    workflow: str | dict[str, Any], storage_root: Path, fetcher: ModuleFetcher | None = None
) -> tuple[Job, str]:
    data = parse_workflow_text(workflow) if isinstance(workflow, str) else workflow
    job = prepare(data, fetcher=fetcher).job
    return job, render(job, SeededNames(0), site_options(storage_root))


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


STANDINS = Path(__file__).parent / "standins"
SRUN_RECORDER = Path(__file__).parent / "srun_recorder"


def standin_env(folder: Path, record_srun: bool = False) -> tuple[dict[str, str], Path]:
    """The job's environment with the stand-ins (and the srun recorder) first on PATH, and the log."""
    log = folder / "standin.jsonl"
    path = f"{STANDINS}:{os.environ['PATH']}"
    env = {"GRID_STANDIN_LOG": str(log)}
    if record_srun:
        path = f"{SRUN_RECORDER}:{path}"
        env["GRID_SRUN_LOG"] = str(folder / "srun.jsonl")
    return {**env, "PATH": path}, log


def calls(log: Path, tool: str | None = None) -> list[dict[str, Any]]:
    """The calls a stand-in recorded, in order (only those of `tool` when given)."""
    if not log.exists():
        return []
    found = [json.loads(line) for line in log.read_text().splitlines()]
    return [c for c in found if tool is None or c["tool"] == tool]


def sruns(folder: Path) -> list[list[str]]:
    """The arguments of every srun the batch script ran (with `record_srun`), the prepare-dir ones left out."""
    log = folder / "srun.jsonl"
    if not log.exists():
        return []
    found = [json.loads(line) for line in log.read_text().splitlines()]
    return [argv for argv in found if "--job-name=prepare-dir" not in argv]
