"""The operations a kind's interpreter answers, and what a kind without one gets.

Karmada's resource interpreter has the same operations (GetReplicas, ReviseReplica,
ReflectStatus, AggregateStatus, InterpretHealth, Retain, GetDependencies). The
control plane asks for replicas, revision, aggregation and dependencies; the agent
for status reflection, health and retention.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

from archipel import limits

Manifest = dict[str, Any]
HEALTHY, UNHEALTHY, UNKNOWN = "Healthy", "Unhealthy", "Unknown"


class InterpreterError(Exception):
    """An object could not be interpreted: a customization failed (the message names it
    and the step) or a field the interpreter reads holds a value it cannot use (the
    message names the field, which ``field`` holds apart, with ``problem``)."""

    def __init__(self, message: str, *, field: str = "", problem: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.problem = problem or message


def replica_count(value: Any, field: str) -> int:
    """``value`` as a replica count: an int32 from 0 up, as Kubernetes has them.

    A whole float is taken as the integer it is (a Struct stores every number as a
    double). Anything else, whether negative, fractional, NaN, infinite, a bool, a
    string or beyond int32, raises :class:`InterpreterError` naming ``field``: such a
    count must neither be read as 0 nor make the scheduler divide it.
    """
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limits.MAX_REPLICAS:
        return value
    problem = (
        f"{limits.echo(value)} is not a replica count (an integer from 0 to {limits.MAX_REPLICAS})"
    )
    raise InterpreterError(
        f"{field} is {limits.echo(value)}, not a replica count "
        f"(an integer from 0 to {limits.MAX_REPLICAS})",
        field=field,
        problem=problem,
    )


@dataclasses.dataclass(frozen=True, order=True)
class Dependency:
    """An object a workload needs in the same cluster (in the workload's namespace)."""

    api_version: str
    kind: str
    namespace: str
    name: str


@dataclasses.dataclass(frozen=True)
class MemberStatus:
    """One target cluster's reflected status, as the aggregation sees it."""

    cluster: str
    status: dict[str, Any] | None


class KindInterpreter:
    """The behaviour of a kind nobody describes: Karmada's defaults."""

    name = "default"

    def replicas(self, manifest: Manifest) -> int | None:
        """The replicas the scheduler divides; None for kinds that have none."""
        return None

    def pod_template(self, manifest: Manifest) -> dict[str, Any] | None:
        """The pod template whose containers give one replica's resource request."""
        return None

    def revise_replicas(self, manifest: Manifest, replicas: int) -> Manifest:
        """The manifest with one cluster's share of the replicas (a new dict)."""
        return manifest

    def reflect_status(self, manifest: Manifest) -> dict[str, Any] | None:
        """What the agent reports of an object in the member."""
        status = manifest.get("status")
        return copy.deepcopy(status) if isinstance(status, dict) else None

    def health(self, manifest: Manifest) -> str:
        return HEALTHY

    def aggregate_status(
        self, members: list[MemberStatus], template_generation: int
    ) -> dict[str, Any] | None:
        """The template's status from its target clusters' reflected statuses.

        The default takes the single cluster's status when there is one; with several
        there is no general way to merge, so the template keeps no status.
        """
        statuses = [m.status for m in members if m.status is not None]
        if len(members) == 1 and statuses:
            return statuses[0]
        return None

    def retained_paths(self, manifest: Manifest) -> tuple[tuple[str, ...], ...]:
        """Fields of ``manifest`` the member owns: their live values are kept."""
        return ()

    def retain(self, desired: Manifest, observed: Manifest | None) -> Manifest:
        """``desired`` with the member-owned fields taken from the live object."""
        paths = self.retained_paths(desired)
        if observed is None or not paths:
            return desired
        result = copy.deepcopy(desired)
        for path in paths:
            found, value = get_path(observed, path)
            if found:
                set_path(result, path, copy.deepcopy(value))
        return result

    def dependencies(self, manifest: Manifest) -> list[Dependency]:
        return []


def get_path(document: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    """The value at a path of dict keys; (False, None) when any step is missing."""
    current = document
    for key in path:
        if not isinstance(current, dict) or key not in current:
            return False, None
        current = current[key]
    return True, current


def set_path(document: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    current = document
    for key in path[:-1]:
        child = current.get(key)
        if not isinstance(child, dict):
            child = current[key] = {}
        current = child
    current[path[-1]] = value


def drop_paths(document: Manifest, paths: tuple[tuple[str, ...], ...]) -> Manifest:
    """A copy of ``document`` without the given paths (drift ignores retained fields)."""
    if not paths:
        return document
    result = copy.deepcopy(document)
    for path in paths:
        current: Any = result
        for key in path[:-1]:
            current = current.get(key) if isinstance(current, dict) else None
        if isinstance(current, dict):
            current.pop(path[-1], None)
    return result
