"""Certificates: a small certificate authority, and the files that keep one.

The control plane uses it to create its CA and serving certificate on first start and
to sign its agents' certificate requests; the launcher (archipel/fleet) uses it for the
member clusters' own CAs. Keys are ECDSA P-256: generating one is instant, and gRPC,
kube-apiserver and every TLS stack in use accept them.

Private keys are written mode 0600, through a temporary file renamed into place, so
no reader ever sees a half-written key and no key is ever readable by others, even
for an instant.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
SERVING_VALIDITY = datetime.timedelta(days=365)
# Certificates start this long before they are made, so a peer whose clock is a little
# behind does not find them "not yet valid".
BACKDATE = datetime.timedelta(minutes=5)
# The subject organization of every agent's client certificate: the control plane
# accepts no other on the agent port.
AGENT_ORGANIZATION = "archipel:agents"
CA_DIRECTORY = "ca"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def write_file(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``path`` whole or not at all (temporary file, then rename); ``private``
    files are created mode 0600 from their first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, 0o600 if private else 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def general_names(hosts: tuple[str, ...] | list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def subject(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    return x509.Name(attributes)


def organizations(name: x509.Name) -> list[str]:
    return [str(a.value) for a in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def common_name(name: x509.Name) -> str:
    found = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(found[0].value) if found else ""


class CertificateAuthority:
    """A CA's certificate and key, in memory; it issues and signs certificates."""

    def __init__(self, cert: x509.Certificate, key: PrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, common_name: str) -> CertificateAuthority:
        key = new_key()
        now = datetime.datetime.now(datetime.UTC)
        name = subject(common_name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> CertificateAuthority:
        return cls(
            x509.load_pem_x509_certificate(cert_file.read_bytes()), load_key(key_file.read_bytes())
        )

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    def sign(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey,
        *,
        name: x509.Name,
        usage: x509.ObjectIdentifier,
        validity: datetime.timedelta,
        hosts: tuple[str, ...] | list[str] = (),
        backdate: datetime.timedelta = BACKDATE,
    ) -> x509.Certificate:
        """A certificate for ``public_key``, valid from ``backdate`` ago for ``validity``."""
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(general_names(hosts)), critical=False
            )
        algorithm = None if isinstance(self.key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        return builder.sign(self.key, algorithm)

    def issue_server(
        self, hosts: tuple[str, ...] | list[str], *, validity: datetime.timedelta = SERVING_VALIDITY
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A serving certificate (and its new key) for these IP addresses and DNS names."""
        key = new_key()
        cert = self.sign(
            key.public_key(),
            name=subject(hosts[0]),
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            validity=validity,
            hosts=hosts,
        )
        return cert, key

    def issue_client(
        self,
        common_name: str,
        organizations: tuple[str, ...] = (),
        *,
        validity: datetime.timedelta = SERVING_VALIDITY,
        backdate: datetime.timedelta = BACKDATE,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A client certificate (and its new key); Kubernetes and Archipel read the
        identity from CN and its groups from O."""
        key = new_key()
        cert = self.sign(
            key.public_key(),
            name=subject(common_name, organizations),
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            validity=validity,
            backdate=backdate,
        )
        return cert, key


def ensure_ca(directory: Path, *, common_name: str) -> CertificateAuthority:
    """The CA kept in ``directory/ca/`` (``ca.crt``, ``ca.key``), created if missing.

    Several processes sharing ``directory`` (control-plane replicas) may start at once:
    each builds its CA in a directory of its own and renames it into place; a rename
    onto a directory that exists fails, so exactly one wins and the others read the
    winner's. Nobody ever reads a CA half written.
    """
    target = directory / CA_DIRECTORY
    if not (target / CA_KEY).exists():
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=directory, prefix=".ca-"))
        try:
            ca = CertificateAuthority.create(common_name)
            write_file(staging / CA_CERT, ca.cert_pem)
            write_file(staging / CA_KEY, key_pem(ca.key), private=True)
            staging.chmod(0o755)
            try:
                os.rename(staging, target)
                return ca
            except OSError:
                pass  # another process won: read its CA
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return CertificateAuthority.load(target / CA_CERT, target / CA_KEY)


def ca_cert_path(directory: Path) -> Path:
    """Where :func:`ensure_ca` keeps the CA certificate clients trust."""
    return directory / CA_DIRECTORY / CA_CERT


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or ``localhost``) only reaches this machine."""
    bare = host.strip("[]")
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
