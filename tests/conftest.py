"""Shared fixtures: each component's fixtures live in tests/fixtures/.

Tests that run the whole stack (a supervisor process, jobs on Slurm, the release clusters) are marked
`slow`: `pytest -m "not slow"` runs the others in a few minutes; CI runs everything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.chain",
    "tests.fixtures.contracts",
    "tests.fixtures.chain_layer",
    "tests.fixtures.sbatch",
    "tests.fixtures.slurm",
    "tests.fixtures.supervisor",
    "tests.fixtures.ops",
]

TESTS = Path(__file__).resolve().parent
#: Folders and modules whose tests start the whole stack or wait on Slurm's clock.
SLOW = ("daemon", "ops", "sdk", "grid_dev/test_up.py", "slurm/test_releases.py", "slurm/test_time_limits.py")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: runs the whole stack or waits on Slurm (minutes)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        relative = Path(str(item.path)).resolve().relative_to(TESTS).as_posix()
        if any(relative == slow or relative.startswith(slow + "/") for slow in SLOW):
            item.add_marker(pytest.mark.slow)
