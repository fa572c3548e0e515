"""Per-cluster overrides (OverridePolicy, ClusterOverridePolicy), as pure functions.

Order follows Karmada: cluster-scoped policies first, then the template's namespace's;
within each, the least specific first (match-all, then kind, then labels, then name)
and then by policy name, so the most specific policy has the last word. Within a rule
the overriders run in Karmada's order: image, command, args, labels, annotations,
field, plaintext. An override that cannot apply raises :class:`OverrideError`, naming
the policy and the overrider, and the caller keeps the cluster's last good work.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import yaml
from google.protobuf import json_format

from archipel.core import matching
from archipel.core.kinds import Manifest
from archipel.core.scheduling import Affinity, ClusterInfo
from archipel.v1alpha1 import override_pb2

Policy = override_pb2.OverridePolicy | override_pb2.ClusterOverridePolicy


class OverrideError(Exception):
    """An override that cannot apply; the message names the policy and the overrider."""


# -- JSON pointers and patches ------------------------------------------------------------


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with '/'")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(container: list[Any], token: str, *, adding: bool) -> int:
    if token == "-" and adding:
        return len(container)
    if not token.isdigit():
        raise ValueError(f"{token!r} is not an array index")
    index = int(token)
    limit = len(container) if adding else len(container) - 1
    if index > limit:
        raise ValueError(f"index {index} is out of range")
    return index


def patch(document: Any, operator: str, path: str, value: Any = None) -> Any:
    """One RFC 6902 operation (add, remove or replace); returns the new document."""
    tokens = _tokens(path)
    if not tokens:
        if operator == "remove":
            raise ValueError("cannot remove the whole document")
        return copy.deepcopy(value)
    parent = document
    for token in tokens[:-1]:
        if isinstance(parent, dict):
            if token not in parent:
                raise ValueError(f"{path}: {token!r} does not exist")
            parent = parent[token]
        elif isinstance(parent, list):
            parent = parent[_index(parent, token, adding=False)]
        else:
            raise ValueError(f"{path}: cannot descend into a {type(parent).__name__}")
    last = tokens[-1]
    if isinstance(parent, dict):
        if operator == "add":
            parent[last] = copy.deepcopy(value)
        elif last not in parent:
            raise ValueError(f"{path} does not exist")
        elif operator == "replace":
            parent[last] = copy.deepcopy(value)
        else:
            del parent[last]
    elif isinstance(parent, list):
        index = _index(parent, last, adding=operator == "add")
        if operator == "add":
            parent.insert(index, copy.deepcopy(value))
        elif operator == "replace":
            parent[index] = copy.deepcopy(value)
        else:
            del parent[index]
    else:
        raise ValueError(f"{path}: the parent is a {type(parent).__name__}")
    return document


def _get(document: Any, path: str) -> Any:
    for token in _tokens(path):
        if isinstance(document, dict) and token in document:
            document = document[token]
        elif isinstance(document, list):
            document = document[_index(document, token, adding=False)]
        else:
            raise ValueError(f"{path} does not exist")
    return document


# -- images -------------------------------------------------------------------------------

_POD_PATHS = {
    "Pod": "/spec",
    "CronJob": "/spec/jobTemplate/spec/template/spec",
}
_WORKLOADS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job")


def image_paths(manifest: Manifest) -> list[str]:
    """Karmada's default image paths: every container of the pod template."""
    kind = manifest.get("kind", "")
    base = _POD_PATHS.get(kind) or ("/spec/template/spec" if kind in _WORKLOADS else None)
    if base is None:
        return []
    try:
        pod = _get(manifest, base)
    except ValueError:
        return []
    return [f"{base}/containers/{i}/image" for i in range(len(pod.get("containers", []) or []))]


_DIGEST = re.compile(r"@(.+)$")


def split_image(image: str) -> tuple[str, str, str, str]:
    """(registry, repository, tag, digest) of an image reference."""
    digest = ""
    found = _DIGEST.search(image)
    if found:
        digest, image = found.group(1), image[: found.start()]
    registry, repository = "", image
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    tag = ""
    name, colon, maybe_tag = repository.rpartition(":")
    if colon and "/" not in maybe_tag:
        repository, tag = name, maybe_tag
    return registry, repository, tag, digest


def join_image(registry: str, repository: str, tag: str, digest: str) -> str:
    image = f"{registry}/{repository}" if registry else repository
    if tag:
        image += f":{tag}"
    if digest:
        image += f"@{digest}"
    return image


def override_image(image: str, component: str, operator: str, value: str) -> str:
    parts = list(split_image(image))
    index = {"Registry": 0, "Repository": 1, "Tag": 2}[component]
    if operator == "replace":
        parts[index] = value
    elif operator == "add":
        parts[index] += value
    else:
        parts[index] = ""
    return join_image(*parts)


# -- overriders ---------------------------------------------------------------------------


def _containers(manifest: Manifest) -> list[dict[str, Any]]:
    paths = image_paths(manifest)
    return [_get(manifest, p.rsplit("/", 1)[0]) for p in paths]


def _apply_image(manifest: Manifest, overrider: override_pb2.ImageOverrider) -> Manifest:
    paths = [overrider.predicate.path] if overrider.predicate.path else image_paths(manifest)
    for path in paths:
        current = _get(manifest, path)
        if not isinstance(current, str):
            raise ValueError(f"{path} is not an image string")
        replaced = override_image(current, overrider.component, overrider.operator, overrider.value)
        manifest = patch(manifest, "replace", path, replaced)
    return manifest


def _apply_command_args(
    manifest: Manifest, overrider: override_pb2.CommandArgsOverrider, field: str
) -> Manifest:
    for container in _containers(manifest):
        if container.get("name") != overrider.container_name:
            continue
        values = list(container.get(field, []) or [])
        if overrider.operator == "add":
            values.extend(overrider.value)
        else:
            values = [v for v in values if v not in overrider.value]
        container[field] = values
    return manifest


def _apply_metadata_map(
    manifest: Manifest, overrider: override_pb2.LabelAnnotationOverrider, field: str
) -> Manifest:
    target = manifest.setdefault("metadata", {}).setdefault(field, {}) or {}
    manifest["metadata"][field] = target
    for key, value in overrider.value.items():
        if overrider.operator == "add":
            target[key] = value
        elif overrider.operator == "replace":
            if key in target:
                target[key] = value
        else:
            target.pop(key, None)
    return manifest


def _value(value: Any) -> Any:
    return json_format.MessageToDict(value) if value.WhichOneof("kind") else None


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def _apply_field(manifest: Manifest, overrider: override_pb2.FieldOverrider) -> Manifest:
    text = _get(manifest, overrider.field_path)
    if not isinstance(text, str):
        raise ValueError(f"{overrider.field_path} is not a string field")
    as_json = len(overrider.json) > 0
    embedded = json.loads(text) if as_json else yaml.safe_load(text)
    operations: list[tuple[str, str, Any]] = [
        (o.operator, o.sub_path, o.value) for o in overrider.json
    ] + [(o.operator, o.sub_path, o.value) for o in overrider.yaml]
    for operator, sub_path, value in operations:
        embedded = patch(embedded, operator, sub_path, _whole(_value(value)))
    rendered = json.dumps(embedded) if as_json else yaml.safe_dump(embedded, sort_keys=False)
    result: Manifest = patch(manifest, "replace", overrider.field_path, rendered)
    return result


def _plaintext(manifest: Manifest, overrider: override_pb2.PlaintextOverrider) -> Manifest:
    result: Manifest = patch(
        manifest, overrider.operator, overrider.path, _whole(_value(overrider.value))
    )
    return result


Step = Callable[[Manifest], Manifest]


def _steps(overriders: override_pb2.Overriders) -> Iterable[tuple[str, Step]]:
    """Each overrider as (its path in the rule, how it changes a manifest), in order."""
    steps: list[tuple[str, Step]] = []
    steps += [
        (f"imageOverrider[{i}]", functools.partial(_apply_image, overrider=o))
        for i, o in enumerate(overriders.image_overrider)
    ]
    steps += [
        (
            f"commandOverrider[{i}]",
            functools.partial(_apply_command_args, overrider=o, field="command"),
        )
        for i, o in enumerate(overriders.command_overrider)
    ]
    steps += [
        (f"argsOverrider[{i}]", functools.partial(_apply_command_args, overrider=o, field="args"))
        for i, o in enumerate(overriders.args_overrider)
    ]
    steps += [
        (
            f"labelsOverrider[{i}]",
            functools.partial(_apply_metadata_map, overrider=o, field="labels"),
        )
        for i, o in enumerate(overriders.labels_overrider)
    ]
    steps += [
        (
            f"annotationsOverrider[{i}]",
            functools.partial(_apply_metadata_map, overrider=o, field="annotations"),
        )
        for i, o in enumerate(overriders.annotations_overrider)
    ]
    steps += [
        (f"fieldOverrider[{i}]", functools.partial(_apply_field, overrider=o))
        for i, o in enumerate(overriders.field_overrider)
    ]
    steps += [
        (f"plaintext[{i}]", functools.partial(_plaintext, overrider=o))
        for i, o in enumerate(overriders.plaintext)
    ]
    return steps


def ordered(
    manifest: Manifest,
    namespaced: Iterable[override_pb2.OverridePolicy],
    cluster_wide: Iterable[override_pb2.ClusterOverridePolicy],
) -> list[Policy]:
    """The policies that select ``manifest``, in the order they apply."""
    namespace = manifest.get("metadata", {}).get("namespace", "")

    def specificity(policy: Policy) -> int:
        selectors = policy.spec.resource_selectors
        if not len(selectors):
            return 0  # match-all
        return max((matching.selector_specificity(s, manifest) for s in selectors), default=0)

    result: list[Policy] = []
    for group in (list(cluster_wide), [p for p in namespaced if p.metadata.namespace == namespace]):
        scored = [
            (specificity(p), p) for p in group if not p.metadata.HasField("deletion_timestamp")
        ]
        picked = [
            (score, p) for score, p in scored if score > 0 or not len(p.spec.resource_selectors)
        ]
        picked.sort(key=lambda item: (item[0], item[1].metadata.name))
        result += [p for _, p in picked]
    return result


def rules_for(policy: Policy, cluster: ClusterInfo) -> list[tuple[str, override_pb2.Overriders]]:
    """(where, overriders) of each rule of ``policy`` that targets ``cluster``."""
    rules = []
    spec = policy.spec
    for index, rule in enumerate(spec.override_rules):
        if (
            not rule.HasField("target_cluster")
            or Affinity.of(rule.target_cluster).rejects(cluster) is None
        ):
            rules.append((f"spec.overrideRules[{index}].overriders", rule.overriders))
    targeted = not spec.HasField("target_cluster") or (
        Affinity.of(spec.target_cluster).rejects(cluster) is None
    )
    if spec.HasField("overriders") and targeted:
        rules.append(("spec.overriders", spec.overriders))
    return rules


def apply(
    manifest: Manifest, policies: Sequence[Policy], cluster: ClusterInfo
) -> tuple[Manifest, list[str]]:
    """The manifest for ``cluster`` and the names of the policies that changed it."""
    result = copy.deepcopy(manifest)
    applied = []
    for policy in policies:
        rules = rules_for(policy, cluster)
        kind = (
            "ClusterOverridePolicy"
            if isinstance(policy, override_pb2.ClusterOverridePolicy)
            else "OverridePolicy"
        )
        name = (
            policy.metadata.name
            if kind == "ClusterOverridePolicy"
            else f"{policy.metadata.namespace}/{policy.metadata.name}"
        )
        for where, overriders in rules:
            for step, run in _steps(overriders):
                try:
                    result = run(result)
                except (
                    ValueError,
                    KeyError,
                    IndexError,
                    TypeError,
                    yaml.YAMLError,
                    json.JSONDecodeError,
                ) as error:
                    raise OverrideError(f"{kind} {name}: {where}.{step}: {error}") from error
        if rules:
            applied.append(f"{kind} {name}")
    return result, applied
