"""Making, listing and removing job folders through a runner, as the job's user (local or SSH), or
in-process by a daemon that is root on the login node.

The rules (paths, what is safe, what the retention removes) are in `job_folders`; this module only
runs the commands, so the folders are handled by the same mechanism that runs sbatch as that user.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

import structlog

from supervisor.slurm import job_folders
from supervisor.slurm.errors import JobsRootUnusable, SlurmCommandFailed, SlurmError
from supervisor.slurm.job_folders import FOLDER_MODE, CleanupPlan, FolderEntry, KnownJob
from supervisor.slurm.runner import CommandResult, CommandRunner

log = structlog.get_logger("supervisor.slurm")
_C_LOCALE = {"LC_ALL": "C"}


@dataclass
class JobFolders:
    """Job folders through `runner`; `login` None runs as the runner's own identity."""

    runner: CommandRunner
    timeout: float

    async def _run(self, argv: Sequence[str], login: str | None) -> CommandResult:
        # The C locale: mkdir's "File exists" is read, and stat's and find's answers must not vary.
        return await self.runner.run(argv, user=login, env=_C_LOCALE, timeout=self.timeout)

    async def ensure(self, folder: str, owner: str, login: str | None) -> None:
        """Make the folder (0700) as its owner, or find it from an earlier attempt, and check it.

        Idempotent: a re-submission after a crash finds the folder and checks it the same way.
        """
        path = PurePosixPath(folder)
        made = await self._run(job_folders.mkdir_argv(path), login)
        if made.returncode != 0 and not job_folders.mkdir_says_exists(made.stderr):
            raise JobsRootUnusable(
                f"cannot make the job folder {folder} as {owner}: {made.stderr.strip()[-300:]}"
            )
        if job_folders.folder_needs_chmod(await self._stat(path, login), path, owner):
            changed = await self._run(job_folders.chmod_argv(path), login)
            if changed.returncode != 0:
                raise JobsRootUnusable(f"cannot make {folder} private: {changed.stderr.strip()[-300:]}")
            if job_folders.folder_needs_chmod(await self._stat(path, login), path, owner):
                raise JobsRootUnusable(f"{folder} stays wider than 0700 after chmod")

    async def _stat(self, path: PurePosixPath, login: str | None) -> str:
        argv = job_folders.stat_argv(path)
        result = await self._run(argv, login)
        if result.returncode != 0:
            raise JobsRootUnusable(f"cannot check the job folder {path}: {result.stderr.strip()[-300:]}")
        return result.stdout

    async def entries(self, root: str) -> list[FolderEntry]:
        """What jobs_root holds, as the runner's own identity sees it."""
        argv = job_folders.list_argv(job_folders.check_root(root))
        result = await self._run(argv, None)
        if result.returncode != 0:
            raise SlurmCommandFailed(argv, result.returncode, result.stderr)
        return job_folders.parse_listing(result.stdout)

    async def remove(self, folder: str, login: str | None) -> None:
        argv = job_folders.remove_argv(PurePosixPath(folder))
        result = await self._run(argv, login)
        if result.returncode != 0:
            raise SlurmCommandFailed(argv, result.returncode, result.stderr)


def ensure_local_folder(folder: str, owner: pwd.struct_passwd) -> None:
    """Make the job folder in-process, as root on this machine, and hand it to its owner; or find it
    from an earlier attempt. The same checks as `JobFolders.ensure`, without a process per step.

    The folder is opened without following a symlink before it is handed over, so a name planted in
    jobs_root can never make root change another file; anything there already must be a directory
    of the job's user.
    """
    path = PurePosixPath(folder)
    try:
        os.mkdir(path, FOLDER_MODE)
        made = True
    except FileExistsError:
        made = False
    except OSError as exc:
        raise JobsRootUnusable(f"cannot make the job folder {folder}: {exc.strerror}") from None
    try:
        if made:
            _hand_over(path, owner.pw_uid, owner.pw_gid)
        parent, state = os.stat(path.parent), os.lstat(path)
    except OSError as exc:
        raise JobsRootUnusable(f"cannot check the job folder {folder}: {exc.strerror}") from None
    if job_folders.state_needs_chmod(
        parent.st_mode, state.st_mode, _user_name(state.st_uid), path, owner.pw_name
    ):
        try:
            _hand_over(path, None, None)
        except OSError as exc:
            raise JobsRootUnusable(f"cannot make {folder} private: {exc.strerror}") from None


def _hand_over(path: PurePosixPath, uid: int | None, gid: int | None) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if uid is not None and gid is not None:
            os.fchown(descriptor, uid, gid)
        os.fchmod(descriptor, FOLDER_MODE)
    finally:
        os.close(descriptor)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class FolderBackend(Protocol):
    """The part of a Slurm backend `remove_ended_job_folders` uses (see SlurmBackend)."""

    async def job_folder_entries(self, root: str) -> list[FolderEntry]: ...

    async def remove_job_folder(self, folder: str, unix_user: str) -> None: ...


async def remove_ended_job_folders(
    backend: FolderBackend,
    root: str,
    jobs: Mapping[str, KnownJob],
    *,
    now: float,
    retention_seconds: float,
    said: set[str] | None = None,
    mine: Callable[[str], bool] = lambda name: True,
) -> CleanupPlan:
    """Remove the folders of jobs that ended more than the retention ago, each as its job's user.

    Entries left alone are logged once each (names in `said`, kept by the caller between passes);
    a removal that fails is logged and tried again at the next pass.
    """
    entries = await backend.job_folder_entries(root)
    plan = job_folders.plan_cleanup(entries, jobs, now=now, retention_seconds=retention_seconds, mine=mine)
    said = said if said is not None else set()
    for name, why in plan.left_alone:
        if name not in said:
            said.add(name)
            log.warning("entry of jobs_root left alone", entry=name, reason=why, jobs_root=root)
    for removal in plan.remove:
        folder = str(job_folders.job_folder(root, removal.name))
        try:
            await backend.remove_job_folder(folder, removal.user)
        except SlurmError as exc:  # one folder that cannot go must not stop the others
            log.warning(
                "job folder not removed, will retry", folder=folder, user=removal.user, error=str(exc)
            )
        else:
            log.info("job folder removed after its retention", folder=folder, user=removal.user)
    return plan
