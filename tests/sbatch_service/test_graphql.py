"""The customer GraphQL API of a real `grid-sbatch serve`, called the way DeepSquare clients call it."""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from graphql import GraphQLError

from sbatch_service.graphql_api import format_error
from tests.fixtures.sbatch import JOB_QUERY, SUBMIT_MUTATION, SbatchProcess, start_sbatch_service
from tests.sbatch_service.module_repo import SOURCE, make_module_repo

GRID_SBATCH = str(Path(sys.executable).parent / "grid-sbatch")

# The three examples of WORKFLOW.md, as the clients put them in the $job variable.
HELLO: dict[str, Any] = {
    "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 1024, "gpus": 0},
    "steps": [{"name": "hello-world", "run": {"command": 'echo "hello world"'}}],
}
LOOP: dict[str, Any] = {
    "resources": {"tasks": 2, "cpusPerTask": 2, "memPerCpu": 2048, "gpus": 0},
    "steps": [
        {
            "name": "loop",
            "for": {
                "parallel": True,
                "items": ["a", "b"],
                "steps": [
                    {
                        "name": "echo",
                        "run": {
                            "container": {
                                "registry": "registry-1.docker.io",
                                "image": "library/ubuntu:22.04",
                            },
                            "env": [{"key": "FOO", "value": "bar"}],
                            "command": "echo $item $FOO",
                        },
                    }
                ],
            },
        }
    ],
}
TRAIN: dict[str, Any] = {
    "resources": {"tasks": 4, "cpusPerTask": 8, "memPerCpu": 4000, "gpus": 4},
    "steps": [
        {
            "name": "train",
            "run": {
                "resources": {"tasks": 4, "gpusPerTask": 1},
                "mpi": "pmix_v4",
                "workDir": "/app",
                "shell": "/bin/bash",
                "container": {"registry": "ghcr.io", "image": "org/trainer:latest", "apptainer": True},
                "command": "./train --out $DEEPSQUARE_OUTPUT",
            },
            "catch": [{"name": "report", "run": {"command": 'echo "failed with $DEEPSQUARE_ERROR_CODE"'}}],
        }
    ],
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SbatchProcess]:
    # GraphQL never reads the chain: any well-formed address will do here. Modules come from the
    # tests' local git repository (any other source fails to fetch, without the network).
    modules, _ = make_module_repo(tmp_path_factory.mktemp("modules"))
    process = start_sbatch_service(
        tmp_path_factory.mktemp("sbatch-graphql"),
        rpc_url="http://127.0.0.1:9",
        metascheduler_address="0x" + "11" * 20,
        extra_env={
            "GRID_SBATCH_STORAGE_ROOT": "/srv/grid-storage",
            "GRID_SBATCH_MAX_WORKFLOW_BYTES": "20000",
            "GRID_SBATCH_MODULE_URL_TEMPLATE": modules.url_template,
            "GRID_SBATCH_MODULE_ALLOWED_HOSTS": json.dumps([*modules.allowed_hosts, "github.com"]),
        },
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def exposing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SbatchProcess]:
    """A service started with `--expose-stored-scripts`: the `job` query answers."""
    process = start_sbatch_service(
        tmp_path_factory.mktemp("sbatch-exposing"),
        rpc_url="http://127.0.0.1:9",
        metascheduler_address="0x" + "11" * 20,
        extra_args=["--expose-stored-scripts"],
    )
    try:
        yield process
    finally:
        process.stop()


def stored_script(service: SbatchProcess, key: str) -> str | None:
    with sqlite3.connect(f"file:{service.database}?mode=ro", uri=True) as db:
        row = db.execute("SELECT script FROM scripts WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def changed(path: list[str | int], value: object, base: dict[str, Any] = HELLO) -> dict[str, Any]:
    """A copy of `base` with the value at `path` replaced (or added)."""
    data = copy.deepcopy(base)
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def without(path: list[str | int], base: dict[str, Any] = HELLO) -> dict[str, Any]:
    data = copy.deepcopy(base)
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return data


def nested(levels: int) -> dict[str, Any]:
    """A workflow whose steps are groups nested `levels` deep."""
    step: dict[str, Any] = {"run": {"command": "x"}}
    for _ in range(levels):
        step = {"steps": [step]}
    return changed(["steps"], [step])


def the_refusal(body: dict[str, Any]) -> dict[str, Any]:
    """The single error of a refused request, checked to be a validation error naming its fields."""
    assert body.get("data") is None, body
    errors: list[dict[str, Any]] = body["errors"]
    (error,) = errors
    extensions = error["extensions"]
    assert extensions["type"] == "validation", error
    assert extensions["field"] == extensions["errors"][0]["field"]
    for problem in extensions["errors"]:
        assert f"{problem['field'] or '<workflow>'}: {problem['message']}" in error["message"]
    assert "Traceback" not in json.dumps(body)
    return error


def test_health_answers_ok(service: SbatchProcess) -> None:
    answer = requests.get(service.health_url, timeout=5)
    assert answer.status_code == 200
    assert answer.text == "ok"


@pytest.mark.parametrize(
    ("workflow", "expected"),
    [
        (HELLO, ["/bin/sh -c 'echo \"hello world\"'"]),
        (LOOP, ["enroot import", "'docker://registry-1.docker.io#library/ubuntu:22.04'", "export FOO="]),
        (
            TRAIN,
            [
                "apptainer --silent exec --disable-cache --contain",
                "--mpi=pmix_v4",
                "--gpus=4",
                "DEEPSQUARE_ERROR_CODE",
            ],
        ),
    ],
    ids=["hello", "loop", "train"],
)
def test_submit_stores_the_rendered_script_under_its_sha256(
    service: SbatchProcess, workflow: dict[str, Any], expected: list[str]
) -> None:
    key = service.submit(workflow)
    script = stored_script(service, key)
    assert script is not None
    assert key == hashlib.sha256(script.encode()).hexdigest()
    assert "STORAGE_PATH='/srv/grid-storage'/" in script
    for fragment in expected:
        assert fragment in script


def test_the_sdks_exact_request_is_answered_with_the_key(service: SbatchProcess) -> None:
    payload = {"query": "mutation Submit($job: Job!) {\n  submit(job: $job)\n}", "variables": {"job": LOOP}}
    answer = requests.post(service.graphql_url, json=payload, timeout=30)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"data"}, body
    key = body["data"]["submit"]
    script = stored_script(service, key)
    assert script is not None and hashlib.sha256(script.encode()).hexdigest() == key


def test_submit_with_an_inline_literal(service: SbatchProcess) -> None:
    query = (
        "mutation { submit(job: {resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 64, gpus: 0}, "
        'steps: [{name: "a", run: {command: "echo inline"}}]}) }'
    )
    body = service.graphql(query)
    assert "errors" not in body, body
    script = stored_script(service, body["data"]["submit"])
    assert script is not None and "'echo inline'" in script


def test_an_inline_literal_of_the_wrong_types_names_its_fields(service: SbatchProcess) -> None:
    query = (
        'mutation { submit(job: {resources: {tasks: "1", cpusPerTask: 1, memPerCpu: 64}, '
        'steps: [{colour: 1, run: {command: "x"}}, {run: {shell: "/bin/sh"}}]}) }'
    )
    error = the_refusal(service.graphql(query))
    assert {(p["field"], p["message"]) for p in error["extensions"]["errors"]} == {
        ("resources.tasks", 'Int cannot represent non-integer value: "1"'),
        ("steps[0].colour", "Field 'colour' is not defined by type 'Step'."),
        ("steps[1].run.command", "Field 'command' of required type 'String!' was not provided."),
    }


def test_validation_errors_name_the_field(service: SbatchProcess) -> None:
    bad = {**HELLO, "steps": [{"name": "x", "run": {"command": "x", "container": {"image": "Bad Image"}}}]}
    body = service.graphql(SUBMIT_MUTATION, {"job": bad})
    assert body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"]["type"] == "validation"
    assert error["extensions"]["field"] == "steps[0].run.container.image"
    assert "invalid image name" in error["message"]


@pytest.mark.parametrize(
    ("workflow", "field", "message"),
    [
        (
            changed(["resources", "tasks"], "1"),
            "resources.tasks",
            "Int cannot represent non-integer value: '1'",
        ),
        (changed(["resources", "memPerCpu"], 1.5), "resources.memPerCpu", "non-integer value: 1.5"),
        (
            changed(["resources", "tasks"], 2**31),
            "resources.tasks",
            "non 32-bit signed integer value: 2147483648",
        ),
        (changed(["resources", "cpusPerTask"], None), "resources.cpusPerTask", "type 'Int!' not to be null"),
        (without(["resources"]), "resources", "Field 'resources' of required type 'JobResources!'"),
        (changed(["steps", 0, "run"], {}), "steps[0].run.command", "of required type 'String!' was not"),
        (
            changed(["steps", 0, "colour"], "red"),
            "steps[0].colour",
            "Field 'colour' is not defined by type 'Step'",
        ),
        (changed(["steps", 0, "run", "shel"], "/bin/sh"), "steps[0].run.shel", "Did you mean 'shell'?"),
        (
            changed(["steps", 0, "run", "x11"], True),
            "steps[0].run.x11",
            "not defined by type 'StepRun'",
        ),
        (changed(["env"], "FOO=bar"), "env", "Expected value of type 'EnvVar' to be an object"),
        (
            changed(["steps", 0, "run", "env"], [{"key": "A"}]),
            "steps[0].run.env[0].value",
            "'String!' was not",
        ),
        (changed(["steps", 0, "for"], {"parallel": "yes", "steps": []}), "steps[0].for.parallel", "Boolean"),
        (nested(150), "", "nested deeper than 100 levels of objects and lists"),
    ],
    ids=[
        "string-for-int",
        "float",
        "beyond-32-bits",
        "null-for-required",
        "missing-resources",
        "missing-command",
        "unknown-field",
        "misspelt-field",
        "field-of-another-type",
        "object-expected",
        "missing-in-list-item",
        "string-for-boolean",
        "too-deep",
    ],
)
def test_graphql_coercion_refusals_name_the_field(
    service: SbatchProcess, workflow: object, field: str, message: str
) -> None:
    error = the_refusal(service.graphql(SUBMIT_MUTATION, {"job": workflow}))
    assert error["extensions"]["field"] == field
    assert message in error["extensions"]["errors"][0]["message"]


@pytest.mark.parametrize(
    "workflow",
    [
        changed(["steps", 0, "use"], {"source": SOURCE + "@v1", "args": [{"key": "WHO", "value": "you"}]}),
        changed(["inputMode"], 448),
        changed(["input"], {"http": {"url": "https://example.org/data.tar"}}),
        changed(["virtualNetworks"], [{"name": "n", "gatewayAddress": "10.0.0.1/24"}]),
        changed(["steps", 0, "run", "dns"], ["1.1.1.1"]),
        changed(
            ["steps", 0, "run", "container"],
            {"image": "x", "mounts": [{"hostDir": "/a", "containerDir": "/b", "options": "ro"}]},
        ),
        changed(["steps", 0, "run", "container"], {"image": "library/x", "deepsquareHosted": True}),
        changed(["steps", 0, "run", "network"], "pasta"),
        changed(["steps", 0, "run", "mapUid"], 0),
        changed(["continuousOutputSync"], True),
        changed(["enableLogging"], True),
        changed(["steps", 0], {"name": "only a name"}),
    ],
    ids=[
        "use",
        "inputMode",
        "input",
        "virtualNetworks",
        "dns",
        "mounts",
        "deepsquareHosted",
        "network",
        "mapUid",
        "continuousOutputSync",
        "enableLogging",
        "name-only",
    ],
)
def test_every_field_of_the_reference_is_accepted(service: SbatchProcess, workflow: object) -> None:
    body = service.graphql(SUBMIT_MUTATION, {"job": workflow})
    assert "errors" not in body, body
    assert stored_script(service, body["data"]["submit"]) is not None


def test_misplaced_keys_are_ignored_with_warnings_in_extensions(service: SbatchProcess) -> None:
    step = {
        "name": "s",
        "network": "slirp4netns",
        "run": {"command": "x", "mountHome": True, "resources": {"gpus": 1}},
    }
    body = service.graphql(SUBMIT_MUTATION, {"job": changed(["steps"], [step])})
    assert "errors" not in body, body
    assert {w["field"] for w in body["extensions"]["warnings"]} == {
        "steps[0].network",
        "steps[0].run.mountHome",
        "steps[0].run.resources.gpus",
    }
    script = stored_script(service, body["data"]["submit"])
    assert script is not None and "slirp4netns" not in script and "--gpus=0" in script
    inline = (
        "mutation { submit(job: {resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 64}, "
        'steps: [{name: "a", network: "pasta", run: {command: "echo inline", mountHome: true}}]}) }'
    )
    body = service.graphql(inline)
    assert "errors" not in body, body
    assert [w["field"] for w in body["extensions"]["warnings"]] == [
        "steps[0].network",
        "steps[0].run.mountHome",
    ]
    refused = service.graphql(SUBMIT_MUTATION, {"job": changed(["steps"], [{**step, "colour": 1}])})
    assert the_refusal(refused)["extensions"]["errors"] == [
        {"field": "steps[0].colour", "message": "Field 'colour' is not defined by type 'Step'."}
    ]


def test_a_module_that_cannot_be_fetched_refuses_the_workflow(service: SbatchProcess) -> None:
    missing = changed(["steps", 0, "use"], {"source": SOURCE + "@v9"})
    error = the_refusal(service.graphql(SUBMIT_MUTATION, {"job": missing}))
    assert error["extensions"]["field"] == "steps[0].use.source"
    assert error["message"].startswith(f"steps[0].use.source: cannot fetch module {SOURCE}@v9: ")


def test_every_problem_is_listed(service: SbatchProcess) -> None:
    bad_types = {
        "resources": {"tasks": 0, "cpusPerTask": 1, "memPerCpu": 1},
        "steps": [{"run": {}}],
        "colour": 1,
    }
    error = the_refusal(service.graphql(SUBMIT_MUTATION, {"job": bad_types}))
    assert [e["field"] for e in error["extensions"]["errors"]] == ["steps[0].run.command", "colour"]
    bad_values = {
        "resources": {"tasks": 0, "cpusPerTask": 1, "memPerCpu": 0},
        "steps": [{"run": {"command": "x", "workDir": "rel"}}],
    }
    error = the_refusal(service.graphql(SUBMIT_MUTATION, {"job": bad_values}))
    fields = {e["field"] for e in error["extensions"]["errors"]}
    assert fields == {"resources.tasks", "resources.memPerCpu", "steps[0].run.workDir"}


def test_oversized_workflow_is_refused(service: SbatchProcess) -> None:
    big = {**HELLO, "steps": [{"name": "big", "run": {"command": "x" * 30_000}}]}
    body = service.graphql(SUBMIT_MUTATION, {"job": big})
    assert body["errors"][0]["extensions"]["type"] == "validation"
    assert "more than 20000" in body["errors"][0]["message"]
    huge = requests.post(service.graphql_url, data=b"{" + b" " * 200_000 + b"}", timeout=10)
    assert huge.status_code == 413


def test_missing_variable_is_a_graphql_error(service: SbatchProcess) -> None:
    body = service.graphql(SUBMIT_MUTATION, {})
    (error,) = body["errors"]
    assert "$job" in error["message"]
    assert error["extensions"]["type"] == "validation"


@pytest.mark.parametrize(
    "query",
    [
        "mutation Submit($job: Job!) { submit(job: $job",
        "{ nothing }",
        "mutation ($job: String!) { submit(job: $job) }",
    ],
)
def test_a_bad_request_is_a_validation_error(service: SbatchProcess, query: str) -> None:
    answer = requests.post(service.graphql_url, json={"query": query, "variables": {"job": "x"}}, timeout=30)
    assert answer.status_code == 200
    (error,) = answer.json()["errors"]
    assert error["extensions"]["type"] == "validation"
    assert "internal" not in error["message"]


def test_a_fault_inside_a_resolver_shows_no_details() -> None:
    fault = GraphQLError("boom", path=["submit"], original_error=RuntimeError("secret detail"))
    assert format_error(fault) == {
        "message": "internal error",
        "path": ["submit"],
        "extensions": {"type": "internal"},
    }


def test_the_schema_declares_the_clients_mutation(service: SbatchProcess) -> None:
    body = service.graphql(
        '{ __type(name: "Mutation") { fields { name args { name type { kind ofType { name } } } } } }'
    )
    (submit,) = [f for f in body["data"]["__type"]["fields"] if f["name"] == "submit"]
    assert submit["args"] == [{"name": "job", "type": {"kind": "NON_NULL", "ofType": {"name": "Job"}}}]


def test_the_job_query_is_refused_unless_stored_scripts_are_exposed(service: SbatchProcess) -> None:
    key = service.submit(HELLO)
    body = service.graphql(JOB_QUERY, {"batchLocationHash": key})
    assert body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"] == {"type": "forbidden"}
    assert "does not expose stored scripts" in error["message"]
    assert "hello world" not in json.dumps(body)


def test_the_job_query_returns_the_stored_script_when_exposed(exposing: SbatchProcess) -> None:
    key = exposing.submit(TRAIN)
    body = exposing.graphql(JOB_QUERY, {"batchLocationHash": key})
    assert "errors" not in body, body
    script = body["data"]["job"]
    assert script == stored_script(exposing, key)
    assert hashlib.sha256(script.encode()).hexdigest() == key
    fetched = requests.get(
        exposing.graphql_url,
        params={"query": JOB_QUERY, "variables": json.dumps({"batchLocationHash": key})},
        timeout=30,
    )
    assert fetched.status_code == 200
    assert fetched.json() == {"data": {"job": script}}


def test_the_job_query_of_an_unknown_key_is_not_found(exposing: SbatchProcess) -> None:
    body = exposing.graphql(JOB_QUERY, {"batchLocationHash": "0" * 64})
    assert body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"] == {"type": "not_found"}


def test_mutations_are_not_accepted_over_get(exposing: SbatchProcess) -> None:
    answer = requests.get(
        exposing.graphql_url,
        params={"query": SUBMIT_MUTATION, "variables": json.dumps({"job": HELLO})},
        timeout=30,
    )
    assert answer.status_code == 405
    assert answer.json()["errors"][0]["extensions"]["type"] == "validation"


MODULE: dict[str, Any] = {
    "name": "greeter",
    "description": "says hello",
    "minimumResources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 128, "gpus": 0},
    "inputs": [{"key": "WHO", "description": "whom to greet", "default": "world"}],
    "outputs": [{"key": "GREETING", "description": "what was said"}],
    "steps": [{"name": "greet", "run": {"command": "echo hello $WHO"}}],
}
VALIDATE = "mutation Validate($module: Module!) { validate(module: $module) }"


def test_validate_answers_valid_or_the_problems_as_data(service: SbatchProcess) -> None:
    assert service.graphql(VALIDATE, {"module": MODULE}) == {"data": {"validate": "valid"}}
    bad = changed(["inputs", 0, "key"], "PATH", MODULE)
    bad["steps"][0]["run"]["workDir"] = "relative"
    answer = service.graphql(VALIDATE, {"module": bad})
    assert "errors" not in answer, answer
    assert answer["data"]["validate"] == (
        "inputs[0].key: environment variable PATH may not be set; steps[0].run.workDir: workDir must be an absolute path"
    )
    error = the_refusal(service.graphql(VALIDATE, {"module": without(["name"], MODULE)}))
    assert error["extensions"]["field"] == "name"


# Inputs on which `grid-sbatch render` and GraphQL `submit` must agree, good and bad.
CORPUS: dict[str, object] = {
    "hello": HELLO,
    "loop": LOOP,
    "train": TRAIN,
    "gpus-left-out": without(["resources", "gpus"]),
    "parallel-left-out": changed(
        ["steps", 0], {"for": {"range": {"begin": 1, "end": 3}, "steps": HELLO["steps"]}}
    ),
    "list-of-one": changed(["steps"], HELLO["steps"][0]),
    "nulls-for-later-fields": {**HELLO, "enableLogging": None, "input": None, "virtualNetworks": []},
    "launch": changed(
        ["steps"],
        [
            {"launch": {"handleName": "srv", "steps": HELLO["steps"]}},
            {"dependsOn": ["srv"], "run": {"command": "x"}},
        ],
    ),
    "string-for-int": changed(["resources", "tasks"], "1"),
    "float": changed(["resources", "tasks"], 1.5),
    "integral-float": changed(["resources", "tasks"], 2.0),
    "beyond-32-bits": changed(["resources", "memPerCpu"], 2**32),
    "missing-command": changed(["steps", 0, "run"], {"shell": "/bin/bash"}),
    "unknown-fields": changed(["steps", 0, "run", "colour"], "red", changed(["size"], 1)),
    "null-for-required": changed(["steps", 0, "run", "command"], None),
    "mount-home-on-run": changed(["steps", 0, "run", "mountHome"], True),
    "gpus-in-step": changed(["steps", 0, "run", "resources"], {"gpus": 1}),
    "network-on-step": changed(["steps", 0, "network"], "slirp4netns"),
    "module": changed(["steps", 0, "use"], {"source": SOURCE + "@v1"}),
    "module-missing": changed(["steps", 0, "use"], {"source": SOURCE + "@v9"}),
    "module-too-heavy": changed(["steps", 0, "use"], {"source": SOURCE + "/heavy@v1"}),
    "use": changed(["steps", 0, "use"], {"source": "github.com/org/module"}),
    "registry-with-port": changed(
        ["steps", 0, "run", "container"], {"image": "x", "registry": "localhost:5000"}
    ),
    "input-mode": changed(["inputMode"], 448),
    "bad-image": changed(["steps", 0, "run", "container"], {"image": "Ubuntu"}),
    "zero-tasks": changed(["resources", "tasks"], 0),
    "no-kind": changed(["steps", 0], {"name": "empty"}),
    "too-deep": nested(150),
    "list": [1, 2],
    "string": "hello",
    "null": None,
}


def cli_verdict(service: SbatchProcess, workflow: object, path: Path) -> list[str] | None:
    """None when `grid-sbatch render` accepts the workflow, else its error lines."""
    path.write_text(json.dumps(workflow))
    rendered = subprocess.run(
        [GRID_SBATCH, "render", str(path)], capture_output=True, text=True, env=service.env, check=False
    )
    if rendered.returncode == 0:
        assert rendered.stdout.startswith("#!")
        return None
    assert rendered.returncode == 2, rendered.stderr
    return rendered.stderr.splitlines()


def graphql_verdict(service: SbatchProcess, workflow: object) -> list[str] | None:
    """None when GraphQL `submit` stores the workflow, else its problems in the CLI's form."""
    body = service.graphql(SUBMIT_MUTATION, {"job": workflow})
    if not body.get("errors"):
        assert isinstance(body["data"]["submit"], str)
        return None
    error = the_refusal(body)
    return [f"{p['field'] or '<workflow>'}: {p['message']}" for p in error["extensions"]["errors"]]


@pytest.mark.parametrize("name", list(CORPUS))
def test_cli_and_graphql_give_the_same_verdict(service: SbatchProcess, tmp_path: Path, name: str) -> None:
    workflow = CORPUS[name]
    expected_good = name in {
        "hello",
        "loop",
        "train",
        "gpus-left-out",
        "parallel-left-out",
        "list-of-one",
        "nulls-for-later-fields",
        "launch",
        "integral-float",
        "mount-home-on-run",
        "gpus-in-step",
        "network-on-step",
        "module",
        "input-mode",
        "no-kind",
    }
    from_cli = cli_verdict(service, workflow, tmp_path / "workflow.json")
    from_graphql = graphql_verdict(service, workflow)
    assert from_cli == from_graphql
    assert (from_cli is None) == expected_good, from_cli
