"""Wake-ups from slurmctld: its PrologSlurmctld/EpilogSlurmctld hook (scripts/slurmctld-wakeup.sh)
tells a listening supervisor at once that a job was allocated or ended."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from supervisor.slurm.wakeups import WakeupProtocol, listen, parse_wakeup
from tests.fixtures.slurm import SlurmCluster

HOOK = Path(__file__).resolve().parents[2] / "scripts" / "slurmctld-wakeup.sh"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"42 0xabc\n", (42, "0xabc")),
        (b"42 name", (42, "name")),
        (b"42 two words\n", None),
        (b"x42 name\n", None),
        (b"42\n", None),
        (b"42 " + b"n" * 201, None),
        (b"42 caf\xc3\xa9", None),
        (b"\xff\xfe", None),
        (b"1 " + b"a" * 600, None),
        (b"", None),
    ],
)
def test_only_the_hooks_datagrams_are_read(data: bytes, expected: tuple[int, str] | None) -> None:
    assert parse_wakeup(data) == expected


def test_datagrams_about_other_jobs_wake_nothing() -> None:
    woken: list[None] = []
    protocol = WakeupProtocol(lambda name: name == "ours", lambda name: woken.append(None))
    for data in (b"1 theirs\n", b"garbage", b"2 ours\n"):
        protocol.datagram_received(data, ("127.0.0.1", 1))
    assert (len(woken), protocol.counts.woken, protocol.counts.ignored) == (1, 1, 2)


def run_hook(targets: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The hook as slurmctld runs it: from its own folder, beside its targets file."""
    hook = tmp_path / "grid-wakeup.sh"
    hook.write_text(HOOK.read_text())
    hook.chmod(0o755)
    (tmp_path / "grid-wakeup.targets").write_text(targets)
    return subprocess.run(
        [str(hook)], env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=10
    )


def test_the_hook_sends_one_datagram_per_valid_target_and_never_fails(tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    port = receiver.getsockname()[1]
    try:
        nobody = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        nobody.bind(("127.0.0.1", 0))
        closed_port = nobody.getsockname()[1]
        nobody.close()
        targets = f"# comment\n127.0.0.1:{closed_port}\nbad target; touch {tmp_path}/x\n127.0.0.1:{port}"
        done = run_hook(targets, {"SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "0xjob"}, tmp_path)
        assert (done.returncode, done.stderr) == (0, "")
        assert receiver.recv(600) == b"77 0xjob\n"
        assert not (tmp_path / "x").exists()
        for env in (
            {"SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "two words"},
            {"SLURM_JOB_ID": "$(id)", "SLURM_JOB_NAME": "0xjob"},
            {},
        ):
            assert run_hook(f"127.0.0.1:{port}\n", env, tmp_path).returncode == 0
        receiver.settimeout(0.5)
        with pytest.raises(TimeoutError):
            receiver.recv(600)  # none of those was sent
    finally:
        receiver.close()
    missing = tmp_path / "none"
    missing.mkdir()
    (missing / "grid-wakeup.sh").write_text(HOOK.read_text())
    (missing / "grid-wakeup.sh").chmod(0o755)
    assert subprocess.run([str(missing / "grid-wakeup.sh")], timeout=10).returncode == 0, "no targets file"


async def test_slurmctld_wakes_the_listener_when_a_job_starts_and_when_it_ends(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    name = f"wakeup-{uuid.uuid4().hex[:8]}"
    woken: list[float] = []
    listener = await listen(
        "127.0.0.1:0", lambda job: job == name, lambda name: woken.append(time.monotonic())
    )
    host, port = listener.address
    try:
        with slurm_cluster.wakeups_to(f"{host}:{port}"):
            submitted = subprocess.run(
                [*slurm_cluster.command("sbatch"), "--parsable", f"--partition={slurm_cluster.partition}",
                 f"--job-name={name}", "--mem=100", "--output=/dev/null", "--wrap", "sleep 1"],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            slurm_id = submitted.stdout.strip().split(";")[0]
            deadline = time.monotonic() + 60
            while len(woken) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    finally:
        listener.close()
    assert len(woken) == 2, f"wake-ups for job {slurm_id}: {len(woken)} (one at the start, one at the end)"
    assert woken[1] - woken[0] >= 0.9, "the second came once the one-second job had ended"

    def accounted() -> str:
        return subprocess.run(
            [*slurm_cluster.command("sacct"), "-j", slurm_id, "-X", "-n", "-P", "-o", "State"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()  # fmt: skip

    deadline = time.monotonic() + 30
    while accounted() in ("", "RUNNING", "COMPLETING") and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert accounted() == "COMPLETED", "the hook neither holds nor fails the job"
