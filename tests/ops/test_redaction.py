"""URL credentials never reach a log line or an error message: the redaction, the log processors and
`describe()` on real failures (aiohttp's HTTP errors name the full request URL)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import structlog
from aiohttp import web

from supervisor.chain.rpc import connect_http, describe, read
from supervisor.logs import configure_logging
from supervisor.redaction import REDACTED_TAIL, redact_text, redact_url

KEY = "9f1c2b7e4d5a6f8091a2b3c4d5e6f708"
QUERY_KEY = "qk-5e6f70891a2b3c4d"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("http://127.0.0.1:8545/", "http://127.0.0.1:8545/"),
        (f"https://mainnet.infura.io/v3/{KEY}", f"https://mainnet.infura.io{REDACTED_TAIL}"),
        (f"https://rpc.example.org:8443/?apikey={KEY}", f"https://rpc.example.org:8443{REDACTED_TAIL}"),
        (f"wss://ws.example.org/ws/v3/{KEY}?x={QUERY_KEY}", f"wss://ws.example.org{REDACTED_TAIL}"),
        (f"https://user:{KEY}@rpc.example.org", f"https://rpc.example.org{REDACTED_TAIL}"),
        (f"http://[::1]:8545/{KEY}", f"http://[::1]:8545{REDACTED_TAIL}"),
        (f"https://rpc.example.org#{KEY}", f"https://rpc.example.org{REDACTED_TAIL}"),
        (f"http://host:notaport/{KEY}", "http://…redacted"),
    ],
)
def test_only_scheme_host_and_port_are_kept(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert KEY not in redact_url(url)


def test_urls_inside_text_are_redacted_and_the_rest_is_kept() -> None:
    text = (
        f"503, message='Service Unavailable', url='https://rpc.example.org/v3/{KEY}?k={QUERY_KEY}' "
        f"(then ws: wss://ws.example.org/{KEY}). Plain http://127.0.0.1:8545, done."
    )
    redacted = redact_text(text)
    assert KEY not in redacted and QUERY_KEY not in redacted
    assert redacted == (
        "503, message='Service Unavailable', url='https://rpc.example.org/…redacted' "
        "(then ws: wss://ws.example.org/…redacted). Plain http://127.0.0.1:8545, done."
    )
    assert redact_text("no address here") == "no address here"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


class Endpoint:
    """An object whose repr shows its URL, as settings and client objects do."""

    def __repr__(self) -> str:
        return f"Endpoint(url='https://rpc.example.org/v3/{KEY}')"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_value_of_a_log_line_is_redacted(fmt: str) -> None:
    out = io.StringIO()
    configure_logging("info", fmt, out)  # type: ignore[arg-type]
    log = structlog.get_logger("supervisor")
    url = f"https://rpc.example.org/v3/{KEY}?apikey={QUERY_KEY}"
    log.info(f"connecting to {url}", url=url, nested={"urls": [url, (url,)]}, endpoint=Endpoint(), n=3)
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError:
        log.exception("failed")
    logging.getLogger("aiohttp.client").warning("library says %s", url)
    text = out.getvalue()
    assert KEY not in text and QUERY_KEY not in text, text
    assert text.count("rpc.example.org") >= 6  # the lines are there, only their secrets went
    if fmt == "json":
        lines = [json.loads(line) for line in text.splitlines()]
        first = lines[0]
        assert first["url"] == "https://rpc.example.org/…redacted"
        assert first["nested"] == {
            "urls": ["https://rpc.example.org/…redacted", ["https://rpc.example.org/…redacted"]]
        }
        assert first["n"] == 3
        assert "cannot reach https://rpc.example.org/…redacted" in lines[1]["exception"]
        assert lines[2]["event"] == "library says https://rpc.example.org/…redacted"


@pytest.fixture
async def failing_rpc() -> AsyncIterator[str]:
    """A real HTTP server answering 503 to every JSON-RPC call, at a URL with a key in it."""

    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="overloaded")

    app = web.Application()
    app.router.add_post("/{tail:.*}", unavailable)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v3/{KEY}?apikey={QUERY_KEY}"
    finally:
        await runner.cleanup()


async def test_describe_of_a_real_http_error_keeps_no_key(failing_rpc: str) -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    w3 = connect_http(failing_rpc, timeout_s=5)
    with pytest.raises(aiohttp.ClientResponseError) as caught:
        await read(lambda: w3.eth.chain_id, attempts=3, max_wait_s=0.05)
    assert KEY in str(caught.value)  # aiohttp names the whole URL ...
    described = describe(caught.value)
    assert KEY not in described and QUERY_KEY not in described  # ... describe() does not
    assert described.startswith("ClientResponseError: 503") and "127.0.0.1" in described
    retries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [entry["event"] for entry in retries] == ["rpc read failed, retrying"] * 2
    assert all(KEY not in entry["error"] and "…redacted" in entry["error"] for entry in retries)
    await w3.provider.disconnect()
    await asyncio.sleep(0)


def test_a_long_message_is_cut_after_redaction() -> None:
    padding = "x" * 280
    described = describe(RuntimeError(f"{padding} https://rpc.example.org/v3/{KEY}"))
    assert len(described) <= 300
    assert not any(KEY[:n] in described for n in range(4, len(KEY)))
