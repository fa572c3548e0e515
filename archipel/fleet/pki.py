"""A small certificate authority for local member clusters.

Each member cluster gets its own CA, so a credential for one member is worthless on
another: isolation between members is real, not a naming convention. Keys are ECDSA
P-256 because generating them is instant, which keeps member start-up fast, and
kube-apiserver accepts them for serving, client authentication and service-account
token signing alike.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=365)


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """PEM files of a certificate and its private key."""

    cert: Path
    key: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


class CertificateAuthority:
    """A self-signed CA that issues serving and client certificates into a directory."""

    def __init__(self, directory: Path, *, common_name: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self._name = name
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
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
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = directory / "ca.crt"
        _write(self.cert_path, self._cert.public_bytes(serialization.Encoding.PEM))

    def _issue(
        self,
        stem: str,
        *,
        common_name: str,
        organizations: tuple[str, ...],
        usage: x509.ObjectIdentifier,
        hosts: tuple[str, ...] = (),
    ) -> KeyPair:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        pair = KeyPair(cert=self.directory / f"{stem}.crt", key=self.directory / f"{stem}.key")
        _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
        _write(pair.key, _key_pem(key), private=True)
        return pair

    def issue_server(self, stem: str, *, hosts: tuple[str, ...]) -> KeyPair:
        """A serving certificate valid for the given IP addresses and DNS names."""
        return self._issue(
            stem,
            common_name=hosts[0],
            organizations=(),
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            hosts=hosts,
        )

    def issue_client(self, stem: str, *, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
        """A client certificate; Kubernetes reads the user from CN and groups from O."""
        return self._issue(
            stem, common_name=user, organizations=groups, usage=ExtendedKeyUsageOID.CLIENT_AUTH
        )


def write_signing_key(private_path: Path, public_path: Path) -> KeyPair:
    """A key pair for signing service-account tokens; ``cert`` holds the public key.

    kube-apiserver verifies tokens with the public half (``--service-account-key-file``)
    and signs with the private half, which it reads in the traditional EC PEM form.
    """
    key = _new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write(private_path, private, private=True)
    _write(public_path, public)
    return KeyPair(cert=public_path, key=private_path)
