"""The optional pyslurm backend: it runs only where a pyslurm matching the site's Slurm is installed."""

from __future__ import annotations

import importlib.util

import pytest

from supervisor.slurm import BackendUnavailable, SlurmSettings, create_backend
from supervisor.slurm.pyslurm_backend import PyslurmBackend
from tests.fixtures.slurm import SlurmCluster

PYSLURM_MISSING = importlib.util.find_spec("pyslurm") is None
SKIP_REASON = (
    "pyslurm is not installable here: PyPI has only 25.11 (refuses Slurm 22.05) and the 22.5 line is "
    "source-only on GitHub"
)


@pytest.mark.skipif(not PYSLURM_MISSING, reason="pyslurm is installed")
def test_choosing_pyslurm_without_it_is_a_clear_refusal() -> None:
    with pytest.raises(BackendUnavailable, match="needs pyslurm built for this site's Slurm release"):
        create_backend(SlurmSettings(backend="pyslurm", partition="grid"))


@pytest.mark.skipif(PYSLURM_MISSING, reason=SKIP_REASON)
async def test_pyslurm_backend_against_the_cluster(slurm_cluster: SlurmCluster) -> None:
    backend = PyslurmBackend(SlurmSettings(backend="pyslurm", partition=slurm_cluster.partition))
    health = await backend.health()
    assert health.controller_reachable
    hardware = await backend.describe_partition()
    assert hardware.cpus_per_node == [slurm_cluster.cpus_per_node]
    result = await backend.query(["0x" + "00" * 32])
    assert result.not_found == {"0x" + "00" * 32}
