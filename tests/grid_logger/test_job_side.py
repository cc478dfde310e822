"""The whole path: the sbatch service's `grid_logger_url`, the supervisor's job environment, the
batch script's logging fragment under bash and on the real Slurm cluster, the real writer, the real
service, and the customer's `grid-dev logs`."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from grid_dev.anvil import free_port
from grid_logger import environment as env
from sbatch_service.logging_render import logging_epilogue, logging_prologue
from supervisor.chain.keys import Signer
from supervisor.config import SbatchServiceSettings
from supervisor.job_logging import LoggerSettings, job_log_environment, logger_target, with_job_environment
from supervisor.sbatch.client import SbatchClient
from tests.fixtures.contracts import CREDIT, WORKED_EXAMPLE_DEFINITION, Grid
from tests.fixtures.sbatch import start_sbatch_service
from tests.fixtures.slurm import SlurmCluster
from tests.grid_logger.helpers import BIN, Job, LoggerProcess, claimed_job, collect, collect_until, wait_for

BODY = """echo "out 1"
echo "err 1" >&2
echo "token seen by the steps: ${GRID_LOGGER_TOKEN:-none}"
for i in $(seq 1 200); do echo "loop $i"; done
printf 'no newline'
exit 3
"""
EXPECTED = [
    "out 1",
    "err 1",
    "token seen by the steps: none",
    *(f"loop {i}" for i in range(1, 201)),
    "no newline",
]


def settings(**overrides: object) -> LoggerSettings:
    values: dict[str, object] = {"tls": False, "writer": str(BIN / "grid-logger"), **overrides}
    return LoggerSettings.model_validate(values)


def job_script(job: Job, url: str, body: str = BODY, **overrides: object) -> str:
    variables = job_log_environment(
        job.name,
        job.customer.address,
        url,
        settings(**overrides),
        Signer(job.provider),
        job.grid.deployment.meta_scheduler,
    )
    script = "#!/bin/bash\nset -euo pipefail\n" + logging_prologue(install_trap=True) + body
    return with_job_environment(script, variables)


def run_bash(script: str, folder: Path) -> tuple[int, str, float]:
    """The script under bash with its output in a file, as Slurm runs a batch script."""
    path = folder / "job.sh"
    path.write_text(script)
    output = folder / "slurm.out"
    started = time.monotonic()
    with output.open("wb") as out:
        status = subprocess.run(
            ["bash", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ["PATH"], "TMPDIR": str(folder)},
            timeout=120,
        ).returncode
    return status, output.read_text(), time.monotonic() - started


def writers_alive(folder: Path) -> list[int]:
    """Processes whose command line names the folder (the writer names its FIFO there)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(folder) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_the_environment_names_the_job_and_its_owner(grid: Grid) -> None:
    job = claimed_job(grid)
    variables = job_log_environment(
        job.name.upper().replace("0X", "0x"),
        job.customer.address,
        "grpcs://logs.example.org:443",
        LoggerSettings(ca_file=Path("/etc/ssl/grid-ca.pem"), server_name_override="logs.internal"),
        Signer(job.provider),
        grid.deployment.meta_scheduler,
    )
    assert variables[env.URL] == "logs.example.org:443"
    assert variables[env.LOG_NAME] == job.name
    assert variables[env.USER] == job.customer.address.lower()
    assert variables[env.TOKEN] == job.token()
    assert variables[env.TLS] == "1"
    assert variables[env.CA_FILE] == "/etc/ssl/grid-ca.pem"
    assert variables[env.SERVER_NAME] == "logs.internal"
    assert (
        job_log_environment(
            job.name,
            job.customer.address,
            "",
            LoggerSettings(),
            Signer(job.provider),
            grid.deployment.meta_scheduler,
        )
        == {}
    )
    assert logger_target("logs:1", LoggerSettings(enabled=False)) is None
    assert logger_target("not a url", LoggerSettings()) is None
    assert logger_target("http://logs:80", LoggerSettings(url="override:9")) == ("override:9", True)


def test_exports_go_after_the_shebang_quoted() -> None:
    script = with_job_environment("#!/bin/bash\necho hi\n", {"A": "it's $HOME", "B": "x"})
    assert script == "#!/bin/bash\nexport A='it'\"'\"'s $HOME'\nexport B=x\necho hi\n"
    with pytest.raises(ValueError):
        with_job_environment("#!/bin/bash\n", {"A;rm": "x"})


def test_the_fragment_passes_bash_n_and_shellcheck(tmp_path: Path) -> None:
    path = tmp_path / "fragment.sh"
    path.write_text(
        "#!/bin/bash\nset -euo pipefail\n" + logging_prologue() + "echo body\n" + logging_epilogue()
    )
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    checked = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


async def test_the_job_output_goes_to_its_file_and_to_the_log(
    grid: Grid, logger: LoggerProcess, tmp_path: Path
) -> None:
    job = claimed_job(grid)
    status, output, _ = run_bash(job_script(job, logger.target), tmp_path)
    assert status == 3, output
    for line in EXPECTED[:-1]:
        assert f"{line}\n" in output
    assert output.rstrip().endswith("no newline")
    got = await collect_until(logger, job, len(EXPECTED))
    assert [line.data.decode() for line in got] == EXPECTED
    assert not list(tmp_path.glob("*.fifo")), "the FIFO is removed"
    assert writers_alive(tmp_path) == [], "no writer is left running"


async def test_the_epilogue_is_idempotent_and_the_output_after_it_stays_in_the_file(
    grid: Grid, logger: LoggerProcess, tmp_path: Path
) -> None:
    job = claimed_job(grid)
    body = "echo streamed\n" + logging_epilogue() + logging_epilogue() + "echo after the stream\n"
    status, output, _ = run_bash(job_script(job, logger.target, body), tmp_path)
    assert status == 0, output
    assert output.index("streamed\n") < output.index("after the stream\n")
    assert [line.data for line in await collect_until(logger, job, 1)] == [b"streamed"]


def test_without_a_writer_or_a_service_the_job_runs_unlogged_and_on_time(grid: Grid, tmp_path: Path) -> None:
    job = claimed_job(grid)
    missing = tmp_path / "missing"
    missing.mkdir()
    status, output, took = run_bash(
        job_script(job, "127.0.0.1:1", writer="/nonexistent/grid-logger"), missing
    )
    assert status == 3 and "loop 200\n" in output
    assert "the log writer did not start" in output
    assert took < 10
    down = tmp_path / "down"
    down.mkdir()
    status, output, took = run_bash(job_script(job, f"127.0.0.1:{free_port()}", drain_seconds=1), down)
    assert status == 3 and "loop 200\n" in output
    assert "log service unreachable" in output
    assert took < 1 + 5 + 5, "the writer's drain is bounded"
    unset = tmp_path / "unset"
    unset.mkdir()
    status, output, _ = run_bash(
        "#!/bin/bash\nset -euo pipefail\n" + logging_prologue(install_trap=True) + BODY, unset
    )
    assert status == 3 and "no log service configured" in output


def grid_dev(*args: str, key: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "grid-dev"), "logs", *args],
        env={**os.environ, "GRID_CUSTOMER_KEY": key},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_grid_dev_logs_prints_lines_with_timestamps_and_follows_until_the_job_ends(
    grid: Grid, logger: LoggerProcess, tmp_path: Path
) -> None:
    job = claimed_job(grid)
    status, _, _ = run_bash(job_script(job, logger.target), tmp_path)
    assert status == 3
    await collect_until(logger, job, len(EXPECTED))
    key = job.customer.key.hex()
    printed = grid_dev(job.name, "--logger-url", logger.target, key=key)
    out, err = printed.communicate(timeout=60)
    assert printed.returncode == 0, err
    lines = out.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == EXPECTED
    stamp = lines[0].split(" ", 1)[0]
    assert len(stamp) == len("2026-01-01T00:00:00.000000Z") and stamp.endswith("Z")
    following = grid_dev(job.name, "--follow", "--since", "1h", "--logger-url", logger.target, key=key)
    assert following.stdout is not None
    shown = [following.stdout.readline() for _ in EXPECTED]  # click flushes each line
    assert [line.rstrip("\n").split(" ", 1)[1] for line in shown] == EXPECTED
    assert following.poll() is None, "the job is still hot on chain: --follow waits"
    job.finish()
    out, err = following.communicate(timeout=30)
    assert following.returncode == 0, err
    assert out == "", "nothing after the stored lines: the job wrote nothing more"
    intruder = grid_dev(job.name, "--logger-url", logger.target, key=grid.customers[3].key.hex())
    _, err = intruder.communicate(timeout=60)
    assert intruder.returncode == 1
    assert "PERMISSION_DENIED" in err and err.count("\n") == 1
    future = grid_dev(job.name, "--since", "tomorrow", "--logger-url", logger.target, key=key)
    _, err = future.communicate(timeout=60)
    assert future.returncode == 1 and "--since" in err


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A folder the Slurm job can write (outside pytest's private tree)."""
    folder = Path("/var/tmp") / f"grid-logger-{uuid.uuid4().hex[:8]}"
    folder.mkdir(mode=0o1777)
    try:
        yield folder
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


async def test_on_slurm_with_the_url_the_sbatch_service_returns(
    grid: Grid, logger: LoggerProcess, slurm_cluster: SlurmCluster, shared: Path, tmp_path: Path
) -> None:
    """GetSBatch returns the logger URL it is configured with; the supervisor's environment built
    from it makes a real Slurm job stream its output; the customer reads it."""
    provider, customer = grid.providers[0], grid.customers[0]
    sbatch = start_sbatch_service(
        tmp_path / "sbatch",
        rpc_url=grid.anvil.http_url,
        metascheduler_address=grid.deployment.meta_scheduler,
        extra_env={"GRID_SBATCH_LOGGER_URL": logger.target},
    )
    try:
        key = sbatch.submit(
            {
                "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 512, "gpus": 0},
                "steps": [{"name": "hello", "run": {"command": "echo hello"}}],
            }
        )
        if not grid.provider_manager.functions.isValidForScheduling(provider.address).call():
            grid.register_provider(provider)
        definition = (0, 512, 1, 1, key, *WORKED_EXAMPLE_DEFINITION[5:])
        job_id = grid.request_job(customer, 200 * CREDIT, definition)
        grid.schedule(job_id, provider)
        grid.claim(provider)
        job = Job(grid, job_id, customer, provider)
        client = SbatchClient.from_settings(
            SbatchServiceSettings(grpc_target=sbatch.grpc_target), Signer(provider)
        )
        try:
            fetched = await client.fetch(job.name, customer.address, key)
        finally:
            await client.close()
    finally:
        sbatch.stop()
    assert fetched.grid_logger_url == logger.target
    script = job_script(job, fetched.grid_logger_url, 'echo "on $(hostname) as job $SLURM_JOB_ID"\n' + BODY)
    submitted = subprocess.run(
        [
            *slurm_cluster.command("sbatch"),
            "--parsable",
            f"--partition={slurm_cluster.partition}",
            f"--job-name={job.name}",
            "--ntasks=1",
            "--cpus-per-task=1",
            "--mem-per-cpu=256",
            "--time=5",
            f"--chdir={shared}",
            f"--output={shared}/slurm-%j.out",
        ],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    slurm_id = submitted.stdout.strip().split(";")[0]
    output = shared / f"slurm-{slurm_id}.out"
    got = await collect_until(logger, job, len(EXPECTED) + 1, timeout=90)
    wait_for("the job's output file", lambda: output.exists() and "loop 200" in output.read_text(), 60)
    assert got[0].data.startswith(b"on ") and f"as job {slurm_id}".encode() in got[0].data
    assert [line.data.decode() for line in got[1:]] == EXPECTED
    job.finish()
    assert [line.data.decode() for line in await collect(logger, job)][1:] == EXPECTED
