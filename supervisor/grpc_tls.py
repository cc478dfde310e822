"""TLS for the grid's gRPC links, from PEM files: the sbatch service today, the log service next.

A client verifies the server against a pinned CA (or the system's roots) and may present its own
certificate; a server presents its certificate and, given a client CA, accepts only clients with a
certificate from it (mutual TLS). Files are read once, when the channel or port is made; a file
that cannot be read is a `TlsFileError` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

ChannelOptions = Sequence[tuple[str, str | int]]


class TlsFileError(OSError):
    """A certificate or key file is missing, unreadable or not PEM (an OSError: callers that report
    unusable files already catch those)."""


def _pem(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsFileError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in data:
        raise TlsFileError(f"the {what} {path} is not a PEM file")
    return data


@dataclass(frozen=True)
class ClientTls:
    """How a client checks the server and, optionally, proves who it is."""

    #: CA certificate(s) the server's certificate must chain to; None trusts the system's roots.
    ca_file: Path | None = None
    #: The client's certificate chain and key, for servers that require mutual TLS.
    cert_file: Path | None = None
    key_file: Path | None = None
    #: The name the server's certificate is checked against, when it is not the target's host.
    server_name_override: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca_file, "CA certificate") if self.ca_file else None,
            private_key=_pem(self.key_file, "client key") if self.key_file else None,
            certificate_chain=_pem(self.cert_file, "client certificate") if self.cert_file else None,
        )

    def options(self) -> list[tuple[str, str | int]]:
        if self.server_name_override:
            return [("grpc.ssl_target_name_override", self.server_name_override)]
        return []


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate and key, and the CA that client certificates must come from."""

    cert_file: Path
    key_file: Path
    #: When set, clients without a certificate from this CA are refused in the handshake.
    client_ca_file: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(_pem(self.key_file, "server key"), _pem(self.cert_file, "server certificate"))],
            root_certificates=_pem(self.client_ca_file, "client CA certificate")
            if self.client_ca_file
            else None,
            require_client_auth=self.client_ca_file is not None,
        )


def aio_channel(target: str, tls: ClientTls | None, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """An asyncio channel to `target`: TLS when `tls` is given, clear text otherwise."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, tls.credentials(), options=[*options, *tls.options()])


def add_port(server: grpc.aio.Server, address: str, tls: ServerTls | None) -> int:
    """Listen on `address` with TLS when `tls` is given; returns the bound port (0: not bound)."""
    port: int = (
        server.add_insecure_port(address)
        if tls is None
        else server.add_secure_port(address, tls.credentials())
    )
    return port
