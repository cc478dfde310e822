"""Whether this provider takes a claimed job: the cluster's size and the operator's policy. Pure."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Images appear in rendered scripts as docker:// references: Enroot's `docker://[registry#]image`,
# Apptainer's `docker://[registry/]image`.
_IMAGE_REFERENCE = re.compile(r"docker://([^'\"\s]+)")
_DOCKER_HUB = "library/"


@dataclass(frozen=True)
class Resources:
    """What a job asks for: the on-chain definition."""

    ntasks: int
    cpus_per_task: int
    mem_per_cpu_mb: int
    gpus: int


@dataclass(frozen=True)
class Node:
    cpus: int
    memory_mb: int
    gpus: int


def images_in_script(script: str) -> list[str]:
    """Container images a rendered batch script pulls, without their registry host."""
    found = []
    for reference in _IMAGE_REFERENCE.findall(script):
        if "#" in reference:
            found.append(reference.split("#", 1)[1])  # Enroot: what follows '#' is the whole image
            continue
        host, _, rest = reference.partition("/")
        # A first part with a dot or a port is a registry host, not part of the image name.
        found.append(rest if rest and ("." in host or ":" in host or host == "localhost") else reference)
    return found


def _normal(image: str) -> str:
    """Docker Hub's implicit `library/` namespace removed, so `ubuntu` and `library/ubuntu` compare equal."""
    return image.removeprefix(_DOCKER_HUB)


def _split_tag(image: str) -> tuple[str, str]:
    """(name, tag) with the implicit `latest` tag made explicit; a digest counts as the tag."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
        return name, tag
    return image, "latest"


def _image_denied(image: str, denied: Collection[str]) -> str | None:
    name, tag = _split_tag(_normal(image))
    for rule in denied:
        normal_rule = _normal(rule)
        if rule.endswith("*"):
            if f"{name}:{tag}".startswith(normal_rule[:-1]) or name.startswith(normal_rule[:-1]):
                return rule
            continue
        rule_name, rule_tag = _split_tag(normal_rule)
        has_tag = normal_rule != rule_name
        if rule_name == name and (not has_tag or rule_tag == tag):
            return rule
    return None


#: What lenient decoding puts in place of bytes that are not UTF-8 (supervisor.chain.abi).
_REPLACED = "\ufffd"


def label_problem(definition: Mapping[str, Any]) -> str | None:
    """Why a job's `uses`/`affinity` labels are unusable (bytes that are not UTF-8), or None."""
    for field in ("uses", "affinity"):
        for index, entry in enumerate(definition.get(field) or []):
            label = entry.get("label", entry) if isinstance(entry, Mapping) else {}
            texts = [label.get("key", ""), label.get("value", "")] if isinstance(label, Mapping) else []
            if any(isinstance(text, str) and _REPLACED in text for text in texts):
                return f"the job's {field}[{index}] label is not UTF-8 text"
    return None


def refusal_reason(
    resources: Resources,
    customer: str,
    nodes: Sequence[Node],
    *,
    denied_customers: Collection[str] = (),
    denied_images: Collection[str] = (),
    script: str | None = None,
) -> str | None:
    """Why the job cannot run here, or None when it can.

    A job fits when its tasks can be placed on the partition's nodes (each task needs
    `cpus_per_task` CPUs and `cpus_per_task * mem_per_cpu` MB on one node) and its GPUs exist in total.
    """
    if customer.lower() in {c.lower() for c in denied_customers}:
        return f"customer {customer} is refused by this provider's policy"
    if resources.ntasks < 1 or resources.cpus_per_task < 1 or resources.mem_per_cpu_mb < 1:
        return "the job asks for no task, CPU or memory"
    task_mem = resources.cpus_per_task * resources.mem_per_cpu_mb
    slots = sum(
        min(node.cpus // resources.cpus_per_task, node.memory_mb // task_mem)
        for node in nodes
        if node.cpus > 0
    )
    if slots < resources.ntasks:
        biggest = max(nodes, key=lambda n: (n.cpus, n.memory_mb), default=Node(0, 0, 0))
        return (
            f"the job needs {resources.ntasks} tasks of {resources.cpus_per_task} CPUs and {task_mem} MB; "
            f"the partition holds {slots} such tasks (largest node: {biggest.cpus} CPUs, {biggest.memory_mb} MB)"
        )
    total_gpus = sum(node.gpus for node in nodes)
    if resources.gpus > total_gpus:
        return f"the job needs {resources.gpus} GPUs; the partition has {total_gpus}"
    if script is not None and denied_images:
        for image in images_in_script(script):
            rule = _image_denied(image, denied_images)
            if rule is not None:
                return f"image {image} is refused by this provider's policy ({rule})"
    return None
