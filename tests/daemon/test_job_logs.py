"""Job logs on the whole stack: a workflow with `enableLogging: true` runs on Slurm through the
supervisor, its output streams through the real writer to the real log service, and its customer
reads it with `grid-dev logs`, live, while the service may be killed and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from grid_dev.job_tools import ensure_job_tools
from grid_protocol.jobs import JobStatus as S
from tests.fixtures.contracts import Grid
from tests.fixtures.slurm import SlurmCluster
from tests.fixtures.supervisor import ProviderStack, SupervisorProcess, open_provider_stack, wait_for
from tests.grid_logger.helpers import BIN, LoggerProcess, logger

__all__ = ["logger"]  # the module's log service


@pytest.fixture(scope="module")
def stack(
    grid: Grid, slurm_cluster: SlurmCluster, logger: LoggerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProviderStack]:
    """The provider's stack with its sbatch service naming the log service, as a site configures it."""
    opened = open_provider_stack(
        grid,
        slurm_cluster,
        tmp_path_factory.mktemp("provider"),
        name="grid-logs",
        sbatch_env={"GRID_SBATCH_LOGGER_URL": logger.target},
    )
    # Jobs run as the customers' users: the writer comes from a release they can run, as on a site.
    opened.logger = {"tls": False, "writer": str(ensure_job_tools())}
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="module")
def supervisor(stack: ProviderStack) -> Iterator[SupervisorProcess]:
    process = stack.supervisor()
    process.start()
    try:
        stack.wait_registered()
        yield process
    finally:
        process.stop()


def logged_job(stack: ProviderStack, command: str) -> bytes:
    key = stack.sbatch.submit(
        {
            "enableLogging": True,
            "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 512, "gpus": 0},
            "steps": [{"name": "main", "run": {"command": command}}],
        }
    )
    return stack.request("", 200, mem=512, gpus=0, key=key)


def grid_dev_logs(
    stack: ProviderStack, logger: LoggerProcess, job_id: bytes, *args: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "grid-dev"), "logs", "0x" + job_id.hex(), "--logger-url", logger.target, *args],
        env={**os.environ, "GRID_CUSTOMER_KEY": stack.customer.key.hex()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def parsed(lines: list[str], prefix: str) -> list[tuple[float, str]]:
    """(Unix seconds, text) of the printed lines whose text starts with `prefix`."""
    found = []
    for line in lines:
        stamp, _, text = line.partition(" ")
        if text.startswith(prefix):
            found.append((datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp(), text))
    return found


def job_output(stack: ProviderStack, job_id: bytes) -> str:
    """The job's Slurm output file, in the job's own folder."""
    return stack.job_output(job_id).read_text(errors="replace")


def test_the_customer_reads_the_job_live_every_line_in_order_until_it_ends(
    stack: ProviderStack, logger: LoggerProcess, supervisor: SupervisorProcess
) -> None:
    lines = 24
    job_id = logged_job(stack, f'for i in $(seq 1 {lines}); do echo "tick $i"; sleep 0.25; done')
    reader = grid_dev_logs(stack, logger, job_id, "--follow")
    assert reader.stdout is not None
    first = reader.stdout.readline()  # the job writes over ~6 s: the first line arrives while it runs
    assert stack.status(job_id) in (S.SCHEDULED, S.RUNNING), "read live, before the job ended"
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert stack.status(job_id) == S.FINISHED, "the reader exits once the job has ended"
    ticks = parsed([first, *out.splitlines()], "tick ")
    assert [text for _, text in ticks] == [f"tick {i}" for i in range(1, lines + 1)]
    stamps = [stamp for stamp, _ in ticks]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= (lines - 1) * 0.25 * 0.8
    assert abs(stamps[-1] - time.time()) < 120, "the writer's timestamps are the job's time"
    assert all(f"tick {i}" in job_output(stack, job_id) for i in range(1, lines + 1)), "the file keeps them"


def beats_in(output: str) -> int:
    return sum(1 for line in output.splitlines() if line.startswith("beat "))


def test_a_log_service_killed_and_restarted_mid_job_loses_no_line_and_the_job_finishes(
    stack: ProviderStack, logger: LoggerProcess, supervisor: SupervisorProcess
) -> None:
    """Lines written while the service is down wait in the writer's buffer and go out once it is
    back: every line survives, once, in order; the job's end status is its own."""
    lines = 40
    job_id = logged_job(stack, f'for i in $(seq 1 {lines}); do echo "beat $i"; sleep 0.25; done')
    reader = grid_dev_logs(stack, logger, job_id, "--follow")
    assert reader.stdout is not None
    assert reader.stdout.readline(), "the job is streaming"
    logger.kill()
    reader.send_signal(signal.SIGTERM)
    reader.wait(timeout=30)
    written = beats_in(job_output(stack, job_id))
    wait_for(
        "the job to write more lines while the service is down",
        lambda: beats_in(job_output(stack, job_id)) >= written + 8,
        30,
    )
    logger.start()
    assert stack.wait_status(job_id, S.FINISHED, S.FAILED, timeout=120) == S.FINISHED
    final = grid_dev_logs(stack, logger, job_id)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    beats = [text for _, text in parsed(out.splitlines(), "beat ")]
    assert beats == [f"beat {i}" for i in range(1, lines + 1)], "every line, once, in order"
    assert f"beat {lines}" in job_output(stack, job_id)


def test_another_customer_cannot_read_the_log(
    stack: ProviderStack, logger: LoggerProcess, supervisor: SupervisorProcess
) -> None:
    job_id = logged_job(stack, "echo secret-output")
    assert stack.wait_status(job_id, S.FINISHED, S.FAILED, timeout=120) == S.FINISHED
    intruder = subprocess.run(
        [str(BIN / "grid-dev"), "logs", "0x" + job_id.hex(), "--logger-url", logger.target],
        env={**os.environ, "GRID_CUSTOMER_KEY": stack.grid.customers[1].key.hex()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert intruder.returncode == 1 and "PERMISSION_DENIED" in intruder.stderr
    assert "secret-output" not in intruder.stdout
    owner = grid_dev_logs(stack, logger, job_id)
    out, _ = owner.communicate(timeout=60)
    assert "secret-output" in out
