"""`scripts/install.sh --with-logger` into temporary folders: the log service's unit, settings and
master key, and the installed `grid-logger serve` starting from them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from grid_dev.anvil import free_port
from tests.fixtures.contracts import Grid
from tests.fixtures.supervisor import wait_for

INSTALL = Path(__file__).resolve().parents[2] / "scripts" / "install.sh"


@pytest.mark.skipif(os.geteuid() != 0, reason="the install script runs as root")
def test_install_with_logger_gives_a_service_that_starts_from_its_files(grid: Grid, tmp_path: Path) -> None:
    user = "grid-svc"  # an existing user: the test does not add users to the machine
    prefix, config, logger_config, units = (tmp_path / name for name in ("opt", "etc", "etc-logger", "units"))
    command = ["bash", str(INSTALL), "--prefix", str(prefix), "--config-dir", str(config), "--unit-dir", str(units),
               "--user", user, "--with-logger", "--logger-user", user, "--logger-config-dir", str(logger_config)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    unit = (units / "grid-logger.service").read_text()
    assert f"ExecStart={prefix}/venv/bin/grid-logger serve --config {logger_config}/logger.toml" in unit
    assert f"LoadCredential=master.key:{logger_config}/master.key" in unit
    assert f"User={user}" in unit and "User=grid-logger" not in unit
    key = logger_config / "master.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert len(bytes.fromhex(key.read_text().strip())) == 32
    settings = logger_config / "logger.toml"
    assert oct(settings.stat().st_mode & 0o777) == "0o640"
    assert "back up" in result.stderr
    first_key = key.read_text()

    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert key.read_text() == first_key and "back up" not in again.stderr, "the key is never replaced"

    log = tmp_path / "serve.log"
    target = f"127.0.0.1:{free_port()}"
    env = {
        "PATH": os.environ["PATH"],
        "GRID_LOGGER_LISTEN_ADDRESS": target,
        "GRID_LOGGER_STORAGE_PATH": str(tmp_path / "logs"),
        "GRID_LOGGER_MASTER_KEY_FILE": str(key),
        "GRID_LOGGER_RPC_URL": grid.anvil.http_url,
    }
    refused = subprocess.run(
        [str(prefix / "venv" / "bin" / "grid-logger"), "serve", "--config", str(settings)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and "metascheduler_address is required" in refused.stderr
    env["GRID_LOGGER_METASCHEDULER_ADDRESS"] = grid.deployment.meta_scheduler
    with log.open("wb") as out:
        service = subprocess.Popen(
            [str(prefix / "venv" / "bin" / "grid-logger"), "serve", "--config", str(settings)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for("the installed service to listen", lambda: f"listening on {target}" in log.read_text(), 60)
    finally:
        service.terminate()
        assert service.wait(timeout=30) == 0, log.read_text()
