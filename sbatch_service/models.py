"""The workflow format (WORKFLOW.md subset) as strict pydantic models, and its validation.

Validation turns any input into either a `Job` or a `WorkflowError` listing every problem with the
path of the offending field (`steps[0].run.container.image`), so that customers can fix it. It first
coerces the input through the GraphQL `Job` type of `schema.graphql` (types, nullability, unknown
fields), as GraphQL `submit` does, then checks the constraints the schema cannot express.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from graphql import GraphQLInputType
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from sbatch_service.errors import FieldError as FieldError
from sbatch_service.errors import WorkflowError as WorkflowError
from sbatch_service.errors import dotted_path
from sbatch_service.schema import JOB_INPUT, MODULE_INPUT, coerce_input

ENV_KEY_PATTERN = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
FORBIDDEN_ENV_KEYS = frozenset(
    {"PATH", "LD_LIBRARY_PATH", "IFS", "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "STORAGE_PATH"}
)
RESERVED_ENV_PREFIXES = ("DEEPSQUARE_", "SLURM_", "GRID_")
IMAGE_NAME_PATTERN = re.compile(r"^[a-z0-9/._-]+(:[A-Za-z0-9._:-]+)?$")
REGISTRY_PATTERN = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
HANDLE_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_COUNT = 2**32 - 1
MAX_RANGE_BOUND = 2**31 - 1
SIGNAL_MAX = 64


@dataclass(frozen=True)
class Limits:
    """Size limits that keep one workflow from exhausting the service or the cluster."""

    max_workflow_bytes: int = 256 * 1024
    max_string_length: int = 64 * 1024
    max_steps: int = 1000
    max_depth: int = 16
    max_items: int = 10_000
    max_parallel_iterations: int = 1024


class _Strict(BaseModel):
    """camelCase fields, unknown fields refused, no type coercion."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


PositiveCount = Annotated[StrictInt, Field(ge=1, le=MAX_COUNT)]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]


def _not_supported_yet(value: object) -> object:
    """Fields of the DeepSquare format the project does not implement yet: refuse any real value."""
    if value is None or value is False or value == [] or value == {}:
        return None
    raise ValueError("not supported yet")


def _refuse_for_now(*fields: str) -> Any:
    """A validator refusing, with "not supported yet", the named fields of the DeepSquare format."""

    def check(cls: type[BaseModel], value: object) -> object:
        return _not_supported_yet(value)

    return field_validator(*fields)(classmethod(check))


def _valid_env_key(key: str) -> str:
    if not ENV_KEY_PATTERN.fullmatch(key):
        raise ValueError(f"invalid environment variable name {key!r}: must match {ENV_KEY_PATTERN.pattern}")
    if key in FORBIDDEN_ENV_KEYS or key.upper().startswith(RESERVED_ENV_PREFIXES):
        raise ValueError(f"environment variable {key} may not be set")
    return key


def _env_key_rule(field: str) -> Any:
    """A validator applying the environment variable name rules to a field."""

    def check(cls: type[BaseModel], key: str) -> str:
        return _valid_env_key(key)

    return field_validator(field)(classmethod(check))


class EnvVar(_Strict):
    key: StrictStr
    value: StrictStr

    _key = _env_key_rule("key")


class JobResources(_Strict):
    tasks: PositiveCount
    cpus_per_task: PositiveCount = Field(alias="cpusPerTask")
    mem_per_cpu: PositiveCount = Field(alias="memPerCpu")
    gpus: Count = 0


class StepResources(_Strict):
    tasks: PositiveCount = 1
    cpus_per_task: PositiveCount | None = Field(default=None, alias="cpusPerTask")
    mem_per_cpu: PositiveCount | None = Field(default=None, alias="memPerCpu")
    gpus_per_task: Count = Field(default=0, alias="gpusPerTask")


class Shell(StrEnum):
    SH = "/bin/sh"
    BASH = "/bin/bash"
    ASH = "/bin/ash"
    ENTRYPOINT = "ENTRYPOINT"


class Mpi(StrEnum):
    NONE = "none"
    PMIX_V4 = "pmix_v4"
    PMI2 = "pmi2"


def _no_whitespace(value: str | None, what: str) -> str | None:
    if value is not None and (value == "" or any(c.isspace() for c in value)):
        raise ValueError(f"{what} must be non-empty and without whitespace")
    return value


class Container(_Strict):
    image: StrictStr
    registry: StrictStr | None = None
    username: StrictStr | None = None
    password: StrictStr | None = None
    apptainer: StrictBool = False
    mount_home: StrictBool = Field(default=False, alias="mountHome")
    read_only_root_fs: StrictBool = Field(default=False, alias="readOnlyRootFS")
    x11: StrictBool = False
    deepsquare_hosted: Any = Field(default=None, alias="deepsquareHosted")
    mounts: Any = None

    _later = _refuse_for_now("deepsquare_hosted", "mounts")

    @field_validator("image")
    @classmethod
    def _valid_image(cls, image: str) -> str:
        if image.startswith("/"):
            if not re.fullmatch(r"/[A-Za-z0-9/._+-]*\.(sqsh|squashfs|sif)", image) or "/../" in image:
                raise ValueError(
                    "an image path must be absolute, end in .sqsh, .squashfs or .sif, "
                    "and contain only letters, digits and /._+-"
                )
            return image
        if not IMAGE_NAME_PATTERN.fullmatch(image):
            raise ValueError(f"invalid image name {image!r}: must match {IMAGE_NAME_PATTERN.pattern}")
        return image

    @field_validator("registry")
    @classmethod
    def _valid_registry(cls, registry: str | None) -> str | None:
        if registry is not None and not REGISTRY_PATTERN.fullmatch(registry):
            raise ValueError(f"invalid registry host {registry!r}")
        return registry

    @field_validator("username", "password")
    @classmethod
    def _valid_credential(cls, value: str | None) -> str | None:
        return _no_whitespace(value, "a registry credential")

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> Container:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.username is not None and self.image.startswith("/"):
            raise ValueError("credentials make no sense with a local image path")
        if not self.apptainer and self.image.endswith(".sif"):
            raise ValueError("a .sif image needs apptainer: true (Enroot runs squashfs images)")
        return self

    @property
    def is_local_file(self) -> bool:
        return self.image.startswith("/")


class StepRun(_Strict):
    command: StrictStr
    shell: Shell = Shell.SH
    env: list[EnvVar] = Field(default_factory=list)
    work_dir: StrictStr | None = Field(default=None, alias="workDir")
    resources: StepResources = Field(default_factory=StepResources)
    mpi: Mpi | None = None
    disable_cpu_binding: StrictBool = Field(default=False, alias="disableCpuBinding")
    container: Container | None = None
    network: Any = None
    dns: Any = None
    custom_network_interfaces: Any = Field(default=None, alias="customNetworkInterfaces")
    map_uid: Any = Field(default=None, alias="mapUid")
    map_gid: Any = Field(default=None, alias="mapGid")

    _later = _refuse_for_now("network", "dns", "custom_network_interfaces", "map_uid", "map_gid")

    @field_validator("work_dir")
    @classmethod
    def _absolute_work_dir(cls, work_dir: str | None) -> str | None:
        if work_dir is not None and not work_dir.startswith("/"):
            raise ValueError("workDir must be an absolute path")
        return work_dir

    @model_validator(mode="after")
    def _coherent(self) -> StepRun:
        if self.shell is Shell.ENTRYPOINT:
            if self.container is None:
                raise ValueError("shell ENTRYPOINT needs a container")
            try:
                shlex.split(self.command)
            except ValueError as error:
                raise ValueError(f"command must split into arguments with ENTRYPOINT: {error}") from None
            if not self.container.apptainer and self.work_dir is not None:
                raise ValueError("workDir cannot be combined with ENTRYPOINT on Enroot")
        return self


class Range(_Strict):
    begin: Annotated[StrictInt, Field(ge=-MAX_RANGE_BOUND, le=MAX_RANGE_BOUND)]
    end: Annotated[StrictInt, Field(ge=-MAX_RANGE_BOUND, le=MAX_RANGE_BOUND)]
    increment: Annotated[StrictInt, Field(ge=-MAX_RANGE_BOUND, le=MAX_RANGE_BOUND)] = 1

    @model_validator(mode="after")
    def _finite(self) -> Range:
        if self.increment == 0:
            raise ValueError("increment may not be 0")
        if (self.end - self.begin) * self.increment < 0:
            raise ValueError("the range never reaches its end with this increment")
        return self

    @property
    def iterations(self) -> int:
        return abs(self.end - self.begin) // abs(self.increment) + 1


class StepFor(_Strict):
    parallel: StrictBool = False
    items: list[StrictStr] | None = None
    range: Range | None = None
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _items_or_range(self) -> StepFor:
        if (self.items is None) == (self.range is None):
            raise ValueError("exactly one of items and range is required")
        if self.items is not None and not self.items:
            raise ValueError("items may not be empty")
        return self

    @property
    def iterations(self) -> int:
        return len(self.items) if self.items is not None else self.range.iterations if self.range else 0


class StepLaunch(_Strict):
    handle_name: StrictStr | None = Field(default=None, alias="handleName")
    signal_on_parent_step_exit: Annotated[StrictInt, Field(ge=0, le=SIGNAL_MAX)] = Field(
        default=15, alias="signalOnParentStepExit"
    )
    steps: list[Step] = Field(min_length=1)

    @field_validator("handle_name")
    @classmethod
    def _valid_handle(cls, handle: str | None) -> str | None:
        if handle is not None and not HANDLE_PATTERN.fullmatch(handle):
            raise ValueError(f"invalid handleName {handle!r}: must match {HANDLE_PATTERN.pattern}")
        return handle


class Step(_Strict):
    name: StrictStr | None = None
    depends_on: list[StrictStr] = Field(default_factory=list, alias="dependsOn")
    if_: StrictStr | None = Field(default=None, alias="if")
    run: StepRun | None = None
    steps: list[Step] | None = None
    for_: StepFor | None = Field(default=None, alias="for")
    launch: StepLaunch | None = None
    catch: list[Step] | None = None
    finally_: list[Step] | None = Field(default=None, alias="finally")
    use: Any = None

    _later = _refuse_for_now("use")

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Step:
        candidates = (("run", self.run), ("steps", self.steps), ("for", self.for_), ("launch", self.launch))
        kinds = [kind for kind, value in candidates if value is not None]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            raise ValueError(f"a step needs exactly one of run, steps, for, launch (found: {found})")
        if self.steps is not None and not self.steps:
            raise ValueError("steps may not be empty")
        return self


class Job(_Strict):
    resources: JobResources
    env: list[EnvVar] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)
    enable_logging: Any = Field(default=None, alias="enableLogging")
    input: Any = None
    input_mode: Any = Field(default=None, alias="inputMode")
    output: Any = None
    continuous_output_sync: Any = Field(default=None, alias="continuousOutputSync")
    virtual_networks: Any = Field(default=None, alias="virtualNetworks")

    _later = _refuse_for_now(
        "enable_logging", "input", "input_mode", "output", "continuous_output_sync", "virtual_networks"
    )


class ModuleInput(_Strict):
    key: StrictStr
    description: StrictStr
    default: StrictStr | None = None

    _key = _env_key_rule("key")


class ModuleOutput(_Strict):
    key: StrictStr
    description: StrictStr

    _key = _env_key_rule("key")


class Module(_Strict):
    """A module definition (`module.yaml`), checked by GraphQL `validate`; modules do not run yet."""

    name: StrictStr
    description: StrictStr
    minimum_resources: JobResources = Field(alias="minimumResources")
    inputs: list[ModuleInput] | None = None
    outputs: list[ModuleOutput] | None = None
    steps: list[Step]


def _check_strings(value: object, path: str, limits: Limits, errors: list[FieldError]) -> None:
    """Every string: no NUL byte (bash cannot hold one) and at most the configured length."""
    if isinstance(value, str):
        if "\x00" in value:
            errors.append(FieldError(path, "contains a NUL character"))
        if len(value) > limits.max_string_length:
            errors.append(FieldError(path, f"longer than {limits.max_string_length} characters"))
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(item, f"{path}.{key}" if path else str(key), limits, errors)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{path}[{index}]", limits, errors)


def _walk_steps(
    steps: list[Step], path: str, depth: int, limits: Limits, counter: list[int], errors: list[FieldError]
) -> None:
    """Structural limits (count, depth, parallel fan-out) that no single model can check."""
    if depth > limits.max_depth:
        errors.append(FieldError(path, f"steps nested deeper than {limits.max_depth} levels"))
        return
    for index, step in enumerate(steps):
        here = f"{path}[{index}]"
        counter[0] += 1
        if step.for_ is not None:
            if step.for_.items is not None and len(step.for_.items) > limits.max_items:
                errors.append(FieldError(f"{here}.for.items", f"more than {limits.max_items} items"))
            if step.for_.parallel and step.for_.iterations > limits.max_parallel_iterations:
                errors.append(
                    FieldError(
                        f"{here}.for",
                        f"a parallel loop may run at most {limits.max_parallel_iterations} iterations",
                    )
                )
        for name, children in (
            ("steps", step.steps),
            ("for.steps", step.for_.steps if step.for_ else None),
            ("launch.steps", step.launch.steps if step.launch else None),
            ("catch", step.catch),
            ("finally", step.finally_),
        ):
            if children:
                _walk_steps(children, f"{here}.{name}", depth + 1, limits, counter, errors)
    if counter[0] > limits.max_steps and path == "steps":
        errors.append(FieldError("steps", f"more than {limits.max_steps} steps in total"))


def _check_handles(steps: list[Step], path: str, visible: frozenset[str], errors: list[FieldError]) -> None:
    """dependsOn may only name a handle launched earlier in the same list or an enclosing one."""
    known = set(visible)
    for index, step in enumerate(steps):
        here = f"{path}[{index}]"
        for position, handle in enumerate(step.depends_on):
            if handle not in known:
                errors.append(
                    FieldError(
                        f"{here}.dependsOn[{position}]", f"no step launched before with handle {handle!r}"
                    )
                )
        inner = frozenset(known)
        for name, children in (
            ("steps", step.steps),
            ("for.steps", step.for_.steps if step.for_ else None),
            ("launch.steps", step.launch.steps if step.launch else None),
            ("catch", step.catch),
            ("finally", step.finally_),
        ):
            if children:
                _check_handles(children, f"{here}.{name}", inner, errors)
        if step.launch is not None and step.launch.handle_name is not None:
            if step.launch.handle_name in known:
                errors.append(
                    FieldError(
                        f"{here}.launch.handleName", f"handle {step.launch.handle_name!r} is already used"
                    )
                )
            known.add(step.launch.handle_name)


_M = TypeVar("_M", Job, Module)


def _checked(data: object, type_: GraphQLInputType, model: type[_M], limits: Limits) -> _M:
    """`data` through the GraphQL input type, then the limits and the model's constraints."""
    coerced = coerce_input(data, type_)
    size = len(json.dumps(coerced, ensure_ascii=False, default=str).encode())
    if size > limits.max_workflow_bytes:
        raise WorkflowError(
            [FieldError("", f"the workflow is {size} bytes, more than {limits.max_workflow_bytes}")]
        )
    errors: list[FieldError] = []
    _check_strings(coerced, "", limits, errors)
    if errors:
        raise WorkflowError(errors)
    try:
        checked = model.model_validate(coerced)
    except ValidationError as error:
        raise WorkflowError(
            [
                FieldError(dotted_path(e["loc"]), e["msg"].removeprefix("Value error, "))
                for e in error.errors()
            ]
        ) from None
    _walk_steps(checked.steps, "steps", 1, limits, [0], errors)
    _check_handles(checked.steps, "steps", frozenset(), errors)
    if errors:
        raise WorkflowError(errors)
    return checked


def validate_workflow(data: object, limits: Limits | None = None) -> Job:
    """Check a parsed workflow (the JSON/YAML object) and return it as a `Job`, or raise WorkflowError.

    The one verdict for every entry path: GraphQL `submit` and `grid-sbatch render` both call it.
    """
    return _checked(data, JOB_INPUT, Job, limits or Limits())


def validate_module(data: object, limits: Limits | None = None) -> Module:
    """Check a module definition the way a workflow is checked (no rendering, nothing fetched)."""
    return _checked(data, MODULE_INPUT, Module, limits or Limits())
