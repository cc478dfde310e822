"""JSON-RPC batches, as the supervisor and the sbatch service read them: each answer matched to its call.

A node may answer a batch in any order (JSON-RPC 2.0); each answer carries the id of its call, and
web3 numbers the calls of a batch in the order given.
"""

from __future__ import annotations

from typing import Any


class MalformedBatchAnswer(ValueError):
    """A node's answer to a batch that cannot be matched to the calls asked."""


def answers_in_order(asked: int, answers: object) -> list[dict[str, Any]]:
    """The answers to a batch of `asked` calls, in the order of the calls."""
    if (
        not isinstance(answers, list)
        or len(answers) != asked
        or not all(isinstance(answer, dict) for answer in answers)
    ):
        raise MalformedBatchAnswer(f"the node answered a batch of {asked} calls with {answers!r:.200}")
    if not all("id" in answer for answer in answers):
        return answers
    try:
        return sorted(answers, key=lambda answer: int(answer["id"]))
    except (TypeError, ValueError):
        raise MalformedBatchAnswer(
            f"the node answered a batch with ids that are not numbers: {answers!r:.200}"
        ) from None
