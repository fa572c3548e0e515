"""Encryption at rest: the storage transformer between the store and etcd, and its
configuration, in Kubernetes' EncryptionConfiguration format.

``--encryption-provider-config FILE`` (kube-apiserver's flag) names the file::

    apiVersion: apiserver.config.k8s.io/v1
    kind: EncryptionConfiguration
    resources:
      - resources: [secrets, configmaps, deployments.apps]
        providers:
          - aesgcm:
              keys:
                - {name: key2, secret: <base64 of 16, 24 or 32 bytes>}
                - {name: key1, secret: <...>}
          - identity: {}

For each stored value the first rule whose ``resources`` match decides: its first
provider encrypts (the first key of an ``aesgcm`` provider; ``identity`` stores
plaintext), and every key of the file decrypts, so a key listed second still reads
what it wrote while the first one writes. Values are stored as kube-apiserver stores
them, ``k8s:enc:aesgcm:v1:<key name>:`` + a random 12-byte nonce + the AES-GCM
ciphertext and tag, with the etcd key as associated data, so a ciphertext copied to
another key does not decrypt. A value without the ``k8s:enc:`` prefix is plaintext
(identity): data written before encryption was turned on keeps reading, and
``archipel admin reencrypt`` (:func:`reencrypt`) rewrites it.

Resources are named as Kubernetes names them: ``secrets`` (the core group),
``deployments.apps``, ``*.apps`` (every kind of a group), ``*.`` (every kind of the
core group), ``*.*`` (everything). Templates are stored by kind
(``templates/<group>/<Kind>/...``), and a kind's resource is the plural Kubernetes
guesses from it (``Secret`` -> ``secrets``, ``NetworkPolicy`` -> ``networkpolicies``,
``Ingress`` -> ``ingresses``). Archipel's own kinds are named the same way
(``propagationpolicies.policy.archipel.io``). Besides the templates of a configured
kind, two kinds of Archipel's carry what a template holds: a PropagationWork holds
the template's manifest as its member gets it, and a PropagationBinding a digest of
it. Each is encrypted with the rule of the template it was made from (or its own,
when the file names it).

What Archipel does not implement (the ``kms``, ``secretbox``, ``aescbc`` providers) is
refused when the file is read, never ignored; so is anything malformed, each with one
line naming the field.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError

from archipel.core import kinds
from archipel.core.errors import Corrupt, Invalid
from archipel.v1alpha1 import work_pb2
from controlplane.etcd import ENCRYPTED_PREFIX, Etcd, KeyValue, Put, Undecryptable
from controlplane.store import report_corrupt

log = logging.getLogger(__name__)

API_VERSION = "apiserver.config.k8s.io/v1"
KIND = "EncryptionConfiguration"
AESGCM_PREFIX = b"k8s:enc:aesgcm:v1:"
NONCE_BYTES = 12
IDENTITY = "identity"
# Providers kube-apiserver has and Archipel does not: refused by name.
UNSUPPORTED_PROVIDERS = ("kms", "secretbox", "aescbc")
# Kubernetes' unpluralized suffixes (UnsafeGuessKindToResource).
_UNPLURALIZED = ("endpoints",)
_RESOURCE_PART = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_GROUP = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_API_KINDS_BY_PLURAL = {kind.plural: kind for kind in kinds.API_KINDS.values()}
# Resources and kinds whose rule is remembered; past this many (templates of that many
# kinds), the rest are looked up each time.
_MEMO_LIMIT = 4096


class ConfigError(Invalid):
    """The encryption configuration is wrong; the message names the field. The
    control plane does not start."""


class UnsupportedValue(Undecryptable):
    """A value encrypted by a provider Archipel does not implement."""


def guess_resource(kind: str) -> str:
    """The plural resource Kubernetes guesses for a kind (UnsafeGuessKindToResource):
    ``Secret`` -> ``secrets``, ``NetworkPolicy`` -> ``networkpolicies``,
    ``Ingress`` -> ``ingresses``, ``Endpoints`` -> ``endpoints``."""
    singular = kind.lower()
    if not singular or singular.endswith(_UNPLURALIZED):
        return singular
    if singular.endswith("s"):
        return singular + "es"
    if singular.endswith("y"):
        return singular[:-1] + "ies"
    return singular + "s"


def resource_name(group: str, resource: str) -> str:
    """How EncryptionConfiguration names a resource: ``secrets``, ``deployments.apps``."""
    return f"{resource}.{group}" if group else resource


def _group_of(api_version: str) -> str:
    return kinds.split_api_version(api_version)[0]


def resource_of_key(key: str) -> tuple[str, str] | None:
    """(group, resource) of the object stored at ``key`` (below the etcd prefix), or
    None for keys that hold no object (credentials, the replicas' shards)."""
    parts = key.split("/")
    if parts[0] == "templates":
        if len(parts) < 5:
            return None
        group = "" if parts[1] == "core" else parts[1]
        return group, guess_resource(parts[2])
    kind = _API_KINDS_BY_PLURAL.get(parts[0])
    if kind is None or len(parts) < 3:
        return None
    return _group_of(kind.api_version), kind.plural


# -- configuration ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Key:
    """One AES-GCM key of the file."""

    name: str
    aead: AESGCM = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Provider:
    """One provider of a rule: ``aesgcm`` with its keys (the first encrypts), or
    ``identity`` (plaintext)."""

    kind: str
    keys: tuple[Key, ...] = ()

    @property
    def label(self) -> str:
        """``aesgcm:<first key>`` or ``identity``: how a value it writes is stored."""
        return f"aesgcm:{self.keys[0].name}" if self.keys else IDENTITY


@dataclasses.dataclass(frozen=True)
class Rule:
    """One item of ``resources``: which resources, and their providers (the first
    writes)."""

    resources: tuple[str, ...]
    providers: tuple[Provider, ...]

    def matches(self, group: str, resource: str) -> bool:
        return any(_covers(entry, group, resource) for entry in self.resources)

    @property
    def writer(self) -> Provider:
        return self.providers[0]


def _split_resource(entry: str) -> tuple[str, str]:
    """``deployments.apps`` -> (``deployments``, ``apps``); ``secrets`` -> (``secrets``,
    ``""``); ``*.`` -> (``*``, ``""``)."""
    resource, _, group = entry.partition(".")
    return resource, group


def _covers(entry: str, group: str, resource: str) -> bool:
    if entry == "*.*":
        return True
    wanted_resource, wanted_group = _split_resource(entry)
    if wanted_group != group:
        return False
    return wanted_resource in ("*", resource)


@dataclasses.dataclass(frozen=True)
class EncryptionConfig:
    """A parsed EncryptionConfiguration: its rules in order, and every key by name."""

    rules: tuple[Rule, ...]
    keys: Mapping[str, Key]


def load_config(path: Path) -> EncryptionConfig:
    """The file at ``path``, checked; :class:`ConfigError` names what is wrong."""
    field = "--encryption-provider-config"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(field, f"cannot read {path}: {error}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or "not YAML"
        raise ConfigError(field, f"{path}: not YAML ({problem}{line})") from None
    try:
        return parse_config(document)
    except ConfigError as error:
        raise ConfigError(field, f"{path}: {error}") from None


def parse_config(document: Any) -> EncryptionConfig:
    """An EncryptionConfiguration already read from YAML, checked."""
    top = _mapping(document, "", ("apiVersion", "kind", "resources"))
    if top.get("apiVersion") != API_VERSION:
        raise ConfigError(
            "apiVersion", f"must be {API_VERSION}, not {_shown(top.get('apiVersion'))}"
        )
    if top.get("kind") != KIND:
        raise ConfigError("kind", f"must be {KIND}, not {_shown(top.get('kind'))}")
    items = _list(top.get("resources"), "resources")
    rules: list[Rule] = []
    keys: dict[str, tuple[Key, bytes, str]] = {}
    seen_resources: dict[str, str] = {}
    for index, item in enumerate(items):
        where = f"resources[{index}]"
        rule = _mapping(item, where, ("resources", "providers"))
        names = _list(rule.get("resources"), f"{where}.resources")
        checked_names: list[str] = []
        for position, entry in enumerate(names):
            entry_field = f"{where}.resources[{position}]"
            _check_resource(entry, entry_field)
            _check_not_masked(entry, entry_field, seen_resources)
            seen_resources[entry] = entry_field
            checked_names.append(entry)
        providers = [
            _provider(provider, f"{where}.providers[{position}]", keys)
            for position, provider in enumerate(_list(rule.get("providers"), f"{where}.providers"))
        ]
        rules.append(Rule(tuple(checked_names), tuple(providers)))
    return EncryptionConfig(tuple(rules), {name: key for name, (key, _, _) in keys.items()})


def _shown(value: Any) -> str:
    return repr(value) if value is not None else "missing"


def _mapping(value: Any, field: str, allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        if not field:
            raise ConfigError("", "must be a mapping (an EncryptionConfiguration)")
        raise ConfigError(field, "must be a mapping")
    for name in value:
        if name not in allowed:
            path = f"{field}.{name}" if field else str(name)
            raise ConfigError(path, f"unknown field (known: {', '.join(allowed)})")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        raise ConfigError(field, "required")
    if not isinstance(value, list) or not value:
        raise ConfigError(field, "must be a non-empty list")
    return value


def _check_resource(entry: Any, field: str) -> None:
    if not isinstance(entry, str) or not entry:
        raise ConfigError(field, "must be a resource name such as secrets or deployments.apps")
    if entry != entry.lower():
        raise ConfigError(field, f"{entry!r} must be lowercase")
    if entry == "*":
        raise ConfigError(field, "'*' is not a resource: use '*.*' (all) or '*.' (the core group)")
    resource, group = _split_resource(entry)
    if group == "*" and resource != "*":
        raise ConfigError(field, f"{entry!r}: a resource in every group is not supported")
    if resource != "*" and not _RESOURCE_PART.match(resource):
        raise ConfigError(field, f"{entry!r} is not a resource name")
    if group not in ("", "*") and not _GROUP.match(group):
        raise ConfigError(field, f"{entry!r} does not name a valid API group")


def _check_not_masked(entry: str, field: str, seen: Mapping[str, str]) -> None:
    """kube-apiserver refuses a resource that an earlier entry already covers: the
    later one would never apply."""
    if entry in seen:
        raise ConfigError(field, f"{entry!r} is listed already, in {seen[entry]}")
    _, group = _split_resource(entry)
    for earlier, earlier_field in seen.items():
        if earlier == "*.*" or (earlier.startswith("*.") and earlier[2:] == group):
            raise ConfigError(
                field, f"{entry!r} is covered by {earlier!r} in {earlier_field}, which comes first"
            )


def _provider(value: Any, field: str, keys: dict[str, tuple[Key, bytes, str]]) -> Provider:
    if isinstance(value, dict):
        for name in value:
            if name in UNSUPPORTED_PROVIDERS:
                raise ConfigError(
                    f"{field}.{name}", "not supported by Archipel (aesgcm and identity are)"
                )
    provider = _mapping(value, field, ("aesgcm", IDENTITY))
    if len(provider) != 1:
        raise ConfigError(field, "must name exactly one provider (aesgcm or identity)")
    ((kind, body),) = provider.items()
    if kind == IDENTITY:
        if body not in (None, {}):
            _mapping(body, f"{field}.identity", ())
        return Provider(IDENTITY)
    aesgcm = _mapping(body, f"{field}.aesgcm", ("keys",))
    listed = _list(aesgcm.get("keys"), f"{field}.aesgcm.keys")
    own: list[Key] = []
    for position, item in enumerate(listed):
        key_field = f"{field}.aesgcm.keys[{position}]"
        entry = _mapping(item, key_field, ("name", "secret"))
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{key_field}.name", "required: the key's name")
        if ":" in name or len(name) > 253 or not name.isprintable():
            raise ConfigError(
                f"{key_field}.name", f"{name!r}: at most 253 printable characters, no ':'"
            )
        secret = _secret(entry.get("secret"), f"{key_field}.secret")
        if any(key.name == name for key in own):
            raise ConfigError(f"{key_field}.name", f"duplicate key name {name!r}")
        digest = hashlib.sha256(secret).digest()
        if name in keys and keys[name][1] != digest:
            # The stored prefix names the key: one name must mean one secret.
            raise ConfigError(
                f"{key_field}.name",
                f"key name {name!r} is used in {keys[name][2]} with another secret",
            )
        key = keys[name][0] if name in keys else Key(name, AESGCM(secret))
        keys.setdefault(name, (key, digest, key_field))
        own.append(key)
    return Provider("aesgcm", tuple(own))


def _secret(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ConfigError(field, "required: the base64 encoding of a 16, 24 or 32-byte key")
    try:
        secret = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(field, "not base64") from None
    if len(secret) not in (16, 24, 32):
        raise ConfigError(
            field, f"must be the base64 encoding of 16, 24 or 32 bytes, not {len(secret)}"
        )
    return secret


# -- the transformer ---------------------------------------------------------------------


class Encryption:
    """The storage transformer (:class:`controlplane.etcd.Transformer`) of one
    EncryptionConfiguration. A value it cannot decrypt raises
    :class:`~controlplane.etcd.Undecryptable`."""

    def __init__(self, config: EncryptionConfig) -> None:
        self.config = config
        # A work or a binding is encrypted by its template's rule: only then must its
        # value be read to know the template's kind.
        self._follow_templates = any(rule.writer.kind != IDENTITY for rule in config.rules)
        # Which rule (its index) names a (group, resource), and a template kind
        # (apiVersion, kind): decided once, as every write asks.
        self._by_resource: dict[tuple[str, str], int | None] = {}
        self._by_kind: dict[tuple[str, str], int | None] = {}

    def describe(self) -> str:
        """One line for the log: what each rule writes with (never a secret)."""
        rules = "; ".join(
            f"{', '.join(rule.resources)}: {rule.writer.label}" for rule in self.config.rules
        )
        return f"{rules} (keys that decrypt: {', '.join(sorted(self.config.keys)) or 'none'})"

    # -- deciding --------------------------------------------------------------------

    def writer_for(self, key: str, value: bytes) -> Provider | None:
        """The provider that writes ``value`` at ``key`` (None: plaintext)."""
        rule = self._rule_for(key, value)
        if rule is None or rule.writer.kind == IDENTITY:
            return None
        return rule.writer

    def _rule_for(self, key: str, value: bytes) -> Rule | None:
        found = resource_of_key(key)
        if found is None:
            return None
        group, resource = found
        own = self._resource_rule(group, resource)
        if not self._follow_templates or own == 0:
            return self._rule(own)
        if resource == kinds.PROPAGATION_WORK.plural:
            made_from = _work_kinds(value)
        elif resource == kinds.PROPAGATION_BINDING.plural:
            made_from = _binding_kinds(value)
        else:
            return self._rule(own)
        # The work (or binding) and the template it was made from are one resource
        # for this choice: the first rule naming either, as for any other resource.
        indices = [own, *(self._kind_rule(*pair) for pair in made_from)]
        return self._rule(min((i for i in indices if i is not None), default=None))

    def _rule(self, index: int | None) -> Rule | None:
        return None if index is None else self.config.rules[index]

    def _resource_rule(self, group: str, resource: str) -> int | None:
        """The index of the first rule naming the resource."""
        found = self._by_resource.get((group, resource), -1)
        if found == -1:
            found = next(
                (i for i, rule in enumerate(self.config.rules) if rule.matches(group, resource)),
                None,
            )
            if len(self._by_resource) < _MEMO_LIMIT:
                self._by_resource[group, resource] = found
        return found

    def _kind_rule(self, api_version: str, kind: str) -> int | None:
        """The index of the first rule naming a template kind."""
        found = self._by_kind.get((api_version, kind), -1)
        if found == -1:
            found = self._resource_rule(_group_of(api_version), guess_resource(kind))
            if len(self._by_kind) < _MEMO_LIMIT:
                self._by_kind[api_version, kind] = found
        return found

    def stored_with(self, value: bytes) -> str:
        """How a stored value was written: ``identity`` or ``aesgcm:<key name>`` (or the
        prefix of a provider Archipel does not implement)."""
        if not value.startswith(ENCRYPTED_PREFIX):
            return IDENTITY
        if value.startswith(AESGCM_PREFIX):
            name, colon, _ = value[len(AESGCM_PREFIX) :].partition(b":")
            if colon:
                return f"aesgcm:{name.decode(errors='replace')}"
        return value[len(ENCRYPTED_PREFIX) :].split(b":", 2)[0].decode(errors="replace")

    # -- transforming ----------------------------------------------------------------

    def write(self, key: str, value: bytes, *, context: bytes) -> bytes:
        provider = self.writer_for(key, value)
        if provider is None:
            return value
        first = provider.keys[0]
        nonce = os.urandom(NONCE_BYTES)
        sealed = first.aead.encrypt(nonce, value, context)
        return AESGCM_PREFIX + first.name.encode() + b":" + nonce + sealed

    def read(self, key: str, value: bytes, *, context: bytes) -> bytes:
        if not value.startswith(ENCRYPTED_PREFIX):
            return value
        if not value.startswith(AESGCM_PREFIX):
            raise UnsupportedValue(
                f"encrypted by provider {self.stored_with(value)!r}, which Archipel does not "
                "implement"
            )
        name_bytes, colon, rest = value[len(AESGCM_PREFIX) :].partition(b":")
        name = name_bytes.decode(errors="replace")
        if not colon:
            raise Undecryptable("an aesgcm value without its key name")
        found = self.config.keys.get(name)
        if found is None:
            raise Undecryptable(f"encrypted with aesgcm key {name!r}, which is not configured")
        if len(rest) < NONCE_BYTES + 16:
            raise Undecryptable(f"aesgcm key {name!r}: the ciphertext is cut short")
        try:
            return found.aead.decrypt(rest[:NONCE_BYTES], rest[NONCE_BYTES:], context)
        except InvalidTag:
            raise Undecryptable(
                f"aesgcm key {name!r}: the ciphertext fails authentication (tampered with, "
                "moved from another key, or another secret under that name)"
            ) from None


def _work_kinds(value: bytes) -> list[tuple[str, str]]:
    """(apiVersion, kind) of each manifest a stored work holds."""
    try:
        work = work_pb2.PropagationWork.FromString(value)
    except DecodeError:
        return []
    return [
        (m.fields["apiVersion"].string_value, m.fields["kind"].string_value)
        for m in work.spec.workload.manifests
        if "kind" in m.fields
    ]


def _binding_kinds(value: bytes) -> list[tuple[str, str]]:
    """(apiVersion, kind) of the template a stored binding binds."""
    try:
        binding = work_pb2.PropagationBinding.FromString(value)
    except DecodeError:
        return []
    resource = binding.spec.resource
    return [(resource.api_version, resource.kind)]


# -- rewriting ---------------------------------------------------------------------------


@dataclasses.dataclass
class Counts:
    """What :func:`reencrypt` did with one resource's objects."""

    rewritten: int = 0
    unchanged: int = 0
    unreadable: int = 0
    skipped: int = 0


# Objects read per page, and rewritten at once (their guarded writes share etcd
# transactions through the group commit).
_PAGE = 256
_CONCURRENT = 32
# Each rewrite that loses a race reads the key again and decides afresh; a key written
# this often by others is left to them (their writes use the current key too).
_ATTEMPTS = 20


def rewritable_prefixes() -> list[str]:
    """Every prefix that holds objects a rule can name."""
    return ["templates/", *(kind.prefix() for kind in kinds.API_KINDS.values())]


async def reencrypt(
    etcd: Etcd, encryption: Encryption, *, dry_run: bool = False
) -> dict[str, Counts]:
    """Rewrite every stored object whose stored form is not what the configuration
    writes now (under another key, plaintext that should be encrypted, or ciphertext
    that should be plaintext); returns the counts by resource name (``secrets``,
    ``deployments.apps``).

    Each rewrite puts back the plaintext it read (``etcd`` encrypts it on the way in),
    guarded by the mod revision it was read at: a concurrent write is never lost, the
    rewrite reads the key again and decides afresh. A value no key decrypts is left as
    it is and counted as unreadable.
    """
    counts: dict[str, Counts] = {}
    slots = asyncio.Semaphore(_CONCURRENT)

    async def one(kv: KeyValue | None) -> None:
        async with slots:
            assert kv is not None
            key = kv.key
            found = resource_of_key(key)
            if found is None:
                return
            tally = counts.setdefault(resource_name(*found), Counts())
            for _ in range(_ATTEMPTS):
                try:
                    plaintext = encryption.read(key, kv.value, context=etcd.stored_key(key))
                except Undecryptable as error:
                    # Logged and counted as every corrupt object is; left as it is.
                    report_corrupt(Corrupt(key, str(error)), kv.mod_revision)
                    tally.unreadable += 1
                    return
                wanted = encryption.writer_for(key, plaintext)
                if encryption.stored_with(kv.value) == (wanted.label if wanted else IDENTITY):
                    tally.unchanged += 1
                    return
                if dry_run:
                    tally.rewritten += 1
                    return
                landed = await etcd.commit_grouped([Put(key, plaintext, kv.mod_revision)])
                if landed is not None:
                    tally.rewritten += 1
                    return
                kv = await etcd.get(key, raw=True)
                if kv is None:
                    return  # deleted meanwhile: nothing left to rewrite
            log.warning("reencrypt: %s kept changing; left to its writers, run again", key)
            tally.skipped += 1

    for prefix in rewritable_prefixes():
        start_after = ""
        while True:
            kvs, _, more = await etcd.range(prefix, start_after=start_after, limit=_PAGE, raw=True)
            await asyncio.gather(*(one(kv) for kv in kvs))
            if not more or not kvs:
                break
            start_after = kvs[-1].key
    return counts
