"""A small certificate authority for local member clusters, writing into a directory.

Each member cluster gets its own CA, so a credential for one member is worthless on
another: isolation between members is real, not a naming convention. The certificates
themselves come from :mod:`archipel.pki`, which the control plane uses too; this module
only names the files a member's kube-apiserver and kubeconfigs read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from archipel import pki


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """PEM files of a certificate and its private key."""

    cert: Path
    key: Path


class CertificateAuthority:
    """A self-signed CA that issues serving and client certificates into a directory."""

    def __init__(self, directory: Path, *, common_name: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = pki.CertificateAuthority.create(common_name)
        self.cert_path = directory / "ca.crt"
        pki.write_file(self.cert_path, self.ca.cert_pem)

    def _write(self, stem: str, issued: tuple[x509.Certificate, pki.PrivateKey]) -> KeyPair:
        cert, key = issued
        pair = KeyPair(cert=self.directory / f"{stem}.crt", key=self.directory / f"{stem}.key")
        pki.write_file(pair.cert, pki.cert_pem(cert))
        pki.write_file(pair.key, pki.key_pem(key), private=True)
        return pair

    def issue_server(self, stem: str, *, hosts: tuple[str, ...]) -> KeyPair:
        """A serving certificate valid for the given IP addresses and DNS names."""
        return self._write(stem, self.ca.issue_server(hosts))

    def issue_client(self, stem: str, *, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
        """A client certificate; Kubernetes reads the user from CN and groups from O."""
        return self._write(stem, self.ca.issue_client(user, groups))


def write_signing_key(private_path: Path, public_path: Path) -> KeyPair:
    """A key pair for signing service-account tokens; ``cert`` holds the public key.

    kube-apiserver verifies tokens with the public half (``--service-account-key-file``)
    and signs with the private half, which it reads in the traditional EC PEM form.
    """
    key = pki.new_key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pki.write_file(private_path, private, private=True)
    pki.write_file(public_path, public)
    return KeyPair(cert=public_path, key=private_path)
