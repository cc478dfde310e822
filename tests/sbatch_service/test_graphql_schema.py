"""The running service's GraphQL schema is DeepSquare's reference schema, type for type.

The reference is the list of section 1 of WORKFLOW-REFERENCE.md (in the shared folder beside the
repository): every input type, field name and full type (lists and `!`), and the operations.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.sbatch import SbatchProcess, start_sbatch_service

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE = REPO_ROOT.parent / "shared" / "WORKFLOW-REFERENCE.md"

pytestmark = pytest.mark.skipif(
    not REFERENCE.is_file(), reason=f"the reference workflow schema is not at {REFERENCE}"
)

# The types the reference lists; a parse that finds fewer means the document's layout changed.
REFERENCE_TYPES = {
    "Job", "JobResources", "EnvVar", "TransportData", "HTTPData", "S3Data", "VirtualNetwork", "Step",
    "StepUse", "StepRun", "StepRunResources", "ContainerRun", "Mount", "NetworkInterface", "Wireguard",
    "WireguardPeer", "Bore", "VNet", "StepFor", "ForRange", "StepAsyncLaunch", "Module", "ModuleInput",
    "ModuleOutput",
}  # fmt: skip

# A field cell: "`name`", "Type.`name`" or "Type.`a`, `b`". Rows such as "*(kind rule)*" are not fields.
FIELD_CELL = re.compile(r"^(?:(?P<owner>\w+)\.)?(?P<names>`\w+`(?:, `\w+`)*)$")
TYPE_CELL = re.compile(r"^`(?P<type>[\w\[\]!]+)`$")
OPERATION = re.compile(
    r"^- `(?P<owner>Query|Mutation)\.(?P<name>\w+)\((?P<arg>\w+): (?P<arg_type>[\w\[\]!]+)\): "
    r"(?P<type>[\w\[\]!]+)`"
)

INTROSPECTION = """
{ __schema { types { name kind
    inputFields { name type { ...TypeRef } }
    fields { name type { ...TypeRef } args { name type { ...TypeRef } } } } } }
fragment TypeRef on __Type {
  kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } }
}
"""


def reference_schema(text: str) -> tuple[dict[str, dict[str, str]], dict[str, tuple[dict[str, str], str]]]:
    """Input types ({type: {field: type}}) and operations ({Type.field: (args, type)}) of section 1."""
    section = text.split("\n## 1.", 1)[1].split("\n## 2.", 1)[0]
    inputs: dict[str, dict[str, str]] = {}
    operations: dict[str, tuple[dict[str, str], str]] = {}
    heading = ""
    for line in section.splitlines():
        if line.startswith("### "):
            heading = line.split()[1].rstrip(",")
            continue
        operation = OPERATION.match(line)
        if operation:
            key = f"{operation['owner']}.{operation['name']}"
            operations[key] = ({operation["arg"]: operation["arg_type"]}, operation["type"])
            continue
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        field = FIELD_CELL.match(cells[0]) if cells else None
        type_ = TYPE_CELL.match(cells[1]) if len(cells) > 1 else None
        if field is None or type_ is None:
            continue  # the header, the separator, and rows that describe a rule rather than a field
        owner = field["owner"] or heading
        for name in re.findall(r"`(\w+)`", field["names"]):
            inputs.setdefault(owner, {})[name] = type_["type"]
    return inputs, operations


def type_text(ref: dict[str, Any]) -> str:
    """An introspected type reference in SDL form: `[Step!]!`."""
    if ref["kind"] == "NON_NULL":
        return type_text(ref["ofType"]) + "!"
    if ref["kind"] == "LIST":
        return "[" + type_text(ref["ofType"]) + "]"
    return str(ref["name"])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SbatchProcess]:
    process = start_sbatch_service(
        tmp_path_factory.mktemp("sbatch-schema"),
        rpc_url="http://127.0.0.1:9",
        metascheduler_address="0x" + "11" * 20,
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def served(service: SbatchProcess) -> dict[str, dict[str, Any]]:
    body = service.graphql(INTROSPECTION)
    assert "errors" not in body, body
    return {t["name"]: t for t in body["data"]["__schema"]["types"]}


def test_the_reference_document_lists_every_type() -> None:
    inputs, operations = reference_schema(REFERENCE.read_text(encoding="utf-8"))
    assert set(inputs) == REFERENCE_TYPES
    assert set(operations) == {"Mutation.submit", "Mutation.validate", "Query.job"}
    assert inputs["Module"]["description"] == "String!"
    assert "gpus" not in inputs["StepRunResources"]


def test_every_input_type_field_and_type_is_the_references(served: dict[str, dict[str, Any]]) -> None:
    inputs, _ = reference_schema(REFERENCE.read_text(encoding="utf-8"))
    served_inputs = {
        name: {f["name"]: type_text(f["type"]) for f in t["inputFields"]}
        for name, t in served.items()
        if t["kind"] == "INPUT_OBJECT"
    }
    assert set(served_inputs) == set(inputs)
    for name, fields in inputs.items():
        assert served_inputs[name] == fields, name


def test_the_operations_are_the_references(served: dict[str, dict[str, Any]]) -> None:
    _, operations = reference_schema(REFERENCE.read_text(encoding="utf-8"))
    for key, (args, result) in operations.items():
        owner, name = key.split(".")
        (field,) = [f for f in served[owner]["fields"] if f["name"] == name]
        assert {a["name"]: type_text(a["type"]) for a in field["args"]} == args, key
        assert type_text(field["type"]) == result, key
    (health,) = [f for f in served["Query"]["fields"] if f["name"] == "health"]
    assert type_text(health["type"]) == "String!"
