"""Connecting to the chain's JSON-RPC and telling passing failures from real answers.

Reads are retried (`supervisor.retry`, on tenacity) on transient failures (connection refused, timeouts, garbage
answers); an RPC error answer that is a real verdict (a revert) is never retried.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import structlog
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import (
    BadResponseFormat,
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    Web3RPCError,
)

from grid_protocol.rpc import MalformedBatchAnswer, answers_in_order
from supervisor.chain.abi import LENIENT_CODEC
from supervisor.redaction import redact_text
from supervisor.retry import Failure, retry_call

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_RPC_TIMEOUT_S = 10.0


class ChainIdMismatchError(RuntimeError):
    """The RPC serves another chain than the one configured."""


def connect_http(url: str, *, timeout_s: float = DEFAULT_RPC_TIMEOUT_S) -> AsyncWeb3[AsyncHTTPProvider]:
    """An AsyncWeb3 over HTTP with a per-request timeout; retries are ours (tenacity), not web3's.

    web3's validation middleware is left out: it asks the node for its chain id before every call and
    gas estimate. The chain id is checked once when the daemon starts (`check_chain_id`), and every
    transaction is signed for the configured chain, which a node of another chain refuses.
    """
    provider = AsyncHTTPProvider(
        url,
        request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout_s)},
        exception_retry_configuration=None,
    )
    w3 = AsyncWeb3(provider)
    w3.middleware_onion.remove("validation")
    w3.codec = LENIENT_CODEC
    return w3


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: the node was unreachable, slow, or answered nonsense."""
    if isinstance(exc, ContractLogicError):
        return False
    if isinstance(exc, Web3RPCError):
        message = str(getattr(exc, "message", exc)).lower()
        # A node's internal trouble is passing; any other error answer is a verdict.
        return any(word in message for word in ("timeout", "timed out", "internal error", "unavailable"))
    return isinstance(
        exc,
        (
            aiohttp.ClientError,
            asyncio.TimeoutError,
            TimeoutError,
            ConnectionError,
            OSError,
            ProviderConnectionError,
            BadResponseFormat,
            TimeExhausted,
            json.JSONDecodeError,
            UnicodeDecodeError,
        ),
    ) or (isinstance(exc, (ValueError, KeyError, TypeError)) and not isinstance(exc, Web3RPCError))


def describe(exc: BaseException) -> str:
    """A one-line description of a failure, for logs and error messages, URL credentials removed.

    aiohttp's HTTP errors name the whole request URL (`url='https://host/v3/KEY'`): it is redacted
    before the line is cut to length, so a cut can never leave half a key behind.
    """
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return redact_text(f"{type(exc).__name__}: {text}")[:300] if text else type(exc).__name__


def _log_retry(failure: Failure) -> None:
    log.warning("rpc read failed, retrying", attempt=failure.attempt, error=describe(failure.error))


async def read(call: Callable[[], Awaitable[T]], *, attempts: int = 4, max_wait_s: float = 2.0) -> T:
    """Run an RPC read, retrying transient failures with jittered exponential backoff."""
    return await retry_call(
        call,
        retry=is_transient,
        attempts=attempts,
        initial_s=0.1,
        max_s=max_wait_s,
        jitter_s=0.1,
        on_retry=_log_retry,
    )


async def check_chain_id(w3: AsyncWeb3[Any], expected: int | None) -> int:
    """The RPC's chain id; raises ChainIdMismatchError when it is not the expected one."""
    chain_id = int(await read(lambda: w3.eth.chain_id))
    if expected is not None and chain_id != expected:
        raise ChainIdMismatchError(
            f"the RPC serves chain id {chain_id}, but chain id {expected} is configured"
        )
    return chain_id


#: Calls per JSON-RPC batch request: well under what public nodes accept (often 100 to 1,000).
BATCH_LIMIT = 100


async def batch_request(w3: AsyncWeb3[Any], requests: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Raw JSON-RPC calls sent as batches of BATCH_LIMIT, the answers in the order asked (each a dict
    with `result` or `error`). The whole read is retried on a transient failure; an answer that does
    not match the request (count or ids) is one, as a node's garbage is."""
    answers: list[dict[str, Any]] = []
    for start in range(0, len(requests), BATCH_LIMIT):
        chunk = requests[start : start + BATCH_LIMIT]
        got = await read(lambda c=chunk: w3.provider.make_batch_request(c))  # type: ignore[misc]
        try:
            answers.extend(answers_in_order(len(chunk), got))
        except MalformedBatchAnswer as bad:
            raise BadResponseFormat(str(bad)) from None
    return answers


def rpc_error_message(answer: dict[str, Any]) -> str:
    error = answer.get("error")
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)


def rpc_error_data(answer: dict[str, Any]) -> str | None:
    """The revert data of an error answer (`error.data`, or `error.data.data` as some nodes nest it)."""
    error = answer.get("error")
    data = error.get("data") if isinstance(error, dict) else None
    if isinstance(data, dict):
        data = data.get("data")
    return data if isinstance(data, str) and data.startswith("0x") else None
