"""The CLI addresses templates by the scope the control plane gives their kind (GetScope),
asked once per kind and invocation, and asked again after a CRD is applied or deleted;
without a server, against a client whose calls are answered here."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from archipel.cli import main as cli
from archipel.cli import promote
from archipel.client import Client, ClientError, Config
from archipel.core import kinds, scopes
from archipel.v1alpha2 import service_pb2

GROUP = "gadgets.example.com"


def crd(scope: str = "Cluster") -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gadgets.{GROUP}"},
        "spec": {"group": GROUP, "names": {"kind": "Gadget", "plural": "gadgets"}, "scope": scope},
    }


GADGET = {"apiVersion": f"{GROUP}/v1", "kind": "Gadget", "metadata": {"name": "g"}}
CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
PRIORITY_CLASS = {
    "apiVersion": "scheduling.k8s.io/v1",
    "kind": "PriorityClass",
    "metadata": {"name": "p"},
}


class Server(Client):
    """A Client whose GetScope is answered from CRDs "applied" through it, as the control
    plane would; templates applied and deleted are recorded."""

    def __init__(self, *, implemented: bool = True) -> None:
        self.config = Config("nowhere:1", "t")
        self._scopes = {}
        self.templates = types.SimpleNamespace(GetScope="GetScope")  # type: ignore[assignment]
        self.known = scopes.KindScopes()
        self.implemented = implemented
        self.asked: list[tuple[str, str]] = []
        self.applied: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str, str]] = []

    def close(self) -> None:
        pass

    def call(self, method: Any, request: Any, *, timeout: float = 30) -> Any:
        assert method == "GetScope", method
        if not self.implemented:
            raise ClientError("UNIMPLEMENTED: no", code=grpc.StatusCode.UNIMPLEMENTED)
        self.asked.append((request.api_version, request.kind))
        scope = self.known.scope(request.api_version, request.kind)
        return service_pb2.ResourceTemplateServiceGetScopeResponse(
            group=scope.group,
            kind=scope.kind,
            namespaced=scope.namespaced,
            custom_resource_definition=scope.defined_by,
        )

    def apply_document(self, document: dict[str, Any]) -> tuple[str, str]:
        self.applied.append(document)
        self.known.observe(kinds.RESOURCE_TEMPLATE.key_of(document), document)
        return f"{document['kind'].lower()}/{document['metadata']['name']}", "created"

    def delete_template(
        self, api_version: str, kind: str, name: str, namespace: str = "", **_: Any
    ) -> bool:
        self.deleted.append((kind, namespace, name))
        if scopes.is_crd({"apiVersion": api_version, "kind": kind}):
            for key in [k for k in self.known._by_key if k.endswith(f"/{name}")]:
                self.known.observe(key, None)
        return True


def run(server: Server, *argv: str) -> int:
    args = cli.build_parser().parse_args(argv)
    commands = cli.Commands(args)
    commands._client = server
    getattr(commands, args.command)()
    return 0


def write(tmp_path: Path, *documents: dict[str, Any]) -> str:
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


def test_apply_gives_n_to_namespaced_templates_only_and_applies_crds_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = Server()
    path = write(tmp_path, GADGET, CONFIG_MAP, PRIORITY_CLASS, crd())
    run(server, "apply", "-f", path, "-n", "team")
    where = [(d["kind"], d["metadata"].get("namespace", "")) for d in server.applied]
    # The Gadget is cluster-scoped by the CRD applied before it in the same run.
    assert where == [
        ("CustomResourceDefinition", ""),
        ("Gadget", ""),
        ("ConfigMap", "team"),
        ("PriorityClass", ""),
    ]
    assert (
        capsys.readouterr().out.splitlines()[0]
        == f"customresourcedefinition/gadgets.{GROUP} created"
    )


def test_a_custom_resource_of_an_unknown_kind_is_namespaced(tmp_path: Path) -> None:
    server = Server()
    run(server, "apply", "-f", write(tmp_path, GADGET))
    assert server.applied[0]["metadata"]["namespace"] == "default"


def test_delete_f_goes_the_other_way_round_in_each_kinds_scope(tmp_path: Path) -> None:
    server = Server()
    server.apply_document(crd())
    path = write(tmp_path, crd(), GADGET, CONFIG_MAP, PRIORITY_CLASS)
    run(server, "delete", "-f", path, "-n", "team")
    assert server.deleted == [
        ("PriorityClass", "", "p"),
        ("ConfigMap", "team", "c"),
        ("Gadget", "", "g"),
        ("CustomResourceDefinition", "", f"gadgets.{GROUP}"),
    ]


def test_the_scope_is_asked_once_per_kind_and_again_after_a_crd_goes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = Server()
    server.apply_document(crd())
    run(server, "delete", f"Gadget.v1.{GROUP}", "a", "b", "-n", "team")
    assert server.asked == [(f"{GROUP}/v1", "Gadget")]
    assert server.deleted == [("Gadget", "", "a"), ("Gadget", "", "b")]
    server.deleted.clear()
    run(server, "delete", "crd", f"gadgets.{GROUP}")
    assert server.template_namespace(f"{GROUP}/v1", "Gadget", None) == "default"
    capsys.readouterr()


def test_a_control_plane_without_get_scope_gets_the_built_in_rule() -> None:
    server = Server(implemented=False)
    assert server.template_namespace("scheduling.k8s.io/v1", "PriorityClass", "team") == ""
    assert server.template_namespace(f"{GROUP}/v1", "Gadget", None) == "default"


def test_render_offline_reads_the_files_crds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(yaml.safe_dump([{"name": "member1"}]))
    path = write(tmp_path, crd(), GADGET, CONFIG_MAP)
    run(Server(), "render", "-f", path, "--clusters", str(clusters), "--cluster", "member1")
    rendered = {d["kind"]: d["metadata"] for d in yaml.safe_load_all(capsys.readouterr().out)}
    assert "namespace" not in rendered["Gadget"]
    assert rendered["ConfigMap"]["namespace"] == "default"


@pytest.mark.parametrize(
    ("member_namespaced", "crd_scope", "refused"),
    [
        (False, None, "no CustomResourceDefinition template defines the kind"),
        (False, "Cluster", None),
        (True, None, None),
        (False, "Namespaced", f"CustomResourceDefinition gadgets.{GROUP} says so"),
    ],
)
def test_promote_needs_the_control_plane_to_agree_on_the_scope(
    member_namespaced: bool, crd_scope: str | None, refused: str | None
) -> None:
    server = Server()
    if crd_scope is not None:
        server.apply_document(crd(crd_scope))
    resource = promote.Resource(f"{GROUP}/v1", "Gadget", "gadgets", member_namespaced)
    if refused is None:
        promote._refuse_other_scope(resource, server)
        return
    with pytest.raises(ClientError, match=refused):
        promote._refuse_other_scope(resource, server)
