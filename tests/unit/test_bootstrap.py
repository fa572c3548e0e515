"""Bootstrap tokens (format, hashing) and the certificate signing requests the control
plane accepts from agents (archipel/bootstrap.py), as tables."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from archipel import bootstrap, pki
from archipel.core.errors import Invalid, PermissionDenied, Unauthenticated


def test_new_tokens_have_the_kubernetes_form_and_differ() -> None:
    tokens = {str(bootstrap.new_token()) for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token)
        assert bootstrap.parse_token(token) == bootstrap.Token(*token.split("."))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abcdef",
        "abcdef.",
        "abcde.0123456789abcdef",  # id too short
        "abcdef.0123456789abcde",  # secret too short
        "ABCDEF.0123456789abcdef",  # upper case
        "abcdef.0123456789abcdef.x",
        "m1.3Wq8xRkL0pbzE5ysg1-qvZ0",  # a join token is not a bootstrap token
    ],
)
def test_malformed_tokens_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        bootstrap.parse_token(text)
    assert "archipel token create" in str(refused.value)
    if text:
        assert text not in str(refused.value)


def test_only_the_hash_is_kept_and_it_matches_its_token_alone() -> None:
    token = bootstrap.new_token()
    stored = bootstrap.hash_secret(token)
    assert token.secret not in stored and len(stored) == 64
    assert bootstrap.secret_matches(token, stored)
    other = bootstrap.Token(token.id, "0" * 16)
    assert not bootstrap.secret_matches(other, stored)
    # The id is part of the hash: the same secret under another id is another token.
    assert not bootstrap.secret_matches(bootstrap.Token("zzzzzz", token.secret), stored)


def _csr(
    *,
    cn: str | None = "member1",
    orgs: tuple[str, ...] = (pki.AGENT_ORGANIZATION,),
    key: object = None,
    extra: list[x509.NameAttribute[str]] | None = None,
) -> bytes:
    private = key if key is not None else pki.new_key()
    attributes = []
    if cn is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in orgs]
    attributes += extra or []
    algorithm = None if isinstance(private, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    signed = request.sign(private, algorithm)  # type: ignore[arg-type]
    return signed.public_bytes(serialization.Encoding.PEM)


def _tampered() -> bytes:
    """A CSR whose subject was changed after it was signed."""
    good = x509.load_pem_x509_csr(_csr())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    index = der.find(b"member1")
    der[index : index + 7] = b"member2"
    loaded = x509.load_der_x509_csr(bytes(der))
    return loaded.public_bytes(serialization.Encoding.PEM)


ACCEPTED: dict[str, Callable[[], bytes]] = {
    "P-256": lambda: _csr(),
    "P-384": lambda: _csr(key=ec.generate_private_key(ec.SECP384R1())),
    "Ed25519": lambda: _csr(key=ed25519.Ed25519PrivateKey.generate()),
    "RSA 2048": lambda: _csr(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    "made by make_csr": lambda: bootstrap.make_csr("member1", pki.new_key()),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_csrs_the_control_plane_signs(name: str) -> None:
    request = bootstrap.check_csr(ACCEPTED[name]())
    assert bootstrap.csr_cluster(request) == "member1"
    assert bootstrap.check_csr(ACCEPTED[name](), bound_cluster="member1")


REFUSED: dict[str, tuple[Callable[[], bytes | str], str]] = {
    "empty": (lambda: b"", "required"),
    "not PEM": (lambda: b"hello", "not a PEM certificate signing request"),
    "a certificate, not a CSR": (
        lambda: pki.cert_pem(pki.CertificateAuthority.create("x").cert),
        "not a PEM certificate signing request",
    ),
    "too large": (lambda: b"x" * (bootstrap.MAX_CSR_BYTES + 1), "more than"),
    "signature does not hold": (_tampered, "signature"),
    "no CN": (lambda: _csr(cn=None), "one CN"),
    "CN not a DNS label": (lambda: _csr(cn="Member_1"), "not a valid cluster name"),
    "CN too long": (lambda: _csr(cn="a" * 64), "not a valid cluster name"),
    "no organization": (lambda: _csr(orgs=()), "O must be archipel:agents"),
    "another organization": (lambda: _csr(orgs=("system:masters",)), "O must be"),
    "an extra organization": (
        lambda: _csr(orgs=(pki.AGENT_ORGANIZATION, "system:masters")),
        "O must be",
    ),
    "other subject fields": (
        lambda: _csr(extra=[x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]),
        "only CN and O",
    ),
    "RSA 1024": (
        lambda: _csr(key=rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        "2048 at least",
    ),
    "curve P-521": (
        lambda: _csr(key=ec.generate_private_key(ec.SECP521R1())),
        "P-256 or P-384 only",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_csrs_the_control_plane_refuses(name: str) -> None:
    make, problem = REFUSED[name]
    with pytest.raises(Invalid) as refused:
        bootstrap.check_csr(make())
    assert refused.value.field == "csr"
    assert problem in str(refused.value)


def test_a_token_bound_to_a_cluster_registers_that_cluster_only() -> None:
    with pytest.raises(PermissionDenied, match="not the cluster member2"):
        bootstrap.check_csr(_csr(cn="member1"), bound_cluster="member2")
