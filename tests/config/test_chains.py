"""`[[chains]]`: one supervisor serving several deployments; a single `[chain]` stays as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import ConfigError, load_config
from tests.config.test_config import META_SCHEDULER, MINIMAL, error_of, write

OTHER = "0x" + "ab" * 20

TWO = f"""
[[chains]]
name = "fuji"
rpc_url = "https://fuji.example.org"
meta_scheduler = "{META_SCHEDULER}"
chain_id = 43113
max_queued_jobs = 3

[[chains]]
name = "local"
rpc_url = "http://127.0.0.1:8545"
ws_url = "ws://127.0.0.1:8545"
meta_scheduler = "{OTHER}"
chain_id = 31337
confirmations = 2

[chains.key]
file = "/etc/grid-supervisor/local.key"

[chains.sbatch]
grpc_target = "127.0.0.1:50052"

[chains.registration]
prices = {{ gpu_per_min = "1", cpu_per_min = "2", mem_per_min = "0" }}

[key]
file = "/etc/grid-supervisor/key"

[sbatch]
grpc_target = "sbatch.example.org:443"

[slurm]
partition = "main"

[policy]
max_queued_jobs = 4

[registration]
prices = {{ gpu_per_min = "5", cpu_per_min = "6", mem_per_min = "0" }}

[store]
path = "/var/lib/grid-supervisor/state.sqlite"
"""


def test_a_single_chain_is_one_deployment_named_main_on_the_store_file(tmp_path: Path) -> None:
    (deployment,) = load_config(write(tmp_path, MINIMAL)).deployments
    assert deployment.name == "main" and deployment.first
    assert deployment.chain.meta_scheduler == META_SCHEDULER
    assert deployment.store_path == Path("/var/lib/grid-supervisor/state.sqlite")
    assert deployment.key.file == Path("/etc/grid-supervisor/key")
    assert deployment.sbatch.grpc_target == "127.0.0.1:50051"
    assert deployment.max_queued_jobs == 4  # the policy's default: the whole bound


def test_each_chain_takes_the_shared_parts_unless_it_has_its_own(tmp_path: Path) -> None:
    fuji, local = load_config(write(tmp_path, TWO)).deployments
    assert (fuji.name, fuji.chain.chain_id, fuji.first) == ("fuji", 43113, True)
    assert (local.name, local.chain.chain_id, local.first) == ("local", 31337, False)
    assert fuji.key.file == Path("/etc/grid-supervisor/key")
    assert local.key.file == Path("/etc/grid-supervisor/local.key")
    assert fuji.sbatch.grpc_target == "sbatch.example.org:443"
    assert local.sbatch.grpc_target == "127.0.0.1:50052"
    assert fuji.registration is not None and fuji.registration.prices.as_wei()[0] == 5 * 10**18
    assert local.registration is not None and local.registration.prices.as_wei()[0] == 10**18
    assert local.chain.confirmations == 2 and local.chain.ws_url == "ws://127.0.0.1:8545"
    # Each deployment has a state file of its own beside the configured one.
    assert fuji.store_path == Path("/var/lib/grid-supervisor/state.fuji.sqlite")
    assert local.store_path == Path("/var/lib/grid-supervisor/state.local.sqlite")
    assert (fuji.max_queued_jobs, local.max_queued_jobs) == (3, 4)


def test_a_chain_may_keep_the_state_file_it_had_alone(tmp_path: Path) -> None:
    text = TWO.replace("max_queued_jobs = 3\n", 'store_path = "/var/lib/grid-supervisor/state.sqlite"\n', 1)
    fuji, _ = load_config(write(tmp_path, text)).deployments
    assert fuji.store_path == Path("/var/lib/grid-supervisor/state.sqlite")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('[[chains]]\nname = "local"', '[chain]\nname = "local"'), "chain.name: unknown setting"),
        (('name = "local"', 'name = "fuji"'), "chains: two deployments have the same name: fuji"),
        (('name = "local"', 'name = "Local Chain"'), "chains.1.name: String should match pattern"),
        (
            (
                f'meta_scheduler = "{OTHER}"\nchain_id = 31337',
                f'meta_scheduler = "{META_SCHEDULER}"\nchain_id = 43113',
            ),
            f"chains: two deployments have the same chain id and meta_scheduler: 43113 {META_SCHEDULER.lower()}",
        ),
        (
            ("max_queued_jobs = 3", "max_queued_jobs = 5"),
            "chains.0.max_queued_jobs (5) exceeds policy.max_queued_jobs (4), the bound over every chain",
        ),
        (
            ('[key]\nfile = "/etc/grid-supervisor/key"\n', ""),
            "chains.0.key: missing (set [key] for every chain, or one in this chain's entry)",
        ),
        (
            (
                "max_queued_jobs = 3\n",
                'max_queued_jobs = 3\nstore_path = "/var/lib/grid-supervisor/state.local.sqlite"\n',
            ),
            "chains: two deployments have the same store_path: /var/lib/grid-supervisor/state.local.sqlite",
        ),
    ],
)
def test_a_list_that_cannot_be_served_is_refused_naming_what(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    old, new = change
    assert old in TWO
    assert expected in error_of(tmp_path, TWO.replace(old, new, 1))


def test_chain_and_chains_together_are_refused(tmp_path: Path) -> None:
    text = MINIMAL + TWO.split("[key]")[0]
    with pytest.raises(
        ConfigError, match=r"set \[chain\] for one deployment or \[\[chains\]\] for several, not both"
    ):
        load_config(write(tmp_path, text))
