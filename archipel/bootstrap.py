"""Bootstrap tokens and agents' certificate signing requests: formats and checks.

A bootstrap token is Kubernetes' format, ``[a-z0-9]{6}.[a-z0-9]{16}``: a public id and
a secret. The control plane stores the id, a hash of the secret and an expiry, never the
secret. An agent sends the token with a certificate signing request (CSR) for its own
key; :func:`check_csr` is what the control plane accepts. Both sides use this module:
the agent builds its CSR with :func:`make_csr`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from archipel import pki
from archipel.core.errors import Invalid, PermissionDenied, Unauthenticated

TOKEN_PATTERN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
USAGES = ("join",)
MAX_CSR_BYTES = 16 * 1024
# A cluster's name is a DNS label, as MemberCluster names are.
_CLUSTER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Keys an agent may have: P-256 and P-384, Ed25519, RSA of 2048 bits or more.
_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048


@dataclasses.dataclass(frozen=True)
class Token:
    id: str
    secret: str

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}"


def new_token() -> Token:
    return Token(
        "".join(secrets.choice(_ALPHABET) for _ in range(6)),
        "".join(secrets.choice(_ALPHABET) for _ in range(16)),
    )


def parse_token(text: str) -> Token:
    """The token in ``text``; :class:`Unauthenticated` if it is not one (the message
    never repeats the text: it may be a secret of something else)."""
    found = TOKEN_PATTERN.match(text.strip())
    if found is None:
        raise Unauthenticated(
            "bootstrap token: not of the form <6 of [a-z0-9]>.<16 of [a-z0-9]>; "
            "create one with archipel token create"
        )
    return Token(found.group(1), found.group(2))


def hash_secret(token: Token) -> str:
    """What is stored of a token's secret: SHA-256 over the id and the secret."""
    return hashlib.sha256(f"{token.id}.{token.secret}".encode()).hexdigest()


def secret_matches(token: Token, stored_hash: str) -> bool:
    """Whether ``token`` is the one ``stored_hash`` was made from (constant time)."""
    return secrets.compare_digest(hash_secret(token).encode(), stored_hash.encode())


def is_cluster_name(name: str) -> bool:
    return bool(_CLUSTER_NAME.match(name))


def make_csr(cluster: str, key: pki.PrivateKey) -> bytes:
    """The CSR, PEM, an agent sends for ``key``: CN=<cluster>, O=archipel:agents."""
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(pki.subject(cluster, (pki.AGENT_ORGANIZATION,)))
        .sign(key, algorithm)
    )
    return request.public_bytes(serialization.Encoding.PEM)


def key_fingerprint(public_key: object) -> str:
    """A short hash of a public key: what names a registration."""
    assert isinstance(
        public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    )
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:10]


def check_csr(pem: str | bytes, *, bound_cluster: str = "") -> x509.CertificateSigningRequest:
    """The CSR in ``pem`` if the control plane may sign it for an agent; otherwise
    :class:`Invalid` naming the field ``csr`` and what is wrong.

    It must be one PEM CSR whose signature holds (its sender has the key), whose subject
    is exactly CN=<a valid cluster name> and O=archipel:agents, whose key is of a kind
    allowed, and, for a token bound to a cluster, for that cluster.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    if not data.strip():
        raise Invalid("csr", "required: a PEM certificate signing request")
    if len(data) > MAX_CSR_BYTES:
        raise Invalid("csr", f"{len(data)} bytes, more than the {MAX_CSR_BYTES} a CSR may have")
    try:
        request = x509.load_pem_x509_csr(data)
    except ValueError:
        raise Invalid("csr", "not a PEM certificate signing request") from None
    if not request.is_signature_valid:
        raise Invalid("csr", "its signature does not match its key")
    key = request.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            raise Invalid("csr", f"key curve {key.curve.name}: P-256 or P-384 only")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise Invalid("csr", f"RSA key of {key.key_size} bits: {MIN_RSA_BITS} at least")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise Invalid("csr", f"key type {type(key).__name__}: ECDSA, Ed25519 or RSA only")
    names = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise Invalid("csr", "the subject must have one CN: the cluster's name")
    cluster = str(names[0].value)
    if not is_cluster_name(cluster):
        raise Invalid("csr", f"CN {cluster[:80]!r} is not a valid cluster name (a DNS label)")
    if pki.organizations(request.subject) != [pki.AGENT_ORGANIZATION]:
        raise Invalid("csr", f"the subject's O must be {pki.AGENT_ORGANIZATION} (and only it)")
    others = {a.oid for a in request.subject} - {NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME}
    if others:
        raise Invalid("csr", "the subject may hold only CN and O")
    if bound_cluster and cluster != bound_cluster:
        raise PermissionDenied(
            f"csr: CN {cluster} is not the cluster {bound_cluster} this bootstrap token is for"
        )
    return request


def csr_cluster(request: x509.CertificateSigningRequest) -> str:
    return pki.common_name(request.subject)
