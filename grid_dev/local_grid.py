"""`grid-dev up`: a whole grid on one machine, the first example workflow run to settlement.

It starts anvil, deploys the protocol, starts the log service, the sbatch service, the Slurm cluster
(when it is not up already), the meta-scheduler oracle and the supervisor, each logging to a file of
one run folder; submits the example as a customer, prints every status change, the job's output as
its customer reads it live from the log service, and the balances before and after, then stops what
it started, by process id. A component that fails is named with its log.

With several chains (`--chains N`) each chain has its own anvil (chain ids 31337, 31338, ...), its
deployment, log service, sbatch service and oracle (each of those serves one MetaScheduler); one
Slurm cluster and ONE supervisor serve them all (`[[chains]]` in its configuration), and the example
is submitted on every chain at the same moment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from grid_contracts.deploy import DeployError, Deployment, deploy
from grid_dev.anvil import REPO_ROOT, TEST_MNEMONIC, Anvil, AnvilError, free_port, start_anvil
from grid_dev.chain import CREDIT, GridError, Target, format_credits
from grid_dev.customer import CustomerSession, Settlement, Submitted
from grid_dev.job_tools import JobToolsError, ensure_job_tools, reachable_by_everyone
from grid_dev.logs import print_logs
from grid_protocol.abi import load_abi
from supervisor.chain.keys import Signer
from supervisor.config import ConfigError, load_config
from supervisor.slurm.job_folders import job_folder, output_file
from supervisor.slurm.naming import SlurmNamespace
from supervisor.store import Store, StoreError

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
#: anvil's default chain id is the first chain's; the others count up from it.
FIRST_CHAIN_ID = 31337
MAX_CHAINS = 4
T = TypeVar("T")


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
    chains: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.chains <= MAX_CHAINS:
            raise LocalGridError(f"--chains must be between 1 and {MAX_CHAINS}, not {self.chains}")


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
class LocalChain:
    """One deployment of the local grid: its anvil, its contracts, and the services bound to its
    MetaScheduler (log service, sbatch service, oracle). Set up step by step by `LocalGrid`."""

    chain_id: int
    #: The grid's only chain: its files, components and lines keep the plain names of one chain.
    alone: bool
    anvil: Anvil = field(init=False)
    deployment: Deployment = field(init=False)
    deployment_file: Path = field(init=False)
    logger_target: str = field(init=False)
    grpc_port: int = field(init=False)
    sbatch_url: str = field(init=False)

    @property
    def name(self) -> str:
        """The deployment's name in the supervisor's `[[chains]]`."""
        return f"anvil-{self.chain_id}"

    @property
    def suffix(self) -> str:
        """After the names of this chain's files and components: nothing when it is the only chain."""
        return "" if self.alone else f"-{self.chain_id}"

    @property
    def tag(self) -> str:
        """Before what is printed about this chain: nothing when it is the only chain."""
        return "" if self.alone else f"chain {self.chain_id}: "

    @property
    def target(self) -> Target:
        return Target(self.deployment.meta_scheduler, self.deployment.deploy_block)

    @property
    def slurm_namespace(self) -> SlurmNamespace:
        """How the supervisor names this chain's Slurm jobs and job folders."""
        return SlurmNamespace(self.chain_id, self.deployment.meta_scheduler)


@dataclass
class ExampleRun:
    """The example job on one chain, from submission to settlement."""

    chain: LocalChain
    session: CustomerSession
    before: Balances
    submitted: Submitted | None = None
    settlement: Settlement | None = None
    after: Balances | None = None
    slurm_job_id: int | None = None

    @property
    def job_id(self) -> str:
        assert self.submitted is not None
        return self.submitted.job_id

    @property
    def slurm_label(self) -> str:
        return "?" if self.slurm_job_id is None else str(self.slurm_job_id)


async def together(coroutines: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run the coroutines at once; the first LocalGridError stops the others and is raised as itself."""
    tasks: list[asyncio.Task[T]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coroutine) for coroutine in coroutines]
    except* LocalGridError as errors:
        raise errors.exceptions[0] from None
    return [task.result() for task in tasks]


@dataclass
class LocalGrid:
    options: UpOptions
    echo: Callable[[str], None] = print
    components: list[Component] = field(default_factory=list)
    run_dir: Path = field(init=False)
    chains: list[LocalChain] = field(init=False)

    def __post_init__(self) -> None:
        self.run_dir = self.options.run_dir or default_run_dir()
        self.admin = anvil_account(ADMIN)
        self.oracle = anvil_account(ORACLE)
        self.provider = anvil_account(PROVIDER)
        self.customer = anvil_account(CUSTOMER)
        alone = self.options.chains == 1
        self.chains = [LocalChain(FIRST_CHAIN_ID + index, alone) for index in range(self.options.chains)]
        self.customer_key = self.run_dir / "customer.key"
        self.oracle_key = self.run_dir / "oracle.key"
        self.provider_key = self.run_dir / "provider.key"
        self.supervisor_config_file = self.run_dir / "supervisor.toml"

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
        write_private(self.customer_key, self.customer.key.hex())
        for chain in self.chains:
            self._start_anvil(chain)
            self._deploy(chain)
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
        for chain in self.chains:
            self._start_logger(chain)
            self._start_sbatch_service(chain)
        self._start_cluster()
        write_private(self.oracle_key, self.oracle.key.hex())
        for chain in self.chains:
            self._start_oracle(chain)
        self._start_supervisor()

    def _run_step(self, name: str, command: list[str]) -> None:
        log = self.run_dir / f"{name}.log"
        with log.open("ab") as out:
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            raise LocalGridError(f"{name} failed with status {result.returncode}; its log: {log}")
        self.say(f"{name} done")

    def _start_anvil(self, chain: LocalChain) -> None:
        name = f"anvil{chain.suffix}"
        log = self.run_dir / f"{name}.log"
        try:
            chain.anvil = start_anvil(
                log_path=log, silent=False, extra_args=["--chain-id", str(chain.chain_id)]
            )
        except AnvilError as exc:
            raise LocalGridError(f"{name} did not start: {exc}; its log: {log}") from None
        self.components.append(Component(name, log, chain.anvil.process))
        self.say(
            f"{chain.tag}anvil up at {chain.anvil.http_url} (pid {chain.anvil.pid}, chain id {chain.chain_id})"
        )

    def _deploy(self, chain: LocalChain) -> None:
        try:
            chain.deployment = deploy(
                chain.anvil.http_url,
                self.admin.key.hex(),
                oracle=self.oracle.address,
                mint={self.customer.address: CUSTOMER_CREDITS * CREDIT},
                auto_approve=True,
                expected_chain_id=chain.chain_id,
            )
        except DeployError as exc:
            raise LocalGridError(f"{chain.tag}deploying the contracts failed: {exc}") from None
        chain.deployment_file = self.run_dir / f"deployment{chain.suffix}.json"
        chain.deployment.write(chain.deployment_file)
        self.say(
            f"{chain.tag}contracts deployed: MetaScheduler {chain.deployment.meta_scheduler} "
            f"(admin {self.admin.address}, oracle {self.oracle.address}, customer {self.customer.address} "
            f"with {CUSTOMER_CREDITS} credits); {chain.deployment_file}"
        )

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

    def _start_logger(self, chain: LocalChain) -> None:
        """The log service of one chain: it checks writers and readers against that MetaScheduler."""
        chain.logger_target = f"127.0.0.1:{free_port()}"
        key = self.run_dir / f"logger-master{chain.suffix}.key"
        self._run_step(f"logger-keygen{chain.suffix}", [_tool("grid-logger"), "keygen", str(key)])
        env = {
            **os.environ,
            "GRID_LOGGER_LISTEN_ADDRESS": chain.logger_target,
            "GRID_LOGGER_STORAGE_PATH": str(self.run_dir / f"logs{chain.suffix}"),
            "GRID_LOGGER_MASTER_KEY_FILE": str(key),
            "GRID_LOGGER_RPC_URL": chain.anvil.http_url,
            "GRID_LOGGER_METASCHEDULER_ADDRESS": chain.deployment.meta_scheduler,
        }
        service = self._spawn(f"grid-logger{chain.suffix}", [_tool("grid-logger"), "serve"], env)

        def listening() -> bool:
            return b"grid-logger listening on" in service.log.read_bytes()

        wait_until("the log service's port", listening, SERVICE_START_TIMEOUT_S, service.check, service.log)
        self.say(f"{chain.tag}log service up: gRPC {chain.logger_target}")

    def _start_sbatch_service(self, chain: LocalChain) -> None:
        """The sbatch service of one chain: it hands scripts out for that MetaScheduler's jobs."""
        graphql_port, chain.grpc_port = free_port(), free_port()
        env = {
            **os.environ,
            "GRID_SBATCH_GRAPHQL_PORT": str(graphql_port),
            "GRID_SBATCH_GRPC_PORT": str(chain.grpc_port),
            "GRID_SBATCH_RPC_URL": chain.anvil.http_url,
            "GRID_SBATCH_METASCHEDULER_ADDRESS": chain.deployment.meta_scheduler,
            "GRID_SBATCH_DATABASE": str(self.run_dir / f"sbatch{chain.suffix}.sqlite3"),
            "GRID_SBATCH_STORAGE_ROOT": str(self.shared / "storage"),
            "GRID_SBATCH_LOGGER_URL": chain.logger_target,
            # The site's cache folders (README, "Caches and temporary folders"), here in the run's.
            "GRID_SBATCH_SHARED_TMP": str(self.cache / "persistent" / "user-{uid}"),
            "GRID_SBATCH_SHARED_WORLD_TMP": str(self.cache / "world-tmp"),
            "GRID_SBATCH_DISK_TMP": str(self.cache / "disk" / "tmp" / "user-{uid}"),
            "GRID_SBATCH_DISK_WORLD_TMP": str(self.cache / "disk" / "world-tmp"),
        }
        service = self._spawn(f"sbatch-service{chain.suffix}", [_tool("grid-sbatch"), "serve"], env)
        health = f"http://127.0.0.1:{graphql_port}/health"

        def answers() -> bool:
            try:
                return requests.get(health, timeout=1).text == "ok"
            except requests.RequestException:
                return False

        wait_until(
            "the sbatch service's health answer", answers, SERVICE_START_TIMEOUT_S, service.check, service.log
        )
        chain.sbatch_url = f"http://127.0.0.1:{graphql_port}/graphql"
        self.say(
            f"{chain.tag}sbatch service up: GraphQL {chain.sbatch_url}, gRPC 127.0.0.1:{chain.grpc_port}"
        )

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

    def _start_oracle(self, chain: LocalChain) -> None:
        command = [
            _tool("grid-dev"),
            "oracle",
            "--rpc",
            chain.anvil.http_url,
            "--deployment",
            str(chain.deployment_file),
            "--key-file",
            str(self.oracle_key),
            "--poll",
            "1",
        ]
        oracle = self._spawn(f"oracle{chain.suffix}", command)
        self.say(
            f"{chain.tag}meta-scheduler oracle started (pid {oracle.process.pid if oracle.process else '?'})"
        )

    def supervisor_config(self) -> str:
        prices = ", ".join(f'{name} = "{value}"' for name, value in WORKED_EXAMPLE_PRICES.items())
        return f"""# Written by grid-dev up for its local grid.
{self._deployments_config()}
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

    def _deployments_config(self) -> str:
        """`[chain]`, `[key]` and `[sbatch]` for one chain; `[key]` and a `[[chains]]` entry per chain
        (each with its sbatch service; the state files `supervisor.<name>.sqlite`) for several."""
        key = f'[key]\nfile = "{self.provider_key}"\n'

        def fields(chain: LocalChain) -> str:
            return f"""rpc_url = "{chain.anvil.http_url}"
ws_url = "{chain.anvil.ws_url}"
meta_scheduler = "{chain.deployment.meta_scheduler}"
chain_id = {chain.deployment.chain_id}
start_block = {chain.deployment.deploy_block}
poll_interval_seconds = 0.5
"""

        def sbatch(chain: LocalChain, table: str) -> str:
            return f'[{table}]\ngrpc_target = "127.0.0.1:{chain.grpc_port}"\n'

        if len(self.chains) == 1:
            (chain,) = self.chains
            return f"[chain]\n{fields(chain)}\n{key}\n{sbatch(chain, 'sbatch')}"
        entries = [
            f'[[chains]]\nname = "{chain.name}"\n{fields(chain)}\n{sbatch(chain, "chains.sbatch")}'
            for chain in self.chains
        ]
        return "\n".join([key, *entries])

    def _start_supervisor(self) -> None:
        write_private(self.provider_key, self.provider.key.hex())
        config = self.supervisor_config_file
        config.write_text(self.supervisor_config())
        supervisor = self._spawn("supervisor", [_tool("grid-supervisor"), "run", "--config", str(config)])
        served = ", ".join(f"chain {chain.chain_id}" for chain in self.chains)
        self.say(f"supervisor started for provider {self.provider.address} on {served} ({config})")
        managers = [
            Web3(Web3.HTTPProvider(chain.anvil.http_url, request_kwargs={"timeout": 10})).eth.contract(
                address=Web3.to_checksum_address(chain.deployment.provider_manager),
                abi=load_abi("ProviderManager"),
            )
            for chain in self.chains
        ]

        def approved() -> bool:
            return all(
                manager.functions.isValidForScheduling(self.provider.address).call() for manager in managers
            )

        wait_until(
            f"the provider's registration and approval on {served}",
            approved,
            REGISTRATION_TIMEOUT_S,
            self.check_components,
            supervisor.log,
        )
        self.say(f"provider registered and approved on {served}")

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
        """The example on every chain: submitted on all at once, followed side by side to settlement."""
        workflow = self.run_dir / "hello-world.yaml"
        workflow.write_text(EXAMPLE_WORKFLOW)
        runs: list[ExampleRun] = []
        try:
            runs = await together([self._open_example(chain) for chain in self.chains])
            await together([self._submit_example(run, workflow) for run in runs])
            deadline = time.monotonic() + self.options.job_timeout_seconds
            await together([self._follow_example(run, deadline) for run in runs])
        finally:
            for run in runs:
                await run.session.close()
        for run in runs:
            run.slurm_job_id = self._slurm_job_id(run)
            if not run.chain.alone:
                self.echo(f"chain {run.chain.chain_id}:")
            self._print_output(run)
            assert run.after is not None
            self._print_balances(run.before, run.after)
        self._print_settlements(runs)

    async def _open_example(self, chain: LocalChain) -> ExampleRun:
        try:
            session = await CustomerSession.open(chain.anvil.http_url, chain.target, Signer(self.customer))
        except GridError as exc:
            raise LocalGridError(f"{chain.tag}reaching the deployment failed: {exc}") from None
        try:
            return ExampleRun(chain, session, await self._balances(session))
        except GridError as exc:
            await session.close()
            raise LocalGridError(f"{chain.tag}reading the balances failed: {exc}") from None

    async def _submit_example(self, run: ExampleRun, workflow: Path) -> None:
        chain = run.chain
        try:
            submitted = await run.session.submit(workflow, self.options.credits, chain.sbatch_url)
        except GridError as exc:
            raise LocalGridError(f"{chain.tag}submitting the example workflow failed: {exc}") from None
        run.submitted = submitted
        self.say(
            f"{chain.tag}customer submitted {workflow.name} as job {submitted.job_id} "
            f"with {format_credits(submitted.locked)} credits (batch script key {submitted.batch_location_hash})"
        )
        self.say(f"{chain.tag}job {submitted.job_id} is PENDING")

    async def _follow_example(self, run: ExampleRun, deadline: float) -> None:
        """Every status change until the job is cold, its output read live meanwhile, then its
        settlement and the balances."""
        chain = run.chain

        def still_fine() -> None:
            self.check_components()
            if time.monotonic() > deadline:
                raise LocalGridError(
                    f"{chain.tag}the job did not settle within {self.options.job_timeout_seconds:.0f} s; "
                    f"logs in {self.run_dir} (supervisor.log, oracle{chain.suffix}.log)"
                )

        job_bytes = bytes.fromhex(run.job_id[2:])
        reader = asyncio.create_task(self._read_log(chain, run.job_id))
        try:
            async for transition in run.session.transitions(
                job_bytes, poll_interval_seconds=0.5, on_idle=still_fine
            ):
                self.say(f"{chain.tag}job is {transition.new.name}  (block {transition.block_number})")
            settlement = await run.session.settlement(job_bytes)
            run.settlement = settlement
            run.after = await self._balances(run.session)
            try:
                await asyncio.wait_for(asyncio.shield(reader), LOG_READ_GRACE_S)
            except TimeoutError:
                self.say(
                    f"{chain.tag}the job's log did not end within {LOG_READ_GRACE_S:.0f} s of its settlement"
                )
        except GridError as exc:
            raise LocalGridError(f"{chain.tag}following the example job failed: {exc}") from None
        finally:
            reader.cancel()
        self.say(f"{chain.tag}{settlement.describe()}")

    async def _read_log(self, chain: LocalChain, job_id: str) -> None:
        """The job's output as its customer reads it: live from the log service until the job ends."""

        def echo(line: str) -> None:
            self.say(f"{chain.tag}job log | {line}")

        try:
            count = await print_logs(
                chain.logger_target, None, Signer(self.customer), job_id, follow=True, since_ns=0, echo=echo
            )
        except GridError as exc:
            log = self.run_dir / f"grid-logger{chain.suffix}.log"
            self.say(f"{chain.tag}reading the job's log failed: {exc}; the log service's log: {log}")
            return
        self.say(f"{chain.tag}job log ended after {count} lines (the job ended on chain)")

    def _slurm_job_id(self, run: ExampleRun) -> int | None:
        """The Slurm job the supervisor ran the example as, from its state file for that chain (the
        configuration says where each deployment's file is)."""
        try:
            deployments = load_config(self.supervisor_config_file).deployments
        except ConfigError:
            return None
        store_path = next(d.store_path for d in deployments if d.chain.chain_id == run.chain.chain_id)
        try:
            store = Store.open(store_path)
        except StoreError:
            return None
        try:
            record = store.get_job(run.job_id)
        finally:
            store.close()
        return None if record is None else record.slurm_job_id

    def _print_output(self, run: ExampleRun) -> None:
        """The job's output file, which the supervisor writes in the job's folder under jobs_root,
        named after the job's deployment and id (`<chain id>-<MetaScheduler>-<job id>/`)."""
        folder = job_folder(self.shared / "jobs", run.chain.slurm_namespace.name(run.job_id))
        path = Path(output_file(folder))
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

    def _print_settlements(self, runs: list[ExampleRun]) -> None:
        """One line per chain: the job, how it ended, its Slurm job, what the provider was paid and
        the customer refunded; then, when one job id ran on several chains, their Slurm jobs."""
        self.echo("settlement:")
        for run in runs:
            assert run.settlement is not None and run.after is not None
            paid = run.after.provider - run.before.provider
            self.echo(
                f"  chain {run.chain.chain_id}  job {run.job_id}  {run.settlement.status.name:<9} "
                f"Slurm job {run.slurm_label:<6} provider paid {format_credits(paid)}, "
                f"customer refunded {format_credits(run.settlement.refund)} credits"
            )
        by_job: dict[str, list[ExampleRun]] = {}
        for run in runs:
            by_job.setdefault(run.job_id, []).append(run)
        for job_id, same in by_job.items():
            if len(same) > 1:
                slurm_jobs = ", ".join(f"{run.slurm_label} (chain {run.chain.chain_id})" for run in same)
                self.echo(f"job {job_id} ran on {len(same)} chains as Slurm jobs {slurm_jobs}")

    # -- staying up and stopping --------------------------------------------------------------

    def _stay_up(self) -> None:
        lines = ["the local grid is up:"]
        for chain in self.chains:
            indent = "  " if chain.alone else "    "
            if not chain.alone:
                lines.append(f"  chain {chain.chain_id} ({chain.name} in the supervisor's [[chains]]):")
            lines += [
                f"{indent}JSON-RPC        {chain.anvil.http_url} (WebSocket {chain.anvil.ws_url}), chain id "
                f"{chain.deployment.chain_id}",
                f"{indent}MetaScheduler   {chain.deployment.meta_scheduler}",
                f"{indent}deployment      {chain.deployment_file}",
                f"{indent}sbatch service  {chain.sbatch_url} (gRPC 127.0.0.1:{chain.grpc_port})",
                f"{indent}log service     {chain.logger_target} (gRPC)",
            ]
        lines += [
            f"  customer key    {self.customer_key} ({self.customer.address})",
            f"  supervisor      {self.supervisor_config_file}",
            f"  logs            {self.run_dir}",
        ]
        for chain in self.chains:
            common = f"--rpc {chain.anvil.http_url} --deployment {chain.deployment_file}"
            lines += [
                "submit more jobs with:"
                if chain.alone
                else f"submit more jobs on chain {chain.chain_id} with:",
                f"  grid-dev submit WORKFLOW.yaml --credits 150 --sbatch-url {chain.sbatch_url} "
                f"--key-file {self.customer_key} {common}",
                f"  grid-dev watch JOB_ID {common}",
                f"  grid-dev cancel JOB_ID --key-file {self.customer_key} {common}",
                f"  grid-dev topup JOB_ID --credits 50 --key-file {self.customer_key} {common}",
                f"  grid-dev logs JOB_ID --follow --logger-url {chain.logger_target} --key-file {self.customer_key}",
            ]
        lines.append("press Ctrl-C to stop everything")
        self.echo("\n".join(lines))
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
