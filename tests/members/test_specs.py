"""Member specs and certificates: pure logic, no servers."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from archipel.fleet import pki
from archipel.fleet.members import Fleet, MemberSpec, default_specs


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"name": "Member1"}, "name", id="uppercase"),
        pytest.param({"name": "a_b"}, "name", id="underscore"),
        pytest.param({"name": ""}, "name", id="empty"),
        pytest.param({"name": "ok", "profile": "huge"}, "profile", id="profile"),
    ],
)
def test_bad_spec_names_the_field(kwargs: dict[str, str], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        MemberSpec(**kwargs)  # type: ignore[arg-type]


def test_default_specs_spread_topology() -> None:
    specs = default_specs(4, profile="full")
    assert [s.name for s in specs] == ["member1", "member2", "member3", "member4"]
    assert {s.region for s in specs} == {"region-a", "region-b"}
    assert all(s.zone.startswith(s.region) for s in specs)
    assert all(s.profile == "full" for s in specs)


def test_duplicate_member_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique"):
        Fleet(tmp_path, [MemberSpec("a"), MemberSpec("a")])


def test_issued_certificates_chain_to_the_ca(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority(tmp_path, common_name="test-ca")
    client_pair = ca.issue_client("alice", user="alice", groups=("dev", "ops"))
    server_pair = ca.issue_server("srv", hosts=("127.0.0.1", "localhost"))
    ca_cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    client_cert = x509.load_pem_x509_certificate(client_pair.cert.read_bytes())
    server_cert = x509.load_pem_x509_certificate(server_pair.cert.read_bytes())

    client_cert.verify_directly_issued_by(ca_cert)
    server_cert.verify_directly_issued_by(ca_cert)
    subject = client_cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "dev",
        "ops",
    ]
    names = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert oct(client_pair.key.stat().st_mode & 0o777) == "0o600"
