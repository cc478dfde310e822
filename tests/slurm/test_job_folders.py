"""Private job folders: made as the job's user before sbatch, 0700, checked, removed after retention.

The rules are tested as pure functions; the folders themselves on the real cluster through both the
local and the SSH backend, with the two per-wallet users of the cluster.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest

from supervisor.slurm import CommandSlurmBackend, JobSubmission
from supervisor.slurm.errors import InvalidSubmission, JobFolderUnsafe, JobsRootUnusable
from supervisor.slurm.folders import JobFolders, remove_ended_job_folders
from supervisor.slurm.job_folders import (
    FolderEntry,
    KnownJob,
    Removal,
    folder_needs_chmod,
    job_folder,
    output_file,
    parse_listing,
    plan_cleanup,
)
from tests.fixtures.slurm import SlurmCluster
from tests.slurm.conftest import SCRATCH, counting, make_backend, new_job_name, wait_for_job

DAY = 86400.0
JOB_A = "0x" + "a" * 64
JOB_B = "0x" + "b" * 64

# -- the rules (pure) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    ["0x" + "A" * 64, "0x" + "a" * 63, "..", "0x../" + "a" * 60, "a" * 66, "0x" + "a" * 64 + "/x", ""],
)
def test_a_folder_name_is_a_job_id_and_nothing_else(job_id: str) -> None:
    with pytest.raises(InvalidSubmission, match="not a job's Slurm name"):
        job_folder("/srv/jobs", job_id)
    with pytest.raises(InvalidSubmission, match="not a job's Slurm name"):
        job_folder("/srv/jobs", f"31337-{'ab' * 20}-{job_id}")


def test_a_folder_is_named_as_the_slurm_job_with_its_deployment() -> None:
    name = f"31337-{'ab' * 20}-{JOB_A}"
    assert job_folder("/srv/jobs", name) == PurePosixPath("/srv/jobs") / name
    with pytest.raises(InvalidSubmission):
        job_folder("/srv/jobs", f"31337-{'AB' * 20}-{JOB_A}")


def test_the_cleanup_looks_only_at_the_folders_of_its_own_deployment() -> None:
    """Two deployments share jobs_root: each removes its own ended folders and is silent about the
    other's, which would otherwise be 'a job this supervisor's store does not know'."""
    now = 1_000_000_000.0
    ours, theirs = f"1-{'a' * 40}-{JOB_A}", f"2-{'b' * 40}-{JOB_A}"
    entries = [FolderEntry(ours, "d", "grid-a"), FolderEntry(theirs, "d", "grid-a")]
    jobs = {ours: KnownJob("grid-a", now - 8 * DAY)}
    plan = plan_cleanup(
        entries, jobs, now=now, retention_seconds=7 * DAY, mine=lambda name: name.startswith("1-")
    )
    assert plan.remove == (Removal(ours, "grid-a"),)
    assert plan.left_alone == ()


@pytest.mark.parametrize("root", ["relative/jobs", "/", "/srv/../etc", "/srv/jobs\n"])
def test_jobs_root_must_be_a_plain_absolute_folder(root: str) -> None:
    with pytest.raises(InvalidSubmission, match="jobs_root"):
        job_folder(root, JOB_A)


def test_the_output_is_inside_the_folder_and_named_after_the_job() -> None:
    folder = job_folder("/srv/jobs", JOB_A)
    assert folder == PurePosixPath(f"/srv/jobs/{JOB_A}")
    assert output_file(folder) == folder / f"{JOB_A}.out"
    with pytest.raises(InvalidSubmission, match="inside the private workdir"):
        JobSubmission(
            name=JOB_A, script="#!/bin/bash\ntrue\n", unix_user="grid-svc", workdir=str(folder),
            output_path=f"/srv/jobs/{JOB_A}.out", time_limit_minutes=1, private_workdir=True,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "needs_chmod", "error"),
    [
        ("43ff root\n41c0 grid-a\n", False, None),  # parent 1777, folder 0700 of the user
        ("41ed root\n41c0 grid-a\n", False, None),  # parent 0755: nobody else writes there
        ("43ff root\n45c0 grid-a\n", False, None),  # setgid inherited from the parent is harmless
        ("43ff root\n41ed grid-a\n", True, None),  # the user's own folder, too wide: made private
        ("41ff root\n41c0 grid-a\n", None, JobsRootUnusable),  # parent 0777 without the sticky bit
        ("81a4 root\n41c0 grid-a\n", None, JobsRootUnusable),  # parent is a file
        ("43ff root\n", None, JobsRootUnusable),  # an answer that cannot be read
        ("43ff root\n41c0 grid-b\n", None, JobFolderUnsafe),  # another user squats the name
        ("43ff root\na1ff grid-a\n", None, JobFolderUnsafe),  # a symlink
        ("43ff root\n81c0 grid-a\n", None, JobFolderUnsafe),  # a file
    ],
)
def test_the_folder_check_tells_the_operators_problem_from_an_unsafe_folder(
    answer: str, needs_chmod: bool | None, error: type[Exception] | None
) -> None:
    folder = job_folder("/srv/jobs", JOB_A)
    if error is None:
        assert folder_needs_chmod(answer, folder, "grid-a") is needs_chmod
    else:
        with pytest.raises(error):
            folder_needs_chmod(answer, folder, "grid-a")
    assert JobFolderUnsafe.refuses_job and not JobsRootUnusable.refuses_job


def test_the_listing_is_read_by_nul_terminated_records() -> None:
    listing = f"d grid-a {JOB_A}\0f root notes with spaces.txt\0l grid-b {JOB_B}\0"
    assert parse_listing(listing) == [
        FolderEntry(JOB_A, "d", "grid-a"),
        FolderEntry("notes with spaces.txt", "f", "root"),
        FolderEntry(JOB_B, "l", "grid-b"),
    ]
    assert parse_listing("") == []


def test_only_folders_of_jobs_ended_past_the_retention_are_removed() -> None:
    now = 1_000_000_000.0
    ids = ["0x" + f"{n:064x}" for n in range(8)]
    jobs = {
        ids[0]: KnownJob("grid-a", now - 8 * DAY),  # ended long ago: removed
        ids[1]: KnownJob("grid-a", now - 1 * DAY),  # ended recently: kept
        ids[2]: KnownJob("grid-b", None),  # still running: kept
        ids[3]: KnownJob("grid-b", now - 8 * DAY),  # ended, but the folder is someone else's
        ids[4]: KnownJob(None, now - 8 * DAY),  # ended, its user cannot be told
        ids[5]: KnownJob("grid-a", now - 8 * DAY),  # ended, but not a directory
    }
    entries = [
        FolderEntry(ids[0], "d", "grid-a"),
        FolderEntry(ids[1], "d", "grid-a"),
        FolderEntry(ids[2], "d", "grid-b"),
        FolderEntry(ids[3], "d", "grid-a"),
        FolderEntry(ids[4], "d", "grid-a"),
        FolderEntry(ids[5], "l", "grid-a"),
        FolderEntry(ids[6], "d", "grid-a"),  # unknown to the store
        FolderEntry(f"{ids[0]}.out", "f", "grid-a"),  # the old layout's output file
        FolderEntry("lost+found", "d", "root"),
    ]
    plan = plan_cleanup(entries, jobs, now=now, retention_seconds=7 * DAY)
    assert plan.remove == (Removal(ids[0], "grid-a"),)
    assert plan.kept == 2
    assert [name for name, _ in plan.left_alone] == [
        ids[3],
        ids[4],
        ids[5],
        ids[6],
        f"{ids[0]}.out",
        "lost+found",
    ]
    reasons = dict(plan.left_alone)
    assert "owned by 'grid-a', not by the job's user 'grid-b'" in reasons[ids[3]]
    assert "does not know" in reasons[ids[6]]
    assert "not named after a job id" in reasons["lost+found"]


# -- on the cluster -------------------------------------------------------------------------------


#: The folders made by the job's user (runuser, SSH login) and in-process by a root daemon (sbatch --uid or libslurm).
EVERY_WAY = pytest.mark.parametrize(
    "backend", ["local", "local-root", "local-libslurm", "ssh"], indirect=True
)


@pytest.fixture
def jobs_root() -> Iterator[Callable[..., Path]]:
    """Fresh jobs_root folders (root's, sticky and world-writable as a shared one is by default)."""
    made: list[Path] = []

    def make(mode: int = 0o1777) -> Path:
        SCRATCH.mkdir(mode=0o755, exist_ok=True)
        root = SCRATCH / f"jobs-{secrets.token_hex(6)}"
        root.mkdir()
        root.chmod(mode)
        made.append(root)
        return root

    yield make
    for root in made:
        shutil.rmtree(root, ignore_errors=True)


def private_job(name: str, user: str, root: Path, script: str, minutes: int = 2) -> JobSubmission:
    folder = job_folder(root, name)
    return JobSubmission(
        name=name,
        script=script,
        unix_user=user,
        workdir=str(folder),
        output_path=str(output_file(folder)),
        time_limit_minutes=minutes,
        mem_per_cpu_mb=100,
        private_workdir=True,
    )


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=30)


def assert_private(folder: Path, user: str) -> None:
    info = folder.lstat()
    assert stat.S_ISDIR(info.st_mode), f"{folder} is not a directory"
    assert stat.S_IMODE(info.st_mode) & 0o777 == 0o700, oct(info.st_mode)
    assert info.st_uid == pwd.getpwnam(user).pw_uid


def slurm_paths(slurm_job_id: int) -> tuple[str, str]:
    shown = subprocess.run(
        ["scontrol", "show", "job", str(slurm_job_id)], capture_output=True, text=True, check=True
    ).stdout
    fields = dict(token.partition("=")[::2] for token in shown.split() if "=" in token)
    return fields["WorkDir"], fields["StdOut"]


@EVERY_WAY
async def test_each_customer_runs_in_a_private_folder_the_other_cannot_read(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster, jobs_root: Callable[..., Path]
) -> None:
    root = jobs_root()
    user_a, user_b = slurm_cluster.wallet_users
    name_a, name_b = new_job_name(), new_job_name()
    script = '#!/bin/bash\necho "secret of $(id -un) in $(pwd)"\n'
    id_a = await backend.submit(private_job(name_a, user_a, root, script))
    id_b = await backend.submit(private_job(name_b, user_b, root, script))
    folder_a, folder_b = root / name_a, root / name_b
    output_a, output_b = folder_a / f"{name_a}.out", folder_b / f"{name_b}.out"
    assert slurm_paths(id_a) == (str(folder_a), str(output_a))
    assert slurm_paths(id_b) == (str(folder_b), str(output_b))
    for name in (name_a, name_b):
        done = await wait_for_job(backend, name, lambda j: j.is_final, timeout=60)
        assert done.state == "COMPLETED"
    assert_private(folder_a, user_a)
    assert_private(folder_b, user_b)
    assert output_a.read_text().strip() == f"secret of {user_a} in {folder_a}"
    assert output_b.read_text().strip() == f"secret of {user_b} in {folder_b}"
    assert sorted(os.listdir(folder_a)) == [output_a.name]
    # Each user reads its own output; neither can read, nor list, the other's.
    assert as_user(user_a, "cat", str(output_a)).returncode == 0
    for reader, other_folder, other_output in ((user_b, folder_a, output_a), (user_a, folder_b, output_b)):
        denied = as_user(reader, "cat", str(other_output))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert as_user(reader, "ls", str(other_folder)).returncode != 0


@EVERY_WAY
async def test_a_submission_after_a_crash_finds_its_folder_and_makes_it_private(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster, jobs_root: Callable[..., Path]
) -> None:
    root = jobs_root()
    user = slurm_cluster.wallet_users[0]
    name = new_job_name()
    job = private_job(name, user, root, "#!/bin/bash\necho again\n")
    # A first attempt made the folder, then the daemon died before sbatch; the user left it wider.
    assert as_user(user, "mkdir", "-m", "0755", str(root / name)).returncode == 0
    await backend.submit(job)
    done = await wait_for_job(backend, name, lambda j: j.is_final, timeout=60)
    assert done.state == "COMPLETED"
    assert_private(root / name, user)
    assert (root / name / f"{name}.out").read_text().strip() == "again"
    folders = JobFolders(backend.runner, 20.0)
    await folders.ensure(job.workdir, user, user)  # once more: nothing changes, nothing fails
    assert_private(root / name, user)


@EVERY_WAY
async def test_a_folder_taken_by_another_user_refuses_the_job_before_sbatch(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster, jobs_root: Callable[..., Path]
) -> None:
    root = jobs_root()
    victim, squatter = slurm_cluster.wallet_users
    squatted, linked = new_job_name(), new_job_name()
    # Job ids are predictable: another user prepares a folder, or a symlink to its own, for them.
    assert as_user(squatter, "mkdir", "-m", "0777", str(root / squatted)).returncode == 0
    assert as_user(squatter, "ln", "-s", str(root / squatted), str(root / linked)).returncode == 0
    runner = counting(backend)
    runner.reset()
    for name in (squatted, linked):
        with pytest.raises(JobFolderUnsafe, match="cannot be used") as refused:
            await backend.submit(private_job(name, victim, root, "#!/bin/bash\necho secret\n"))
        assert refused.value.refuses_job
    assert runner.count("sbatch") == 0
    assert os.listdir(root / squatted) == []


@EVERY_WAY
async def test_an_unusable_jobs_root_makes_the_job_wait_not_refused(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster, jobs_root: Callable[..., Path]
) -> None:
    user = slurm_cluster.wallet_users[0]
    runner = counting(backend)
    open_to_all = jobs_root(0o777)  # others could rename the job's folder away
    missing = jobs_root() / "not-made"
    unusable = [(open_to_all, "sticky"), (missing, "No such file")]
    if not backend.root_on_login_node:  # root makes folders where the job user may not
        unusable.append((jobs_root(0o755), "Permission denied"))
    runner.reset()
    for root, why in unusable:
        with pytest.raises(JobsRootUnusable, match=why) as waiting:
            await backend.submit(private_job(new_job_name(), user, root, "#!/bin/bash\ntrue\n"))
        assert not waiting.value.refuses_job
    assert runner.count("sbatch") == 0
    assert not missing.exists()  # a missing jobs_root is never made on the fly


@EVERY_WAY
async def test_retention_removes_an_ended_jobs_folder_as_its_user_and_keeps_the_rest(
    backend: CommandSlurmBackend, slurm_cluster: SlurmCluster, jobs_root: Callable[..., Path]
) -> None:
    root = jobs_root()
    user_a, user_b = slurm_cluster.wallet_users
    ended, running, unknown = new_job_name(), new_job_name(), new_job_name()
    await backend.submit(
        private_job(ended, user_a, root, "#!/bin/bash\nmkdir -p deep/er && echo x > deep/er/f\n")
    )
    running_id = await backend.submit(private_job(running, user_b, root, "#!/bin/bash\nsleep 120\n"))
    try:
        assert (await wait_for_job(backend, ended, lambda j: j.is_final, timeout=60)).state == "COMPLETED"
        await wait_for_job(backend, running, lambda j: j.state == "RUNNING", timeout=60)
        (root / "notes.txt").write_text("the operator's\n")
        (root / unknown).mkdir()
        (root / f"{ended}.out").write_text("an output of the old layout\n")
        now = time.time()
        jobs = {ended: KnownJob(user_a, now - 8 * DAY), running: KnownJob(user_b, None)}
        said: set[str] = set()
        plan = await remove_ended_job_folders(
            backend, str(root), jobs, now=now, retention_seconds=7 * DAY, said=said
        )
        assert plan.remove == (Removal(ended, user_a),)
        assert not (root / ended).exists()
        assert_private(root / running, user_b)
        assert (await backend.query([running])).jobs[running].state == "RUNNING"
        left = {name for name, _ in plan.left_alone}
        assert left == said == {"notes.txt", unknown, f"{ended}.out"}
        assert all((root / name).exists() for name in left)
        # The job ended only a day ago: its folder stays.
        jobs[running] = KnownJob(user_b, now - DAY)
        again = await remove_ended_job_folders(backend, str(root), jobs, now=now, retention_seconds=7 * DAY)
        assert again.remove == () and (root / running).exists()
    finally:
        await backend.cancel(running_id)


async def test_a_root_daemon_submits_with_one_process_and_the_users_identity(
    slurm_cluster: SlurmCluster, jobs_root: Callable[..., Path]
) -> None:
    """sbatch --uid as root: no runuser, no mkdir or stat process; the job runs as its user, with
    that user's HOME, USER and LOGNAME, in a private folder of its own."""
    backend = make_backend(slurm_cluster, "local-root")
    try:
        root, user = jobs_root(), slurm_cluster.wallet_users[0]
        await backend.submit(private_job(new_job_name(), user, root, "#!/bin/bash\ntrue\n"))  # user known
        runner = counting(backend)
        runner.reset()
        name = new_job_name()
        script = '#!/bin/bash\necho "$(id -un) $HOME $USER $LOGNAME $(pwd)"\n'
        await backend.submit(private_job(name, user, root, script), look_up=False)  # a fresh claim
        assert [call[0] for call in runner.calls] == ["sbatch"]
        entry = pwd.getpwnam(user)
        assert f"--uid={entry.pw_uid}" in runner.calls[0] and f"--gid={entry.pw_gid}" in runner.calls[0]
        done = await wait_for_job(backend, name, lambda j: j.is_final, timeout=60)
        assert done.state == "COMPLETED"
        assert_private(root / name, user)
        output = (root / name / f"{name}.out").read_text().strip()
        assert output == f"{user} {entry.pw_dir} {user} {user} {root / name}"
    finally:
        await backend.close()
