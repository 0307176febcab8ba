"""The hub's TLS: a private CA made once in the data dir, and the server certificate it signs.

``ensure_tls`` is the one entry point: it makes the CA the first time (key 0600, never logged
or printed), and (re)issues the server certificate when it is missing, expires within
``RENEW_BEFORE``, does not name every host in ``tls_hosts`` or was signed by another CA. An
operator may bring their own certificate (``tls_cert``/``tls_key``, ``tls_ca`` the CA that
signed it); then nothing is generated. Clients (bridge, tools, devices) trust ``ca_cert`` only.

Keys are ECDSA P-256: small handshakes and cheap signatures, which the Pico W's mbedTLS does.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from picofleet.core import logs
from picofleet.core.endpoints import lan_address
from picofleet.core.files import replace_file
from picofleet.core.settings import Settings

TLS_DIR = "tls"
CA_DAYS = 3650
SERVER_DAYS = 397  # what browsers accept for a server certificate
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # what clients trust
    cert: Path  # the server's certificate (PEM)
    key: Path  # its private key (PEM, 0600)


class TlsError(RuntimeError):
    """TLS is configured but its files are missing or unusable."""


def tls_dir(settings: Settings) -> Path:
    return settings.data_path / TLS_DIR


def tls_hosts(settings: Settings) -> list[str]:
    """Names and addresses the server certificate is valid for (devices check one of them)."""
    # Loopback always: the hub's own tools (tail, smoke, the USB gateway) connect there.
    hosts = ["localhost", "127.0.0.1"]
    if settings.tls_hosts:
        hosts += settings.tls_hosts
    else:
        hosts += [socket.gethostname(), lan_address()]
        if settings.public_host:
            hosts.append(settings.public_host)
    return sorted(set(h for h in hosts if h))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_ca(common_name: str = "picofleet hub CA", *, days: int = CA_DAYS) -> tuple[bytes, bytes]:
    """A new CA: (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_server_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    hosts: list[str],
    *,
    days: int = SERVER_DAYS,
    not_before: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A server certificate for ``hosts`` signed by the CA: (certificate PEM, key PEM)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _needs_new_server_cert(cert_path: Path, ca_cert_pem: bytes, hosts: list[str]) -> str | None:
    """Why the server certificate must be issued again, or None when it is good."""
    if not cert_path.exists():
        return "missing"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate(ca_cert_pem)
    if cert.issuer != ca.subject:
        return "other CA"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # InvalidSignature: signed by an older CA key
        return "other CA"
    if cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return "expiring"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "hosts changed"
    if set(map(_san, hosts)) - set(san):
        return "hosts changed"
    return None


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One process at a time makes the CA (hub and a tool starting together)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    with open(directory / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_tls(settings: Settings) -> TlsFiles:
    """The hub's CA and server certificate, made or renewed as needed (see module doc)."""
    if settings.tls_cert is not None or settings.tls_key is not None:
        if settings.tls_cert is None or settings.tls_key is None:
            raise TlsError("set both tls_cert and tls_key (and tls_ca: the CA that signed it)")
        own = TlsFiles(settings.tls_ca or settings.tls_cert, settings.tls_cert, settings.tls_key)
        for p in (own.ca_cert, own.cert, own.key):
            if not p.exists():
                raise TlsError(f"TLS file {p} does not exist")
        return own
    d = tls_dir(settings)
    files = TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key")
    ca_key_path = d / "ca.key"
    log = logs.get("picofleet.core.tls")
    with _locked(d):
        if not files.ca_cert.exists() or not ca_key_path.exists():
            ca_pem_bytes, ca_key = make_ca()
            replace_file(ca_key_path, ca_key, mode=0o600)
            replace_file(files.ca_cert, ca_pem_bytes, mode=0o644)
            files.cert.unlink(missing_ok=True)
            log.info("tls.ca_created", ca_cert=str(files.ca_cert))
        ca_pem_bytes = files.ca_cert.read_bytes()
        hosts = tls_hosts(settings)
        why = _needs_new_server_cert(files.cert, ca_pem_bytes, hosts)
        if why is not None:
            cert, key = make_server_cert(ca_pem_bytes, ca_key_path.read_bytes(), hosts)
            replace_file(files.key, key, mode=0o600)
            replace_file(files.cert, cert, mode=0o644)
            log.info("tls.server_cert_issued", reason=why, hosts=hosts)
    return files


def ca_pem(settings: Settings) -> str:
    """The CA certificate clients trust (PEM text), made if it does not exist yet."""
    return ensure_tls(settings).ca_cert.read_text()


def ca_file(settings: Settings) -> Path:
    """The CA certificate a client on this machine trusts; never creates one."""
    if settings.tls_ca is not None:
        return settings.tls_ca
    if settings.tls_cert is not None:
        return settings.tls_cert
    path = tls_dir(settings) / "ca.pem"
    if not path.exists():
        raise TlsError(
            f"no hub CA at {path}: pass --data-dir DIR or set PICOFLEET_DATA_DIR to the data "
            "dir of the running hub, run `picofleet tls init` there, or set PICOFLEET_TLS_CA "
            "to the hub's CA certificate"
        )
    return path


def trusted_ca(settings: Settings) -> Path | None:
    """The hub's CA for a client on this machine, when there is one (else the system's)."""
    try:
        return ca_file(settings)
    except TlsError:
        return None


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server-side context (TLS 1.2 at least) for our listeners."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert, files.key)
    return ctx


def client_context(ca: Path | str) -> ssl.SSLContext:
    """A client context that trusts only ``ca`` and checks the server's name."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
