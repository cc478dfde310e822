"""The real log service as a process, the real writer on a real FIFO, and jobs on a real chain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from grid_dev.anvil import free_port
from grid_logger import environment as env
from grid_logger import signing
from grid_logger.reader import LogLine, read_log
from grid_logger.store import create_master_key
from tests.fixtures.contracts import CREDIT, Grid

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 30.0
RUNNING = 3
FINISHED = 5


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass
class LoggerProcess:
    """`grid-logger serve`; restartable on the same port and store."""

    workdir: Path
    rpc_url: str
    meta_scheduler: str
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def storage(self) -> Path:
        return self.workdir / "logs"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "logger.log"

    def env(self) -> dict[str, str]:
        key = self.workdir / "master.key"
        if not key.exists():
            create_master_key(key)
        return {
            **os.environ,
            "GRID_LOGGER_LISTEN_ADDRESS": self.target,
            "GRID_LOGGER_STORAGE_PATH": str(self.storage),
            "GRID_LOGGER_MASTER_KEY_FILE": str(key),
            "GRID_LOGGER_RPC_URL": self.rpc_url,
            "GRID_LOGGER_METASCHEDULER_ADDRESS": self.meta_scheduler,
            "GRID_LOGGER_JOB_CACHE_SECONDS": "0.2",
            **self.extra_env,
        }

    def start(self) -> LoggerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        out = self.log_file.open("ab")
        marker = self.log_file.stat().st_size
        self.process = subprocess.Popen(
            [str(BIN / "grid-logger"), "serve"], env=self.env(), stdout=out, stderr=subprocess.STDOUT
        )
        process = self.process

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"grid-logger serve exited {process.returncode}: {self.text()[-2000:]}")
            with self.log_file.open("rb") as log:
                log.seek(marker)
                return b"grid-logger listening on" in log.read()

        wait_for("grid-logger serve to listen", listening, START_TIMEOUT_S)
        return self

    def text(self) -> str:
        return self.log_file.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no drain, no fsync at exit."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)

    def rss_kib(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@dataclass
class Job:
    """A job on chain, claimed by its provider (SCHEDULED: hot)."""

    grid: Grid
    job_id: bytes
    customer: LocalAccount
    provider: LocalAccount

    @property
    def name(self) -> str:
        return "0x" + self.job_id.hex()

    def token(self, signer: LocalAccount | None = None) -> str:
        key = (signer or self.provider).key
        return signing.mint_write_token(
            key, self.grid.deployment.meta_scheduler, self.name, self.customer.address
        )

    def sign(self, text: bytes) -> bytes:
        return signing.sign(self.customer.key, text)

    def finish(self) -> None:
        scheduler = self.grid.scheduler.functions
        self.grid.send(self.provider, scheduler.providerSetJobStatus(self.job_id, RUNNING, 0, "", 0))
        self.grid.send(self.provider, scheduler.providerSetJobStatus(self.job_id, FINISHED, 1, "", 0))

    def writer_env(self, logger: LoggerProcess, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            env.URL: logger.target,
            env.LOG_NAME: self.name,
            env.USER: self.customer.address.lower(),
            env.TOKEN: self.token(),
            env.TLS: "0",
            **extra,
        }


def claimed_job(grid: Grid, customer_index: int = 0, provider_index: int = 0) -> Job:
    provider, customer = grid.providers[provider_index], grid.customers[customer_index]
    if not grid.provider_manager.functions.isValidForScheduling(provider.address).call():
        grid.register_provider(provider)
    job_id = grid.request_job(customer, 200 * CREDIT)
    grid.schedule(job_id, provider)
    grid.claim(provider)
    return Job(grid, job_id, customer, provider)


@dataclass
class WriterProcess:
    """`grid-logger write` on a FIFO; `open()` gives the job's end of it."""

    process: subprocess.Popen[bytes]
    fifo: Path
    stderr_path: Path

    def open(self) -> int:
        wait_for("the writer's FIFO", lambda: self.fifo.is_fifo(), 30)
        return os.open(self.fifo, os.O_WRONLY)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def start_writer(workdir: Path, environment: dict[str, str], name: str = "writer") -> WriterProcess:
    fifo = workdir / f"{name}.fifo"
    stderr_path = workdir / f"{name}.stderr"
    process = subprocess.Popen(
        [str(BIN / "grid-logger"), "write", "--pipe", str(fifo)],
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=stderr_path.open("ab"),
        stderr=subprocess.STDOUT,
    )
    return WriterProcess(process, fifo, stderr_path)


@contextlib.contextmanager
def running_writer(
    workdir: Path, environment: dict[str, str], name: str = "writer"
) -> Iterator[WriterProcess]:
    writer = start_writer(workdir, environment, name)
    try:
        yield writer
    finally:
        writer.kill()


async def collect(
    logger: LoggerProcess, job: Job, *, follow: bool = True, since_ns: int = 0
) -> list[LogLine]:
    return [
        line
        async for line in read_log(
            logger.target, None, job.customer.address, job.name, job.sign, follow=follow, since_ns=since_ns
        )
    ]


async def collect_until(logger: LoggerProcess, job: Job, count: int, timeout: float = 30.0) -> list[LogLine]:
    """What a non-following Read gives, once it has at least `count` lines (or at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        got = await collect(logger, job, follow=False)
        if len(got) >= count or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def logger(grid: Grid, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggerProcess]:
    """The module's log service, on the module's deployed grid."""
    service = LoggerProcess(
        tmp_path_factory.mktemp("logger"), grid.anvil.http_url, grid.deployment.meta_scheduler
    ).start()
    try:
        yield service
    finally:
        service.stop()
