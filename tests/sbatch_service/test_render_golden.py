"""Golden files pin the rendered scripts; each script also passes `bash -n` and shellcheck.

Regenerate after an intended change with
`GRID_UPDATE_GOLDEN=1 pytest tests/sbatch_service/test_render_golden.py`
and review the diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sbatch_service.loader import load_workflow
from sbatch_service.names import SeededNames
from sbatch_service.renderer import RenderOptions, render

HERE = Path(__file__).parent
WORKFLOWS = sorted((HERE / "workflows").glob("*.yaml"))
GOLDEN = HERE / "golden"


def render_file(path: Path) -> str:
    return render(
        load_workflow(path.read_text()), SeededNames(0), RenderOptions(storage_root="/opt/cache/shared")
    )


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_rendering_matches_golden_file(workflow: Path) -> None:
    script = render_file(workflow)
    golden = GOLDEN / f"{workflow.stem}.sh"
    if os.environ.get("GRID_UPDATE_GOLDEN") == "1":
        golden.write_text(script)
    assert golden.is_file(), f"no golden file {golden.name}: run with GRID_UPDATE_GOLDEN=1"
    assert script == golden.read_text()


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_rendering_is_deterministic(workflow: Path) -> None:
    assert render_file(workflow) == render_file(workflow)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_rendered_script_passes_bash_and_shellcheck(workflow: Path, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text(render_file(workflow))
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck missing: run scripts/bootstrap.sh"
    lint = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def test_script_starts_with_true_and_has_no_sbatch_directives() -> None:
    for workflow in WORKFLOWS:
        lines = render_file(workflow).splitlines()
        assert lines[0] == "#!/bin/bash"
        first_command = next(line for line in lines[1:] if line and not line.startswith("#"))
        assert first_command == "true"
        assert not any(line.lstrip().startswith("#SBATCH") for line in lines)


def test_random_names_differ_between_renderings() -> None:
    job = load_workflow((HERE / "workflows" / "enroot.yaml").read_text())
    assert render(job) != render(job)
