"""Submitting batch jobs through libslurm's own call, in worker threads: no sbatch process per job.

Under a burst, starting one sbatch process per job costs more CPU than everything else the daemon
does for it (about 5 ms a job against 0.4 ms for the call itself). The job Slurm receives is the one
sbatch would have sent for the same command line: the same resources, the same environment (the
runner's, plus the variables sbatch adds: the job name, the submitter's resource limits, nice value,
umask, submit directory and host, task and CPU counts), so the job cannot tell which way it came.

The binding is compiled against the site's headers (`libslurm_build`); where it is missing or was
built for another libslurm, `load` says why and the daemon submits with sbatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import os
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from supervisor.slurm import commands, parsing
from supervisor.slurm.errors import BackendUnavailable, SlurmCommandTimeout, SlurmError, SlurmUnavailable
from supervisor.slurm.libslurm_build import BINDING_REVISION, MODULE_NAME
from supervisor.slurm.models import JobSubmission

#: The operator's extra sbatch options the call can carry, by the job description field they set.
#: Any other option keeps submissions on sbatch (which alone knows all of them).
LIBRARY_OPTIONS = {
    "--account": "account",
    "--qos": "qos",
    "--reservation": "reservation",
    "--constraint": "features",
    "--comment": "comment",
}
#: The resource limits sbatch passes on to the job (Slurm's order), as `SLURM_RLIMIT_<name>`.
RLIMITS = ("CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS")
_UNLIMITED = 2**64 - 1  # RLIM_INFINITY as Slurm prints it
#: Threads making calls at once: slurmctld serialises job creation, more would only queue there.
WORKERS = 4
_CALL = "slurm_submit_batch_job"
T = TypeVar("T")


class UnmappedOption(ValueError):
    """An extra sbatch option the library call cannot carry."""


def library_options(extra_args: Iterable[str]) -> dict[str, str]:
    """The job description fields for the operator's extra options (`--name=value` forms only)."""
    fields: dict[str, str] = {}
    for arg in extra_args:
        option, equals, value = arg.partition("=")
        field = LIBRARY_OPTIONS.get(option)
        if field is None or not equals or not value:
            raise UnmappedOption(
                f"extra sbatch option {arg!r} has no libslurm equivalent here "
                f"(those that have: {', '.join(f'{name}=...' for name in LIBRARY_OPTIONS)})"
            )
        fields[field] = value
    return fields


def propagated_rlimits(propagate: str | None, propagate_except: str | None) -> tuple[str, ...]:
    """The limits PropagateResourceLimits(-Except) pass on: all by default, NONE for none."""

    def names(text: str) -> set[str]:
        return {part.strip().upper() for part in text.split(",") if part.strip()}

    if propagate_except:
        excluded = names(propagate_except)
        return () if "ALL" in excluded else tuple(name for name in RLIMITS if name not in excluded)
    chosen = names(propagate or "ALL")
    if "NONE" in chosen:
        return ()
    if "ALL" in chosen:
        return RLIMITS
    return tuple(name for name in RLIMITS if name in chosen)


@dataclass(frozen=True)
class SubmitterProcess:
    """What sbatch reads from its own process into a job's environment: the daemon's, since sbatch
    would inherit them from it."""

    rlimits: Mapping[str, int]
    nice: int
    umask: int
    submit_dir: str
    submit_host: str

    @classmethod
    def current(cls) -> SubmitterProcess:
        limits = {}
        for name in RLIMITS:
            soft = resource.getrlimit(getattr(resource, f"RLIMIT_{name}"))[0]
            limits[name] = _UNLIMITED if soft == resource.RLIM_INFINITY else soft
        return cls(limits, os.getpriority(os.PRIO_PROCESS, 0), _umask(), os.getcwd(), socket.gethostname())


def _umask() -> int:
    """The process's umask, read where Linux shows it: setting it to read it back would change it
    for a moment under the daemon's other threads."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split(":", 1)[1].strip(), 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def batch_environment(
    base: Mapping[str, str],
    submission: JobSubmission,
    process: SubmitterProcess,
    rlimits: Sequence[str],
) -> list[str]:
    """The job's environment as sbatch would send it: `base` (what the runner gives sbatch), then
    the variables sbatch sets itself, in its order."""
    values = dict(base)
    values["SLURM_JOB_NAME"] = submission.name
    for name in rlimits:
        values[f"SLURM_RLIMIT_{name}"] = str(process.rlimits[name])
    values["SLURM_PRIO_PROCESS"] = str(process.nice)
    values["SLURM_SUBMIT_DIR"] = process.submit_dir
    values["SLURM_SUBMIT_HOST"] = process.submit_host
    values["SLURM_UMASK"] = f"{process.umask:04o}"
    if submission.gpus > 0:
        values["SLURM_GPUS"] = str(submission.gpus)
    values["SLURM_CPUS_PER_TASK"] = str(submission.cpus_per_task)
    values["SLURM_NPROCS"] = str(submission.ntasks)
    values["SLURM_NTASKS"] = str(submission.ntasks)
    return [f"{key}={value}" for key, value in values.items()]


@dataclass(frozen=True)
class BatchJob:
    """Everything one submission call sends, fixed before it goes to a worker thread."""

    submission: JobSubmission
    script: str
    partition: str
    uid: int
    gid: int
    #: What the runner would give sbatch; the submitter adds what sbatch adds itself.
    base_environment: Mapping[str, str]
    options: Mapping[str, str]
    submit_line: str


#: Where Debian's libslurm looks without SLURM_CONF.
DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"
_init_lock = threading.Lock()
_initialised: list[str] = []


def load(slurm_conf: str | None) -> Any:
    """The compiled binding, its library loaded and initialised with `slurm_conf` (once a process).

    Raises BackendUnavailable saying what is missing."""
    try:
        module = importlib.import_module(MODULE_NAME)
    except ImportError as exc:
        raise BackendUnavailable(
            f"the libslurm binding is not built ({exc}): run `grid-supervisor build-libslurm`"
        ) from exc
    except OSError as exc:
        raise BackendUnavailable(f"the libslurm binding does not load: {exc}") from exc
    lib = module.lib
    revision = getattr(lib, "grid_binding_revision", None)
    if revision is None or module.ffi.string(revision()).decode() != BINDING_REVISION:
        raise BackendUnavailable(
            "the libslurm binding was built by another release of grid-supervisor: run "
            "`grid-supervisor build-libslurm` again"
        )
    try:
        library = _open_library(module)
    except OSError as exc:
        raise BackendUnavailable(f"libslurm does not load: {exc}") from exc
    built, running = int(lib.grid_built_api_version()), int(lib.slurm_api_version())
    if built != running:
        raise BackendUnavailable(
            f"the libslurm binding was built for API {built:#x}, {library} is {running:#x} (Slurm was "
            "upgraded): run `grid-supervisor build-libslurm` again"
        )
    # Without a path libslurm reads SLURM_CONF's file, else its default: the file is what counts.
    slurm_conf = os.path.realpath(slurm_conf or os.environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF)
    if not os.access(slurm_conf, os.R_OK):
        raise BackendUnavailable(f"libslurm needs a readable slurm.conf, {slurm_conf} is not")
    with _init_lock:
        if not _initialised:
            _probe_init(slurm_conf)
            lib.slurm_init(slurm_conf.encode())
            _initialised.append(slurm_conf)
        elif _initialised[0] != slurm_conf:
            raise BackendUnavailable(
                f"libslurm is already initialised with {_initialised[0]!r} in this process, not {slurm_conf!r}"
            )
    return module


def _probe_init(slurm_conf: str) -> None:
    """Initialise libslurm in a child process first: libslurm ends the whole process on a
    configuration it cannot read, which must cost a fallback to sbatch, not the daemon."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, slurm_conf],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendUnavailable(f"libslurm's initialisation could not be tried: {exc}") from exc
    if probe.returncode != 0 or probe.stdout.strip() != "ok":
        said = (probe.stderr or probe.stdout).strip()[-300:]
        ended = (
            f"killed by signal {-probe.returncode}"
            if probe.returncode < 0
            else f"exit status {probe.returncode}"
        )
        raise BackendUnavailable(f"libslurm cannot initialise with {slurm_conf} ({ended}): {said}")


def _open_library(module: Any) -> str:
    """Load the libslurm the binding was built against into the global namespace (Slurm's plugins
    resolve their symbols there); its path."""
    library = str(module.ffi.string(module.lib.grid_library_path()).decode())
    ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
    return library


def initialise_here(slurm_conf: str) -> None:
    """What the probe process runs: the binding loaded and libslurm initialised, nothing sent."""
    module = importlib.import_module(MODULE_NAME)
    _open_library(module)
    module.lib.slurm_init(slurm_conf.encode())
    print("ok")


PROBE_TIMEOUT_S = 30
_PROBE = "import sys\nfrom supervisor.slurm.libslurm import initialise_here\ninitialise_here(sys.argv[1])\n"


class LibslurmSubmitter:
    """Batch submissions through `slurm_submit_batch_job`, a few worker threads at a time."""

    def __init__(self, module: Any, timeout_seconds: float) -> None:
        self._ffi = module.ffi
        self._lib = module.lib
        self._timeout = timeout_seconds
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="libslurm")
        self._process = SubmitterProcess.current()
        self._rlimits: tuple[str, ...] | None = None

    async def submit(self, job: BatchJob) -> int:
        if self._rlimits is None:  # which limits the cluster propagates: slurmctld's setting, asked once
            self._rlimits = await self._in_thread(self._load_rlimits, "slurm_load_ctl_conf")
        environment = batch_environment(job.base_environment, job.submission, self._process, self._rlimits)
        return await self._in_thread(lambda: self._submit(job, environment), _CALL)

    async def _in_thread(self, call: Callable[[], T], name: str) -> T:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                return await loop.run_in_executor(self._pool, call)
        except TimeoutError:
            raise SlurmCommandTimeout([name], self._timeout) from None

    def _failure(self, call: str, what: str) -> SlurmError:
        """The error of a failed call by its cause, read as sbatch's message `<what>: <strerror>`
        (so a refusal names the same reason either way)."""
        errno = int(self._lib.slurm_get_errno())
        text = self._ffi.string(self._lib.slurm_strerror(errno)).decode(errors="replace")
        return parsing.command_failure([call], errno, f"{what}: {text}")

    def _load_rlimits(self) -> tuple[str, ...]:
        answer = self._ffi.new("slurm_conf_t **")
        if self._lib.slurm_load_ctl_conf(0, answer) != 0:
            failure = self._failure("slurm_load_ctl_conf", "Reading the controller's configuration failed")
            raise failure if isinstance(failure, SlurmUnavailable) else SlurmUnavailable(str(failure))
        try:
            conf = answer[0]
            return propagated_rlimits(
                self._text(conf.propagate_rlimits), self._text(conf.propagate_rlimits_except)
            )
        finally:
            self._lib.slurm_free_ctl_conf(answer[0])

    def _text(self, value: Any) -> str | None:
        return None if value == self._ffi.NULL else self._ffi.string(value).decode(errors="replace")

    def _submit(self, job: BatchJob, environment: Sequence[str]) -> int:
        ffi, lib = self._ffi, self._lib
        kept: list[Any] = []  # the C strings live until the call returns

        def text(value: str) -> Any:
            buffer = ffi.new("char[]", value.encode())
            kept.append(buffer)
            return buffer

        submission = job.submission
        description = ffi.new("job_desc_msg_t *")
        lib.slurm_init_job_desc_msg(description)
        description.name = text(submission.name)
        description.partition = text(job.partition)
        description.script = text(job.script)
        description.work_dir = text(submission.workdir)
        description.std_out = text(submission.output_path)
        description.num_tasks = submission.ntasks
        description.cpus_per_task = submission.cpus_per_task
        description.min_cpus = submission.ntasks * submission.cpus_per_task
        description.pn_min_memory = submission.mem_per_cpu_mb | lib.MEM_PER_CPU
        description.time_limit = submission.time_limit_minutes
        description.user_id = job.uid
        description.group_id = job.gid
        if submission.gpus > 0:
            description.tres_per_job = text(f"gres:gpu:{submission.gpus}")
        for field, value in job.options.items():
            setattr(description, field, text(value))
        description.submit_line = text(job.submit_line)
        entries = ffi.new("char *[]", [text(entry) for entry in environment] + [ffi.NULL])
        description.environment = entries
        description.env_size = len(environment)
        answer = ffi.new("submit_response_msg_t **")
        if lib.slurm_submit_batch_job(description, answer) != 0:
            raise self._failure(_CALL, "Batch job submission failed")
        try:
            return int(answer[0].job_id)
        finally:
            lib.slurm_free_submit_response_response_msg(answer[0])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def submit_line(
    submission: JobSubmission, partition: str, extra_args: Sequence[str], ids: tuple[int, int]
) -> str:
    """The sbatch command line this submission stands for (what `sacct -o SubmitLine` shows)."""
    return " ".join(commands.sbatch_argv(submission, partition, extra_args, as_ids=ids))
