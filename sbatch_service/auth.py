"""Provider authentication: one-use challenges and EIP-191 signature recovery (no I/O)."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable

from eth_account import Account
from eth_account.messages import encode_defunct

CHALLENGE_MESSAGE = "login"
NONCE_BYTES = 16
SIGNATURE_BYTES = 65


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


class NonceBook:
    """Nonces handed out and not yet used; each is valid `ttl_seconds` and consumed on first use."""

    def __init__(self, ttl_seconds: float = 600, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._issued: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self) -> bytes:
        now = self._clock()
        challenge = make_challenge(secrets.token_bytes(NONCE_BYTES))
        nonce = challenge_nonce(challenge)
        assert nonce is not None
        with self._lock:
            self._issued = {n: t for n, t in self._issued.items() if t > now}
            self._issued[nonce] = now + self._ttl
        return challenge

    def consume(self, challenge: bytes) -> bool:
        """True once for a known, unexpired challenge; False for anything else."""
        nonce = challenge_nonce(challenge)
        if nonce is None:
            return False
        with self._lock:
            expires = self._issued.pop(nonce, None)
        return expires is not None and expires > self._clock()

    def __len__(self) -> int:
        return len(self._issued)


def sign_challenge(private_key: bytes | str, challenge: bytes) -> bytes:
    """What a provider sends: personal_sign of the raw challenge bytes, 65 bytes R||S||V (V = 27/28)."""
    signed = Account.sign_message(encode_defunct(primitive=challenge), private_key=private_key)
    return bytes(signed.signature)


def recover_signer(challenge: bytes, signature: bytes) -> str | None:
    """The address (checksummed) that personal_signed `challenge`, or None for a malformed signature."""
    if len(signature) != SIGNATURE_BYTES:
        return None
    v = signature[64]
    if v in (0, 1):
        signature = signature[:64] + bytes([v + 27])
    try:
        signer: str = Account.recover_message(encode_defunct(primitive=challenge), signature=signature)
    except Exception:  # eth-keys raises several error types for invalid points and values
        return None
    return signer
