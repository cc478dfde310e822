"""Modules (`use`): fetched at submit time, rendered as Go templates, validated, checked against the job.

A source `<host>/<owner>/<repo>[/<subdir>][@<ref>]` is fetched with git from the configured URL
template (`https://{host}/{owner}/{repo}` by default, a local folder in tests), as the reference
fetches it: the default branch without a ref, a commit for 7 to 40 hex digits, otherwise a tag
(`<subdir>/<ref>` in a monorepo). `<subdir>/module.yaml` is read from git's objects (a symlink in the
repository is never followed), rendered with `{Job, Step}` (`sbatch_service.gotemplate`; their
credentials redacted), parsed
with its unknown keys dropped, validated like a workflow, and refused when it needs more resources
than the job has. A module that cannot be fetched refuses the workflow with a clear message.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from sbatch_service.documents import load_yaml
from sbatch_service.errors import FieldError, WorkflowError
from sbatch_service.gotemplate import TemplateError, render_template
from sbatch_service.models import (
    Checked,
    Job,
    Limits,
    Module,
    ModuleSource,
    Step,
    check_workflow,
    reserved_env_name,
    structural_problems,
    validate_module,
)
from sbatch_service.rules import split_userinfo
from sbatch_service.schema import MODULE_INPUT, drop_unknown

COMMIT = re.compile(r"[a-f0-9]{7,40}")
MODULE_FILE = "module.yaml"
SECRET_FIELDS = frozenset(
    {"accessKeyId", "secretAccessKey", "password", "privateKey", "preSharedKey", "secret"}
)
REDACTED = "<redacted>"


def redacted(data: Any) -> Any:
    """Workflow data as a module template sees it: credentials replaced, URLs without user:password@.

    A third-party module must not be able to copy a customer's keys into its steps.
    """
    if isinstance(data, dict):
        cleaned = {}
        for key, value in data.items():
            if key in SECRET_FIELDS and isinstance(value, str):
                cleaned[key] = REDACTED
            elif key == "url" and isinstance(value, str):
                cleaned[key] = split_userinfo(value)[0]
            else:
                cleaned[key] = redacted(value)
        return cleaned
    if isinstance(data, list):
        return [redacted(item) for item in data]
    return data


@dataclass(frozen=True)
class ModuleSettings:
    """Where modules come from; `allowed_hosts` of `*` allows any host."""

    url_template: str = "https://{host}/{owner}/{repo}"
    allowed_hosts: tuple[str, ...] = ("github.com", "gitlab.com", "codeberg.org", "bitbucket.org")
    timeout_seconds: float = 30.0
    max_bytes: int = 256 * 1024


class ModuleFetcher(Protocol):
    def fetch(self, source: ModuleSource) -> str:
        """The text of the module's module.yaml, or raise ModuleFetchError."""
        ...


class ModuleFetchError(Exception):
    """A module could not be fetched; the message says why, for the customer."""


@dataclass
class GitFetcher:
    """Fetches module.yaml with the git command, within a timeout and a size cap."""

    settings: ModuleSettings = field(default_factory=ModuleSettings)

    def url(self, source: ModuleSource) -> str:
        allowed = self.settings.allowed_hosts
        if "*" not in allowed and source.host.lower() not in {host.lower() for host in allowed}:
            raise ModuleFetchError(f"modules from {source.host} are not allowed by this service")
        return self.settings.url_template.format(host=source.host, owner=source.owner, repo=source.repo)

    def _git(self, folder: str, *args: str) -> str:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": folder,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "LANG": "C",
        }
        try:
            done = subprocess.run(
                ["git", "-C", folder, *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=self.settings.timeout_seconds,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ModuleFetchError(
                f"git {args[0]} took longer than {self.settings.timeout_seconds:g} s"
            ) from None
        if done.returncode != 0:
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
            raise ModuleFetchError((fatal or lines or [f"git {args[0]} failed"])[0])
        return done.stdout

    def fetch(self, source: ModuleSource) -> str:
        url = self.url(source)
        with tempfile.TemporaryDirectory(prefix="grid-module-") as folder:
            self._git(folder, "init", "-q")
            if not source.ref:
                self._git(folder, "fetch", "-q", "--depth", "1", "--", url, "HEAD")
                revision = "FETCH_HEAD"
            elif COMMIT.fullmatch(source.ref):
                self._git(
                    folder,
                    "fetch",
                    "-q",
                    "--",
                    url,
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                )
                revision = self._git(
                    folder, "rev-parse", "--verify", "--quiet", f"{source.ref}^{{commit}}"
                ).strip()
            else:
                tag = f"{source.subdir}/{source.ref}" if source.subdir else source.ref
                self._git(
                    folder, "fetch", "-q", "--depth", "1", "--", url, f"+refs/tags/{tag}:refs/tags/{tag}"
                )
                revision = f"refs/tags/{tag}"
            path = f"{source.subdir}/{MODULE_FILE}" if source.subdir else MODULE_FILE
            listing = self._git(folder, "ls-tree", revision, "--", path).split()
            if len(listing) < 4 or listing[1] != "blob" or listing[0] not in {"100644", "100755"}:
                raise ModuleFetchError(f"failed to find {path}")
            size = int(self._git(folder, "cat-file", "-s", listing[2]).strip())
            if size > self.settings.max_bytes:
                raise ModuleFetchError(f"{path} is {size} bytes, more than {self.settings.max_bytes}")
            return self._git(folder, "cat-file", "blob", listing[2])


class NoModules:
    """For callers that must not fetch anything: every `use` is refused."""

    def fetch(self, source: ModuleSource) -> str:
        raise ModuleFetchError("this service does not fetch modules")


def _parse(text: str, where: str, limits: Limits) -> Any:
    return load_yaml(
        text,
        limits.max_nesting,
        where,
        what="the rendered module is not valid YAML",
        aliases="the module uses YAML aliases, which are not allowed",
    )


RESOURCE_NAMES = (
    ("cpus_per_task", "cpu per task"),
    ("mem_per_cpu", "mem per cpu"),
    ("gpus", "gPUs"),
    ("tasks", "tasks"),
)


def _check_resources(module: Module, job: Job, source: str, where: str) -> None:
    for attribute, name in RESOURCE_NAMES:
        minimum = getattr(module.minimum_resources, attribute)
        actual = getattr(job.resources, attribute)
        if actual < minimum:
            raise WorkflowError(
                [
                    FieldError(
                        where,
                        f"not enough {name} to use the module {source}, minimum={minimum}, actual={actual}",
                    )
                ]
            )


def _check_exported_names(module: Module, prefix: str | None, where: str) -> None:
    """`<PREFIX>_<KEY>` lands in $DEEPSQUARE_ENV: it must be a name a workflow may set."""
    if not prefix:
        return
    for output in module.outputs:
        name = f"{prefix}_{output.key}"
        if reserved_env_name(name):
            raise WorkflowError(
                [
                    FieldError(
                        where, f"the module's output {output.key} would set {name}, which may not be set"
                    )
                ]
            )


def _uses(steps: list[Step], data: list[Any], path: str) -> Iterator[tuple[str, Step, dict[str, Any]]]:
    """Every `use` step with its path and its plain data (the template's `.Step`), module bodies excluded."""
    for index, (step, item) in enumerate(zip(steps, data, strict=False)):
        here = f"{path}[{index}]"
        if not isinstance(item, dict):
            continue
        if step.use is not None:
            yield here, step, item
        for key, children, raw in (
            ("steps", step.steps, item.get("steps")),
            ("for.steps", step.for_.steps if step.for_ else [], (item.get("for") or {}).get("steps")),
            (
                "launch.steps",
                step.launch.steps if step.launch else [],
                (item.get("launch") or {}).get("steps"),
            ),
            ("use.steps", step.use.steps if step.use else [], (item.get("use") or {}).get("steps")),
            ("catch", step.catch, item.get("catch")),
            ("finally", step.finally_, item.get("finally")),
        ):
            if children and isinstance(raw, list):
                yield from _uses(children, raw, f"{here}.{key}")


@dataclass
class _Resolution:
    job: Job
    job_data: dict[str, Any]
    fetcher: ModuleFetcher
    limits: Limits
    warnings: list[FieldError]

    def resolve(self, steps: list[Step], data: list[Any], path: str, depth: int) -> None:
        for where, step, item in _uses(steps, data, path):
            assert step.use is not None
            if depth > self.limits.max_module_depth:
                raise WorkflowError(
                    [
                        FieldError(
                            f"{where}.use",
                            f"modules nested deeper than {self.limits.max_module_depth} levels",
                        )
                    ]
                )
            source = step.use.source
            try:
                text = self.fetcher.fetch(ModuleSource.parse(source))
            except ModuleFetchError as error:
                raise WorkflowError(
                    [FieldError(f"{where}.use.source", f"cannot fetch module {source}: {error}")]
                ) from None
            try:
                rendered = render_template(text, {"Job": redacted(self.job_data), "Step": redacted(item)})
            except TemplateError as error:
                raise WorkflowError(
                    [FieldError(f"{where}.use.source", f"cannot render module {source}: {error}")]
                ) from None
            raw = _parse(rendered, f"{where}.use.source", self.limits)
            cleaned = drop_unknown(raw, MODULE_INPUT)
            try:
                module = validate_module(cleaned, self.limits)
            except WorkflowError as error:
                raise WorkflowError(
                    [
                        FieldError(f"{where}.use.module.{e.field}" if e.field else f"{where}.use", e.message)
                        for e in error.errors
                    ]
                ) from None
            _check_resources(module, self.job, source, f"{where}.use")
            _check_exported_names(module, step.use.export_env_as, f"{where}.use.exportEnvAs")
            step.use.resolve(module)
            body = cleaned.get("steps") if isinstance(cleaned, dict) else None
            self.resolve(
                module.steps, body if isinstance(body, list) else [], f"{where}.use.module.steps", depth + 1
            )


def prepare(data: object, limits: Limits | None = None, fetcher: ModuleFetcher | None = None) -> Checked:
    """The one path of `grid-sbatch render` and GraphQL `submit`: validate, fetch modules, check again."""
    limits = limits or Limits()
    checked, coerced = check_workflow(data, limits)
    resolution = _Resolution(checked.job, coerced, fetcher or NoModules(), limits, checked.warnings)
    resolution.resolve(checked.job.steps, coerced.get("steps") or [], "steps", 1)
    if any(step.use is not None for _, step in _walk_uses(checked.job)):
        errors, warnings = structural_problems(checked.job, limits)
        if errors:
            raise WorkflowError(errors)
        known = {(w.field, w.message) for w in checked.warnings}
        checked.warnings.extend(w for w in warnings if (w.field, w.message) not in known)
    return checked


def _walk_uses(job: Job) -> Iterator[tuple[str, Step]]:
    from sbatch_service.models import walk

    return walk(job.steps)
