"""Provider authentication: one-use challenges, per-address rate limits, EIP-191 signature recovery."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from cachetools import LRUCache, TLRUCache

from supervisor.chain.keys import personal_sign, recover_personal_signer

CHALLENGE_MESSAGE = "login"
NONCE_BYTES = 16


def make_challenge(nonce: bytes) -> bytes:
    """The challenge bytes of PROTOCOL.md section 8: {"message":"login","nonce":"<base64>"}."""
    body = {"message": CHALLENGE_MESSAGE, "nonce": base64.b64encode(nonce).decode()}
    return json.dumps(body, separators=(",", ":")).encode()


def challenge_nonce(challenge: bytes) -> str | None:
    """The nonce of a well-formed challenge, else None."""
    try:
        body = json.loads(challenge)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or body.get("message") != CHALLENGE_MESSAGE:
        return None
    nonce = body.get("nonce")
    return nonce if isinstance(nonce, str) else None


class ChallengeRecord(Protocol):
    """Where a nonce book keeps its challenges across restarts (`storage.ChallengeStore`)."""

    def load(self, now: float, limit: int) -> list[tuple[str, float]]: ...

    def record(self, nonce: str, expires_at: float, dropped: Iterable[str] = ()) -> None: ...

    def remove(self, nonce: str) -> None: ...

    def purge_expired(self, now: float) -> int: ...


def _expiry(_: str, expires_at: float, __: float) -> float:
    return expires_at


class NonceBook:
    """Nonces handed out and not yet used; each is valid `ttl_seconds` and consumed on first use.

    Anyone may ask for a challenge, so the book is bounded: beyond `max_outstanding` the oldest
    challenge is dropped (its holder gets UNAUTHENTICATED and asks again), and every operation is
    O(log n). With a `record`, a challenge is written before it is handed out and deleted before it
    is accepted: challenges survive a restart, and a used one never comes back. Times come from
    `clock`, the wall clock by default, since expiry times outlive the process.
    """

    def __init__(
        self,
        ttl_seconds: float = 600,
        clock: Callable[[], float] = time.time,
        *,
        max_outstanding: int = 10_000,
        record: ChallengeRecord | None = None,
    ) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._record = record
        self._issued: TLRUCache[str, float] = TLRUCache(maxsize=max_outstanding, ttu=_expiry, timer=clock)
        self._lock = threading.Lock()
        if record is not None:
            for nonce, expires_at in record.load(clock(), max_outstanding):
                self._issued[nonce] = expires_at

    @property
    def max_outstanding(self) -> int:
        return int(self._issued.maxsize)

    def issue(self) -> bytes:
        now = self._clock()
        challenge = make_challenge(secrets.token_bytes(NONCE_BYTES))
        nonce = challenge_nonce(challenge)
        assert nonce is not None
        with self._lock:
            dropped = [old for old, _ in self._issued.expire(now)]
            if len(self._issued) >= self._issued.maxsize:
                dropped.append(self._issued.popitem()[0])
            if self._record is not None:
                self._record.record(nonce, now + self._ttl, dropped)
            self._issued[nonce] = now + self._ttl
        return challenge

    def consume(self, challenge: bytes) -> bool:
        """True once for a known, unexpired challenge; False for anything else."""
        nonce = challenge_nonce(challenge)
        if nonce is None:
            return False
        with self._lock:
            expires = self._issued.pop(nonce, None)
            if expires is not None and self._record is not None:
                self._record.remove(nonce)
        return expires is not None and expires > self._clock()

    def purge_expired(self) -> int:
        """Drop expired challenges from memory and from the record; returns how many were held."""
        now = self._clock()
        with self._lock:
            expired = self._issued.expire(now)
            if self._record is not None:
                self._record.purge_expired(now)
        return len(expired)

    def __len__(self) -> int:
        return len(self._issued)


class PeerRateLimiter:
    """A token bucket per client address: `burst` requests at once, then `rate_per_second`.

    The table of buckets is bounded too (least recently seen addresses are forgotten, which only
    gives them a full bucket again).
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_second
        self._burst = float(burst)
        self._clock = clock
        self._buckets: LRUCache[str, tuple[float, float]] = LRUCache(maxsize=max_peers)
        self._lock = threading.Lock()

    def allow(self, peer: str) -> bool:
        """Take one token from `peer`'s bucket; False when it is empty."""
        now = self._clock()
        with self._lock:
            tokens, updated = self._buckets.get(peer, (self._burst, now))
            tokens = min(self._burst, tokens + (now - updated) * self._rate)
            allowed = tokens >= 1.0
            self._buckets[peer] = (tokens - 1.0 if allowed else tokens, now)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


def sign_challenge(private_key: bytes | str, challenge: bytes) -> bytes:
    """What a provider sends: personal_sign of the raw challenge bytes, 65 bytes R||S||V (V = 27/28)."""
    return personal_sign(private_key, challenge)


def recover_signer(challenge: bytes, signature: bytes) -> str | None:
    """The address (checksummed) that personal_signed `challenge`, or None for a malformed signature."""
    return recover_personal_signer(challenge, signature)
