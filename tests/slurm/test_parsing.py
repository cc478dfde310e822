"""Parsers on outputs captured from the project's cluster (tests/slurm/data), and malformed variants."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.status import JobStatus
from supervisor.slurm import SlurmOutputError, SlurmUnavailable
from supervisor.slurm.parsing import (
    latest_by_name,
    parse_job_submissions,
    parse_ping,
    parse_sacct,
    parse_sbatch,
    parse_sinfo_json,
    parse_squeue_json,
    says_accounting_disabled,
    says_unavailable,
)

DATA = Path(__file__).parent / "data"
NOW = datetime(2026, 11, 22, 23, 21, 10, tzinfo=UTC)


def text(name: str) -> str:
    return (DATA / name).read_text()


def squeue_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text("squeue.json"))
    return data


def test_squeue_capture_gives_states_exit_codes_and_times() -> None:
    jobs = {job.slurm_job_id: job for job in parse_squeue_json(text("squeue.json"), now=NOW)}
    assert {i: j.state for i, j in jobs.items()} == {
        37: "COMPLETED",
        38: "FAILED",
        39: "CANCELLED",
        40: "RUNNING",
        41: "RUNNING",
    }
    assert (jobs[37].exit_code, jobs[37].signal) == (0, None)
    assert (jobs[38].exit_code, jobs[38].signal) == (3, None)  # raw wait status 768
    assert (jobs[39].exit_code, jobs[39].signal) == (0, 15)
    assert jobs[40].exit_code is None and jobs[40].end_time is None
    assert jobs[40].elapsed_seconds == int((NOW - jobs[40].start_time).total_seconds())  # type: ignore[operator]
    assert jobs[40].time_limit_minutes == 1
    assert jobs[41].user == "grid-svc"
    assert not any(job.from_accounting for job in jobs.values())
    assert jobs[38].chain_outcome().status == JobStatus.FAILED


def test_squeue_keeps_only_the_names_asked_for() -> None:
    wanted = {job["name"] for job in squeue_data()["jobs"][:2]}
    assert {job.name for job in parse_squeue_json(text("squeue.json"), wanted, now=NOW)} == wanted
    assert parse_squeue_json(text("squeue.json"), set(), now=NOW) == []


def test_sacct_capture_gives_accounting_records() -> None:
    jobs = {job.slurm_job_id: job for job in parse_sacct(text("sacct.txt"))}
    assert {i: j.state for i, j in jobs.items()} == {
        37: "COMPLETED",
        38: "FAILED",
        39: "CANCELLED",  # printed as "CANCELLED by 0"
        40: "TIMEOUT",
        41: "RUNNING",
    }
    assert jobs[38].exit_code == 3
    assert jobs[40].elapsed_seconds == 70 and jobs[40].time_limit_minutes == 1
    assert jobs[40].chain_outcome().status == JobStatus.OUT_OF_CREDITS
    assert jobs[41].end_time is None and jobs[41].user == "grid-svc"
    assert jobs[37].start_time == datetime.fromtimestamp(1795389663, tz=UTC)
    assert all(job.from_accounting for job in jobs.values())


def test_sinfo_capture_describes_the_partition() -> None:
    hardware = parse_sinfo_json(text("sinfo.json"), "grid")
    assert [(n.name, n.cpus, n.memory_mb, n.gpus) for n in hardware.nodes] == [("grid-node1", 8, 8000, 2)]
    with pytest.raises(SlurmOutputError, match="partition 'gpu' has no nodes"):
        parse_sinfo_json(text("sinfo.json"), "gpu")


def test_job_id_lists() -> None:
    assert parse_job_submissions("") == []
    assert parse_job_submissions("12|1795389662\n13|N/A\n") == [
        (12, datetime.fromtimestamp(1795389662, tz=UTC)),
        (13, None),
    ]
    with pytest.raises(SlurmOutputError, match="instead of a job id"):
        parse_job_submissions("12|1795389662\nJOBID|SUBMIT_TIME\n")


def test_sbatch_and_ping_outputs() -> None:
    assert parse_sbatch("1234\n") == 1234
    assert parse_sbatch("1234;grid\n") == 1234
    assert parse_ping(text("ping.txt"))
    assert not parse_ping("Slurmctld(primary) at vm is DOWN\n")
    for bad in ("", "Submitted batch job 12", "sbatch: error: Batch job submission failed"):
        with pytest.raises(SlurmOutputError, match="instead of a job id"):
            parse_sbatch(bad)


def test_latest_by_name_prefers_live_then_newest() -> None:
    jobs = parse_sacct(text("sacct.txt"))
    renamed = [job.__class__(**{**job.__dict__, "name": "same"}) for job in jobs]
    assert latest_by_name(renamed)["same"].slurm_job_id == 41  # the running one
    finished = [job for job in renamed if job.is_final]
    assert latest_by_name(finished)["same"].slurm_job_id == 40


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("jobs"), "no 'jobs' list"),
        (lambda d: d["jobs"][0].update(job_state="EXPLODED"), "unknown Slurm job state"),
        (lambda d: d["jobs"][0].update(exit_code="768"), "field 'exit_code'"),
        (lambda d: d["jobs"][0].update(job_id=None), "field 'job_id'"),
        (lambda d: d["jobs"][0].pop("name"), "field 'name'"),
        (lambda d: d.update(jobs=[17]), "not an object"),
    ],
)
def test_malformed_squeue_is_a_clear_error(mutate: Any, message: str) -> None:
    data = squeue_data()
    mutate(data)
    with pytest.raises(SlurmOutputError, match=message):
        parse_squeue_json(json.dumps(data), now=NOW)


def test_squeue_with_the_controller_down_is_unavailable_not_empty() -> None:
    # Captured with slurmctld stopped: exit status 0, no jobs, one error entry.
    with pytest.raises(SlurmUnavailable, match="slurm_load_jobs: Failed while looking for jobs"):
        parse_squeue_json(text("squeue_controller_down.json"), now=NOW)


@pytest.mark.parametrize("raw", ["", "{", "[]", "not json", text("squeue.json")[:5000]])
def test_truncated_or_non_json_squeue_is_a_clear_error(raw: str) -> None:
    with pytest.raises(SlurmOutputError, match="squeue"):
        parse_squeue_json(raw, now=NOW)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("37|0xab|COMPLETED|0:0|0|1|2|None|2", "expected 10 fields"),
        ("x|0xab|COMPLETED|0:0|0|1|2|None|2|root", "job id 'x'"),
        ("37|0xab|COMPLETED|zero|0|1|2|None|2|root", "malformed exit code"),
        ("37|0xab|EXPLODED|0:0|0|1|2|None|2|root", "unknown Slurm job state"),
        ("37|0xab|COMPLETED|0:0|-|1|2|None|2|root", "elapsed time"),
        ("37|0xab|COMPLETED|0:0|0|2026-11-22T23:16:39|2|None|2|root", "seconds since the epoch"),
    ],
)
def test_malformed_sacct_is_a_clear_error(line: str, message: str) -> None:
    with pytest.raises(SlurmOutputError, match=message):
        parse_sacct(text("sacct.txt") + line + "\n")


def test_malformed_sinfo_is_a_clear_error() -> None:
    data = json.loads(text("sinfo.json"))
    data["nodes"][0]["cpus"] = "eight"
    with pytest.raises(SlurmOutputError, match="field 'cpus'"):
        parse_sinfo_json(json.dumps(data), "grid")
    with pytest.raises(SlurmOutputError, match="no 'nodes' list"):
        parse_sinfo_json("{}", "grid")


def test_error_messages_are_classified() -> None:
    assert says_unavailable(
        "squeue: error: Unable to contact slurm controller (connect failure)\n"
        "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
    )
    assert not says_unavailable("sbatch: error: invalid partition specified: nope")
    assert says_accounting_disabled("Slurm accounting storage is disabled\n")


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_arbitrary_text_never_crashes_the_parsers(garbage: str) -> None:
    for parse in (
        lambda: parse_squeue_json(garbage, now=NOW),
        lambda: parse_sacct(garbage),
        lambda: parse_sinfo_json(garbage, "grid"),
        lambda: parse_sbatch(garbage),
    ):
        with contextlib.suppress(SlurmOutputError, SlurmUnavailable):
            parse()
