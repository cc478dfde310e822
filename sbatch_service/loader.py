"""Parsing workflow text (YAML or JSON) into the plain object that validation checks."""

from __future__ import annotations

from sbatch_service.documents import check_document, load_json, load_yaml
from sbatch_service.models import Checked, FieldError, Job, Limits, WorkflowError
from sbatch_service.modules import ModuleFetcher, prepare


def parse_workflow_text(text: str, limits: Limits | None = None) -> object:
    """The workflow object of a YAML or JSON document; refuses oversized or too deeply nested text,
    YAML aliases and lone surrogates, each with a message (never a parser's crash)."""
    limits = limits or Limits()
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_workflow_bytes:
        raise WorkflowError(
            [FieldError("", f"the workflow is {size} bytes, more than {limits.max_workflow_bytes}")]
        )
    if text.lstrip().startswith("{"):
        data = load_json(text, limits.max_nesting)
    else:
        data = load_yaml(text, limits.max_nesting)
    check_document(data, limits.max_nesting)
    return data


def load_checked(text: str, limits: Limits | None = None, fetcher: ModuleFetcher | None = None) -> Checked:
    """Parse, validate and resolve modules; the verdict GraphQL `submit` gives the same object."""
    return prepare(parse_workflow_text(text, limits), limits, fetcher)


def load_workflow(text: str, limits: Limits | None = None, fetcher: ModuleFetcher | None = None) -> Job:
    """Parse and validate workflow text (modules only with a fetcher); warnings are dropped."""
    return load_checked(text, limits, fetcher).job
