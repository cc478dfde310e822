"""`grid-dev up`: a whole grid on one machine, the first example workflow run to settlement.

It starts anvil, deploys the protocol, starts the log service, the sbatch service, the Slurm cluster
(when it is not up already), the meta-scheduler oracle and the supervisor, each logging to a file of
one run folder; submits the example as a customer, prints every status change, the job's output as
its customer reads it live from the log service, and the balances before and after, then stops what
it started, by process id. A component that fails is named with its log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from grid_contracts.deploy import DeployError, Deployment, deploy
from grid_dev.anvil import REPO_ROOT, TEST_MNEMONIC, Anvil, AnvilError, free_port, start_anvil
from grid_dev.chain import CREDIT, GridError, Target, format_credits
from grid_dev.customer import CustomerSession
from grid_dev.job_tools import JobToolsError, ensure_job_tools, reachable_by_everyone
from grid_dev.logs import print_logs
from grid_protocol.abi import load_abi
from supervisor.chain.keys import Signer

Account.enable_unaudited_hdwallet_features()

#: PROTOCOL.md section 3: GPU 8.5, CPU 0.95, MEM 0.00008 credits per minute.
WORKED_EXAMPLE_PRICES = {"gpu_per_min": "8.5", "cpu_per_min": "0.95", "mem_per_min": "0.00008"}
CUSTOMER_CREDITS = 1000
#: The first example workflow of the workflow format's documentation, its output streamed to the
#: log service over a few seconds.
EXAMPLE_WORKFLOW = """\
enableLogging: true
resources: { tasks: 1, cpusPerTask: 1, memPerCpu: 1024, gpus: 0 }
steps:
  - name: hello-world
    run:
      command: |
        echo "hello world"
        for i in 1 2 3; do sleep 1; echo "still here ($i)"; done
"""
#: How long the customer's reader may take, after the job settled, to print the last lines.
LOG_READ_GRACE_S = 60.0
SERVICE_START_TIMEOUT_S = 60.0
REGISTRATION_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 40.0
DEFAULT_RUNS_ROOT = Path("/var/lib/grid-dev")
ADMIN, ORACLE, PROVIDER, CUSTOMER = 0, 1, 2, 5


class LocalGridError(RuntimeError):
    """A component failed; the message names it and where its log is."""


def anvil_account(index: int) -> LocalAccount:
    account: LocalAccount = Account.from_mnemonic(TEST_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return account


@dataclass(frozen=True)
class UpOptions:
    keep_running: bool = False
    run_dir: Path | None = None
    credits: int = 200 * CREDIT
    bootstrap: bool = True
    job_timeout_seconds: float = 600.0
    start_cluster: bool = True


@dataclass
class Component:
    """Something `up` started: a process (stopped by its pid) or any other thing with a stop action."""

    name: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    stop_action: Callable[[], None] | None = None

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def check(self) -> None:
        if not self.alive():
            assert self.process is not None
            raise LocalGridError(
                f"{self.name} exited with status {self.process.returncode}; its log: {self.log}"
            )

    def stop(self) -> None:
        if self.stop_action is not None:
            self.stop_action()
            return
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def default_run_dir() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for root in (DEFAULT_RUNS_ROOT, Path("/var/tmp/grid-dev")):
        try:
            root.mkdir(parents=True, exist_ok=True)
            root.chmod(0o755)
        except OSError:
            continue
        if os.access(root, os.W_OK):
            path = root / f"run-{stamp}-{os.getpid()}"
            return path
    raise LocalGridError(f"no writable folder for the run among {DEFAULT_RUNS_ROOT} and /var/tmp/grid-dev")


def shared_folder(run_dir: Path) -> Path:
    """Where job users (not root) write job folders: in the run folder when they can reach it, else in
    a folder of /var/tmp/grid-dev named after the run (a private temporary folder hides the run's)."""
    if reachable_by_everyone(run_dir):
        return run_dir / "shared"
    outside = Path("/var/tmp/grid-dev") / f"{run_dir.name}-{os.getpid()}-shared"
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.parent.chmod(0o755)
    return outside


def write_private(path: Path, text: str) -> None:
    """A file only its owner may read (keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def wait_until(
    what: str, condition: Callable[[], bool], timeout: float, check: Callable[[], None], log: Path
) -> None:
    """Poll `condition` (after `check`, which raises when a component died) until true or the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        check()
        if condition():
            return
        if time.monotonic() > deadline:
            raise LocalGridError(f"{what} did not happen within {timeout:.0f} s; see {log}")
        time.sleep(0.2)


@dataclass
class Balances:
    customer: int
    provider: int
    cut: int


@dataclass
class LocalGrid:
    options: UpOptions
    echo: Callable[[str], None] = print
    components: list[Component] = field(default_factory=list)
    run_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.run_dir = self.options.run_dir or default_run_dir()
        self.admin = anvil_account(ADMIN)
        self.oracle = anvil_account(ORACLE)
        self.provider = anvil_account(PROVIDER)
        self.customer = anvil_account(CUSTOMER)

    def say(self, text: str) -> None:
        self.echo(f"[{datetime.now().strftime('%H:%M:%S')}] {text}")

    # -- the whole run ------------------------------------------------------------------------

    def up(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)
        self.say(f"run folder {self.run_dir} (every component logs there)")
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            self._start_everything()
            asyncio.run(self._run_example())
            if self.options.keep_running:
                self._stay_up()
        except KeyboardInterrupt:
            self.say("interrupted")
        finally:
            self._stop_everything()
            signal.signal(signal.SIGTERM, previous)

    def check_components(self) -> None:
        for component in self.components:
            component.check()

    # -- starting -----------------------------------------------------------------------------

    def _start_everything(self) -> None:
        if self.options.bootstrap:
            self._run_step("bootstrap", ["bash", str(REPO_ROOT / "scripts" / "bootstrap.sh")])
        self.anvil = self._start_anvil()
        self.deployment = self._deploy()
        self.shared = shared_folder(self.run_dir)
        self.cache = self.shared / "cache"
        cache_folders = [
            self.cache / name for name in ("persistent", "world-tmp", "disk", "disk/tmp", "disk/world-tmp")
        ]
        for folder in (
            self.shared,
            self.shared / "jobs",
            self.shared / "storage",
            self.cache,
            *cache_folders,
        ):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o1777)  # job users (grid-svc) write their job folders here
        if self.shared.parent != self.run_dir:
            self.say(f"job folders in {self.shared} (job users cannot reach {self.run_dir})")
        self._install_job_tools()
        self._start_logger()
        self._start_sbatch_service()
        self._start_cluster()
        self._start_oracle()
        self._start_supervisor()

    def _run_step(self, name: str, command: list[str]) -> None:
        log = self.run_dir / f"{name}.log"
        with log.open("ab") as out:
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            raise LocalGridError(f"{name} failed with status {result.returncode}; its log: {log}")
        self.say(f"{name} done")

    def _start_anvil(self) -> Anvil:
        log = self.run_dir / "anvil.log"
        try:
            anvil = start_anvil(log_path=log, silent=False)
        except AnvilError as exc:
            raise LocalGridError(f"anvil did not start: {exc}; its log: {log}") from None
        self.components.append(Component("anvil", log, anvil.process))
        self.say(f"anvil up at {anvil.http_url} (pid {anvil.pid})")
        return anvil

    def _deploy(self) -> Deployment:
        try:
            deployment = deploy(
                self.anvil.http_url,
                self.admin.key.hex(),
                oracle=self.oracle.address,
                mint={self.customer.address: CUSTOMER_CREDITS * CREDIT},
                auto_approve=True,
            )
        except DeployError as exc:
            raise LocalGridError(f"deploying the contracts failed: {exc}") from None
        self.deployment_file = self.run_dir / "deployment.json"
        deployment.write(self.deployment_file)
        self.customer_key = self.run_dir / "customer.key"
        write_private(self.customer_key, self.customer.key.hex())
        self.say(
            f"contracts deployed: MetaScheduler {deployment.meta_scheduler} "
            f"(admin {self.admin.address}, oracle {self.oracle.address}, customer {self.customer.address} "
            f"with {CUSTOMER_CREDITS} credits); {self.deployment_file}"
        )
        return deployment

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> Component:
        log = self.run_dir / f"{name}.log"
        out = log.open("ab")
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.run_dir, start_new_session=True
        )
        out.close()
        component = Component(name, log, process)
        self.components.append(component)
        return component

    def _install_job_tools(self) -> None:
        log = self.run_dir / "job-tools.log"
        try:
            self.writer = ensure_job_tools(log=log)
        except JobToolsError as exc:
            raise LocalGridError(str(exc)) from None
        self.say(f"job-side log writer ready: {self.writer}")

    def _start_logger(self) -> None:
        self.logger_target = f"127.0.0.1:{free_port()}"
        key = self.run_dir / "logger-master.key"
        self._run_step("logger-keygen", [_tool("grid-logger"), "keygen", str(key)])
        env = {
            **os.environ,
            "GRID_LOGGER_LISTEN_ADDRESS": self.logger_target,
            "GRID_LOGGER_STORAGE_PATH": str(self.run_dir / "logs"),
            "GRID_LOGGER_MASTER_KEY_FILE": str(key),
            "GRID_LOGGER_RPC_URL": self.anvil.http_url,
            "GRID_LOGGER_METASCHEDULER_ADDRESS": self.deployment.meta_scheduler,
        }
        service = self._spawn("grid-logger", [_tool("grid-logger"), "serve"], env)

        def listening() -> bool:
            return b"grid-logger listening on" in service.log.read_bytes()

        wait_until("the log service's port", listening, SERVICE_START_TIMEOUT_S, service.check, service.log)
        self.say(f"log service up: gRPC {self.logger_target}")

    def _start_sbatch_service(self) -> None:
        self.graphql_port, self.grpc_port = free_port(), free_port()
        env = {
            **os.environ,
            "GRID_SBATCH_GRAPHQL_PORT": str(self.graphql_port),
            "GRID_SBATCH_GRPC_PORT": str(self.grpc_port),
            "GRID_SBATCH_RPC_URL": self.anvil.http_url,
            "GRID_SBATCH_METASCHEDULER_ADDRESS": self.deployment.meta_scheduler,
            "GRID_SBATCH_DATABASE": str(self.run_dir / "sbatch.sqlite3"),
            "GRID_SBATCH_STORAGE_ROOT": str(self.shared / "storage"),
            "GRID_SBATCH_LOGGER_URL": self.logger_target,
            # The site's cache folders (README, "Caches and temporary folders"), here in the run's.
            "GRID_SBATCH_SHARED_TMP": str(self.cache / "persistent" / "user-{uid}"),
            "GRID_SBATCH_SHARED_WORLD_TMP": str(self.cache / "world-tmp"),
            "GRID_SBATCH_DISK_TMP": str(self.cache / "disk" / "tmp" / "user-{uid}"),
            "GRID_SBATCH_DISK_WORLD_TMP": str(self.cache / "disk" / "world-tmp"),
        }
        service = self._spawn("sbatch-service", [_tool("grid-sbatch"), "serve"], env)
        health = f"http://127.0.0.1:{self.graphql_port}/health"

        def answers() -> bool:
            try:
                return requests.get(health, timeout=1).text == "ok"
            except requests.RequestException:
                return False

        wait_until(
            "the sbatch service's health answer", answers, SERVICE_START_TIMEOUT_S, service.check, service.log
        )
        self.sbatch_url = f"http://127.0.0.1:{self.graphql_port}/graphql"
        self.say(f"sbatch service up: GraphQL {self.sbatch_url}, gRPC 127.0.0.1:{self.grpc_port}")

    def _start_cluster(self) -> None:
        """Bring the Slurm cluster up; stop it at the end only if none of it was running before (other
        users of a cluster that was already there, even partly, keep it)."""
        script = str(REPO_ROOT / "scripts" / "cluster.sh")
        status = subprocess.run(["bash", script, "status"], capture_output=True, text=True, check=False)
        if status.returncode == 0:
            self.say("Slurm cluster already up (it stays up afterwards)")
            return
        if not self.options.start_cluster:
            raise LocalGridError(
                f"the Slurm cluster is not up ({_down_parts(status.stdout)} down) and --no-start-cluster "
                f"was given: start it with `bash {script} up`"
            )
        existed = " up" in status.stdout
        self._run_step("slurm-cluster", ["bash", script, "up"])
        if existed:
            self.say("Slurm cluster repaired (it was partly up before: it stays up afterwards)")
            return
        log = self.run_dir / "slurm-cluster.log"

        def stop_cluster() -> None:
            with log.open("ab") as out:
                subprocess.run(["bash", script, "down"], stdout=out, stderr=subprocess.STDOUT, check=False)

        self.components.append(Component("the Slurm cluster", log, stop_action=stop_cluster))

    def _start_oracle(self) -> None:
        key = self.run_dir / "oracle.key"
        write_private(key, self.oracle.key.hex())
        command = [
            _tool("grid-dev"),
            "oracle",
            "--rpc",
            self.anvil.http_url,
            "--deployment",
            str(self.deployment_file),
            "--key-file",
            str(key),
            "--poll",
            "1",
        ]
        oracle = self._spawn("oracle", command)
        self.say(f"meta-scheduler oracle started (pid {oracle.process.pid if oracle.process else '?'})")

    def supervisor_config(self) -> str:
        prices = ", ".join(f'{name} = "{value}"' for name, value in WORKED_EXAMPLE_PRICES.items())
        return f"""# Written by grid-dev up for its local grid.
[chain]
rpc_url = "{self.anvil.http_url}"
ws_url = "{self.anvil.ws_url}"
meta_scheduler = "{self.deployment.meta_scheduler}"
chain_id = {self.deployment.chain_id}
start_block = {self.deployment.deploy_block}
poll_interval_seconds = 0.5

[key]
file = "{self.run_dir / "provider.key"}"

[sbatch]
grpc_target = "127.0.0.1:{self.grpc_port}"

[slurm]
partition = "grid"

[slurm.users]
mode = "service_account"
service_account = "grid-svc"

[policy]
jobs_root = "{self.shared / "jobs"}"
slurm_poll_seconds = 1

[registration]
prices = {{ {prices} }}
labels = {{ os = "linux", site = "local-grid" }}

[store]
path = "{self.run_dir / "supervisor.sqlite"}"

[log]
format = "json"

[metrics]
port = {free_port()}

[logger]
tls = false
writer = "{self.writer}"
"""

    def _start_supervisor(self) -> None:
        write_private(self.run_dir / "provider.key", self.provider.key.hex())
        config = self.run_dir / "supervisor.toml"
        config.write_text(self.supervisor_config())
        supervisor = self._spawn("supervisor", [_tool("grid-supervisor"), "run", "--config", str(config)])
        self.say(f"supervisor started for provider {self.provider.address} ({config})")
        w3 = Web3(Web3.HTTPProvider(self.anvil.http_url, request_kwargs={"timeout": 10}))
        manager = w3.eth.contract(
            address=Web3.to_checksum_address(self.deployment.provider_manager),
            abi=load_abi("ProviderManager"),
        )

        def approved() -> bool:
            return bool(manager.functions.isValidForScheduling(self.provider.address).call())

        wait_until(
            "the provider's registration and approval",
            approved,
            REGISTRATION_TIMEOUT_S,
            self.check_components,
            supervisor.log,
        )
        self.say("provider registered and approved")

    # -- the example job ----------------------------------------------------------------------

    async def _balances(self, session: CustomerSession) -> Balances:
        cut = 0
        if "withdrawableCut" in session.contracts.extensions:
            scheduler = session.contracts.meta_scheduler
            cut = int(await scheduler.functions.withdrawableCut().call())
        return Balances(
            await session.balance(self.customer.address), await session.balance(self.provider.address), cut
        )

    async def _run_example(self) -> None:
        target = Target(self.deployment.meta_scheduler, self.deployment.deploy_block)
        workflow = self.run_dir / "hello-world.yaml"
        workflow.write_text(EXAMPLE_WORKFLOW)
        try:
            session = await CustomerSession.open(self.anvil.http_url, target, Signer(self.customer))
        except GridError as exc:
            raise LocalGridError(f"reaching the deployment failed: {exc}") from None
        try:
            before = await self._balances(session)
            submitted = await session.submit(workflow, self.options.credits, self.sbatch_url)
        except GridError as exc:
            await session.close()
            raise LocalGridError(f"submitting the example workflow failed: {exc}") from None
        self.job_id = submitted.job_id
        self.say(
            f"customer submitted {workflow.name} as job {submitted.job_id} "
            f"with {format_credits(submitted.locked)} credits (batch script key {submitted.batch_location_hash})"
        )
        self.say(f"job {submitted.job_id} is PENDING")
        deadline = time.monotonic() + self.options.job_timeout_seconds

        def still_fine() -> None:
            self.check_components()
            if time.monotonic() > deadline:
                raise LocalGridError(
                    f"the job did not settle within {self.options.job_timeout_seconds:.0f} s; "
                    f"logs in {self.run_dir} (supervisor.log, oracle.log)"
                )

        job_bytes = bytes.fromhex(submitted.job_id[2:])
        reader = asyncio.create_task(self._read_log(submitted.job_id))
        try:
            async for transition in session.transitions(
                job_bytes, poll_interval_seconds=0.5, on_idle=still_fine
            ):
                self.say(f"job is {transition.new.name}  (block {transition.block_number})")
            settlement = await session.settlement(job_bytes)
            after = await self._balances(session)
            try:
                await asyncio.wait_for(asyncio.shield(reader), LOG_READ_GRACE_S)
            except TimeoutError:
                self.say(f"the job's log did not end within {LOG_READ_GRACE_S:.0f} s of its settlement")
        finally:
            reader.cancel()
            await session.close()
        self.say(settlement.describe())
        self._print_output(submitted.job_id)
        self._print_balances(before, after)

    async def _read_log(self, job_id: str) -> None:
        """The job's output as its customer reads it: live from the log service until the job ends."""

        def echo(line: str) -> None:
            self.say(f"job log | {line}")

        try:
            count = await print_logs(
                self.logger_target, None, Signer(self.customer), job_id, follow=True, since_ns=0, echo=echo
            )
        except GridError as exc:
            self.say(
                f"reading the job's log failed: {exc}; the log service's log: {self.run_dir / 'grid-logger.log'}"
            )
            return
        self.say(f"job log ended after {count} lines (the job ended on chain)")

    def _print_output(self, job_id: str) -> None:
        """The job's output file, which the supervisor writes in the job's folder `jobs_root/<job id>/`."""
        for path in sorted((self.shared / "jobs" / job_id).glob(f"{job_id}*.out")):
            if path.is_file():
                lines = path.read_text(errors="replace").splitlines()
                self.echo(f"job output ({path}):")
                for line in lines[:20]:
                    self.echo(f"  | {line}")
                if len(lines) > 20:
                    self.echo(f"  | ... ({len(lines) - 20} more lines)")

    def _print_balances(self, before: Balances, after: Balances) -> None:
        rows = [
            (f"customer {self.customer.address}", before.customer, after.customer),
            (f"provider {self.provider.address}", before.provider, after.provider),
            ("grid's cut", before.cut, after.cut),
        ]
        self.echo(f"{'balances (credits)':<52} {'before':>14} {'after':>14} {'change':>14}")
        for label, old, new in rows:
            change = new - old
            sign = "+" if change > 0 else ""
            self.echo(
                f"{label:<52} {format_credits(old):>14} {format_credits(new):>14} "
                f"{sign + format_credits(change):>14}"
            )

    # -- staying up and stopping --------------------------------------------------------------

    def _stay_up(self) -> None:
        common = f"--rpc {self.anvil.http_url} --deployment {self.deployment_file}"
        self.echo(
            "\n".join(
                [
                    "the local grid is up:",
                    f"  JSON-RPC        {self.anvil.http_url} (WebSocket {self.anvil.ws_url}), chain id "
                    f"{self.deployment.chain_id}",
                    f"  MetaScheduler   {self.deployment.meta_scheduler}",
                    f"  deployment      {self.deployment_file}",
                    f"  sbatch service  {self.sbatch_url} (gRPC 127.0.0.1:{self.grpc_port})",
                    f"  log service     {self.logger_target} (gRPC)",
                    f"  customer key    {self.customer_key} ({self.customer.address})",
                    f"  logs            {self.run_dir}",
                    "submit more jobs with:",
                    f"  grid-dev submit WORKFLOW.yaml --credits 150 --sbatch-url {self.sbatch_url} "
                    f"--key-file {self.customer_key} {common}",
                    f"  grid-dev watch JOB_ID {common}",
                    f"  grid-dev cancel JOB_ID --key-file {self.customer_key} {common}",
                    f"  grid-dev topup JOB_ID --credits 50 --key-file {self.customer_key} {common}",
                    f"  grid-dev logs JOB_ID --follow --logger-url {self.logger_target} --key-file {self.customer_key}",
                    "press Ctrl-C to stop everything",
                ]
            ),
        )
        stop = threading.Event()
        while not stop.wait(1.0):
            self.check_components()

    def _stop_everything(self) -> None:
        for component in reversed(self.components):
            try:
                component.stop()
                self.say(f"stopped {component.name}")
            except Exception as exc:
                self.say(f"stopping {component.name} failed: {exc}; its log: {component.log}")
        self.components.clear()


def _down_parts(status_output: str) -> str:
    parts = [line.split()[0] for line in status_output.splitlines() if line.strip().endswith(" down")]
    return ", ".join(parts) or "some parts"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _tool(name: str) -> str:
    """A console script of this package, beside the running Python."""
    return str(Path(sys.executable).parent / name)
