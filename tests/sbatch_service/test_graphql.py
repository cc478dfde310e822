"""The customer GraphQL API of a real `grid-sbatch serve`, called the way DeepSquare clients call it."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fixtures.sbatch import SUBMIT_MUTATION, SbatchProcess, start_sbatch_service

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
    # GraphQL never reads the chain: any well-formed address will do here.
    process = start_sbatch_service(
        tmp_path_factory.mktemp("sbatch-graphql"),
        rpc_url="http://127.0.0.1:9",
        metascheduler_address="0x" + "11" * 20,
        extra_env={
            "GRID_SBATCH_STORAGE_ROOT": "/srv/grid-storage",
            "GRID_SBATCH_MAX_WORKFLOW_BYTES": "20000",
        },
    )
    try:
        yield process
    finally:
        process.stop()


def stored_script(service: SbatchProcess, key: str) -> str | None:
    with sqlite3.connect(f"file:{service.database}?mode=ro", uri=True) as db:
        row = db.execute("SELECT script FROM scripts WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def test_health_answers_ok(service: SbatchProcess) -> None:
    answer = requests.get(service.health_url, timeout=5)
    assert answer.status_code == 200
    assert answer.text == "ok"


@pytest.mark.parametrize(
    ("workflow", "expected"),
    [
        (HELLO, ["'/bin/sh' -c 'echo \"hello world\"'"]),
        (LOOP, ["enroot import", "'docker://registry-1.docker.io#library/ubuntu:22.04'", "--env 'FOO=bar'"]),
        (TRAIN, ["apptainer exec --contain", "--mpi='pmix_v4'", "--gpus='4'", "DEEPSQUARE_ERROR_CODE"]),
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
    assert "grid_storage_root='/srv/grid-storage'" in script
    for fragment in expected:
        assert fragment in script


def test_submit_with_an_inline_literal(service: SbatchProcess) -> None:
    query = (
        "mutation { submit(job: {resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 64, gpus: 0}, "
        'steps: [{name: "a", run: {command: "echo inline"}}]}) }'
    )
    body = service.graphql(query)
    assert "errors" not in body, body
    script = stored_script(service, body["data"]["submit"])
    assert script is not None and "'echo inline'" in script


def test_validation_errors_name_the_field(service: SbatchProcess) -> None:
    bad = {**HELLO, "steps": [{"name": "x", "run": {"command": "x", "container": {"image": "Bad Image"}}}]}
    body = service.graphql(SUBMIT_MUTATION, {"job": bad})
    assert body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"]["type"] == "validation"
    assert error["extensions"]["field"] == "steps[0].run.container.image"
    assert "invalid image name" in error["message"]


def test_every_problem_is_listed(service: SbatchProcess) -> None:
    bad = {"resources": {"tasks": 0, "cpusPerTask": 1, "memPerCpu": 1}, "steps": [{"run": {}}], "colour": 1}
    body = service.graphql(SUBMIT_MUTATION, {"job": bad})
    fields = {e["field"] for e in body["errors"][0]["extensions"]["errors"]}
    assert {"resources.tasks", "steps[0].run.command", "colour"} <= fields


def test_oversized_workflow_is_refused(service: SbatchProcess) -> None:
    big = {**HELLO, "steps": [{"name": "big", "run": {"command": "x" * 30_000}}]}
    body = service.graphql(SUBMIT_MUTATION, {"job": big})
    assert body["errors"][0]["extensions"]["type"] == "validation"
    assert "more than 20000" in body["errors"][0]["message"]
    huge = requests.post(service.graphql_url, data=b"{" + b" " * 200_000 + b"}", timeout=10)
    assert huge.status_code == 413


def test_missing_variable_is_a_graphql_error(service: SbatchProcess) -> None:
    body = service.graphql(SUBMIT_MUTATION, {})
    assert body["errors"] and "$job" in body["errors"][0]["message"]


def test_the_schema_declares_the_clients_mutation(service: SbatchProcess) -> None:
    body = service.graphql(
        '{ __type(name: "Mutation") { fields { name args { name type { kind ofType { name } } } } } }'
    )
    (submit,) = [f for f in body["data"]["__type"]["fields"] if f["name"] == "submit"]
    assert submit["args"] == [{"name": "job", "type": {"kind": "NON_NULL", "ofType": {"name": "Job"}}}]
