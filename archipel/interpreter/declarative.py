"""ResourceInterpreterCustomization compiled into an interpreter for its target kind.

Every expression is a JSONPath (see :mod:`archipel.jsonpath`): compiled once, when the
customization is applied (a bad one is refused then, naming the field), and evaluated
with bounded work. Operations the customization leaves out fall back to the kind's
built-in interpreter, or to the defaults. A failure at run time raises
:class:`InterpreterError` naming the customization and the operation, so callers can
report it against this kind alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, TypeVar

from archipel import jsonpath
from archipel.interpreter.base import (
    HEALTHY,
    UNHEALTHY,
    Dependency,
    InterpreterError,
    KindInterpreter,
    Manifest,
    MemberStatus,
    replica_count,
)
from archipel.v1alpha1 import interpreter_pb2

T = TypeVar("T")
OPERATORS = (
    "Equal",
    "NotEqual",
    "In",
    "NotIn",
    "Exists",
    "DoesNotExist",
    "GreaterThan",
    "GreaterThanOrEqual",
    "LessThan",
    "LessThanOrEqual",
)
AGGREGATIONS = ("Sum", "Min", "Max", "AllTrue", "AnyTrue", "First", "Collect")
_RULES = (
    "retention",
    "replica_resource",
    "replica_revision",
    "status_reflection",
    "status_aggregation",
    "health_interpretation",
    "dependency_interpretation",
)
_JSON_NAMES = {
    "retention": "retention",
    "replica_resource": "replicaResource",
    "replica_revision": "replicaRevision",
    "status_reflection": "statusReflection",
    "status_aggregation": "statusAggregation",
    "health_interpretation": "healthInterpretation",
    "dependency_interpretation": "dependencyInterpretation",
}


class CustomizationInvalid(ValueError):
    """A customization that cannot be compiled; ``field`` is its JSON path in the object."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _compile(field: str, expression: str, *, required: bool = True) -> jsonpath.JSONPath | None:
    if not expression:
        if required:
            raise CustomizationInvalid(field, "is required")
        return None
    try:
        return jsonpath.compile(expression)
    except jsonpath.JSONPathError as error:
        raise CustomizationInvalid(field, f"invalid JSONPath {expression!r}: {error}") from error


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


class _Expression:
    def __init__(self, field: str, rule: interpreter_pb2.HealthExpression) -> None:
        path = _compile(f"{field}.path", rule.path)
        assert path is not None
        self.path = path
        if rule.operator not in OPERATORS:
            raise CustomizationInvalid(
                f"{field}.operator",
                f"must be one of {', '.join(OPERATORS)}, not {rule.operator!r}",
            )
        self.operator = rule.operator
        self.values = list(rule.values)
        self.value_path = _compile(f"{field}.valuePath", rule.value_path, required=False)
        needs_value = self.operator not in ("Exists", "DoesNotExist")
        if needs_value and not self.values and self.value_path is None:
            raise CustomizationInvalid(field, f"{self.operator} needs values or valuePath")
        if self.operator not in ("In", "NotIn") and len(self.values) > 1:
            raise CustomizationInvalid(f"{field}.values", f"{self.operator} takes one value")

    def holds(self, manifest: Manifest) -> bool:
        found = self.path.find(manifest)
        if self.operator == "Exists":
            return bool(found)
        if self.operator == "DoesNotExist":
            return not found
        if not found:
            return self.operator in ("NotEqual", "NotIn")
        actual = found[0]
        if self.value_path is not None:
            expected_values = self.value_path.find(manifest)[:1]
        else:
            expected_values = list(self.values)
        if not expected_values:
            return False
        if self.operator in ("Equal", "NotEqual", "In", "NotIn"):
            same = any(_equal(actual, expected) for expected in expected_values)
            return same if self.operator in ("Equal", "In") else not same
        left, right = _number(actual), _number(expected_values[0])
        if left is None or right is None:
            raise InterpreterError(
                f"{self.operator} compares numbers; {self.path.source} is {actual!r}"
            )
        return {
            "GreaterThan": left > right,
            "GreaterThanOrEqual": left >= right,
            "LessThan": left < right,
            "LessThanOrEqual": left <= right,
        }[self.operator]


def _equal(actual: Any, expected: Any) -> bool:
    """Literal values arrive as strings; compare them the way YAML would have meant them."""
    if actual == expected:
        return True
    if isinstance(expected, str):
        if isinstance(actual, bool):
            return expected.lower() == str(actual).lower()
        number = _number(expected)
        if number is not None and _number(actual) == number:
            return True
    return False


class Customized(KindInterpreter):
    """One kind's interpreter: the customization's rules over a fallback interpreter."""

    def __init__(
        self,
        customization: interpreter_pb2.ResourceInterpreterCustomization,
        fallback: KindInterpreter,
    ) -> None:
        self.customization = customization
        self.name = f"ResourceInterpreterCustomization {customization.metadata.name}"
        self.fallback = fallback
        rules = customization.spec.customizations
        base = "spec.customizations"
        for rule_name in _RULES:
            if rules.HasField(rule_name) and getattr(rules, rule_name).lua_script:  # type: ignore[arg-type]
                raise CustomizationInvalid(
                    f"{base}.{_JSON_NAMES[rule_name]}.luaScript",
                    "Lua scripts are not supported (Archipel runs no user code); "
                    "describe the operation with JSONPath fields instead",
                )
        self._retained: tuple[tuple[str, ...], ...] | None = None
        if rules.HasField("retention"):
            self._retained = tuple(
                self._field_path(f"{base}.retention.paths[{i}]", p)
                for i, p in enumerate(rules.retention.paths)
            )
        self._replicas = self._pod_template = None
        if rules.HasField("replica_resource"):
            field = f"{base}.replicaResource"
            self._replicas = _compile(f"{field}.replicas", rules.replica_resource.replicas)
            self._pod_template = _compile(
                f"{field}.podTemplate", rules.replica_resource.pod_template, required=False
            )
        self._revision: tuple[str, ...] | None = None
        if rules.HasField("replica_revision"):
            self._revision = self._field_path(
                f"{base}.replicaRevision.replicas", rules.replica_revision.replicas
            )
        self._reflection: list[tuple[str, jsonpath.JSONPath]] | None = None
        if rules.HasField("status_reflection"):
            self._reflection = []
            for i, status_field in enumerate(rules.status_reflection.fields):
                field = f"{base}.statusReflection.fields[{i}]"
                if not status_field.name:
                    raise CustomizationInvalid(f"{field}.name", "is required")
                path = _compile(f"{field}.path", status_field.path)
                assert path is not None
                self._reflection.append((status_field.name, path))
        self._aggregation: list[tuple[str, str]] | None = None
        if rules.HasField("status_aggregation"):
            self._aggregation = []
            for i, aggregated in enumerate(rules.status_aggregation.fields):
                field = f"{base}.statusAggregation.fields[{i}]"
                if not aggregated.name:
                    raise CustomizationInvalid(f"{field}.name", "is required")
                if aggregated.operation not in AGGREGATIONS:
                    raise CustomizationInvalid(
                        f"{field}.operation",
                        f"must be one of {', '.join(AGGREGATIONS)}, not {aggregated.operation!r}",
                    )
                self._aggregation.append((aggregated.name, aggregated.operation))
        self._health: list[_Expression] | None = None
        if rules.HasField("health_interpretation"):
            self._health = [
                _Expression(f"{base}.healthInterpretation.healthyWhen[{i}]", rule)
                for i, rule in enumerate(rules.health_interpretation.healthy_when)
            ]
        self._dependencies: list[tuple[str, str, jsonpath.JSONPath]] | None = None
        if rules.HasField("dependency_interpretation"):
            self._dependencies = []
            for i, rule in enumerate(rules.dependency_interpretation.dependencies):
                field = f"{base}.dependencyInterpretation.dependencies[{i}]"
                if not rule.api_version or not rule.kind:
                    raise CustomizationInvalid(field, "apiVersion and kind are required")
                path = _compile(f"{field}.namePath", rule.name_path)
                assert path is not None
                self._dependencies.append((rule.api_version, rule.kind, path))

    @staticmethod
    def _field_path(field: str, expression: str) -> tuple[str, ...]:
        compiled = _compile(field, expression)
        assert compiled is not None
        try:
            return compiled.field_path()
        except jsonpath.JSONPathError as error:
            raise CustomizationInvalid(field, str(error)) from error

    def _guard(self, operation: str, evaluate: Callable[[], T]) -> T:
        try:
            return evaluate()
        except InterpreterError as error:
            raise InterpreterError(f"{self.name}, {operation}: {error}") from error
        except (jsonpath.JSONPathError, TypeError, ValueError, KeyError) as error:
            raise InterpreterError(f"{self.name}, {operation}: {error}") from error

    # -- the operations ----------------------------------------------------------------

    def replicas(self, manifest: Manifest) -> int | None:
        path = self._replicas
        if path is None:
            return self.fallback.replicas(manifest)

        def evaluate() -> int:
            found = path.find(manifest)
            if not found:
                return 1  # as Kubernetes defaults an unset replica count
            return replica_count(found[0], path.source)

        return self._guard("replicaResource", evaluate)

    def pod_template(self, manifest: Manifest) -> dict[str, Any] | None:
        path = self._pod_template
        if path is None:
            return self.fallback.pod_template(manifest) if self._replicas is None else None
        found = self._guard("replicaResource", lambda: path.find(manifest))
        return found[0] if found and isinstance(found[0], dict) else None

    def revise_replicas(self, manifest: Manifest, replicas: int) -> Manifest:
        path = self._revision
        if path is None:
            return self.fallback.revise_replicas(manifest, replicas)
        revised = copy.deepcopy(manifest)
        current: dict[str, Any] = revised
        for key in path[:-1]:
            child = current.get(key)
            if not isinstance(child, dict):
                if child is not None:
                    raise InterpreterError(f"{self.name}, replicaRevision: {key} is not an object")
                child = current[key] = {}
            current = child
        current[path[-1]] = replicas
        return revised

    def reflect_status(self, manifest: Manifest) -> dict[str, Any] | None:
        fields = self._reflection
        if fields is None:
            return self.fallback.reflect_status(manifest)

        def evaluate() -> dict[str, Any]:
            reflected = {}
            for name, path in fields:
                found = path.find(manifest)
                if found:
                    reflected[name] = copy.deepcopy(found[0])
            return reflected

        return self._guard("statusReflection", evaluate)

    def health(self, manifest: Manifest) -> str:
        expressions = self._health
        if expressions is None:
            return self.fallback.health(manifest)
        healthy = self._guard(
            "healthInterpretation", lambda: all(e.holds(manifest) for e in expressions)
        )
        return HEALTHY if healthy else UNHEALTHY

    def aggregate_status(
        self, members: list[MemberStatus], template_generation: int
    ) -> dict[str, Any] | None:
        fields = self._aggregation
        if fields is None:
            return self.fallback.aggregate_status(members, template_generation)
        statuses = [m.status for m in members if m.status is not None]
        if not statuses:
            return None
        return self._guard("statusAggregation", lambda: _aggregate(fields, members))

    def retained_paths(self, manifest: Manifest) -> tuple[tuple[str, ...], ...]:
        if self._retained is None:
            return self.fallback.retained_paths(manifest)
        return self._retained

    def dependencies(self, manifest: Manifest) -> list[Dependency]:
        rules = self._dependencies
        if rules is None:
            return self.fallback.dependencies(manifest)
        namespace = manifest.get("metadata", {}).get("namespace", "")

        def evaluate() -> list[Dependency]:
            found = set()
            for api_version, kind, path in rules:
                for name in path.find(manifest):
                    if isinstance(name, str) and name:
                        found.add(Dependency(api_version, kind, namespace, name))
            return sorted(found)

        return self._guard("dependencyInterpretation", evaluate)


def _aggregate(fields: list[tuple[str, str]], members: list[MemberStatus]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, operation in fields:
        values = [m.status[name] for m in members if m.status is not None and name in m.status]
        if operation == "Collect":
            result[name] = [
                {"clusterName": m.cluster, "value": m.status[name]}
                for m in members
                if m.status is not None and name in m.status
            ]
            continue
        if not values:
            continue
        if operation in ("Sum", "Min", "Max"):
            numbers: list[float] = []
            for value in values:
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise InterpreterError(f"{operation} of {name}: {value!r} is not a number")
                numbers.append(value)
            if operation == "Sum":
                result[name] = sum(numbers)
            else:
                result[name] = min(numbers) if operation == "Min" else max(numbers)
        elif operation == "AllTrue":
            result[name] = len(values) == len(members) and all(v is True for v in values)
        elif operation == "AnyTrue":
            result[name] = any(v is True for v in values)
        else:  # First
            result[name] = values[0]
    return result
