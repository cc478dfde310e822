"""Slurm commands on a login node over SSH (asyncssh): one pooled connection per user, reused."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Mapping, Sequence

import asyncssh

from supervisor.slurm.errors import SlurmCommandTimeout, SlurmUnavailable, UnixUserMissing
from supervisor.slurm.runner import CommandResult
from supervisor.slurm.settings import SshSettings


def remote_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The argument list quoted for the remote shell; environment through `env`, never interpolated."""
    prefix = ["env", *(f"{key}={value}" for key, value in (env or {}).items())] if env else []
    return shlex.join([*prefix, *argv])


class SshRunner:
    """Runs commands on the login node as the admin user or as a job's user.

    Connections are opened on first use and kept per user; a connection that broke is dropped and
    the command is retried once on a new one. Every command and every connection has a timeout.
    """

    def __init__(self, settings: SshSettings) -> None:
        self._settings = settings
        self._connections: dict[str, asyncssh.SSHClientConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.connections_opened = 0

    async def _connect(self, user: str) -> asyncssh.SSHClientConnection:
        lock = self._locks.setdefault(user, asyncio.Lock())
        async with lock:
            existing = self._connections.get(user)
            if existing is not None and not existing.is_closed():
                return existing
            settings = self._settings
            try:
                connection = await asyncssh.connect(
                    settings.host,
                    port=settings.port,
                    username=user,
                    client_keys=[str(settings.client_key)],
                    known_hosts=str(settings.known_hosts),
                    connect_timeout=settings.connect_timeout_seconds,
                    keepalive_interval=settings.keepalive_seconds,
                    agent_path=None,
                    config=None,
                )
            except asyncssh.PermissionDenied as exc:
                raise _PermissionDenied(user) from exc
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                raise SlurmUnavailable(
                    f"cannot reach the login node {settings.host}:{settings.port} as {user}: {exc}"
                ) from exc
            self._connections[user] = connection
            self.connections_opened += 1
            return connection

    def _drop(self, user: str, connection: asyncssh.SSHClientConnection) -> None:
        if self._connections.get(user) is connection:
            del self._connections[user]
        connection.close()

    async def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float,
    ) -> CommandResult:
        login = user or self._settings.admin_user
        command = remote_command(argv, env)
        try:
            async with asyncio.timeout(timeout):
                for attempt in (1, 2):
                    try:
                        connection = await self._connect(login)
                    except _PermissionDenied:
                        if login != self._settings.admin_user and not await self._user_exists(login, timeout):
                            raise UnixUserMissing(login) from None
                        raise SlurmUnavailable(
                            f"the login node refused the key for {login} ({self._settings.host})"
                        ) from None
                    try:
                        completed = await connection.run(command, input=stdin, check=False)
                    except (
                        asyncssh.ChannelOpenError,
                        asyncssh.ConnectionLost,
                        asyncssh.DisconnectError,
                        OSError,
                    ):
                        self._drop(login, connection)
                        if attempt == 2:
                            raise
                        continue
                    return CommandResult(
                        argv=tuple(argv),
                        returncode=completed.exit_status if completed.exit_status is not None else -1,
                        stdout=_text(completed.stdout),
                        stderr=_text(completed.stderr),
                    )
        except TimeoutError:
            raise SlurmCommandTimeout(argv, timeout) from None
        except (asyncssh.Error, OSError) as exc:
            raise SlurmUnavailable(
                f"SSH to {self._settings.host} failed while running {argv[0]}: {exc}"
            ) from exc
        raise SlurmUnavailable(f"SSH to {self._settings.host} failed while running {argv[0]}")

    async def _user_exists(self, user: str, timeout: float) -> bool:
        """Asked as the admin user, to tell a missing UNIX user from a refused key."""
        admin = await self._connect(self._settings.admin_user)
        completed = await asyncio.wait_for(admin.run(shlex.join(["id", "-u", user]), check=False), timeout)
        return completed.exit_status == 0

    async def close(self) -> None:
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            connection.close()
        for connection in connections:
            await connection.wait_closed()


class _PermissionDenied(Exception):
    def __init__(self, user: str) -> None:
        self.user = user
        super().__init__(user)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
