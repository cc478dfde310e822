"""Matching a JSON-RPC batch's answers to its calls: what a node may send back, and what it must not."""

from __future__ import annotations

from typing import Any

import pytest

from grid_protocol.rpc import MalformedBatchAnswer, answers_in_order


def test_answers_are_put_back_in_the_order_of_their_calls() -> None:
    answers = [{"jsonrpc": "2.0", "id": n, "result": hex(n)} for n in (12, 10, 11)]
    assert [a["result"] for a in answers_in_order(3, answers)] == ["0xa", "0xb", "0xc"]


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ({"error": {"code": -32600, "message": "batch not allowed"}}, "with {'error'"),
        ([{"id": 1, "result": "0x"}], "a batch of 2 calls"),
        ([{"id": 1, "result": "0x"}, "garbage"], "a batch of 2 calls"),
        ([{"id": 1, "result": "0x"}, {"id": "two", "result": "0x"}], "ids that are not numbers"),
    ],
    ids=["not a list", "one answer missing", "not an object", "id not a number"],
)
def test_an_answer_that_cannot_be_matched_is_refused_with_what_came(answer: Any, named: str) -> None:
    with pytest.raises(MalformedBatchAnswer, match=named):
        answers_in_order(2, answer)
