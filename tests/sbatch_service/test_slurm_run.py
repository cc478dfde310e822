"""Rendered workflows run for real on the test Slurm cluster, submitted as the supervisor submits.

Host-only workflows run as they are. Container steps run with stand-in `enroot` and `apptainer`
executables first on PATH (tests/sbatch_service/standins): they record every call and behave as the
real tools do where a batch script can see it (the Enroot stand-in sources the step's `--conf`,
runs its hooks and emulates the image's /etc/rc), so the tests assert the exact commands the script
gives the real tools and what the step's command sees.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.slurm import SlurmCluster
from tests.sbatch_service.slurm_helpers import Finished, calls, render_for_slurm, run_on_slurm, standin_env


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


def storage_of(tmp_path: Path, finished: Finished) -> str:
    return str(tmp_path / "storage" / str(os.getuid()) / f"job-{finished.job_id}")


def storage_left(tmp_path: Path) -> list[Path]:
    root = tmp_path / "storage" / str(os.getuid())
    return sorted(root.iterdir()) if root.exists() else []


def host(command: str, **run_fields: Any) -> dict[str, Any]:
    return {"run": {"command": command, **run_fields}}


def resources(tasks: int = 1, gpus: int = 0) -> dict[str, int]:
    return {"tasks": tasks, "cpusPerTask": 1, "memPerCpu": 100, "gpus": gpus}


def test_loops_environment_passing_and_storage_cleanup(
    slurm: SlurmCluster, tmp_path: Path, out: Path
) -> None:
    workflow = {
        "resources": resources(tasks=2),
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
                    ' test -d "$DEEPSQUARE_OUTPUT" && test -d "$DEEPSQUARE_INPUT" && pwd > "$OUT/pwd";'
                    " for v in DEEPSQUARE_TMP DEEPSQUARE_SHARED_TMP DEEPSQUARE_SHARED_WORLD_TMP"
                    ' DEEPSQUARE_DISK_TMP DEEPSQUARE_DISK_WORLD_TMP; do test -d "${!v}" && echo "$v=${!v}";'
                    ' done > "$OUT/caches"; echo "$SLURM_JOB_NAME" > "$OUT/step-name"',
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
    assert storage == storage_of(tmp_path, finished)
    assert (out / "pwd").read_text().strip() == storage
    caches = tmp_path / "caches"
    uid = os.getuid()
    assert (out / "caches").read_text().splitlines() == [
        f"DEEPSQUARE_TMP={caches}/persistent/user-{uid}",
        f"DEEPSQUARE_SHARED_TMP={caches}/persistent/user-{uid}",
        f"DEEPSQUARE_SHARED_WORLD_TMP={caches}/world-tmp",
        f"DEEPSQUARE_DISK_TMP={caches}/disk/user-{uid}",
        f"DEEPSQUARE_DISK_WORLD_TMP={caches}/disk-world-tmp",
    ]
    assert (out / "step-name").read_text() == "use\n", "srun --job-name is the step's name"
    assert "Running: fan-out\n" in finished.output and "Running: use\n" in finished.output
    assert storage_left(tmp_path) == [], "the per-job storage folder is removed at exit"


def test_catch_runs_after_a_failure_and_finally_always_runs(
    slurm: SlurmCluster, tmp_path: Path, out: Path
) -> None:
    workflow = {
        "resources": resources(),
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {
                "name": "fails",
                **host("exit 3"),
                "catch": [{"name": "c", **host('echo "caught $DEEPSQUARE_ERROR_CODE" > "$OUT/catch"')}],
                "finally": [{"name": "f", **host('echo yes > "$OUT/finally-1"')}],
            },
            {
                "name": "only names",
                **host("exit 5"),
                "catch": [{"name": "catch"}],
                "finally": [{"name": "finally"}],
            },
            {"name": "after", **host('echo after > "$OUT/after"')},
            {"name": "skipped", "if": '"$NTASKS" -eq 5', **host('echo no > "$OUT/skipped"')},
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
    assert (out / "after").read_text() == "after\n", "a name-only catch handles the failure"
    assert "Running: catch\nRunning: finally\n" in finished.output
    assert (out / "finally-2").read_text() == "yes\n"
    assert not (out / "skipped").exists()
    assert not (out / "never").exists()
    assert storage_left(tmp_path) == []


def test_launch_depends_on_and_signal_on_parent_exit(slurm: SlurmCluster, tmp_path: Path, out: Path) -> None:
    workflow = {
        "resources": resources(tasks=3),
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {
                "name": "producer",
                "launch": {
                    "handleName": "producer",
                    "steps": [{"name": "p", **host('sleep 1; echo produced > "$OUT/produced"')}],
                },
            },
            {"name": "consumer", "dependsOn": ["Producer"], **host('cat "$OUT/produced" > "$OUT/consumed"')},
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
    assert (out / "consumed").read_text() == "produced\n", "handles match in any case"
    assert (out / "client").read_text() == "ok\n"
    assert not (out / "server-late").exists(), "the launched server was stopped when the job ended"


def test_services_launched_in_a_group_live_until_the_end_of_the_job(
    slurm: SlurmCluster, tmp_path: Path, out: Path
) -> None:
    """The reference's services-then-main pattern: the group's end does not stop its launches."""
    service = 'for i in $(seq 600); do echo "$i" > "$OUT/$SERVICE"; sleep 0.1; done; echo late > "$OUT/$SERVICE-late"'
    workflow: dict[str, Any] = {
        "resources": resources(tasks=3),
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {
                "name": "services",
                "steps": [
                    {
                        "name": name,
                        "launch": {
                            "handleName": name,
                            "steps": [
                                {"name": name, **host(service, env=[{"key": "SERVICE", "value": name}])}
                            ],
                        },
                    }
                    for name in ("db", "cache")
                ],
            },
            {
                "name": "main",
                **host(
                    'until [ -e "$OUT/db" ] && [ -e "$OUT/cache" ]; do sleep 0.1; done;'
                    ' before="$(cat "$OUT/db") $(cat "$OUT/cache")"; sleep 1;'
                    ' for s in db cache; do [ "$(cat "$OUT/$s")" -gt "${before%% *}" ] || exit 9; before="${before#* }"; done;'
                    ' echo done > "$OUT/main"'
                ),
            },
            {
                "name": "conditions",
                "steps": [
                    {"if": '3 -eq 3 && "${TEST}" = "test"', **host('echo yes > "$OUT/if-true"')},
                    {"if": '"${UNSET_VARIABLE}" = ""', **host('echo yes > "$OUT/if-unset"')},
                    {"if": "1 -eq 2", **host('echo no > "$OUT/if-false"')},
                ],
            },
        ],
    }
    workflow["env"].append({"key": "TEST", "value": "test"})
    finished, _ = run(workflow, tmp_path)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    assert (out / "main").read_text() == "done\n", "both services still ran after their group ended"
    assert not (out / "db-late").exists() and not (out / "cache-late").exists(), "stopped when the job ended"
    assert (out / "if-true").exists() and (out / "if-unset").exists()
    assert not (out / "if-false").exists()


def test_mapped_ids_on_the_host(slurm: SlurmCluster, tmp_path: Path, out: Path) -> None:
    workflow = {
        "resources": resources(),
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {"name": "as 1337", **host('echo "$(id -u) $(id -g)" > "$OUT/ids"', mapUid=1337, mapGid=1337)},
            {"name": "as root", **host('echo "$(id -u)" > "$OUT/root"', mapUid=0)},
            {"name": "entrypoint means sh", **host('echo "$0" > "$OUT/shell"', shell="ENTRYPOINT")},
        ],
    }
    finished, _ = run(workflow, tmp_path)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    assert (out / "ids").read_text() == "1337 1337\n"
    assert (out / "root").read_text() == "0\n"
    assert (out / "shell").read_text() == "/bin/sh\n"


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
    # A host step's workDir is taken inside the job's folder.
    work_dir = "/dir with 'quote' and $(touch canary)"
    # The command is shell code by design: it must reach the step's shell exactly as written.
    command_text = 'printf \'%s|\' \'a\'"\'"\'b\' "$(echo sub)" `echo tick` "$HOME" > "$OUT/command"'
    namespaced = command_text.replace('"$OUT/command"', '"$OUT/namespaced"')
    step_env = [{"key": f"STEP_{i}", "value": v} for i, v in enumerate(values)]
    workflow = {
        "resources": resources(),
        "env": [
            {"key": "OUT", "value": str(out)},
            *({"key": f"HOSTILE_{i}", "value": v} for i, v in enumerate(values)),
        ],
        "steps": [
            {"name": values[0] + values[2], **host(f"printf '%s\\0' {reads} > \"$OUT/job-env\"")},
            {"name": "step env", **host(f"printf '%s\\0' {step_reads} > \"$OUT/step-env\"", env=step_env)},
            {
                "name": "items",
                "for": {
                    "items": values,
                    "steps": [{"name": "i", **host('printf \'%s\\0\' "$item" >> "$OUT/items"')}],
                },
            },
            {"name": "workdir", **host('pwd > "$OUT/pwd"', workDir=work_dir)},
            {"name": "command", **host(command_text)},
            {
                # Three levels of nesting: srun sh -c, the network wrapper, the inner sh -c.
                "name": values[1],
                **host(
                    namespaced + f"; printf '%s\\0' {step_reads} > \"$OUT/namespaced-env\"",
                    network="slirp4netns",
                    mapUid=0,
                    workDir=work_dir,
                    env=step_env,
                ),
            },
            {
                "name": "if",
                "if": "\"a'b\" = \"a'b\" && '$(x)' = '$(x)' && \"$(echo ok)\" = ok",
                **host('echo yes > "$OUT/if"'),
            },
        ],
    }
    finished, script = run(workflow, tmp_path)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    expected = "\0".join(values) + "\0"
    assert (out / "job-env").read_text() == expected
    assert (out / "step-env").read_text() == expected
    assert (out / "namespaced-env").read_text() == expected
    assert (out / "items").read_text() == expected
    workdir = Path(storage_of(tmp_path, finished) + work_dir)
    assert (out / "pwd").read_text() == f"{workdir}\n", (
        "workDir is created inside the job's folder, then entered"
    )
    direct = subprocess.run(
        ["/bin/sh", "-c", command_text.replace('"$OUT/command"', "/dev/stdout")],
        capture_output=True,
        text=True,
        env={"HOME": os.environ.get("HOME", "/root")},
    )
    assert (out / "command").read_text() == direct.stdout
    assert (out / "namespaced").read_text() == direct.stdout
    assert (out / "if").read_text() == "yes\n"
    assert not canary.exists(), "a value was executed"
    assert not (workdir / "canary").exists()
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run(["shellcheck", "--shell=bash", "-"], input=script, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


# A step variable that the container tools receive: it must arrive intact, never executed.
CONTAINER_VALUE = 'it\'s "$(touch canary)" `touch canary` a,b  $HOME\nsecond line'
ENROOT_COMMAND = 'printf "%s|%s|%s|" "$item" "$FOO" "$STORAGE_PATH" > "$OUT/enroot-$item-$SLURM_PROCID"; pwd >> "$OUT/enroot-$item-$SLURM_PROCID"'


def test_enroot_steps_import_once_then_create_start_remove_per_task(
    slurm: SlurmCluster, tmp_path: Path, out: Path
) -> None:
    env, log = standin_env(tmp_path)
    workdir = tmp_path / "work dir"
    workflow = {
        "resources": resources(tasks=2),
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
                                "workDir": str(workdir),
                                "container": {
                                    "registry": "registry.example.com",
                                    "image": "team/tool:1.0",
                                    "username": "robot",
                                    "password": "s3cr'et",
                                    "x11": True,
                                    "mounts": [
                                        {"hostDir": "/opt/models", "containerDir": "/models", "options": "ro"}
                                    ],
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
    storage = storage_of(tmp_path, finished)
    for item in "ab":
        for task in "01":
            assert (
                out / f"enroot-{item}-{task}"
            ).read_text() == f"{item}|{CONTAINER_VALUE}|/deepsquare|{workdir}\n"
    assert (
        out / "credentials"
    ).read_text() == 'machine registry.example.com login "robot" password "s3cr\'et"\n'
    assert "s3cr'et" not in finished.output

    recorded = calls(log, "enroot")
    image = recorded[0]["argv"][2]
    assert recorded[0]["argv"] == ["import", "-o", image, "--", "docker://registry.example.com#team/tool:1.0"]
    assert image.startswith(f"{storage}/images/") and image.endswith(".sqsh")
    assert sum(1 for c in recorded if c["argv"][0] == "import") == 1
    containers: dict[str, list[dict[str, Any]]] = {}
    for call in recorded[1:]:
        name = call["argv"][2] if call["argv"][0] == "create" else call["argv"][-1]
        if call["argv"][0] == "start":
            name = call["argv"][3]
        containers.setdefault(name, []).append(call)
    assert len(containers) == 4, "one container per loop iteration and task"
    for name, sequence in containers.items():
        assert [c["argv"][0] for c in sequence] == ["create", "start", "remove"]
        assert name == f"container-{finished.job_id}.{name.split('.')[1]}.{sequence[0]['procid']}"
        assert sequence[0]["argv"] == ["create", "--name", name, "--", image]
        assert sequence[2]["argv"] == ["remove", "-f", name]
        start = sequence[1]
        conf = start["argv"][2]
        assert start["argv"] == ["start", "--conf", conf, name, "/bin/sh", "-c", ENROOT_COMMAND]
        assert conf.startswith(f"{storage}/.grid/step.") and conf.endswith("/enroot.conf")
        assert start["settings"] == [
            "#ENROOT_REMAP_ROOT=n",
            "#ENROOT_ROOTFS_WRITABLE=y",
            "#ENROOT_MOUNT_HOME=n",
        ]
        caches = tmp_path / "caches"
        assert start["mounts"] == [
            f"{storage} /deepsquare none x-create=dir,bind,rw",
            f"{caches}/persistent/user-{os.getuid()} /deepsquare/tmp none x-create=dir,bind,rw",
            f"{caches}/world-tmp /deepsquare/world-tmp none x-create=dir,bind,rw",
            f"{caches}/disk/user-{os.getuid()} /deepsquare/disk/tmp none x-create=dir,bind,rw",
            f"{caches}/disk-world-tmp /deepsquare/disk/world-tmp none x-create=dir,bind,rw",
            "/tmp/.X11-unix /tmp/.X11-unix none x-create=dir,bind,ro",
            "/opt/models /models none x-create=auto,bind,ro",
        ]
        environ = start["environ"]
        assert {k: environ[k] for k in environ if k.startswith(("DEEPSQUARE_", "STORAGE_PATH"))} == {
            "STORAGE_PATH": "/deepsquare",
            "DEEPSQUARE_TMP": "/deepsquare/tmp",
            "DEEPSQUARE_SHARED_TMP": "/deepsquare/tmp",
            "DEEPSQUARE_SHARED_WORLD_TMP": "/deepsquare/world-tmp",
            "DEEPSQUARE_DISK_TMP": "/deepsquare/disk/tmp",
            "DEEPSQUARE_DISK_WORLD_TMP": "/deepsquare/disk/world-tmp",
            "DEEPSQUARE_INPUT": "/deepsquare/input",
            "DEEPSQUARE_OUTPUT": "/deepsquare/output",
            "DEEPSQUARE_ENV": "/deepsquare/env",
        }
        assert "FOO" not in environ, "step values travel in rc.local, never on a command line"
        assert start["rc_local"].endswith(
            f"mkdir -p -- '{workdir}' && cd -- '{workdir}'"
            ' || { echo "change dir to working directory failed"; exit 1; }\nexec "$@"\n'
        )
    assert not Path("/tmp/canary").exists() and not (tmp_path / "job" / "canary").exists()
    assert storage_left(tmp_path) == []


def test_enroot_runs_the_command_instead_of_the_entrypoint_in_the_image_workdir(
    slurm: SlurmCluster, tmp_path: Path, out: Path
) -> None:
    image_workdir = tmp_path / "image workdir"
    image_workdir.mkdir()
    entrypoint = ["/bin/sh", "-c", 'echo "entrypoint got: $*" >> "$OUT/entrypoint"', "entrypoint"]
    env, log = standin_env(tmp_path)
    env["GRID_STANDIN_IMAGES"] = json.dumps(
        {
            "docker://registry-1.docker.io#library/nginx:1.25": {
                "entrypoint": entrypoint,
                "workdir": str(image_workdir),
            }
        }
    )
    container = {"registry": "registry-1.docker.io", "image": "nginx:1.25"}
    workflow = {
        "resources": resources(),
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {"name": "command", "run": {"container": container, "command": 'pwd > "$OUT/command-pwd"'}},
            {
                "name": "entrypoint",
                "run": {
                    "container": container,
                    "shell": "ENTRYPOINT",
                    "workDir": str(tmp_path / "made"),
                    "command": "-g 'daemon off;'",
                },
            },
            {"name": "image default", "run": {"container": container, "command": ""}},
        ],
    }
    finished, _ = run(workflow, tmp_path, env)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    assert (out / "command-pwd").read_text() == f"{image_workdir}\n", "the image's WORKDIR by default"
    assert (out / "entrypoint").read_text() == "entrypoint got: -g daemon off;\nentrypoint got: \n"
    assert (tmp_path / "made").is_dir(), "workDir is created in ENTRYPOINT mode too"
    starts = [c["argv"] for c in calls(log, "enroot") if c["argv"][0] == "start"]
    assert [argv[4:] for argv in starts] == [
        ["/bin/sh", "-c", 'pwd > "$OUT/command-pwd"'],
        ["-g", "daemon off;"],
        [],
    ]
    imports = [c["argv"][-1] for c in calls(log, "enroot") if c["argv"][0] == "import"]
    assert imports == ["docker://registry-1.docker.io#library/nginx:1.25"], "Docker Hub images get library/"


def test_apptainer_steps_pull_once_then_exec(slurm: SlurmCluster, tmp_path: Path, out: Path) -> None:
    env, log = standin_env(tmp_path)
    command = 'echo "$FOO|$STORAGE_PATH|$DEEPSQUARE_OUTPUT|$DEEPSQUARE_ENV" > "$OUT/apptainer-$SLURM_PROCID"'
    workflow = {
        "resources": resources(tasks=2),
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
                        "mounts": [{"hostDir": "/opt/models", "containerDir": "/models", "options": "ro"}],
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
            {
                "name": "hosted",
                "run": {
                    "container": {
                        "deepsquareHosted": True,
                        "registry": "registry-1.deepsquare.run",
                        "image": "library/sd:1",
                    },
                    "command": 'echo hosted > "$OUT/hosted"',
                },
            },
            {
                "name": "from the input",
                "run": {
                    "container": {"image": "/input/../input/tool.sif", "apptainer": True},
                    "command": "true",
                },
            },
        ],
    }
    finished, _ = run(workflow, tmp_path, env)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    storage = storage_of(tmp_path, finished)
    for task in "01":
        assert (out / f"apptainer-{task}").read_text() == (
            f"{CONTAINER_VALUE}|/deepsquare|/deepsquare/output|/deepsquare/env\n"
        )
    recorded = calls(log, "apptainer")
    assert [c["argv"][1] for c in recorded] == ["pull", "exec", "exec", "run", "exec", "exec"]
    image = recorded[0]["argv"][3]
    assert recorded[0]["argv"] == [
        "--silent",
        "pull",
        "--disable-cache",
        image,
        "docker://ghcr.io/org/trainer:latest",
    ]
    assert image.startswith(f"{storage}/images/") and image.endswith(".sif")
    assert recorded[0]["env"] == {"APPTAINER_DOCKER_USERNAME": "bot", "APPTAINER_DOCKER_PASSWORD": "tok"}
    caches = tmp_path / "caches"
    binds = (
        f"{storage}:/deepsquare:rw,{caches}/persistent/user-{os.getuid()}:/deepsquare/tmp:rw,"
        f"{caches}/world-tmp:/deepsquare/world-tmp:rw,{caches}/disk/user-{os.getuid()}:/deepsquare/disk/tmp:rw,"
        f"{caches}/disk-world-tmp:/deepsquare/disk/world-tmp:rw"
    )
    for call in recorded[1:3]:
        assert call["argv"] == [
            "--silent", "exec", "--disable-cache", "--contain", "--writable-tmpfs", "--no-home", "--nv",
            "--pwd", str(out), image, "/bin/bash", "-c", command,
        ]  # fmt: skip
        assert call["env"]["APPTAINER_BIND"] == binds + ",/opt/models:/models:ro"
        assert call["env"]["APPTAINERENV_FOO"] == CONTAINER_VALUE
        assert call["env"]["APPTAINERENV_STORAGE_PATH"] == "/deepsquare"
        assert call["env"]["APPTAINERENV_DEEPSQUARE_DISK_WORLD_TMP"] == "/deepsquare/disk/world-tmp"
        assert "APPTAINER_DOCKER_PASSWORD" not in call["env"], "registry credentials only reach the pull"
    assert sorted(c["procid"] for c in recorded[1:3]) == ["0", "1"]
    assert recorded[3]["argv"] == [
        "--silent", "run", "--disable-cache", "--contain", "--nv", "--pwd", str(out), image,
        "touch", "entrypoint-ran",
    ]  # fmt: skip
    assert (out / "entrypoint-ran").exists()
    assert recorded[4]["argv"][-4:] == [
        str(caches / "software/registry-1.deepsquare.run/library/sd:1"), "/bin/sh", "-c", 'echo hosted > "$OUT/hosted"'
    ]  # fmt: skip
    assert recorded[4]["argv"][7:9] == ["--pwd", "/"], "the default working directory is /"
    assert recorded[5]["argv"][9] == f"{storage}/input/tool.sif", "an absolute image is in the job folder"
    assert not (out / "canary").exists() and not (tmp_path / "job" / "canary").exists()


def test_gpu_steps_get_their_gpus(slurm: SlurmCluster, tmp_path: Path, out: Path) -> None:
    workflow = {
        "resources": resources(gpus=2),
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


def test_hostile_values_in_container_and_network_fields(
    slurm: SlurmCluster, tmp_path: Path, out: Path
) -> None:
    """Values that reach Enroot's rc.local, Apptainer's environment, image paths, WireGuard and bore
    files, at every level of nesting, arrive intact and are never executed."""
    canary = tmp_path / "canary"
    values = [v.format(canary=canary) for v in HOSTILE]
    env, log = standin_env(tmp_path)
    reads = " ".join(f'"$V_{i}"' for i in range(len(values)))
    step_env = [{"key": f"V_{i}", "value": v} for i, v in enumerate(values)]
    bad_path = f"/input/it's $(touch {canary}) `id`.sif"
    workflow = {
        "resources": resources(),
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {
                "name": values[2],
                "run": {
                    "container": {"image": "library/tool:1"},
                    "env": step_env,
                    "command": f"printf '%s\\0' {reads} > \"$OUT/enroot\"",
                },
            },
            {
                "name": values[6],
                "run": {
                    "container": {"image": bad_path, "apptainer": True},
                    "env": step_env,
                    "network": "slirp4netns",
                    "mapUid": 0,
                    "customNetworkInterfaces": [
                        {"bore": {"boreAddress": "bore.example.org:1", "targetPort": 1, "secret": values[3]}}
                    ],
                    "command": f"printf '%s\\0' {reads} > \"$OUT/apptainer\"",
                },
            },
        ],
    }
    finished, script = run(workflow, tmp_path, env)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    expected = "\0".join(values) + "\0"
    assert (out / "enroot").read_text() == expected
    assert (out / "apptainer").read_text() == expected
    (bore,) = calls(log, "dpsproxy")
    assert bore["argv"][5] == values[3]
    (run_call,) = calls(log, "apptainer")
    assert run_call["argv"][9].endswith(bad_path)
    assert not canary.exists(), "a value was executed"
    lint = subprocess.run(["shellcheck", "--shell=bash", "-"], input=script, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
