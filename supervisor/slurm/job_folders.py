"""Per-job private folders under `policy.jobs_root`: their names, the commands that make, check, list
and remove them, what those commands answered, and which folders the retention removes. Pure.

Each job runs in `jobs_root/<its Slurm name>` (see supervisor.slurm.naming), mode 0700 and owned by the job's UNIX user, with its output
inside, so other UNIX users cannot read it. The folder is made by the job's user itself (through the
runner that runs sbatch as that user), so its owner is right without the daemon being root; a daemon
that is root on the login node makes it in-process and hands it to the user (`folders.LocalJobFolder`).
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath, PurePosixPath

from supervisor.slurm.errors import InvalidSubmission, JobFolderUnsafe, JobsRootUnusable
from supervisor.slurm.naming import is_slurm_name

FOLDER_MODE = 0o700
#: What `stat -c` prints for each path: the raw mode (hex, file type included) and the owner's name.
_STAT_FORMAT = "%f %U"


def check_root(root: str | PurePath) -> PurePosixPath:
    """jobs_root must be absolute and plain (no `..`, no line break or NUL): it is joined to job ids."""
    text = str(root)
    path = PurePosixPath(text)
    if not path.is_absolute() or path == PurePosixPath("/") or ".." in path.parts:
        raise InvalidSubmission(f"jobs_root must be an absolute folder below / without '..', got {text!r}")
    if "\n" in text or "\0" in text:
        raise InvalidSubmission(f"jobs_root contains a line break or NUL: {text!r}")
    return path


def job_folder(root: str | PurePath, slurm_name: str) -> PurePosixPath:
    """`root/<Slurm name>`; the name is a job id after digits and hex, so it holds no `/` or `..`."""
    if not is_slurm_name(slurm_name):
        raise InvalidSubmission(f"{slurm_name!r} is not a job's Slurm name (a job id after its deployment)")
    return check_root(root) / slurm_name


def output_file(folder: PurePosixPath) -> PurePosixPath:
    """`<folder>/<job id>.out`: the file name alone still says which job it is."""
    return folder / f"{folder.name}.out"


# -- commands (argument lists, run as the job's user or the daemon's) ----------------------------


def mkdir_argv(folder: PurePosixPath) -> list[str]:
    """Only the leaf: a missing jobs_root is the operator's to create, never made on the fly."""
    return ["mkdir", "-m", f"{FOLDER_MODE:04o}", "--", str(folder)]


def stat_argv(folder: PurePosixPath) -> list[str]:
    """The parent followed through a symlink (trailing `/`), the folder itself not (lstat)."""
    return ["stat", "-c", _STAT_FORMAT, "--", f"{folder.parent}/", str(folder)]


def chmod_argv(folder: PurePosixPath) -> list[str]:
    return ["chmod", f"{FOLDER_MODE:04o}", "--", str(folder)]


def list_argv(root: PurePosixPath) -> list[str]:
    """Type, owner and name of each entry of jobs_root, NUL-terminated (GNU find)."""
    return ["find", f"{root}/", "-mindepth", "1", "-maxdepth", "1", "-printf", "%y %u %f\\0"]


def remove_argv(folder: PurePosixPath) -> list[str]:
    return ["rm", "-rf", "--one-file-system", "--", str(folder)]


def mkdir_says_exists(stderr: str) -> bool:
    return "file exists" in stderr.lower()


# -- answers ------------------------------------------------------------------------------------


def folder_needs_chmod(stat_stdout: str, folder: PurePosixPath, user: str) -> bool:
    """Check what `stat_argv` printed; True when the folder is the user's but wider than 0700.

    JobsRootUnusable when the parent is not a directory or others may rename entries in it (writable
    by group or others without the sticky bit): the operator must fix it, the job waits.
    JobFolderUnsafe when the folder is not a plain directory owned by the job's user (a symlink or
    another user's folder squatting the job's name): this job cannot run here safely.
    """
    lines = stat_stdout.splitlines()
    if len(lines) != 2:
        raise JobsRootUnusable(f"cannot read the state of {folder}: stat printed {stat_stdout!r:.200}")
    (parent_mode, _), (mode, owner) = (_mode_and_owner(line, folder) for line in lines)
    return state_needs_chmod(parent_mode, mode, owner, folder, user)


def state_needs_chmod(parent_mode: int, mode: int, owner: str, folder: PurePosixPath, user: str) -> bool:
    """The rules of `folder_needs_chmod` on raw modes (the parent's followed, the folder's not) and
    the folder owner's name, however they were read."""
    if not stat.S_ISDIR(parent_mode):
        raise JobsRootUnusable(f"{folder.parent} is not a directory")
    if parent_mode & 0o022 and not parent_mode & stat.S_ISVTX:
        raise JobsRootUnusable(
            f"{folder.parent} is writable by other users without the sticky bit (chmod +t): "
            "they could rename the job folders"
        )
    if not stat.S_ISDIR(mode):
        raise JobFolderUnsafe(str(folder), "it exists and is not a directory (or is a symlink)")
    if owner != user:
        raise JobFolderUnsafe(str(folder), f"it is owned by {owner!r}, not by the job's user {user!r}")
    return stat.S_IMODE(mode) & 0o777 != FOLDER_MODE


def _mode_and_owner(line: str, folder: PurePosixPath) -> tuple[int, str]:
    raw, _, owner = line.strip().partition(" ")
    try:
        return int(raw, 16), owner
    except ValueError:
        raise JobsRootUnusable(f"cannot read the state of {folder}: stat printed {line!r:.200}") from None


@dataclass(frozen=True)
class FolderEntry:
    """One entry of jobs_root as `find -printf '%y %u %f'` shows it: type letter, owner, name."""

    name: str
    kind: str
    owner: str

    @property
    def is_directory(self) -> bool:
        return self.kind == "d"


def parse_listing(stdout: str) -> list[FolderEntry]:
    entries = []
    for record in stdout.split("\0"):
        if not record:
            continue
        kind, owner, name = [*record.split(" ", 2), "", ""][:3]
        entries.append(FolderEntry(name=name, kind=kind, owner=owner))
    return entries


# -- retention ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownJob:
    """What the store says about a job: the UNIX user it runs as, and when it ended (None: open)."""

    user: str | None
    ended_at: float | None


@dataclass(frozen=True)
class Removal:
    name: str
    user: str


@dataclass(frozen=True)
class CleanupPlan:
    """Folders to remove (as their job's user), entries left alone with why, and folders kept."""

    remove: tuple[Removal, ...]
    left_alone: tuple[tuple[str, str], ...]
    kept: int


def plan_cleanup(
    entries: Iterable[FolderEntry],
    jobs: Mapping[str, KnownJob],
    *,
    now: float,
    retention_seconds: float,
    mine: Callable[[str], bool] = lambda name: True,
) -> CleanupPlan:
    """Remove only the folder of a job the store knows ended more than the retention ago, when it is a
    directory owned by that job's user. Everything else unexpected is left alone, with a reason.

    Entries not `mine` belong to another deployment served from the same `jobs_root`: not looked at.
    """
    remove: list[Removal] = []
    left: list[tuple[str, str]] = []
    kept = 0
    for entry in entries:
        if not mine(entry.name):
            continue
        known = jobs.get(entry.name)
        if not is_slurm_name(entry.name):
            left.append((entry.name, "not named after a job id"))
        elif not entry.is_directory:
            left.append((entry.name, f"not a directory (type {entry.kind!r})"))
        elif known is None:
            left.append((entry.name, "a job this supervisor's store does not know"))
        elif known.ended_at is None or now - known.ended_at < retention_seconds:
            kept += 1
        elif known.user is None:
            left.append((entry.name, "the job's UNIX user cannot be told"))
        elif entry.owner != known.user:
            left.append((entry.name, f"owned by {entry.owner!r}, not by the job's user {known.user!r}"))
        else:
            remove.append(Removal(entry.name, known.user))
    return CleanupPlan(tuple(remove), tuple(left), kept)
