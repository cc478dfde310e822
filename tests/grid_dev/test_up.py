"""`grid-dev up` end to end: a real run of the local grid (anvil, contracts, sbatch service, the
Slurm cluster, the oracle and `grid-supervisor run`) with the example workflow, checked against the
chain while the grid stays up; and `--chains 2`, one supervisor serving two chains, the same job id
run on each as its own Slurm job."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from web3 import Web3
from web3.contract import Contract

from grid_contracts.deploy import Deployment
from grid_protocol.abi import load_abi
from grid_protocol.jobs import JobStatus
from tests.fixtures.slurm import SlurmCluster

CREDIT = 10**18
CLUSTER_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster.sh"
GRID_DEV = str(Path(sys.executable).parent / "grid-dev")
#: The example (1 task, 1 CPU, 1024 MB, no GPU) at the worked example's prices: 0.95 + 1024 * 0.00008.
EXAMPLE_CREDITS_PER_MINUTE = Decimal("1.03192")


@dataclass
class Run:
    process: subprocess.Popen[str]
    lines: list[str]
    pending: queue.Queue[str | None]

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """Read output until a line matches; fails with the output so far at the deadline or at exit."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout}s:\n" + "\n".join(self.lines)
                )
            try:
                line = self.pending.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"grid-dev up exited ({self.process.wait()}) before {pattern!r}:\n"
                    + "\n".join(self.lines)
                )
            self.lines.append(line)
            found = regex.search(line)
            if found:
                return found

    def rest(self, timeout: float) -> str:
        """The remaining output once the process ended."""
        self.process.wait(timeout=timeout)
        while True:
            line = self.pending.get(timeout=timeout)
            if line is None:
                return "\n".join(self.lines)
            self.lines.append(line)


def stopped_cleanly(run: Run, run_dir: Path) -> str:
    """The rest of an interrupted `up`'s output, once it exited with status 0."""
    output = run.rest(timeout=120)
    remove_outside_job_folders(run_dir, run)
    assert run.process.returncode == 0, output
    return output


def remove_outside_job_folders(run_dir: Path, run: Run) -> None:
    """The job folders `up` put in /var/tmp/grid-dev because pytest's folders are private."""
    shutil.rmtree(Path("/var/tmp/grid-dev") / f"{run_dir.name}-{run.process.pid}-shared", ignore_errors=True)


def start(args: list[str], env: dict[str, str] | None = None) -> Run:
    process = subprocess.Popen(
        # The cluster is shared with other tests (which rehearse outages): use it, never start or stop it.
        [GRID_DEV, "up", "--no-bootstrap", "--no-start-cluster", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    pending: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            pending.put(line.rstrip("\n"))
        pending.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return Run(process, [], pending)


@pytest.fixture
def run_dir(slurm_cluster: SlurmCluster, tmp_path: Path) -> Iterator[Path]:
    """A run folder, once the shared cluster is whole (other tests stop parts of it for a while)."""
    deadline = time.monotonic() + 180
    while subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), "status"], capture_output=True, check=False
    ).returncode:
        assert time.monotonic() < deadline, "the Slurm cluster did not come back up"
        time.sleep(1)
    yield tmp_path / "run"


def credits(text: str) -> int:
    return int(Decimal(text) * CREDIT)


def test_up_runs_the_example_to_settlement_and_stops_what_it_started(run_dir: Path) -> None:
    run = start(["--keep-running", "--run-dir", str(run_dir)])
    try:
        job_id = run.wait_for_line(r"as job (0x[0-9a-f]{64}) with 200 credits", 240).group(1)
        statuses = [run.wait_for_line(r"job is (\w+)  \(block", 300).group(1) for _ in range(4)]
        ended = run.wait_for_line(
            r"job ended (\w+): final cost ([\d.]+) credits, refunded ([\d.]+) of 200", 30
        )
        run.wait_for_line(r"^  \| hello world$", 10)  # the job's output, as the job wrote it
        rows = {}
        for who in ("customer", "provider", "grid's cut"):
            found = run.wait_for_line(rf"^{who}\b.*?\s(-?[\d.]+)\s+(-?[\d.]+)\s+([+-]?[\d.]+)$", 10)
            rows[who] = tuple(credits(v) for v in found.groups())
        rpc = run.wait_for_line(r"JSON-RPC\s+(http://\S+)", 10).group(1)
        deployment_file = Path(run.wait_for_line(r"deployment\s+(\S+)", 10).group(1))
        run.wait_for_line(r"press Ctrl-C to stop everything", 10)

        assert statuses == ["META_SCHEDULED", "SCHEDULED", "RUNNING", "FINISHED"]
        assert ended.group(1) == "FINISHED"
        # The customer read the job's output live from the log service, beside the statuses.
        streamed = [
            (i, line.split(" job log | ", 1)[1]) for i, line in enumerate(run.lines) if " job log | " in line
        ]
        texts = [text.split(" ", 1)[1] for _, text in streamed]
        assert texts[-4:] == ["hello world", "still here (1)", "still here (2)", "still here (3)"]
        finished_at = next(i for i, line in enumerate(run.lines) if "job is FINISHED" in line)
        assert streamed[0][0] < finished_at, "the first lines arrived while the job ran"
        assert any(f"job log ended after {len(texts)} lines" in line for line in run.lines)
        assert not any("is not available" in text for text in texts), "the site's cache folders exist"

        # What was printed is what the chain holds.
        deployment = Deployment.read(deployment_file)
        w3 = Web3(Web3.HTTPProvider(rpc))

        def contract(name: str, address: str) -> Contract:
            return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_abi(name))

        jobs = contract("JobRepository", deployment.job_repository)
        credit = contract("Credit", deployment.credit)
        scheduler = contract("MetaScheduler", deployment.meta_scheduler)
        job = jobs.functions.get(bytes.fromhex(job_id[2:])).call()
        status, customer, provider = job[1], job[2], job[3]
        max_cost, final_cost = job[5][0], job[5][1]
        assert JobStatus(status) == JobStatus.FINISHED
        assert credits(ended.group(2)) == final_cost
        assert credits(ended.group(3)) == max_cost - final_cost
        assert max_cost == 200 * CREDIT
        # A job of a few seconds is billed one minute.
        assert final_cost == int(EXAMPLE_CREDITS_PER_MINUTE * CREDIT)
        cut = final_cost * 20 // 100
        assert rows["customer"][1] == credit.functions.balanceOf(customer).call()
        assert rows["customer"][2] == -final_cost
        assert rows["provider"][1] == credit.functions.balanceOf(provider).call()
        assert rows["provider"][2] == final_cost - cut
        assert rows["grid's cut"][1] == scheduler.functions.withdrawableCut().call()
        assert rows["grid's cut"][2] == cut

        for name in ("anvil", "grid-logger", "sbatch-service", "oracle", "supervisor"):
            assert (run_dir / f"{name}.log").stat().st_size > 0, name
        for key in ("provider.key", "oracle.key", "customer.key"):
            assert (run_dir / key).stat().st_mode & 0o777 == 0o600
    finally:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGINT)
    output = stopped_cleanly(run, run_dir)
    for name in ("supervisor", "oracle", "sbatch-service", "grid-logger", "anvil"):
        assert f"stopped {name}" in output
    assert "Slurm cluster" not in output.split("press Ctrl-C")[1]  # it was up before: it stays up
    with pytest.raises(requests.ConnectionError):
        requests.post(rpc, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=5)


def sacct_line(slurm_job_id: int, timeout: float) -> tuple[str, str]:
    """(job name, state) of a Slurm job from accounting, once slurmdbd has its end."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(
            ["sacct", "-j", str(slurm_job_id), "-X", "-n", "-P", "-o", "JobName,State"],
            capture_output=True,
            text=True,
            check=False,
        )
        fields = result.stdout.strip().split("|")
        if len(fields) == 2 and fields[1] == "COMPLETED":
            return fields[0], fields[1]
        assert time.monotonic() < deadline, f"sacct for {slurm_job_id}: {result.stdout!r} {result.stderr!r}"
        time.sleep(0.5)


def test_up_with_two_chains_settles_the_same_job_id_on_each_as_two_slurm_jobs(run_dir: Path) -> None:
    run = start(["--chains", "2", "--keep-running", "--run-dir", str(run_dir)])
    chain_ids = (31337, 31338)
    endpoints: dict[int, tuple[str, Path]] = {}
    try:
        requested = [
            run.wait_for_line(r"chain (\d+): customer submitted \S+ as job (0x[0-9a-f]{64}) with 200", 240)
            for _ in chain_ids
        ]
        submitted = {int(m.group(1)): m.group(2) for m in requested}
        settled = [
            run.wait_for_line(
                r"^  chain (\d+)  job (0x[0-9a-f]{64})  (\w+)\s+Slurm job (\d+)\s+provider paid ([\d.]+), "
                r"customer refunded ([\d.]+) credits$",
                360,
            )
            for _ in chain_ids
        ]
        same = run.wait_for_line(
            r"^job (0x[0-9a-f]{64}) ran on 2 chains as Slurm jobs (\d+) \(chain 31337\), "
            r"(\d+) \(chain 31338\)$",
            10,
        )
        for _ in chain_ids:
            found = run.wait_for_line(r"JSON-RPC\s+(http://\S+) .*, chain id (\d+)$", 10)
            deployment = run.wait_for_line(r"deployment\s+(\S+\.json)$", 10).group(1)
            endpoints[int(found.group(2))] = (found.group(1), Path(deployment))
        run.wait_for_line(r"press Ctrl-C to stop everything", 10)

        # Submitted at once on both chains, whose job counters start equal: the same job id twice.
        assert set(submitted) == set(chain_ids) == set(endpoints)
        job_id = submitted[31337]
        assert submitted[31338] == job_id == same.group(1)
        rows = {int(m.group(1)): m for m in settled}
        assert set(rows) == set(chain_ids)
        slurm_ids = {chain_id: int(rows[chain_id].group(4)) for chain_id in chain_ids}
        assert len(set(slurm_ids.values())) == 2, slurm_ids
        assert (int(same.group(2)), int(same.group(3))) == (slurm_ids[31337], slurm_ids[31338])
        # Each chain's statuses, and its job's output as the customer read it from that chain's log service.
        for chain_id in chain_ids:
            statuses = [
                line.split("job is ", 1)[1].split()[0]
                for line in run.lines
                if f"chain {chain_id}: job is " in line and "(block" in line
            ]
            assert statuses == ["META_SCHEDULED", "SCHEDULED", "RUNNING", "FINISHED"], (chain_id, statuses)
            streamed = [
                line.split(" job log | ", 1)[1].split(" ", 1)[1]
                for line in run.lines
                if f"chain {chain_id}: job log | " in line
            ]
            assert streamed[-4:] == ["hello world", "still here (1)", "still here (2)", "still here (3)"]

        for chain_id in chain_ids:
            rpc, deployment_file = endpoints[chain_id]
            deployment = Deployment.read(deployment_file)
            w3 = Web3(Web3.HTTPProvider(rpc))
            assert w3.eth.chain_id == chain_id == deployment.chain_id
            jobs = w3.eth.contract(
                address=Web3.to_checksum_address(deployment.job_repository), abi=load_abi("JobRepository")
            )
            credit = w3.eth.contract(
                address=Web3.to_checksum_address(deployment.credit), abi=load_abi("Credit")
            )
            job = jobs.functions.get(bytes.fromhex(job_id[2:])).call()
            status, provider = job[1], job[3]
            max_cost, final_cost = job[5][0], job[5][1]
            row = rows[chain_id]
            assert JobStatus(status) == JobStatus.FINISHED and row.group(3) == "FINISHED"
            assert final_cost == int(EXAMPLE_CREDITS_PER_MINUTE * CREDIT)  # one minute, as on one chain
            paid = final_cost - final_cost * 20 // 100
            assert credits(row.group(5)) == paid == credit.functions.balanceOf(provider).call()
            assert credits(row.group(6)) == max_cost - final_cost == 200 * CREDIT - final_cost
            # Slurm ran it under the name that carries its deployment, in a folder of that name.
            name = f"{chain_id}-{deployment.meta_scheduler.lower()[2:]}-{job_id}"
            assert sacct_line(slurm_ids[chain_id], 60) == (name, "COMPLETED")
            out_file = next(
                Path(m.group(1))
                for line in run.lines
                if (m := re.fullmatch(r"job output \((\S+)\):", line)) and name in line
            )
            assert out_file.parent.name == name and out_file.name == f"{name}.out"
            assert "hello world" in out_file.read_text().splitlines()

        # One supervisor, its configuration listing both deployments, a state file each.
        config = (run_dir / "supervisor.toml").read_text()
        assert config.count("[[chains]]") == 2 and "[chain]" not in config
        for chain_id in chain_ids:
            assert f'name = "anvil-{chain_id}"' in config and f"chain_id = {chain_id}" in config
            assert (run_dir / f"supervisor.anvil-{chain_id}.sqlite").is_file()
            for name in ("anvil", "grid-logger", "sbatch-service", "oracle"):
                assert (run_dir / f"{name}-{chain_id}.log").stat().st_size > 0, (name, chain_id)
    finally:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGINT)
    output = stopped_cleanly(run, run_dir)
    assert "stopped supervisor" in output
    for chain_id in chain_ids:
        for name in ("oracle", "sbatch-service", "grid-logger", "anvil"):
            assert f"stopped {name}-{chain_id}" in output
    for rpc, _ in endpoints.values():
        with pytest.raises(requests.ConnectionError):
            requests.post(
                rpc, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=5
            )


def test_up_names_the_component_that_failed_and_its_log(run_dir: Path) -> None:
    env = {**os.environ, "GRID_SUPERVISOR_POLICY__MAX_QUEUED_JOBS": "0"}  # the supervisor refuses this
    run = start(["--run-dir", str(run_dir)], env=env)
    output = run.rest(timeout=300)
    remove_outside_job_folders(run_dir, run)
    assert run.process.returncode == 1, output
    log = run_dir / "supervisor.log"
    assert f"error: supervisor exited with status 2; its log: {log}" in output
    assert "policy.max_queued_jobs" in log.read_text()
    for name in ("oracle", "sbatch-service", "anvil"):
        assert f"stopped {name}" in output
