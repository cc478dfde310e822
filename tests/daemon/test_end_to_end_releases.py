"""`grid-supervisor run` end to end on current Slurm releases: 24.11 (Debian 13) and 26.05 (Debian's next).

Each release's cluster runs in a Debian root of its own (`scripts/cluster.sh --release R`); the daemon
reaches it as a site whose Slurm client lives in another root would, with `slurm.command_prefix`
(`["/usr/sbin/chroot", root]`), set here through the environment. The jobs run in that root. On 24.11,
the daemon's handling of submission failures: only Slurm's definite refusals refuse a job on chain.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from grid_protocol.jobs import JobStatus as S
from tests.fixtures.contracts import Grid
from tests.fixtures.slurm import RELEASES, SlurmCluster
from tests.fixtures.supervisor import SupervisorProcess, credits_per_minute, open_provider_stack, wait_for

CURRENT = [release for release in RELEASES if release != "bookworm"]


def accounted(cluster: SlurmCluster, name: str, workdir: Path) -> list[tuple[str, str]]:
    """(state, exit code) of the release's accounting records of a job name run in its folder under this
    test's jobs_root (`workdir`)."""
    shown = subprocess.run(
        cluster.command("sacct", "-X", "-n", "-P", f"--name={name}", "--starttime=now-1hour",
                        "--format=State,ExitCode,WorkDir"),
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    rows = [line.split("|") for line in shown.splitlines() if line.strip()]
    return [(row[0], row[1]) for row in rows if len(row) == 3 and row[2] == str(workdir / name)]


@pytest.fixture
def site_folders(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The sbatch service's site folders (job temporaries, software), reachable by job users inside
    and outside the release's root: under /var/tmp, which the root shares."""
    folder = Path("/var/tmp") / f"grid-e2e-site-{uuid.uuid4().hex[:8]}"
    folder.mkdir(mode=0o1777)
    folder.chmod(0o1777)
    for name, path in {
        "SHARED_TMP": "persistent/user-{uid}",
        "SHARED_WORLD_TMP": "world-tmp",
        "DISK_TMP": "disk/tmp/user-{uid}",
        "DISK_WORLD_TMP": "disk/world-tmp",
        "SOFTWARE_ROOT": "software",
    }.items():
        monkeypatch.setenv(f"GRID_SBATCH_{name}", str(folder / path))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("release", CURRENT)
def test_jobs_run_report_and_settle_on_the_release(
    release: str,
    grid: Grid,
    slurm_release: Callable[[str], SlurmCluster],
    tmp_path: Path,
    site_folders: Path,
) -> None:
    cluster = slurm_release(release)
    stack = open_provider_stack(grid, cluster, tmp_path, name=f"grid-e2e-{release}")
    try:
        supervisor = stack.supervisor(max_queued_jobs=4)
        supervisor.env["GRID_SUPERVISOR_SLURM__COMMAND_PREFIX"] = json.dumps(list(cluster.command_prefix))
        supervisor.start()
        stack.wait_registered()
        customer_before = grid.balance(stack.customer)
        finished = stack.request("sleep 2; echo done on Debian $(cat /etc/debian_version)", 500)
        failed = stack.request("echo failing; exit 3", 500)
        stack.wait_status(finished, S.FINISHED)
        stack.wait_status(failed, S.FAILED)
        per_minute = credits_per_minute(1, 1, 1024, 1)
        assert grid.job(finished)["finalCost"] == per_minute  # a two-second job is billed one minute
        assert grid.job(failed)["exitCode"] == 3 and "exit code 3" in grid.job(failed)["lastError"]
        assert (
            customer_before - grid.balance(stack.customer)
            == grid.job(finished)["finalCost"] + grid.job(failed)["finalCost"]
        )
        jobs = stack.shared / "jobs"
        release_version = (cluster.root_dir / "etc/debian_version").read_text().strip()
        output = stack.job_output(finished).read_text()
        assert f"done on Debian {release_version}" in output  # it ran in the release's root
        assert wait_for(
            "both jobs in the release's accounting",
            lambda: (
                accounted(cluster, stack.slurm_name(finished), jobs)
                and accounted(cluster, stack.slurm_name(failed), jobs)
            ),
            60,
        )
        assert accounted(cluster, stack.slurm_name(finished), jobs) == [("COMPLETED", "0:0")]
        assert accounted(cluster, stack.slurm_name(failed), jobs) == [("FAILED", "3:0")]
        assert "job submitted to Slurm" in supervisor.text()
        assert supervisor.running()
    finally:
        stack.close()


def wait_in_log(supervisor: SupervisorProcess, text: str, timeout: float = 60) -> None:
    wait_for(f"{text!r} in the supervisor's log", lambda: text in supervisor.text(), timeout)


def test_only_slurms_definite_refusals_refuse_a_job_on_chain(
    grid: Grid, slurm_release: Callable[[str], SlurmCluster], tmp_path: Path, site_folders: Path
) -> None:
    """An sbatch failure of unknown cause (here an operator's bad option) leaves the job claimed and
    retried; Slurm's refusal of the job ("Invalid feature specification") refuses it on chain."""
    cluster = slurm_release("trixie")
    stack = open_provider_stack(grid, cluster, tmp_path, name="grid-e2e-refusal")
    prefix = json.dumps(list(cluster.command_prefix))
    zero = "0x" + "0" * 40
    try:
        broken = stack.supervisor(max_queued_jobs=4)
        broken.env |= {
            "GRID_SUPERVISOR_SLURM__COMMAND_PREFIX": prefix,
            "GRID_SUPERVISOR_SLURM__EXTRA_SBATCH_ARGS": json.dumps(["--mail-type=BOGUS"]),
        }
        broken.start()
        stack.wait_registered()
        waiting = stack.request("echo finally", 500)
        wait_in_log(broken, "Invalid --mail-type specification")
        wait_in_log(broken, "not a refusal: submission waits")
        assert stack.status(waiting) == S.SCHEDULED
        assert grid.job(waiting)["providerAddr"] == stack.provider.address
        broken.stop()
        # The operator fixes the option: the same daemon (same store) submits the job it kept.
        fixed = SupervisorProcess(broken.config, broken.log, {**broken.env})
        del fixed.env["GRID_SUPERVISOR_SLURM__EXTRA_SBATCH_ARGS"]
        stack.supervisors.append(fixed)
        fixed.start()
        stack.wait_status(waiting, S.FINISHED)
        fixed.stop()
        refusing = SupervisorProcess(broken.config, broken.log, {**broken.env})
        refusing.env["GRID_SUPERVISOR_SLURM__EXTRA_SBATCH_ARGS"] = json.dumps(["--constraint=nosuchfeature"])
        stack.supervisors.append(refusing)
        refusing.start()
        refused = stack.request("echo never", 500)
        wait_for("the refusal", lambda: grid.job(refused)["providerAddr"].lower() == zero, 90)
        assert stack.status(refused) == S.PENDING
        assert (
            "Slurm refused the job: Batch job submission failed: Invalid feature specification"
            in refusing.text()
        )
        assert stack.status(waiting) == S.FINISHED
    finally:
        stack.close()
