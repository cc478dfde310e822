"""Slurm commands on a login node over SSH (asyncssh): one pooled connection per user, reused."""

from __future__ import annotations

import asyncio
import shlex
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence

import asyncssh

from supervisor.slurm.errors import SlurmCommandTimeout, SlurmUnavailable, UnixUserMissing
from supervisor.slurm.runner import CommandResult
from supervisor.slurm.settings import SshSettings


def remote_command(
    argv: Sequence[str], env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()
) -> str:
    """The argument list quoted for the remote shell; environment through `env`, never interpolated."""
    environment = ["env", *(f"{key}={value}" for key, value in (env or {}).items())] if env else []
    return shlex.join([*prefix, *environment, *argv])


class SshRunner:
    """Runs commands on the login node as the admin user or as a job's user.

    Connections are opened on first use and kept per user, at most `max_connections` of them: past
    that the least recently used idle one is closed (per-wallet users are many, and each connection
    holds a session on the login node). A connection that broke is dropped and the command is
    retried once on a new one. Every command and every connection has a timeout.
    """

    def __init__(
        self, settings: SshSettings, command_prefix: Sequence[str] = (), *, max_connections: int = 16
    ) -> None:
        self._settings = settings
        self._prefix = tuple(command_prefix)
        self._max_connections = max(1, max_connections)
        self._connections: OrderedDict[str, asyncssh.SSHClientConnection] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._busy: Counter[str] = Counter()
        self.connections_opened = 0

    async def _connect(self, user: str) -> asyncssh.SSHClientConnection:
        lock = self._locks.setdefault(user, asyncio.Lock())
        async with lock:
            existing = self._connections.get(user)
            if existing is not None and not existing.is_closed():
                self._connections.move_to_end(user)
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
            self._evict()
            return connection

    def _evict(self) -> None:
        """Close least recently used connections nobody is using, down to the bound."""
        for user in list(self._connections):
            if len(self._connections) <= self._max_connections:
                return
            lock = self._locks.get(user)
            if self._busy[user] or user == self._settings.admin_user or (lock is not None and lock.locked()):
                continue
            self._connections.pop(user).close()
            self._locks.pop(user, None)
            self._busy.pop(user, None)

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
        command = remote_command(argv, env, self._prefix)
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
                    self._busy[login] += 1  # no await since the connection was handed out: not evicted
                    try:
                        # Bytes, decoded here with replacement: asyncssh's own strict UTF-8 decoding
                        # drops the connection at the first foreign byte (another user's job name).
                        completed = await connection.run(
                            command,
                            input=stdin.encode() if stdin is not None else None,
                            check=False,
                            encoding=None,
                        )
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
                    finally:
                        self._busy[login] -= 1
                        self._evict()
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
        completed = await asyncio.wait_for(
            admin.run(shlex.join([*self._prefix, "id", "-u", user]), check=False, encoding=None), timeout
        )
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
