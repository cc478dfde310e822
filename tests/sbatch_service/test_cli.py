"""`grid-sbatch render` and the settings file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sbatch_service.settings import load_settings

GRID_SBATCH = str(Path(sys.executable).parent / "grid-sbatch")
WORKFLOWS = Path(__file__).parent / "workflows"
GOLDEN = Path(__file__).parent / "golden"


def test_render_prints_the_script() -> None:
    rendered = subprocess.run(
        [GRID_SBATCH, "render", str(WORKFLOWS / "hello.yaml")], capture_output=True, text=True, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout == (GOLDEN / "hello.sh").read_text()


def test_render_accepts_json(tmp_path: Path) -> None:
    workflow = tmp_path / "w.json"
    workflow.write_text(
        '{"resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 1}, "steps": [{"run": {"command": "x"}}]}'
    )
    rendered = subprocess.run(
        [GRID_SBATCH, "render", str(workflow)], capture_output=True, text=True, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    assert "/bin/sh -c 'x'" in rendered.stdout


def test_render_reports_ignored_keys_on_stderr(tmp_path: Path) -> None:
    workflow = tmp_path / "w.yaml"
    workflow.write_text(
        "resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 1}\n"
        "steps:\n  - name: s\n    network: slirp4netns\n    run: {command: x, mountHome: true}\n"
    )
    rendered = subprocess.run(
        [GRID_SBATCH, "render", str(workflow)], capture_output=True, text=True, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.startswith("#!/bin/bash\n")
    assert rendered.stderr.splitlines() == [
        "warning: steps[0].network: ignored: network belongs in run (steps[].run.network), "
        "as the reference ignores it here",
        "warning: steps[0].run.mountHome: ignored: mountHome belongs in run.container, "
        "as the reference ignores it here",
    ]


def test_render_reports_errors_with_exit_status_2(tmp_path: Path) -> None:
    workflow = tmp_path / "bad.yaml"
    workflow.write_text(
        "resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 1}\nsteps:\n  - run: {command: x, shel: /bin/sh}\n"
    )
    rendered = subprocess.run(
        [GRID_SBATCH, "render", str(workflow)], capture_output=True, text=True, check=False
    )
    assert rendered.returncode == 2
    assert rendered.stdout == ""
    assert "steps[0].run.shel: Field 'shel' is not defined by type 'StepRun'" in rendered.stderr
    missing = subprocess.run(
        [GRID_SBATCH, "render", str(tmp_path / "nope.yaml")], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr


def test_settings_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "sbatch.yaml"
    config.write_text(
        "grpc_port: 6000\nstorage_root: /data/grid\nscript_ttl_seconds: 60\n"
        "disk_tmp: /scratch/user-{uid}\nmodule_allowed_hosts: [git.example.org]\n"
    )
    monkeypatch.setenv("GRID_SBATCH_GRPC_PORT", "7000")
    settings = load_settings(config)
    assert settings.grpc_port == 7000
    assert settings.storage_root == "/data/grid"
    assert settings.script_ttl_seconds == 60
    assert settings.render_options.storage_root == "/data/grid"
    assert settings.render_options.disk_tmp == "/scratch/user-{uid}"
    assert settings.module_fetcher.settings.allowed_hosts == ("git.example.org",)
    assert settings.expose_stored_scripts is False
    monkeypatch.setenv("GRID_SBATCH_EXPOSE_STORED_SCRIPTS", "true")
    assert load_settings(config).expose_stored_scripts is True
    config.write_text("grpc_prot: 1\n")
    with pytest.raises(ValueError, match="grpc_prot"):
        load_settings(config)
    config.write_text("shared_tmp: /cache/with space\n")
    with pytest.raises(ValueError, match="without spaces"):
        load_settings(config)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")


def test_serve_refuses_bad_settings(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "GRID_SBATCH_METASCHEDULER_ADDRESS": ""}
    served = subprocess.run(
        [GRID_SBATCH, "serve"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert served.returncode == 1
    assert "metascheduler_address is required" in served.stderr
    config = tmp_path / "sbatch.yaml"
    config.write_text("graphql_port: many\n")
    served = subprocess.run(
        [GRID_SBATCH, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert served.returncode == 1
    assert "graphql_port" in served.stderr
