"""`grid-supervisor doctor`: every outside thing the daemon needs, checked one by one, with the fix.

Each check says OK, WARN or FAIL, what it found, and what to do when it is not OK. A check that
needs an earlier one (the contract needs the RPC) is reported as not checked rather than guessed.
Each deployment is checked in turn (its key, chain, sbatch service, state file, registration and
wallet; with several, each check's name ends with the chain's, as in `rpc[fuji]`), then the Slurm
cluster they share, once.
Nothing here writes: no transaction, no Slurm job, the state file is not opened.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

from web3 import AsyncHTTPProvider, AsyncWeb3

from supervisor.chain.contracts import ProtocolContracts
from supervisor.chain.keys import Signer, load_signer
from supervisor.chain.rpc import connect_http, describe
from supervisor.config import ConfigError, Deployment, SupervisorConfig, load_config
from supervisor.ops.probes import probe_sbatch
from supervisor.redaction import redact_text, redact_url
from supervisor.slurm.backend import CommandSlurmBackend, SlurmBackend
from supervisor.slurm.errors import SlurmError
from supervisor.slurm.factory import create_backend

#: Gas of the costliest provider call (a final status report) with room to spare.
GAS_PER_TRANSACTION = 300_000
#: A wallet should pay for this many transactions before it needs topping up.
TRANSACTIONS_AHEAD = 50
CHECK_TIMEOUT_S = 60.0
OPERATOR_LEVELS = ("operator", "administrator")


class Outcome(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    found: str
    fix: str | None = None


def ok(name: str, found: str) -> Check:
    return Check(name, Outcome.OK, found)


def warn(name: str, found: str, fix: str) -> Check:
    return Check(name, Outcome.WARN, found, fix)


def fail(name: str, found: str, fix: str) -> Check:
    return Check(name, Outcome.FAIL, found, fix)


def not_checked(name: str, needs: str) -> Check:
    return warn(name, f"not checked: {needs} failed", f"fix {needs} first")


def _recorded(address: str) -> bool:
    """ProviderManager answers a zero address for a provider it does not know."""
    return bool(address) and int(address, 16) != 0


def native(wei: int) -> str:
    return f"{Decimal(wei) / Decimal(10**18):.6f}"


def render(checks: list[Check]) -> str:
    """One line per check, the fix indented below it; any URL keeps only its scheme, host and port."""
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.outcome.value:<5} {check.name:<{width}}  {check.found}")
        if check.fix and check.outcome != Outcome.OK:
            lines.append(f"      {'':<{width}}  -> {check.fix}")
    return redact_text("\n".join(lines))


def exit_status(checks: list[Check]) -> int:
    return 1 if any(check.outcome == Outcome.FAIL for check in checks) else 0


async def _bounded(attempt: Callable[[], Awaitable[Any]]) -> Any:
    async with asyncio.timeout(CHECK_TIMEOUT_S):
        return await attempt()


@dataclass(frozen=True)
class Scope:
    """One deployment's checks: with several, each name and setting says which chain (`rpc[fuji]`)."""

    deployment: Deployment
    several: bool

    def label(self, check: str) -> str:
        return f"{check}[{self.deployment.name}]" if self.several else check

    def setting(self, section: str, key: str) -> str:
        """Where to set it: `chain.rpc_url`, or `chains[fuji].rpc_url` with several deployments."""
        if not self.several:
            return f"{section}.{key}"
        if section == "chain":
            return f"chains[{self.deployment.name}].{key}"
        return f"{section}.{key} (or chains[{self.deployment.name}].{section}.{key})"


class Doctor:
    """Runs the checks in order; later checks use what earlier ones found."""

    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self.checks: list[Check] = []

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    async def run(self) -> list[Check]:
        config = self._configuration()
        if config is None:
            return self.checks
        deployments = config.deployments
        for deployment in deployments:
            await self._deployment(Scope(deployment, several=len(deployments) > 1))
        await self._slurm(config)
        return self.checks

    async def _deployment(self, scope: Scope) -> None:
        """Every check of one deployment: its key, chain, sbatch service, state file, registration, wallet."""
        signer = self._key(scope)
        w3 = connect_http(scope.deployment.chain.rpc_url)
        try:
            contracts = await self._chain(scope, w3)
            await self._sbatch(scope)
            self._state(scope)
            if contracts is None:
                for name in ("registration", "wallet balance"):
                    self.add(not_checked(scope.label(name), "the chain"))
            elif signer is None:
                for name in ("registration", "wallet balance"):
                    self.add(not_checked(scope.label(name), "the provider key"))
            else:
                await self._registration(scope, contracts, signer.address)
                await self._balance(scope, contracts, signer.address)
        finally:
            await w3.provider.disconnect()  # its HTTP session, before the event loop ends

    # -- configuration and key ----------------------------------------------------------------

    def _configuration(self) -> SupervisorConfig | None:
        where = str(self.config_path) if self.config_path else "the environment"
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            problems = "; ".join(str(exc).splitlines())
            self.add(fail("configuration", problems, f"correct these settings in {where}"))
            return None
        self.add(ok("configuration", f"{where} is valid"))
        return config

    def _key(self, scope: Scope) -> Signer | None:
        key = scope.deployment.key
        name = scope.label("provider key")
        try:
            signer = load_signer(key.file, key.password_file)
        except (ValueError, OSError) as exc:
            self.add(
                fail(
                    name,
                    str(exc),
                    f"{scope.setting('key', 'file')} must be a keystore (with key.password_file) or a raw "
                    "hex key, owned by the service user, mode 0600 (chmod 600)",
                )
            )
            return None
        self.add(ok(name, f"provider address {signer.address}"))
        return signer

    # -- chain --------------------------------------------------------------------------------

    async def _chain(self, scope: Scope, w3: AsyncWeb3[AsyncHTTPProvider]) -> ProtocolContracts | None:
        chain = scope.deployment.chain
        rpc_check, contract_check = scope.label("rpc"), scope.label("contract")
        rpc_url, chain_id_setting = scope.setting("chain", "rpc_url"), scope.setting("chain", "chain_id")
        rpc = redact_url(chain.rpc_url)  # hosted endpoints carry their API key in the URL
        try:
            chain_id = int(await _bounded(lambda: w3.eth.chain_id))
        except Exception as exc:
            self.add(
                fail(
                    rpc_check,
                    f"{rpc} does not answer: {describe(exc)}",
                    f"check {rpc_url}, that the node runs and that this host may reach it",
                )
            )
            self.add(not_checked(contract_check, "the rpc"))
            return None
        if chain.chain_id is None:
            self.add(
                warn(
                    rpc_check,
                    f"{rpc} serves chain id {chain_id}",
                    f"set {chain_id_setting} = {chain_id} so a wrong endpoint is refused",
                )
            )
        elif chain.chain_id != chain_id:
            self.add(
                fail(
                    rpc_check,
                    f"{rpc} serves chain id {chain_id}, not the configured {chain.chain_id}",
                    f"point {rpc_url} at the grid's chain, or correct {chain_id_setting}",
                )
            )
            self.add(not_checked(contract_check, "the rpc"))
            return None
        else:
            self.add(ok(rpc_check, f"{rpc} serves chain id {chain_id}"))
        try:
            contracts: ProtocolContracts = await _bounded(
                lambda: ProtocolContracts.discover(w3, chain.meta_scheduler)
            )
        except Exception as exc:
            self.add(
                fail(
                    contract_check,
                    f"no usable MetaScheduler at {chain.meta_scheduler}: {describe(exc)}",
                    f"set {scope.setting('chain', 'meta_scheduler')} to the grid's MetaScheduler address "
                    "on this chain",
                )
            )
            return None
        self.add(
            ok(
                contract_check,
                f"MetaScheduler {chain.meta_scheduler}, ProviderManager {contracts.provider_manager.address}",
            )
        )
        return contracts

    async def _registration(self, scope: Scope, contracts: ProtocolContracts, address: str) -> None:
        name = scope.label("registration")
        try:
            approved = await _bounded(lambda: contracts.provider_record(address))
            waiting = await _bounded(lambda: contracts.provider_record(address, waiting=True))
            valid = await _bounded(lambda: contracts.is_valid_for_scheduling(address))
        except Exception as exc:
            self.add(fail(name, f"cannot read it: {describe(exc)}", "check the rpc and the contract"))
            return
        registration = scope.deployment.registration
        registers = registration is not None and registration.enabled
        if _recorded(approved.address) and approved.is_banned:
            self.add(fail(name, "the provider is banned", "ask the grid's operators why"))
        elif valid:
            pending = " (a new offer waits for approval)" if _recorded(waiting.address) else ""
            self.add(ok(name, f"approved for scheduling{pending}"))
        elif _recorded(waiting.address):
            self.add(
                warn(
                    name,
                    "registered, waiting for approval",
                    "ask the grid's operators to approve the provider; jobs come once approved",
                )
            )
        elif registers:
            self.add(
                warn(
                    name,
                    "not registered yet",
                    "start the daemon: it registers the partition with [registration] prices and labels",
                )
            )
        else:
            self.add(
                fail(
                    name,
                    "not registered, and registration is disabled in the configuration",
                    "add a [registration] section with prices (and labels) and start the daemon",
                )
            )

    async def _balance(self, scope: Scope, contracts: ProtocolContracts, address: str) -> None:
        name = scope.label("wallet balance")
        w3 = contracts.w3
        try:
            balance = int(await _bounded(lambda: w3.eth.get_balance(address)))  # type: ignore[arg-type]
            gas_price = int(await _bounded(lambda: w3.eth.gas_price))
        except Exception as exc:
            self.add(fail(name, f"cannot read it: {describe(exc)}", "check the rpc"))
            return
        wanted = gas_price * GAS_PER_TRANSACTION * TRANSACTIONS_AHEAD
        found = f"{native(balance)} (about {native(wanted)} pays {TRANSACTIONS_AHEAD} transactions at today's gas price)"
        if balance == 0:
            self.add(fail(name, found, f"send gas money to {address}"))
        elif balance < wanted:
            self.add(warn(name, found, f"top up {address} soon: reports will stall without gas"))
        else:
            self.add(ok(name, found))

    # -- Slurm --------------------------------------------------------------------------------

    async def _slurm(self, config: SupervisorConfig) -> None:
        try:
            backend = create_backend(config.slurm)
        except Exception as exc:
            self.add(fail("slurm", describe(exc), "check the [slurm] section (backend, ssh settings)"))
            return
        try:
            await self._slurm_checks(config, backend)
        finally:
            await backend.close()

    async def _slurm_checks(self, config: SupervisorConfig, backend: SlurmBackend) -> None:
        try:
            health = await _bounded(backend.health)
        except TimeoutError:
            self.add(fail("slurm", "the health probe timed out", "check that slurmctld and munge run"))
            return
        if not health.controller_reachable:
            problems = "; ".join(health.problems) or "slurmctld does not answer"
            self.add(
                fail(
                    "slurm",
                    problems,
                    "check slurmctld and munge, slurm.slurm_conf, and for ssh the [slurm.ssh] settings",
                )
            )
            return
        self.add(ok("slurm", "slurmctld answers"))
        if health.accounting_available:
            self.add(ok("slurm accounting", "sacct answers: finished jobs are read from accounting"))
        else:
            self.add(
                warn(
                    "slurm accounting",
                    health.finished_jobs_guarantee,
                    "run slurmdbd and set AccountingStorageType=accounting_storage/slurmdbd; without it "
                    "a job that ended while the daemon was down for longer than MinJobAge is lost",
                )
            )
        try:
            hardware = await _bounded(backend.describe_partition)
            self.add(
                ok(
                    "slurm partition",
                    f"{config.slurm.partition}: {hardware.node_count} node(s), CPUs {list(hardware.cpus_per_node)}, "
                    f"GPUs {list(hardware.gpus_per_node)}, memory MB {list(hardware.memory_mb_per_node)}",
                )
            )
        except (SlurmError, TimeoutError) as exc:
            self.add(
                fail(
                    "slurm partition",
                    f"{config.slurm.partition}: {exc}",
                    "set slurm.partition to a partition with nodes (sinfo -s)",
                )
            )
        if isinstance(backend, CommandSlurmBackend):
            self._submitter(backend)
            await self._time_limit_permission(backend)
            await self._job_user(config, backend)
        else:
            self.add(
                warn(
                    "slurm time limits",
                    "not checked with the pyslurm backend",
                    "make the daemon's user a Slurm operator",
                )
            )

    def _submitter(self, backend: CommandSlurmBackend) -> None:
        name = "slurm submissions"
        if backend.library is not None:
            self.add(ok(name, "through libslurm's call, no process per job"))
        elif backend.library_refusal is not None:
            self.add(
                warn(
                    name,
                    f"through sbatch, one process per job: {backend.library_refusal}",
                    "build the binding (grid-supervisor build-libslurm, needs libslurm-dev), or set "
                    'slurm.submitter = "sbatch" to say so',
                )
            )
        else:
            self.add(
                ok(
                    name,
                    f"through sbatch ({backend.settings.backend} backend, submitter {backend.settings.submitter})",
                )
            )

    async def _run(
        self, backend: CommandSlurmBackend, argv: list[str], user: str | None = None
    ) -> str | None:
        try:
            result = await backend.runner.run(
                argv, user=user, timeout=backend.settings.command_timeout_seconds
            )
        except SlurmError:
            return None
        return result.stdout if result.returncode == 0 else None

    async def _time_limit_permission(self, backend: CommandSlurmBackend) -> None:
        """Raising a running job's limit needs root, SlurmUser, or a Slurm operator or administrator."""
        name = "slurm time limits"
        whoami = await self._run(backend, ["id", "-un"])
        if whoami is None:
            self.add(fail(name, "cannot tell which user runs Slurm commands", "check the Slurm access"))
            return
        user = whoami.strip()
        if user == "root":
            self.add(ok(name, "commands run as root"))
            return
        config_text = await self._run(backend, ["scontrol", "show", "config"]) or ""
        slurm_user = next(
            (
                line.split("=", 1)[1].strip().split("(")[0]
                for line in config_text.splitlines()
                if line.strip().startswith("SlurmUser")
            ),
            None,
        )
        if slurm_user == user:
            self.add(ok(name, f"{user} is SlurmUser"))
            return
        level_text = await self._run(
            backend, ["sacctmgr", "--noheader", "--parsable2", "show", "user", user, "format=adminlevel"]
        )
        level = (level_text or "").strip().splitlines()[0].strip() if (level_text or "").strip() else ""
        if level.lower() in OPERATOR_LEVELS:
            self.add(ok(name, f"{user} is a Slurm {level}"))
            return
        found = f"{user} is neither root, SlurmUser ({slurm_user}) nor a Slurm operator (admin level {level or 'none'})"
        self.add(
            fail(
                name,
                found,
                f"sacctmgr modify user {user} set adminlevel=Operator (top-ups would not lengthen running jobs)",
            )
        )

    async def _job_user(self, config: SupervisorConfig, backend: CommandSlurmBackend) -> None:
        users = config.slurm.users
        if users.mode == "per_wallet":
            self.add(
                warn(
                    "job users",
                    f"per-wallet users from the template {users.template!r} are not checked here",
                    "create each customer's user on every node before accepting their jobs",
                )
            )
            return
        if await self._run(backend, ["id", "-u", users.service_account]) is None:
            self.add(
                fail(
                    "job users",
                    f"the service account {users.service_account} does not exist where jobs are submitted",
                    f"create the user {users.service_account} on the login and compute nodes",
                )
            )
        else:
            self.add(ok("job users", f"jobs run as {users.service_account}"))

    # -- sbatch service and local state -------------------------------------------------------

    async def _sbatch(self, scope: Scope) -> None:
        sbatch = scope.deployment.sbatch
        name = scope.label("sbatch service")
        target = sbatch.grpc_target
        try:
            problem = await _bounded(lambda: probe_sbatch(sbatch))
        except TimeoutError:
            problem = "no answer"
        if problem is None:
            self.add(ok(name, f"{target} answers"))
        else:
            self.add(
                fail(
                    name,
                    f"{target}: {problem}",
                    f"check {scope.setting('sbatch', 'grpc_target')} (and its tls) and that the grid's "
                    "sbatch service is reachable",
                )
            )

    def _state(self, scope: Scope) -> None:
        name = scope.label("state file")
        path = scope.deployment.store_path
        folder = path.parent
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            self.add(fail(name, f"{path} is not readable and writable", "give it to the service user"))
        elif not path.exists() and not (folder.is_dir() and os.access(folder, os.W_OK)):
            self.add(
                fail(
                    name,
                    f"{folder} does not exist or is not writable",
                    "create it for the service user (systemd's StateDirectory does)",
                )
            )
        else:
            self.add(ok(name, f"{path} {'exists' if path.exists() else 'will be created'}"))


def run_doctor(config_path: Path | None) -> list[Check]:
    return asyncio.run(Doctor(config_path).run())
