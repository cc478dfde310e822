"""Hostile workflows (issue 13, items 1-6): each class is refused with its field named, or rendered
harmless, proven by running the script in the sandbox (tests/sbatch_service/sandbox.py): its own
mount and network namespaces, the stand-ins first on PATH, canaries outside the job's folder.

Where a test relies on a payload being dangerous, it first shows that the payload does fire when it
is not defused, so that the test can fail.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests

from sbatch_service.models import (
    FORBIDDEN_ENV_KEYS,
    RESERVED_ENV_PREFIXES,
    SLURM_MAX_CPUS_PER_TASK,
    Limits,
    WorkflowError,
)
from sbatch_service.modules import prepare
from sbatch_service.settings import Settings
from tests.fixtures.sbatch import SUBMIT_MUTATION, SbatchProcess, start_sbatch_service
from tests.sbatch_service.sandbox import Sandboxed, render_workflow, run_workflow
from tests.sbatch_service.slurm_helpers import STANDINS

GRID_SBATCH = str(Path(sys.executable).parent / "grid-sbatch")
README = Path(__file__).resolve().parents[2] / "README.md"
RESOURCES = {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 100, "gpus": 0}
INT32_MAX = 2**31 - 1


def host(command: str, **fields: Any) -> dict[str, Any]:
    return {"run": {"command": command, **fields}}


def job(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"resources": dict(RESOURCES), "steps": list(steps), **fields}


def refusals(workflow: object, limits: Limits | None = None) -> dict[str, str]:
    """Field -> message of a refused workflow (the test fails if it is accepted)."""
    with pytest.raises(WorkflowError) as caught:
        prepare(workflow, limits)
    return {error.field: error.message for error in caught.value.errors}


@pytest.fixture
def canaries(tmp_path: Path) -> Path:
    """A folder outside the job's: a hostile value that escaped would create a file here."""
    folder = tmp_path / "canaries"
    folder.mkdir()
    return folder


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def assert_ran(result: Sandboxed) -> None:
    assert result.returncode == 0, result.output


def assert_no_canary(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [], "a hostile value was executed"


def environment_of(path: Path) -> dict[str, str]:
    """The variables of an `env -0` dump."""
    found = {}
    for entry in path.read_text().split("\0"):
        key, sep, value = entry.partition("=")
        if sep:
            found[key] = value
    return found


# ---- 1. Enroot registry credentials


class _AuthRecorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def basic_credentials_sent_by_curl(netrc: str, machine: str, tmp_path: Path) -> tuple[str, str]:
    """The login and password real curl sends for `machine` when given this netrc (as Enroot does)."""
    _AuthRecorder.seen = []
    server = HTTPServer(("127.0.0.1", 0), _AuthRecorder)
    port = server.server_address[1]
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    path = tmp_path / f"{machine}.netrc"
    path.write_text(netrc)
    try:
        subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "--max-time", "20", "--netrc-file", str(path),
             "--resolve", f"{machine}:{port}:127.0.0.1", f"http://{machine}:{port}/v2/"],
            check=True,
            timeout=30,
        )  # fmt: skip
        thread.join(timeout=30)
    finally:
        server.server_close()
    (header,) = _AuthRecorder.seen
    scheme, _, encoded = header.partition(" ")
    assert scheme == "Basic", header
    login, _, password = base64.b64decode(encoded).decode().partition(":")
    return login, password


# Without whitespace (refused in credentials): ${IFS} stands in for a space.
PASSWORDS = [
    "$(touch${{IFS}}{c}/dollar-paren)",
    "`touch${{IFS}}{c}/backtick`",
    '$(touch${{IFS}}{c}/quote)"',
    '";touch${{IFS}}{c}/break;"',
    "\\$(touch${{IFS}}{c}/backslash)",
    '\\"$(touch${{IFS}}{c}/escaped-quote)\\',
    "$HOME;touch${{IFS}}{c}/semicolon",
    "s3cr'et$(touch${{IFS}}{c}/single)",
]


def test_enroots_credentials_parsing_runs_an_unquoted_password(tmp_path: Path, canaries: Path) -> None:
    """The check below can fail: the stand-in's transcription of Enroot's parsing does run `$(...)`."""
    config = tmp_path / "enroot"
    config.mkdir()
    (config / ".credentials").write_text(f"machine r.example.com login u password $(touch {canaries}/x)\n")
    env = {**os.environ, "ENROOT_CONFIG_PATH": str(config), "GRID_STANDIN_LOG": str(tmp_path / "log")}
    subprocess.run(
        [str(STANDINS / "enroot"), "import", "-o", str(tmp_path / "img"), "--", "docker://r.example.com#x"],
        env=env,
        check=True,
    )
    assert (canaries / "x").exists()


def test_registry_passwords_are_never_evaluated(tmp_path: Path, canaries: Path) -> None:
    passwords = [p.format(c=canaries) for p in PASSWORDS]
    steps = [
        {
            "run": {
                "command": "true",
                "container": {
                    "image": f"tool{i}:1",
                    "registry": f"r{i}.example.com",
                    "username": "$oauthtoken" if i % 2 else "robot",
                    "password": password,
                },
            }
        }
        for i, password in enumerate(passwords)
    ]
    apptainer = {
        "run": {
            "command": "true",
            "container": {
                "image": "tool:1",
                "registry": "reg.example.com",
                "username": "robot",
                "password": passwords[0],
                "apptainer": True,
            },
        }
    }
    result = run_workflow(job(*steps, apptainer), tmp_path / "sandbox")
    assert_ran(result)
    assert_no_canary(canaries)
    imports = [c for c in result.calls("enroot") if c["argv"][0] == "import"]
    assert len(imports) == len(passwords)
    for i, (call, password) in enumerate(zip(imports, passwords, strict=True)):
        machine = f"r{i}.example.com"
        assert call["argv"][-1] == f"docker://{machine}#tool{i}:1"
        netrc = call["netrc"]
        assert netrc, "Enroot finds the login in the credentials file"
        (line,) = [line for line in netrc.splitlines() if line.startswith(f"machine {machine} ")]
        login = "$oauthtoken" if i % 2 else "robot"
        assert basic_credentials_sent_by_curl(line + "\n", machine, tmp_path) == (login, password)
    (pull,) = [c for c in result.calls("apptainer") if "pull" in c["argv"]]
    assert pull["env"]["APPTAINER_DOCKER_PASSWORD"] == passwords[0]
    assert passwords[0] not in " ".join(pull["argv"])


@pytest.mark.parametrize(
    ("username", "message"),
    [
        ('ro"bot', "may not contain"),
        ("ro\\bot", "may not contain"),
        ("ro\x01bot", "may not contain"),
        ("ro bot", "without whitespace"),
    ],
)
def test_registry_usernames_that_enroot_cannot_match_are_refused(username: str, message: str) -> None:
    container = {"image": "x", "registry": "reg.example.com", "username": username, "password": "p"}
    problems = refusals(job(host("true", container=container)))
    assert message in problems["steps[0].run.container.username"]


# ---- 2. $DEEPSQUARE_ENV and the workflow's env


def test_bash_evaluates_an_imported_counter_in_loop_arithmetic(canaries: Path) -> None:
    """Why `index` matters: a loop that counted with it would run the command in its value."""
    subprocess.run(
        ["bash", "-c", f"index='NTASKS[$(touch {canaries}/fired)0]'; (( index += 1 )) || true"],
        capture_output=True,
        check=False,
    )
    assert (canaries / "fired").exists()


def env_file_lines(canaries: Path, evil: Path) -> list[str]:
    return [
        f"index=NTASKS[$(touch {canaries}/index)0]",
        f"item=x[$(touch {canaries}/item)]",
        f"grid_index_3=NTASKS[$(touch {canaries}/counter)0]",
        f"grid_status_1=$(touch {canaries}/status)",
        "PATH=/nonexistent",
        "LD_PRELOAD=/nonexistent/evil.so",
        "ld_preload=/nonexistent/evil.so",
        "LD_AUDIT=/nonexistent/evil.so",
        f"BASH_ENV={evil}",
        f"ENV={evil}",
        f"PS4=$(touch {canaries}/ps4)",
        "SHELLOPTS=xtrace",
        "BASHOPTS=extdebug",
        f"PROMPT_COMMAND=touch {canaries}/prompt",
        "IFS=/",
        "GLOBIGNORE=*",
        "CDPATH=/",
        "FUNCNEST=1",
        "TMOUT=1",
        "POSIXLY_CORRECT=1",
        "ENROOT_MOUNT_HOME=y",
        "ENROOT_CONFIG_PATH=/",
        "APPTAINER_BIND=/:/host",
        "APPTAINERENV_LD_PRELOAD=/nonexistent/evil.so",
        "SINGULARITY_BIND=/:/host",
        "SINGULARITYENV_X=1",
        "SLURM_JOB_ID=1",
        "STORAGE_PATH=/",
        "DEEPSQUARE_OUTPUT=/tmp",
        "GRID_STEP_DIR=/",
        f"GOOD=$(touch {canaries}/good) `touch {canaries}/tick` it's",
    ]


RESERVED_IN_ENV_FILE = (
    "LD_PRELOAD",
    "ld_preload",
    "LD_AUDIT",
    "BASH_ENV",
    "ENV",
    "PS4",
    "SHELLOPTS",
    "BASHOPTS",
    "PROMPT_COMMAND",
    "GLOBIGNORE",
    "CDPATH",
    "FUNCNEST",
    "TMOUT",
    "POSIXLY_CORRECT",
    "ENROOT_MOUNT_HOME",
    "ENROOT_CONFIG_PATH",
    "APPTAINER_BIND",
    "APPTAINERENV_LD_PRELOAD",
    "SINGULARITY_BIND",
    "SINGULARITYENV_X",
    "grid_status_1",
    "item",
)


def test_the_env_file_cannot_set_reserved_names_nor_run_code(
    tmp_path: Path, canaries: Path, out: Path
) -> None:
    evil = tmp_path / "evil.sh"
    evil.write_text(f"touch {canaries}/bash_env\n")
    lines = env_file_lines(canaries, evil)
    record = 'env -0 > "$OUT/env-$1"; printf %s "$PATH" > "$OUT/path-$1"'
    workflow = job(
        {"name": "poison", **host(f"printf '%s\\n' {shlex.join(lines)} >> \"$DEEPSQUARE_ENV\"")},
        {"name": "after", **host(record.replace("$1", "host"), shell="/bin/bash")},
        {
            "name": "loop",
            "for": {"range": {"begin": 0, "end": 1}, "steps": [host('echo "$index" >> "$OUT/loop"')]},
        },
        {
            "name": "container",
            **host(record.replace("$1", "enroot"), shell="/bin/bash", container={"image": "tool:1"}),
        },
        env=[{"key": "OUT", "value": str(out)}],
    )
    result = run_workflow(workflow, tmp_path / "sandbox")
    assert_ran(result)
    assert_no_canary(canaries)
    assert (out / "loop").read_text() == "0\n1\n", "the loop counts with its own counter"
    sandbox_path = f"{Path(__file__).parent / 'sandbox_bin'}:{STANDINS}:{os.environ['PATH']}"
    for where in ("host", "enroot"):
        seen = environment_of(out / f"env-{where}")
        assert seen["GOOD"] == f"$(touch {canaries}/good) `touch {canaries}/tick` it's"
        assert (out / f"path-{where}").read_text() == sandbox_path
        for name in RESERVED_IN_ENV_FILE:
            assert name not in seen, f"{name} was imported from $DEEPSQUARE_ENV"
        assert seen["SLURM_JOB_ID"] == result.job_id
        assert seen.get("GRID_STEP_DIR", "unset") != "/", "Enroot steps get their own, others none"
    assert "index" not in environment_of(out / "env-host")
    assert environment_of(out / "env-enroot")["index"] == "1", "the loop's last value, as in the reference"
    host_seen = environment_of(out / "env-host")
    assert host_seen["STORAGE_PATH"] == str(result.storage)
    assert host_seen["DEEPSQUARE_OUTPUT"] == f"{result.storage}/output"


def test_an_imported_index_never_reaches_a_range_loop(tmp_path: Path, canaries: Path, out: Path) -> None:
    """Even past the env-file filter, the loops never read `index`: the job's env sets it directly."""
    workflow = job(
        {
            "name": "loop",
            "for": {"range": {"begin": 0, "end": 2}, "steps": [host('echo "$index" >> "$OUT/loop"')]},
        },
        env=[
            {"key": "OUT", "value": str(out)},
            {"key": "index", "value": f"NTASKS[$(touch {canaries}/index)0]"},
        ],
    )
    result = run_workflow(workflow, tmp_path / "sandbox")
    assert_ran(result)
    assert_no_canary(canaries)
    assert (out / "loop").read_text() == "0\n1\n2\n"


RESERVED_FOR_WORKFLOWS = [
    "PATH",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "LD_AUDIT",
    "ld_preload",
    "IFS",
    "BASH_ENV",
    "BASH_XTRACEFD",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "CDPATH",
    "GLOBIGNORE",
    "EXECIGNORE",
    "POSIXLY_CORRECT",
    "FUNCNEST",
    "TMOUT",
    "STORAGE_PATH",
    "DEEPSQUARE_ENV",
    "SLURM_JOB_ID",
    "slurm_procid",
    "GRID_STEP_DIR",
    "grid_scope",
    "ENROOT_MOUNT_HOME",
    "ENROOT_CONFIG_PATH",
    "APPTAINER_BIND",
    "APPTAINERENV_LD_PRELOAD",
    "SINGULARITY_BIND",
    "SINGULARITYENV_PATH",
]


@pytest.mark.parametrize("name", RESERVED_FOR_WORKFLOWS)
@pytest.mark.parametrize(
    ("path", "field"),
    [(["env"], "env[0].key"), (["steps", 0, "run", "env"], "steps[0].run.env[0].key")],
    ids=["job-env", "step-env"],
)
def test_the_workflows_env_may_not_set_reserved_names(name: str, path: list[Any], field: str) -> None:
    workflow: dict[str, Any] = job(host("true"))
    target: Any = workflow
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = [{"key": name, "value": "x"}]
    assert refusals(workflow) == {field: f"environment variable {name} may not be set"}


def test_the_readme_lists_every_reserved_name() -> None:
    text = README.read_text()
    section = text[text.index("Reserved environment names") :][:3000]
    for name in [*FORBIDDEN_ENV_KEYS, *RESERVED_ENV_PREFIXES, "index", "item", "grid_"]:
        assert f"`{name}" in section, f"README does not list {name}"


# ---- 3. Nested loops


def nested_loops(out: Path, outer_parallel: bool, inner_parallel: bool, items: bool) -> dict[str, Any]:
    if items:
        outer_loop: dict[str, Any] = {"items": ["a", "b", "c"]}
        inner_loop: dict[str, Any] = {"items": ["x", "y"]}
        variable = "item"
    else:
        outer_loop = {"range": {"begin": 0, "end": 2}}
        inner_loop = {"range": {"begin": 0, "end": 1}}
        variable = "index"
    inner = {
        "name": "inner",
        "for": {
            **inner_loop,
            "parallel": inner_parallel,
            "steps": [host(f'echo "${variable}" >> "$OUT/inner"')],
        },
    }
    after = host(f'echo "${variable}" >> "$OUT/outer"')
    outer = {"name": "outer", "for": {**outer_loop, "parallel": outer_parallel, "steps": [inner, after]}}
    return job(outer, env=[{"key": "OUT", "value": str(out)}])


@pytest.mark.parametrize(("outer_parallel", "inner_parallel"), [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("items", [False, True], ids=["range", "items"])
def test_nested_loops_have_their_own_counters(
    tmp_path: Path, out: Path, outer_parallel: bool, inner_parallel: bool, items: bool
) -> None:
    result = run_workflow(nested_loops(out, outer_parallel, inner_parallel, items), tmp_path / "sandbox")
    assert_ran(result)
    inner = (out / "inner").read_text().split()
    outer = (out / "outer").read_text().split()
    inner_values, outer_values = (["x", "y"], ["a", "b", "c"]) if items else (["0", "1"], ["0", "1", "2"])
    assert len(inner) == 6, "3 x 2 inner steps"
    assert sorted(inner) == sorted(inner_values * 3)
    assert sorted(outer) == outer_values, "after the inner loop, the outer value is back"
    if not (outer_parallel or inner_parallel):
        assert inner == inner_values * 3
        assert outer == outer_values


# ---- 4. Caps on loops and resources


def test_a_huge_range_is_refused() -> None:
    loop = {"range": {"begin": 0, "end": INT32_MAX}, "steps": [host("true")]}
    problems = refusals(job({"for": loop}))
    assert problems["steps[0].for.range"] == "runs 2147483648 iterations, more than the maximum of 10000"
    countdown = {"range": {"begin": INT32_MAX, "end": -INT32_MAX - 1, "increment": -1}, "steps": []}
    assert "steps[0].for.range" in refusals(job({"for": countdown}))


def test_loops_multiplied_out_are_bounded() -> None:
    body: list[dict[str, Any]] = [host("true")]
    for _ in range(3):
        body = [{"for": {"range": {"begin": 1, "end": 100}, "steps": body}}]
    assert refusals(job(*body)) == {"steps": "the loops would run more than 100000 steps in all"}
    small = Limits(max_step_runs=7)
    loop = {"for": {"items": ["a", "b", "c", "d"], "steps": [host("true"), host("true")]}}
    assert "steps" in refusals(job(loop), small)
    assert prepare(job(loop), Limits(max_step_runs=9)).job is not None


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        (
            ["resources", "gpus"],
            INT32_MAX,
            "resources.gpus",
            "2147483647 is more than the site's maximum of 4096",
        ),
        (["resources", "tasks"], INT32_MAX, "resources.tasks", "maximum of 65536"),
        (["resources", "cpusPerTask"], 70_000, "resources.cpusPerTask", "maximum of 1024"),
        (["resources", "memPerCpu"], INT32_MAX, "resources.memPerCpu", "maximum of 1048576"),
        (
            ["resources", "gpus"],
            2**32 - 1,
            "resources.gpus",
            "Int cannot represent non 32-bit signed integer",
        ),
        (
            ["steps", 0, "run", "resources"],
            {"tasks": INT32_MAX, "gpusPerTask": 1},
            "steps[0].run.resources.tasks",
            "maximum of 65536",
        ),
        (
            ["steps", 0, "run", "resources"],
            {"gpusPerTask": INT32_MAX},
            "steps[0].run.resources.gpusPerTask",
            "maximum of 64",
        ),
        (
            ["steps", 0, "run", "resources"],
            {"tasks": 1000, "gpusPerTask": 64},
            "steps[0].run.resources.gpusPerTask",
            "gpusPerTask x tasks = 64000 GPUs (--gpus) is more than the site's maximum of 4096",
        ),
    ],
)
def test_resources_beyond_the_site_maximum_are_refused(
    path: list[Any], value: object, field: str, message: str
) -> None:
    workflow: dict[str, Any] = job(host("true"))
    target: Any = workflow
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    problems = refusals(workflow)
    assert message in problems[field], problems


def test_the_site_maxima_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRID_SBATCH_MAX_GPUS", "8")
    monkeypatch.setenv("GRID_SBATCH_MAX_ITERATIONS", "5")
    limits = Settings().limits
    assert (limits.max_gpus, limits.max_iterations) == (8, 5)
    workflow = job({"for": {"range": {"begin": 1, "end": 6}, "steps": []}})
    workflow["resources"]["gpus"] = 9
    assert set(refusals(workflow, limits)) == {"resources.gpus", "steps[0].for.range"}
    monkeypatch.setenv("GRID_SBATCH_MAX_CPUS_PER_TASK", str(SLURM_MAX_CPUS_PER_TASK + 1))
    with pytest.raises(ValueError, match="max_cpus_per_task"):
        Settings()


def test_gpus_in_the_script_stay_within_the_maximum(tmp_path: Path) -> None:
    limits = Limits()
    workflow = job(
        host("true", resources={"tasks": limits.max_gpus // limits.max_gpus_per_task, "gpusPerTask": 64})
    )
    workflow["resources"].update(gpus=limits.max_gpus, tasks=limits.max_tasks)
    script = render_workflow(workflow, tmp_path)
    counts = [int(n) for n in re.findall(r"--gpus=(\d+)", script)]
    assert max(counts) == limits.max_gpus
    assert "export MEM=" in script and "export GPUS=4096" in script


# ---- 5. Paths


@pytest.mark.parametrize(
    "run",
    [
        {"command": "true", "workDir": "/../../../etc"},
        {"command": "true", "workDir": "/srv/../../etc"},
        {"command": "true", "workDir": "/a/..", "network": "slirp4netns"},
        {"command": "true", "workDir": "/../etc", "container": {"image": "x"}},
        {"command": "true", "workDir": "/x/../../etc", "container": {"image": "x", "apptainer": True}},
    ],
)
def test_a_work_dir_with_dot_dot_is_refused(run: dict[str, Any]) -> None:
    assert "may not contain '..'" in refusals(job({"run": run}))["steps[0].run.workDir"]


def test_a_hosted_image_cannot_leave_the_software_root() -> None:
    container = {"image": "../../etc/ssl/private/key.sif", "deepsquareHosted": True}
    problems = refusals(job(host("true", container=container)))
    assert "may not contain '..'" in problems["steps[0].run.container.image"]


def test_paths_stay_inside_the_job_folder_and_the_image_roots(tmp_path: Path, out: Path) -> None:
    record = 'pwd > "$OUT/pwd-$1"'
    workflow = job(
        {"name": "host", **host(record.replace("$1", "host"), workDir="/etc")},
        {"name": "host-ns", **host(record.replace("$1", "ns"), workDir="/etc/ssl", network="slirp4netns")},
        {"name": "enroot", **host("true", container={"image": "/etc/ssl/private/key.sqsh"})},
        {"name": "apptainer", **host("true", container={"image": "/../etc/ssl/private/key.sif", "apptainer": True})},
        {"name": "hosted", **host("true", container={"image": "tools/x.sif", "registry": "ghcr.io", "deepsquareHosted": True})},
        env=[{"key": "OUT", "value": str(out)}],
    )  # fmt: skip
    result = run_workflow(workflow, tmp_path / "sandbox")
    storage = result.storage
    assert_ran(result)
    assert (out / "pwd-host").read_text() == f"{storage}/etc\n"
    assert (out / "pwd-ns").read_text() == f"{storage}/etc/ssl\n"
    (create,) = [c for c in result.calls("enroot") if c["argv"][0] == "create"]
    assert create["argv"][-1] == f"{storage}/etc/ssl/private/key.sqsh"
    images = [c["argv"][-4] for c in result.calls("apptainer") if "exec" in c["argv"]]
    software = tmp_path / "sandbox" / "caches" / "software"
    assert images == [f"{storage}/etc/ssl/private/key.sif", f"{software}/ghcr.io/tools/x.sif"], images


# ---- 6. Documents that would crash a parser


def crashing_documents() -> dict[str, tuple[str, str]]:
    head = '{"resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 1}, "steps": '
    yaml_head = "resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 1}\nsteps: "
    too_deep = ("", "nested deeper than 100 levels of objects and lists")
    return {
        "json-3000-deep": (head + "[" * 3000 + "]" * 3000 + "}", too_deep[1]),
        "json-100000-deep": (head + "[" * 100_000 + "]" * 100_000 + "}", too_deep[1]),
        "json-objects-deep": (head + '[{"steps": ' * 1500 + "[]" + "}]" * 1500 + "}", too_deep[1]),
        "yaml-flow-600-deep": (yaml_head + "[" * 600 + "]" * 600 + "\n", too_deep[1]),
        "yaml-flow-maps-deep": (yaml_head + "{a: " * 600 + "1" + "}" * 600 + "\n", too_deep[1]),
        "lone-surrogate": (
            head + '[{"run": {"command": "\\ud800"}}]}',
            "steps[0].run.command: contains a lone surrogate (\\ud800), which is not valid Unicode",
        ),
        "lone-surrogate-in-a-key": (
            head + '[{"run": {"command": "x", "\\udfff": 1}}]}',
            "steps[0].run: has a key with a lone surrogate (\\udfff), which is not valid Unicode",
        ),
        "lone-surrogate-in-yaml": (
            yaml_head + '[{name: "\\ud800", run: {command: x}}]\n',
            "steps[0].name: contains a lone surrogate (\\ud800)",
        ),
    }


CRASHING = crashing_documents()


@pytest.mark.parametrize("name", list(CRASHING))
def test_render_refuses_crashing_documents_with_status_2(tmp_path: Path, name: str) -> None:
    text, message = CRASHING[name]
    path = tmp_path / "workflow.txt"
    path.write_text(text)
    rendered = subprocess.run(
        [GRID_SBATCH, "render", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 2, rendered.stderr
    assert rendered.stdout == ""
    assert "Traceback" not in rendered.stderr
    assert message in rendered.stderr


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SbatchProcess]:
    process = start_sbatch_service(
        tmp_path_factory.mktemp("sbatch-hostile"),
        rpc_url="http://127.0.0.1:9",
        metascheduler_address="0x" + "11" * 20,
    )
    try:
        yield process
    finally:
        process.stop()


def graphql_body(job_text: str) -> bytes:
    """A submit request whose $job is the given JSON text, sent as it is (escapes included)."""
    return ('{"query": ' + json.dumps(SUBMIT_MUTATION) + ', "variables": {"job": ' + job_text + "}}").encode()


def assert_validation_error(answer: requests.Response, message: str) -> None:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body.get("data") in (None, {"submit": None})
    (error,) = body["errors"]
    assert error["extensions"]["type"] == "validation", error
    assert message in error["message"], error
    assert "internal error" not in answer.text


@pytest.mark.parametrize("name", [n for n in CRASHING if "yaml" not in n])
def test_graphql_refuses_crashing_documents_as_validation_errors(service: SbatchProcess, name: str) -> None:
    text, message = CRASHING[name]
    answer = requests.post(
        service.graphql_url, data=graphql_body(text), headers={"content-type": "application/json"}, timeout=60
    )
    assert_validation_error(answer, message)


def test_graphql_refuses_crashing_queries_and_get_variables(service: SbatchProcess) -> None:
    literal = 'mutation { submit(job: {resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 1}, steps: [{run: {command: "\\ud800"}}]}) }'
    raw = json.dumps({"query": literal}).replace("\\\\ud800", "\\ud800")
    answer = requests.post(
        service.graphql_url, data=raw.encode(), headers={"content-type": "application/json"}, timeout=60
    )
    assert_validation_error(answer, "lone surrogate")
    escaped = requests.post(service.graphql_url, json={"query": literal}, timeout=60)
    assert_validation_error(escaped, "Invalid Unicode escape sequence")
    deep = requests.post(
        service.graphql_url,
        json={"query": "mutation { submit(job: {steps: " + "[" * 3000 + "]" * 3000 + "}) }"},
        timeout=60,
    )
    assert_validation_error(deep, "nested too deeply")
    query = "query ($v: String) { health }"
    got = requests.get(
        service.graphql_url, params={"query": query, "variables": "[" * 3000 + "]" * 3000}, timeout=60
    )
    assert_validation_error(got, "nested deeper than 100 levels")
    named = requests.get(
        service.graphql_url, params={"query": query, "variables": '{"\\ud800": 1}'}, timeout=60
    )
    assert_validation_error(named, "lone surrogate")
