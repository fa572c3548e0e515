"""The resource interpreter: one registry that says how to read each kind.

Both sides use it. The control plane asks for replicas, the per-cluster revision,
status aggregation and dependencies; the agent for status reflection, health and
retention. Lookup goes customization first (a ResourceInterpreterCustomization for
the exact apiVersion and kind), then the built-in interpreter for the kind's API
group, then Karmada's defaults, as Karmada's precedence is (without Lua or webhooks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from archipel.interpreter.base import (
    HEALTHY,
    UNHEALTHY,
    UNKNOWN,
    Dependency,
    InterpreterError,
    KindInterpreter,
    Manifest,
    MemberStatus,
    drop_paths,
)
from archipel.interpreter.builtin import BUILTIN
from archipel.interpreter.declarative import CustomizationInvalid, Customized
from archipel.v1alpha1 import interpreter_pb2

__all__ = [
    "HEALTHY",
    "UNHEALTHY",
    "UNKNOWN",
    "CustomizationInvalid",
    "Dependency",
    "InterpreterError",
    "KindInterpreter",
    "Manifest",
    "MemberStatus",
    "Registry",
    "compile_customization",
    "drop_paths",
]
log = logging.getLogger(__name__)
DEFAULT = KindInterpreter()


def builtin_for(api_version: str, kind: str) -> KindInterpreter:
    group = api_version.rpartition("/")[0]
    return BUILTIN.get((group, kind), DEFAULT)


def compile_customization(
    customization: interpreter_pb2.ResourceInterpreterCustomization,
) -> Customized:
    """The customization as an interpreter; :class:`CustomizationInvalid` names the field."""
    target = customization.spec.target
    if not target.api_version:
        raise CustomizationInvalid("spec.target.apiVersion", "is required")
    if not target.kind:
        raise CustomizationInvalid("spec.target.kind", "is required")
    return Customized(customization, builtin_for(target.api_version, target.kind))


class Registry:
    """Interpreters by (apiVersion, kind), customizations over built-ins."""

    def __init__(
        self, customizations: Iterable[interpreter_pb2.ResourceInterpreterCustomization] = ()
    ) -> None:
        self._custom: dict[tuple[str, str], KindInterpreter] = {}
        self.update(customizations)

    def update(
        self, customizations: Iterable[interpreter_pb2.ResourceInterpreterCustomization]
    ) -> None:
        """Replace every customization (the agent hears them as one set)."""
        custom: dict[tuple[str, str], KindInterpreter] = {}
        # Ties between customizations for one kind go by name, as Karmada sorts them.
        for customization in sorted(customizations, key=lambda c: c.metadata.name):
            target = customization.spec.target
            key = (target.api_version, target.kind)
            if key in custom:
                continue
            try:
                custom[key] = compile_customization(customization)
            except CustomizationInvalid as error:
                # Validation refuses these on apply; one stored by an older version must
                # not take the others down.
                log.warning(
                    "ignoring ResourceInterpreterCustomization %s: %s",
                    customization.metadata.name,
                    error,
                )
        self._custom = custom

    def customized(self) -> list[tuple[str, str]]:
        """The (apiVersion, kind) pairs a customization describes."""
        return sorted(self._custom)

    def get(self, api_version: str, kind: str) -> KindInterpreter:
        found = self._custom.get((api_version, kind))
        return found if found is not None else builtin_for(api_version, kind)

    def of(self, manifest: Manifest) -> KindInterpreter:
        return self.get(str(manifest.get("apiVersion", "")), str(manifest.get("kind", "")))
