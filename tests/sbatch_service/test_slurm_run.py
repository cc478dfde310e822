"""Rendered workflows run for real on the test Slurm cluster, submitted as the supervisor submits.

Host-only workflows run as they are. Container steps run with stand-in `enroot` and `apptainer`
executables first on PATH (tests/sbatch_service/standins): they record every call and run the
command on the host, so the tests assert the exact commands the script gives the real tools.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.slurm import SlurmCluster
from tests.sbatch_service.slurm_helpers import Finished, render_for_slurm, run_on_slurm

STANDINS = Path(__file__).parent / "standins"


@pytest.fixture(scope="module")
def slurm(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The project's single-node cluster (scripts/cluster.sh up, once per session)."""
    return slurm_cluster


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def run(workflow: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None) -> tuple[Finished, str]:
    storage = tmp_path / "storage"
    job, script = render_for_slurm(workflow, storage)
    return run_on_slurm(script, job, tmp_path / "job", env), script


def storage_left(tmp_path: Path) -> list[Path]:
    root = tmp_path / "storage" / str(os.getuid())
    return sorted(root.iterdir()) if root.exists() else []


def host(command: str, **run_fields: Any) -> dict[str, Any]:
    return {"run": {"command": command, **run_fields}}


def test_loops_environment_passing_and_storage_cleanup(
    slurm: SlurmCluster, tmp_path: Path, out: Path
) -> None:
    workflow = {
        "resources": {"tasks": 2, "cpusPerTask": 1, "memPerCpu": 100, "gpus": 0},
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {
                "name": "fan-out",
                "for": {
                    "parallel": True,
                    "items": ["a", "b", "c"],
                    "steps": [{"name": "w", **host('echo "item $item" > "$OUT/item-$item"')}],
                },
            },
            {
                "name": "countdown",
                "for": {
                    "range": {"begin": 3, "end": 1, "increment": -1},
                    "steps": [{"name": "c", **host('echo "$index" >> "$OUT/countdown"')}],
                },
            },
            {
                "name": "export",
                **host(
                    'echo "ANSWER=42" >> "$DEEPSQUARE_ENV"; echo "GREETING=hello world" >> "$DEEPSQUARE_ENV"'
                ),
            },
            {
                "name": "use",
                **host(
                    'echo "$ANSWER|$GREETING" > "$OUT/env"; echo "$STORAGE_PATH" > "$OUT/storage";'
                    ' echo "$NTASKS $CPUS_PER_TASK $MEM_PER_CPU $CPUS $MEM" > "$OUT/resources";'
                    ' test -d "$DEEPSQUARE_OUTPUT" && test -d "$DEEPSQUARE_INPUT" && pwd > "$OUT/pwd"',
                    shell="/bin/bash",
                ),
            },
        ],
    }
    finished, _ = run(workflow, tmp_path)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    for item in "abc":
        assert (out / f"item-{item}").read_text() == f"item {item}\n"
    assert (out / "countdown").read_text() == "3\n2\n1\n"
    assert (out / "env").read_text() == "42|hello world\n"
    assert (out / "resources").read_text() == "2 1 100 2 200\n"
    storage = (out / "storage").read_text().strip()
    assert storage == str(tmp_path / "storage" / str(os.getuid()) / f"job-{finished.job_id}")
    assert (out / "pwd").read_text().strip() == storage
    assert storage_left(tmp_path) == [], "the per-job storage folder is removed at exit"


def test_catch_runs_after_a_failure_and_finally_always_runs(
    slurm: SlurmCluster, tmp_path: Path, out: Path
) -> None:
    workflow = {
        "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 100, "gpus": 0},
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {
                "name": "fails",
                **host("exit 3"),
                "catch": [{"name": "c", **host('echo "caught $DEEPSQUARE_ERROR_CODE" > "$OUT/catch"')}],
                "finally": [{"name": "f", **host('echo yes > "$OUT/finally-1"')}],
            },
            {"name": "after", **host('echo after > "$OUT/after"')},
            {"name": "skipped", "if": '[ "$NTASKS" = 5 ]', **host('echo no > "$OUT/skipped"')},
            {
                "name": "fails-uncaught",
                **host("exit 4"),
                "finally": [{"name": "f2", **host('echo yes > "$OUT/finally-2"')}],
            },
            {"name": "never", **host('echo never > "$OUT/never"')},
        ],
    }
    finished, _ = run(workflow, tmp_path)
    assert (finished.state, finished.exit_code) == ("FAILED", 4), finished.output
    assert (out / "catch").read_text() == "caught 3\n"
    assert (out / "finally-1").read_text() == "yes\n"
    assert (out / "after").read_text() == "after\n"
    assert (out / "finally-2").read_text() == "yes\n"
    assert not (out / "skipped").exists()
    assert not (out / "never").exists()
    assert storage_left(tmp_path) == []


def test_launch_depends_on_and_signal_on_parent_exit(slurm: SlurmCluster, tmp_path: Path, out: Path) -> None:
    workflow = {
        "resources": {"tasks": 3, "cpusPerTask": 1, "memPerCpu": 100, "gpus": 0},
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {
                "name": "producer",
                "launch": {
                    "handleName": "producer",
                    "steps": [{"name": "p", **host('sleep 1; echo produced > "$OUT/produced"')}],
                },
            },
            {"name": "consumer", "dependsOn": ["producer"], **host('cat "$OUT/produced" > "$OUT/consumed"')},
            {
                "name": "server",
                "launch": {
                    "steps": [
                        {
                            "name": "s",
                            **host('echo up > "$OUT/server-up"; sleep 600; echo late > "$OUT/server-late"'),
                        }
                    ]
                },
            },
            {
                "name": "client",
                **host('until [ -e "$OUT/server-up" ]; do sleep 0.1; done; echo ok > "$OUT/client"'),
            },
        ],
    }
    finished, _ = run(workflow, tmp_path)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    assert (out / "consumed").read_text() == "produced\n"
    assert (out / "client").read_text() == "ok\n"
    assert not (out / "server-late").exists(), "the launched server was stopped when its parent ended"


HOSTILE = [
    "it's",
    'say "hi"',
    "$(touch {canary})",
    "`touch {canary}`",
    "line one\nline two\n",
    "'\"'\"'",
    "\\'; touch {canary}; echo '",
    "${{HOME}} $$ $? * ~",
    "$'\\x41' %s %n",
    "\t tabs and trailing spaces   ",
    "x" * 4000 + "'$(touch {canary})'",
]


def test_hostile_values_never_escape_their_quoting(slurm: SlurmCluster, tmp_path: Path, out: Path) -> None:
    canary = tmp_path / "canary"
    values = [v.format(canary=canary) for v in HOSTILE]
    reads = " ".join(f'"$HOSTILE_{i}"' for i in range(len(values)))
    step_reads = " ".join(f'"$STEP_{i}"' for i in range(len(values)))
    workdir = tmp_path / "dir with 'quote' and $(touch canary)"
    workdir.mkdir()
    # The command is shell code by design: it must reach the step's shell exactly as written.
    command_text = 'printf \'%s|\' \'a\'"\'"\'b\' "$(echo sub)" `echo tick` "$HOME" > "$OUT/command"'
    workflow = {
        "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 100, "gpus": 0},
        "env": [
            {"key": "OUT", "value": str(out)},
            *({"key": f"HOSTILE_{i}", "value": v} for i, v in enumerate(values)),
        ],
        "steps": [
            {"name": values[0] + values[2], **host(f"printf '%s\\0' {reads} > \"$OUT/job-env\"")},
            {
                "name": "step env",
                **host(
                    f"printf '%s\\0' {step_reads} > \"$OUT/step-env\"",
                    env=[{"key": f"STEP_{i}", "value": v} for i, v in enumerate(values)],
                ),
            },
            {
                "name": "items",
                "for": {
                    "items": values,
                    "steps": [{"name": "i", **host('printf \'%s\\0\' "$item" >> "$OUT/items"')}],
                },
            },
            {"name": "workdir", **host('pwd > "$OUT/pwd"', workDir=str(workdir))},
            {"name": "command", **host(command_text)},
            {
                "name": "if",
                "if": "[ \"a'b\" = \"a'b\" ] && [ '$(x)' = '$(x)' ]",
                **host('echo yes > "$OUT/if"'),
            },
        ],
    }
    finished, script = run(workflow, tmp_path)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    expected = "\0".join(values) + "\0"
    assert (out / "job-env").read_text() == expected
    assert (out / "step-env").read_text() == expected
    assert (out / "items").read_text() == expected
    assert (out / "pwd").read_text() == f"{workdir}\n"
    direct = subprocess.run(
        ["/bin/sh", "-c", command_text.replace('"$OUT/command"', "/dev/stdout")],
        capture_output=True,
        text=True,
        env={"HOME": os.environ.get("HOME", "/root")},
    )
    assert (out / "command").read_text() == direct.stdout
    assert (out / "if").read_text() == "yes\n"
    assert not canary.exists(), "a value was executed"
    assert not (workdir / "canary").exists()
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run(["shellcheck", "--shell=bash", "-"], input=script, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def standin_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    log = tmp_path / "standin.jsonl"
    return {"PATH": f"{STANDINS}:{os.environ['PATH']}", "GRID_STANDIN_LOG": str(log)}, log


def container_name(argv: list[str]) -> str:
    if argv[0] == "create":
        return argv[2]
    if argv[0] == "remove":
        return argv[-1]
    return next(a for a in argv if a.startswith("step-"))


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


# A step variable that the container tools receive: it must arrive intact, never executed.
CONTAINER_VALUE = 'it\'s "$(touch canary)" `touch canary` a,b  $HOME'
ENROOT_COMMAND = 'echo "$item $FOO $STORAGE_PATH" > "$OUT/enroot-$item-$SLURM_PROCID"'


def test_enroot_steps_import_once_then_create_start_remove_per_task(
    slurm: SlurmCluster, tmp_path: Path, out: Path
) -> None:
    env, log = standin_env(tmp_path)
    workflow = {
        "resources": {"tasks": 2, "cpusPerTask": 1, "memPerCpu": 100, "gpus": 0},
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {
                "name": "loop",
                "for": {
                    "items": ["a", "b"],
                    "steps": [
                        {
                            "name": "echo",
                            "run": {
                                "resources": {"tasks": 2},
                                "workDir": "/tmp",
                                "container": {
                                    "registry": "registry.example.com",
                                    "image": "team/tool:1.0",
                                    "username": "robot",
                                    "password": "s3cr'et",
                                },
                                "env": [{"key": "FOO", "value": CONTAINER_VALUE}],
                                "command": ENROOT_COMMAND,
                            },
                        }
                    ],
                },
            },
            {"name": "credentials", **host('cp "$ENROOT_CONFIG_PATH/.credentials" "$OUT/credentials"')},
        ],
    }
    finished, _ = run(workflow, tmp_path, env)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    storage = str(tmp_path / "storage" / str(os.getuid()) / f"job-{finished.job_id}")
    for item in "ab":
        for task in "01":
            assert (out / f"enroot-{item}-{task}").read_text() == f"{item} {CONTAINER_VALUE} /deepsquare\n"
    assert (out / "credentials").read_text() == "machine registry.example.com login robot password s3cr'et\n"

    recorded = calls(log)
    image = recorded[0]["argv"][2]
    assert recorded[0]["argv"] == ["import", "-o", image, "--", "docker://registry.example.com#team/tool:1.0"]
    assert image.startswith(f"{storage}/images/") and image.endswith(".sqsh")
    assert sum(1 for c in recorded if c["argv"][0] == "import") == 1
    containers: dict[str, list[list[str]]] = {}
    for call in recorded[1:]:
        containers.setdefault(container_name(call["argv"]), []).append(call["argv"])
    assert len(containers) == 4, "one container per loop iteration and task"
    for name, sequence in containers.items():
        assert [argv[0] for argv in sequence] == ["create", "start", "remove"]
        assert sequence[0] == ["create", "--name", name, image]
        assert sequence[2] == ["remove", "-f", name]
        start = sequence[1]
        assert start[:12] == [
            "start",
            "--rw",
            "--mount",
            f"{storage}:/deepsquare",
            "--env",
            "STORAGE_PATH=/deepsquare",
            "--env",
            "DEEPSQUARE_INPUT=/deepsquare/input",
            "--env",
            "DEEPSQUARE_OUTPUT=/deepsquare/output",
            "--env",
            "DEEPSQUARE_ENV=/deepsquare/env",
        ]
        assert start[start.index("item") - 1 : start.index("item") + 1] == ["--env", "item"]
        assert f"FOO={CONTAINER_VALUE}" in start and "OUT" in start
        assert start[start.index(name) :] == [
            name,
            "/bin/sh",
            "-c",
            "cd '/tmp' || exit 1\n" + ENROOT_COMMAND,
        ]
        assert name.endswith(f"-{finished.job_id}-{name.split('-')[-2]}-{name.split('-')[-1]}")
    assert storage_left(tmp_path) == []
    assert not Path("/tmp/canary").exists() and not (tmp_path / "job" / "canary").exists()


def test_apptainer_steps_pull_once_then_exec(slurm: SlurmCluster, tmp_path: Path, out: Path) -> None:
    env, log = standin_env(tmp_path)
    command = 'echo "$FOO $STORAGE_PATH $DEEPSQUARE_OUTPUT" > "$OUT/apptainer-$SLURM_PROCID"'
    workflow = {
        "resources": {"tasks": 2, "cpusPerTask": 1, "memPerCpu": 100, "gpus": 0},
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {
                "name": "exec",
                "run": {
                    "resources": {"tasks": 2},
                    "workDir": str(out),
                    "shell": "/bin/bash",
                    "container": {
                        "registry": "ghcr.io",
                        "image": "org/trainer:latest",
                        "apptainer": True,
                        "username": "bot",
                        "password": "tok",
                    },
                    "env": [{"key": "FOO", "value": CONTAINER_VALUE}],
                    "command": command,
                },
            },
            {
                "name": "entrypoint",
                "run": {
                    "container": {
                        "registry": "ghcr.io",
                        "image": "org/trainer:latest",
                        "apptainer": True,
                        "username": "bot",
                        "password": "tok",
                        "mountHome": True,
                        "readOnlyRootFS": True,
                    },
                    "shell": "ENTRYPOINT",
                    "workDir": str(out),
                    "command": "touch entrypoint-ran",
                },
            },
        ],
    }
    finished, _ = run(workflow, tmp_path, env)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    storage = str(tmp_path / "storage" / str(os.getuid()) / f"job-{finished.job_id}")
    for task in "01":
        assert (
            out / f"apptainer-{task}"
        ).read_text() == f"{CONTAINER_VALUE} /deepsquare /deepsquare/output\n"
    recorded = calls(log)
    assert [c["argv"][0] for c in recorded] == ["pull", "exec", "exec", "run"]
    image = recorded[0]["argv"][1]
    assert recorded[0]["argv"] == ["pull", image, "docker://ghcr.io/org/trainer:latest"]
    assert image.startswith(f"{storage}/images/") and image.endswith(".sif")
    assert recorded[0]["env"] == {"APPTAINER_DOCKER_USERNAME": "bot", "APPTAINER_DOCKER_PASSWORD": "tok"}
    for call in recorded[1:3]:
        assert call["argv"] == [
            "exec",
            "--contain",
            "--writable-tmpfs",
            "--no-home",
            "--nv",
            "--pwd",
            str(out),
            "--bind",
            f"{storage}:/deepsquare",
            image,
            "/bin/bash",
            "-c",
            command,
        ]
        assert call["env"]["APPTAINERENV_FOO"] == CONTAINER_VALUE
        assert call["env"]["APPTAINERENV_STORAGE_PATH"] == "/deepsquare"
    assert sorted(c["procid"] for c in recorded[1:3]) == ["0", "1"]
    assert recorded[3]["argv"] == [
        "run",
        "--contain",
        "--nv",
        "--pwd",
        str(out),
        "--bind",
        f"{storage}:/deepsquare",
        image,
        "touch",
        "entrypoint-ran",
    ]
    assert (out / "entrypoint-ran").exists()
    assert not (out / "canary").exists() and not (tmp_path / "job" / "canary").exists()


def test_gpu_steps_get_their_gpus(slurm: SlurmCluster, tmp_path: Path, out: Path) -> None:
    workflow = {
        "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 100, "gpus": 2},
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {
                "name": "one-gpu",
                **host(
                    'echo "${CUDA_VISIBLE_DEVICES:-none}" > "$OUT/one"',
                    resources={"tasks": 1, "gpusPerTask": 1},
                ),
            },
            {"name": "no-gpu", **host('echo "${SLURM_STEP_GPUS:-none}" > "$OUT/none"')},
        ],
    }
    finished, _ = run(workflow, tmp_path)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    assert len((out / "one").read_text().strip().split(",")) == 1
    assert (out / "none").read_text() == "none\n"
