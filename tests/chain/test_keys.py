"""Loading the provider key: keystore with a password file, or a private raw key file; secrets never shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from supervisor.chain.keys import KeyFileError, load_signer, sign_challenge, write_keystore

KEY = bytes.fromhex("59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
PASSWORD = "correct horse battery staple"


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def assert_no_secret(text: str) -> None:
    assert KEY.hex() not in text.lower() and PASSWORD not in text


def test_keystore_with_password_file(tmp_path: Path) -> None:
    write_keystore(tmp_path / "key.json", KEY, PASSWORD, iterations=2)
    assert (tmp_path / "key.json").stat().st_mode & 0o777 == 0o600
    password = private_file(tmp_path / "password", PASSWORD + "\n")
    signer = load_signer(tmp_path / "key.json", password)
    assert signer.address == ADDRESS
    assert repr(signer) == f"Signer({ADDRESS})"
    assert len(sign_challenge(signer, b'{"message":"login"}')) == 65


def test_wrong_password_is_a_clear_error_without_secrets(tmp_path: Path) -> None:
    write_keystore(tmp_path / "key.json", KEY, PASSWORD, iterations=2)
    wrong = private_file(tmp_path / "password", "not the password")
    with pytest.raises(KeyFileError, match="wrong password") as caught:
        load_signer(tmp_path / "key.json", wrong)
    assert_no_secret(str(caught.value))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_keystore_without_password_file_is_refused(tmp_path: Path) -> None:
    write_keystore(tmp_path / "key.json", KEY, PASSWORD, iterations=2)
    with pytest.raises(KeyFileError, match="password file is required"):
        load_signer(tmp_path / "key.json")


def test_raw_key_file_private_is_accepted(tmp_path: Path) -> None:
    signer = load_signer(private_file(tmp_path / "key", "0x" + KEY.hex() + "\n"))
    assert signer.address == ADDRESS
    assert_no_secret(repr(signer) + str(signer))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_raw_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = private_file(tmp_path / "key", KEY.hex(), mode)
    with capture_logs() as logs, pytest.raises(KeyFileError, match="chmod 600") as caught:
        load_signer(path)
    assert_no_secret(str(caught.value) + json.dumps(logs))


def test_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    write_keystore(tmp_path / "key.json", KEY, PASSWORD, iterations=2)
    password = private_file(tmp_path / "password", PASSWORD, 0o644)
    with pytest.raises(KeyFileError, match=r"password file .* readable or writable by group or others"):
        load_signer(tmp_path / "key.json", password)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("zz" * 32, "neither a JSON keystore nor a 64-hex-digit private key"),
        ("abcd", "neither a JSON keystore nor a 64-hex-digit private key"),
        ("0" * 64, "not a valid secp256k1 private key"),
        ('{"address": "x"}', "not an encrypted keystore"),
        ("{broken", "not valid keystore JSON"),
    ],
)
def test_bad_key_files_name_the_problem(tmp_path: Path, content: str, reason: str) -> None:
    path = private_file(tmp_path / "key", content)
    password = private_file(tmp_path / "password", PASSWORD)
    with pytest.raises(KeyFileError, match=reason) as caught:
        load_signer(path, password)
    assert str(path) in str(caught.value)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_signer(tmp_path / "nope")
