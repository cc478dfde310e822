"""Running Slurm commands: the runner interface, local subprocesses, and a counting wrapper."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from supervisor.slurm.errors import SlurmCommandTimeout, SlurmUnavailable

# The environment a local command gets: enough to find the Slurm commands, nothing of the daemon's
# (its secrets must not leak into jobs through sbatch's default --export=ALL).
_KEPT_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "TZ")


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandRunner(Protocol):
    """Runs one command (an argument list, never a shell string) and returns what it printed."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float,
    ) -> CommandResult:
        """`user` None means the runner's own identity (the daemon's user or the SSH admin user)."""
        ...

    async def close(self) -> None: ...


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def wait_for_children_in_the_loop() -> None:
    """Have asyncio wait for child processes with a pidfd in the event loop, as Python 3.12 does by
    default: 3.11's default starts a thread per child, which under a burst of sbatch costs the loop
    about as much as starting the process. Call before the loop starts; a no-op where 3.12 already
    does it or the kernel has no pidfd_open."""
    if sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):
        asyncio.set_child_watcher(asyncio.PidfdChildWatcher())


def command_environment(
    user: str, slurm_conf: str | None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a Slurm command run as `user` on this machine (and so of the job sbatch
    submits): the daemon's PATH and locale, the user's identity, the configured SLURM_CONF."""
    env = {key: os.environ[key] for key in _KEPT_ENVIRONMENT if key in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    try:
        entry = pwd.getpwnam(user)
        env.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)
    except KeyError:
        env.update(USER=user, LOGNAME=user)
    if slurm_conf:
        env["SLURM_CONF"] = slurm_conf
    env.update(extra or {})
    return env


class LocalRunner:
    """Commands as subprocesses on this machine; another user's commands go through `runuser` (root)."""

    def __init__(self, slurm_conf: str | None = None, command_prefix: Sequence[str] = ()) -> None:
        self._slurm_conf = slurm_conf
        self._prefix = tuple(command_prefix)
        self._me = current_user()

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float,
    ) -> CommandResult:
        command = list(argv)
        if user is not None and user != self._me:
            # runuser keeps the environment given here; it needs root, as switching users does.
            command = ["runuser", "-u", user, "--", *command]
        command = [*self._prefix, *command]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=command_environment(user or self._me, self._slurm_conf, env),
                start_new_session=True,
            )
        except OSError as exc:
            raise SlurmUnavailable(f"cannot run {command[0]!r}: {exc}") from exc
        try:
            async with asyncio.timeout(timeout):
                out, err = await process.communicate(stdin.encode() if stdin is not None else None)
        except TimeoutError:
            await _reap(process)
            raise SlurmCommandTimeout(argv, timeout) from None
        except asyncio.CancelledError:
            # The daemon is stopping: end the command too, so no process outlives its event loop.
            await asyncio.shield(_reap(process))
            raise
        return CommandResult(
            argv=tuple(argv),
            returncode=process.returncode if process.returncode is not None else -1,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
        )

    async def close(self) -> None:
        return None


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Kill a command's process group and wait for it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        await process.wait()


@dataclass
class CountingRunner:
    """Wraps a runner and records every command it runs (to count Slurm calls per cycle)."""

    inner: CommandRunner
    calls: list[tuple[str, ...]] = field(default_factory=list)

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float,
    ) -> CommandResult:
        self.calls.append(tuple(argv))
        return await self.inner.run(argv, user=user, stdin=stdin, env=env, timeout=timeout)

    def count(self, program: str | None = None) -> int:
        return sum(1 for call in self.calls if program is None or call[0] == program)

    def reset(self) -> None:
        self.calls.clear()

    async def close(self) -> None:
        await self.inner.close()
