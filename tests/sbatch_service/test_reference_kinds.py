"""Every kind of workflow in the reference sbatch service's fixtures (deepsquare-io/grid,
sbatch-service/fixtures) and in DeepSquare's workflow catalog, written here as our own equivalent
workflows: each is accepted and renders to a script that passes bash and shellcheck. The kinds whose
reference fixture has an expected rendering run on the test Slurm cluster, and the commands they
give srun, Enroot and Apptainer are the reference's (recorded by a srun recorder and the stand-ins).
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sbatch_service.models import check_workflow
from sbatch_service.names import SeededNames
from sbatch_service.renderer import render
from tests.fixtures.slurm import SlurmCluster
from tests.sbatch_service.slurm_helpers import calls, render_for_slurm, run_on_slurm, sruns, standin_env


def res(tasks: int = 1, cpus: int = 1, mem: int = 100, gpus: int = 0) -> dict[str, int]:
    return {"tasks": tasks, "cpusPerTask": cpus, "memPerCpu": mem, "gpus": gpus}


S3 = {
    "region": "eu-west-1",
    "bucketUrl": "s3://grid-kinds",
    "path": "/work/",
    "accessKeyId": "key",
    "secretAccessKey": "secret",
    "endpointUrl": "https://s3.example.org",
}
BORE = {"bore": {"boreAddress": "bore.example.org:2200", "targetPort": 8080}}
OLD_BORE = {"bore": {"address": "bore.example.org", "port": 2200, "targetPort": 6901}}
SLIRP = {"network": "slirp4netns"}


def enroot(image: str, **container: Any) -> dict[str, Any]:
    return {"image": image, **container}


def hosted(image: str) -> dict[str, Any]:
    return {
        "deepsquareHosted": True,
        "apptainer": True,
        "registry": "registry-1.deepsquare.run",
        "image": image,
    }


# kind -> the reference workflows it stands for, and our own workflow of that kind.
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "async-await": (
        "fixtures/async-await.yaml",
        {
            "resources": res(tasks=2),
            "steps": [
                {
                    "name": "background",
                    "launch": {"handleName": "job1", "steps": [{"run": {"command": "sleep 1"}}]},
                },
                {"name": "foreground", "run": {"command": "echo quick"}},
                {"name": "join", "dependsOn": ["job1"], "run": {"command": "echo joined"}},
            ],
        },
    ),
    "fire-and-forget": (
        "fixtures/fire-and-forget.yaml, fire-and-forget-clean.yaml",
        {
            "resources": res(tasks=2),
            "steps": [
                {
                    "name": "forget",
                    "launch": {
                        "handleName": "bg",
                        "signalOnParentStepExit": 15,
                        "steps": [{"run": {"command": "sleep 60"}}],
                    },
                }
            ],
        },
    ),
    "render-farm": (
        "fixtures/blender-batch-job.yaml, catalog blender",
        {
            "resources": res(tasks=4, cpus=2, gpus=4),
            "input": {"s3": S3},
            "output": {"s3": S3},
            "continuousOutputSync": True,
            "steps": [
                {
                    "name": "plan",
                    "run": {
                        "container": hosted("library/renderer:3.4"),
                        "command": 'echo "FRAMES=8" >> "$DEEPSQUARE_ENV"',
                    },
                },
                {
                    "name": "render",
                    "for": {
                        "parallel": True,
                        "range": {"begin": 1, "end": 4},
                        "steps": [
                            {
                                "name": "frame",
                                "run": {
                                    "container": hosted("library/renderer:3.4"),
                                    "resources": {"gpusPerTask": 1},
                                    "shell": "/bin/bash",
                                    "command": 'render --part "$index" --of "$FRAMES"',
                                },
                            }
                        ],
                    },
                },
            ],
        },
    ),
    "game-server": (
        "fixtures/cs2.yaml, catalog cs2",
        {
            "resources": res(cpus=2),
            "steps": [
                {
                    "name": "login",
                    "run": {
                        "container": enroot("team/steamcmd:latest", mountHome=True),
                        "env": [{"key": "TERM", "value": "xterm"}],
                        **SLIRP,
                        "customNetworkInterfaces": [OLD_BORE],
                        "command": "steamcmd +quit",
                    },
                },
                {
                    "name": "serve",
                    "run": {
                        "container": enroot("team/game:latest", mountHome=True),
                        **SLIRP,
                        "mapUid": 0,
                        "mapGid": 0,
                        "dns": ["1.1.1.1"],
                        "customNetworkInterfaces": [
                            OLD_BORE,
                            {
                                "wireguard": {
                                    "privateKey": "<FILL-IN>",
                                    "address": ["10.0.0.4/24", "fd00:1234:5678::4/128"],
                                    "peers": [
                                        {
                                            "publicKey": "<FILL-IN>",
                                            "allowedIPs": ["0.0.0.0/0"],
                                            "persistentKeepalive": 0,
                                            "endpoint": "10.0.0.1:1",
                                        }
                                    ],
                                }
                            },
                        ],
                        "command": "./server",
                    },
                },
            ],
        },
    ),
    "remote-desktop": (
        "fixtures/kasmvnc.yaml, neko.yaml, catalog kasmvnc, neko, katago",
        {
            "resources": res(cpus=2, gpus=1),
            "steps": [
                {
                    "name": "desktop",
                    "run": {
                        "resources": {"gpusPerTask": 1},
                        "container": enroot(
                            "team/desktop:1.0", registry="registry-1.docker.io", mountHome=True
                        ),
                        "env": [{"key": "VNC_PW", "value": "password"}],
                        **SLIRP,
                        "customNetworkInterfaces": [
                            {
                                "bore": {
                                    "boreAddress": "bore.example.org:2200",
                                    "targetPort": 6901,
                                    "secret": "token",
                                }
                            }
                        ],
                        "command": "/startup.sh --wait",
                    },
                }
            ],
        },
    ),
    "mapped-ids": (
        "fixtures/map-uid.yaml, map-uid.pasta.yaml (with their step-level network)",
        {
            "resources": res(cpus=2, mem=200),
            "steps": [
                {"name": "as 1337", "run": {"mapUid": 1337, "mapGid": 1337, "command": "id"}},
                {
                    "name": "as 0",
                    "run": {
                        "container": {"apptainer": True, "image": "bash:latest", "mountHome": True},
                        "mapUid": 0,
                        "mapGid": 0,
                        "command": "id",
                    },
                },
                {
                    "name": "as 1337",
                    "run": {
                        "container": {"image": "bash:latest", "mountHome": True},
                        "mapUid": 1337,
                        "mapGid": 1337,
                        "command": "id",
                    },
                },
                {
                    "name": "as 1337",
                    "network": "slirp4netns",
                    "run": {"mapUid": 1337, "mapGid": 1337, "command": "id"},
                },
            ],
        },
    ),
    "minecraft": (
        "fixtures/minecraft.yaml",
        {
            "resources": res(cpus=2),
            "input": {"s3": S3},
            "output": {"s3": {**S3, "deleteSync": True}},
            "continuousOutputSync": True,
            "steps": [
                {"name": "restore", "run": {"command": 'mv "$DEEPSQUARE_INPUT"/* "$DEEPSQUARE_OUTPUT"/'}},
                {
                    "name": "serve",
                    "run": {
                        "container": {
                            "apptainer": True,
                            "registry": "registry-1.docker.io",
                            "image": "team/mc:1.19",
                        },
                        "env": [{"key": "EULA", "value": "true"}],
                        "dns": ["1.1.1.1"],
                        **SLIRP,
                        "mapUid": 0,
                        "mapGid": 0,
                        "customNetworkInterfaces": [
                            {
                                "wireguard": {
                                    "address": ["10.0.0.2/24"],
                                    "privateKey": "<client key>",
                                    "peers": [
                                        {
                                            "publicKey": "<server key>",
                                            "preSharedKey": "<shared>",
                                            "allowedIPs": ["10.0.0.1/32"],
                                            "persistentKeepalive": 10,
                                            "endpoint": "194.182.186.85:51000",
                                        }
                                    ],
                                }
                            }
                        ],
                        "command": "java -jar server.jar nogui",
                    },
                },
            ],
        },
    ),
    "module": (
        "fixtures/module.yaml, catalog interactive.two-steps-module, stable-diffusion-webui-deforum",
        {"resources": res(), "steps": [{"name": "m", "use": {"source": "github.com/org/module@v1"}}]},
    ),
    "mpi": (
        "fixtures/mpi-test.json",
        {
            "resources": res(tasks=8),
            "steps": [
                {
                    "name": "ring",
                    "run": {
                        "command": "./ring",
                        "workDir": "/app",
                        "resources": {"tasks": 8},
                        "mpi": "pmix_v4",
                        "container": {
                            "image": "org/mpi-example:latest",
                            "registry": "ghcr.io",
                            "apptainer": True,
                        },
                    },
                }
            ],
        },
    ),
    "multi-node-mounts": (
        "fixtures/multi-node.yaml, catalog stable-diffusion-webui",
        {
            "resources": res(tasks=4),
            "steps": [
                {
                    "name": "everywhere",
                    "run": {
                        "resources": {"tasks": 4},
                        "container": {
                            "apptainer": True,
                            "registry": "registry-1.docker.io",
                            "image": "library/alpine:3",
                            "mounts": [
                                {"hostDir": "/opt/models", "containerDir": "/models", "options": "ro"}
                            ],
                        },
                        "command": "echo Hello $HOSTNAME",
                    },
                }
            ],
        },
    ),
    "multi-line-env": (
        "fixtures/multiline-env.yaml",
        {
            "resources": res(),
            "steps": [
                {
                    "name": "print",
                    "run": {
                        "container": {
                            "apptainer": True,
                            "registry": "registry-1.deepsquare.run",
                            "image": "library/bash:5",
                        },
                        "env": [{"key": "TEXT", "value": "first\nsecond\nthird"}],
                        "command": 'echo "$TEXT"',
                    },
                }
            ],
        },
    ),
    "hole-punching": (
        "fixtures/neko.holepunch.yaml, catalog kasmvnc.holepunch, neko.holepunch",
        {
            "resources": res(tasks=2, cpus=2),
            "steps": [
                {
                    "name": "punch",
                    "launch": {
                        "steps": [
                            {
                                "name": "tunnel",
                                "run": {"container": enroot("node:20"), "command": "npx tunnel"},
                            }
                        ]
                    },
                },
                {
                    "name": "app",
                    "run": {
                        "container": enroot("team/app:1", registry="registry-1.docker.io", mountHome=True),
                        "mapUid": 0,
                        "mapGid": 0,
                        "command": "./serve",
                    },
                },
            ],
        },
    ),
    "web-server": (
        "fixtures/nginx.yaml, catalog jupyterlab, interactive.*",
        {
            "resources": res(),
            "steps": [
                {
                    "name": "serve",
                    "run": {
                        "command": 'nginx -g "daemon off;"',
                        "container": enroot(
                            "nginxinc/nginx-unprivileged:latest", registry="registry-1.docker.io"
                        ),
                        **SLIRP,
                        "customNetworkInterfaces": [BORE],
                    },
                }
            ],
        },
    ),
    "hosted-generation": (
        "fixtures/stable-diffusion.yaml, upscale.yaml, catalog stable-diffusion, upscaling",
        {
            "resources": res(tasks=4, cpus=2, gpus=4),
            "env": [{"key": "PROMPT", "value": "an astronaut"}],
            "output": {"http": {"url": "https://transfer.example.org/"}},
            "continuousOutputSync": True,
            "steps": [
                {
                    "name": "generate",
                    "for": {
                        "parallel": True,
                        "range": {"begin": 1, "end": 4},
                        "steps": [
                            {
                                "name": "one",
                                "run": {
                                    "container": {
                                        **hosted("library/generator:latest"),
                                        "mounts": [
                                            {
                                                "hostDir": "/opt/models",
                                                "containerDir": "/models",
                                                "options": "ro",
                                            }
                                        ],
                                    },
                                    "resources": {"gpusPerTask": 1},
                                    "shell": "/bin/bash",
                                    "command": 'echo generate --seed "$index" --prompt "$PROMPT"',
                                },
                            }
                        ],
                    },
                },
                {
                    "name": "combine",
                    "run": {"container": hosted("library/generator:latest"), "command": "echo combine"},
                },
            ],
        },
    ),
    "chat-stack": (
        "fixtures/tgi.yaml, catalog mariadb-stack-example",
        {
            "resources": res(tasks=3, gpus=1),
            "virtualNetworks": [{"name": "stack", "gatewayAddress": "10.0.0.1/24"}],
            "steps": [
                {
                    "name": "model",
                    "launch": {
                        "steps": [
                            {
                                "run": {
                                    "container": hosted("library/inference:1.4"),
                                    "resources": {"gpusPerTask": 1},
                                    **SLIRP,
                                    "mapUid": 0,
                                    "mapGid": 0,
                                    "dns": ["8.8.8.8"],
                                    "customNetworkInterfaces": [
                                        {"vnet": {"name": "stack", "address": "10.0.0.2/24"}}
                                    ],
                                    "command": "serve --port 8080",
                                }
                            }
                        ]
                    },
                },
                {
                    "name": "database",
                    "launch": {
                        "steps": [
                            {
                                "run": {
                                    "container": enroot("library/db:7"),
                                    **SLIRP,
                                    "mapUid": 0,
                                    "customNetworkInterfaces": [
                                        {"vnet": {"name": "stack", "address": "10.0.0.3/24"}}
                                    ],
                                    "command": "db --bind_ip_all",
                                }
                            }
                        ]
                    },
                },
                {
                    "name": "ui",
                    "steps": [
                        {
                            "run": {
                                "container": enroot(
                                    "library/ui:latest", registry="registry-1.deepsquare.run"
                                ),
                                **SLIRP,
                                "mapUid": 0,
                                "customNetworkInterfaces": [
                                    BORE,
                                    {"vnet": {"name": "stack", "address": "10.0.0.4/24"}},
                                ],
                                "command": "ui --model http://10.0.0.2:8080",
                            }
                        }
                    ],
                },
            ],
        },
    ),
    "try-catch-finally": (
        "fixtures/try-catch-finally.yaml",
        {
            "resources": res(),
            "steps": [
                {"name": "a", "run": {"command": "exit 1"}, "catch": [{"name": "handled"}]},
                {
                    "name": "b",
                    "run": {"command": "exit 1"},
                    "catch": [{"name": "c"}],
                    "finally": [{"name": "f"}],
                },
            ],
        },
    ),
    "display-with-input": (
        "fixtures/urs.yaml, tdp.yaml, catalog unity",
        {
            "resources": res(cpus=2, gpus=1),
            "env": [{"key": "DISPLAY", "value": ":99"}, {"key": "XDG_RUNTIME_DIR", "value": "/tmp"}],
            "input": {"http": {"url": "https://transfer.example.org/abc/app.zip"}},
            "inputMode": 493,
            "steps": [
                {
                    "name": "stream",
                    "run": {
                        "container": {**hosted("library/streamer:latest"), "x11": True},
                        "resources": {"gpusPerTask": 1},
                        "command": '"$DEEPSQUARE_INPUT/App.x86_64" --logFile -',
                    },
                },
                {
                    "name": "old image form",
                    "run": {"container": {"image": "/input/app.sqsh", "x11": True}, "command": "/app/run"},
                },
            ],
        },
    ),
    "virtual-networks": (
        "fixtures/virtual-networks.yaml",
        {
            "resources": res(tasks=2),
            "virtualNetworks": [{"name": "test", "gatewayAddress": "10.0.0.1/24"}],
            "steps": [
                {
                    "name": "listen",
                    "launch": {
                        "handleName": "listener",
                        "steps": [
                            {
                                "run": {
                                    **SLIRP,
                                    "mapUid": 0,
                                    "mapGid": 0,
                                    "customNetworkInterfaces": [
                                        {"vnet": {"name": "test", "address": "10.0.0.2/24"}}
                                    ],
                                    "command": "nc -l -p 12345",
                                }
                            }
                        ],
                    },
                },
                {
                    "name": "talk",
                    "run": {
                        **SLIRP,
                        "mapUid": 0,
                        "mapGid": 0,
                        "customNetworkInterfaces": [{"vnet": {"name": "test", "address": "10.0.0.3/24"}}],
                        "command": "echo hi | nc 10.0.0.2 12345",
                    },
                },
            ],
        },
    ),
    "entrypoint": (
        "fixtures/test.yaml",
        {
            "resources": res(),
            "steps": [
                {
                    "name": "help",
                    "run": {
                        "container": {"apptainer": True, "image": "curlimages/curl:latest"},
                        "shell": "ENTRYPOINT",
                        "command": "--help",
                    },
                }
            ],
        },
    ),
    "hello-world": (
        "catalog hello-world",
        {"resources": res(), "steps": [{"name": "hello world", "run": {"command": 'echo "Hello World"'}}]},
    ),
    "ssh-server": (
        "catalog interactive.ssh, katago",
        {
            "resources": res(),
            "steps": [
                {
                    "name": "ssh",
                    "run": {
                        "container": enroot("alpine:latest"),
                        **SLIRP,
                        "customNetworkInterfaces": [
                            {"bore": {"boreAddress": "bore.example.org:2200", "targetPort": 2200}}
                        ],
                        "command": "/usr/sbin/sshd -D -p 2200",
                    },
                }
            ],
        },
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_is_accepted_and_renders(kind: str, tmp_path: Path) -> None:
    _, workflow = KINDS[kind]
    checked, _ = check_workflow(workflow)
    if kind == "module":
        return  # fetched at submit: see test_modules.py and the module golden file
    script = tmp_path / "script.sh"
    script.write_text(render(checked.job, SeededNames(0)))
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    lint = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def srun_options(argv: list[str]) -> list[str]:
    """The options srun got (its command's arguments left out)."""
    options = []
    for argument in argv:
        if not argument.startswith("--"):
            break
        options.append(argument)
    return options


def test_mapped_ids_run_the_reference_commands(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """The commands of the reference's map-uid.pasta.txt: srun options, unshare, apptainer, enroot."""
    _, workflow = KINDS["mapped-ids"]
    env, log = standin_env(tmp_path, record_srun=True)
    job, script = render_for_slurm(workflow, tmp_path / "storage")
    finished = run_on_slurm(script, job, tmp_path / "job", env)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    assert finished.output.count("uid=1337 gid=1337") == 3, "the host steps and the Enroot step ran as 1337"
    storage = str(tmp_path / "storage" / str(os.getuid()) / f"job-{finished.job_id}")
    common = [
        "--export=ALL",
        "--cpus-per-task=2",
        "--mem-per-cpu=200M",
        "--gpus-per-task=0",
        "--gpus=0",
        "--ntasks=1",
    ]
    host, apptainer, enroot_step, host_again = sruns(tmp_path)
    unshare = ["unshare", "--map-current-user", "--map-user=1337", "--map-group=1337", "--mount"]
    assert host == ["--job-name=as 1337", *common, *unshare, "/bin/sh", "-c", "id"]
    assert host_again == host, "network on the step is ignored, as the reference's YAML parsing drops it"
    assert apptainer[:8] == ["--job-name=as 0", *common, "--gpu-bind=none"]
    assert apptainer[8:13] == ["unshare", "--map-current-user", "--map-user=0", "--map-group=0", "--mount"]
    (pull, run) = calls(log, "apptainer")
    image = pull["argv"][3]
    assert pull["argv"] == ["--silent", "pull", "--disable-cache", image, "docker://bash:latest"]
    assert run["argv"] == [
        "--silent", "exec", "--disable-cache", "--contain", "--writable-tmpfs", "--nv", "--pwd", "/", image,
        "/bin/sh", "-c", "id",
    ]  # fmt: skip
    assert run["uid"] == 0 and image.startswith(f"{storage}/images/")
    assert enroot_step[:8] == ["--job-name=as 1337", *common, "--gpu-bind=none"]
    assert enroot_step[8:10] == ["/bin/bash", "-c"]
    recorded = calls(log, "enroot")
    assert [c["argv"][0] for c in recorded] == ["import", "create", "start", "remove"]
    assert recorded[0]["argv"][-1] == "docker://bash:latest"
    start = recorded[2]
    assert start["argv"][4:] == ["/bin/sh", "-c", "id"]
    assert start["uid"] == 1337, "unshare maps the user before enroot start, as the reference"
    assert start["settings"] == ["#ENROOT_REMAP_ROOT=n", "#ENROOT_ROOTFS_WRITABLE=y", "#ENROOT_MOUNT_HOME=y"]


def test_a_hosted_generation_pipeline_runs_the_reference_commands(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """The commands of the reference's stable-diffusion.txt and upscale.txt: hosted images under the
    site's software folder, no pull, a parallel range loop of GPU steps, the cache mounts."""
    workflow = copy.deepcopy(KINDS["hosted-generation"][1])
    workflow.update(resources=res(tasks=2, gpus=2), output=None, continuousOutputSync=False)
    workflow["steps"][0]["for"]["range"]["end"] = 2
    env, log = standin_env(tmp_path, record_srun=True)
    job, script = render_for_slurm(workflow, tmp_path / "storage")
    finished = run_on_slurm(script, job, tmp_path / "job", env)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    recorded = calls(log, "apptainer")
    assert not [c for c in recorded if c["argv"][1] == "pull"], "hosted images are not pulled"
    software = tmp_path / "caches" / "software" / "registry-1.deepsquare.run" / "library" / "generator:latest"
    for call in recorded[:2]:
        assert call["argv"] == [
            "--silent", "exec", "--disable-cache", "--contain", "--writable-tmpfs", "--no-home", "--nv",
            "--pwd", "/", str(software), "/bin/bash", "-c", 'echo generate --seed "$index" --prompt "$PROMPT"',
        ]  # fmt: skip
        assert call["env"]["APPTAINER_BIND"].endswith(",/opt/models:/models:ro")
    options = [srun_options(argv) for argv in sruns(tmp_path)]
    assert (
        options[:2]
        == [
            [
                "--job-name=one",
                "--export=ALL",
                "--cpus-per-task=1",
                "--mem-per-cpu=100M",
                "--gpus-per-task=1",
                "--gpus=1",
                "--ntasks=1",
                "--gpu-bind=none",
            ]
        ]
        * 2
    )
    assert options[2][4:6] == ["--gpus-per-task=0", "--gpus=0"], "a step without GPUs asks for none"
