"""The Slurm interface through pyslurm (optional: only where a pyslurm matching the site's Slurm exists).

pyslurm binds to one Slurm release (25.11 on PyPI refuses Slurm 22.05), so this backend is chosen only
on sites that install it themselves. Its calls block, so each runs in a worker thread with a timeout.
The submission follows the same rules as the command backends: resources from the job definition,
the guarded script, the job name as the key, accounting as the truth about finished jobs.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from supervisor.core.slurm_states import (
    UnknownSlurmState,
    normalize_state,
    split_wait_status,
    state_from_flags,
)
from supervisor.slurm.backend import QueryResult, log_unknown_states
from supervisor.slurm.commands import guard_script, user_exists_argv
from supervisor.slurm.errors import (
    BackendUnavailable,
    JobAlreadySubmitted,
    SlurmCommandFailed,
    SlurmCommandTimeout,
    SlurmError,
    SlurmOutputError,
    SlurmUnavailable,
    SubmissionRefused,
    UnixUserMissing,
)
from supervisor.slurm.folders import JobFolders
from supervisor.slurm.job_folders import FolderEntry
from supervisor.slurm.models import JobSubmission, NodeHardware, ObservedJob, PartitionHardware, SlurmHealth
from supervisor.slurm.parsing import latest_by_name, refusal_reason, says_unavailable
from supervisor.slurm.runner import LocalRunner
from supervisor.slurm.settings import SlurmSettings

T = TypeVar("T")


def load_pyslurm() -> Any:
    """Import pyslurm, or say clearly why this backend cannot run here."""
    try:
        return importlib.import_module("pyslurm")
    except ImportError as exc:
        raise BackendUnavailable(
            "the pyslurm backend needs pyslurm built for this site's Slurm release "
            f"(not installed: {exc}); use the local or ssh backend"
        ) from exc


def pyslurm_failure(exc: BaseException, *, submitting: bool) -> SlurmError:
    """A pyslurm exception by its cause, as the command backends classify a command's message.

    pyslurm's RPCError carries Slurm's own message (slurm_strerror), the text sbatch prints. Only a
    submission can be refused; an unknown cause is retried, never taken for a refusal or an outage.
    """
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) or says_unavailable(text):
        return SlurmUnavailable(f"pyslurm: {text}")
    reason = refusal_reason(text) if submitting else None
    if reason is not None:
        return SubmissionRefused(reason)
    errno = getattr(exc, "errno", None)
    return SlurmCommandFailed(["pyslurm"], errno if isinstance(errno, int) else -1, text)


def _when(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and value > 0:
        return datetime.fromtimestamp(value, tz=UTC)
    return None


def observed_from_pyslurm(job: Any, *, from_accounting: bool) -> ObservedJob:
    """A pyslurm Job (live) or db.Job (accounting) as an ObservedJob."""
    raw = job.state
    raw_state = state_from_flags([str(part) for part in raw]) if isinstance(raw, list | tuple) else str(raw)
    try:
        state = normalize_state(raw_state)
    except UnknownSlurmState:
        # Kept as Slurm wrote it: the job is left alone (no report) while the others are read.
        words = raw_state.split()
        state = words[0].upper() if words else "(EMPTY)"
    exit_code: int | None = getattr(job, "exit_code", None)
    signal: int | None = None
    raw_signal = getattr(job, "exit_code_signal", None)
    if isinstance(raw_signal, int) and raw_signal > 0:
        signal = raw_signal
    elif isinstance(exit_code, int) and exit_code > 255:
        exit_code, signal = split_wait_status(exit_code)
    limit = getattr(job, "time_limit", None)
    return ObservedJob(
        slurm_job_id=int(job.id),
        name=str(job.name),
        state=state,
        exit_code=exit_code,
        signal=signal,
        elapsed_seconds=int(getattr(job, "elapsed_time", 0) or 0),
        start_time=_when(getattr(job, "start_time", None)),
        end_time=_when(getattr(job, "end_time", None)),
        reason=getattr(job, "state_reason", None),
        time_limit_minutes=int(limit) if isinstance(limit, int) else None,
        user=getattr(job, "user_name", None),
        from_accounting=from_accounting,
    )


class PyslurmBackend:
    """SlurmBackend over pyslurm's API (jobs, db.jobs, nodes)."""

    def __init__(self, settings: SlurmSettings, module: Any | None = None) -> None:
        self.settings = settings
        self._pyslurm = module if module is not None else load_pyslurm()
        self._unknown_states: set[tuple[int, str]] = set()
        conf = str(settings.slurm_conf) if settings.slurm_conf else None
        self._folders = JobFolders(
            LocalRunner(slurm_conf=conf, command_prefix=settings.command_prefix),
            settings.command_timeout_seconds,
        )

    async def _call(self, function: Callable[[], T], *, submitting: bool = False) -> T:
        try:
            async with asyncio.timeout(self.settings.command_timeout_seconds):
                return await asyncio.to_thread(function)
        except TimeoutError:
            raise SlurmCommandTimeout(["pyslurm"], self.settings.command_timeout_seconds) from None
        except SlurmError:
            raise
        except Exception as exc:
            raise pyslurm_failure(exc, submitting=submitting) from exc

    async def submit(
        self, submission: JobSubmission, *, since: datetime | None = None, look_up: bool = True
    ) -> int:
        script = guard_script(submission.script)
        try:
            existing = (
                (await self.query([submission.name], since=since)).get(submission.name) if look_up else None
            )
        except SlurmUnavailable:
            raise
        except SlurmError as exc:
            raise SlurmUnavailable(
                f"the look-up of {submission.name} before submitting it failed, nothing was submitted: {exc}"
            ) from exc
        if existing is not None:
            raise JobAlreadySubmitted(submission.name, existing.slurm_job_id)
        if submission.private_workdir:
            await self._private_folder(submission)

        def submit() -> Any:
            description = self._pyslurm.JobSubmitDescription(
                name=submission.name,
                script=script,
                partitions=[self.settings.partition],
                ntasks=submission.ntasks,
                cpus_per_task=submission.cpus_per_task,
                memory_per_cpu=f"{submission.mem_per_cpu_mb}M",
                gpus=submission.gpus or None,
                time_limit=submission.time_limit_minutes,
                working_directory=submission.workdir,
                standard_output=submission.output_path,
                user_id=submission.unix_user,
            )
            return description.submit()

        return int(await self._call(submit, submitting=True))

    async def query(
        self,
        names: Collection[str],
        *,
        since: datetime | None = None,
        slurm_ids: Mapping[str, int] | None = None,
    ) -> QueryResult:
        """One load of every job, matched by name (`slurm_ids` is not needed: the API answers in
        structures, not lines)."""
        wanted = frozenset(names)
        live = await self._call(self._pyslurm.Jobs.load)

        def recent(job: Any) -> bool:
            submitted = getattr(job, "submit_time", None)
            return since is None or not isinstance(submitted, int) or submitted >= since.timestamp()

        found = [
            observed_from_pyslurm(job, from_accounting=False)
            for job in live.values()
            if job.name in wanted and recent(job)
        ]
        missing = wanted - {job.name for job in found}
        answered = True
        if missing:
            try:
                db_filter = self._pyslurm.db.JobFilter(names=sorted(missing))
                records = await self._call(lambda: self._pyslurm.db.Jobs.load(db_filter))
                found += [
                    observed_from_pyslurm(job, from_accounting=True)
                    for job in records.values()
                    if recent(job)
                ]
            except SlurmUnavailable:
                answered = False
        jobs = latest_by_name(found)
        log_unknown_states(jobs.values(), self._unknown_states)
        not_found = wanted - jobs.keys()
        return QueryResult(jobs, not_found, not not_found or answered, answered)

    async def cancel(self, slurm_job_id: int) -> None:
        await self._call(lambda: self._pyslurm.Job(slurm_job_id).cancel())

    async def extend_time_limit(self, slurm_job_id: int, extra_minutes: int) -> None:
        def extend() -> None:
            job = self._pyslurm.Job.load(slurm_job_id)
            change = self._pyslurm.JobSubmitDescription(time_limit=int(job.time_limit) + extra_minutes)
            job.modify(change)

        await self._call(extend)

    async def describe_partition(self) -> PartitionHardware:
        nodes = await self._call(self._pyslurm.Nodes.load)
        found = [
            NodeHardware(
                name=str(node.name),
                cpus=int(node.total_cpus),
                memory_mb=int(node.real_memory),
                gpus=int(dict(getattr(node, "configured_gres", {}) or {}).get("gpu", 0)),
            )
            for node in nodes.values()
            if self.settings.partition in (node.partitions or [])
        ]
        if not found:
            raise SlurmOutputError(f"pyslurm: partition {self.settings.partition!r} has no nodes")
        return PartitionHardware(self.settings.partition, tuple(sorted(found, key=lambda n: n.name)))

    async def health(self) -> SlurmHealth:
        problems: list[str] = []
        reachable = accounting = False
        try:
            await self._call(self._pyslurm.Jobs.load)
            reachable = True
        except SlurmError as exc:
            problems.append(f"slurmctld: {exc}")
        try:
            await self._call(lambda: self._pyslurm.db.Jobs.load(self._pyslurm.db.JobFilter(ids=[1])))
            accounting = True
        except SlurmError as exc:
            problems.append(f"accounting: {exc}")
        guarantee = SlurmHealth(reachable, accounting).finished_jobs_guarantee
        return SlurmHealth(reachable, accounting, guarantee, tuple(problems))

    async def _private_folder(self, submission: JobSubmission) -> None:
        """Made as the job's user through runuser on this machine, as the command backends do."""
        user = submission.unix_user
        exists = await self._folders.runner.run(
            user_exists_argv(user), timeout=self.settings.command_timeout_seconds
        )
        if exists.returncode != 0:
            raise UnixUserMissing(user)
        await self._folders.ensure(submission.workdir, user, user)

    async def job_folder_entries(self, root: str) -> list[FolderEntry]:
        return await self._folders.entries(root)

    async def remove_job_folder(self, folder: str, unix_user: str) -> None:
        await self._folders.remove(folder, unix_user)

    async def close(self) -> None:
        return None
