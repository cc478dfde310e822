"""Modules (`use`) resolved from a local git repository made by the tests, as the reference resolves
them (default branch, tag, commit, monorepo tag), rendered as Go templates and run on Slurm."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sbatch_service.gotemplate import TemplateError, render_template
from sbatch_service.models import WorkflowError
from sbatch_service.modules import GitFetcher, ModuleSettings, prepare
from tests.fixtures.slurm import SlurmCluster
from tests.sbatch_service.module_repo import SOURCE, make_module_repo
from tests.sbatch_service.slurm_helpers import render_for_slurm, run_on_slurm

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[GitFetcher, dict[str, str]]:
    settings, commits = make_module_repo(tmp_path_factory.mktemp("modules"))
    return GitFetcher(settings), commits


def job(*steps: dict[str, Any], cpus: int = 2) -> dict[str, Any]:
    return {"resources": {"tasks": 1, "cpusPerTask": cpus, "memPerCpu": 200, "gpus": 0}, "steps": list(steps)}


def use(source: str, **fields: Any) -> dict[str, Any]:
    return {"name": "m", "use": {"source": source, **fields}}


def module_of(data: dict[str, Any], fetcher: GitFetcher) -> Any:
    step_use = prepare(data, fetcher=fetcher).job.steps[0].use
    assert step_use is not None
    return step_use.module


@pytest.mark.parametrize(
    ("ref", "description"),
    [
        ("", "The second version, on the default branch."),
        ("@v1", "Greets someone and exports the greeting."),
        ("@first", "Greets someone and exports the greeting."),
        ("@first-short", "Greets someone and exports the greeting."),
    ],
    ids=["default-branch", "tag", "commit", "short-commit"],
)
def test_sources_resolve_as_the_reference_resolves_them(
    repository: tuple[GitFetcher, dict[str, str]], ref: str, description: str
) -> None:
    fetcher, commits = repository
    if ref == "@first":
        ref = "@" + commits["first"]
    elif ref == "@first-short":
        ref = "@" + commits["first"][:7]
    assert module_of(job(use(SOURCE + ref)), fetcher).description == description


def test_a_monorepo_tag_names_the_subdirectory(repository: tuple[GitFetcher, dict[str, str]]) -> None:
    fetcher, _ = repository
    assert module_of(job(use(SOURCE + "/heavy@v1"), cpus=4) | {"resources": big()}, fetcher).name == "heavy"


def big() -> dict[str, int]:
    return {"tasks": 1, "cpusPerTask": 4, "memPerCpu": 200, "gpus": 1}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            job(use(SOURCE + "/heavy@v1")),
            f"not enough cpu per task to use the module {SOURCE}/heavy@v1, minimum=4, actual=2",
        ),
        (
            {**job(use(SOURCE + "/heavy@v1")), "resources": {**big(), "gpus": 0}},
            f"not enough gPUs to use the module {SOURCE}/heavy@v1, minimum=1, actual=0",
        ),
        (
            job(use(SOURCE + "@v9")),
            f"cannot fetch module {SOURCE}@v9: fatal: couldn't find remote ref refs/tags/v9",
        ),
        (
            job(use(SOURCE + "/nowhere")),
            f"cannot fetch module {SOURCE}/nowhere: failed to find nowhere/module.yaml",
        ),
        (job(use(SOURCE + "/link")), f"cannot fetch module {SOURCE}/link: failed to find link/module.yaml"),
        (job(use("example.org/grid/none")), "cannot fetch module example.org/grid/none: fatal: "),
        (job(use("github.com/org/module")), "modules from github.com are not allowed by this service"),
    ],
    ids=[
        "too-few-cpus",
        "too-few-gpus",
        "unknown-tag",
        "no-module-file",
        "symlink-out",
        "no-repository",
        "host",
    ],
)
def test_modules_that_cannot_be_used_refuse_the_workflow(
    repository: tuple[GitFetcher, dict[str, str]], data: dict[str, Any], message: str
) -> None:
    fetcher, _ = repository
    with pytest.raises(WorkflowError) as caught:
        prepare(data, fetcher=fetcher)
    (error,) = caught.value.errors
    assert error.field in ("steps[0].use", "steps[0].use.source")
    assert message in error.message


def test_a_module_with_bad_steps_is_refused_naming_its_field(tmp_path: Path) -> None:
    class Fetcher:
        def fetch(self, source: object) -> str:
            return (
                "name: bad\ndescription: bad\nminimumResources: {tasks: 1, cpusPerTask: 1, memPerCpu: 1}\n"
                "steps:\n  - run: {command: x, workDir: relative}\n"
            )

    with pytest.raises(WorkflowError) as caught:
        prepare(job(use("example.org/a/b")), fetcher=Fetcher())
    assert [(e.field, e.message) for e in caught.value.errors] == [
        ("steps[0].use.module.steps[0].run.workDir", "workDir must be an absolute path")
    ]


def test_the_fetch_has_a_timeout(tmp_path: Path) -> None:
    fetcher = GitFetcher(
        ModuleSettings(url_template="file:///nonexistent/{host}", allowed_hosts=("*",), timeout_seconds=0.001)
    )
    with pytest.raises(WorkflowError, match=re.escape("cannot fetch module example.org/a/b: git")):
        prepare(job(use("example.org/a/b")), fetcher=fetcher)


@pytest.mark.parametrize(
    ("template", "data", "expected"),
    [
        (
            "{{ .Job.Resources.CPUsPerTask }}-{{ .Job.Resources.MemPerCPU }}",
            {"Job": {"resources": {"cpusPerTask": 2, "memPerCpu": 9}}},
            "2-9",
        ),
        ("{{- if .A }}yes{{ else if .B }}b{{ else }}no{{ end -}}", {"A": 0, "B": "x"}, "b"),
        (
            "{{ range $i, $s := .L }}{{ $i }}={{ $s | upper }},{{ else }}none{{ end }}",
            {"L": ["a", "b"]},
            "0=A,1=B,",
        ),
        ("{{ range .L }}x{{ else }}none{{ end }}", {"L": []}, "none"),
        (
            '{{ with .S }}{{ .N | quote }}{{ end }}|{{ .Missing | default "d" }}',
            {"S": {"n": 'a"b'}},
            '"a\\"b"|d',
        ),
        (
            "a\n  {{- .X | toYaml | nindent 2 }}\nz",
            {"X": [{"name": "s", "run": {"command": "l1\nl2"}}]},
            "a\n  - name: s\n    run:\n      command: |-\n        l1\n        l2\nz",
        ),
        ("[{{ .X | toYaml }}]", {"X": None}, "[]"),
        (
            '{{ printf "%s:%d" .S 3 }} {{ add 1 2 }} {{ mul 2 3 4 }} {{ len .L }}',
            {"S": "s", "L": [1, 2]},
            "s:3 3 24 2",
        ),
        ('{{/* a comment */}}{{ $x := "v" }}{{ $x }}{{ $.Top }}', {"Top": "!"}, "v!"),
        ('{{ eq .A "x" "y" }} {{ and 1 0 }} {{ or 0 "z" }} {{ not .A }}', {"A": "y"}, "true 0 z false"),
    ],
)
def test_the_go_template_subset(template: str, data: Any, expected: str) -> None:
    assert render_template(template, data) == expected


@pytest.mark.parametrize(
    "template",
    ["{{ .A.B }}", "{{ nope 1 }}", "{{ if .A }}x", "{{ end }}", '{{ template "x" }}', "{{ .A | .B }}"],
)
def test_template_errors_are_reported(template: str) -> None:
    with pytest.raises(TemplateError):
        render_template(template, {"A": None})


def test_a_module_runs_on_slurm_with_its_env_contract(
    slurm_cluster: SlurmCluster, repository: tuple[GitFetcher, dict[str, str]], tmp_path: Path
) -> None:
    fetcher, _ = repository
    out = tmp_path / "out"
    out.mkdir()
    workflow: dict[str, Any] = {
        "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 200, "gpus": 0},
        "env": [{"key": "OUT", "value": str(out)}, {"key": "PUNCTUATION", "value": "outer value"}],
        "steps": [
            use(
                SOURCE + "@v1",
                args=[
                    {"key": "WHO", "value": 'Grid\'s "users" $(touch canary)'},
                    {"key": "OTHER", "value": "x"},
                ],
                exportEnvAs="HELLO",
                steps=[{"name": "caller", "run": {"command": 'echo "$WHO" > "$OUT/inside"'}}],
            ),
            {"name": "nested", "use": {"source": SOURCE + "/nested@v1", "exportEnvAs": "OUTER"}},
            {
                "name": "after",
                "run": {
                    "shell": "/bin/bash",
                    "command": 'env | grep -E "^(HELLO|OUTER|GREETING|OTHER)" | sort > "$OUT/after"',
                },
            },
        ],
    }
    job_, script = render_for_slurm(workflow, tmp_path / "storage", fetcher)
    finished = run_on_slurm(script, job_, tmp_path / "job")
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    who = 'Grid\'s "users" $(touch canary)'
    assert f"Hello {who}\n" in finished.output, "an input without an arg is exported empty"
    assert (out / "inside").read_text() == f"{who}\n", "the caller's steps run inside the module"
    assert (out / "after").read_text().splitlines() == [
        f"HELLO_GREETING=Hello {who}",
        "OUTER_INNER_GREETING=Hello inner",
    ]
    assert not (tmp_path / "job" / "canary").exists()


def test_a_module_template_never_sees_the_customers_credentials(tmp_path: Path) -> None:
    class Fetcher:
        def fetch(self, source: object) -> str:
            return (
                "name: leak\ndescription: tries to copy secrets\n"
                "minimumResources: {tasks: 1, cpusPerTask: 1, memPerCpu: 1}\n"
                "steps:\n  - run: {command: 'echo {{ .Job.Output.S3.SecretAccessKey }} {{ .Job.Input.HTTP.URL }}"
                " {{ (index .Step.Use.Steps 0).Run.Container.Password }}'}\n"
            )

    secret_run = {"command": "x", "container": {"image": "x", "username": "u", "password": "registry-secret"}}
    data = {
        **job(use("example.org/a/b", steps=[{"run": secret_run}])),
        "input": {"http": {"url": "https://user:url-secret@example.org/in.zip"}},
        "output": {
            "s3": {
                "region": "r",
                "bucketUrl": "s3://b",
                "path": "/",
                "accessKeyId": "key-id",
                "secretAccessKey": "s3-secret",
                "endpointUrl": "https://s3.example.org",
            }
        },
    }
    step_use = prepare(data, fetcher=Fetcher()).job.steps[0].use
    assert step_use is not None
    command = step_use.module.steps[0].run.command if step_use.module.steps[0].run else ""
    assert command == "echo <redacted> https://example.org/in.zip <redacted>"


def test_a_prefix_that_makes_an_output_a_reserved_name_is_refused(
    repository: tuple[GitFetcher, dict[str, str]],
) -> None:
    """`LD` + `_GREETING` would export LD_GREETING: refused at submit time, naming exportEnvAs."""
    fetcher, _ = repository
    with pytest.raises(WorkflowError) as caught:
        prepare(job(use(SOURCE + "@v1", exportEnvAs="LD")), fetcher=fetcher)
    assert [(e.field, e.message) for e in caught.value.errors] == [
        (
            "steps[0].use.exportEnvAs",
            "the module's output GREETING would set LD_GREETING, which may not be set",
        )
    ]
