"""The supervisor's gRPC link to the sbatch service over TLS and mutual TLS, with a CA made here.

A real `grid-sbatch serve` with its certificate, a real anvil with the job on chain, and the real
client the daemon uses (`SbatchClient.from_settings`) and the doctor's probe.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sbatch_service.settings import Settings
from supervisor.chain.keys import Signer
from supervisor.config import ConfigError, SbatchServiceSettings, load_config
from supervisor.grpc_tls import TlsFileError
from supervisor.ops.probes import probe_sbatch
from supervisor.sbatch.client import SbatchClient, SbatchServiceUnavailable
from tests.fixtures.contracts import CREDIT, WORKED_EXAMPLE_DEFINITION, Grid
from tests.fixtures.sbatch import SbatchProcess, start_sbatch_service

WORKFLOW = {
    "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 512, "gpus": 0},
    "steps": [{"name": "hello", "run": {"command": "echo over tls"}}],
}


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(
    folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    names: tuple[x509.GeneralName, ...] = (),
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _authority(folder: Path, stem: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(f"{stem} test CA", key, None, ca=True)
    path, _ = _write(folder, stem, cert, key)
    return cert, key, path


def _leaf(
    folder: Path,
    stem: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    usage: x509.ObjectIdentifier,
    names: tuple[x509.GeneralName, ...] = (),
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _write(folder, stem, _certificate(stem, key, issuer, names=names, usage=usage), key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A grid CA with the service's certificate (for `localhost` only) and a supervisor's, and a
    second, unrelated CA with a client certificate of its own."""
    folder = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key, ca = _authority(folder, "grid-ca")
    other_cert, other_key, other_ca = _authority(folder, "other-ca")
    server = _leaf(
        folder, "sbatch", (ca_cert, ca_key), ExtendedKeyUsageOID.SERVER_AUTH, (x509.DNSName("localhost"),)
    )
    client = _leaf(folder, "supervisor", (ca_cert, ca_key), ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = _leaf(folder, "stranger", (other_cert, other_key), ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(ca, *server, *client, other_ca, *stranger)


@dataclass
class TlsService:
    process: SbatchProcess
    job_id: str
    key: str

    def settings(self, host: str = "localhost", **tls: object) -> SbatchServiceSettings:
        return SbatchServiceSettings.model_validate(
            {"grpc_target": f"{host}:{self.process.grpc_port}", "timeout_seconds": 10, **tls}
        )


def _serve(grid: Grid, workdir: Path, env: dict[str, str]) -> Iterator[TlsService]:
    provider = grid.providers[0]
    if not grid.provider_manager.functions.isValidForScheduling(provider.address).call():
        grid.register_provider(provider)
    process = start_sbatch_service(
        workdir,
        rpc_url=grid.anvil.http_url,
        metascheduler_address=grid.deployment.meta_scheduler,
        extra_env=env,
    )
    try:
        key = process.submit(WORKFLOW)
        definition = (*WORKED_EXAMPLE_DEFINITION[:4], key, *WORKED_EXAMPLE_DEFINITION[5:])
        job_id = grid.request_job(grid.customers[0], 200 * CREDIT, definition)
        grid.schedule(job_id, provider)
        yield TlsService(process, "0x" + job_id.hex(), key)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def tls_service(grid: Grid, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsService]:
    env = {
        "GRID_SBATCH_GRPC_TLS_CERT_FILE": str(pki.server_cert),
        "GRID_SBATCH_GRPC_TLS_KEY_FILE": str(pki.server_key),
    }
    yield from _serve(grid, tmp_path_factory.mktemp("sbatch-tls"), env)


@pytest.fixture(scope="module")
def mtls_service(grid: Grid, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsService]:
    env = {
        "GRID_SBATCH_GRPC_TLS_CERT_FILE": str(pki.server_cert),
        "GRID_SBATCH_GRPC_TLS_KEY_FILE": str(pki.server_key),
        "GRID_SBATCH_GRPC_CLIENT_CA_FILE": str(pki.ca),
    }
    yield from _serve(grid, tmp_path_factory.mktemp("sbatch-mtls"), env)


async def fetch(grid: Grid, service: TlsService, settings: SbatchServiceSettings) -> str:
    client = SbatchClient.from_settings(settings, Signer(grid.providers[0]))
    try:
        return (await client.fetch(service.job_id, grid.customers[0].address, service.key)).script
    finally:
        await client.close()


async def test_a_supervisor_fetches_its_script_over_tls(
    grid: Grid, pki: Pki, tls_service: TlsService
) -> None:
    settings = tls_service.settings(tls=True, ca_file=pki.ca)
    assert "over tls" in await fetch(grid, tls_service, settings)
    assert await probe_sbatch(settings) is None  # the doctor's and the metrics' probe


async def test_a_certificate_from_another_ca_is_refused(
    grid: Grid, pki: Pki, tls_service: TlsService
) -> None:
    settings = tls_service.settings(tls=True, ca_file=pki.other_ca)
    with pytest.raises(SbatchServiceUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await fetch(grid, tls_service, settings)
    assert (await probe_sbatch(settings) or "").startswith("UNAVAILABLE")
    # The system's roots do not know the grid's CA either.
    with pytest.raises(SbatchServiceUnavailable, match="UNAVAILABLE"):
        await fetch(grid, tls_service, tls_service.settings(tls=True))


async def test_the_name_is_checked_and_can_be_overridden(
    grid: Grid, pki: Pki, tls_service: TlsService
) -> None:
    by_address = tls_service.settings(
        "127.0.0.1", tls=True, ca_file=pki.ca
    )  # the certificate names localhost
    with pytest.raises(SbatchServiceUnavailable, match="Hostname Verification"):
        await fetch(grid, tls_service, by_address)
    overridden = tls_service.settings("127.0.0.1", tls=True, ca_file=pki.ca, server_name_override="localhost")
    assert "over tls" in await fetch(grid, tls_service, overridden)


async def test_clear_text_is_not_answered_by_a_tls_service(grid: Grid, tls_service: TlsService) -> None:
    with pytest.raises(SbatchServiceUnavailable):
        await fetch(grid, tls_service, tls_service.settings())


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    grid: Grid, pki: Pki, mtls_service: TlsService
) -> None:
    anonymous = mtls_service.settings(tls=True, ca_file=pki.ca)
    with pytest.raises(SbatchServiceUnavailable, match="UNAVAILABLE"):
        await fetch(grid, mtls_service, anonymous)
    assert await probe_sbatch(anonymous) is not None
    stranger = mtls_service.settings(
        tls=True, ca_file=pki.ca, client_cert_file=pki.other_client_cert, client_key_file=pki.other_client_key
    )
    with pytest.raises(SbatchServiceUnavailable, match="UNAVAILABLE"):
        await fetch(grid, mtls_service, stranger)
    member = mtls_service.settings(
        tls=True, ca_file=pki.ca, client_cert_file=pki.client_cert, client_key_file=pki.client_key
    )
    assert "over tls" in await fetch(grid, mtls_service, member)
    assert await probe_sbatch(member) is None


def test_unreadable_files_are_named(grid: Grid, pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    settings = SbatchServiceSettings(grpc_target="localhost:1", tls=True, ca_file=missing)
    with pytest.raises(TlsFileError, match=f"CA certificate {missing}"):
        SbatchClient.from_settings(settings, Signer(grid.providers[0]))
    not_pem = tmp_path / "key.txt"
    not_pem.write_text("not a key\n")
    settings = SbatchServiceSettings(
        grpc_target="localhost:1", tls=True, client_cert_file=pki.client_cert, client_key_file=not_pem
    )
    with pytest.raises(TlsFileError, match=f"client key {not_pem} is not a PEM file"):
        SbatchClient.from_settings(settings, Signer(grid.providers[0]))


def test_inconsistent_settings_are_refused(tmp_path: Path, pki: Pki) -> None:
    config = tmp_path / "supervisor.toml"
    base = f"""
[chain]
rpc_url = "http://127.0.0.1:8545"
meta_scheduler = "0x{"12" * 20}"
[key]
file = "{tmp_path / "key"}"
[slurm]
partition = "grid"
"""
    for sbatch, message in (
        (f'grpc_target = "h:1"\nca_file = "{pki.ca}"', "ca_file needs tls = true"),
        (f'grpc_target = "h:1"\ntls = true\nclient_cert_file = "{pki.client_cert}"', "go together"),
    ):
        config.write_text(base + "[sbatch]\n" + sbatch + "\n")
        with pytest.raises(ConfigError, match=message):
            load_config(config)
    config.write_text(
        base + f'[sbatch]\ngrpc_target = "h:1"\ntls = true\nca_file = "{pki.ca}"\n'
        f'client_cert_file = "{pki.client_cert}"\nclient_key_file = "{pki.client_key}"\n'
    )
    tls = load_config(config).deployments[0].sbatch.client_tls
    assert tls is not None and (tls.ca_file, tls.cert_file, tls.key_file) == (
        pki.ca,
        pki.client_cert,
        pki.client_key,
    )
    with pytest.raises(ValueError, match="go together"):
        Settings(grpc_tls_cert_file=pki.server_cert)
    with pytest.raises(ValueError, match="needs grpc_tls_cert_file"):
        Settings(grpc_client_ca_file=pki.ca)
    assert Settings().grpc_tls is None
