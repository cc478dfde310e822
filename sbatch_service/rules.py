"""The reference's field rules (go-playground/validator tags), implemented without backtracking regexes.

Each function answers whether a string passes one rule, exactly as WORKFLOW-REFERENCE.md section 0
defines it, so that a workflow the reference accepts is accepted here too.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, urlsplit, urlunsplit

ENV_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
ALNUM_UNDERSCORE = re.compile(r"[A-Za-z0-9_]+")
IMAGE_NAME = re.compile(r"[a-z0-9/._-]+(:[A-Za-z0-9._:-]+)?")
_RFC1123_LABEL = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9-]{0,62}")
_FQDN_LAST_LABEL = re.compile(r"[a-zA-Z][a-zA-Z0-9]{0,62}")
_HOSTNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def has_control_characters(text: str) -> bool:
    """Any C0 control character or DEL (newline and tab included)."""
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def is_rfc952_hostname(text: str) -> bool:
    """`^[a-zA-Z]([a-zA-Z0-9-]+\\.?)*[a-zA-Z0-9]$`, checked in linear time.

    The pattern means: a letter, then runs of letters, digits and `-` each followed by at most one
    dot, then a letter or digit. So at least 2 characters, no `..`, and no dot right after the first
    letter; no port and no IPv4 address.
    """
    if len(text) < 2 or not (text[0].isascii() and text[0].isalpha()):
        return False
    if not (text[-1].isascii() and text[-1].isalnum()):
        return False
    if any(c not in _HOSTNAME_CHARS for c in text) or ".." in text:
        return False
    return text[1] != "."


def is_rfc1123_hostname(text: str) -> bool:
    """Labels of letters, digits and `-` (not starting with `-`), up to 63 characters, joined by dots."""
    return bool(text) and all(_RFC1123_LABEL.fullmatch(label) for label in text.split("."))


def is_hostname_port(text: str) -> bool:
    """`host:port` with a port 1-65535 and an empty or RFC 1123 host (so IPv4, not IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host or not port.isascii() or not port.isdigit():
        return False
    if not 1 <= int(port) <= 65535:
        return False
    return host == "" or is_rfc1123_hostname(host)


def is_ip(text: str) -> bool:
    """An IPv4 or IPv6 address literal (no zone)."""
    if "%" in text or has_control_characters(text):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_cidr(text: str) -> bool:
    """`address/prefix`, IPv4 or IPv6, host bits allowed (`10.0.0.2/24`)."""
    if "/" not in text or "%" in text or has_control_characters(text):
        return False
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        return False
    return True


def is_fqdn(text: str) -> bool:
    """Dot-separated labels, at least two, the last one alphabetic first; one trailing dot allowed."""
    labels = text.removesuffix(".").split(".")
    if len(labels) < 2:
        return False
    return all(_RFC1123_LABEL.fullmatch(label) for label in labels[:-1]) and bool(
        _FQDN_LAST_LABEL.fullmatch(labels[-1])
    )


def is_url(text: str) -> bool:
    """Parses, has a scheme (any) and a host; no whitespace or control characters."""
    if not text or has_control_characters(text) or " " in text:
        return False
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return bool(_URL_SCHEME.fullmatch(parts.scheme)) and bool(parts.hostname)


def is_image_reference(text: str) -> bool:
    """`valid_container_image_url`: an absolute path, or `name[:tag]` in lower case without a digest."""
    return text.startswith("/") or bool(IMAGE_NAME.fullmatch(text))


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """The URL without `user:password@`, and the decoded user and password (None when absent)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    return bare, user, password


def userinfo_is_safe(url: str) -> bool:
    """Credentials in a URL must not hold control characters (they go into a configuration file)."""
    _, user, password = split_userinfo(url)
    return not any(value is not None and has_control_characters(value) for value in (user, password))
