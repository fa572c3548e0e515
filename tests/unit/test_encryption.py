"""Encryption at rest without etcd: the EncryptionConfiguration parser (every bad file
is refused with one line naming the field, never a secret) and the transformer (what
is encrypted, the stored format, keys, associated data, and what cannot be read)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import struct_pb2

from archipel.core import kinds
from archipel.core.errors import Corrupt
from archipel.fleet.controlplane import encryption_config_text, write_encryption_config
from archipel.v1alpha1 import work_pb2
from controlplane import encryption
from controlplane.encryption import (
    AESGCM_PREFIX,
    ConfigError,
    Encryption,
    UnsupportedValue,
    guess_resource,
    load_config,
    parse_config,
    resource_of_key,
)
from controlplane.etcd import Undecryptable, Unreadable
from controlplane.store import decode

KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))
SECRET1 = base64.b64encode(KEY1).decode()
SECRET2 = base64.b64encode(KEY2).decode()
PREFIX = b"/archipel/"
SECRET_KEY = kinds.template_key("v1", "Secret", "shop", "db")


def config(*rules: tuple[list[str], list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{"resources": names, "providers": providers} for names, providers in rules],
    }


def aesgcm(*keys: tuple[str, str]) -> dict[str, Any]:
    return {"aesgcm": {"keys": [{"name": name, "secret": secret} for name, secret in keys]}}


IDENTITY: dict[str, Any] = {"identity": {}}


def transformer(*rules: tuple[list[str], list[dict[str, Any]]]) -> Encryption:
    return Encryption(parse_config(config(*rules)))


def write(t: Encryption, key: str, value: bytes) -> bytes:
    return t.write(key, value, context=PREFIX + key.encode())


def read(t: Encryption, key: str, value: bytes) -> bytes:
    return t.read(key, value, context=PREFIX + key.encode())


def secret_manifest(value: str = "hunter2") -> bytes:
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "shop"},
        "data": {"password": base64.b64encode(value.encode()).decode()},
    }
    return json.dumps(manifest).encode()


def work_of(api_version: str, kind: str) -> bytes:
    manifest = struct_pb2.Struct()
    manifest.update({"apiVersion": api_version, "kind": kind, "metadata": {"name": "db"}})
    work = work_pb2.PropagationWork(api_version="work.archipel.io/v1alpha1", kind="PropagationWork")
    work.metadata.name = "shop.db-secret"
    work.metadata.namespace = "archipel-es-m1"
    work.spec.workload.manifests.append(manifest)
    return work.SerializeToString()


def binding_of(api_version: str, kind: str) -> bytes:
    binding = work_pb2.PropagationBinding()
    binding.metadata.name = "db-secret"
    binding.spec.resource.api_version = api_version
    binding.spec.resource.kind = kind
    binding.spec.template_digest = "0123456789abcdef"
    return binding.SerializeToString()


WORK_KEY = kinds.PROPAGATION_WORK.key("archipel-es-m1", "shop.db-secret")
BINDING_KEY = kinds.PROPAGATION_BINDING.key("shop", "db-secret")

# -- the transformer -------------------------------------------------------------------


def test_a_secret_is_stored_as_kube_apiserver_stores_it_and_reads_back() -> None:
    t = transformer((["secrets"], [aesgcm(("key1", SECRET1)), IDENTITY]))
    plaintext = secret_manifest()
    stored = write(t, SECRET_KEY, plaintext)
    assert stored.startswith(AESGCM_PREFIX + b"key1:")
    body = stored[len(AESGCM_PREFIX + b"key1:") :]
    assert len(body) == 12 + len(plaintext) + 16  # nonce, ciphertext, tag
    assert b"hunter2" not in stored and base64.b64encode(b"hunter2") not in stored
    assert read(t, SECRET_KEY, stored) == plaintext
    # A fresh nonce for every write: the same value never gives the same ciphertext.
    assert write(t, SECRET_KEY, plaintext) != stored
    assert t.stored_with(stored) == "aesgcm:key1"


def test_kube_apiserver_format_interoperates_with_a_plain_aes_gcm() -> None:
    """The stored value is exactly prefix + nonce + AES-GCM(ciphertext+tag) with the
    whole etcd key as associated data, so kube-apiserver's own format is read."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    t = transformer((["secrets"], [aesgcm(("key1", SECRET1))]))
    context = PREFIX + SECRET_KEY.encode()
    nonce = b"\x01" * 12
    handmade = AESGCM_PREFIX + b"key1:" + nonce + AESGCM(KEY1).encrypt(nonce, b"{}", context)
    assert t.read(SECRET_KEY, handmade, context=context) == b"{}"


def test_the_first_key_writes_and_every_key_reads() -> None:
    old = transformer((["secrets"], [aesgcm(("key1", SECRET1))]))
    stored_old = write(old, SECRET_KEY, b"old")
    rotated = transformer((["secrets"], [aesgcm(("key2", SECRET2), ("key1", SECRET1))]))
    assert read(rotated, SECRET_KEY, stored_old) == b"old"
    assert rotated.stored_with(write(rotated, SECRET_KEY, b"new")) == "aesgcm:key2"
    # A key in a later provider, or in another rule, decrypts too.
    later = transformer(
        (["configmaps"], [aesgcm(("key1", SECRET1))]),
        (["secrets"], [IDENTITY, aesgcm(("key3", SECRET2))]),
    )
    assert read(later, SECRET_KEY, stored_old) == b"old"
    assert write(later, SECRET_KEY, b"plain") == b"plain"  # identity first: plaintext


def test_plaintext_reads_as_plaintext() -> None:
    t = transformer((["secrets"], [aesgcm(("key1", SECRET1))]))
    assert read(t, SECRET_KEY, secret_manifest()) == secret_manifest()
    assert t.stored_with(secret_manifest()) == "identity"


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda v: v[:-1] + bytes([v[-1] ^ 1]), "fails authentication"),
        (lambda v: v.replace(b":key1:", b":key9:"), "key 'key9', which is not configured"),
        (lambda v: v[: len(AESGCM_PREFIX) + 10], "cut short"),
        (lambda v: AESGCM_PREFIX + b"nokeyname", "without its key name"),
    ],
)
def test_what_no_key_decrypts_is_undecryptable_never_plaintext(tamper: Any, reason: str) -> None:
    t = transformer((["secrets"], [aesgcm(("key1", SECRET1))]))
    stored = write(t, SECRET_KEY, secret_manifest())
    with pytest.raises(Undecryptable, match=reason):
        read(t, SECRET_KEY, tamper(stored))


def test_a_ciphertext_moved_to_another_key_does_not_decrypt() -> None:
    t = transformer((["secrets"], [aesgcm(("key1", SECRET1))]))
    stored = write(t, SECRET_KEY, secret_manifest())
    other = kinds.template_key("v1", "Secret", "shop", "other")
    with pytest.raises(Undecryptable, match="fails authentication"):
        read(t, other, stored)
    # The etcd prefix is part of the associated data too, as kube-apiserver's path is.
    with pytest.raises(Undecryptable):
        t.read(SECRET_KEY, stored, context=b"/other-plane/" + SECRET_KEY.encode())


def test_a_key_of_the_same_name_with_another_secret_fails_authentication() -> None:
    stored = write(transformer((["secrets"], [aesgcm(("key1", SECRET1))])), SECRET_KEY, b"x")
    impostor = transformer((["secrets"], [aesgcm(("key1", SECRET2))]))
    with pytest.raises(Undecryptable, match="fails authentication"):
        read(impostor, SECRET_KEY, stored)


def test_providers_archipel_does_not_implement_are_named() -> None:
    t = transformer((["secrets"], [aesgcm(("key1", SECRET1))]))
    with pytest.raises(UnsupportedValue, match="'aescbc'"):
        read(t, SECRET_KEY, b"k8s:enc:aescbc:v1:key1:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
    with pytest.raises(UnsupportedValue, match="'kms'"):
        read(t, SECRET_KEY, b"k8s:enc:kms:v2:provider:xxxx")


def test_an_undecryptable_value_is_a_corrupt_object_naming_why() -> None:
    unreadable = Unreadable(b"k8s:enc:aesgcm:v1:gone:...", "encrypted with aesgcm key 'gone'")
    with pytest.raises(Corrupt, match="encrypted with aesgcm key 'gone'") as raised:
        decode(kinds.RESOURCE_TEMPLATE, SECRET_KEY, unreadable, 7)
    assert raised.value.key == SECRET_KEY


@pytest.mark.parametrize(
    ("kind", "resource"),
    [
        ("Secret", "secrets"),
        ("ConfigMap", "configmaps"),
        ("NetworkPolicy", "networkpolicies"),
        ("Ingress", "ingresses"),
        ("Endpoints", "endpoints"),
        ("Deployment", "deployments"),
    ],
)
def test_a_kind_is_named_by_the_plural_kubernetes_guesses(kind: str, resource: str) -> None:
    assert guess_resource(kind) == resource


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (SECRET_KEY, ("", "secrets")),
        (kinds.template_key("apps/v1", "Deployment", "shop", "web"), ("apps", "deployments")),
        (kinds.template_key("v1", "Namespace", "", "shop"), ("", "namespaces")),
        (kinds.PROPAGATION_POLICY.key("shop", "p"), ("policy.archipel.io", "propagationpolicies")),
        (WORK_KEY, ("work.archipel.io", "propagationworks")),
        ("credentials/_/m1", None),
        ("replicas/shards/3", None),
    ],
)
def test_stored_keys_map_to_resources(key: str, expected: tuple[str, str] | None) -> None:
    assert resource_of_key(key) == expected


@pytest.mark.parametrize(
    ("resources", "encrypted", "plain"),
    [
        (["secrets"], [SECRET_KEY], [kinds.template_key("v1", "ConfigMap", "shop", "c")]),
        (
            ["deployments.apps"],
            [kinds.template_key("apps/v1", "Deployment", "shop", "web")],
            [SECRET_KEY, kinds.template_key("apps/v1", "StatefulSet", "shop", "db")],
        ),
        (
            ["*.apps"],
            [kinds.template_key("apps/v1", "StatefulSet", "shop", "db")],
            [SECRET_KEY],
        ),
        (["*."], [SECRET_KEY], [kinds.template_key("apps/v1", "Deployment", "shop", "web")]),
        (
            ["propagationpolicies.policy.archipel.io"],
            [kinds.PROPAGATION_POLICY.key("shop", "p")],
            [SECRET_KEY],
        ),
        (
            ["*.*"],
            [SECRET_KEY, kinds.MEMBER_CLUSTER.key("", "m1")],
            # What is not an object never is: credentials, the replicas' shards.
            ["credentials/_/m1", "replicas/shards/3", "replicas/epochs/m1"],
        ),
    ],
)
def test_resources_choose_what_is_encrypted(
    resources: list[str], encrypted: list[str], plain: list[str]
) -> None:
    t = transformer((resources, [aesgcm(("key1", SECRET1))]))
    for key in encrypted:
        assert write(t, key, b"{}").startswith(AESGCM_PREFIX), key
    for key in plain:
        assert write(t, key, b"{}") == b"{}", key


def test_works_and_bindings_follow_their_templates_kind() -> None:
    t = transformer((["secrets"], [aesgcm(("key1", SECRET1))]))
    secret_work = work_of("v1", "Secret")
    assert write(t, WORK_KEY, secret_work).startswith(AESGCM_PREFIX)
    assert read(t, WORK_KEY, write(t, WORK_KEY, secret_work)) == secret_work
    assert write(t, WORK_KEY, work_of("apps/v1", "Deployment")) == work_of("apps/v1", "Deployment")
    # The binding holds a digest of the Secret's data: encrypted too.
    assert write(t, BINDING_KEY, binding_of("v1", "Secret")).startswith(AESGCM_PREFIX)
    assert write(t, BINDING_KEY, binding_of("v1", "ConfigMap")) == binding_of("v1", "ConfigMap")


def test_a_work_takes_the_first_rule_naming_it_or_its_template() -> None:
    # kube-apiserver's order: the first rule that names the resource decides. A later
    # catch-all identity rule does not take a Secret's work out of encryption...
    t = transformer(
        (["secrets"], [aesgcm(("key1", SECRET1))]),
        (["*.*"], [IDENTITY]),
    )
    assert t.stored_with(write(t, WORK_KEY, work_of("v1", "Secret"))) == "aesgcm:key1"
    # ...and a rule for works themselves, first, applies to every work.
    t = transformer(
        (["propagationworks.work.archipel.io"], [aesgcm(("key2", SECRET2))]),
        (["secrets"], [aesgcm(("key1", SECRET1))]),
    )
    assert t.stored_with(write(t, WORK_KEY, work_of("v1", "Secret"))) == "aesgcm:key2"
    assert t.stored_with(write(t, WORK_KEY, work_of("apps/v1", "Deployment"))) == "aesgcm:key2"


# -- the configuration -----------------------------------------------------------------


def test_the_launchers_configuration_parses() -> None:
    parsed = parse_config(
        yaml.safe_load(encryption_config_text([("key2", KEY2), ("key1", KEY1)], ["secrets"]))
    )
    (rule,) = parsed.rules
    assert rule.resources == ("secrets",)
    assert [p.kind for p in rule.providers] == ["aesgcm", "identity"]
    assert [k.name for k in rule.providers[0].keys] == ["key2", "key1"]
    assert set(parsed.keys) == {"key1", "key2"}


def test_one_key_may_serve_several_rules() -> None:
    parsed = parse_config(
        config(
            (["secrets"], [aesgcm(("key1", SECRET1))]),
            (["configmaps"], [aesgcm(("key1", SECRET1))]),
        )
    )
    assert list(parsed.keys) == ["key1"]


GOOD_RULE = {"resources": ["secrets"], "providers": [aesgcm(("key1", SECRET1))]}


def with_rule(**fields: Any) -> dict[str, Any]:
    return config() | {"resources": [GOOD_RULE | fields]}


def with_provider(provider: Any) -> dict[str, Any]:
    return with_rule(providers=[provider])


def with_key(**fields: Any) -> dict[str, Any]:
    return with_provider({"aesgcm": {"keys": [{"name": "key1", "secret": SECRET1} | fields]}})


BAD_CONFIGS: list[tuple[Any, str]] = [
    ([], "must be a mapping (an EncryptionConfiguration)"),
    (config() | {"apiVersion": "apiserver.config.k8s.io/v2"}, "apiVersion: must be"),
    (config() | {"kind": "EncryptionConfig"}, "kind: must be EncryptionConfiguration"),
    (config() | {"resource": []}, "resource: unknown field"),
    ({k: v for k, v in config().items() if k != "resources"}, "resources: required"),
    (config(), "resources: must be a non-empty list"),
    (config() | {"resources": ["secrets"]}, "resources[0]: must be a mapping"),
    (with_rule(resources=None), "resources[0].resources: required"),
    (with_rule(resources=[]), "resources[0].resources: must be a non-empty list"),
    (with_rule(resources=["Secrets"]), "resources[0].resources[0]: 'Secrets' must be lowercase"),
    (with_rule(resources=[7]), "resources[0].resources[0]: must be a resource name"),
    (with_rule(resources=["*"]), "resources[0].resources[0]: '*' is not a resource"),
    (with_rule(resources=["secrets.*"]), "resources[0].resources[0]: 'secrets.*'"),
    (with_rule(resources=["se crets"]), "resources[0].resources[0]: 'se crets' is not"),
    (with_rule(resources=["deployments.Apps"]), "resources[0].resources[0]"),
    (with_rule(resources=["deployments.ap_ps"]), "does not name a valid API group"),
    (with_rule(resources=["secrets", "secrets"]), "resources[0].resources[1]: 'secrets' is listed"),
    (with_rule(resources=["*.*", "secrets"]), "resources[0].resources[1]: 'secrets' is covered"),
    (with_rule(resources=["*.", "secrets"]), "resources[0].resources[1]: 'secrets' is covered"),
    (
        with_rule(resources=["*.apps", "deployments.apps"]),
        "resources[0].resources[1]: 'deployments.apps' is covered by '*.apps'",
    ),
    (
        config() | {"resources": [GOOD_RULE, GOOD_RULE]},
        "resources[1].resources[0]: 'secrets' is listed already, in resources[0].resources[0]",
    ),
    (with_rule(colour="blue"), "resources[0].colour: unknown field"),
    (with_rule(providers=None), "resources[0].providers: required"),
    (with_rule(providers=[]), "resources[0].providers: must be a non-empty list"),
    (
        with_provider({"kms": {"name": "vault", "endpoint": "unix:///kms.sock"}}),
        "resources[0].providers[0].kms: not supported by Archipel",
    ),
    (
        with_provider({"secretbox": {"keys": [{"name": "k", "secret": SECRET1}]}}),
        "resources[0].providers[0].secretbox: not supported by Archipel",
    ),
    (
        with_provider({"aescbc": {"keys": [{"name": "k", "secret": SECRET1}]}}),
        "resources[0].providers[0].aescbc: not supported by Archipel",
    ),
    (with_provider({"aesgmc": {}}), "resources[0].providers[0].aesgmc: unknown field"),
    (with_provider("identity"), "resources[0].providers[0]: must be a mapping"),
    (with_provider({}), "resources[0].providers[0]: must name exactly one provider"),
    (
        with_provider({"identity": {}, **aesgcm(("key1", SECRET1))}),
        "resources[0].providers[0]: must name exactly one provider",
    ),
    (with_provider({"identity": {"x": 1}}), "resources[0].providers[0].identity.x: unknown"),
    (with_provider({"aesgcm": {"keys": []}}), "resources[0].providers[0].aesgcm.keys: must be"),
    (with_provider({"aesgcm": None}), "resources[0].providers[0].aesgcm: must be a mapping"),
    (
        with_provider({"aesgcm": {"keys": [], "cachesize": 3}}),
        "resources[0].providers[0].aesgcm.cachesize: unknown field",
    ),
    (with_key(name=""), "resources[0].providers[0].aesgcm.keys[0].name: required"),
    (with_key(name="a:b"), "resources[0].providers[0].aesgcm.keys[0].name: 'a:b'"),
    (with_key(secret=None), "resources[0].providers[0].aesgcm.keys[0].secret: required"),
    (with_key(secret="not base64!"), "resources[0].providers[0].aesgcm.keys[0].secret: not base64"),
    (
        with_key(secret=base64.b64encode(b"0123456789").decode()),
        "aesgcm.keys[0].secret: must be the base64 encoding of 16, 24 or 32 bytes, not 10",
    ),
    (
        with_key(secret=base64.b64encode(bytes(64)).decode()),
        "keys[0].secret: must be the base64 encoding of 16, 24 or 32 bytes, not 64",
    ),
    (with_key(id="k"), "resources[0].providers[0].aesgcm.keys[0].id: unknown field"),
    (
        with_provider(aesgcm(("key1", SECRET1), ("key1", SECRET2))),
        "resources[0].providers[0].aesgcm.keys[1].name: duplicate key name 'key1'",
    ),
    (
        config(
            (["secrets"], [aesgcm(("key1", SECRET1))]),
            (["configmaps"], [aesgcm(("key1", SECRET2))]),
        ),
        "resources[1].providers[0].aesgcm.keys[0].name: key name 'key1' is used in "
        "resources[0].providers[0].aesgcm.keys[0] with another secret",
    ),
]


@pytest.mark.parametrize(("document", "message"), BAD_CONFIGS)
def test_a_bad_configuration_is_refused_naming_the_field(document: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(document)
    text = str(raised.value)
    assert message in text
    assert "\n" not in text
    # A secret never appears in an error (the log would carry it).
    assert SECRET1 not in text and SECRET2 not in text


def test_reading_the_file_names_the_flag_and_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=r"^--encryption-provider-config: cannot read .*missing"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: x\nresources: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not YAML \(.* at line 3\)"):
        load_config(broken)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(with_key(secret="AAAA")))
    with pytest.raises(ConfigError) as raised:
        load_config(wrong)
    assert str(raised.value).startswith(
        f"--encryption-provider-config: {wrong}: resources[0].providers[0].aesgcm.keys[0].secret:"
    )


def test_the_launcher_writes_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    path = tmp_path / "cp" / "encryption-config.yaml"
    write_encryption_config(path, encryption_config_text([("key1", KEY1)]))
    assert path.stat().st_mode & 0o777 == 0o600
    assert isinstance(encryption.load_config(path), encryption.EncryptionConfig)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (with_provider({"kms": {"name": "vault"}}), "resources[0].providers[0].kms: not supported"),
        (with_key(secret=base64.b64encode(bytes(20)).decode()), "not 20"),
    ],
)
def test_the_control_plane_does_not_start_on_a_bad_configuration(
    tmp_path: Path, document: Any, message: str
) -> None:
    path = tmp_path / "encryption.yaml"
    path.write_text(yaml.safe_dump(document))
    # Port 1 has no etcd: the refusal comes before any attempt to connect.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "controlplane",
            "--etcd=http://127.0.0.1:1",
            f"--encryption-provider-config={path}",
            f"--admin-token-file={tmp_path / 'token'}",
            "--listen=127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("archipel-controlplane: --encryption-provider-config: ")
    assert message in lines[0]
    assert not (tmp_path / "token").exists()  # nothing started
