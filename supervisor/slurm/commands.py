"""Slurm command lines as argument lists, and the guard that keeps a script's #SBATCH lines inert. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from supervisor.slurm.errors import InvalidSubmission
from supervisor.slurm.models import JobSubmission

SHELL_SHEBANG = re.compile(r"^#!\s*(?:/usr/bin/env\s+)?(?:\S*/)?(?:sh|bash|dash|zsh|ksh)(?:\s.*)?$")

# sacct fields, in the order parse_sacct reads them.
SACCT_FIELDS = (
    "JobIDRaw",
    "JobName",
    "State",
    "ExitCode",
    "ElapsedRaw",
    "Start",
    "End",
    "Reason",
    "TimelimitRaw",
    "User",
)
# squeue fields, in the order parse_squeue reads them, each ended by FIELD_SEPARATOR but the last:
# the reason (free text where Slurm writes a description) and the name, so that whatever they hold
# cannot shift another field. The listing of every job leaves the name out (see squeue_argv).
SQUEUE_FIELDS = (
    "JobID",
    "State",
    "SubmitTime",
    "StartTime",
    "EndTime",
    "TimeLimit",
    "UserName",
    "Reason",
    "Name",
)
#: ASCII's unit separator: no Slurm state, time, reason or user name holds it.
FIELD_SEPARATOR = "\x1f"
#: Names per `squeue --name` call: a command line (one argument over SSH) stays far below 128 KiB.
NAMES_PER_CALL = 500
# sacct prints times in this format when SLURM_TIME_FORMAT is set to it: seconds since the epoch.
TIME_FORMAT_ENV = {"SLURM_TIME_FORMAT": "%s"}


def guard_script(script: str) -> str:
    """Insert `true` as the first command after the shebang.

    sbatch reads `#SBATCH` lines only until the first command, so after this nothing in the script can
    change the resources given on the command line. Only shell scripts can be guarded this way.
    """
    lines = script.splitlines(keepends=True)
    if not lines or not SHELL_SHEBANG.match(lines[0].rstrip("\r\n")):
        first = lines[0].rstrip("\r\n")[:80] if lines else ""
        raise InvalidSubmission(
            f"the batch script must start with a shell shebang (#!/bin/bash), got {first!r}"
        )
    shebang = lines[0] if lines[0].endswith("\n") else lines[0] + "\n"
    return shebang + "true\n" + "".join(lines[1:])


def sbatch_argv(
    submission: JobSubmission,
    partition: str,
    extra_args: Iterable[str] = (),
    *,
    as_ids: tuple[int, int] | None = None,
) -> list[str]:
    """sbatch with the job's resources; the operator's extras come first so the job's own flags win.

    `as_ids` (uid, gid): root submits the job as that user itself (`--uid`/`--gid`, root only), so no
    `runuser` process is needed per job."""
    argv = ["sbatch", "--parsable", *extra_args]
    if as_ids is not None:
        argv += [f"--uid={as_ids[0]}", f"--gid={as_ids[1]}"]
    argv += [
        f"--job-name={submission.name}",
        f"--partition={partition}",
        f"--ntasks={submission.ntasks}",
        f"--cpus-per-task={submission.cpus_per_task}",
        f"--mem-per-cpu={submission.mem_per_cpu_mb}",
    ]
    if submission.gpus > 0:
        argv.append(f"--gpus={submission.gpus}")
    argv += [
        f"--time={submission.time_limit_minutes}",
        f"--chdir={submission.workdir}",
        f"--output={submission.output_path}",
    ]
    return argv


def squeue_argv(*, names: Iterable[str] = ()) -> list[str]:
    """One line of SQUEUE_FIELDS per live job (run with TIME_FORMAT_ENV: times in seconds).

    Without `names`: every job the controller knows, without the name field, for the jobs whose Slurm
    id is known. Another user chooses a job's name, and a name may hold a line break: in a listing
    with names, `x<newline><a line saying one of ours completed>` would read as ours. No field left
    holds text another user writes, so the listing can be matched on ids. With `names`: only the jobs
    of those exact names (Slurm filters), the name last. Asking Slurm for a list of ids instead costs
    it time in the square of the list's length; the whole listing is cheap.
    """
    wanted = sorted(set(names))
    if any("," in name for name in wanted):
        raise ValueError("a job name with a comma cannot be looked up with --name")
    fields = SQUEUE_FIELDS if wanted else SQUEUE_FIELDS[:-1]
    layout = ",".join(f"{field}:{FIELD_SEPARATOR}" for field in fields[:-1]) + f",{fields[-1]}:0"
    argv = ["squeue", "--noheader", "--all", "--states=all", f"--Format={layout}"]
    if wanted:
        argv.append(f"--name={','.join(wanted)}")
    return argv


def squeue_json_argv(data_parser: str | None = None) -> list[str]:
    """All jobs the controller knows, in one JSON answer: read only for what the lines lack (the
    exit code of a job that ended while accounting cannot tell it).

    22.05 ignores filters with --json and prints every job; from 23.02 the default filter hides
    finished ones, so all partitions and states are asked for explicitly. `data_parser` picks one of
    the release's JSON layouts (`v0.0.42`); None is the release's default.
    """
    return ["squeue", f"--json={data_parser}" if data_parser else "--json", "--all", "--states=all"]


def squeue_name_argv(name: str) -> list[str]:
    """Id and submission time (run with TIME_FORMAT_ENV: seconds) of the live jobs with one name: a
    small answer, for the look-up before a submission."""
    return ["squeue", "--noheader", "--all", "--states=all", f"--name={name}", "--format=%i|%V"]


def sacct_argv(names: Iterable[str], lookback_days: int, *, since: datetime | None = None) -> list[str]:
    """Accounting records of the given job names, one line per allocation, in one call.

    `since` narrows the window to jobs present after that moment (local time, as sacct reads it).
    """
    start = f"now-{lookback_days}days" if since is None else since.astimezone().strftime("%Y-%m-%dT%H:%M:%S")
    return [
        "sacct",
        "--noheader",
        "--parsable2",
        "--allocations",
        "--allusers",
        f"--starttime={start}",
        "--endtime=now",
        f"--name={','.join(sorted(names))}",
        f"--format={','.join(SACCT_FIELDS)}",
    ]


def sacct_probe_argv() -> list[str]:
    """A cheap accounting request: answers quickly when slurmdbd works, and says so when it is disabled."""
    return ["sacct", "--noheader", "--parsable2", "--allocations", "--jobs=1", "--format=JobIDRaw"]


def scancel_argv(slurm_job_id: int) -> list[str]:
    return ["scancel", str(slurm_job_id)]


def extend_argv(slurm_job_id: int, extra_minutes: int) -> list[str]:
    return ["scontrol", "update", f"JobId={slurm_job_id}", f"TimeLimit=+{extra_minutes}"]


def ping_argv() -> list[str]:
    return ["scontrol", "ping"]


def sinfo_argv() -> list[str]:
    return ["sinfo", "--json"]


def user_exists_argv(user: str) -> list[str]:
    return ["id", "-u", user]
