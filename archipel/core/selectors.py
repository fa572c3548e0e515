"""Label selectors: the string form of list calls and the structured form of policies.

Both follow Kubernetes: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``,
``a``, ``!a``; matchLabels and matchExpressions with In, NotIn, Exists, DoesNotExist.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

from archipel import limits
from archipel.core.errors import Invalid
from archipel.v1alpha1 import meta_pb2

# Kubernetes' qualified names (label and annotation keys): an optional DNS-subdomain
# prefix and '/', then a name part; label values use the name part's alphabet.
_NAME_PART = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_dns_subdomain(value: str) -> bool:
    """Kubernetes' DNS-subdomain rule (object names, API groups, label-key prefixes)."""
    return bool(value) and len(value) <= limits.MAX_NAME_CHARS and bool(DNS_SUBDOMAIN.match(value))


OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values


@dataclasses.dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


EVERYTHING = Selector()


def check_qualified_name(key: str, field: str, *, what: str = "label key") -> None:
    """A label or annotation key: ``[prefix/]name`` as Kubernetes defines it."""
    if not key:
        raise Invalid(field, f"{what} must not be empty")
    prefix, slash, name = key.rpartition("/")
    if slash and not is_dns_subdomain(prefix):
        raise Invalid(
            field,
            f"{what} {limits.echo(key)}: the prefix before '/' must be a lowercase DNS "
            f"subdomain of at most {limits.MAX_NAME_CHARS} characters",
        )
    if len(name) > limits.MAX_LABEL_CHARS or not _NAME_PART.match(name):
        raise Invalid(
            field,
            f"{what} {limits.echo(key)}: the name must be at most {limits.MAX_LABEL_CHARS} "
            "characters of A-Z, a-z, 0-9, '-', '_' and '.', starting and ending alphanumeric",
        )


def check_label_value(value: str, field: str) -> None:
    """A label value: empty, or like a key's name part."""
    if value and (len(value) > limits.MAX_LABEL_CHARS or not _NAME_PART.match(value)):
        raise Invalid(
            field,
            f"label value {limits.echo(value)} must be at most {limits.MAX_LABEL_CHARS} "
            "characters of A-Z, a-z, 0-9, '-', '_' and '.', starting and ending alphanumeric",
        )


_check_key = check_qualified_name
_check_value = check_label_value


def _split_terms(text: str) -> list[str]:
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    terms.append("".join(current).strip())
    return terms


_SET_RE = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


def parse(text: str, *, field: str = "labelSelector") -> Selector:
    """Parse the string form used by ``archipel get -l`` and List calls."""
    text = text.strip()
    if not text:
        return EVERYTHING
    requirements = []
    for term in _split_terms(text):
        if not term:
            raise Invalid(field, f"empty term in {limits.echo(text)}")
        match = _SET_RE.match(term)
        if match:
            key = match["key"]
            values = [v.strip() for v in match["values"].split(",") if v.strip()]
            _check_key(key, field)
            for value in values:
                _check_value(value, field)
            operator = "In" if match["op"] == "in" else "NotIn"
            requirements.append(Requirement(key, operator, frozenset(values)))
            continue
        for symbol, operator in (("!=", "NotIn"), ("==", "In"), ("=", "In")):
            if symbol in term:
                key, value = (part.strip() for part in term.split(symbol, 1))
                _check_key(key, field)
                _check_value(value, field)
                requirements.append(Requirement(key, operator, frozenset([value])))
                break
        else:
            if term.startswith("!"):
                key = term[1:].strip()
                _check_key(key, field)
                requirements.append(Requirement(key, "DoesNotExist"))
            else:
                _check_key(term, field)
                requirements.append(Requirement(term, "Exists"))
    return Selector(tuple(requirements))


def from_requirements(
    expressions: Sequence[meta_pb2.LabelSelectorRequirement], *, field: str
) -> list[Requirement]:
    requirements = []
    for index, expression in enumerate(expressions):
        where = f"{field}.matchExpressions[{index}]"
        _check_key(expression.key, f"{where}.key")
        if expression.operator not in OPERATORS:
            raise Invalid(
                f"{where}.operator",
                f"must be one of {', '.join(OPERATORS)}, not {limits.echo(expression.operator)}",
            )
        values = list(expression.values)
        if expression.operator in ("In", "NotIn") and not values:
            raise Invalid(f"{where}.values", f"required for operator {expression.operator}")
        if expression.operator in ("Exists", "DoesNotExist") and values:
            raise Invalid(f"{where}.values", f"must be empty for operator {expression.operator}")
        for value in values:
            _check_value(value, f"{where}.values")
        requirements.append(Requirement(expression.key, expression.operator, frozenset(values)))
    return requirements


def from_proto(selector: meta_pb2.LabelSelector, *, field: str = "labelSelector") -> Selector:
    """A structured selector; raises :class:`Invalid` naming the field when it is wrong."""
    requirements = []
    for key in sorted(selector.match_labels):
        value = selector.match_labels[key]
        _check_key(key, f"{field}.matchLabels")
        _check_value(value, f"{field}.matchLabels[{key}]")
        requirements.append(Requirement(key, "In", frozenset([value])))
    requirements += from_requirements(selector.match_expressions, field=field)
    return Selector(tuple(requirements))
