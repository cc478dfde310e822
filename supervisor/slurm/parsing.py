"""Reading what Slurm commands print. Pure: every malformed answer becomes a SlurmOutputError."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from supervisor.core.slurm_states import (
    FINAL_STATES,
    UnknownSlurmState,
    normalize_state,
    parse_exit_pair,
    split_wait_status,
    state_from_flags,
)
from supervisor.slurm.commands import FIELD_SEPARATOR, SACCT_FIELDS, SQUEUE_FIELDS
from supervisor.slurm.errors import (
    SlurmCommandFailed,
    SlurmError,
    SlurmOutputError,
    SlurmUnavailable,
    SubmissionRefused,
)
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
    "temporarily unable to accept job",
    "resource temporarily unavailable",
    "try again",
    "protocol authentication error",
    "munge",
    "connection reset by peer",
    "network is unreachable",
    "no route to host",
    "in standby mode",
)
# Slurm's messages (slurm_strerror, and sbatch's own checks) that refuse the job itself: the same
# request fails the same way whenever it is sent.
_REFUSAL_MARKERS = (
    "invalid partition",
    "requested node configuration is not available",
    "invalid account",
    "invalid qos",
    "job violates accounting/qos policy",
    "requested time limit is invalid",
    "invalid time limit",
    "more processors requested than permitted",
    "memory required by task is not available",
    "memory specification can not be satisfied",
    "cpu count per node can not be satisfied",
    "invalid generic resource",
    "invalid trackable resource",
    "invalid feature specification",
    "node count specification invalid",
    "task count specification invalid",
    "cpu count specification invalid",
    "invalid wckey",
    "invalid license specification",
    "user's group not permitted to use this partition",
    "access/permission denied",
    "user id is missing",
    "invalid user id",
    "requested nodes are not in partition",
    "invalid --gpus",
    "invalid gres specification",
)
ACCOUNTING_DISABLED_MARKER = "accounting storage is disabled"


def _is_number(text: str) -> bool:
    """ASCII digits only (str.isdigit also accepts characters like '²' that int() refuses)."""
    return text.isascii() and text.isdigit()


def says_unavailable(stderr: str) -> bool:
    """Whether a command's error output means Slurm is unreachable (worth retrying), not a refusal."""
    text = stderr.lower()
    return any(marker in text for marker in _UNAVAILABLE_MARKERS)


def refusal_reason(stderr: str) -> str | None:
    """Slurm's message when it refuses the job itself, else None (unreachable, or a cause not known).

    Unreachability wins: "Batch job submission failed: Unable to contact slurm controller" is no
    refusal of the job.
    """
    if says_unavailable(stderr):
        return None
    text = stderr.lower()
    if not any(marker in text for marker in _REFUSAL_MARKERS):
        return None
    lines = [re.sub(r"^\s*\w+: error: ", "", line).strip() for line in stderr.splitlines()]
    return "; ".join(line for line in lines if line)


def command_failure(argv: Sequence[str], returncode: int, stderr: str, stdout: str = "") -> SlurmError:
    """The error for a Slurm command that exited with a failure, by its cause.

    SlurmUnavailable when Slurm could not be reached, SubmissionRefused when Slurm refused the job,
    SlurmCommandFailed (retried later, never a refusal) when the cause is not known.
    """
    if says_unavailable(stderr):
        return SlurmUnavailable(f"`{argv[0] if argv else '?'}`: {stderr.strip()[-300:]}")
    reason = refusal_reason(stderr)
    if reason is not None:
        return SubmissionRefused(reason)
    return SlurmCommandFailed(argv, returncode, stderr or stdout)


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


def _number(record: Mapping[str, Any], key: str, command: str) -> int | None:
    """An integer as any Slurm release prints it; None when Slurm says it has no value or no limit.

    22.05 (openapi v0.0.38) prints plain integers, with 0xFFFFFFFE/0xFFFFFFFF for "no value" and
    "infinite"; 23.02 on (data_parser v0.0.39 and later) prints `{"set": .., "infinite": .., "number": ..}`.
    """
    value = record.get(key)
    if isinstance(value, dict) and "number" in value:
        number = value.get("number")
        if isinstance(number, bool) or not isinstance(number, int):
            raise SlurmOutputError(f"{command}: field {key!r} is {value!r}, expected an integer")
        if value.get("infinite") is True or value.get("set") is False:
            return None
        return number
    number = _int(record, key, command)
    return None if number in _NO_VALUE else number


def _str(record: Mapping[str, Any], key: str, command: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise SlurmOutputError(f"{command}: field {key!r} is {value!r}, expected a string")
    return value


@functools.lru_cache(maxsize=65536)  # a listing repeats the same seconds: submissions of a burst
def _epoch(value: int) -> datetime | None:
    if value <= 0 or value in _NO_VALUE:
        return None
    return datetime.fromtimestamp(value, tz=UTC)


def _time(record: Mapping[str, Any], key: str, command: str) -> datetime | None:
    value = _number(record, key, command)
    return None if value is None else _epoch(value)


@functools.lru_cache(maxsize=1024)
def _state(raw: str) -> str:
    """The state's name; one this layer does not know is kept as Slurm wrote it.

    Such a job is neither waiting, active nor final, so nothing is reported for it (its chain outcome
    raises UnknownSlurmState) while every other job of the answer is read as usual.
    """
    try:
        return normalize_state(raw)
    except UnknownSlurmState:
        words = raw.strip().split()
        return words[0].upper() if words else "(EMPTY)"


def _job_state(record: Mapping[str, Any], command: str) -> str:
    """`job_state`: a string up to 23.02, from 23.11 a list of the base state and its flags."""
    value = record.get("job_state")
    if isinstance(value, str):
        return _state(value)
    if isinstance(value, list) and value and all(isinstance(part, str) for part in value):
        return _state(state_from_flags(value))
    raise SlurmOutputError(f"{command}: field 'job_state' is {value!r}, expected a state or a list of them")


def _exit_status(record: Mapping[str, Any], command: str) -> tuple[int, int | None]:
    """(exit code, signal) of `exit_code`: a raw wait status up to 22.05, an object from 23.02 on.

    The object holds `status` (SUCCESS, ERROR, SIGNALED...), `return_code` and `signal`
    (`{"id": .., "name": ..}`, the id also read under `signal_id`), numbers plain or as objects.
    """
    value = record.get("exit_code")
    if not isinstance(value, dict):
        try:
            return split_wait_status(_int(record, "exit_code", command))
        except ValueError as exc:
            raise SlurmOutputError(f"{command}: field 'exit_code': {exc}") from exc
    code = _number(value, "return_code", command) if "return_code" in value else None
    signal_record = value.get("signal")
    signal: int | None = None
    if isinstance(signal_record, dict):
        key = "id" if "id" in signal_record else "signal_id"
        if key in signal_record:
            signal = _number(signal_record, key, command)
    elif signal_record is not None:
        raise SlurmOutputError(f"{command}: field 'exit_code' has signal {signal_record!r}")
    return code or 0, signal or None


def parse_squeue_json(
    text: str,
    names: Collection[str] | None = None,
    *,
    now: datetime,
    submitted_after: datetime | None = None,
) -> list[ObservedJob]:
    """Jobs of `squeue --json` (any layout from 22.05's openapi v0.0.38 to data_parser v0.0.45), only
    those named in `names` when given, and only those submitted at or after `submitted_after` when given."""
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
            submitted = _time(record, "submit_time", "squeue")
            if submitted is not None and submitted < submitted_after:
                continue
        state = _job_state(record, "squeue")
        start = _time(record, "start_time", "squeue")
        end = _time(record, "end_time", "squeue")
        elapsed, end = _elapsed(state, start, end, now)
        exit_code: int | None = None
        signal: int | None = None
        if state in FINAL_STATES:
            exit_code, signal = _exit_status(record, "squeue")
        limit = _number(record, "time_limit", "squeue")
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
                time_limit_minutes=limit,
                user=user if isinstance(user, str) else None,
                from_accounting=False,
            )
        )
    return observed


def _elapsed(
    state: str, start: datetime | None, end: datetime | None, now: datetime
) -> tuple[int, datetime | None]:
    """(seconds the job ran, its end) from what the live view says: a pending job's start and end are
    Slurm's forecasts, and a running job's end is its time limit, not an end."""
    if start is None or state == "PENDING":
        return 0, (None if state == "PENDING" else end)
    if state in FINAL_STATES and end is not None:
        return max(0, int((end - start).total_seconds())), end
    return max(0, int((now - start).total_seconds())), None


_UNLIMITED_TIMES = {"UNLIMITED", "NOT_SET", "INVALID", "PARTITION_LIMIT", "N/A", "NONE", ""}


def _time_limit_minutes(text: str, line: str) -> int | None:
    """A time limit as squeue prints it (`[days-][hours:]minutes:seconds`) in whole minutes, rounded
    up; None for no limit of its own."""
    try:
        return _clock_minutes(text)
    except ValueError:
        raise SlurmOutputError(
            f"squeue: time limit {text!r} is not [days-][hours:]minutes:seconds in {line!r}"
        ) from None


@functools.lru_cache(maxsize=1024)
def _clock_minutes(text: str) -> int | None:
    if text.upper() in _UNLIMITED_TIMES:
        return None
    days_text, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not (days_text == "" or _is_number(days_text)) or len(parts) > 3 or not all(map(_is_number, parts)):
        raise ValueError(text)
    numbers = [int(part) for part in parts]
    if len(numbers) == 1:
        numbers.append(0)  # a bare number counts minutes
    seconds = numbers.pop()
    minutes = numbers.pop()
    hours = numbers.pop() if numbers else 0
    return (int(days_text or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


@dataclass
class ListingMemo:
    """The jobs read from the last listing's lines whose reading does not depend on the time of the
    poll (a pending job, an ended one), by line (a pending one's without its forecasts), with their
    submit time: with thousands of jobs waiting, a poll parses again only the jobs that changed, and
    the same job is the same object from one poll to the next."""

    jobs: dict[str, tuple[datetime | None, ObservedJob]] = field(default_factory=dict)
    #: The same jobs by their whole line, with their key: a line printed again as it was is matched
    #: without being split.
    lines: dict[str, tuple[str, tuple[datetime | None, ObservedJob]]] = field(default_factory=dict)


def parse_squeue(
    text: str,
    *,
    now: datetime,
    names: Collection[str] | None = None,
    slurm_ids: Mapping[int, str] | None = None,
    submitted_after: datetime | None = None,
    memo: ListingMemo | None = None,
) -> list[ObservedJob]:
    """Lines of `squeue --noheader --Format=...` (commands.squeue_argv) with SLURM_TIME_FORMAT=%s.

    With `slurm_ids` (Slurm id -> job name): the listing without names, only the lines of those ids,
    named from it; any other line is another job's and is not read further. Else lines with the name
    last, only those of `names` when given. Only jobs submitted at or after `submitted_after` are kept
    when given. The lines carry no exit code: a job they show ended has `exit_code` None. `memo`: the
    jobs of the previous call's lines, reused for the lines that are the same, and replaced by this
    call's.
    """
    count = len(SQUEUE_FIELDS) - (0 if slurm_ids is None else 1)
    observed = []
    known = memo.jobs if memo is not None else {}
    known_lines = memo.lines if memo is not None else {}
    kept: dict[str, tuple[datetime | None, ObservedJob]] = {}
    kept_lines: dict[str, tuple[str, tuple[datetime | None, ObservedJob]]] = {}
    for line in text.splitlines():
        same = known_lines.get(line)
        if same is not None:
            key, (submitted, job) = same
            wanted = (
                slurm_ids.get(job.slurm_job_id) == job.name
                if slurm_ids is not None
                else names is None or job.name in names
            )
            if wanted:
                kept[key], kept_lines[line] = same[1], same
                if submitted_after is None or submitted is None or submitted >= submitted_after:
                    observed.append(job)
                continue
        if not line.strip():
            continue
        fields = line.split(FIELD_SEPARATOR, count - 1)
        if slurm_ids is not None:
            head = fields[0]
            if not _is_number(head) or int(head) not in slurm_ids:
                continue
            name = slurm_ids[int(head)]
        if len(fields) != count:
            raise SlurmOutputError(
                f"squeue: expected {count} fields ({','.join(SQUEUE_FIELDS[:count])}), got "
                f"{len(fields)} in line {line[:200]!r}"
            )
        job_id, state_text, submit_text, start_text, end_text, limit, user, reason = fields[:8]
        if slurm_ids is None:
            name = fields[8]
            if names is not None and name not in names:
                continue
        # A pending job's start and end are Slurm's forecasts, which its scheduler keeps moving:
        # not part of what the job is, so not of the key either.
        key = (
            FIELD_SEPARATOR.join((job_id, submit_text, limit, user, reason))
            if state_text == "PENDING"
            else line
        )
        hit = known.get(key)
        if hit is not None and hit[1].name == name:
            kept[key], kept_lines[line] = hit, (key, hit)
            if submitted_after is None or hit[0] is None or hit[0] >= submitted_after:
                observed.append(hit[1])
            continue
        if not _is_number(job_id):
            raise SlurmOutputError(f"squeue: job id {job_id!r} is not a number in line {line[:200]!r}")
        submitted = _squeue_time(submit_text, line)
        if submitted_after is not None and submitted is not None and submitted < submitted_after:
            continue
        state = _state(state_text)
        start = _squeue_time(start_text, line)
        elapsed, end = _elapsed(state, start, _squeue_time(end_text, line), now)
        if state == "PENDING":
            start = None
        job = ObservedJob(
            slurm_job_id=int(job_id),
            name=name,
            state=state,
            exit_code=None,
            signal=None,
            elapsed_seconds=elapsed,
            start_time=start,
            end_time=end,
            reason=None if reason in {"", "None"} else reason,
            time_limit_minutes=_time_limit_minutes(limit, line[:200]),
            user=user or None,
            from_accounting=False,
        )
        observed.append(job)
        if start is None or (state in FINAL_STATES and end is not None):
            kept[key] = (submitted, job)
            kept_lines[line] = (key, kept[key])
    if memo is not None:
        memo.jobs, memo.lines = kept, kept_lines
    return observed


def _squeue_time(value: str, line: str) -> datetime | None:
    if value in {"N/A", "Unknown", "None", ""}:
        return None
    if not _is_number(value):
        raise SlurmOutputError(
            f"squeue: time {value!r} is not seconds since the epoch in line {line[:200]!r}"
        )
    return _epoch(int(value))


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
                state=_state(state),
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
    """The nodes of one partition from `sinfo --json`: CPUs, memory (MB) and GPUs of each.

    22.05 lists nodes (`nodes`); from 23.02 the answer is a list of groups of alike nodes (`sinfo`).
    """
    data = _load_json(text, "sinfo")
    if isinstance(data.get("sinfo"), list) and "nodes" not in data:
        return _sinfo_groups(data["sinfo"], partition)
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


def _alike(group: Mapping[str, Any], key: str) -> int:
    """A per-node figure of a group of nodes: its nodes must agree on it (minimum == maximum)."""
    figures = group.get(key)
    if not isinstance(figures, dict):
        raise SlurmOutputError(f"sinfo: group field {key!r} is {figures!r}, expected an object")
    low, high = _int(figures, "minimum", "sinfo"), _int(figures, "maximum", "sinfo")
    if low != high:
        raise SlurmOutputError(f"sinfo: a group of nodes has {key} from {low} to {high}, not one figure")
    return low


def _sinfo_groups(groups: list[Any], partition: str) -> PartitionHardware:
    found: dict[str, NodeHardware] = {}
    for group in groups:
        if not isinstance(group, dict):
            raise SlurmOutputError("sinfo: a group entry is not an object")
        part = group.get("partition")
        if not isinstance(part, dict) or part.get("name") != partition:
            continue
        names = group.get("nodes", {}).get("nodes") if isinstance(group.get("nodes"), dict) else None
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise SlurmOutputError(f"sinfo: a group of partition {partition!r} has no list of node names")
        gres = group.get("gres")
        total = gres.get("total") if isinstance(gres, dict) else None
        gpus = sum(int(count) for count in _GRES_GPU.findall(total)) if isinstance(total, str) else 0
        cpus, memory = _alike(group, "cpus"), _alike(group, "memory")
        for name in names:
            found[name] = NodeHardware(name=name, cpus=cpus, memory_mb=memory, gpus=gpus)
    if not found:
        raise SlurmOutputError(f"sinfo: partition {partition!r} has no nodes (or does not exist)")
    return PartitionHardware(partition=partition, nodes=tuple(sorted(found.values(), key=lambda n: n.name)))
