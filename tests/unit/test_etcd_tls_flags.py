"""The control plane's etcd TLS flags (``--etcd-cafile``, ``--etcd-certfile``,
``--etcd-keyfile``): each combination that cannot work, and each file that cannot be
used, stops the control plane before anything starts, in one line naming the flag,
with exit code 1. And the client for one member verifies it under the endpoint's host."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from archipel import pki
from controlplane import etcd
from controlplane.server import main, parse_args

PROG = "archipel-controlplane"

# The flags, and the one line they get.
BAD_COMBINATIONS = [
    (
        ["--etcd=https://etcd-0.example:2379"],
        "--etcd-cafile: https://etcd-0.example:2379 is TLS: pass the CA bundle that signed "
        "etcd's certificate (etcd's --trusted-ca-file, or its issuer)",
    ),
    (
        [
            "--etcd=https://etcd-0.example:2379",
            "--etcd-certfile=client.crt",
            "--etcd-keyfile=client.key",
        ],
        "--etcd-cafile: https://etcd-0.example:2379 is TLS: pass the CA bundle that signed "
        "etcd's certificate (etcd's --trusted-ca-file, or its issuer)",
    ),
    (
        ["--etcd=https://etcd-0.example:2379", "--etcd-cafile=ca.crt", "--etcd-certfile=c.crt"],
        "--etcd-keyfile: --etcd-certfile c.crt needs its private key",
    ),
    (
        ["--etcd=https://etcd-0.example:2379", "--etcd-cafile=ca.crt", "--etcd-keyfile=c.key"],
        "--etcd-certfile: --etcd-keyfile c.key needs its certificate",
    ),
    (
        ["--etcd=http://etcd-0.example:2379", "--etcd-cafile=ca.crt"],
        "--etcd-cafile: every --etcd endpoint is plaintext (http://), so it would not be "
        "used: name them https:// to speak TLS to etcd",
    ),
    (
        ["--etcd=127.0.0.1:2379", "--etcd-certfile=c.crt", "--etcd-keyfile=c.key"],
        "--etcd-certfile: every --etcd endpoint is plaintext (http://), so it would not be "
        "used: name them https:// to speak TLS to etcd",
    ),
    (
        [
            "--etcd=https://etcd-0.example:2379,http://etcd-1.example:2379",
            "--etcd-cafile=ca.crt",
        ],
        "--etcd: https://etcd-0.example:2379 is TLS and http://etcd-1.example:2379 is "
        "plaintext: the members of one etcd cluster are all https:// or all http://",
    ),
    (
        ["--etcd=etcd-0.example:2379", "--etcd=https://etcd-1.example:2379"],
        "--etcd: https://etcd-1.example:2379 is TLS and etcd-0.example:2379 is plaintext: "
        "the members of one etcd cluster are all https:// or all http://",
    ),
    (
        ["--etcd=unix:///run/etcd.sock"],
        "--etcd: unix:///run/etcd.sock: an etcd client URL is http:// or https://",
    ),
]


@pytest.mark.parametrize(("argv", "line"), BAD_COMBINATIONS)
def test_a_bad_combination_is_one_line_naming_the_flag(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 1
    assert capsys.readouterr().err == f"{PROG}: {line}\n"


def test_good_combinations_are_taken() -> None:
    settings = parse_args(
        [
            "--etcd=https://etcd-0.example:2379,https://etcd-1.example:2379",
            "--etcd-cafile=/etc/etcd/ca.crt",
            "--etcd-certfile=/etc/etcd/tls.crt",
            "--etcd-keyfile=/etc/etcd/tls.key",
        ]
    )
    assert settings.etcd_endpoints == ["https://etcd-0.example:2379", "https://etcd-1.example:2379"]
    assert settings.etcd_cafile == Path("/etc/etcd/ca.crt")
    assert settings.etcd_certfile == Path("/etc/etcd/tls.crt")
    assert settings.etcd_keyfile == Path("/etc/etcd/tls.key")
    # Server TLS only (an etcd without --client-cert-auth), and plaintext as before.
    only_ca = parse_args(["--etcd=https://etcd:2379", "--etcd-cafile=ca.crt"])
    assert only_ca.etcd_certfile is None and only_ca.etcd_keyfile is None
    plaintext = parse_args(["--etcd=http://127.0.0.1:2379"])
    assert plaintext.etcd_cafile is None


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A CA, a client certificate and its key, another key, an expired certificate, and
    files that are no PEM at all."""
    authority = pki.CertificateAuthority.create("etcd-ca")
    cert, key = authority.issue_client("archipel")
    expired, expired_key = authority.issue_client(
        "archipel",
        # Valid from two hours ago to one hour ago.
        validity=datetime.timedelta(hours=-1),
        backdate=datetime.timedelta(hours=2),
    )
    made = {
        "ca": (tmp_path / "ca.crt", authority.cert_pem),
        "cert": (tmp_path / "client.crt", pki.cert_pem(cert)),
        "key": (tmp_path / "client.key", pki.key_pem(key)),
        "other_key": (tmp_path / "other.key", pki.key_pem(pki.new_key())),
        "expired": (tmp_path / "expired.crt", pki.cert_pem(expired)),
        "expired_key": (tmp_path / "expired.key", pki.key_pem(expired_key)),
        "junk": (tmp_path / "junk.pem", b"not a PEM file\n"),
    }
    for path, data in made.values():
        path.write_bytes(data)
    return {name: path for name, (path, _) in made.items()} | {
        "missing": tmp_path / "missing.pem",
        "directory": tmp_path,
    }


# (--etcd-cafile, --etcd-certfile, --etcd-keyfile) by the names of ``files``, and the
# line, with {name} for a file's path.
BAD_FILES = [
    (("missing", "cert", "key"), "--etcd-cafile: cannot read {missing}: No such file or directory"),
    (("directory", "cert", "key"), "--etcd-cafile: cannot read {directory}: Is a directory"),
    (("junk", "cert", "key"), "--etcd-cafile: {junk} holds no PEM certificate"),
    (("ca", "missing", "key"), "--etcd-certfile: cannot read {missing}: No such file or directory"),
    (("ca", "cert", "missing"), "--etcd-keyfile: cannot read {missing}: No such file or directory"),
    (("ca", "junk", "key"), "--etcd-certfile: {junk} holds no PEM certificate"),
    (("ca", "cert", "junk"), "--etcd-keyfile: {junk} holds no PEM private key"),
    (("ca", "cert", "ca"), "--etcd-keyfile: {ca} holds no PEM private key"),
    (
        ("ca", "cert", "other_key"),
        "--etcd-keyfile: {other_key} is not the key of the certificate in --etcd-certfile {cert}",
    ),
    (("ca", "expired", "expired_key"), "--etcd-certfile: {expired} expired at "),
]


@pytest.mark.parametrize(("names", "line"), BAD_FILES)
def test_a_file_that_cannot_be_used_is_one_line_naming_the_flag_and_nothing_starts(
    names: tuple[str, str, str],
    line: str,
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ca, cert, key = (files[name] for name in names)
    token = tmp_path / "admin-token"
    code = main(
        [
            # Nothing listens there: were anything to start, it would not get far.
            "--etcd=https://127.0.0.1:1",
            f"--etcd-cafile={ca}",
            f"--etcd-certfile={cert}",
            f"--etcd-keyfile={key}",
            f"--admin-token-file={token}",
            f"--pki-dir={tmp_path / 'pki'}",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"{PROG}: {line.format(**files)}"), err
    assert not token.exists() and not (tmp_path / "pki").exists()


def test_the_files_are_read_and_kept(files: dict[str, Path]) -> None:
    tls = etcd.load_tls(files["ca"], files["cert"], files["key"])
    assert tls is not None
    assert tls.ca == files["ca"].read_bytes() and tls.ca_file == str(files["ca"])
    assert tls.cert == files["cert"].read_bytes() and tls.key == files["key"].read_bytes()
    only_ca = etcd.load_tls(files["ca"], None, None)
    assert only_ca is not None and only_ca.cert is None and only_ca.key is None
    assert etcd.load_tls(None, None, None) is None


@pytest.mark.parametrize(
    ("endpoint", "host", "target"),
    [
        ("https://127.0.0.1:2379", "127.0.0.1", "ipv4:127.0.0.1:2379"),
        # Not 127.0.0.1, as etcd3aio would make of it: the certificate names localhost.
        ("https://localhost:2379", "localhost", "dns:///localhost:2379"),
        ("https://etcd-0.etcd.archipel-system.svc:2379/", "etcd-0.etcd.archipel-system.svc", None),
        ("https://[::1]:2379", "::1", "ipv6:[::1]:2379"),
    ],
)
def test_each_member_is_verified_under_its_endpoints_host(
    endpoint: str, host: str, target: str | None, files: dict[str, Path]
) -> None:
    tls = etcd.load_tls(files["ca"], files["cert"], files["key"])
    client = etcd._member_client(endpoint, tls)
    assert client._tls_server_name == host
    assert client._conn_args == {"ca_cert": tls.ca, "cert_key": tls.key, "cert_chain": tls.cert}
    if target is not None:
        assert client._manager.target == target
    plaintext = etcd._member_client(endpoint.replace("https://", "http://"))
    assert plaintext._conn_args == {} and plaintext._tls_server_name is None


def test_the_client_wants_tls_settings_exactly_for_https(files: dict[str, Path]) -> None:
    tls = etcd.load_tls(files["ca"], None, None)
    with pytest.raises(etcd.TLSError, match="--etcd-cafile"):
        etcd.Etcd(["https://127.0.0.1:2379"])
    with pytest.raises(etcd.TLSError, match="--etcd-cafile"):
        etcd.Etcd(["http://127.0.0.1:2379"], tls=tls)
    with pytest.raises(etcd.TLSError, match="--etcd: "):
        etcd.Etcd(["https://127.0.0.1:2379", "http://127.0.0.1:2380"], tls=tls)
    assert etcd.Etcd(["https://127.0.0.1:2379"], tls=tls).tls is tls
