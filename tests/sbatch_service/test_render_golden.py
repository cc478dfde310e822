"""Golden files pin the rendered scripts; each script also passes `bash -n` and shellcheck.

Regenerate after an intended change with
`GRID_UPDATE_GOLDEN=1 pytest tests/sbatch_service/test_render_golden.py`
and review the diff. `module.yaml` resolves its modules from the tests' local git repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sbatch_service.loader import load_checked, load_workflow
from sbatch_service.modules import GitFetcher
from sbatch_service.names import SeededNames
from sbatch_service.renderer import RenderOptions, render
from tests.sbatch_service.module_repo import module_fetcher

HERE = Path(__file__).parent
WORKFLOWS = sorted((HERE / "workflows").glob("*.yaml"))
GOLDEN = HERE / "golden"


@pytest.fixture(scope="module")
def fetcher(tmp_path_factory: pytest.TempPathFactory) -> GitFetcher:
    return module_fetcher(tmp_path_factory.mktemp("modules"))


def render_file(path: Path, fetcher: GitFetcher | None = None) -> str:
    checked = load_checked(path.read_text(), fetcher=fetcher)
    return render(checked.job, SeededNames(0), RenderOptions(storage_root="/opt/cache/shared"))


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_rendering_matches_golden_file(workflow: Path, fetcher: GitFetcher) -> None:
    script = render_file(workflow, fetcher)
    golden = GOLDEN / f"{workflow.stem}.sh"
    if os.environ.get("GRID_UPDATE_GOLDEN") == "1":
        golden.write_text(script)
    assert golden.is_file(), f"no golden file {golden.name}: run with GRID_UPDATE_GOLDEN=1"
    assert script == golden.read_text()


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_rendering_is_deterministic(workflow: Path, fetcher: GitFetcher) -> None:
    assert render_file(workflow, fetcher) == render_file(workflow, fetcher)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_rendered_script_passes_bash_and_shellcheck(
    workflow: Path, tmp_path: Path, fetcher: GitFetcher
) -> None:
    script = tmp_path / "script.sh"
    script.write_text(render_file(workflow, fetcher))
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck missing: run scripts/bootstrap.sh"
    lint = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def test_script_starts_with_true_and_has_no_sbatch_directives(fetcher: GitFetcher) -> None:
    for workflow in WORKFLOWS:
        lines = render_file(workflow, fetcher).splitlines()
        assert lines[0] == "#!/bin/bash"
        first_command = next(line for line in lines[1:] if line and not line.startswith("#"))
        assert first_command == "true"
        assert not any(line.lstrip().startswith("#SBATCH") for line in lines)


def test_random_names_differ_between_renderings() -> None:
    job = load_workflow((HERE / "workflows" / "enroot.yaml").read_text())
    assert render(job) != render(job)


def test_the_golden_workflows_cover_every_field_of_the_reference() -> None:
    """Every input field of schema.graphql (but the logger's) appears in some golden workflow."""
    from sbatch_service.schema import SCHEMA

    text = "\n".join(path.read_text() for path in WORKFLOWS)
    text += (HERE / "modules" / "greeting.yaml").read_text()
    missing = []
    for type_ in SCHEMA.type_map.values():
        fields = getattr(type_, "fields", None)
        if type_.name.startswith("__") or type_.name in ("Query", "Mutation") or not fields:
            continue
        for name in fields:
            if name != "enableLogging" and f"{name}:" not in text:
                missing.append(f"{type_.name}.{name}")
    assert missing == []
