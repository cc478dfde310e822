"""Parsers on outputs captured from the project's cluster (tests/slurm/data), and malformed variants."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grid_protocol.jobs import JobStatus
from supervisor.core.slurm_states import KNOWN_STATES, UnknownSlurmState, state_from_flags
from supervisor.slurm import (
    ObservedJob,
    SlurmCommandFailed,
    SlurmOutputError,
    SlurmUnavailable,
    SubmissionRefused,
)
from supervisor.slurm.commands import FIELD_SEPARATOR, SQUEUE_FIELDS, squeue_argv
from supervisor.slurm.parsing import (
    ListingMemo,
    command_failure,
    latest_by_name,
    parse_job_submissions,
    parse_ping,
    parse_sacct,
    parse_sbatch,
    parse_sinfo_json,
    parse_squeue,
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
        (lambda d: d["jobs"][0].update(job_state=17), "field 'job_state'"),
        (lambda d: d["jobs"][0].update(job_state=[]), "field 'job_state'"),
        (lambda d: d["jobs"][0].update(time_limit={"set": True, "number": "5"}), "field 'time_limit'"),
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


RELEASE_SAMPLES = sorted(DATA.glob("*/squeue*.json"))
LATER = datetime(2027, 1, 1, tzinfo=UTC)  # after every recording
KINDS = {
    # kind of sample job: (state, exit code, signal)
    "completed": ("COMPLETED", 0, None),
    "failed": ("FAILED", 3, None),
    "signalled": ("FAILED", 0, 9),
}


def by_kind(path: Path) -> dict[str, list[ObservedJob]]:
    """The jobs of a recorded answer by their kind (`sample-<layout>-<kind>`, see record_samples)."""
    found: dict[str, list[ObservedJob]] = {}
    for job in parse_squeue_json(path.read_text(), now=LATER):
        found.setdefault(job.name.rsplit("-", 1)[-1], []).append(job)
    return found


@pytest.mark.parametrize("path", RELEASE_SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recorded_layout_gives_the_same_observations(path: Path) -> None:
    """22.05 (openapi v0.0.38), 24.11 (data_parser v0.0.40-42) and 26.05 (v0.0.42-45) read alike."""
    jobs = by_kind(path)
    assert set(jobs) == {"completed", "failed", "signalled", "cancelled", "running", "held"}
    for kind, (state, code, signal) in KINDS.items():
        assert {(j.state, j.exit_code, j.signal) for j in jobs[kind]} == {(state, code, signal)}
        assert all(j.chain_outcome().status in (JobStatus.FINISHED, JobStatus.FAILED) for j in jobs[kind])
    failed = jobs["failed"][0].chain_outcome()
    assert (
        failed.status == JobStatus.FAILED
        and failed.last_error is not None
        and "exit code 3" in failed.last_error
    )
    for job in [*jobs["completed"], *jobs["failed"]]:
        assert job.start_time is not None and job.end_time is not None and job.end_time >= job.start_time
        assert job.time_limit_minutes == 5 and job.user == "grid-svc" and not job.from_accounting
    # Each answer holds the kinds captured for it and the jobs of earlier captures, since cancelled.
    expected = {
        "CANCELLED": JobStatus.CANCELLED,
        "COMPLETING": JobStatus.RUNNING,
        "RUNNING": JobStatus.RUNNING,
        "PENDING": JobStatus.SCHEDULED,
    }
    for job in (j for kind in ("cancelled", "running", "held") for j in jobs[kind]):
        assert job.chain_outcome(cancel_requested=True).status == expected[job.state]
    running = [j for j in jobs["running"] if j.state == "RUNNING"]
    held = [j for j in jobs["held"] if j.state == "PENDING"]
    own = path.stem.partition("-")[2] or "default"
    if any(j.name.startswith(f"sample-{own}-") for j in running):
        assert all(j.end_time is None and j.exit_code is None and j.start_time is not None for j in running)
        assert all(
            j.elapsed_seconds == int((LATER - j.start_time).total_seconds()) for j in running if j.start_time
        )
        assert all(j.start_time is None and j.elapsed_seconds == 0 for j in held)
        assert all(j.chain_outcome().status == JobStatus.SCHEDULED for j in held)


def test_a_cancelled_job_still_completing_is_active_as_22_05_names_it() -> None:
    # Recorded on 26.05: ["CANCELLED", "COMPLETING"] while the job's processes are being ended.
    jobs = {j.slurm_job_id: j for j in parse_squeue_json(text("forky/squeue-v0.0.42.json"), now=NOW)}
    data = json.loads(text("forky/squeue-v0.0.42.json"))
    completing = [r["job_id"] for r in data["jobs"] if r["job_state"] == ["CANCELLED", "COMPLETING"]]
    assert completing and all(jobs[i].state == "COMPLETING" for i in completing)
    assert all(jobs[i].chain_outcome().status == JobStatus.RUNNING for i in completing)
    assert not any(jobs[i].is_final for i in completing)


@pytest.mark.parametrize(
    ("parts", "state"),
    [
        (["RUNNING"], "RUNNING"),
        (["CANCELLED", "COMPLETING"], "COMPLETING"),
        (["PENDING", "REQUEUED"], "REQUEUED"),
        (["FAILED", "UPDATE_DB"], "FAILED"),
        (["PENDING", "POWER_UP_NODE"], "PENDING"),
        (["RUNNING", "EXPEDITING"], "EXPEDITING"),
        (["RUNNING", "FAILED"], "RUNNING+FAILED"),
        ([], "(EMPTY)"),
    ],
)
def test_state_lists_name_one_state(parts: list[str], state: str) -> None:
    assert state_from_flags(parts) == state


def test_an_unknown_state_leaves_that_job_alone_and_the_others_readable() -> None:
    data = json.loads(text("trixie/squeue-v0.0.42.json"))
    data["jobs"][0]["job_state"] = ["EXPLODED"]
    data["jobs"][1]["job_state"] = ["RUNNING", "LEVITATING"]
    jobs = parse_squeue_json(json.dumps(data), now=NOW)
    assert len(jobs) == len(data["jobs"])
    first, second, *others = jobs
    assert (first.state, second.state) == ("EXPLODED", "LEVITATING")
    for job in (first, second):
        assert job.state not in KNOWN_STATES and not job.is_final
        with pytest.raises(UnknownSlurmState):
            job.chain_outcome()
    assert all(job.state in KNOWN_STATES for job in others)
    line = "37|0xab|EXPLODED|0:0|0|1|2|None|2|root\n"
    (odd,) = parse_sacct(line)
    assert odd.state == "EXPLODED" and not odd.is_final


@pytest.mark.parametrize(
    "path", sorted(DATA.glob("*/sinfo*.json")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_every_recorded_sinfo_layout_describes_the_partition(path: Path) -> None:
    """22.05 lists nodes; from 23.02 sinfo --json lists groups of alike nodes."""
    hardware = parse_sinfo_json(path.read_text(), "grid")
    assert [(n.name, n.cpus, n.memory_mb, n.gpus) for n in hardware.nodes] == [("grid-node1", 8, 8000, 2)]
    with pytest.raises(SlurmOutputError, match="partition 'gpu' has no nodes"):
        parse_sinfo_json(path.read_text(), "gpu")


def test_a_group_of_unlike_nodes_is_refused_not_guessed() -> None:
    data = json.loads(text("forky/sinfo-v0.0.45.json"))
    data["sinfo"][0]["cpus"]["maximum"] = 16
    with pytest.raises(SlurmOutputError, match="cpus from 8 to 16"):
        parse_sinfo_json(json.dumps(data), "grid")


@pytest.mark.parametrize("release", ["bookworm", "trixie", "forky"])
def test_every_release_sacct_lines_read_alike(release: str) -> None:
    jobs = parse_sacct(text(f"{release}/sacct.txt"))
    kinds = {(j.name.rsplit("-", 1)[-1], j.state, j.exit_code, j.signal) for j in jobs}
    assert {
        ("completed", "COMPLETED", 0, None),
        ("failed", "FAILED", 3, None),
        ("signalled", "FAILED", 0, 9),
    } <= kinds
    assert all(j.from_accounting and j.end_time is not None for j in jobs)


def messages(release: str) -> dict[str, str]:
    loaded: dict[str, str] = json.loads(text(f"{release}/messages.json"))
    return loaded


@pytest.mark.parametrize("release", ["bookworm", "trixie", "forky"])
def test_real_refusals_are_refusals_with_slurms_reason(release: str) -> None:
    recorded = messages(release)
    for label in ("sbatch_invalid_partition", "sbatch_too_much_memory", "sbatch_too_many_gpus"):
        failure = command_failure(["sbatch"], 1, recorded[label])
        assert isinstance(failure, SubmissionRefused) and failure.refuses_job, (label, recorded[label])
        assert "Batch job submission failed" in failure.reason
    assert "Invalid partition name specified" in str(
        command_failure(["sbatch"], 1, recorded["sbatch_invalid_partition"])
    )


@pytest.mark.parametrize("release", ["trixie", "forky"])
def test_real_outage_messages_are_unavailable(release: str) -> None:
    recorded = messages(release)
    for label in ("sbatch_controller_down", "squeue_name_controller_down", "squeue_json_controller_down"):
        failure = command_failure(["sbatch"], 1, recorded[label])
        assert isinstance(failure, SlurmUnavailable) and not failure.refuses_job, label
    assert recorded["squeue_json_controller_down_status"] == "1"  # from 23.02 an exit status, not JSON
    assert not parse_ping(recorded["scontrol_ping_controller_down"])
    assert parse_ping(recorded["scontrol_ping"])


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        ("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", SlurmUnavailable),
        ("sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying", SlurmUnavailable),
        ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified", SubmissionRefused),
        ("sbatch: error: Batch job submission failed: Invalid qos specification", SubmissionRefused),
        ("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)", SubmissionRefused),
        ("sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)", SubmissionRefused),
        ("sbatch: error: Batch job submission failed: Unspecified error", SlurmCommandFailed),
        ("", SlurmCommandFailed),
    ],
)  # fmt: skip
def test_slurms_messages_are_classified_by_cause(stderr: str, kind: type[Exception]) -> None:
    failure = command_failure(["sbatch"], 1, stderr)
    assert type(failure) is kind
    assert failure.refuses_job == (kind is SubmissionRefused)


def squeue_line(*fields: str) -> str:
    return FIELD_SEPARATOR.join(fields)


def test_squeue_lines_give_states_times_limits_and_leave_exit_codes_to_accounting() -> None:
    started, submitted = int(NOW.timestamp()) - 90, int(NOW.timestamp()) - 100
    lines = "\n".join(
        [
            squeue_line("11", "PENDING", str(submitted), str(submitted + 3600), str(submitted + 7200),
                        "1:00", "grid-svc", "Priority", "0xpending"),
            squeue_line("12", "RUNNING", str(submitted), str(started), str(started + 3600),
                        "1-02:03:00", "grid-svc", "None", "0xrunning"),
            squeue_line("13", "FAILED", str(submitted), str(started), str(started + 30),
                        "UNLIMITED", "grid-svc", "NonZeroExitCode", "0xfailed"),
            squeue_line("14", "CANCELLED", str(submitted), "N/A", "Unknown", "0:30", "", "None", "0xcancelled"),
            "",
        ]
    )  # fmt: skip
    jobs = {job.name: job for job in parse_squeue(lines, now=NOW)}
    pending, running, failed, cancelled = (
        jobs[n] for n in ("0xpending", "0xrunning", "0xfailed", "0xcancelled")
    )
    assert (pending.slurm_job_id, pending.state, pending.elapsed_seconds, pending.end_time) == (
        11,
        "PENDING",
        0,
        None,
    )
    assert pending.time_limit_minutes == 1 and pending.reason == "Priority" and pending.user == "grid-svc"
    assert pending.chain_outcome().status == JobStatus.SCHEDULED
    assert (running.state, running.elapsed_seconds, running.end_time) == ("RUNNING", 90, None)
    assert running.time_limit_minutes == (24 + 2) * 60 + 3 and running.reason is None
    assert (failed.state, failed.elapsed_seconds, failed.exit_code, failed.is_final) == (
        "FAILED",
        30,
        None,
        True,
    )
    assert failed.time_limit_minutes is None and failed.end_time is not None
    assert (cancelled.start_time, cancelled.end_time, cancelled.user) == (None, None, None)
    assert cancelled.time_limit_minutes == 1  # 30 seconds round up to a minute
    assert all(not job.from_accounting for job in jobs.values())
    assert [job.name for job in parse_squeue(lines, now=NOW, names={"0xrunning"})] == ["0xrunning"]
    later = datetime.fromtimestamp(submitted + 1, tz=UTC)
    assert parse_squeue(lines, now=NOW, submitted_after=later) == []


def test_the_listing_without_names_is_matched_on_ids_and_other_lines_are_not_read() -> None:
    ours = squeue_line("21", "RUNNING", "1796235795", "1796235796", "1796239396", "5:00", "grid-svc", "None")
    lines = "\n".join(
        [
            squeue_line("20", "PENDING", "1", "1", "1", "5:00", "someone", "Held by a name\nwith a break"),
            "with a break",  # the rest of another job's line: not ours, so never read
            ours,
        ]
    )
    (job,) = parse_squeue(lines, now=NOW, slurm_ids={21: "0xours", 22: "0xgone"})
    assert (job.slurm_job_id, job.name, job.state, job.time_limit_minutes) == (21, "0xours", "RUNNING", 5)
    with pytest.raises(SlurmOutputError, match="expected 8 fields"):
        parse_squeue(squeue_line("21", "RUNNING", "1"), now=NOW, slurm_ids={21: "0xours"})


def test_a_listing_memo_reads_unchanged_waiting_lines_once_and_running_ones_every_poll() -> None:
    submitted = int(NOW.timestamp()) - 100
    pending = squeue_line("31", "PENDING", str(submitted), "N/A", "N/A", "5:00", "grid-svc", "Priority")
    running = squeue_line(
        "32", "RUNNING", str(submitted), str(submitted + 10), "N/A", "5:00", "grid-svc", "None"
    )
    ids = {31: "0xpending", 32: "0xrunning"}
    memo = ListingMemo()
    first = {j.name: j for j in parse_squeue(f"{pending}\n{running}", now=NOW, slurm_ids=ids, memo=memo)}
    later = NOW + timedelta(seconds=30)
    second = {j.name: j for j in parse_squeue(f"{pending}\n{running}", now=later, slurm_ids=ids, memo=memo)}
    assert second["0xpending"] is first["0xpending"], "an unchanged pending line is not parsed again"
    assert (first["0xrunning"].elapsed_seconds, second["0xrunning"].elapsed_seconds) == (90, 120)
    assert second == {j.name: j for j in parse_squeue(f"{pending}\n{running}", now=later, slurm_ids=ids)}
    forecast = squeue_line(
        "31",
        "PENDING",
        str(submitted),
        str(submitted + 500),
        str(submitted + 800),
        "5:00",
        "grid-svc",
        "Priority",
    )
    (moved,) = parse_squeue(forecast, now=later, slurm_ids=ids, memo=memo)
    assert moved is first["0xpending"] and moved.start_time is None, "a new start forecast is not a change"
    assert parse_squeue(forecast, now=later, slurm_ids=ids, memo=memo) == [moved], "the same line again"
    assert parse_squeue(forecast, now=later, slurm_ids={32: "0xrunning"}, memo=memo) == [], "no longer wanted"
    assert parse_squeue(forecast, now=later, slurm_ids=ids, memo=memo)[0] is not moved, (
        "forgotten when unwanted"
    )
    held = pending.replace("Priority", "JobHeldUser")
    (changed,) = parse_squeue(held, now=later, slurm_ids=ids, memo=memo)
    assert changed.reason == "JobHeldUser" and len(memo.jobs) == 1, "the memo holds this poll's jobs"
    renamed = parse_squeue(held, now=later, slurm_ids={31: "0xother"}, memo=memo)
    assert [j.name for j in renamed] == ["0xother"]
    after = datetime.fromtimestamp(submitted + 1, tz=UTC)
    assert parse_squeue(held, now=later, slurm_ids={31: "0xother"}, submitted_after=after, memo=memo) == []


def test_a_squeue_name_may_hold_the_separator_without_shifting_a_field() -> None:
    name = f"odd{FIELD_SEPARATOR}RUNNING{FIELD_SEPARATOR}name"
    line = squeue_line("7", "PENDING", "1796235795", "N/A", "N/A", "5", "someone", "None", name)
    (job,) = parse_squeue(line, now=NOW)
    assert (job.name, job.state, job.time_limit_minutes) == (name, "PENDING", 5)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (squeue_line("7", "RUNNING", "1796235795"), "expected 9 fields"),
        (squeue_line("x7", "RUNNING", "1", "1", "1", "5", "u", "None", "n"), "job id 'x7' is not a number"),
        (squeue_line("7", "RUNNING", "1", "soon", "1", "5", "u", "None", "n"), "time 'soon' is not seconds"),
        (squeue_line("7", "RUNNING", "1", "1", "1", "5:xx", "u", "None", "n"), "time limit '5:xx'"),
        (squeue_line("7", "RUNNING", "1", "1", "1", "1:2:3:4", "u", "None", "n"), "time limit '1:2:3:4'"),
    ],
)
def test_malformed_squeue_lines_are_refused_naming_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(SlurmOutputError, match=message):
        parse_squeue(line, now=NOW)


def test_squeue_is_asked_for_every_job_without_names_or_for_exact_names() -> None:
    listing = squeue_argv()
    assert listing[:4] == ["squeue", "--noheader", "--all", "--states=all"] and len(listing) == 5
    layout = listing[4].removeprefix("--Format=").split(",")
    assert layout == [f"{field}:{FIELD_SEPARATOR}" for field in SQUEUE_FIELDS[:-2]] + ["Reason:0"]
    named = squeue_argv(names=["0xb", "0xa", "0xb"])
    assert named[-1] == "--name=0xa,0xb" and named[4].endswith(f"Reason:{FIELD_SEPARATOR},Name:0")
    with pytest.raises(ValueError, match="comma"):
        squeue_argv(names=["a,b"])
