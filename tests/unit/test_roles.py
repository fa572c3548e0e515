"""The role table: which role may call which RPC, and the namespace and Secret rules."""

from __future__ import annotations

import pytest

from archipel.core import roles
from archipel.core.errors import Invalid, PermissionDenied
from archipel.core.roles import Identity, Role

ADMIN = Identity("root", Role.ADMIN)
OPERATOR = Identity("ops", Role.OPERATOR)
EDITOR = Identity("dev", Role.EDITOR)
VIEWER = Identity("auditor", Role.VIEWER)
TEAM_EDITOR = Identity("team-dev", Role.EDITOR, frozenset({"team-a"}))

V2 = "/archipel.v1alpha2."
V1 = "/archipel.v1alpha1."


@pytest.mark.parametrize(
    ("identity", "method", "allowed"),
    [
        (ADMIN, f"{V2}UserService/Create", True),
        (ADMIN, f"{V2}PropagationWorkService/Apply", True),
        (OPERATOR, f"{V2}MemberClusterService/Apply", True),
        (OPERATOR, f"{V2}ClusterTaintPolicyService/Apply", True),
        (OPERATOR, f"{V2}WorkloadRebalancerService/Apply", True),
        (OPERATOR, f"{V2}PropagationPolicyService/Apply", True),
        (OPERATOR, f"{V1}ClusterOverridePolicyService/Delete", True),
        (OPERATOR, f"{V2}ResourceTemplateService/Apply", False),
        (OPERATOR, f"{V2}ResourceTemplateService/Get", True),
        (OPERATOR, f"{V2}PropagationWorkService/Get", False),
        (OPERATOR, f"{V2}PropagationBindingService/Apply", True),
        (OPERATOR, f"{V2}ClusterAdminService/Join", False),
        (OPERATOR, f"{V2}UserService/List", False),
        (EDITOR, f"{V2}ResourceTemplateService/Apply", True),
        (EDITOR, f"{V1}ResourceTemplateService/Delete", True),
        (EDITOR, f"{V2}OverridePolicyService/Apply", True),
        (EDITOR, f"{V2}ResourceInterpreterCustomizationService/Apply", True),
        (EDITOR, f"{V2}MemberClusterService/Apply", False),
        (EDITOR, f"{V2}MemberClusterService/List", True),
        (EDITOR, f"{V2}PropagationWorkService/List", True),
        (EDITOR, f"{V2}PropagationWorkService/Apply", False),
        (EDITOR, f"{V2}PropagationBindingService/Apply", False),
        (EDITOR, f"{V2}AuditService/List", False),
        (VIEWER, f"{V2}ResourceTemplateService/List", True),
        (VIEWER, f"{V2}ResourceTemplateService/GetScope", True),
        (VIEWER, f"{V2}ResourceTemplateService/Apply", False),
        (VIEWER, f"{V2}PropagationBindingService/Watch", True),
        (VIEWER, f"{V2}PropagationWorkService/Get", False),
        (VIEWER, f"{V2}InfoService/GetVersion", True),
        (VIEWER, f"{V2}ClusterAdminService/Join", False),
        # A service the table does not know is administration: closed by default.
        (OPERATOR, f"{V2}SomethingNewService/List", False),
        (ADMIN, f"{V2}SomethingNewService/Do", True),
    ],
)
def test_decide(identity: Identity, method: str, allowed: bool) -> None:
    decision = roles.decide(identity, method)
    assert decision.allowed is allowed
    if not allowed:
        assert identity.name in decision.reason and identity.role.value in decision.reason


def test_refusals_say_what_was_refused() -> None:
    assert roles.decide(VIEWER, f"{V2}ResourceTemplateService/Apply").reason == (
        "auditor (viewer) may not change templates"
    )
    assert roles.decide(OPERATOR, f"{V2}UserService/List").reason == (
        "ops (operator) may not call UserService.List"
    )


def test_namespace_limits() -> None:
    TEAM_EDITOR.check_namespace("team-a", namespaced=True, write=True)
    # Cluster-scoped objects are read, never written.
    TEAM_EDITOR.check_namespace("", namespaced=False, write=False)
    with pytest.raises(PermissionDenied, match="cluster-scoped"):
        TEAM_EDITOR.check_namespace("", namespaced=False, write=True)
    with pytest.raises(PermissionDenied, match="namespace team-b"):
        TEAM_EDITOR.check_namespace("team-b", namespaced=True, write=False)
    with pytest.raises(PermissionDenied, match="every namespace"):
        TEAM_EDITOR.check_namespace("", namespaced=True, write=False)
    # Without namespaces, everything.
    EDITOR.check_namespace("", namespaced=True, write=True)
    EDITOR.check_namespace("", namespaced=False, write=True)


def test_secrets() -> None:
    assert ADMIN.may_read_secrets() and EDITOR.may_read_secrets()
    assert not VIEWER.may_read_secrets() and not OPERATOR.may_read_secrets()
    with pytest.raises(PermissionDenied, match="auditor \\(viewer\\) may not read Secrets"):
        VIEWER.check_secrets()


def test_only_editors_and_viewers_are_limited_to_namespaces() -> None:
    Identity("v", Role.VIEWER, frozenset({"a"}))
    with pytest.raises(Invalid, match=r"^namespaces: only an editor or a viewer"):
        Identity("o", Role.OPERATOR, frozenset({"a"}))


@pytest.mark.parametrize("name", ["alice", "ci-bot", "alice@example.com", "a", "a.b"])
def test_user_names(name: str) -> None:
    roles.check_user_name(name)


@pytest.mark.parametrize("name", ["", "Alice", "-a", "a-", "a b", "a/b", "x" * 64, "user:x"])
def test_bad_user_names(name: str) -> None:
    with pytest.raises(Invalid, match=r"^user\.name: "):
        roles.check_user_name(name, "user.name")


def test_unknown_role_names_the_choices() -> None:
    with pytest.raises(Invalid, match=r"^role: must be one of admin, operator, editor, viewer$"):
        roles.parse_role("root")
