"""Who may call what: the roles of people and programs, as one pure table.

An identity has one role, and an editor or a viewer may be limited to namespaces.
:func:`decide` answers for a whole RPC from its service and method names alone, before
the request is read; what depends on the request itself (its namespace, whether it
reads a Secret) is answered by :meth:`Identity.check_namespace` and
:meth:`Identity.may_read_secrets`, which the servicers call once they know.

The roles follow Kubernetes' user-facing ClusterRoles (``admin``, ``edit``, ``view``)
where they overlap: a viewer reads everything but Secrets, an editor writes the
application (templates and policies), and neither touches the fleet or the control
plane's own credentials. An ``operator`` runs the fleet: clusters (cordon, taints,
rebalancing and rescheduling) and policies, without the applications' Secrets.

Services are named without their package, so both API versions share one table. A
service this table does not name (joining clusters, tokens, certificate requests,
users, audit, storage) is administration: the admin's alone. New services are thus
closed until someone decides otherwise.
"""

from __future__ import annotations

import dataclasses
import enum
import re

from archipel.core.errors import Invalid, PermissionDenied


class Role(enum.StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    EDITOR = "editor"
    VIEWER = "viewer"


class Area(enum.Enum):
    """What a service's objects are, as far as access goes."""

    TEMPLATES = "templates"
    POLICIES = "policies"
    CLUSTER_POLICIES = "cluster-wide policies"
    FLEET = "clusters"
    BINDINGS = "bindings"
    WORKS = "works"
    INFO = "info"
    ADMINISTRATION = "administration"


SERVICE_AREAS: dict[str, Area] = {
    "ResourceTemplateService": Area.TEMPLATES,
    "PropagationPolicyService": Area.POLICIES,
    "OverridePolicyService": Area.POLICIES,
    "ClusterPropagationPolicyService": Area.CLUSTER_POLICIES,
    "ClusterOverridePolicyService": Area.CLUSTER_POLICIES,
    # How kinds are read (replicas, health, dependencies) is cluster-wide policy.
    "ResourceInterpreterCustomizationService": Area.CLUSTER_POLICIES,
    "MemberClusterService": Area.FLEET,
    "WorkloadRebalancerService": Area.FLEET,
    "ClusterTaintPolicyService": Area.FLEET,
    "PropagationBindingService": Area.BINDINGS,
    # Works carry the rendered manifests, Secrets' data included.
    "PropagationWorkService": Area.WORKS,
    "InfoService": Area.INFO,
}

READ_METHODS = frozenset({"Get", "List", "Watch", "GetScope", "GetVersion"})
"""Methods that change nothing; every other method is mutating (and audited)."""

# Which areas each role may read and write. Works are read by those who may read
# Secrets (see Identity.may_read_secrets), so they are listed under neither here.
_READS: dict[Role, frozenset[Area]] = {
    Role.ADMIN: frozenset(Area),
    Role.OPERATOR: frozenset(Area) - {Area.ADMINISTRATION, Area.WORKS},
    Role.EDITOR: frozenset(Area) - {Area.ADMINISTRATION, Area.WORKS},
    Role.VIEWER: frozenset(Area) - {Area.ADMINISTRATION, Area.WORKS},
}
_WRITES: dict[Role, frozenset[Area]] = {
    Role.ADMIN: frozenset(Area),
    # Bindings too: `archipel reschedule` divides a template's replicas afresh by
    # writing its binding, as a WorkloadRebalancer does for several.
    Role.OPERATOR: frozenset({Area.FLEET, Area.BINDINGS, Area.POLICIES, Area.CLUSTER_POLICIES}),
    Role.EDITOR: frozenset({Area.TEMPLATES, Area.POLICIES, Area.CLUSTER_POLICIES}),
    Role.VIEWER: frozenset(),
}
_LIMITABLE = frozenset({Role.EDITOR, Role.VIEWER})

_USER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.@]{0,61}[a-z0-9])?$")


def check_user_name(name: str, field: str = "name") -> None:
    """A user's name: lowercase letters, digits, ``-``, ``.`` and ``@`` (an email
    address fits), at most 63 characters."""
    if not _USER_NAME.match(name):
        raise Invalid(
            field,
            "must be 1 to 63 lowercase letters, digits, '-', '.' or '@', starting and "
            "ending with a letter or digit",
        )


def parse_role(text: str, field: str = "role") -> Role:
    try:
        return Role(text)
    except ValueError:
        raise Invalid(field, f"must be one of {', '.join(r.value for r in Role)}") from None


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who is calling. ``namespaces`` empty means every namespace."""

    name: str
    role: Role
    namespaces: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.namespaces and self.role not in _LIMITABLE:
            raise Invalid(
                "namespaces",
                f"only an editor or a viewer is limited to namespaces; a {self.role} "
                "reaches every namespace",
            )

    def describe(self) -> str:
        scope = f" in {', '.join(sorted(self.namespaces))}" if self.namespaces else ""
        return f"{self.name} ({self.role}{scope})"

    def may_read_secrets(self) -> bool:
        """Whether Secrets (templates of kind Secret, and works, which carry them) may be
        read: the admin, and an editor, who writes them anyway."""
        return self.role in (Role.ADMIN, Role.EDITOR)

    def check_secrets(self, what: str = "Secrets") -> None:
        if not self.may_read_secrets():
            raise PermissionDenied(f"{self.describe()} may not read {what}")

    def check_namespace(self, namespace: str, *, namespaced: bool, write: bool) -> None:
        """Raise unless this identity reaches ``namespace``.

        ``namespace`` is the object's, or a List's or Watch's ("" for every namespace);
        ``namespaced`` says whether the kind has namespaces at all. An identity limited
        to namespaces reads cluster-scoped objects (clusters, cluster-wide policies) but
        writes none, and lists only inside its namespaces.
        """
        if not self.namespaces:
            return
        if not namespaced:
            if write:
                raise PermissionDenied(f"{self.describe()} may not write cluster-scoped objects")
            return
        if namespace not in self.namespaces:
            where = f"namespace {namespace}" if namespace else "every namespace"
            raise PermissionDenied(
                f"{self.describe()} may not reach {where}: name one of its namespaces"
            )


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


def split_method(full_method: str) -> tuple[str, str]:
    """``/archipel.v1alpha2.MemberClusterService/Get`` → (``MemberClusterService``, ``Get``)."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service.rpartition(".")[2], method


def area(service: str) -> Area:
    return SERVICE_AREAS.get(service, Area.ADMINISTRATION)


def is_mutating(method: str) -> bool:
    return method not in READ_METHODS


def decide(identity: Identity, full_method: str) -> Decision:
    """Whether ``identity`` may call ``full_method`` at all."""
    service, method = split_method(full_method)
    where = area(service)
    writes = is_mutating(method)
    granted = (_WRITES if writes else _READS)[identity.role]
    if where in granted:
        return Decision(True)
    if where is Area.WORKS and not writes and identity.may_read_secrets():
        return Decision(True)
    verb = "call" if where is Area.ADMINISTRATION else ("change" if writes else "read")
    what = f"{service}.{method}" if where is Area.ADMINISTRATION else where.value
    return Decision(False, f"{identity.describe()} may not {verb} {what}")
