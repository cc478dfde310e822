"""Validation of the WORKFLOW.md subset: every refusal names the offending field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sbatch_service.loader import load_workflow, parse_workflow_text
from sbatch_service.models import Limits, WorkflowError, validate_workflow

BASE: dict[str, Any] = {
    "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 1024, "gpus": 0},
    "steps": [{"name": "hello", "run": {"command": "echo hello"}}],
}


def with_changes(path: list[str | int], value: object) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def refused_fields(data: object, limits: Limits | None = None) -> dict[str, str]:
    with pytest.raises(WorkflowError) as caught:
        validate_workflow(data, limits)
    return {error.field: error.message for error in caught.value.errors}


def test_the_base_workflow_is_valid() -> None:
    job = validate_workflow(BASE)
    assert job.resources.tasks == 1
    assert job.steps[0].run is not None and job.steps[0].run.command == "echo hello"


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        (["resources", "tasks"], 0, "resources.tasks", "greater than or equal to 1"),
        (["resources", "cpusPerTask"], "2", "resources.cpusPerTask", "Int cannot represent non-integer"),
        (["resources", "memPerCpu"], True, "resources.memPerCpu", "Int cannot represent non-integer"),
        (["resources", "memPerCpu"], 1.5, "resources.memPerCpu", "Int cannot represent non-integer"),
        (["resources", "tasks"], 2**31, "resources.tasks", "non 32-bit signed integer"),
        (["resources", "tasks"], None, "resources.tasks", "non-null type 'Int!' not to be null"),
        (["resources"], None, "resources", "non-null type 'JobResources!' not to be null"),
        (["resources", "gpus"], -1, "resources.gpus", "greater than or equal to 0"),
        (["resources", "cores"], 4, "resources.cores", "is not defined by type 'JobResources'"),
        (["env"], [{"key": "1BAD", "value": "x"}], "env[0].key", "invalid environment variable name"),
        (["env"], [{"key": "PATH", "value": "/x"}], "env[0].key", "may not be set"),
        (["env"], [{"key": "LD_LIBRARY_PATH", "value": "/x"}], "env[0].key", "may not be set"),
        (["env"], [{"key": "DEEPSQUARE_ENV", "value": "/x"}], "env[0].key", "may not be set"),
        (["env"], [{"key": "A-B", "value": "x"}], "env[0].key", "invalid environment variable name"),
        (["enableLogging"], True, "enableLogging", "not supported yet"),
        (["input"], {"http": {"url": "x"}}, "input", "not supported yet"),
        (
            ["output"],
            {
                "s3": {
                    "region": "r",
                    "bucketUrl": "s3://b",
                    "path": "/",
                    "accessKeyId": "a",
                    "secretAccessKey": "s",
                    "endpointUrl": "https://s3.example.org",
                }
            },
            "output",
            "not supported yet",
        ),
        (["output"], {"s3": {"region": "r"}}, "output.s3.bucketUrl", "of required type 'String!'"),
        (["inputMode"], 0o755, "inputMode", "not supported yet"),
        (["continuousOutputSync"], True, "continuousOutputSync", "not supported yet"),
        (
            ["virtualNetworks"],
            [{"name": "n", "gatewayAddress": "10.0.0.1/24"}],
            "virtualNetworks",
            "not supported yet",
        ),
        (["virtualNetworks"], [{"name": "n"}], "virtualNetworks[0].gatewayAddress", "was not provided"),
        (["unknown"], 1, "unknown", "is not defined by type 'Job'"),
        (["steps"], [], "steps", "at least 1 item"),
        (["steps", 0, "colour"], "red", "steps[0].colour", "is not defined by type 'Step'"),
        (["steps", 0, "run", "command"], 1, "steps[0].run.command", "String cannot represent"),
        (["steps", 0, "run", "mountHome"], True, "steps[0].run.mountHome", "not defined by type 'StepRun'"),
        (["steps", 0, "run", "shell"], "/bin/zsh", "steps[0].run.shell", "/bin/sh"),
        (["steps", 0, "run", "workDir"], "relative", "steps[0].run.workDir", "absolute"),
        (["steps", 0, "run", "mpi"], "openmpi", "steps[0].run.mpi", "pmix_v4"),
        (["steps", 0, "run", "resources"], {"tasks": 0}, "steps[0].run.resources.tasks", "greater than"),
        (
            ["steps", 0, "run", "resources"],
            {"gpus": 1},
            "steps[0].run.resources.gpus",
            "is not defined by type 'StepRunResources'",
        ),
        (
            ["steps", 0, "run", "container"],
            {"image": "Ubuntu"},
            "steps[0].run.container.image",
            "invalid image",
        ),
        (["steps", 0, "run", "container"], {"image": "a b"}, "steps[0].run.container.image", "invalid image"),
        (
            ["steps", 0, "run", "container"],
            {"image": "ubuntu:$(id)"},
            "steps[0].run.container.image",
            "invalid image",
        ),
        (["steps", 0, "run", "container"], {"image": "/a/../b.sqsh"}, "steps[0].run.container.image", "path"),
        (["steps", 0, "run", "container"], {"image": "/a/b.tar"}, "steps[0].run.container.image", "path"),
        (
            ["steps", 0, "run", "container"],
            {"image": "/a/b.sif"},
            "steps[0].run.container",
            "needs apptainer",
        ),
        (
            ["steps", 0, "run", "container"],
            {"image": "x", "registry": "evil host"},
            "steps[0].run.container.registry",
            "invalid registry",
        ),
        (
            ["steps", 0, "run", "container"],
            {"image": "x", "username": "u"},
            "steps[0].run.container",
            "go together",
        ),
        (
            ["steps", 0, "run", "container"],
            {"image": "x", "username": "u", "password": "p w"},
            "steps[0].run.container.password",
            "without whitespace",
        ),
        (["steps", 0, "run", "shell"], "ENTRYPOINT", "steps[0].run", "needs a container"),
        (["steps", 0, "run", "network"], "slirp4netns", "steps[0].run.network", "not supported yet"),
        (["steps", 0, "run", "mapUid"], 0, "steps[0].run.mapUid", "not supported yet"),
        (
            ["steps", 0, "run", "customNetworkInterfaces"],
            [{"vnet": {"name": "n", "address": "10.0.0.2/24"}}],
            "steps[0].run.customNetworkInterfaces",
            "not supported yet",
        ),
        (
            ["steps", 0, "run", "container"],
            {"image": "x", "mounts": [{"hostDir": "/a", "containerDir": "/b", "options": "ro"}]},
            "steps[0].run.container.mounts",
            "not supported yet",
        ),
        (
            ["steps", 0, "run", "container"],
            {"image": "x", "deepsquareHosted": True},
            "steps[0].run.container.deepsquareHosted",
            "not supported yet",
        ),
        (["steps", 0, "use"], {"source": "x"}, "steps[0].use", "not supported yet"),
        (["steps", 0, "use"], {"args": []}, "steps[0].use.source", "was not provided"),
        (["steps", 0, "steps"], [{"run": {"command": "x"}}], "steps[0]", "exactly one of"),
        (["steps", 0], {"name": "empty"}, "steps[0]", "exactly one of"),
        (
            ["steps", 0],
            {"for": {"items": ["a"], "range": {"begin": 1, "end": 2}, "steps": BASE["steps"]}},
            "steps[0].for",
            "exactly one of items and range",
        ),
        (["steps", 0], {"for": {"items": [], "steps": BASE["steps"]}}, "steps[0].for", "may not be empty"),
        (
            ["steps", 0],
            {"for": {"range": {"begin": 1, "end": 5, "increment": 0}, "steps": BASE["steps"]}},
            "steps[0].for.range",
            "may not be 0",
        ),
        (
            ["steps", 0],
            {"for": {"range": {"begin": 1, "end": 5, "increment": -1}, "steps": BASE["steps"]}},
            "steps[0].for.range",
            "never reaches",
        ),
        (
            ["steps", 0],
            {"launch": {"handleName": "a b", "steps": BASE["steps"]}},
            "steps[0].launch.handleName",
            "invalid handleName",
        ),
        (
            ["steps", 0],
            {"launch": {"signalOnParentStepExit": 99, "steps": BASE["steps"]}},
            "steps[0].launch.signalOnParentStepExit",
            "less than or equal",
        ),
        (["steps", 0, "dependsOn"], ["nobody"], "steps[0].dependsOn[0]", "no step launched before"),
        (["steps", 0, "run", "command"], "echo \x00", "steps[0].run.command", "NUL"),
    ],
)
def test_refusals_name_the_field(path: list[str | int], value: object, field: str, message: str) -> None:
    errors = refused_fields(with_changes(path, value))
    assert field in errors, errors
    assert message in errors[field]


def test_depends_on_a_later_launch_is_refused() -> None:
    data = copy.deepcopy(BASE)
    data["steps"] = [
        {"name": "early", "dependsOn": ["srv"], "run": {"command": "x"}},
        {"name": "srv", "launch": {"handleName": "srv", "steps": BASE["steps"]}},
    ]
    assert "steps[0].dependsOn[0]" in refused_fields(data)


def test_duplicate_handles_are_refused() -> None:
    launch = {"launch": {"handleName": "srv", "steps": BASE["steps"]}}
    data = with_changes(["steps"], [launch, launch])
    assert "already used" in refused_fields(data)["steps[1].launch.handleName"]


def test_oversized_workflows_are_refused() -> None:
    limits = Limits(max_workflow_bytes=1000)
    errors = refused_fields(with_changes(["steps", 0, "run", "command"], "x" * 2000), limits)
    assert "more than 1000" in errors[""]
    with pytest.raises(WorkflowError, match="more than 1000"):
        parse_workflow_text("a: " + "x" * 2000, limits)


def test_long_strings_steps_depth_and_fan_out_limits() -> None:
    limits = Limits(max_string_length=10, max_steps=3, max_depth=2, max_parallel_iterations=2)
    assert (
        "longer than 10"
        in refused_fields(with_changes(["env"], [{"key": "A", "value": "y" * 11}]), limits)["env[0].value"]
    )
    many = with_changes(["steps"], [BASE["steps"][0]] * 4)
    assert "more than 3 steps" in refused_fields(many, limits)["steps"]
    deep = with_changes(["steps"], [{"steps": [{"steps": [{"steps": BASE["steps"]}]}]}])
    assert "nested deeper" in refused_fields(deep, limits)["steps[0].steps[0].steps"]
    wide = with_changes(
        ["steps"], [{"for": {"parallel": True, "items": ["a", "b", "c"], "steps": BASE["steps"]}}]
    )
    assert "at most 2 iterations" in refused_fields(wide, limits)["steps[0].for"]


def test_yaml_aliases_and_bad_documents_are_refused() -> None:
    with pytest.raises(WorkflowError, match="aliases"):
        parse_workflow_text("a: &x [1]\nb: *x\n")
    with pytest.raises(WorkflowError, match="invalid YAML"):
        parse_workflow_text("a: [\n")
    with pytest.raises(WorkflowError, match="invalid JSON"):
        parse_workflow_text('{"a": }')
    with pytest.raises(WorkflowError, match="Expected value of type 'Job' to be an object"):
        load_workflow("- 1\n- 2\n")


def test_null_for_later_fields_is_accepted() -> None:
    job = validate_workflow({**BASE, "enableLogging": None, "input": None, "virtualNetworks": []})
    assert job.enable_logging is None
