"""The Slurm interface the daemon uses, and its implementation over Slurm's commands (local or SSH)."""

from __future__ import annotations

import pwd
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import structlog

from supervisor.core.slurm_states import KNOWN_STATES
from supervisor.slurm import commands, libslurm, parsing
from supervisor.slurm.errors import (
    InvalidSubmission,
    JobAlreadySubmitted,
    SlurmCommandFailed,
    SlurmError,
    SlurmUnavailable,
    UnixUserMissing,
)
from supervisor.slurm.folders import JobFolders, ensure_local_folder
from supervisor.slurm.job_folders import FolderEntry
from supervisor.slurm.libslurm import LibslurmSubmitter
from supervisor.slurm.models import JobSubmission, ObservedJob, PartitionHardware, SlurmHealth
from supervisor.slurm.runner import CommandResult, CommandRunner, command_environment, current_user
from supervisor.slurm.settings import SlurmSettings


@dataclass(frozen=True)
class QueryResult:
    """Jobs found by name, and whether the names not found are certainly unknown to Slurm.

    `not_found_is_certain` is true only when accounting answered for them; without accounting (or
    while slurmdbd is unreachable) a missing name may be a job that finished more than MinJobAge ago.
    """

    jobs: Mapping[str, ObservedJob]
    not_found: frozenset[str]
    not_found_is_certain: bool
    accounting_available: bool

    def get(self, name: str) -> ObservedJob | None:
        return self.jobs.get(name)


class SlurmBackend(Protocol):
    """What the daemon asks of Slurm. Every method may raise SlurmError (never anything else)."""

    async def submit(
        self, submission: JobSubmission, *, since: datetime | None = None, look_up: bool = True
    ) -> int:
        """Submit once: JobAlreadySubmitted if Slurm has (or had, since `since`) a job with this name.

        `look_up=False` skips that check, for a caller that knows no earlier sbatch of this job was
        begun (the daemon's durable submit intent). Returns the Slurm job id.
        """
        ...

    async def query(
        self,
        names: Collection[str],
        *,
        since: datetime | None = None,
        slurm_ids: Mapping[str, int] | None = None,
    ) -> QueryResult:
        """Many jobs by name in one go: a few Slurm calls whatever the number of names.

        With `since`, jobs submitted before it are ignored: job ids repeat across deployments (a test
        chain, a second grid), so an older Slurm job of the same name belongs to another job.
        `slurm_ids` gives the Slurm job id of the names that have one: those are matched by id.
        """
        ...

    async def cancel(self, slurm_job_id: int) -> None:
        """Cancel; a job that already ended is not an error."""
        ...

    async def extend_time_limit(self, slurm_job_id: int, extra_minutes: int) -> None: ...

    async def describe_partition(self) -> PartitionHardware: ...

    async def health(self) -> SlurmHealth:
        """Never raises: unreachable parts show in the answer."""
        ...

    async def job_folder_entries(self, root: str) -> list[FolderEntry]:
        """The entries of jobs_root (type, owner, name), as the daemon's (or SSH admin) user sees them."""
        ...

    async def remove_job_folder(self, folder: str, unix_user: str) -> None:
        """Remove a job's folder as the job's user, who owns it (the daemon's user may not)."""
        ...

    async def close(self) -> None: ...


def _not_before(job: ObservedJob, since: datetime | None) -> bool:
    """Whether an accounting record can belong to a job submitted at or after `since`.

    sacct's window selects jobs present in it, including older ones still running: a job that started
    or ended before `since` was submitted before it.
    """
    if since is None:
        return True
    return all(moment is None or moment >= since for moment in (job.start_time, job.end_time))


_ALREADY_ENDED = ("already completing or completed", "invalid job id specified")

log = structlog.get_logger("supervisor.slurm")


def log_unknown_states(jobs: Iterable[ObservedJob], logged: set[tuple[int, str]]) -> None:
    """Say once per job and state that Slurm reported a state this layer does not know.

    Such a job gets no report (its chain outcome is unknown) until Slurm reports a known state.
    """
    for job in jobs:
        if job.state in KNOWN_STATES or (job.slurm_job_id, job.state) in logged:
            continue
        logged.add((job.slurm_job_id, job.state))
        log.warning(
            "Slurm reports a job state this supervisor does not know: the job is left as it is",
            slurm_job_id=job.slurm_job_id,
            name=job.name,
            state=job.state,
        )


@dataclass
class CommandSlurmBackend:
    """Slurm's commands through a runner: subprocesses (local backend) or SSH (ssh backend)."""

    runner: CommandRunner
    settings: SlurmSettings
    submit_as_job_user: bool = True
    #: The daemon is root on the login node itself (local backend): it submits with `sbatch --uid`
    #: and makes job folders in-process instead of running each command through `runuser`.
    root_on_login_node: bool = False
    #: Submissions through libslurm's call instead of an sbatch process (local backend only), with
    #: the operator's extra options as job description fields.
    library: LibslurmSubmitter | None = None
    library_options: Mapping[str, str] = field(default_factory=dict)
    #: Why `library` is not used though the settings allow it (shown by `doctor`).
    library_refusal: str | None = None
    _known_users: set[str] = field(default_factory=set)
    _accounting: bool | None = None
    _unknown_states: set[tuple[int, str]] = field(default_factory=set)
    _listing_memo: parsing.ListingMemo = field(default_factory=parsing.ListingMemo)
    _wanted_memo: tuple[frozenset[str], Mapping[str, int], dict[int, str], list[str]] | None = None

    async def _run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        result = await self.runner.run(
            argv, user=user, stdin=stdin, env=env, timeout=self.settings.command_timeout_seconds
        )
        if result.returncode != 0:
            failure = parsing.command_failure(argv, result.returncode, result.stderr, result.stdout)
            if isinstance(failure, SlurmUnavailable):
                raise failure
            # Only sbatch asks Slurm to take a job: another command's failure refuses no job.
            if failure.refuses_job and argv[0] != "sbatch":
                raise SlurmCommandFailed(argv, result.returncode, result.stderr or result.stdout)
            raise failure
        return result

    async def _check_user(self, user: str) -> None:
        if user in self._known_users:
            return
        result = await self.runner.run(
            commands.user_exists_argv(user), timeout=self.settings.command_timeout_seconds
        )
        if result.returncode != 0:
            raise UnixUserMissing(user)
        self._known_users.add(user)

    async def submit(
        self, submission: JobSubmission, *, since: datetime | None = None, look_up: bool = True
    ) -> int:
        """Look the name up (with `look_up`), then sbatch. Each failure says its cause: JobRefused (SubmissionRefused,
        UnixUserMissing, InvalidSubmission) only when the job itself is refused; a failed look-up is
        SlurmUnavailable; an sbatch that hung or failed for an unknown cause is not a refusal."""
        script = commands.guard_script(submission.script)
        try:
            existing = await self._existing_job_id(submission.name, since) if look_up else None
        except SlurmUnavailable:
            raise
        except SlurmError as exc:
            raise SlurmUnavailable(
                f"the look-up of {submission.name} before submitting it failed, nothing was submitted: {exc}"
            ) from exc
        if existing is not None:
            raise JobAlreadySubmitted(submission.name, existing)
        await self._check_user(submission.unix_user)
        login = self._submit_user(submission.unix_user)
        if (
            self.library is not None
            and login is not None
            and (self.root_on_login_node or login == current_user())
        ):
            return await self._submit_through_library(self.library, submission, script, login)
        if self.root_on_login_node and login is not None and login != current_user():
            return await self._submit_as_root(submission, script, login)
        if submission.private_workdir:
            await self._folders().ensure(submission.workdir, submission.unix_user, login)
        argv = commands.sbatch_argv(submission, self.settings.partition, self.settings.extra_sbatch_args)
        result = await self._run(argv, user=login, stdin=script)
        return parsing.parse_sbatch(result.stdout)

    async def _submit_as_root(self, submission: JobSubmission, script: str, user: str) -> int:
        """One process per job: the folder made in-process, sbatch run as root for the user, with the
        environment the job would have had from `runuser` (the user's HOME, USER and LOGNAME)."""
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise UnixUserMissing(user) from None
        if submission.private_workdir:
            ensure_local_folder(submission.workdir, entry)
        argv = commands.sbatch_argv(
            submission,
            self.settings.partition,
            self.settings.extra_sbatch_args,
            as_ids=(entry.pw_uid, entry.pw_gid),
        )
        identity = {"HOME": entry.pw_dir, "USER": user, "LOGNAME": user}
        result = await self._run(argv, stdin=script, env=identity)
        return parsing.parse_sbatch(result.stdout)

    async def _submit_through_library(
        self, library: LibslurmSubmitter, submission: JobSubmission, script: str, user: str
    ) -> int:
        """No sbatch process: the folder made in-process by a root daemon (else as the job's user,
        who is the daemon's), and the job handed to libslurm, described as sbatch would describe it."""
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise UnixUserMissing(user) from None
        if submission.private_workdir:
            if self.root_on_login_node:
                ensure_local_folder(submission.workdir, entry)
            else:
                await self._folders().ensure(submission.workdir, submission.unix_user, user)
        ids = (entry.pw_uid, entry.pw_gid)
        slurm_conf = str(self.settings.slurm_conf) if self.settings.slurm_conf else None
        job = libslurm.BatchJob(
            submission=submission,
            script=script,
            partition=self.settings.partition,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            base_environment=command_environment(user, slurm_conf),
            options=self.library_options,
            submit_line=libslurm.submit_line(
                submission, self.settings.partition, self.settings.extra_sbatch_args, ids
            ),
        )
        return await library.submit(job)

    def _folders(self) -> JobFolders:
        return JobFolders(self.runner, self.settings.command_timeout_seconds)

    async def job_folder_entries(self, root: str) -> list[FolderEntry]:
        return await self._folders().entries(root)

    async def remove_job_folder(self, folder: str, unix_user: str) -> None:
        await self._folders().remove(folder, self._submit_user(unix_user))

    async def _existing_job_id(self, name: str, since: datetime | None) -> int | None:
        """A job with this name in the queue or in accounting (two small answers, whatever the queue)."""
        answer = await self._run(commands.squeue_name_argv(name), env=commands.TIME_FORMAT_ENV)
        live = [
            job_id
            for job_id, submitted in parsing.parse_job_submissions(answer.stdout)
            if since is None or submitted is None or submitted >= since
        ]
        if live:
            return max(live)
        if self._accounting is False:
            return None
        accounted = [job for job in await self._accounting_records([name], since) if _not_before(job, since)]
        return max((job.slurm_job_id for job in accounted), default=None)

    def _submit_user(self, unix_user: str) -> str | None:
        if self.submit_as_job_user:
            return unix_user
        ssh = self.settings.ssh
        if ssh is not None and unix_user != ssh.admin_user:
            raise InvalidSubmission(
                f"jobs run as {unix_user!r}, but the SSH backend may log in only as {ssh.admin_user!r} "
                "(set login_as_job_user = true)"
            )
        return None

    async def query(
        self,
        names: Collection[str],
        *,
        since: datetime | None = None,
        slurm_ids: Mapping[str, int] | None = None,
    ) -> QueryResult:
        wanted = frozenset(names)
        if not wanted:
            return QueryResult({}, frozenset(), True, self._accounting is not False)
        now = datetime.now(tz=UTC)
        listed = await self._live(wanted, slurm_ids or {}, now, since)
        found = [job for job in listed if not job.is_final]
        # The lines hold no exit code: a job they show ended is read again, from accounting first.
        ended = {job.slurm_job_id: job for job in listed if job.is_final}
        missing = wanted - {job.name for job in listed}
        accounting_answered = False
        if (missing or ended) and self._accounting is not False:
            try:
                asked = missing | {job.name for job in ended.values()}
                for record in await self._accounting_records(asked, since):
                    if not _not_before(record, since):
                        continue
                    if record.slurm_job_id in ended:
                        if record.is_final:  # else its end is not in accounting yet
                            found.append(record)
                            del ended[record.slurm_job_id]
                    elif record.name in missing:
                        found.append(record)
                accounting_answered = self._accounting is True
            except SlurmUnavailable:
                accounting_answered = False
        if ended:
            found += await self._ended_from_json(ended, now, since)
        jobs = parsing.latest_by_name(found)
        log_unknown_states(jobs.values(), self._unknown_states)
        not_found = wanted - jobs.keys()
        return QueryResult(
            jobs=jobs,
            not_found=not_found,
            # A job seen ended whose exit code nothing could tell yet is looked at again next time.
            not_found_is_certain=not not_found or (accounting_answered and not ended),
            accounting_available=self._accounting is not False,
        )

    async def _live(
        self, wanted: frozenset[str], slurm_ids: Mapping[str, int], now: datetime, since: datetime | None
    ) -> list[ObservedJob]:
        """The wanted jobs Slurm's controller has: matched by Slurm id in the listing of every job
        where the id is known, else asked for by name."""
        by_id, by_name = self._split_wanted(wanted, slurm_ids)
        listed: list[ObservedJob] = []
        if by_id:
            answer = await self._run(commands.squeue_argv(), env=commands.TIME_FORMAT_ENV)
            listed += parsing.parse_squeue(
                answer.stdout, now=now, slurm_ids=by_id, submitted_after=since, memo=self._listing_memo
            )
        for start in range(0, len(by_name), commands.NAMES_PER_CALL):
            chunk = by_name[start : start + commands.NAMES_PER_CALL]
            answer = await self._run(commands.squeue_argv(names=chunk), env=commands.TIME_FORMAT_ENV)
            listed += parsing.parse_squeue(answer.stdout, now=now, names=set(chunk), submitted_after=since)
        return listed

    def _split_wanted(
        self, wanted: frozenset[str], slurm_ids: Mapping[str, int]
    ) -> tuple[dict[int, str], list[str]]:
        """(Slurm id -> name of the names with an id, the other names): the same for the same two
        objects, which a caller asking again for an unchanged set of jobs passes again."""
        memo = self._wanted_memo
        if memo is not None and memo[0] is wanted and memo[1] is slurm_ids:
            return memo[2], memo[3]
        by_id = {slurm_ids[name]: name for name in wanted if name in slurm_ids}
        by_name = sorted(wanted - slurm_ids.keys())
        self._wanted_memo = (wanted, slurm_ids, by_id, by_name)
        return by_id, by_name

    async def _ended_from_json(
        self, ended: dict[int, ObservedJob], now: datetime, since: datetime | None
    ) -> list[ObservedJob]:
        """Ended jobs whose exit code accounting cannot tell (disabled, unreachable, or not written
        yet): read from squeue's JSON, which holds it. Those it no longer holds stay in `ended`."""
        answer = await self._run(commands.squeue_json_argv())
        names = {job.name for job in ended.values()}
        found = []
        for job in parsing.parse_squeue_json(answer.stdout, names, now=now, submitted_after=since):
            if job.slurm_job_id in ended and job.is_final:
                found.append(job)
                del ended[job.slurm_job_id]
        return found

    async def _accounting_records(self, names: Collection[str], since: datetime | None) -> list[ObservedJob]:
        argv = commands.sacct_argv(names, self.settings.accounting_lookback_days, since=since)
        result = await self.runner.run(
            argv, env=commands.TIME_FORMAT_ENV, timeout=self.settings.command_timeout_seconds
        )
        if parsing.says_accounting_disabled(result.stderr + result.stdout):
            self._accounting = False
            return []
        if result.returncode != 0:
            if parsing.says_unavailable(result.stderr):
                raise SlurmUnavailable(f"accounting: {result.stderr.strip()[-300:]}")
            raise SlurmCommandFailed(argv, result.returncode, result.stderr)
        self._accounting = True
        return parsing.parse_sacct(result.stdout)

    async def cancel(self, slurm_job_id: int) -> None:
        try:
            await self._run(commands.scancel_argv(slurm_job_id))
        except SlurmCommandFailed as exc:
            if not any(marker in exc.stderr.lower() for marker in _ALREADY_ENDED):
                raise

    async def extend_time_limit(self, slurm_job_id: int, extra_minutes: int) -> None:
        if isinstance(extra_minutes, bool) or not isinstance(extra_minutes, int) or extra_minutes < 1:
            raise InvalidSubmission(f"extra minutes must be a positive integer, got {extra_minutes!r}")
        await self._run(commands.extend_argv(slurm_job_id, extra_minutes))

    async def describe_partition(self) -> PartitionHardware:
        result = await self._run(commands.sinfo_argv())
        return parsing.parse_sinfo_json(result.stdout, self.settings.partition)

    async def health(self) -> SlurmHealth:
        problems: list[str] = []
        reachable = False
        try:
            result = await self._run(commands.ping_argv())
            reachable = parsing.parse_ping(result.stdout)
            if not reachable:
                problems.append(f"slurmctld is not up: {result.stdout.strip()[:200]}")
        except SlurmError as exc:
            problems.append(f"slurmctld: {exc}")
        accounting = False
        try:
            probe = await self.runner.run(
                commands.sacct_probe_argv(), timeout=self.settings.command_timeout_seconds
            )
            if parsing.says_accounting_disabled(probe.stderr + probe.stdout):
                self._accounting = False
                problems.append("accounting is disabled: finished jobs are visible only until MinJobAge")
            elif probe.returncode != 0:
                problems.append(f"accounting unreachable: {probe.stderr.strip()[-200:]}")
            else:
                accounting = True
                self._accounting = True
        except SlurmError as exc:
            problems.append(f"accounting: {exc}")
        health = SlurmHealth(controller_reachable=reachable, accounting_available=accounting)
        return SlurmHealth(
            controller_reachable=reachable,
            accounting_available=accounting,
            detail=health.finished_jobs_guarantee,
            problems=tuple(problems),
        )

    async def close(self) -> None:
        if self.library is not None:
            self.library.close()
        await self.runner.close()
