"""Parsing workflow text (YAML or JSON) into the plain object that validation checks."""

from __future__ import annotations

import json

import yaml

from sbatch_service.models import Checked, FieldError, Job, Limits, WorkflowError
from sbatch_service.modules import ModuleFetcher, prepare


def parse_workflow_text(text: str, limits: Limits | None = None) -> object:
    """The workflow object of a YAML or JSON document; refuses oversized text and YAML aliases.

    Aliases are refused because a few bytes of them can expand into a huge object.
    """
    limits = limits or Limits()
    size = len(text.encode())
    if size > limits.max_workflow_bytes:
        raise WorkflowError(
            [FieldError("", f"the workflow is {size} bytes, more than {limits.max_workflow_bytes}")]
        )
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise WorkflowError([FieldError("", f"invalid JSON: {error}")]) from None
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise WorkflowError([FieldError("", "YAML aliases are not allowed in a workflow")])
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise WorkflowError([FieldError("", f"invalid YAML: {error}")]) from None


def load_checked(text: str, limits: Limits | None = None, fetcher: ModuleFetcher | None = None) -> Checked:
    """Parse, validate and resolve modules; the verdict GraphQL `submit` gives the same object."""
    return prepare(parse_workflow_text(text, limits), limits, fetcher)


def load_workflow(text: str, limits: Limits | None = None, fetcher: ModuleFetcher | None = None) -> Job:
    """Parse and validate workflow text (modules only with a fetcher); warnings are dropped."""
    return load_checked(text, limits, fetcher).job
