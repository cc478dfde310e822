"""Validation of the whole workflow language: the reference's rules, every refusal naming its field,
what the reference accepts accepted, and the three misplaced keys ignored with a warning."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from sbatch_service.loader import load_workflow, parse_workflow_text
from sbatch_service.models import Limits, WorkflowError, check_workflow, validate_workflow

BASE: dict[str, Any] = {
    "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 1024, "gpus": 0},
    "steps": [{"name": "hello", "run": {"command": "echo hello"}}],
}
S3: dict[str, Any] = {
    "region": "r",
    "bucketUrl": "s3://bucket",
    "path": "/data/",
    "accessKeyId": "a",
    "secretAccessKey": "s",
    "endpointUrl": "https://s3.example.org",
}
RUN: list[str | int] = ["steps", 0, "run"]


def with_changes(path: list[str | int], value: object, base: dict[str, Any] = BASE) -> dict[str, Any]:
    data = copy.deepcopy(base)
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def refused_fields(data: object, limits: Limits | None = None) -> dict[str, str]:
    with pytest.raises(WorkflowError) as caught:
        validate_workflow(data, limits)
    return {error.field: error.message for error in caught.value.errors}


def warnings_of(data: object) -> dict[str, str]:
    checked, _ = check_workflow(data)
    return {warning.field: warning.message for warning in checked.warnings}


def network_run(**fields: Any) -> dict[str, Any]:
    return with_changes(RUN, {"command": "x", "network": "slirp4netns", "mapUid": 0, **fields})


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
        (["resources", "tasks"], 2**31, "resources.tasks", "non 32-bit signed integer"),
        (["resources", "tasks"], None, "resources.tasks", "non-null type 'Int!' not to be null"),
        (["resources"], None, "resources", "non-null type 'JobResources!' not to be null"),
        (["resources", "gpus"], -1, "resources.gpus", "greater than or equal to 0"),
        (["resources", "colour"], 1, "resources.colour", "is not defined by type 'JobResources'"),
        (["env"], [{"key": "1BAD", "value": "x"}], "env[0].key", "invalid environment variable name"),
        (["env"], [{"key": "PATH", "value": "/x"}], "env[0].key", "may not be set"),
        (["env"], [{"key": "LD_LIBRARY_PATH", "value": "/x"}], "env[0].key", "may not be set"),
        (["env"], [{"key": "DEEPSQUARE_ENV", "value": "/x"}], "env[0].key", "may not be set"),
        (["env"], [{"key": "A-B", "value": "x"}], "env[0].key", "invalid environment variable name"),
        (["input"], {"http": {"url": "not a url"}}, "input.http.url", "is not a URL"),
        (["input"], {"http": {"url": "/relative/file.zip"}}, "input.http.url", "is not a URL"),
        (["input"], {"http": {"url": "https://a%0Ab:c@host/x"}}, "input.http.url", "control characters"),
        (["input"], {"s3": {**S3, "bucketUrl": "https://bucket"}}, "input.s3.bucketUrl", "s3://"),
        (["input"], {"s3": {**S3, "bucketUrl": "s3://bucket/"}}, "input.s3.bucketUrl", "trailing /"),
        (["input"], {"s3": {**S3, "path": "data/"}}, "input.s3.path", "must be an absolute path"),
        (["input"], {"s3": {**S3, "endpointUrl": "s3.example.org"}}, "input.s3.endpointUrl", "is not a URL"),
        (["output"], {"s3": {**S3, "secretAccessKey": "a\nb"}}, "output.s3.secretAccessKey", "newlines"),
        (["output"], {"s3": {"region": "r"}}, "output.s3.bucketUrl", "of required type 'String!'"),
        (["inputMode"], 512, "inputMode", "less than or equal to 511"),
        (["inputMode"], -1, "inputMode", "greater than or equal to 0"),
        (
            ["virtualNetworks"],
            [{"name": "n", "gatewayAddress": "10.0.0.1"}],
            "virtualNetworks[0].gatewayAddress",
            "CIDR",
        ),
        (["virtualNetworks"], [{"name": "n"}], "virtualNetworks[0].gatewayAddress", "was not provided"),
        (["unknown"], 1, "unknown", "is not defined by type 'Job'"),
        (["steps", 0, "colour"], "red", "steps[0].colour", "is not defined by type 'Step'"),
        ([*RUN, "command"], 1, "steps[0].run.command", "String cannot represent"),
        ([*RUN, "shell"], "/bin/zsh", "steps[0].run.shell", "/bin/sh"),
        ([*RUN, "workDir"], "relative", "steps[0].run.workDir", "absolute"),
        ([*RUN, "mpi"], "openmpi", "steps[0].run.mpi", "pmix_v4"),
        ([*RUN, "network"], "bridge", "steps[0].run.network", "slirp4netns"),
        ([*RUN, "dns"], ["1.1.1"], "steps[0].run.dns", "is not an IP address"),
        ([*RUN, "dns"], ["fe80::1%eth0"], "steps[0].run.dns", "is not an IP address"),
        ([*RUN, "mapUid"], -1, "steps[0].run.mapUid", "greater than or equal to 0"),
        ([*RUN, "resources"], {"tasks": 0}, "steps[0].run.resources.tasks", "greater than"),
        ([*RUN, "resources"], {"gpusPerTask": -1}, "steps[0].run.resources.gpusPerTask", "greater than"),
        ([*RUN, "container"], {"image": "Ubuntu"}, "steps[0].run.container.image", "invalid image"),
        ([*RUN, "container"], {"image": "a b"}, "steps[0].run.container.image", "invalid image"),
        ([*RUN, "container"], {"image": "ubuntu:$(id)"}, "steps[0].run.container.image", "invalid image"),
        ([*RUN, "container"], {"image": "ubuntu@sha256:ab"}, "steps[0].run.container.image", "invalid image"),
        (
            [*RUN, "container"],
            {"image": "x", "registry": "evil host"},
            "steps[0].run.container.registry",
            "RFC 952",
        ),
        (
            [*RUN, "container"],
            {"image": "x", "registry": "localhost:5000"},
            "steps[0].run.container.registry",
            "port",
        ),
        (
            [*RUN, "container"],
            {"image": "x", "registry": "10.0.0.1"},
            "steps[0].run.container.registry",
            "RFC 952",
        ),
        (
            [*RUN, "container"],
            {"image": "x", "registry": "1registry.io"},
            "steps[0].run.container.registry",
            "RFC",
        ),
        ([*RUN, "container"], {"image": "x", "username": "u"}, "steps[0].run.container", "go together"),
        (
            [*RUN, "container"],
            {"image": "x", "username": "u", "password": "p w"},
            "steps[0].run.container.password",
            "without whitespace",
        ),
        (
            [*RUN, "container"],
            {"image": "x", "mounts": [{"hostDir": "/a", "containerDir": "/b", "options": "rx"}]},
            "steps[0].run.container.mounts[0].options",
            "'rw'",
        ),
        (
            [*RUN, "container"],
            {"image": "x", "mounts": [{"hostDir": "/a/../etc", "containerDir": "/b", "options": "ro"}]},
            "steps[0].run.container.mounts[0].hostDir",
            "without '..'",
        ),
        (
            [*RUN, "container"],
            {"image": "x", "mounts": [{"hostDir": "/a", "containerDir": "/b,/c:rw", "options": "ro"}]},
            "steps[0].run.container.mounts[0].containerDir",
            "letters, digits",
        ),
        (
            [*RUN, "customNetworkInterfaces"],
            [{"wireguard": {"privateKey": "k\nPostUp = touch /tmp/x", "address": ["10.0.0.2/24"]}}],
            "steps[0].run.customNetworkInterfaces[0].wireguard.privateKey",
            "newlines",
        ),
        (
            [*RUN, "customNetworkInterfaces"],
            [{"wireguard": {"privateKey": "k", "address": ["10.0.0.2"]}}],
            "steps[0].run.customNetworkInterfaces[0].wireguard.address",
            "CIDR",
        ),
        (
            [*RUN, "customNetworkInterfaces"],
            [{"wireguard": {"privateKey": "k", "peers": [{"publicKey": "p", "endpoint": "[::1]:51820"}]}}],
            "steps[0].run.customNetworkInterfaces[0].wireguard.peers[0].endpoint",
            "host:port",
        ),
        (
            [*RUN, "customNetworkInterfaces"],
            [{"wireguard": {"privateKey": "k", "peers": [{"publicKey": "p", "endpoint": "host:70000"}]}}],
            "steps[0].run.customNetworkInterfaces[0].wireguard.peers[0].endpoint",
            "host:port",
        ),
        (
            [*RUN, "customNetworkInterfaces"],
            [{"bore": {"boreAddress": "bore.example.org", "targetPort": 80}}],
            "steps[0].run.customNetworkInterfaces[0].bore.boreAddress",
            "host:port",
        ),
        (
            [*RUN, "customNetworkInterfaces"],
            [{"bore": {"address": "localhost", "port": 2200, "targetPort": 80}}],
            "steps[0].run.customNetworkInterfaces[0].bore.address",
            "an IP or a domain name",
        ),
        (
            [*RUN, "customNetworkInterfaces"],
            [{"bore": {"boreAddress": "b.example.org:1", "targetPort": 0}}],
            "steps[0].run.customNetworkInterfaces[0].bore.targetPort",
            "greater than or equal to 1",
        ),
        (
            [*RUN, "customNetworkInterfaces"],
            [{"vnet": {"name": "nowhere", "address": "10.0.0.2/24"}}],
            "steps[0].run.customNetworkInterfaces[0].vnet.name",
            "missing virtual network: nowhere",
        ),
        (["steps", 0, "use"], {"source": "github.com/org"}, "steps[0].use.source", "<host>/<owner>/<repo>"),
        (["steps", 0, "use"], {"source": "github.com/org/repo@-x"}, "steps[0].use.source", "module ref"),
        (["steps", 0, "use"], {"source": "github.com/org/../x"}, "steps[0].use.source", "letters, digits"),
        (
            ["steps", 0, "use"],
            {"source": "github.com/o/r", "exportEnvAs": "PATH"},
            "steps[0].use.exportEnvAs",
            "may not",
        ),
        (["steps", 0, "use"], {"args": []}, "steps[0].use.source", "was not provided"),
        (
            ["steps", 0],
            {"launch": {"handleName": "a-b", "steps": BASE["steps"]}},
            "steps[0].launch.handleName",
            "invalid handleName",
        ),
        (
            ["steps", 0],
            {"launch": {"signalOnParentStepExit": 99, "steps": BASE["steps"]}},
            "steps[0].launch.signalOnParentStepExit",
            "less than or equal",
        ),
        (["steps", 0, "dependsOn"], ["a-b"], "steps[0].dependsOn", "is not a handle"),
        (["steps", 0, "dependsOn"], ["nobody"], "steps[0].dependsOn[0]", "no step launched before"),
        ([*RUN, "command"], "echo \x00", "steps[0].run.command", "NUL"),
        ([*RUN, "env"], [{"key": "A"}], "steps[0].run.env[0].value", "was not provided"),
    ],
)
def test_refusals_name_the_field(path: list[str | int], value: object, field: str, message: str) -> None:
    errors = refused_fields(with_changes(path, value))
    assert field in errors, errors
    assert message in errors[field]


ACCEPTED: dict[str, dict[str, Any]] = {
    "no steps at all": with_changes(["steps"], []),
    "a step with only a name": with_changes(["steps", 0], {"name": "empty"}),
    "an empty group": with_changes(["steps", 0], {"name": "empty", "steps": []}),
    "catch and finally with only names": with_changes(
        ["steps", 0],
        {"name": "s", "run": {"command": "exit 1"}, "catch": [{"name": "c"}], "finally": [{"name": "f"}]},
    ),
    "a loop without items or range": with_changes(["steps", 0], {"for": {"steps": BASE["steps"]}}),
    "a range with increment 0": with_changes(
        ["steps", 0], {"for": {"range": {"begin": 1, "end": 3, "increment": 0}, "steps": BASE["steps"]}}
    ),
    "a range that never reaches its end": with_changes(
        ["steps", 0], {"for": {"range": {"begin": 1, "end": 5, "increment": -1}, "steps": BASE["steps"]}}
    ),
    "ENTRYPOINT on the host": with_changes([*RUN, "shell"], "ENTRYPOINT"),
    "ENTRYPOINT and workDir on Enroot": with_changes(
        RUN, {"command": "--help", "shell": "ENTRYPOINT", "workDir": "/app", "container": {"image": "x"}}
    ),
    "an empty command in a container": with_changes(RUN, {"command": "", "container": {"image": "x"}}),
    "an image in the job folder with any extension": with_changes(
        RUN, {"command": "x", "container": {"image": "/input/../model.img"}}
    ),
    "a sif image on Enroot": with_changes(RUN, {"command": "x", "container": {"image": "/input/tool.sif"}}),
    "credentials with a local image": with_changes(
        RUN, {"command": "x", "container": {"image": "/x.sqsh", "username": "u", "password": "p"}}
    ),
    "a registry host name": with_changes(
        RUN, {"command": "x", "container": {"image": "library/x", "registry": "registry-1.deepsquare.run"}}
    ),
    "an empty registry": with_changes(RUN, {"command": "x", "container": {"image": "x", "registry": ""}}),
    "hosted images": with_changes(
        RUN, {"command": "x", "container": {"image": "library/sd:latest", "deepsquareHosted": True}}
    ),
    "mounts with an empty option": with_changes(
        RUN,
        {
            "command": "x",
            "container": {
                "image": "x",
                "mounts": [{"hostDir": "/data/m", "containerDir": "/m", "options": ""}],
            },
        },
    ),
    "mapped ids, 0 included": with_changes(RUN, {"command": "id", "mapUid": 0, "mapGid": 0}),
    "every network mode": with_changes(
        ["steps"], [{"run": {"command": "x", "network": mode}} for mode in ("host", "slirp4netns", "pasta")]
    ),
    "dns beside host networking": with_changes(RUN, {"command": "x", "dns": ["1.1.1.1", "2606:4700::1111"]}),
    "placeholder WireGuard keys": network_run(
        customNetworkInterfaces=[
            {
                "wireguard": {
                    "privateKey": "<REDACTED>",
                    "address": ["10.0.0.4/24", "fd00:1234:5678::4/128"],
                    "peers": [
                        {
                            "publicKey": "<REDACTED>",
                            "allowedIPs": ["0.0.0.0/0"],
                            "persistentKeepalive": 0,
                            "endpoint": "10.0.0.1:1",
                        }
                    ],
                }
            }
        ]
    ),
    "both forms of bore": network_run(
        customNetworkInterfaces=[
            {"bore": {"address": "bore.deepsquare.run", "port": 2200, "targetPort": 8080}},
            {"bore": {"boreAddress": "bore.deepsquare.run:2200", "targetPort": 2200, "secret": "x.y.z"}},
            {"bore": {"address": "194.182.186.85", "targetPort": 25565}},
        ]
    ),
    "a peer reused by two steps": {
        **BASE,
        "virtualNetworks": [{"name": "network", "gatewayAddress": "10.0.0.1/24"}],
        "steps": [
            {
                "run": {
                    "command": "x",
                    "network": "slirp4netns",
                    "mapUid": 0,
                    "customNetworkInterfaces": [{"vnet": {"name": "network", "address": "10.0.0.3/24"}}],
                }
            },
        ]
        * 2,
    },
    "http and s3 data": {
        **BASE,
        "input": {"http": {"url": "https://user:pass@transfer.sh/pEfPqI/DPSBeta.zip"}},
        "inputMode": 493,
        "output": {"s3": {**S3, "deleteSync": True}},
        "continuousOutputSync": True,
    },
    "inputMode 0 without input": {**BASE, "inputMode": 0},
    "both transports (http wins)": {**BASE, "output": {"http": {"url": "ftp://host/x"}, "s3": S3}},
    "logging asked for": {**BASE, "enableLogging": True},
    "nulls for optional fields": {
        **BASE,
        "enableLogging": None,
        "input": None,
        "virtualNetworks": None,
        "env": None,
    },
    "an ENTRYPOINT command in old order": with_changes(
        RUN, {"command": "nginx -g 'daemon off;'", "shell": "ENTRYPOINT", "container": {"image": "nginx"}}
    ),
    "handles in any case": with_changes(
        ["steps"],
        [
            {"launch": {"handleName": "Task1", "steps": BASE["steps"]}},
            {"dependsOn": ["TASK1"], "run": {"command": "x"}},
            {"dependsOn": ["task1"], "run": {"command": "x"}},
        ],
    ),
    "a launch in a group awaited after the group": with_changes(
        ["steps"],
        [
            {"steps": [{"launch": {"handleName": "srv", "steps": BASE["steps"]}}]},
            {
                "for": {
                    "items": ["a"],
                    "steps": [{"launch": {"handleName": "inloop", "steps": BASE["steps"]}}],
                }
            },
            {"dependsOn": ["srv", "inloop"], "run": {"command": "x"}},
        ],
    ),
    "a launch awaited from a catch": with_changes(
        ["steps"],
        [
            {"launch": {"handleName": "srv", "steps": BASE["steps"]}},
            {"run": {"command": "exit 1"}, "catch": [{"dependsOn": ["srv"], "run": {"command": "x"}}]},
        ],
    ),
    "module args of any name": with_changes(
        ["steps", 0],
        {"use": {"source": "github.com/org/repo@v1", "args": [{"key": "not-a-name", "value": "x"}]}},
    ),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_what_the_reference_accepts_is_accepted(name: str) -> None:
    validate_workflow(ACCEPTED[name])


@pytest.mark.parametrize(
    ("steps", "field"),
    [
        (
            [
                {"run": {"command": "x"}, "catch": [{"launch": {"handleName": "h", "steps": BASE["steps"]}}]},
                {"dependsOn": ["h"], "run": {"command": "x"}},
            ],
            "steps[1].dependsOn[0]",
        ),
        (
            [
                {
                    "for": {
                        "parallel": True,
                        "items": ["a"],
                        "steps": [{"launch": {"handleName": "h", "steps": []}}],
                    }
                },
                {"dependsOn": ["h"], "run": {"command": "x"}},
            ],
            "steps[1].dependsOn[0]",
        ),
        (
            [
                {"launch": {"steps": [{"launch": {"handleName": "h", "steps": []}}]}},
                {"dependsOn": ["h"], "run": {"command": "x"}},
            ],
            "steps[1].dependsOn[0]",
        ),
        (
            [
                {"dependsOn": ["h"], "run": {"command": "x"}},
                {"launch": {"handleName": "h", "steps": []}},
            ],
            "steps[0].dependsOn[0]",
        ),
    ],
    ids=[
        "launched-in-a-catch",
        "launched-in-a-parallel-loop",
        "launched-in-another-launch",
        "launched-later",
    ],
)
def test_a_handle_outside_the_shell_that_launched_it_is_refused(steps: list[Any], field: str) -> None:
    assert "no step launched before" in refused_fields(with_changes(["steps"], steps))[field]


def test_the_three_misplaced_keys_are_ignored_with_a_warning() -> None:
    step = {
        "name": "s",
        "network": "slirp4netns",
        "run": {"command": "x", "mountHome": True, "resources": {"gpus": 1}},
    }
    data = with_changes(["steps"], [step, {"for": {"items": ["a"], "steps": [step]}, "catch": [step]}])
    checked, _ = check_workflow(data)
    assert {w.field for w in checked.warnings} == {
        "steps[0].network",
        "steps[0].run.mountHome",
        "steps[0].run.resources.gpus",
        "steps[1].for.steps[0].network",
        "steps[1].for.steps[0].run.mountHome",
        "steps[1].for.steps[0].run.resources.gpus",
        "steps[1].catch[0].network",
        "steps[1].catch[0].run.mountHome",
        "steps[1].catch[0].run.resources.gpus",
    }
    run = checked.job.steps[0].run
    assert run is not None and run.network.value == "host" and run.resources.gpus_per_task == 0
    assert all("ignored" in w.message for w in checked.warnings)
    assert data["steps"][0]["network"] == "slirp4netns", "the caller's data is not modified"


def test_the_old_job_level_gpus_per_task_is_ignored_with_a_warning() -> None:
    """Published workflows of the SDK's early days carry resources.gpusPerTask at the job's level."""
    data = with_changes(["resources", "gpusPerTask"], 1)
    checked, _ = check_workflow(data)
    (warning,) = checked.warnings
    assert warning.field == "resources.gpusPerTask" and "resources.gpus" in warning.message
    assert checked.job.resources.gpus == data["resources"].get("gpus", 0)


def test_other_unknown_keys_stay_refused_beside_misplaced_ones() -> None:
    step = {
        "name": "s",
        "network": "pasta",
        "colour": "red",
        "run": {"command": "x", "mountHome": True, "x11": True},
    }
    assert refused_fields(with_changes(["steps"], [step])) == {
        "steps[0].colour": "Field 'colour' is not defined by type 'Step'.",
        "steps[0].run.x11": "Field 'x11' is not defined by type 'StepRun'.",
    }


def test_what_the_reference_ignores_is_reported() -> None:
    several = with_changes(["steps", 0], {"run": {"command": "x"}, "for": {"items": ["a"], "steps": []}})
    assert "its run runs, its for is ignored" in warnings_of(several)["steps[0]"]
    both = with_changes(["steps", 0], {"for": {"items": ["a"], "range": {"begin": 1, "end": 2}, "steps": []}})
    assert warnings_of(both)["steps[0].for.items"] == "ignored: range wins over items"
    twice = with_changes(
        ["steps"],
        [{"launch": {"handleName": "srv", "steps": []}}, {"launch": {"handleName": "SRV", "steps": []}}],
    )
    assert "dependsOn now waits for this launch" in warnings_of(twice)["steps[1].launch.handleName"]


def test_virtual_network_addresses_are_checked() -> None:
    def vnet_job(address: str) -> dict[str, Any]:
        return {
            **network_run(customNetworkInterfaces=[{"vnet": {"name": "n", "address": address}}]),
            "virtualNetworks": [{"name": "n", "gatewayAddress": "10.0.0.1/24"}],
        }

    field = "steps[0].run.customNetworkInterfaces[0].vnet.address"
    assert "not inside the network 10.0.0.0/24" in refused_fields(vnet_job("10.1.0.2/24"))[field]
    assert "not inside" in refused_fields(vnet_job("fd00::2/64"))[field]
    assert "the gateway's own address" in refused_fields(vnet_job("10.0.0.1/24"))[field]
    twice = {
        **vnet_job("10.0.0.2/24"),
        "virtualNetworks": [{"name": "n", "gatewayAddress": "10.0.0.1/24"}] * 2,
    }
    assert "declared twice" in refused_fields(twice)["virtualNetworks[1].name"]


def test_oversized_workflows_are_refused() -> None:
    limits = Limits(max_workflow_bytes=1000)
    errors = refused_fields(with_changes([*RUN, "command"], "x" * 2000), limits)
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
    ranged = with_changes(
        ["steps"], [{"for": {"parallel": True, "range": {"begin": 1, "end": 9, "increment": 4}, "steps": []}}]
    )
    assert "at most 2 iterations" in refused_fields(ranged, limits)["steps[0].for"]


def test_yaml_aliases_and_bad_documents_are_refused() -> None:
    with pytest.raises(WorkflowError, match="aliases"):
        parse_workflow_text("a: &x [1]\nb: *x\n")
    with pytest.raises(WorkflowError, match="invalid YAML"):
        parse_workflow_text("a: [\n")
    with pytest.raises(WorkflowError, match="invalid JSON"):
        parse_workflow_text('{"a": }')
    with pytest.raises(WorkflowError, match="Expected value of type 'Job' to be an object"):
        load_workflow("- 1\n- 2\n")


def test_a_module_without_a_fetcher_is_refused_by_name() -> None:
    data = with_changes(["steps", 0], {"use": {"source": "github.com/org/repo"}})
    with pytest.raises(WorkflowError) as caught:
        load_workflow(json.dumps(data))
    assert [(e.field, e.message) for e in caught.value.errors] == [
        (
            "steps[0].use.source",
            "cannot fetch module github.com/org/repo: this service does not fetch modules",
        )
    ]
