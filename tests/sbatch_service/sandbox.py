"""A throw-away sandbox for rendered batch scripts that carry hostile values.

The script runs under bash in its own mount and network namespaces (`unshare --mount --net`, with
`--map-root-user` when the tests do not run as root): nothing it mounts outlives it and it reaches
no network but its own loopback. The stand-ins come first on PATH: `sandbox_bin` (srun runs each
task here, scontrol names this one node) and `standins` (Enroot and Apptainer, which record their
calls). Canaries are files outside the job's folder that a hostile value would create if it escaped
its quoting; the tests assert that none appears.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbatch_service.models import Limits
from sbatch_service.modules import prepare
from sbatch_service.names import SeededNames
from sbatch_service.renderer import render
from tests.sbatch_service.slurm_helpers import STANDINS, calls, site_options

SANDBOX_BIN = Path(__file__).parent / "sandbox_bin"
RUN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Sandboxed:
    returncode: int
    output: str
    script: str
    job_id: str
    folder: Path

    @property
    def storage(self) -> Path:
        """The job's folder while it ran (the script removes it when it ends)."""
        return self.folder / "storage" / str(os.getuid()) / f"job-{self.job_id}"

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        return calls(self.folder / "standin.jsonl", tool)


def unshare_command() -> list[str]:
    """New mount and network namespaces; as another user than root, inside a user namespace too."""
    command = ["unshare", "--mount", "--net"]
    if os.geteuid() != 0:
        command.append("--map-root-user")
    return command


def render_workflow(workflow: dict[str, Any], folder: Path, limits: Limits | None = None) -> str:
    """The script of a workflow as `grid-sbatch render` makes it, with the job folders under `folder`."""
    job = prepare(workflow, limits).job
    return render(job, SeededNames(0), site_options(folder / "storage"))


def run_script(script: str, folder: Path, env: dict[str, str] | None = None) -> Sandboxed:
    """Run a rendered script in the sandbox and wait for it (deadline RUN_TIMEOUT_S)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job").mkdir(exist_ok=True)
    path = folder / "job.sh"
    path.write_text(script)
    job_id = str(secrets.randbelow(10**6) + 1)
    inner = 'ip link set lo up 2>/dev/null || true; exec bash "$0"'
    environment = {
        "PATH": f"{SANDBOX_BIN}:{STANDINS}:{os.environ['PATH']}",
        "HOME": str(folder / "job"),
        "LANG": "C.UTF-8",
        "GRID_STANDIN_LOG": str(folder / "standin.jsonl"),
        "GRID_SANDBOX_DIR": str(folder),
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "0x" + secrets.token_hex(32),
        "SLURM_NODELIST": "localhost",
        **(env or {}),
    }
    done = subprocess.run(
        [*unshare_command(), "sh", "-c", inner, str(path)],
        cwd=folder / "job",
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    return Sandboxed(done.returncode, done.stdout + done.stderr, script, job_id, folder)


def run_workflow(
    workflow: dict[str, Any], folder: Path, env: dict[str, str] | None = None, limits: Limits | None = None
) -> Sandboxed:
    return run_script(render_workflow(workflow, folder, limits), folder, env)
