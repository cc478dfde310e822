"""`grid-supervisor doctor` against the real stack, and the logs of a full run: nothing secret in them.

Each failure is made real (a port where nothing listens, another chain id, a key file others can
read, a Slurm user without the operator level, a wallet without gas) and the doctor must name it
with the fix and exit 1. With two chains (a second anvil) each chain's checks carry its name, and
one chain's unreachable RPC fails that chain's checks only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account

from grid_dev.anvil import free_port
from grid_protocol.jobs import JobStatus as S
from tests.fixtures.ops import two_chains
from tests.fixtures.supervisor import ProviderStack, SupervisorProcess, wait_for

PASSWORD = "correct horse battery staple 7f3a"
GRID_SUPERVISOR = str(Path(sys.executable).parent / "grid-supervisor")


@pytest.fixture(scope="module")
def keystore(provider_stack: ProviderStack) -> tuple[Path, Path]:
    """The provider key as an encrypted keystore with its password file, both mode 0600."""
    key_file = provider_stack.workdir / "provider.keystore"
    password_file = provider_stack.workdir / "provider.password"
    key_file.write_text(json.dumps(Account.encrypt(provider_stack.provider.key, PASSWORD)))
    password_file.write_text(PASSWORD + "\n")
    for path in (key_file, password_file):
        path.chmod(0o600)
    return key_file, password_file


@pytest.fixture(scope="module")
def supervisor(provider_stack: ProviderStack, keystore: tuple[Path, Path]) -> Iterator[SupervisorProcess]:
    process = provider_stack.supervisor()
    process.env.update(
        GRID_SUPERVISOR_KEY__FILE=str(keystore[0]),
        GRID_SUPERVISOR_KEY__PASSWORD_FILE=str(keystore[1]),
        GRID_SUPERVISOR_LOG__LEVEL="debug",
        GRID_SUPERVISOR_METRICS__PORT=str(free_port()),
    )
    process.start()
    provider_stack.wait_registered()
    yield process
    process.stop()


def doctor(process: SupervisorProcess, **env: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Exit status, {check: (outcome, line and fix)}, and the whole output."""
    result = subprocess.run(
        [GRID_SUPERVISOR, "doctor", "--config", str(process.config)],
        env={**process.env, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    checks: dict[str, tuple[str, str]] = {}
    last = ""
    for line in result.stdout.splitlines():
        if line.startswith(("OK ", "WARN ", "FAIL ")):
            outcome, rest = line.split(None, 1)
            name = rest.split("  ", 1)[0].strip()
            checks[name] = (outcome, line)
            last = name
        elif line.strip().startswith("->") and last:
            checks[last] = (checks[last][0], checks[last][1] + "\n" + line)
    return result.returncode, checks, output


def test_doctor_passes_on_a_working_provider(supervisor: SupervisorProcess) -> None:
    status, checks, output = doctor(supervisor)
    assert status == 0, output
    expected = {
        "configuration", "provider key", "rpc", "contract", "slurm", "slurm accounting", "slurm partition",
        "slurm submissions", "slurm time limits", "job users", "sbatch service", "state file", "registration",
        "wallet balance",
    }  # fmt: skip
    assert set(checks) == expected, output
    assert all(outcome == "OK" for outcome, _ in checks.values()), output
    assert "approved for scheduling" in checks["registration"][1]
    assert "through libslurm's call" in checks["slurm submissions"][1]  # bootstrap built the binding
    assert "root" in checks["slurm time limits"][1]  # the local backend runs as root here


@pytest.mark.parametrize(
    ("case", "env", "check", "found", "fix"),
    [
        ("invalid setting", {"GRID_SUPERVISOR_POLICY__MAX_QUEUED_JOBS": "0"}, "configuration", "policy.max_queued_jobs", "correct"),
        ("no node", {"GRID_SUPERVISOR_CHAIN__RPC_URL": "http://127.0.0.1:{port}"}, "rpc", "does not answer", "chain.rpc_url"),
        ("other chain", {"GRID_SUPERVISOR_CHAIN__CHAIN_ID": "5"}, "rpc", "chain id 31337, not the configured 5", "chain.chain_id"),
        ("no contract", {"GRID_SUPERVISOR_CHAIN__META_SCHEDULER": "0x" + "12" * 20}, "contract", "no usable MetaScheduler", "chain.meta_scheduler"),
        ("no sbatch service", {"GRID_SUPERVISOR_SBATCH__GRPC_TARGET": "127.0.0.1:{port}"}, "sbatch service", "UNAVAILABLE", "sbatch.grpc_target"),
        ("no partition", {"GRID_SUPERVISOR_SLURM__PARTITION": "nosuchpartition"}, "slurm partition", "nosuchpartition", "slurm.partition"),
        ("no job user", {"GRID_SUPERVISOR_SLURM__USERS__SERVICE_ACCOUNT": "nosuchuser"}, "job users", "nosuchuser does not exist", "create the user"),
        ("no state folder", {"GRID_SUPERVISOR_STORE__PATH": "/nonexistent/state.sqlite"}, "state file", "/nonexistent", "create it"),
    ],
)  # fmt: skip
def test_doctor_names_each_failure(
    supervisor: SupervisorProcess, case: str, env: dict[str, str], check: str, found: str, fix: str
) -> None:
    port = str(free_port())
    status, checks, output = doctor(supervisor, **{k: v.format(port=port) for k, v in env.items()})
    assert status == 1, output
    assert check in checks, output
    outcome, text = checks[check]
    assert outcome == "FAIL", output
    assert found in text and "-> " in text and fix in text.split("->", 1)[1], output


def test_doctor_warns_when_jobs_go_through_sbatch_for_want_of_the_library(
    supervisor: SupervisorProcess,
) -> None:
    status, checks, output = doctor(supervisor, GRID_SUPERVISOR_SLURM__EXTRA_SBATCH_ARGS='["--exclusive"]')
    assert status == 0, output
    outcome, text = checks["slurm submissions"]
    assert outcome == "WARN", output
    assert (
        "through sbatch, one process per job" in text and "'--exclusive' has no libslurm equivalent" in text
    )
    assert "grid-supervisor build-libslurm" in text.split("->", 1)[1], output


def test_doctor_refuses_a_key_file_others_can_read(
    provider_stack: ProviderStack, supervisor: SupervisorProcess
) -> None:
    readable = provider_stack.workdir / "readable.key"
    readable.write_text(provider_stack.provider.key.hex())
    readable.chmod(0o644)
    status, checks, output = doctor(
        supervisor, GRID_SUPERVISOR_KEY__FILE=str(readable), GRID_SUPERVISOR_KEY__PASSWORD_FILE=""
    )
    assert status == 1, output
    assert checks["provider key"][0] == "FAIL" and "chmod 600" in checks["provider key"][1], output
    assert checks["registration"][0] == "WARN" and "not checked" in checks["registration"][1]


def test_doctor_wallet_without_gas_and_no_registration(
    provider_stack: ProviderStack, supervisor: SupervisorProcess
) -> None:
    empty = Account.create()
    key_file = provider_stack.workdir / "empty.key"
    key_file.write_text(empty.key.hex())
    key_file.chmod(0o600)
    status, checks, output = doctor(
        supervisor,
        GRID_SUPERVISOR_KEY__FILE=str(key_file),
        GRID_SUPERVISOR_KEY__PASSWORD_FILE="",
        GRID_SUPERVISOR_REGISTRATION__ENABLED="false",
    )
    assert status == 1, output
    assert checks["wallet balance"][0] == "FAIL" and empty.address in checks["wallet balance"][1], output
    assert checks["registration"][0] == "FAIL" and "[registration]" in checks["registration"][1], output


@pytest.mark.parametrize(
    ("admin", "outcome", "found"),
    [("grid-admin", "OK", "Operator"), ("grid-svc", "FAIL", "adminlevel=Operator")],
)
def test_doctor_checks_the_permission_to_raise_time_limits(
    provider_stack: ProviderStack, supervisor: SupervisorProcess, admin: str, outcome: str, found: str
) -> None:
    cluster = provider_stack.cluster
    status, checks, output = doctor(
        supervisor,
        GRID_SUPERVISOR_SLURM__BACKEND="ssh",
        GRID_SUPERVISOR_SLURM__SSH__HOST=cluster.ssh_host,
        GRID_SUPERVISOR_SLURM__SSH__PORT=str(cluster.ssh_port),
        GRID_SUPERVISOR_SLURM__SSH__KNOWN_HOSTS=str(cluster.ssh_known_hosts),
        GRID_SUPERVISOR_SLURM__SSH__CLIENT_KEY=str(cluster.ssh_client_key),
        GRID_SUPERVISOR_SLURM__SSH__ADMIN_USER=admin,
    )
    assert checks["slurm"][0] == "OK", output
    assert checks["slurm time limits"][0] == outcome, output
    assert found in checks["slurm time limits"][1], output
    assert status == (0 if outcome == "OK" else 1), output


PER_CHAIN = (
    "provider key",
    "rpc",
    "contract",
    "sbatch service",
    "state file",
    "registration",
    "wallet balance",
)
SLURM = (
    "slurm",
    "slurm accounting",
    "slurm partition",
    "slurm submissions",
    "slurm time limits",
    "job users",
)


def test_doctor_checks_every_chain_and_slurm_once(
    provider_stack: ProviderStack, second_chain: ProviderStack, supervisor: SupervisorProcess
) -> None:
    two = two_chains(provider_stack, second_chain, "doctor-two")
    two.start()  # registers the provider on beta too, and creates both state files
    try:
        second_chain.wait_registered()
    finally:
        two.stop()
    status, checks, output = doctor(two)
    assert status == 0, output
    expected = {"configuration", *SLURM} | {
        f"{name}[{chain}]" for name in PER_CHAIN for chain in ("alpha", "beta")
    }
    assert set(checks) == expected, output
    assert all(outcome == "OK" for outcome, _ in checks.values()), output
    assert "chain id 31337" in checks["rpc[alpha]"][1] and "chain id 31338" in checks["rpc[beta]"][1]
    assert "doctor-two.beta.sqlite exists" in checks["state file[beta]"][1]
    assert second_chain.sbatch.grpc_target in checks["sbatch service[beta]"][1]
    assert "Unclosed" not in output  # each chain's HTTP session is closed before the loop ends


def test_doctor_names_the_chain_that_fails(
    provider_stack: ProviderStack, second_chain: ProviderStack, supervisor: SupervisorProcess
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    status, checks, output = doctor(
        two_chains(provider_stack, second_chain, "doctor-down", beta_rpc_url=unreachable)
    )
    assert status == 1, output
    outcome, text = checks["rpc[beta]"]
    assert outcome == "FAIL" and "does not answer" in text and "chains[beta].rpc_url" in text, output
    for name in ("contract", "registration", "wallet balance"):
        assert checks[f"{name}[beta]"][0] == "WARN" and "not checked" in checks[f"{name}[beta]"][1], output
    assert checks["sbatch service[beta]"][0] == "OK", output  # beta's own service still answers
    for name in PER_CHAIN:
        assert checks[f"{name}[alpha]"][0] == "OK", output
    assert checks["slurm"][0] == "OK", output


def test_a_full_run_logs_every_state_change_and_no_secret(
    provider_stack: ProviderStack, supervisor: SupervisorProcess, keystore: tuple[Path, Path]
) -> None:
    stack = provider_stack
    job_id = stack.request("sleep 2; echo done", 500)
    stack.wait_status(job_id, S.FINISHED)
    job = "0x" + job_id.hex()

    def closed() -> bool:
        return any('"job closed"' in line and job in line for line in supervisor.text().splitlines())

    wait_for("the job closed in the log", closed, 60)
    _, _, doctor_output = doctor(supervisor)
    _, _, failing_doctor = doctor(supervisor, GRID_SUPERVISOR_CHAIN__CHAIN_ID="5")
    supervisor.stop()
    log = supervisor.text()

    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert lines and all(line.startswith("{") for line in log.splitlines()[: len(lines)])  # JSON lines
    assert any(entry["level"] == "debug" for entry in lines)  # the level setting reached the logger
    ours = [entry for entry in lines if entry.get("job_id") == job]
    events = [entry["event"] for entry in ours]
    assert "job claimed" in events
    reported = [entry["status"] for entry in ours if entry["event"] == "status reported"]
    assert reported == ["RUNNING", "FINISHED"]
    changes = [entry["status"] for entry in ours if entry["event"] == "chain status changed"]
    assert "RUNNING" in changes
    assert "job closed" in events

    key_hex = stack.provider.key.hex().removeprefix("0x")
    for text, where in (
        (log, "the supervisor's log"),
        (doctor_output, "the doctor"),
        (failing_doctor, "the doctor"),
    ):
        lowered = text.lower()
        assert key_hex.lower() not in lowered, where
        assert PASSWORD.lower() not in lowered, where
        assert keystore[0].read_text()[:40] not in text, where  # nor the keystore itself


@pytest.mark.skipif(os.geteuid() != 0, reason="the install script runs as root")
def test_installed_release_runs_the_doctor(supervisor: SupervisorProcess, tmp_path: Path) -> None:
    """scripts/install.sh into temporary folders (systemd is not running here), then its doctor."""
    service_user = "grid-svc"  # an existing user: the test does not add users to the machine
    result = subprocess.run(
        ["bash", str(Path(__file__).resolve().parents[2] / "scripts" / "install.sh"),
         "--prefix", str(tmp_path / "opt"), "--config-dir", str(tmp_path / "etc"),
         "--unit-dir", str(tmp_path / "units"), "--user", service_user, "--create-key"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    key = tmp_path / "etc" / "provider.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert key.read_text().strip().removeprefix("0x") not in result.stdout + result.stderr
    unit = (tmp_path / "units" / "grid-supervisor.service").read_text()
    assert (
        f"ExecStart={tmp_path}/opt/venv/bin/grid-supervisor run --config {tmp_path}/etc/supervisor.toml"
        in unit
    )
    assert f"User={service_user}" in unit
    installed = tmp_path / "opt" / "venv" / "bin" / "grid-supervisor"
    checked = subprocess.run(
        [str(installed), "doctor", "--config", str(supervisor.config)],
        env=supervisor.env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK    contract" in checked.stdout
    assert "through libslurm's call" in checked.stdout  # install.sh built the release's binding
