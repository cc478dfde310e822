"""Shared fixtures: each component's fixtures live in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.chain",
    "tests.fixtures.contracts",
    "tests.fixtures.chain_layer",
    "tests.fixtures.sbatch",
    "tests.fixtures.slurm",
    "tests.fixtures.supervisor",
    "tests.fixtures.ops",
]
