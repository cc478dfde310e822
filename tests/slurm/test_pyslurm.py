"""The optional pyslurm backend: it runs only where a pyslurm matching the site's Slurm is installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from supervisor.slurm import (
    BackendUnavailable,
    SlurmCommandFailed,
    SlurmSettings,
    SlurmUnavailable,
    SubmissionRefused,
    create_backend,
)
from supervisor.slurm.pyslurm_backend import PyslurmBackend, pyslurm_failure
from tests.fixtures.slurm import SlurmCluster

DATA = Path(__file__).parent / "data"
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


@pytest.mark.parametrize("release", ["bookworm", "trixie", "forky"])
def test_pyslurm_errors_are_classified_by_slurms_message(release: str) -> None:
    """pyslurm's RPCError carries slurm_strerror()'s text, the reason sbatch prints (recorded here)."""
    recorded = json.loads((DATA / release / "messages.json").read_text())
    reason = recorded["sbatch_invalid_partition"].splitlines()[-1].split("failed: ", 1)[1]
    refused = pyslurm_failure(RuntimeError(reason), submitting=True)
    assert isinstance(refused, SubmissionRefused) and refused.refuses_job
    assert "Invalid partition name specified" in refused.reason
    # A refusal reason outside a submission refuses no job; an unknown cause is retried.
    assert type(pyslurm_failure(RuntimeError(reason), submitting=False)) is SlurmCommandFailed
    assert type(pyslurm_failure(RuntimeError("Unspecified error"), submitting=True)) is SlurmCommandFailed
    for outage in (
        "Unable to contact slurm controller (connect failure)",
        "Socket timed out on send/recv operation",
    ):
        assert isinstance(pyslurm_failure(RuntimeError(outage), submitting=True), SlurmUnavailable)
    assert isinstance(
        pyslurm_failure(ConnectionRefusedError(111, "refused"), submitting=True), SlurmUnavailable
    )
