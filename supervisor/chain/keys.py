"""The provider's signing key: an encrypted keystore with a password file, or a private raw key file.

Errors name the file and what is wrong with it, never its content: neither the key nor the password
may reach a log line or a traceback.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.datastructures import SignedMessage, SignedTransaction
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress


class KeyFileError(ValueError):
    """The key material cannot be loaded; the message names the file and the reason only."""


class Signer:
    """Signs transactions and messages with the provider key; its repr shows the address only."""

    __slots__ = ("_account",)

    def __init__(self, account: LocalAccount) -> None:
        self._account = account

    @property
    def address(self) -> ChecksumAddress:
        return self._account.address

    def sign_transaction(self, tx: dict[str, Any]) -> SignedTransaction:
        return self._account.sign_transaction(tx)

    def sign_message(self, message: bytes) -> SignedMessage:
        """EIP-191 personal_sign of raw bytes."""
        return self._account.sign_message(encode_defunct(primitive=message))

    def __repr__(self) -> str:
        return f"Signer({self.address})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Signer holds a private key and cannot be pickled")


def _read_private_file(path: Path, what: str) -> str:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"{what} {path} is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{what} {path} is readable or writable by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"restrict it with: chmod 600 {path}"
        )
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise KeyFileError(f"{what} {path} cannot be read: {reason}") from None


def load_signer(key_file: Path | str, password_file: Path | str | None = None) -> Signer:
    """Load the provider key.

    A JSON keystore (eth-account / geth format) needs `password_file`. Any other file must hold a
    64-hex-digit private key (optionally 0x-prefixed). Both files must not be readable by group or others.
    """
    key_path = Path(key_file)
    text = _read_private_file(key_path, "key file")
    stripped = text.strip()
    if stripped.startswith("{"):
        return Signer(_from_keystore(key_path, stripped, password_file))
    return Signer(_from_raw(key_path, stripped))


def _from_keystore(key_path: Path, text: str, password_file: Path | str | None) -> LocalAccount:
    if password_file is None:
        raise KeyFileError(f"key file {key_path} is an encrypted keystore: a password file is required")
    password_path = Path(password_file)
    password = _read_private_file(password_path, "password file").rstrip("\r\n")
    try:
        keystore = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"key file {key_path} is not valid keystore JSON (line {exc.lineno})") from None
    if not isinstance(keystore, dict) or "crypto" not in {k.lower() for k in keystore}:
        raise KeyFileError(f"key file {key_path} is JSON but not an encrypted keystore (no 'crypto' section)")
    try:
        private_key = Account.decrypt(keystore, password)
    except ValueError as exc:
        reason = "wrong password" if "MAC mismatch" in str(exc) else "keystore cannot be decrypted"
        raise KeyFileError(f"key file {key_path}: {reason} (password file {password_path})") from None
    except Exception:
        raise KeyFileError(f"key file {key_path}: keystore is malformed") from None
    account: LocalAccount = Account.from_key(private_key)
    return account


def _from_raw(key_path: Path, text: str) -> LocalAccount:
    digits = text[2:] if text.lower().startswith("0x") else text
    if len(digits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise KeyFileError(
            f"key file {key_path} holds neither a JSON keystore nor a 64-hex-digit private key"
        )
    try:
        account: LocalAccount = Account.from_key(bytes.fromhex(digits))
    except Exception:
        raise KeyFileError(
            f"key file {key_path} holds a value that is not a valid secp256k1 private key"
        ) from None
    return account


def write_keystore(
    path: Path | str, private_key: bytes, password: str, *, iterations: int | None = None
) -> None:
    """Write an encrypted keystore (mode 600), e.g. to convert a raw key."""
    kwargs: dict[str, Any] = {} if iterations is None else {"iterations": iterations}
    keystore = Account.encrypt(private_key, password, **kwargs)
    target = Path(path)
    target.touch(mode=0o600, exist_ok=True)
    target.chmod(0o600)
    target.write_text(json.dumps(keystore), encoding="utf-8")


def sign_challenge(signer: Signer, challenge: bytes) -> bytes:
    """65-byte R||S||V EIP-191 signature of a challenge, as the sbatch service expects."""
    signed: Any = signer.sign_message(challenge)
    return bytes(signed.signature)


__all__ = ["KeyFileError", "Signer", "load_signer", "sign_challenge", "write_keystore"]


#: Length of an EIP-191 signature: R || S || V.
SIGNATURE_BYTES = 65


def personal_sign(private_key: bytes | str, text: bytes) -> bytes:
    """EIP-191 personal_sign of raw bytes: 65 bytes R||S||V, V = 27/28."""
    signed = Account.sign_message(encode_defunct(primitive=text), private_key=private_key)
    return bytes(signed.signature)


def recover_personal_signer(text: bytes, signature: bytes) -> ChecksumAddress | None:
    """The (checksummed) address that personal_signed `text`; None for a malformed signature.

    Wallets send V as 0/1 or 27/28; both are accepted.
    """
    if len(signature) != SIGNATURE_BYTES:
        return None
    v = signature[64]
    if v in (0, 1):
        signature = signature[:64] + bytes([v + 27])
    try:
        signer: ChecksumAddress = Account.recover_message(encode_defunct(primitive=text), signature=signature)
    except Exception:  # eth-keys raises several error types for invalid points and values
        return None
    return signer
