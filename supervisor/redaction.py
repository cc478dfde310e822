"""Credentials out of URLs before they reach a log line, an error message or the doctor's output.

Hosted RPC endpoints carry their API key in the path (`/v3/KEY`), the query (`?apikey=KEY`) or the
userinfo (`user:password@`). Which part is secret differs from one provider to the next, so only
`scheme://host[:port]` is kept and everything after it becomes `/…redacted`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

REDACTED_TAIL = "/…redacted"

#: A URL inside free text: a scheme, `://`, then everything up to a space, a quote or a bracket.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`\\]+")
#: Punctuation that ends a sentence rather than a URL (`see http://host/x.`).
_TRAILING = ".,;:!?)"


def redact_url(url: str) -> str:
    """`scheme://host[:port]`, plus `/…redacted` when the URL had anything after its authority."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a malformed port
    except ValueError:
        scheme = url.split("://", 1)[0]
        return f"{scheme}://{REDACTED_TAIL.lstrip('/')}"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    authority = host if port is None else f"{host}:{port}"
    has_userinfo = "@" in parts.netloc
    has_tail = parts.path not in ("", "/") or bool(parts.query) or bool(parts.fragment)
    if has_userinfo or has_tail:
        return f"{parts.scheme}://{authority}{REDACTED_TAIL}"
    return f"{parts.scheme}://{authority}{parts.path}"


def redact_text(text: str) -> str:
    """`text` with every URL in it passed through `redact_url`."""
    if "://" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        url = found.rstrip(_TRAILING)
        return redact_url(url) + found[len(url) :]

    return _URL.sub(replace, text)
