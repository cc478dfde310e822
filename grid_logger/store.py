"""The logs on disk: one append-only file per log, each record encrypted and authenticated.

`<root>/<customer>/<job id>.log`, folders 0700 and files 0600, as the reference lays them out, but
neither name is taken unchecked (`names`), and the content is not the reference's AES-CTR without
a MAC:

- a 68-byte header: `GRIDLOG1`, then the log's own 256-bit data key wrapped with AES-GCM under the
  master key (12-byte nonce, 48 bytes of wrapped key and tag), the owner and the log's name as
  associated data, so a file moved under another owner or name does not open;
- records: a 20-byte head (length of what follows, the writer's id, its sequence number), a
  12-byte random nonce and the AES-GCM ciphertext of the protobuf `ReadResponse{data, timestamp}`;
  the head and the record's index in the log are associated data, so records cannot be altered,
  reordered or spliced in from another log without the read failing.

A record is one `write` to a file opened with O_APPEND; a record cut short by a crash is removed
when the log is next opened for writing, and readers never read past the last complete record.
Deleting a log's file deletes its key with it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import struct
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from grid_protocol.proto import log_pb2

MAGIC = b"GRIDLOG1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + NONCE_BYTES + KEY_BYTES + TAG_BYTES
RECORD_HEAD = struct.Struct(">I8sQ")
INDEX = struct.Struct(">Q")
NO_WRITER = bytes(8)
SUFFIX = ".log"
#: Writer ids remembered per log for deduplication (a log has one writer per job run, plus restarts).
MAX_WRITERS_PER_LOG = 64
READ_CHUNK = 256 * 1024


class StoreError(RuntimeError):
    """A log cannot be opened or read: wrong master key, corrupt or foreign file."""


class MasterKeyError(ValueError):
    """The master key file is missing, readable by others or not 32 bytes."""


def load_master_key(path: Path) -> bytes:
    """32 raw bytes, or 64 hex digits (a trailing newline allowed), from a file only its owner reads."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise MasterKeyError(f"master key file {path} cannot be read: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MasterKeyError(f"master key file {path} is readable by group or others: chmod 600 {path}")
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(text.decode("ascii"))
    raise MasterKeyError(f"master key file {path} holds neither 32 bytes nor 64 hex digits")


def create_master_key(path: Path) -> None:
    """A new random master key as 64 hex digits, mode 0600; an existing file is never replaced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(KEY_BYTES) + "\n")


@dataclass(frozen=True)
class Record:
    index: int
    timestamp: int
    data: bytes


def _identity(user: str, log_name: str) -> bytes:
    return MAGIC + f"{user}/{log_name}".encode()


def _record_aad(writer: bytes, seq: int, index: int) -> bytes:
    return writer + INDEX.pack(seq) + INDEX.pack(index)


class LogFile:
    """One log opened for appending; the service keeps one per log it writes."""

    def __init__(
        self, path: Path, key: bytes, fd: int, count: int, size: int, writers: OrderedDict[bytes, int]
    ) -> None:
        self.path = path
        self._aead = AESGCM(key)
        self._fd = fd
        self.count = count
        self.size = size
        self._writers = writers
        self.dirty = False

    def next_seq(self, writer: bytes) -> int:
        """The first sequence number of `writer` not yet in the log (0 for a writer never seen)."""
        return self._writers.get(writer, -1) + 1

    def append(self, data: bytes, timestamp: int, writer: bytes = NO_WRITER, seq: int = 0) -> None:
        plain = log_pb2.ReadResponse(data=data, timestamp=timestamp).SerializeToString()
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plain, _record_aad(writer, seq, self.count))
        record = RECORD_HEAD.pack(NONCE_BYTES + len(sealed), writer, seq) + nonce + sealed
        written = os.write(self._fd, record)
        if written != len(record):
            raise OSError(f"short write to {self.path}: {written} of {len(record)} bytes")
        self.count += 1
        self.size += len(record)
        self.dirty = True
        if writer != NO_WRITER:
            self._writers[writer] = seq
            self._writers.move_to_end(writer)
            while len(self._writers) > MAX_WRITERS_PER_LOG:
                self._writers.popitem(last=False)

    def sync(self) -> None:
        """fsync what was appended since the last sync."""
        if self.dirty:
            self.dirty = False
            os.fsync(self._fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sync()
        os.close(self._fd)


class Cursor:
    """A reader's position in one log: complete records only, in order, from the first."""

    def __init__(self, path: Path, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.path = path
        self.offset = HEADER_BYTES
        self.index = 0

    def read(self, max_records: int, max_bytes: int = READ_CHUNK) -> list[Record]:
        records: list[Record] = []
        taken = 0
        while len(records) < max_records and taken < max_bytes:
            head = os.pread(self._fd, RECORD_HEAD.size, self.offset)
            if len(head) < RECORD_HEAD.size:
                break
            length, writer, seq = RECORD_HEAD.unpack(head)
            body = os.pread(self._fd, length, self.offset + RECORD_HEAD.size)
            if len(body) < length:
                break  # being written: the rest comes with the next read
            try:
                plain = self._aead.decrypt(
                    body[:NONCE_BYTES], body[NONCE_BYTES:], _record_aad(writer, seq, self.index)
                )
            except InvalidTag:
                if records:
                    break  # the good ones first; the next read raises
                raise StoreError(f"record {self.index} of {self.path} fails authentication") from None
            message = log_pb2.ReadResponse.FromString(plain)
            records.append(Record(self.index, message.timestamp, message.data))
            self.offset += RECORD_HEAD.size + length
            self.index += 1
            taken += length
        return records

    def close(self) -> None:
        os.close(self._fd)


class LogStore:
    """Where the logs live, and the master key that opens them."""

    def __init__(self, root: Path, master_key: bytes) -> None:
        if len(master_key) != KEY_BYTES:
            raise MasterKeyError("the master key must be 32 bytes")
        self.root = root
        self._master = AESGCM(master_key)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, user: str, log_name: str) -> Path:
        """The file of a log; `user` and `log_name` must have passed `names`."""
        return self.root / user / f"{log_name}{SUFFIX}"

    def exists(self, user: str, log_name: str) -> bool:
        return self.path(user, log_name).is_file()

    def key(self, user: str, log_name: str) -> bytes:
        """The log's data key, unwrapped from its header."""
        path = self.path(user, log_name)
        with path.open("rb") as file:
            header = file.read(HEADER_BYTES)
        if len(header) != HEADER_BYTES or not header.startswith(MAGIC):
            raise StoreError(f"{path} is not a log file")
        nonce = header[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return self._master.decrypt(nonce, header[len(MAGIC) + NONCE_BYTES :], _identity(user, log_name))
        except InvalidTag:
            raise StoreError(f"{path} was not written under this master key, or not for this log") from None

    def _create(self, user: str, log_name: str) -> None:
        """Write the header to a new file under a temporary name, then link it in: the log appears
        whole or not at all, and a concurrent creation keeps the first file."""
        folder = self.root / user
        folder.mkdir(mode=0o700, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        nonce = secrets.token_bytes(NONCE_BYTES)
        header = MAGIC + nonce + self._master.encrypt(nonce, key, _identity(user, log_name))
        temporary = folder / f".{log_name}.{os.getpid()}.{secrets.token_hex(4)}.new"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, header)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, self.path(user, log_name))
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def open_append(self, user: str, log_name: str) -> tuple[LogFile, bytes]:
        """The log opened for appending (created when new), and its data key.

        Opening reads every record head: it counts the records, learns each writer's last sequence
        number, and cuts off a record a crash left incomplete.
        """
        path = self.path(user, log_name)
        if not path.exists():
            self._create(user, log_name)
        key = self.key(user, log_name)
        count, end, writers = _scan(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if os.fstat(fd).st_size > end:
            os.ftruncate(fd, end)
        return LogFile(path, key, fd, count, end, writers), key

    def cursor(self, user: str, log_name: str, key: bytes) -> Cursor:
        return Cursor(self.path(user, log_name), key)

    def list_logs(self, user: str) -> list[str]:
        folder = self.root / user
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return []
        return sorted(
            entry.name[: -len(SUFFIX)]
            for entry in entries
            if entry.name.endswith(SUFFIX) and not entry.name.startswith(".") and entry.is_file()
        )

    def purge(
        self, older_than_seconds: float, busy: Iterable[tuple[str, str]], now: float | None = None
    ) -> int:
        """Delete logs not written for `older_than_seconds` and not in use; returns how many."""
        cutoff = (time.time() if now is None else now) - older_than_seconds
        in_use = set(busy)
        removed = 0
        for folder in list(os.scandir(self.root)):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            for entry in list(os.scandir(folder.path)):
                if not entry.name.endswith(SUFFIX) or (folder.name, entry.name[: -len(SUFFIX)]) in in_use:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
            with contextlib.suppress(OSError):
                os.rmdir(folder.path)  # only when empty
        return removed


def _scan(path: Path) -> tuple[int, int, OrderedDict[bytes, int]]:
    """Records, end of the last complete record, and each writer's last sequence number."""
    writers: OrderedDict[bytes, int] = OrderedDict()
    count, offset = 0, HEADER_BYTES
    with path.open("rb", buffering=1 << 20) as file:
        size = os.fstat(file.fileno()).st_size
        file.seek(offset)
        while True:
            head = file.read(RECORD_HEAD.size)
            if len(head) < RECORD_HEAD.size:
                break
            length, writer, seq = RECORD_HEAD.unpack(head)
            if offset + RECORD_HEAD.size + length > size:
                break
            file.seek(length, os.SEEK_CUR)
            offset += RECORD_HEAD.size + length
            count += 1
            if writer != NO_WRITER:
                writers[writer] = seq
                writers.move_to_end(writer)
                if len(writers) > MAX_WRITERS_PER_LOG:
                    writers.popitem(last=False)
    return count, offset, writers
