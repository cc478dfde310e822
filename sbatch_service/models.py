"""The DeepSquare workflow format as strict pydantic models, and its validation.

Validation turns any input into either a `Job` or a `WorkflowError` listing every problem with the
path of the offending field (`steps[0].run.container.image`), so that customers can fix it. It first
removes the three misplaced keys published workflows carry (with a warning each) and coerces the
input through the GraphQL `Job` type of `schema.graphql` (types, nullability, unknown fields), as
GraphQL `submit` does, then checks the constraints the schema cannot express: the reference's rules
(WORKFLOW-REFERENCE.md section 1), plus the few stricter ones the README lists with their reasons.
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from graphql import GraphQLInputType
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from sbatch_service import rules
from sbatch_service.documents import check_document
from sbatch_service.errors import FieldError as FieldError
from sbatch_service.errors import WorkflowError as WorkflowError
from sbatch_service.errors import dotted_path
from sbatch_service.schema import JOB_INPUT, MODULE_INPUT, coerce_input, strip_misplaced

# Names the batch script, bash, the dynamic loader, Slurm or the container tools act on: a workflow's
# env, a module's inputs and outputs may not set them (README, "Reserved environment names").
FORBIDDEN_ENV_KEYS = frozenset(
    {
        "PATH",
        "LD_LIBRARY_PATH",
        "LD_PRELOAD",
        "IFS",
        "BASH_ENV",
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
    }
)
RESERVED_ENV_PREFIXES = (
    "DEEPSQUARE_",
    "SLURM_",
    "GRID_",
    "LD_",
    "BASH_",
    "ENROOT_",
    "APPTAINER_",
    "APPTAINERENV_",
    "SINGULARITY_",
    "SINGULARITYENV_",
)
# Also reserved in $DEEPSQUARE_ENV: the loop variables, which the script sets itself.
LOOP_VARIABLES = ("index", "item")
MOUNT_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/+-")
MODULE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MODULE_REF_CHARS = MODULE_NAME_CHARS | {"/"}
MAX_COUNT = 2**31 - 1
MAX_ID = 2**31 - 1
SIGNAL_MAX = 64
PORT_MAX = 65535
DEFAULT_SIGNAL = 15


# Hard bounds, whatever a site configures: Slurm keeps cpus_per_task in 16 bits (0xfffe and 0xffff
# are its NO_VAL and INFINITE); the chain's uint64 and bash's 64-bit arithmetic bound the products
# the script exports (CPUS, MEM) and the GPUs a step asks for.
SLURM_MAX_CPUS_PER_TASK = 0xFFFD
MAX_PRODUCT = 2**63 - 1


@dataclass(frozen=True)
class Limits:
    """Size limits that keep one workflow from exhausting the service or the cluster.

    `max_nesting` counts levels of objects and lists in the document (it must leave room for
    `max_depth` levels of steps, about 3 levels each); `max_iterations` bounds every loop and
    `max_step_runs` the steps a job runs in all, loops multiplied out. The `max_*` resources are the
    site's maxima per job (tasks, GPUs) or per task.
    """

    max_workflow_bytes: int = 256 * 1024
    max_string_length: int = 64 * 1024
    max_steps: int = 1000
    max_depth: int = 16
    max_nesting: int = 100
    max_items: int = 10_000
    max_iterations: int = 10_000
    max_step_runs: int = 100_000
    max_parallel_iterations: int = 1024
    max_module_depth: int = 4
    max_tasks: int = 65_536
    max_cpus_per_task: int = 1024
    max_mem_per_cpu: int = 1024 * 1024
    max_gpus: int = 4096
    max_gpus_per_task: int = 64


class _Strict(BaseModel):
    """camelCase fields, unknown fields refused, no type coercion; null means absent, as in Go."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


PositiveCount = Annotated[StrictInt, Field(ge=1, le=MAX_COUNT)]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]
Port = Annotated[StrictInt, Field(ge=1, le=PORT_MAX)]


def _valid_env_key(key: str) -> str:
    if not rules.ENV_NAME.fullmatch(key):
        raise ValueError(f"invalid environment variable name {key!r}: must match ^{rules.ENV_NAME.pattern}$")
    if reserved_env_name(key):
        raise ValueError(f"environment variable {key} may not be set")
    return key


def reserved_env_name(key: str) -> bool:
    """Whether a workflow may not set `key`: the names exactly, the prefixes in any case."""
    return key in FORBIDDEN_ENV_KEYS or key.upper().startswith(RESERVED_ENV_PREFIXES)


def _env_key_rule(*fields: str) -> Any:
    """A validator applying the environment variable name rules to fields."""

    def check(cls: type[BaseModel], key: str | None) -> str | None:
        return None if key is None else _valid_env_key(key)

    return field_validator(*fields)(classmethod(check))


def _rule(check: Any, what: str, *fields: str) -> Any:
    """A validator refusing a string (or each string of a list) that fails a `rules` check."""

    def validate(cls: type[BaseModel], value: Any) -> Any:
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not check(item):
                raise ValueError(f"{item!r} is not {what}")
        return value

    return field_validator(*fields)(classmethod(validate))


def _no_control_characters(*fields: str) -> Any:
    """Refuse newlines and other control characters where they could add lines to a config file."""

    def validate(cls: type[BaseModel], value: str | None) -> str | None:
        if value is not None and rules.has_control_characters(value):
            raise ValueError("may not contain newlines or other control characters")
        return value

    return field_validator(*fields)(classmethod(validate))


def _absolute(*fields: str) -> Any:
    def validate(cls: type[BaseModel], value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be an absolute path (start with /)")
        return value

    return field_validator(*fields)(classmethod(validate))


class EnvVar(_Strict):
    key: StrictStr
    value: StrictStr

    _key = _env_key_rule("key")


class ModuleArg(_Strict):
    """An argument of `use`: the reference checks nothing, since only declared inputs are used."""

    key: StrictStr
    value: StrictStr


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


class Network(StrEnum):
    HOST = "host"
    SLIRP4NETNS = "slirp4netns"
    PASTA = "pasta"


class MountOption(StrEnum):
    DEFAULT = ""
    RW = "rw"
    RO = "ro"


def _no_whitespace(value: str | None, what: str) -> str | None:
    if value is not None and (value == "" or any(c.isspace() for c in value)):
        raise ValueError(f"{what} must be non-empty and without whitespace")
    return value


class Mount(_Strict):
    """A deprecated host bind mount; paths are plain so they fit Enroot's fstab and APPTAINER_BIND."""

    host_dir: StrictStr = Field(alias="hostDir")
    container_dir: StrictStr = Field(alias="containerDir")
    options: MountOption

    @field_validator("host_dir", "container_dir")
    @classmethod
    def _plain_absolute_path(cls, path: str) -> str:
        if (
            not path.startswith("/")
            or any(c not in MOUNT_PATH_CHARS for c in path)
            or ".." in path.split("/")
        ):
            raise ValueError(
                "a mount path must be absolute, made of letters, digits and ._/+- only, without '..'"
            )
        return path


class Container(_Strict):
    image: StrictStr
    registry: StrictStr | None = None
    username: StrictStr | None = None
    password: StrictStr | None = None
    apptainer: StrictBool = False
    deepsquare_hosted: StrictBool = Field(default=False, alias="deepsquareHosted")
    mount_home: StrictBool = Field(default=False, alias="mountHome")
    read_only_root_fs: StrictBool = Field(default=False, alias="readOnlyRootFS")
    x11: StrictBool = False
    mounts: list[Mount] = Field(default_factory=list)

    @field_validator("image")
    @classmethod
    def _valid_image(cls, image: str) -> str:
        if not rules.is_image_reference(image):
            raise ValueError(
                f"invalid image name {image!r}: must be an absolute path or match "
                f"^{rules.IMAGE_NAME.pattern}$"
            )
        return image

    @field_validator("registry")
    @classmethod
    def _valid_registry(cls, registry: str | None) -> str | None:
        if registry and not rules.is_rfc952_hostname(registry):
            raise ValueError(
                f"invalid registry host {registry!r}: must be a host name (RFC 952), without a port"
            )
        return registry or None

    @field_validator("username", "password")
    @classmethod
    def _valid_credential(cls, value: str | None) -> str | None:
        return _no_whitespace(value, "a registry credential")

    @field_validator("username")
    @classmethod
    def _plain_username(cls, username: str | None) -> str | None:
        """Enroot finds the login with grep and awk: it is written in double quotes, so no `"` or `\\`."""
        if username is not None and (
            rules.has_control_characters(username) or any(c in username for c in '"\\')
        ):
            raise ValueError('a registry username may not contain control characters, " or \\')
        return username

    @field_validator("password")
    @classmethod
    def _plain_password(cls, password: str | None) -> str | None:
        if password is not None and rules.has_control_characters(password):
            raise ValueError("a registry password may not contain control characters")
        return password

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> Container:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self

    @property
    def uses_apptainer(self) -> bool:
        return self.apptainer or self.deepsquare_hosted

    @property
    def is_local_file(self) -> bool:
        return self.image.startswith("/")

    @property
    def local_path(self) -> str:
        """The absolute image path cleaned as Go's filepath.Clean does (so it stays in the job folder)."""
        cleaned = posixpath.normpath(self.image)
        return "/" + cleaned.lstrip("/")

    @property
    def image_name(self) -> str:
        """The image with Docker Hub's implicit `library/` namespace made explicit."""
        if self.registry and "docker.io" in self.registry and "/" not in self.image:
            return f"library/{self.image}"
        return self.image

    @property
    def pulled(self) -> bool:
        """Whether the image is fetched from a registry (not a local file, not provider-hosted)."""
        return not self.is_local_file and not self.deepsquare_hosted


class WireguardPeer(_Strict):
    public_key: StrictStr = Field(alias="publicKey")
    pre_shared_key: StrictStr | None = Field(default=None, alias="preSharedKey")
    allowed_ips: list[StrictStr] = Field(default_factory=list, alias="allowedIPs")
    endpoint: StrictStr | None = None
    persistent_keepalive: Annotated[StrictInt, Field(ge=0, le=PORT_MAX)] | None = Field(
        default=None, alias="persistentKeepalive"
    )

    _keys = _no_control_characters("public_key", "pre_shared_key")
    _cidrs = _rule(rules.is_cidr, "a CIDR (address/prefix)", "allowed_ips")
    _endpoint = _rule(rules.is_hostname_port, "a host:port", "endpoint")


class Wireguard(_Strict):
    address: list[StrictStr] = Field(default_factory=list)
    private_key: StrictStr = Field(alias="privateKey")
    peers: list[WireguardPeer] = Field(default_factory=list)

    _key = _no_control_characters("private_key")
    _cidrs = _rule(rules.is_cidr, "a CIDR (address/prefix)", "address")


class Bore(_Strict):
    bore_address: StrictStr | None = Field(default=None, alias="boreAddress")
    address: StrictStr | None = None
    port: Port | None = None
    target_port: Port = Field(alias="targetPort")
    secret: StrictStr | None = None

    _bore_address = _rule(rules.is_hostname_port, "a host:port", "bore_address")
    _address = _rule(lambda a: rules.is_ip(a) or rules.is_fqdn(a), "an IP or a domain name", "address")

    @property
    def target(self) -> str:
        """`boreAddress`, else the deprecated `address[:port]`."""
        if self.bore_address:
            return self.bore_address
        address = self.address or ""
        return f"{address}:{self.port}" if self.port is not None else address


class VNet(_Strict):
    name: StrictStr
    address: StrictStr

    _cidr = _rule(rules.is_cidr, "a CIDR (address/prefix)", "address")

    @property
    def ip(self) -> str:
        return self.address.split("/", 1)[0]


class NetworkInterface(_Strict):
    wireguard: Wireguard | None = None
    bore: Bore | None = None
    vnet: VNet | None = None


class StepRun(_Strict):
    command: StrictStr
    shell: Shell = Shell.SH
    env: list[EnvVar] = Field(default_factory=list)
    work_dir: StrictStr | None = Field(default=None, alias="workDir")
    resources: StepResources = Field(default_factory=StepResources)
    mpi: Mpi | None = None
    disable_cpu_binding: StrictBool = Field(default=False, alias="disableCpuBinding")
    container: Container | None = None
    network: Network = Network.HOST
    dns: list[StrictStr] = Field(default_factory=list)
    custom_network_interfaces: list[NetworkInterface] = Field(
        default_factory=list, alias="customNetworkInterfaces"
    )
    map_uid: Annotated[StrictInt, Field(ge=0, le=MAX_ID)] | None = Field(default=None, alias="mapUid")
    map_gid: Annotated[StrictInt, Field(ge=0, le=MAX_ID)] | None = Field(default=None, alias="mapGid")

    _dns = _rule(rules.is_ip, "an IP address", "dns")

    @field_validator("work_dir")
    @classmethod
    def _absolute_work_dir(cls, work_dir: str | None) -> str | None:
        if work_dir is not None and not work_dir.startswith("/"):
            raise ValueError("workDir must be an absolute path")
        if work_dir is not None and ".." in work_dir.split("/"):
            raise ValueError(
                "workDir may not contain '..': it stays inside the container, or the job's folder on the host"
            )
        return work_dir

    @model_validator(mode="after")
    def _coherent(self) -> StepRun:
        if self.is_entrypoint:
            try:
                shlex.split(self.command)
            except ValueError as error:
                raise ValueError(f"command must split into arguments with ENTRYPOINT: {error}") from None
        return self

    @property
    def is_entrypoint(self) -> bool:
        """ENTRYPOINT means the image's entrypoint; on the host it means /bin/sh, as in the reference."""
        return self.shell is Shell.ENTRYPOINT and self.container is not None

    @property
    def host_shell(self) -> str:
        return Shell.SH.value if self.shell is Shell.ENTRYPOINT else self.shell.value

    @property
    def namespaced(self) -> bool:
        return self.network is not Network.HOST

    @property
    def interfaces(self) -> list[tuple[int, Wireguard | VNet | Bore]]:
        """Each custom interface with its position, its kind chosen as the reference does."""
        chosen: list[tuple[int, Wireguard | VNet | Bore]] = []
        for index, nic in enumerate(self.custom_network_interfaces):
            kind = nic.wireguard or nic.vnet or nic.bore
            if kind is not None:
                chosen.append((index, kind))
        return chosen


class Range(_Strict):
    begin: StrictInt
    end: StrictInt
    increment: StrictInt | None = None

    @property
    def step(self) -> int:
        """`seq`'s increment: null or 0 means 1."""
        return self.increment or 1

    @property
    def iterations(self) -> int:
        count = (self.end - self.begin) // self.step + 1
        return max(count, 0)


class StepFor(_Strict):
    parallel: StrictBool = False
    items: list[StrictStr] = Field(default_factory=list)
    range: Range | None = None
    steps: list[Step]

    @property
    def iterations(self) -> int:
        return self.range.iterations if self.range is not None else len(self.items)


class StepLaunch(_Strict):
    handle_name: StrictStr | None = Field(default=None, alias="handleName")
    signal_on_parent_step_exit: Annotated[StrictInt, Field(ge=0, le=SIGNAL_MAX)] = Field(
        default=DEFAULT_SIGNAL, alias="signalOnParentStepExit"
    )
    steps: list[Step]

    @field_validator("handle_name")
    @classmethod
    def _valid_handle(cls, handle: str | None) -> str | None:
        if handle and not rules.ALNUM_UNDERSCORE.fullmatch(handle):
            raise ValueError(f"invalid handleName {handle!r}: must match ^{rules.ALNUM_UNDERSCORE.pattern}$")
        return handle or None

    @property
    def handle(self) -> str | None:
        """The handle as the reference matches it: upper case."""
        return self.handle_name.upper() if self.handle_name else None


@dataclass(frozen=True)
class ModuleSource:
    """`<host>/<owner>/<repo>[/<subdir>][@<tag-or-commit>]`, split as the reference splits it."""

    host: str
    owner: str
    repo: str
    subdir: str
    ref: str

    @classmethod
    def parse(cls, source: str) -> ModuleSource:
        location, _, ref = source.partition("@")
        parts = location.split("/")
        if len(parts) < 3:
            raise ValueError(f"module source {source!r} must be <host>/<owner>/<repo>[/<subdir>][@<ref>]")
        host, owner, repo, *subdir = parts
        if not rules.is_rfc1123_hostname(host):
            raise ValueError(f"module source host {host!r} is not a host name")
        for name in (owner, repo, *subdir):
            if not name or name.startswith(".") or any(c not in MODULE_NAME_CHARS for c in name):
                raise ValueError(f"module source part {name!r} may hold only letters, digits and ._-")
        if ref and (ref.startswith(("-", "/")) or any(c not in MODULE_REF_CHARS for c in ref) or ".." in ref):
            raise ValueError(f"module ref {ref!r} may hold only letters, digits and ._-/")
        return cls(host, owner, repo, "/".join(subdir), ref)


class StepUse(_Strict):
    source: StrictStr
    args: list[ModuleArg] = Field(default_factory=list)
    export_env_as: StrictStr | None = Field(default=None, alias="exportEnvAs")
    steps: list[Step] = Field(default_factory=list)
    _module: Module | None = PrivateAttr(default=None)

    _export = _env_key_rule("export_env_as")

    @field_validator("source")
    @classmethod
    def _valid_source(cls, source: str) -> str:
        ModuleSource.parse(source)
        return source

    @property
    def module(self) -> Module:
        """The resolved module (set by the module resolver before rendering)."""
        if self._module is None:
            raise LookupError(f"module {self.source} was not resolved")
        return self._module

    @property
    def resolved(self) -> bool:
        return self._module is not None

    def resolve(self, module: Module) -> None:
        self._module = module


class Step(_Strict):
    name: StrictStr | None = None
    depends_on: list[StrictStr] = Field(default_factory=list, alias="dependsOn")
    if_: StrictStr | None = Field(default=None, alias="if")
    steps: list[Step] = Field(default_factory=list)
    run: StepRun | None = None
    for_: StepFor | None = Field(default=None, alias="for")
    launch: StepLaunch | None = None
    use: StepUse | None = None
    catch: list[Step] = Field(default_factory=list)
    finally_: list[Step] = Field(default_factory=list, alias="finally")

    _handles = _rule(rules.ALNUM_UNDERSCORE.fullmatch, "a handle (letters, digits and _)", "depends_on")

    @property
    def kinds(self) -> list[str]:
        """The kinds given, in the reference's order of precedence (an empty group counts as none)."""
        given = (
            ("steps", bool(self.steps)),
            ("run", self.run is not None),
            ("for", self.for_ is not None),
            ("launch", self.launch is not None),
            ("use", self.use is not None),
        )
        return [kind for kind, present in given if present]

    @property
    def kind(self) -> str | None:
        """What the step does: the first kind given, or None for a step that only prints its name."""
        kinds = self.kinds
        return kinds[0] if kinds else None

    @property
    def handles(self) -> list[str]:
        return [handle.upper() for handle in self.depends_on]

    @property
    def protected(self) -> bool:
        return bool(self.catch) or bool(self.finally_)


class VirtualNetwork(_Strict):
    name: StrictStr
    gateway_address: StrictStr = Field(alias="gatewayAddress")

    _cidr = _rule(rules.is_cidr, "a CIDR (address/prefix)", "gateway_address")

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.gateway_address)


class HTTPData(_Strict):
    url: StrictStr

    _url = _rule(rules.is_url, "a URL with a scheme and a host", "url")

    @field_validator("url")
    @classmethod
    def _plain_credentials(cls, url: str) -> str:
        if not rules.userinfo_is_safe(url):
            raise ValueError("the user and password of the URL may not contain control characters")
        return url


class S3Data(_Strict):
    region: StrictStr
    bucket_url: StrictStr = Field(alias="bucketUrl")
    path: StrictStr
    access_key_id: StrictStr = Field(alias="accessKeyId")
    secret_access_key: StrictStr = Field(alias="secretAccessKey")
    endpoint_url: StrictStr = Field(alias="endpointUrl")
    delete_sync: StrictBool = Field(default=False, alias="deleteSync")

    _urls = _rule(rules.is_url, "a URL with a scheme and a host", "endpoint_url")
    _secrets = _no_control_characters("access_key_id", "secret_access_key")
    _path = _absolute("path")

    @field_validator("bucket_url")
    @classmethod
    def _bucket(cls, url: str) -> str:
        if not rules.is_url(url) or not url.startswith("s3://") or url.endswith("/"):
            raise ValueError("bucketUrl must be s3://<bucket>, without a trailing /")
        return url

    @property
    def bucket(self) -> str:
        return self.bucket_url.removeprefix("s3://")

    @property
    def key(self) -> str:
        """The key prefix inside the bucket, without its leading /."""
        return self.path.removeprefix("/")


class TransportData(_Strict):
    http: HTTPData | None = None
    s3: S3Data | None = None

    @property
    def chosen(self) -> HTTPData | S3Data | None:
        """`http` wins over `s3`, as in the reference."""
        return self.http or self.s3


class Job(_Strict):
    resources: JobResources
    env: list[EnvVar] = Field(default_factory=list)
    steps: list[Step]
    enable_logging: StrictBool = Field(default=False, alias="enableLogging")
    input: TransportData | None = None
    input_mode: Annotated[StrictInt, Field(ge=0, le=0o777)] | None = Field(default=None, alias="inputMode")
    output: TransportData | None = None
    continuous_output_sync: StrictBool = Field(default=False, alias="continuousOutputSync")
    virtual_networks: list[VirtualNetwork] = Field(default_factory=list, alias="virtualNetworks")


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
    """A module definition (`module.yaml`), also checked by GraphQL `validate`."""

    name: StrictStr
    description: StrictStr
    minimum_resources: JobResources = Field(alias="minimumResources")
    inputs: list[ModuleInput] = Field(default_factory=list)
    outputs: list[ModuleOutput] = Field(default_factory=list)
    steps: list[Step]


@dataclass
class Checked:
    """A validated job and the warnings about what was ignored in it."""

    job: Job
    warnings: list[FieldError] = field(default_factory=list)


def step_children(step: Step) -> Iterator[tuple[str, list[Step]]]:
    """The step lists inside a step, each with its path suffix (module bodies excluded)."""
    for name, children in (
        ("steps", step.steps),
        ("for.steps", step.for_.steps if step.for_ else []),
        ("launch.steps", step.launch.steps if step.launch else []),
        ("use.steps", step.use.steps if step.use else []),
        ("catch", step.catch),
        ("finally", step.finally_),
    ):
        if children:
            yield name, children


def walk(steps: list[Step], path: str = "steps", modules: bool = True) -> Iterator[tuple[str, Step]]:
    """Every step with its path, depth first; with `modules`, the bodies of resolved modules too."""
    for index, step in enumerate(steps):
        here = f"{path}[{index}]"
        yield here, step
        for name, children in step_children(step):
            yield from walk(children, f"{here}.{name}", modules)
        if modules and step.use is not None and step.use.resolved:
            yield from walk(step.use.module.steps, f"{here}.use.module.steps", modules)


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


def _walk_limits(
    steps: list[Step],
    path: str,
    depth: int,
    factor: int,
    limits: Limits,
    counter: list[int],
    errors: list[FieldError],
) -> None:
    """Structural limits (count, depth, loop sizes, fan-out) that no single model can check.

    `factor` is how many times these steps run (the enclosing loops' iterations multiplied), so
    `counter[1]` ends as the number of steps the job runs in all.
    """
    if depth > limits.max_depth:
        errors.append(FieldError(path, f"steps nested deeper than {limits.max_depth} levels"))
        return
    for index, step in enumerate(steps):
        here = f"{path}[{index}]"
        counter[0] += 1
        counter[1] += factor
        inner = factor
        if step.for_ is not None:
            loop = step.for_
            if len(loop.items) > limits.max_items:
                errors.append(FieldError(f"{here}.for.items", f"more than {limits.max_items} items"))
            if loop.range is not None and loop.iterations > limits.max_iterations:
                errors.append(
                    FieldError(
                        f"{here}.for.range",
                        f"runs {loop.iterations} iterations, more than the maximum of {limits.max_iterations}",
                    )
                )
            if loop.parallel and loop.iterations > limits.max_parallel_iterations:
                errors.append(
                    FieldError(
                        f"{here}.for",
                        f"a parallel loop may run at most {limits.max_parallel_iterations} iterations",
                    )
                )
            # Capped, so that loops inside loops cannot build a huge number before it is refused.
            inner = min(factor * loop.iterations, limits.max_step_runs + 1)
        for name, children in step_children(step):
            _walk_limits(
                children,
                f"{here}.{name}",
                depth + 1,
                inner if name == "for.steps" else factor,
                limits,
                counter,
                errors,
            )
        if step.use is not None and step.use.resolved:
            _walk_limits(
                step.use.module.steps, f"{here}.use.module.steps", depth + 1, factor, limits, counter, errors
            )


def check_limits(steps: list[Step], limits: Limits) -> list[FieldError]:
    errors: list[FieldError] = []
    counter = [0, 0]
    _walk_limits(steps, "steps", 1, 1, limits, counter, errors)
    if counter[0] > limits.max_steps:
        errors.append(FieldError("steps", f"more than {limits.max_steps} steps in total"))
    if counter[1] > limits.max_step_runs:
        errors.append(
            FieldError("steps", f"the loops would run more than {limits.max_step_runs} steps in all")
        )
    return errors


def _over(value: int, maximum: int, what: str = "") -> str | None:
    if value <= maximum:
        return None
    return f"{what or value} is more than the site's maximum of {maximum}"


def _check_resources(job: Job, limits: Limits, errors: list[FieldError]) -> None:
    """Resources within the site's maxima, and within what Slurm and 64-bit integers hold.

    Without this, int32 fields multiply into absurd values: `--gpus=<gpusPerTask x tasks>`, `MEM`.
    """
    cpus_cap = min(limits.max_cpus_per_task, SLURM_MAX_CPUS_PER_TASK)
    res = job.resources
    for name, value, maximum in (
        ("tasks", res.tasks, limits.max_tasks),
        ("cpusPerTask", res.cpus_per_task, cpus_cap),
        ("memPerCpu", res.mem_per_cpu, limits.max_mem_per_cpu),
        ("gpus", res.gpus, limits.max_gpus),
    ):
        problem = _over(value, maximum)
        if problem:
            errors.append(FieldError(f"resources.{name}", problem))
    if res.tasks * res.cpus_per_task * res.mem_per_cpu > MAX_PRODUCT:
        errors.append(FieldError("resources", "tasks x cpusPerTask x memPerCpu does not fit in 64 bits"))
    for path, step in walk(job.steps):
        if step.run is None:
            continue
        where = f"{path}.run.resources"
        step_res = step.run.resources
        gpus = step_res.gpus_per_task * step_res.tasks
        for name, value, maximum, what in (
            ("tasks", step_res.tasks, limits.max_tasks, ""),
            ("cpusPerTask", step_res.cpus_per_task or 0, cpus_cap, ""),
            ("memPerCpu", step_res.mem_per_cpu or 0, limits.max_mem_per_cpu, ""),
            ("gpusPerTask", step_res.gpus_per_task, limits.max_gpus_per_task, ""),
            ("gpusPerTask", gpus, limits.max_gpus, f"gpusPerTask x tasks = {gpus} GPUs (--gpus)"),
        ):
            problem = _over(value, maximum, what)
            if problem:
                errors.append(FieldError(f"{where}.{name}", problem))
                break


def _check_images(job: Job, errors: list[FieldError]) -> None:
    """A hosted image is a path under the provider's software root: `..` would leave it."""
    for path, step in walk(job.steps):
        container = step.run.container if step.run is not None else None
        if container is not None and container.deepsquare_hosted and ".." in container.image.split("/"):
            errors.append(
                FieldError(
                    f"{path}.run.container.image",
                    "a deepsquareHosted image may not contain '..': it must stay inside the provider's images",
                )
            )


def _check_handles(
    steps: list[Step], path: str, known: set[str], errors: list[FieldError], warnings: list[FieldError]
) -> None:
    """dependsOn may only name a handle that the step's shell knows when it runs.

    As in the reference, a group of steps and a sequential loop run in the shell of their parent,
    so their launches stay visible after them; a launch body, a parallel iteration, a module and a
    step with catch or finally run in a subshell, which sees its parent's handles but gives none back.
    """
    for index, step in enumerate(steps):
        here = f"{path}[{index}]"
        for position, handle in enumerate(step.handles):
            if handle not in known:
                errors.append(
                    FieldError(
                        f"{here}.dependsOn[{position}]",
                        f"no step launched before with handle {step.depends_on[position]!r}",
                    )
                )
        own = set(known) if step.protected else known
        kind = step.kind
        if kind == "steps":
            _check_handles(step.steps, f"{here}.steps", own, errors, warnings)
        elif kind == "for" and step.for_ is not None:
            body = set(own) if step.for_.parallel else own
            _check_handles(step.for_.steps, f"{here}.for.steps", body, errors, warnings)
        elif kind == "launch" and step.launch is not None:
            _check_handles(step.launch.steps, f"{here}.launch.steps", set(own), errors, warnings)
            launched = step.launch.handle
            if launched is not None:
                if launched in own:
                    warnings.append(
                        FieldError(
                            f"{here}.launch.handleName",
                            f"handle {step.launch.handle_name!r} was used before: "
                            "dependsOn now waits for this launch",
                        )
                    )
                own.add(launched)
        elif kind == "use" and step.use is not None and step.use.resolved:
            _check_handles(step.use.module.steps, f"{here}.use.module.steps", set(own), errors, warnings)
        if step.catch:
            _check_handles(step.catch, f"{here}.catch", set(own), errors, warnings)
        if step.finally_:
            _check_handles(step.finally_, f"{here}.finally", set(own), errors, warnings)


def _check_kinds(steps: list[Step], warnings: list[FieldError]) -> None:
    """Report what the reference silently ignores: extra kinds, and items beside a range."""
    for path, step in walk(steps):
        kinds = step.kinds
        if len(kinds) > 1:
            warnings.append(
                FieldError(
                    path, f"a step does one thing: its {kinds[0]} runs, its {', '.join(kinds[1:])} is ignored"
                )
            )
        if step.for_ is not None and step.for_.range is not None and step.for_.items:
            warnings.append(FieldError(f"{path}.for.items", "ignored: range wins over items"))


def _check_networks(job: Job, errors: list[FieldError]) -> None:
    """Every vnet names a virtual network of the job and an address inside it (not the gateway's)."""
    networks: dict[str, VirtualNetwork] = {}
    for index, network in enumerate(job.virtual_networks):
        if network.name in networks:
            errors.append(
                FieldError(f"virtualNetworks[{index}].name", f"network {network.name!r} is declared twice")
            )
        networks.setdefault(network.name, network)
    for path, step in walk(job.steps):
        if step.run is None:
            continue
        for position, nic in enumerate(step.run.custom_network_interfaces):
            if nic.vnet is None:
                continue
            where = f"{path}.run.customNetworkInterfaces[{position}].vnet"
            joined = networks.get(nic.vnet.name)
            if joined is None:
                errors.append(FieldError(f"{where}.name", f"missing virtual network: {nic.vnet.name}"))
                continue
            address = ipaddress.ip_interface(nic.vnet.address)
            gateway = joined.interface
            if address.version != gateway.version or address.ip not in gateway.network:
                errors.append(
                    FieldError(
                        f"{where}.address", f"not inside the network {gateway.network} of {joined.name!r}"
                    )
                )
            elif address.ip == gateway.ip:
                errors.append(FieldError(f"{where}.address", "is the gateway's own address"))


def _model_errors(error: ValidationError, prefix: str = "") -> list[FieldError]:
    found = []
    for item in error.errors():
        where = dotted_path(item["loc"])
        if prefix:
            where = f"{prefix}.{where}" if where else prefix
        found.append(FieldError(where, item["msg"].removeprefix("Value error, ")))
    return found


_M = TypeVar("_M", Job, Module)


def _coerced(data: object, type_: GraphQLInputType, limits: Limits) -> tuple[Any, list[FieldError]]:
    """`data` without the misplaced keys, through the GraphQL input type, within the size limits."""
    check_document(data, limits.max_nesting)
    data, warnings = strip_misplaced(data, type_)
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
    return coerced, warnings


def _model(coerced: Any, model: type[_M]) -> _M:
    try:
        return model.model_validate(coerced)
    except ValidationError as error:
        raise WorkflowError(_model_errors(error)) from None


def structural_problems(job: Job, limits: Limits) -> tuple[list[FieldError], list[FieldError]]:
    """Errors and warnings that need the whole job (modules included when resolved)."""
    errors = check_limits(job.steps, limits)
    warnings: list[FieldError] = []
    _check_handles(job.steps, "steps", set(), errors, warnings)
    _check_kinds(job.steps, warnings)
    _check_networks(job, errors)
    _check_resources(job, limits, errors)
    _check_images(job, errors)
    return errors, warnings


def check_workflow(data: object, limits: Limits | None = None) -> tuple[Checked, Any]:
    """The validated job, its warnings, and the coerced plain data (which module templates read)."""
    limits = limits or Limits()
    coerced, warnings = _coerced(data, JOB_INPUT, limits)
    job = _model(coerced, Job)
    errors, more = structural_problems(job, limits)
    if errors:
        raise WorkflowError(errors)
    return Checked(job, warnings + more), coerced


def validate_workflow(data: object, limits: Limits | None = None) -> Job:
    """Check a parsed workflow (the JSON/YAML object) and return it as a `Job`, or raise WorkflowError.

    Modules are not fetched here: `sbatch_service.modules.prepare` does both for `render` and `submit`.
    """
    return check_workflow(data, limits)[0].job


def validate_module(data: object, limits: Limits | None = None) -> Module:
    """Check a module definition the way a workflow is checked (no rendering, nothing fetched)."""
    limits = limits or Limits()
    coerced, _ = _coerced(data, MODULE_INPUT, limits)
    module = _model(coerced, Module)
    errors = check_limits(module.steps, limits)
    if errors:
        raise WorkflowError(errors)
    return module
