"""One supervisor serving two deployments of the grid, on two real anvils and the real cluster.

The two chains have different chain ids and, deployed by the same key in the same order, the same
contract addresses and the same job ids: only the chain id tells their Slurm jobs apart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from grid_dev.anvil import Anvil, start_anvil
from grid_protocol.jobs import JobStatus as S
from tests.fixtures.contracts import Grid, deploy_grid
from tests.fixtures.slurm import SlurmCluster
from tests.fixtures.supervisor import (
    PRICES,
    ProviderStack,
    SupervisorProcess,
    credits_per_minute,
    open_provider_stack,
    wait_for,
)

pytestmark = pytest.mark.slow

SECOND_CHAIN_ID = 31338


@dataclass
class TwoChains:
    alpha: ProviderStack
    beta: ProviderStack
    beta_state: Path
    workdir: Path
    count: int = 0

    @property
    def stacks(self) -> tuple[ProviderStack, ProviderStack]:
        return self.alpha, self.beta

    def config_text(self, store: Path, *, beta_share: int | None = None, **policy: object) -> str:
        chains = ""
        for name, stack in (("alpha", self.alpha), ("beta", self.beta)):
            grid = stack.grid
            share = f"max_queued_jobs = {beta_share}\n" if name == "beta" and beta_share else ""
            chains += f"""
[[chains]]
name = "{name}"
rpc_url = "{grid.anvil.http_url}"
ws_url = "{grid.anvil.ws_url}"
meta_scheduler = "{grid.deployment.meta_scheduler}"
chain_id = {grid.w3.eth.chain_id}
start_block = {grid.w3.eth.block_number}
poll_interval_seconds = 0.5
receipt_deadline_seconds = 10
{share}
[chains.sbatch]
grpc_target = "{stack.sbatch.grpc_target}"
timeout_seconds = 5
"""
        policy = {"max_queued_jobs": 8, **policy}
        policy_lines = "\n".join(f"{key} = {value}" for key, value in policy.items())
        return f"""{chains}
[key]
file = "{self.alpha.key_file}"

[slurm]
partition = "{self.alpha.cluster.partition}"
command_timeout_seconds = 20

[policy]
jobs_root = "{self.alpha.shared / "jobs"}"
slurm_poll_seconds = 1
{policy_lines}

[registration]
prices = {{ gpu_per_min = "{PRICES["gpu_per_min"]}", cpu_per_min = "{PRICES["cpu_per_min"]}", mem_per_min = "{PRICES["mem_per_min"]}" }}

[store]
path = "{store}"

[metrics]
port = 0

[log]
level = "info"
format = "json"
"""

    def supervisor(self, **settings: object) -> SupervisorProcess:
        self.count += 1
        config = self.workdir / f"two-chains-{self.count}.toml"
        config.write_text(self.config_text(self.workdir / f"two-chains-{self.count}.sqlite", **settings))  # type: ignore[arg-type]
        process = SupervisorProcess(config, self.workdir / f"two-chains-{self.count}.log", dict(os.environ))
        self.alpha.supervisors.append(process)
        return process

    def request_on_both(self, command: str, credits: int = 500) -> tuple[bytes, bytes]:
        """The same job on both chains; their counters move together, so the two ids are equal."""
        ids = (self.alpha.request(command, credits), self.beta.request(command, credits))
        assert ids[0] == ids[1], "both chains' job counters moved together"
        return ids


def restart_from_state(anvil: Anvil) -> Anvil:
    """The same anvil again, on its port, from the state it dumped when it stopped."""
    anvil.stop()
    return start_anvil(anvil.port, extra_args=anvil.args[anvil.args.index("--silent") + 1 :])


@pytest.fixture(scope="module")
def chains(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoChains]:
    workdir = tmp_path_factory.mktemp("two-chains")
    state = workdir / "beta-state.json"
    anvils = [
        start_anvil(),
        start_anvil(extra_args=["--chain-id", str(SECOND_CHAIN_ID), "--state", str(state)]),
    ]
    stacks: list[ProviderStack] = []
    try:
        grids: list[Grid] = [deploy_grid(anvil) for anvil in anvils]
        alpha = open_provider_stack(grids[0], slurm_cluster, workdir / "alpha", name="grid-two-chains")
        stacks.append(alpha)
        stacks.append(open_provider_stack(grids[1], slurm_cluster, workdir / "beta", shared=alpha.shared))
        yield TwoChains(stacks[0], stacks[1], state, workdir)
    finally:
        for stack in stacks:
            stack.close()
        for anvil in [*anvils, *(stack.grid.anvil for stack in stacks)]:
            anvil.stop()


def balances(stack: ProviderStack) -> tuple[int, int]:
    return stack.grid.balance(stack.customer), stack.grid.balance(stack.provider)


def assert_settled(stack: ProviderStack, job_id: bytes, before: tuple[int, int]) -> None:
    """FINISHED and paid on its own chain to the wei (PROTOCOL.md section 5)."""
    assert stack.status(job_id) == S.FINISHED, stack.grid.job(job_id)["lastError"]
    job = stack.grid.job(job_id)
    duration = stack.reported_duration(job_id, S.FINISHED)
    final_cost = min(max(duration, 1) * credits_per_minute(1, 1, 1024, 1), job["maxCost"])
    assert job["finalCost"] == final_cost
    customer_before, provider_before = before
    assert stack.grid.balance(stack.provider) - provider_before == final_cost - final_cost * 20 // 100
    assert customer_before - stack.grid.balance(stack.customer) == final_cost


def wait_registered_on_both(chains: TwoChains) -> None:
    for stack in chains.stacks:
        stack.wait_registered()


def test_the_same_job_id_on_both_chains_runs_as_two_slurm_jobs_and_settles_on_each(
    chains: TwoChains,
) -> None:
    supervisor = chains.supervisor()
    supervisor.start()
    try:
        wait_registered_on_both(chains)
        before = [balances(stack) for stack in chains.stacks]
        job_id, _ = chains.request_on_both("echo ran")
        for stack in chains.stacks:
            stack.wait_status(job_id, S.FINISHED, S.FAILED)
        for stack, paid_before in zip(chains.stacks, before, strict=True):
            assert_settled(stack, job_id, paid_before)
        alpha_jobs, beta_jobs = (stack.accounted(job_id) for stack in chains.stacks)
        assert len(alpha_jobs) == 1 and len(beta_jobs) == 1
        assert alpha_jobs[0].split("|")[0] != beta_jobs[0].split("|")[0]
        folders = {stack.job_folder(job_id) for stack in chains.stacks}
        assert len(folders) == 2, "each chain's job runs in a folder of its own"
        for stack in chains.stacks:
            assert "ran" in stack.job_output(job_id).read_text()
        lines = [line for line in supervisor.text().splitlines() if '"job submitted to Slurm"' in line]
        assert any('"chain": "alpha"' in line for line in lines)
        assert any('"chain": "beta"' in line for line in lines)
    finally:
        supervisor.stop()


def test_a_stopped_chain_holds_up_only_its_own_jobs(chains: TwoChains) -> None:
    supervisor = chains.supervisor()
    supervisor.start()
    beta = chains.beta.grid.anvil
    try:
        wait_registered_on_both(chains)
        before = balances(chains.alpha)
        os.kill(beta.pid, signal.SIGSTOP)  # beta hangs: its calls neither answer nor fail
        try:
            started = time.monotonic()
            job_id = chains.alpha.request("echo alpha goes on", 500)
            chains.alpha.wait_status(job_id, S.SCHEDULED, S.RUNNING, S.FINISHED, timeout=10)
            claimed_after = time.monotonic() - started
            chains.alpha.wait_status(job_id, S.FINISHED, timeout=60)
        finally:
            os.kill(beta.pid, signal.SIGCONT)
        # One poll period of the follower (0.5 s), with room for a loaded machine: a chain that
        # hangs would hold up the other for at least an RPC timeout (10 s) or a receipt deadline.
        assert claimed_after < 3.0, f"alpha's job was claimed {claimed_after:.1f} s after its request"
        assert_settled(chains.alpha, job_id, before)
        assert supervisor.running()

        # beta comes back from its dumped state, on the same port: its jobs go on.
        chains.beta.grid.anvil = restart_from_state(beta)
        beta_before = balances(chains.beta)
        beta_job = chains.beta.request("echo beta is back", 500)
        chains.beta.wait_status(beta_job, S.FINISHED, S.FAILED, timeout=90)
        assert_settled(chains.beta, beta_job, beta_before)
        assert supervisor.running()
    finally:
        supervisor.stop()


def test_sigkill_with_jobs_in_flight_on_both_chains_loses_and_doubles_nothing(chains: TwoChains) -> None:
    supervisor = chains.supervisor()
    supervisor.start()
    try:
        wait_registered_on_both(chains)
        before = [balances(stack) for stack in chains.stacks]
        requested = [chains.request_on_both("sleep 4; echo done") for _ in range(2)]
        job_ids = [pair[0] for pair in requested]
        wait_for(
            "a job of each chain in Slurm",
            lambda: all(any(stack.slurm_jobs(job_id) for job_id in job_ids) for stack in chains.stacks),
            60,
        )
        supervisor.kill()
        supervisor.start()
        for stack in chains.stacks:
            for job_id in job_ids:
                stack.wait_status(job_id, S.FINISHED, S.FAILED, timeout=120)
        for stack, (customer_before, provider_before) in zip(chains.stacks, before, strict=True):
            paid = 0
            for job_id in job_ids:
                assert stack.status(job_id) == S.FINISHED, stack.grid.job(job_id)["lastError"]
                assert len(stack.accounted(job_id)) == 1, "one Slurm job per job and chain"
                paid += stack.grid.job(job_id)["finalCost"]
            assert customer_before - stack.grid.balance(stack.customer) == paid
            assert stack.grid.balance(stack.provider) - provider_before == paid - paid * 20 // 100
    finally:
        supervisor.stop()


def queued_in_slurm(chains: TwoChains) -> dict[str, int]:
    """Jobs of each chain waiting in Slurm, by the deployment their names carry; only those in this
    module's jobs_root count (other grids on the cluster may use the same chain ids and addresses)."""
    listing = subprocess.run(
        ["squeue", "-h", "-t", "PENDING", "-o", "%j|%Z"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    jobs_root = chains.alpha.shared / "jobs"
    ours = [
        name
        for name, _, workdir in (line.partition("|") for line in listing)
        if workdir == str(jobs_root / name)
    ]
    return {
        name: sum(1 for job in ours if job.startswith(stack.slurm_name(b"").removesuffix("0x")))
        for name, stack in (("alpha", chains.alpha), ("beta", chains.beta))
    }


def test_max_queued_jobs_holds_across_both_chains_with_a_share_each(chains: TwoChains) -> None:
    """8 jobs, 4 a chain, on a full cluster: at most 4 wait in Slurm at once over both chains, and
    beta, whose share is 2, never takes more than 2 of them."""
    supervisor = chains.supervisor(max_queued_jobs=4, beta_share=2)
    supervisor.start()
    blocker = chains.alpha.block_cpus()
    try:
        wait_registered_on_both(chains)
        job_ids = [chains.request_on_both("echo queued") for _ in range(4)]
        seen: list[dict[str, int]] = []

        def claimed_to_the_limit() -> bool:
            seen.append(queued_in_slurm(chains))
            return sum(seen[-1].values()) == 4

        wait_for("4 jobs queued in Slurm", claimed_to_the_limit, 60)
        # Claims keep being considered every poll (1 s) and at every hint: watch several rounds.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            seen.append(queued_in_slurm(chains))
            time.sleep(0.2)
        assert max(sum(sample.values()) for sample in seen) == 4, seen
        assert max(sample["beta"] for sample in seen) <= 2, seen
        scheduled = sum(
            1 for stack in chains.stacks for pair in job_ids if stack.status(pair[0]) != S.META_SCHEDULED
        )
        assert scheduled == 4, "no claim beyond the shared bound"
    finally:
        chains.alpha.scancel(blocker)
    try:
        for stack in chains.stacks:
            for pair in job_ids:
                stack.wait_status(pair[0], S.FINISHED, timeout=120)
    finally:
        supervisor.stop()
