"""The signed texts of the log service, and the per-job write token.

Readers sign as DeepSquare's reader does (EIP-191 personal_sign, 65 bytes R||S||V with V = 0/1 or
27/28) over `read:<address>/<log_name>/<timestamp>` or `watchList:<address>/<timestamp>`, the
address lowercased and the timestamp in decimal Unix seconds.

Writers present a token the job's provider minted with its own key, without asking anyone: the
EIP-191 signature of `grid-logger write:<meta_scheduler>/<job id>/<customer>` (all lowercase), as
`glw1.<130 hex digits>`. The service recovers the signer and accepts the token only when that
address is the job's provider on chain and the customer is the job's: a token opens one job's log,
of one deployment, and nothing else. It needs no shared secret and no chain write, and its use
ends with the job (see `service.WriteGate`).
"""

from __future__ import annotations

from supervisor.chain.keys import SIGNATURE_BYTES, personal_sign, recover_personal_signer

TOKEN_PREFIX = "glw1."


def read_text(address: str, log_name: str, timestamp: int) -> bytes:
    """What a reader signs for Read; the server lowercases `address`, never `log_name`."""
    return f"read:{address.lower()}/{log_name}/{timestamp}".encode()


def watch_list_text(address: str, timestamp: int) -> bytes:
    return f"watchList:{address.lower()}/{timestamp}".encode()


def write_token_text(meta_scheduler: str, job_id: str, customer: str) -> bytes:
    return f"grid-logger write:{meta_scheduler.lower()}/{job_id.lower()}/{customer.lower()}".encode()


def sign(private_key: bytes | str, text: bytes) -> bytes:
    """personal_sign of `text`: 65 bytes, V = 27/28."""
    return personal_sign(private_key, text)


def recover(text: bytes, signature: bytes) -> str | None:
    """The lowercase address that personal_signed `text`, or None for a malformed signature."""
    signer = recover_personal_signer(text, signature)
    return None if signer is None else signer.lower()


def token_from_signature(signature: bytes) -> str:
    return TOKEN_PREFIX + signature.hex()


def token_signature(token: str) -> bytes | None:
    """The signature inside a token, or None when it is not a token of this version."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    digits = token[len(TOKEN_PREFIX) :]
    if len(digits) != 2 * SIGNATURE_BYTES:
        return None
    try:
        return bytes.fromhex(digits)
    except ValueError:
        return None


def mint_write_token(private_key: bytes | str, meta_scheduler: str, job_id: str, customer: str) -> str:
    """A job's write token, from the provider's key."""
    return token_from_signature(sign(private_key, write_token_text(meta_scheduler, job_id, customer)))
