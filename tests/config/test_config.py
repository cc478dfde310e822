"""The daemon's configuration: a TOML file, GRID_SUPERVISOR_* overrides, and errors that name the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from supervisor.config import ENV_PREFIX, ConfigError, SupervisorConfig, load_config

GRID_SUPERVISOR = Path(sys.executable).parent / "grid-supervisor"
META_SCHEDULER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DENIED = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"

FULL = f"""
[chain]
rpc_url = "https://rpc.example.org"
ws_url = "wss://rpc.example.org/ws"
meta_scheduler = "{META_SCHEDULER}"
chain_id = 179188
confirmations = 2
start_block = 1234
poll_interval_seconds = 1.5
receipt_deadline_seconds = 45
max_fee_per_gas_gwei = "2.5"

[key]
file = "/etc/grid-supervisor/keystore.json"
password_file = "/etc/grid-supervisor/password"

[sbatch]
grpc_target = "sbatch.example.org:443"
tls = true
timeout_seconds = 10

[slurm]
backend = "ssh"
partition = "gpu"
extra_sbatch_args = ["--qos=grid", "--account=grid"]
command_timeout_seconds = 20
accounting_lookback_days = 7

[slurm.ssh]
host = "login.example.org"
port = 2222
known_hosts = "/etc/grid-supervisor/known_hosts"
client_key = "/etc/grid-supervisor/id_ed25519"
admin_user = "slurm-admin"

[slurm.users]
mode = "per_wallet"
template = "grid-{{hex:.12}}"

[policy]
max_queued_jobs = 12
denied_customers = ["{DENIED}"]
denied_images = ["library/ubuntu:22.04", "team/*"]
auto_top_up = false
jobs_root = "/srv/grid/jobs"
reconcile_interval_seconds = 60
slurm_poll_seconds = 2

[registration]
enabled = true
prices = {{ gpu_per_min = "8.5", cpu_per_min = "0.95", mem_per_min = "0.00008" }}
labels = {{ os = "linux", zone = "eu" }}

[store]
path = "/var/lib/grid-supervisor/state.sqlite"

[log]
level = "debug"
format = "json"

[metrics]
enabled = true
host = "0.0.0.0"
port = 9100
"""

MINIMAL = f"""
[chain]
rpc_url = "http://127.0.0.1:8545"
meta_scheduler = "{META_SCHEDULER}"

[key]
file = "/etc/grid-supervisor/key"

[sbatch]
grpc_target = "127.0.0.1:50051"

[slurm]
partition = "main"
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the variables a test sets may reach the configuration."""
    for name in os.environ:
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "supervisor.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return str(caught.value)


def replace_line(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# -- a valid file ---------------------------------------------------------------------------------


def test_full_file_is_read_into_every_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    (deployment,) = config.deployments
    chain, key, sbatch = deployment.chain, deployment.key, deployment.sbatch
    assert chain.rpc_url == "https://rpc.example.org"
    assert chain.ws_url == "wss://rpc.example.org/ws"
    assert chain.meta_scheduler == META_SCHEDULER
    assert (chain.chain_id, chain.confirmations, chain.start_block) == (179188, 2, 1234)
    assert chain.max_fee_per_gas_gwei == Decimal("2.5")
    assert key.password_file == Path("/etc/grid-supervisor/password")
    assert (sbatch.grpc_target, sbatch.tls) == ("sbatch.example.org:443", True)
    assert config.slurm.backend == "ssh" and config.slurm.ssh is not None
    assert (config.slurm.ssh.host, config.slurm.ssh.port) == ("login.example.org", 2222)
    assert config.slurm.extra_sbatch_args == ("--qos=grid", "--account=grid")
    assert config.slurm.users.user_for(DENIED) == "grid-" + DENIED[2:14].lower()
    assert config.policy.max_queued_jobs == 12
    assert config.policy.denied_customers == frozenset({DENIED.lower()})
    assert config.policy.denied_images == frozenset({"library/ubuntu:22.04", "team/*"})
    assert config.policy.auto_top_up is False
    assert config.policy.jobs_root == Path("/srv/grid/jobs")
    assert config.registration is not None
    # PROTOCOL.md section 3's worked example prices, exact in credit-wei.
    assert config.registration.prices.as_wei() == (85 * 10**17, 95 * 10**16, 8 * 10**13)
    assert config.registration.labels == {"os": "linux", "zone": "eu"}
    assert config.store.path == Path("/var/lib/grid-supervisor/state.sqlite")
    assert (config.log.level, config.log.format) == ("debug", "json")
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9100)


def test_minimal_file_takes_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.policy.max_queued_jobs == 4
    assert config.slurm.backend == "local"
    assert config.registration is None
    assert config.deployments[0].chain.confirmations == 0
    assert config.log.level == "info"


def test_prices_written_as_toml_floats_stay_exact(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + "[registration]\nprices = { gpu_per_min = 8.5, cpu_per_min = 0.95, mem_per_min = 0.00008 }\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.registration is not None
    assert config.registration.prices.as_wei() == (85 * 10**17, 95 * 10**16, 8 * 10**13)


# -- errors name the setting ----------------------------------------------------------------------------


@pytest.mark.parametrize("section", ["chain", "key", "sbatch", "slurm"])
def test_missing_section_is_named(tmp_path: Path, section: str) -> None:
    parts = MINIMAL.split("\n[")
    text = "\n[".join(part for part in parts if not part.startswith(f"{section}]"))
    expected = f"{section}: missing (set it in the file or in the environment)"
    if section == "chain":
        expected = "chain: missing (set [chain] for one deployment, or [[chains]] for several)"
    assert error_of(tmp_path, text) == expected


def test_missing_setting_is_named(tmp_path: Path) -> None:
    text = replace_line(MINIMAL, 'partition = "main"', "")
    assert error_of(tmp_path, text) == "slurm.partition: missing (set it in the file or in the environment)"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (MINIMAL + "[policy]\nmax_queued = 3\n", "policy.max_queued"),
        (MINIMAL.replace("[key]", "[key]\npasword_file = '/p'"), "key.pasword_file"),
        (MINIMAL + "[polcy]\nmax_queued_jobs = 3\n", "polcy"),
        (MINIMAL + "[slurm.users]\nmode = 'service_account'\nuser = 'x'\n", "slurm.users.user"),
    ],
)
def test_unknown_setting_is_named(tmp_path: Path, text: str, where: str) -> None:
    assert error_of(tmp_path, text) == f"{where}: unknown setting"


@pytest.mark.parametrize(
    "address",
    ["0x5FbDB2315678afecb367f032d93F642f64180aa", "5FbDB2315678afecb367f032d93F642f64180aa3", "0xZZ"],
)
def test_bad_contract_address_is_named(tmp_path: Path, address: str) -> None:
    message = error_of(tmp_path, MINIMAL.replace(META_SCHEDULER, address))
    assert message.startswith("chain.meta_scheduler: ")
    assert repr(address) in message and "is not an address" in message


def test_bad_denied_customer_is_named(tmp_path: Path) -> None:
    message = error_of(tmp_path, MINIMAL + '[policy]\ndenied_customers = ["alice"]\n')
    assert message.startswith("policy.denied_customers: ") and "'alice' is not an address" in message


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ('rpc_url = "http://127.0.0.1:8545"', 'rpc_url = "ws://127.0.0.1:8545"', "chain.rpc_url"),
        ('rpc_url = "http://127.0.0.1:8545"', 'rpc_url = "127.0.0.1:8545"', "chain.rpc_url"),
        ("[chain]", '[chain]\nws_url = "http://127.0.0.1:8546"', "chain.ws_url"),
        ('grpc_target = "127.0.0.1:50051"', 'grpc_target = "grpc://127.0.0.1:50051"', "sbatch.grpc_target"),
        ('grpc_target = "127.0.0.1:50051"', 'grpc_target = "127.0.0.1"', "sbatch.grpc_target"),
    ],
)
def test_bad_endpoint_is_named(tmp_path: Path, old: str, new: str, where: str) -> None:
    message = error_of(tmp_path, replace_line(MINIMAL, old, new))
    assert message.startswith(f"{where}: String should match pattern")


@pytest.mark.parametrize(
    ("section", "setting", "value"),
    [
        ("chain", "confirmations", "-1"),
        ("chain", "start_block", "-5"),
        ("chain", "chain_id", "0"),
        ("chain", "poll_interval_seconds", "-0.5"),
        ("chain", "claims_per_transaction", "0"),
        ("chain", "claims_per_transaction", "151"),
        ("sbatch", "timeout_seconds", "0"),
        ("slurm", "command_timeout_seconds", "-3"),
        ("slurm", "accounting_lookback_days", "0"),
        ("policy", "max_queued_jobs", "-1"),
        ("policy", "slurm_poll_seconds", "-1"),
        ("metrics", "port", "-1"),
        ("metrics", "port", "70000"),
    ],
)
def test_number_out_of_range_is_named(tmp_path: Path, section: str, setting: str, value: str) -> None:
    text = MINIMAL.replace(f"[{section}]", f"[{section}]\n{setting} = {value}")
    if f"[{section}]" not in MINIMAL:
        text = MINIMAL + f"[{section}]\n{setting} = {value}\n"
    message = error_of(tmp_path, text)
    assert message.startswith(f"{section}.{setting}: Input should be")


@pytest.mark.parametrize("price", ["gpu_per_min", "cpu_per_min", "mem_per_min"])
def test_negative_price_is_named(tmp_path: Path, price: str) -> None:
    prices = {"gpu_per_min": '"1"', "cpu_per_min": '"1"', "mem_per_min": '"1"', price: '"-0.5"'}
    line = ", ".join(f"{key} = {value}" for key, value in prices.items())
    message = error_of(tmp_path, MINIMAL + f"[registration]\nprices = {{ {line} }}\n")
    assert message == f"registration.prices.{price}: Input should be greater than or equal to 0"


def test_price_with_more_than_18_decimals_is_refused(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[registration]\nprices = { gpu_per_min = "0.0000000000000000001", cpu_per_min = "1", mem_per_min = "1" }\n'
    )
    message = error_of(tmp_path, text)
    assert (
        message
        == "registration.prices.gpu_per_min: Value error, a price has at most 18 decimals (one credit-wei)"
    )


def test_price_with_exactly_18_decimals_is_taken(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[registration]\nprices = { gpu_per_min = "0.000000000000000001", cpu_per_min = "1", mem_per_min = "0" }\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.registration is not None and config.registration.prices.as_wei() == (1, 10**18, 0)


def test_price_with_more_than_18_decimals_names_the_price(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[registration]\nprices = { gpu_per_min = "0.0000000000000000001", cpu_per_min = "1", mem_per_min = "1" }\n'
    )
    assert error_of(tmp_path, text).startswith("registration.prices.gpu_per_min: ")


def test_every_error_is_listed_at_once(tmp_path: Path) -> None:
    text = replace_line(MINIMAL, 'partition = "main"', 'partition = "main"\nbackend = "pbs"')
    text = text.replace(META_SCHEDULER, "0x1") + "[log]\nlevel = 'verbose'\n"
    lines = error_of(tmp_path, text).splitlines()
    assert [line.split(":")[0] for line in lines] == ["chain.meta_scheduler", "slurm.backend", "log.level"]


def test_ssh_backend_without_its_section_is_refused(tmp_path: Path) -> None:
    text = replace_line(MINIMAL, 'partition = "main"', 'partition = "main"\nbackend = "ssh"')
    message = error_of(tmp_path, text)
    assert message.startswith("slurm: ") and "needs an [ssh] section" in message


def test_reserved_sbatch_option_is_refused(tmp_path: Path) -> None:
    text = replace_line(MINIMAL, 'partition = "main"', 'partition = "main"\nextra_sbatch_args = ["--time=5"]')
    message = error_of(tmp_path, text)
    assert message.startswith("slurm.extra_sbatch_args: ") and "'--time=5'" in message


def test_bad_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[policy]\nmax_queued_jobs = = 3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is not valid TOML: ")
    assert f"line {MINIMAL.count(chr(10)) + 2}" in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"configuration file {path} does not exist"


def test_unreadable_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert str(caught.value).startswith(f"cannot read the configuration file {tmp_path}: ")


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(MINIMAL.replace('"main"', '"m\xe9"').encode("latin-1"))
    with pytest.raises(ConfigError):
        load_config(path)


# -- the environment ------------------------------------------------------------------------------------


def test_environment_overrides_a_nested_value_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL + "[policy]\nmax_queued_jobs = 3\nslurm_poll_seconds = 2\n")
    monkeypatch.setenv("GRID_SUPERVISOR_POLICY__MAX_QUEUED_JOBS", "200")
    config = load_config(path)
    assert config.policy.max_queued_jobs == 200
    assert config.policy.slurm_poll_seconds == 2  # the rest of the section stays the file's


def test_environment_overrides_a_section_absent_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRID_SUPERVISOR_POLICY__MAX_QUEUED_JOBS", "7")
    monkeypatch.setenv("GRID_SUPERVISOR_SLURM__PARTITION", "gpu")
    monkeypatch.setenv("GRID_SUPERVISOR_CHAIN__RPC_URL", "https://other.example.org")
    config = load_config(write(tmp_path, MINIMAL))
    assert config.policy.max_queued_jobs == 7
    assert config.slurm.partition == "gpu"
    assert config.deployments[0].chain.rpc_url == "https://other.example.org"
    assert config.deployments[0].chain.meta_scheduler == META_SCHEDULER


def test_environment_alone_is_a_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "CHAIN__RPC_URL": "http://127.0.0.1:8545",
        "CHAIN__META_SCHEDULER": META_SCHEDULER,
        "KEY__FILE": "/k",
        "SBATCH__GRPC_TARGET": "127.0.0.1:1",
        "SLURM__PARTITION": "main",
        "POLICY__DENIED_IMAGES": '["team/*"]',
    }.items():
        monkeypatch.setenv(ENV_PREFIX + name, value)
    config = load_config(None)
    assert isinstance(config, SupervisorConfig)
    assert config.policy.denied_images == frozenset({"team/*"})


@pytest.mark.parametrize(
    ("name", "value", "where"),
    [
        ("GRID_SUPERVISOR_POLICY__MAX_QUEUED_JOBS", "0", "policy.max_queued_jobs"),
        ("GRID_SUPERVISOR_POLICY__MAX_QUEUED_JOBS", "many", "policy.max_queued_jobs"),
        ("GRID_SUPERVISOR_CHAIN__META_SCHEDULER", "0x12", "chain.meta_scheduler"),
        ("GRID_SUPERVISOR_POLICY__MAX_QUEUD_JOBS", "3", "policy.max_queud_jobs"),
    ],
)
def test_bad_environment_value_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, where: str
) -> None:
    monkeypatch.setenv(name, value)
    message = error_of(tmp_path, MINIMAL)
    assert message.startswith(f"{where}: ")


# -- the command line -----------------------------------------------------------------------------------


def run_supervisor(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    environment.update(env)
    return subprocess.run(
        [str(GRID_SUPERVISOR), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


def test_run_with_a_bad_file_exits_2_naming_the_setting(tmp_path: Path) -> None:
    bad = write(
        tmp_path, MINIMAL.replace(META_SCHEDULER, "0x12") + "[policy]\nmax_queued_jobs = -1\n", "bad.toml"
    )
    result = run_supervisor(bad)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("invalid configuration:\n")
    assert "chain.meta_scheduler: Value error, '0x12' is not an address" in result.stderr
    assert "policy.max_queued_jobs: Input should be greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_bad_toml_exits_2(tmp_path: Path) -> None:
    bad = write(tmp_path, "[chain\nrpc_url = 1\n", "bad.toml")
    result = run_supervisor(bad)
    assert result.returncode == 2
    assert f"{bad} is not valid TOML" in result.stderr


def test_run_with_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = run_supervisor(tmp_path / "nowhere.toml")
    assert result.returncode == 2
    assert f"configuration file {tmp_path / 'nowhere.toml'} does not exist" in result.stderr


def test_run_with_a_bad_environment_override_exits_2(tmp_path: Path) -> None:
    result = run_supervisor(write(tmp_path, MINIMAL), GRID_SUPERVISOR_POLICY__MAX_QUEUED_JOBS="0")
    assert result.returncode == 2
    assert "policy.max_queued_jobs: Input should be greater than or equal to 1" in result.stderr


def test_job_folders_kept_longer_than_the_store_remembers_their_jobs_are_refused(tmp_path: Path) -> None:
    text = MINIMAL + "[store]\nretention_days = 5\n[policy]\njob_folder_retention_days = 5\n"
    message = error_of(tmp_path, text)
    assert "policy.job_folder_retention_days (5) must be below store.retention_days (5)" in message
    shorter = text.replace("job_folder_retention_days = 5", "job_folder_retention_days = 4")
    assert load_config(write(tmp_path, shorter)).policy.job_folder_retention_days == 4
