"""Whether this provider takes a job: fit on the partition's nodes, GPUs, refused customers and images.

Image rules are checked against scripts rendered by the real sbatch service renderer (and its golden
files), so the `docker://` forms are the ones the supervisor receives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sbatch_service.loader import load_workflow
from sbatch_service.names import SeededNames
from sbatch_service.renderer import RenderOptions, render
from supervisor.core.policy import Node, Resources, images_in_script, refusal_reason

GOLDEN = Path(__file__).resolve().parents[1] / "sbatch_service" / "golden"
CUSTOMER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
OTHER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
CLUSTER = [Node(cpus=8, memory_mb=16_000, gpus=0)]
SMALL = Resources(ntasks=1, cpus_per_task=1, mem_per_cpu_mb=1024, gpus=0)


def first_fit(resources: Resources, nodes: list[Node]) -> bool:
    """Place the tasks one by one on the first node with room left (optimal for identical tasks)."""
    if min(resources.ntasks, resources.cpus_per_task, resources.mem_per_cpu_mb) < 1:
        return False
    free = [[node.cpus, node.memory_mb] for node in nodes]
    task_mem = resources.cpus_per_task * resources.mem_per_cpu_mb
    for _ in range(resources.ntasks):
        for room in free:
            if room[0] >= resources.cpus_per_task and room[1] >= task_mem:
                room[0] -= resources.cpus_per_task
                room[1] -= task_mem
                break
        else:
            return False
    return resources.gpus <= sum(node.gpus for node in nodes)


nodes_strategy = st.lists(
    st.builds(Node, cpus=st.integers(0, 16), memory_mb=st.integers(0, 64_000), gpus=st.integers(0, 4)),
    max_size=4,
)
resources_strategy = st.builds(
    Resources,
    ntasks=st.integers(0, 12),
    cpus_per_task=st.integers(0, 8),
    mem_per_cpu_mb=st.sampled_from([0, 1, 512, 1024, 4000, 8192, 20_000]),
    gpus=st.integers(0, 10),
)


# -- fit ----------------------------------------------------------------------------------------------


@given(resources_strategy, nodes_strategy)
def test_job_is_taken_exactly_when_its_tasks_and_gpus_fit(resources: Resources, nodes: list[Node]) -> None:
    assert (refusal_reason(resources, CUSTOMER, nodes) is None) == first_fit(resources, nodes)


def test_tasks_must_fit_on_single_nodes() -> None:
    two_nodes = [Node(4, 8000, 0), Node(4, 8000, 0)]
    assert refusal_reason(Resources(2, 4, 1000, 0), CUSTOMER, two_nodes) is None
    reason = refusal_reason(Resources(1, 8, 1000, 0), CUSTOMER, two_nodes)
    assert reason == (
        "the job needs 1 tasks of 8 CPUs and 8000 MB; the partition holds 0 such tasks "
        "(largest node: 4 CPUs, 8000 MB)"
    )


def test_memory_per_task_is_cpus_times_memory_per_cpu() -> None:
    node = [Node(8, 8192, 0)]
    assert refusal_reason(Resources(2, 2, 2048, 0), CUSTOMER, node) is None
    reason = refusal_reason(Resources(3, 2, 2048, 0), CUSTOMER, node)
    assert reason is not None and "3 tasks of 2 CPUs and 4096 MB" in reason and "holds 2" in reason


def test_gpus_count_over_the_whole_partition() -> None:
    nodes = [Node(8, 16000, 2), Node(8, 16000, 2)]
    assert refusal_reason(Resources(1, 1, 1024, 4), CUSTOMER, nodes) is None
    assert refusal_reason(Resources(1, 1, 1024, 5), CUSTOMER, nodes) == (
        "the job needs 5 GPUs; the partition has 4"
    )


@pytest.mark.parametrize("resources", [Resources(0, 1, 1, 0), Resources(1, 0, 1, 0), Resources(1, 1, 0, 0)])
def test_empty_definition_is_refused(resources: Resources) -> None:
    assert refusal_reason(resources, CUSTOMER, CLUSTER) == "the job asks for no task, CPU or memory"


def test_no_nodes_takes_nothing() -> None:
    reason = refusal_reason(SMALL, CUSTOMER, [])
    assert reason is not None and "largest node: 0 CPUs, 0 MB" in reason


# -- customers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", [CUSTOMER, CUSTOMER.lower(), "0x" + CUSTOMER[2:].upper()])
def test_denied_customer_is_refused_in_any_spelling(spelling: str) -> None:
    reason = refusal_reason(SMALL, spelling, CLUSTER, denied_customers={CUSTOMER.lower()})
    assert reason == f"customer {spelling} is refused by this provider's policy"


def test_denied_customer_comes_before_fit_and_other_customers_pass() -> None:
    too_big = Resources(100, 1, 1, 0)
    reason = refusal_reason(too_big, CUSTOMER, CLUSTER, denied_customers={CUSTOMER})
    assert reason is not None and reason.startswith("customer ")
    assert refusal_reason(SMALL, OTHER, CLUSTER, denied_customers={CUSTOMER}) is None


# -- images -------------------------------------------------------------------------------------------


def rendered(*containers: dict[str, Any]) -> str:
    """The batch script the sbatch service renders for one step per container."""
    workflow = {
        "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 1024, "gpus": 0},
        "steps": [
            {"name": f"step{i}", "run": {"command": "true", "container": container}}
            for i, container in enumerate(containers)
        ],
    }
    return render(load_workflow(json.dumps(workflow)), SeededNames(0), RenderOptions(storage_root="/srv"))


def denial(script: str, *rules: str) -> str | None:
    return refusal_reason(SMALL, CUSTOMER, CLUSTER, denied_images=set(rules), script=script)


@pytest.mark.parametrize(
    ("golden", "images"),
    [
        ("enroot.sh", ["library/ubuntu:22.04", "team/tool:1.0"]),
        ("apptainer.sh", ["org/trainer:latest"]),
        ("hello.sh", []),
        ("loops.sh", []),
        ("launch.sh", []),
        ("catch_finally.sh", []),
        ("host_env.sh", []),
    ],
)
def test_images_of_the_golden_scripts(golden: str, images: list[str]) -> None:
    assert images_in_script((GOLDEN / golden).read_text()) == images


def test_golden_enroot_script_against_rules() -> None:
    script = (GOLDEN / "enroot.sh").read_text()
    assert denial(script, "library/ubuntu:22.04") == (
        "image library/ubuntu:22.04 is refused by this provider's policy (library/ubuntu:22.04)"
    )
    assert denial(script, "library/ubuntu") is not None
    assert denial(script, "team/*") == "image team/tool:1.0 is refused by this provider's policy (team/*)"
    assert denial(script, "library/ubuntu:24.04", "team/tool:2.0", "library/debian", "ubuntu:20.04") is None
    assert denial(script, "ubuntu") is not None  # Docker Hub's library/ namespace is implicit
    # A local squashfs image (the third step) is not a registry image: no rule applies to it.
    assert denial(script, "/opt/images/base.sqsh") is None


def test_golden_apptainer_script_drops_the_registry_host() -> None:
    script = (GOLDEN / "apptainer.sh").read_text()
    assert denial(script, "org/trainer:latest") is not None
    assert denial(script, "org/trainer") is not None
    assert denial(script, "ghcr.io/org/trainer") is None  # rules name images without their registry


def test_registry_host_in_the_image_name_is_dropped_too() -> None:
    for apptainer in (False, True):
        script = rendered({"image": "ghcr.io/org/trainer:latest", "apptainer": apptainer})
        assert images_in_script(script) == ["org/trainer:latest"]
        script = rendered({"image": "localhost/org/tool", "apptainer": apptainer})
        assert images_in_script(script) == ["org/tool"]


def test_the_registry_host_is_dropped() -> None:
    for apptainer in (False, True):
        script = rendered({"image": "org/tool:1", "registry": "registry.example.com", "apptainer": apptainer})
        assert images_in_script(script) == ["org/tool:1"]


def test_image_rules_apply_only_with_a_script() -> None:
    assert refusal_reason(SMALL, CUSTOMER, CLUSTER, denied_images={"*"}) is None
    assert denial(rendered({"image": "org/tool"}), "*") is not None
    assert denial(rendered({"image": "org/tool"})) is None


def test_first_denied_image_of_several_is_named() -> None:
    script = rendered({"image": "org/ok:1"}, {"image": "org/bad:1", "apptainer": True})
    assert images_in_script(script) == ["org/ok:1", "org/bad:1"]
    assert denial(script, "org/bad") == "image org/bad:1 is refused by this provider's policy (org/bad)"


component = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,8}", fullmatch=True)
image_names = st.lists(component, min_size=1, max_size=3).map("/".join)
tags = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}", fullmatch=True))
registries = st.sampled_from([None, "ghcr.io", "registry-1.docker.io", "registry.example.com"])


@given(image_names, tags, registries, st.booleans())
def test_policy_sees_the_image_as_written_in_the_workflow(
    name: str, tag: str | None, registry: str | None, apptainer: bool
) -> None:
    image = name if tag is None else f"{name}:{tag}"
    container: dict[str, Any] = {"image": image, "apptainer": apptainer}
    if registry is not None:
        container["registry"] = registry
    # Docker Hub's implicit `library/` namespace may be written out; the policy compares without it.
    (seen,) = images_in_script(rendered(container))
    assert seen.removeprefix("library/") == image.removeprefix("library/")


@given(image_names, tags, st.booleans(), st.data())
def test_exact_name_tag_and_prefix_rules(
    name: str, tag: str | None, apptainer: bool, data: st.DataObject
) -> None:
    image = name if tag is None else f"{name}:{tag}"
    script = rendered({"image": image, "registry": "ghcr.io", "apptainer": apptainer})
    prefix = name[: data.draw(st.integers(0, len(name)))]
    for rule in (image, name, prefix + "*"):
        assert denial(script, rule) == f"image {image} is refused by this provider's policy ({rule})"
    others = [name + "x", "x" + name, name + "x*", f"{name}:{tag or 'latest'}-other", name + "/sub"]
    assert denial(script, *others) is None


def test_dotted_first_component_survives_an_enroot_registry() -> None:
    enroot = rendered({"image": "team.ai/model:1", "registry": "ghcr.io"})
    apptainer = rendered({"image": "team.ai/model:1", "registry": "ghcr.io", "apptainer": True})
    assert images_in_script(apptainer) == ["team.ai/model:1"]
    assert images_in_script(enroot) == ["team.ai/model:1"]
    assert denial(enroot, "team.ai/model") is not None


def test_docker_hub_official_image_is_refused_under_either_name() -> None:
    script = rendered({"image": "ubuntu:22.04", "registry": "registry-1.docker.io"})
    assert denial(script, "library/ubuntu") is not None
