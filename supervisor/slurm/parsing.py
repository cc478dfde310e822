"""Reading what Slurm commands print. Pure: every malformed answer becomes a SlurmOutputError."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from supervisor.core.slurm_states import (
    FINAL_STATES,
    UnknownSlurmState,
    normalize_state,
    parse_exit_pair,
    split_wait_status,
)
from supervisor.slurm.commands import SACCT_FIELDS
from supervisor.slurm.errors import SlurmOutputError, SlurmUnavailable
from supervisor.slurm.models import NodeHardware, ObservedJob, PartitionHardware

# Slurm's "no value" and "infinite" markers for 32-bit fields.
_NO_VALUE = {0xFFFFFFFE, 0xFFFFFFFF}
_UNAVAILABLE_MARKERS = (
    "unable to contact slurm controller",
    "connection refused",
    "socket timed out",
    "zero bytes were transmitted",
    "slurm_persist_conn_open",
    "problem talking to the database",
    "unable to connect to database",
    "communication connection failure",
    "slurmctld is not responding",
    "transport endpoint is not connected",
)
ACCOUNTING_DISABLED_MARKER = "accounting storage is disabled"


def _is_number(text: str) -> bool:
    """ASCII digits only (str.isdigit also accepts characters like '²' that int() refuses)."""
    return text.isascii() and text.isdigit()


def says_unavailable(stderr: str) -> bool:
    """Whether a command's error output means Slurm is unreachable (worth retrying), not a refusal."""
    text = stderr.lower()
    return any(marker in text for marker in _UNAVAILABLE_MARKERS)


def says_accounting_disabled(output: str) -> bool:
    return ACCOUNTING_DISABLED_MARKER in output.lower()


def parse_sbatch(stdout: str) -> int:
    """`sbatch --parsable` prints `<job id>` or `<job id>;<cluster>`."""
    text = stdout.strip()
    head = text.split(";", 1)[0]
    if not _is_number(head):
        raise SlurmOutputError(f"sbatch printed {text[:200]!r} instead of a job id")
    return int(head)


def parse_job_submissions(stdout: str) -> list[tuple[int, datetime | None]]:
    """`id|submit time` per line (`squeue --format=%i|%V` with SLURM_TIME_FORMAT=%s)."""
    found: list[tuple[int, datetime | None]] = []
    for line in stdout.split():
        job_id, _, submitted = line.partition("|")
        if not _is_number(job_id) or not (submitted == "" or _is_number(submitted) or submitted == "N/A"):
            raise SlurmOutputError(
                f"squeue printed {line[:100]!r} instead of a job id and its submission time"
            )
        found.append((int(job_id), _epoch(int(submitted)) if _is_number(submitted) else None))
    return found


def parse_ping(stdout: str) -> bool:
    """`scontrol ping`: `Slurmctld(primary) at host is UP`."""
    return bool(re.search(r"\bis UP\b", stdout))


def _load_json(text: str, command: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SlurmOutputError(f"{command} printed invalid JSON ({exc.msg} at char {exc.pos})") from exc
    if not isinstance(data, dict):
        raise SlurmOutputError(f"{command} printed JSON that is not an object")
    errors = data.get("errors")
    if errors:
        # With slurmctld down, `squeue --json` exits 0 with an empty job list and an error entry:
        # that must read as "Slurm unavailable", never as "no jobs".
        raise SlurmUnavailable(f"{command} could not load from Slurm: {_describe_errors(errors)}")
    return data


def _describe_errors(errors: object) -> str:
    if isinstance(errors, list):
        parts = [
            f"{e.get('source', '?')}: {e.get('description') or e.get('error')}"
            if isinstance(e, dict)
            else str(e)
            for e in errors
        ]
        return "; ".join(parts)[:300]
    return str(errors)[:300]


def _int(record: Mapping[str, Any], key: str, command: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SlurmOutputError(f"{command}: field {key!r} is {value!r}, expected an integer")
    return value


def _str(record: Mapping[str, Any], key: str, command: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise SlurmOutputError(f"{command}: field {key!r} is {value!r}, expected a string")
    return value


def _epoch(value: int) -> datetime | None:
    if value <= 0 or value in _NO_VALUE:
        return None
    return datetime.fromtimestamp(value, tz=UTC)


def _state(raw: str, command: str) -> str:
    try:
        return normalize_state(raw)
    except UnknownSlurmState as exc:
        raise SlurmOutputError(f"{command}: {exc}") from exc


def parse_squeue_json(
    text: str,
    names: Collection[str] | None = None,
    *,
    now: datetime,
    submitted_after: datetime | None = None,
) -> list[ObservedJob]:
    """Jobs of `squeue --json` (openapi v0.0.38), only those named in `names` when given, and only
    those submitted at or after `submitted_after` when given."""
    data = _load_json(text, "squeue")
    jobs = data.get("jobs")
    if not isinstance(jobs, list):
        raise SlurmOutputError("squeue: the JSON answer has no 'jobs' list")
    observed = []
    for record in jobs:
        if not isinstance(record, dict):
            raise SlurmOutputError("squeue: a job entry is not an object")
        name = _str(record, "name", "squeue")
        if names is not None and name not in names:
            continue
        if submitted_after is not None:
            submitted = _epoch(_int(record, "submit_time", "squeue"))
            if submitted is not None and submitted < submitted_after:
                continue
        state = _state(_str(record, "job_state", "squeue"), "squeue")
        start = _epoch(_int(record, "start_time", "squeue"))
        end = _epoch(_int(record, "end_time", "squeue"))
        final = state in FINAL_STATES
        if start is None or state == "PENDING":
            elapsed = 0
            end = None if state == "PENDING" else end
        elif final and end is not None:
            elapsed = max(0, int((end - start).total_seconds()))
        else:
            elapsed = max(0, int((now - start).total_seconds()))
            end = None
        exit_code: int | None = None
        signal: int | None = None
        if final:
            exit_code, signal = split_wait_status(_int(record, "exit_code", "squeue"))
        limit = _int(record, "time_limit", "squeue")
        reason = record.get("state_reason")
        user = record.get("user_name")
        observed.append(
            ObservedJob(
                slurm_job_id=_int(record, "job_id", "squeue"),
                name=name,
                state=state,
                exit_code=exit_code,
                signal=signal,
                elapsed_seconds=elapsed,
                start_time=start,
                end_time=end,
                reason=reason if isinstance(reason, str) else None,
                time_limit_minutes=None if limit in _NO_VALUE else limit,
                user=user if isinstance(user, str) else None,
                from_accounting=False,
            )
        )
    return observed


def _sacct_time(value: str, line: str) -> datetime | None:
    if value in {"Unknown", "None", ""}:
        return None
    if not _is_number(value):
        raise SlurmOutputError(f"sacct: time {value!r} is not seconds since the epoch in line {line!r}")
    return _epoch(int(value))


def parse_sacct(text: str) -> list[ObservedJob]:
    """Lines of `sacct --parsable2 --noheader --format=<SACCT_FIELDS>` with SLURM_TIME_FORMAT=%s."""
    observed = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != len(SACCT_FIELDS):
            raise SlurmOutputError(
                f"sacct: expected {len(SACCT_FIELDS)} fields ({','.join(SACCT_FIELDS)}), got {len(fields)} "
                f"in line {line[:200]!r}"
            )
        job_id, name, state, exit_pair, elapsed, start, end, reason, limit, user = fields
        if not _is_number(job_id):
            raise SlurmOutputError(f"sacct: job id {job_id!r} is not a number in line {line[:200]!r}")
        if not _is_number(elapsed):
            raise SlurmOutputError(f"sacct: elapsed time {elapsed!r} is not a number of seconds")
        try:
            exit_code, signal = parse_exit_pair(exit_pair)
        except ValueError as exc:
            raise SlurmOutputError(f"sacct: {exc} in line {line[:200]!r}") from exc
        observed.append(
            ObservedJob(
                slurm_job_id=int(job_id),
                name=name,
                state=_state(state, "sacct"),
                exit_code=exit_code,
                signal=signal,
                elapsed_seconds=int(elapsed),
                start_time=_sacct_time(start, line),
                end_time=_sacct_time(end, line),
                reason=reason or None,
                time_limit_minutes=int(limit) if _is_number(limit) else None,
                user=user or None,
                from_accounting=True,
            )
        )
    return observed


def latest_by_name(jobs: Iterable[ObservedJob]) -> dict[str, ObservedJob]:
    """One job per name: a live one before a finished one, then the most recent Slurm id."""
    chosen: dict[str, ObservedJob] = {}
    for job in jobs:
        current = chosen.get(job.name)
        if current is None or (not job.is_final, job.slurm_job_id) > (
            not current.is_final,
            current.slurm_job_id,
        ):
            chosen[job.name] = job
    return chosen


_TRES_GPU = re.compile(r"(?:^|,)gres/gpu=(\d+)(?:,|$)")
_GRES_GPU = re.compile(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)")


def _gpus(record: Mapping[str, Any]) -> int:
    tres = record.get("tres")
    if isinstance(tres, str):
        match = _TRES_GPU.search(tres)
        if match:
            return int(match.group(1))
    gres = record.get("gres")
    if isinstance(gres, str):
        return sum(int(count) for count in _GRES_GPU.findall(gres))
    return 0


def parse_sinfo_json(text: str, partition: str) -> PartitionHardware:
    """The nodes of one partition from `sinfo --json`: CPUs, memory (MB) and GPUs of each."""
    data = _load_json(text, "sinfo")
    nodes = data.get("nodes")
    if not isinstance(nodes, list):
        raise SlurmOutputError("sinfo: the JSON answer has no 'nodes' list")
    found = []
    for record in nodes:
        if not isinstance(record, dict):
            raise SlurmOutputError("sinfo: a node entry is not an object")
        partitions = record.get("partitions")
        if not isinstance(partitions, list):
            raise SlurmOutputError(f"sinfo: node {record.get('name')!r} has no 'partitions' list")
        if partition not in partitions:
            continue
        found.append(
            NodeHardware(
                name=_str(record, "name", "sinfo"),
                cpus=_int(record, "cpus", "sinfo"),
                memory_mb=_int(record, "real_memory", "sinfo"),
                gpus=_gpus(record),
            )
        )
    if not found:
        raise SlurmOutputError(f"sinfo: partition {partition!r} has no nodes (or does not exist)")
    return PartitionHardware(partition=partition, nodes=tuple(sorted(found, key=lambda n: n.name)))
