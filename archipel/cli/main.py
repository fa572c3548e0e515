"""``archipel``: the command line for people.

Every failure is one line on stderr and exit code 1. The server address and admin
credential come from ``.local/archipel.yaml`` (written by ``make up``), the file in
``$ARCHIPEL_CONFIG``, or ``$ARCHIPEL_SERVER`` and ``$ARCHIPEL_TOKEN``.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import secrets
import string
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format

from archipel import durations, structs
from archipel.cli import agent_manifests
from archipel.client import (
    TEMPLATE_KINDS,
    ApiKind,
    Client,
    ClientError,
    Config,
    api_kind_by_name,
    api_kind_of_document,
    message_to_document,
    read_documents,
    to_message,
)
from archipel.core import kinds, matching, overrides, scopes
from archipel.core.errors import ArchipelError
from archipel.core.names import (
    APPLIED_CLUSTER_OVERRIDES_ANNOTATION,
    APPLIED_OVERRIDES_ANNOTATION,
    BINDING_NAME_LABEL,
    BINDING_NAMESPACE_LABEL,
    CLUSTER_LABEL,
    UNSCHEDULABLE_TAINT,
)
from archipel.core.scheduling import ClusterInfo
from archipel.core.workloads import member_manifest
from archipel.v1alpha1 import apps_pb2
from archipel.version import VERSION

APPLIED_OVERRIDES = (
    ("ClusterOverridePolicy", APPLIED_CLUSTER_OVERRIDES_ANNOTATION),
    ("OverridePolicy", APPLIED_OVERRIDES_ANNOTATION),
)
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _remove_taints(cluster: Any, key: str, effect: str) -> bool:
    kept = [t for t in cluster.spec.taints if not (t.key == key and effect in ("", t.effect))]
    if len(kept) == len(cluster.spec.taints):
        return False
    copies = [type(t).FromString(t.SerializeToString()) for t in kept]
    del cluster.spec.taints[:]
    cluster.spec.taints.extend(copies)
    return True


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    created = datetime.datetime.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.UTC
    )
    seconds = int((datetime.datetime.now(datetime.UTC) - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _duration(text: str, flag: str) -> datetime.timedelta:
    try:
        return durations.parse_duration(text)
    except ValueError as error:
        raise ClientError(f"{flag}: {error}") from None


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _condition(document: dict[str, Any], type_: str) -> dict[str, Any]:
    for condition in document.get("status", {}).get("conditions", []):
        if condition.get("type") == type_:
            return dict(condition)
    return {}


def _render(
    template: dict[str, Any], namespaced: list[Any], cluster_wide: list[Any], cluster: Any
) -> dict[str, Any]:
    """The binding controller's build of one cluster's manifest (replicas undivided)."""

    policies = overrides.ordered(template, namespaced, cluster_wide)
    try:
        manifest, _ = overrides.apply(member_manifest(template, replicas=None), policies, cluster)
    except overrides.OverrideError as error:
        raise ClientError(str(error)) from error
    return manifest


def _print(documents: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        body: Any = documents[0] if len(documents) == 1 else {"items": documents}
        print(json.dumps(body, indent=2))
    else:
        print(yaml.safe_dump_all(documents, sort_keys=False), end="")


class Commands:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            config = (
                Config.load(self.args.config, server=",".join(self.args.servers))
                if self.args.servers
                else Config.load(self.args.config)
            )
            self._client = Client(config)
        return self._client

    # -- apply / delete ------------------------------------------------------------------

    def _documents(self, *, deleting: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """The documents of -f, Archipel's kinds with their namespace defaulted.

        A template's namespace is left for :meth:`_template_namespace`, at its turn: its
        kind's scope may be defined by a CRD earlier in the same files.
        """
        if not self.args.filename:
            raise ClientError("-f: give a file, a directory or '-'")
        documents: list[tuple[str, dict[str, Any]]] = []
        for source in self.args.filename:
            documents.extend(read_documents(source))
        for origin, document in documents:
            try:
                api_kind = api_kind_of_document(document)
            except ClientError as error:
                raise ClientError(f"{origin}: {error}") from error
            if api_kind is not None:
                if api_kind.namespaced and not document["metadata"].get("namespace"):
                    document["metadata"]["namespace"] = self.args.namespace or "default"
                try:
                    to_message(api_kind, document)  # every document parses before any is sent
                except ClientError as error:
                    raise ClientError(f"{origin}: {error}") from error
        # Namespaces and CRDs first (what the rest lives in, or is the kind of), then
        # everything else in the order given; a delete goes the other way round.
        documents.sort(key=lambda item: (_FIRST.get(item[1].get("kind", ""), 2), 0))
        if deleting:
            documents.reverse()
        return documents

    def _template_namespace(self, document: dict[str, Any]) -> str:
        """A template document's namespace by its kind's scope, as the control plane
        says it: its own or -n's (or default) when namespaced, none when cluster-scoped
        (a namespace the document itself names is left for the server to refuse)."""
        metadata = document.setdefault("metadata", {})
        own = metadata.get("namespace")
        if own:
            return str(own)
        return self.client.template_namespace(
            str(document.get("apiVersion", "")), str(document.get("kind", "")), self.args.namespace
        )

    def apply(self) -> None:
        for origin, document in self._documents():
            try:
                if api_kind_of_document(document) is None:
                    namespace = self._template_namespace(document)
                    if namespace:
                        document["metadata"]["namespace"] = namespace
                name, outcome = self.client.apply_document(document)
            except ClientError as error:
                raise ClientError(f"{origin}: {error}") from error
            if scopes.is_crd(document):
                self.client.forget_scopes()
            print(f"{name} {outcome}")

    def delete(self) -> None:
        if self.args.filename:
            targets = [(d.get("kind", ""), d) for _, d in self._documents(deleting=True)]
        else:
            if not self.args.kind or not self.args.names:
                raise ClientError("delete: give KIND NAME... or -f FILE")
            targets = [(self.args.kind, {"metadata": {"name": n}}) for n in self.args.names]
        for kind_name, document in targets:
            api_kind, template = self._resolve(kind_name, document)
            name = document["metadata"]["name"]
            namespace = document["metadata"].get("namespace") or self.args.namespace or "default"
            if api_kind is not None:
                deleted = self.client.delete_object(
                    api_kind, name, namespace if api_kind.namespaced else ""
                )
                label = api_kind.name.lower()
            else:
                assert template is not None
                api_version, kind = template
                deleted = self.client.delete_template(
                    api_version,
                    kind,
                    name,
                    self.client.template_namespace(api_version, kind, namespace),
                )
                if kind == scopes.CRD_KIND:
                    self.client.forget_scopes()
                label = kind.lower()
            state = "deleted" if deleted else "deletion requested"
            print(f"{label}/{name} {state}")

    def _resolve(
        self, kind_name: str, document: dict[str, Any] | None = None
    ) -> tuple[ApiKind | None, tuple[str, str] | None]:
        if document is not None and document.get("apiVersion"):
            api_kind = api_kind_of_document(document)
            if api_kind is not None:
                return api_kind, None
            return None, (document["apiVersion"], document["kind"])
        api_kind = api_kind_by_name(kind_name)
        if api_kind is not None:
            return api_kind, None
        template = TEMPLATE_KINDS.get(kind_name.lower())
        if template is None and "." in kind_name:
            # KIND.VERSION.GROUP, as kubectl: widgets.v1.example.com
            kind, version, group = [*kind_name.split(".", 2), "", ""][:3]
            if kind and version:
                template = (f"{group}/{version}" if group else version, kind)
        if template is None:
            raise ClientError(
                f"unknown kind {kind_name!r}: use an Archipel kind, a common Kubernetes kind, "
                "or KIND.VERSION.GROUP"
            )
        return None, template

    # -- get / describe ------------------------------------------------------------------

    def _fetch(self) -> tuple[ApiKind | None, list[dict[str, Any]]]:
        args = self.args
        api_kind, template = self._resolve(args.kind)
        namespace = "" if args.all_namespaces else (args.namespace or "default")
        names = args.names or []
        documents: list[dict[str, Any]] = []
        if api_kind is not None:
            scope = namespace if api_kind.namespaced else ""
            if names:
                for name in names:
                    found = self.client.get_object(api_kind, name, scope)
                    documents.append(message_to_document(found))
            else:
                listed = self.client.list_objects(
                    api_kind, scope, label_selector=args.selector or ""
                )
                documents = [message_to_document(item) for item in listed]
            return api_kind, documents
        assert template is not None
        api_version, kind = template
        namespaced = self.client.template_scope(api_version, kind).namespaced
        scope = namespace if namespaced else ""
        if names:
            for name in names:
                found = self.client.get_template(api_version, kind, name, scope)
                documents.append(structs.from_struct(found.manifest))
        else:
            listed = self.client.list_templates(
                api_version, kind, scope, label_selector=args.selector or ""
            )
            documents = [structs.from_struct(item.manifest) for item in listed]
        return None, documents

    def get(self) -> None:
        api_kind, documents = self._fetch()
        if self.args.output in ("yaml", "json"):
            if documents:
                _print(documents, self.args.output)
            return
        if not documents:
            print("No resources found.", file=sys.stderr)
            return
        print(_table(self._rows(api_kind, documents)))

    def _rows(self, api_kind: ApiKind | None, documents: list[dict[str, Any]]) -> list[list[str]]:
        show_namespace = self.args.all_namespaces
        kind = api_kind.name if api_kind else documents[0].get("kind", "")
        header = ["NAMESPACE"] if show_namespace else []
        rows: list[list[str]] = []
        if kind == "MemberCluster":
            return self._cluster_rows(documents)
        if kind == "Deployment":
            header += ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
        elif kind in ("PropagationPolicy", "ClusterPropagationPolicy"):
            header += ["NAME", "PRIORITY", "AGE"]
        elif kind == "PropagationBinding":
            header += ["NAME", "SCHEDULED", "FULLYAPPLIED", "CLUSTERS", "AGE"]
        elif kind == "PropagationWork":
            header += ["NAME", "APPLIED", "AGE"]
        else:
            header += ["NAME", "AGE"]
        rows.append(header)
        for document in documents:
            metadata = document.get("metadata", {})
            row = [metadata.get("namespace", "")] if show_namespace else []
            row.append(metadata.get("name", ""))
            status = document.get("status", {})
            spec = document.get("spec", {})
            if kind == "Deployment":
                row += [
                    f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
                    str(status.get("updatedReplicas", 0)),
                    str(status.get("availableReplicas", 0)),
                ]
            elif kind in ("PropagationPolicy", "ClusterPropagationPolicy"):
                row.append(str(spec.get("priority", 0)))
            elif kind == "PropagationBinding":
                row += [
                    _condition(document, "Scheduled").get("status", "Unknown"),
                    _condition(document, "FullyApplied").get("status", "Unknown"),
                    ",".join(c["name"] for c in spec.get("clusters", [])) or "<none>",
                ]
            elif kind == "PropagationWork":
                row.append(_condition(document, "Applied").get("status", "Unknown"))
            row.append(_age(metadata.get("creationTimestamp")))
            rows.append(row)
        return rows

    @staticmethod
    def _cluster_rows(documents: list[dict[str, Any]]) -> list[list[str]]:
        rows = [["NAME", "READY", "VERSION", "NODES", "AGENT", "AGE"]]
        for document in documents:
            status = document.get("status", {})
            nodes = status.get("nodeSummary", {})
            rows.append(
                [
                    document["metadata"]["name"],
                    _condition(document, "Ready").get("status", "Unknown"),
                    status.get("kubernetesVersion", "") or "<unknown>",
                    f"{nodes.get('readyNum', 0)}/{nodes.get('totalNum', 0)}",
                    _agent_column(status.get("agent", {})),
                    _age(document["metadata"].get("creationTimestamp")),
                ]
            )
        return rows

    def clusters(self) -> None:
        if self.args.action == "revoke":
            if not self.args.name:
                raise ClientError("clusters revoke: name the cluster")
            print(self.client.revoke(self.args.name))
            return
        if self.args.action:
            raise ClientError(f"clusters: unknown action {self.args.action!r} (revoke)")
        self.args.kind, self.args.names = "memberclusters", []
        self.args.all_namespaces, self.args.selector, self.args.output = False, "", ""
        self.args.namespace = None
        self.get()

    def describe(self) -> None:
        api_kind, documents = self._fetch()
        for document in documents:
            if api_kind is not None:
                print(yaml.safe_dump(document, sort_keys=False), end="")
                continue
            self._describe_template(document)

    def _describe_template(self, document: dict[str, Any]) -> None:
        metadata = document["metadata"]
        print(f"Name:         {metadata['name']}")
        print(f"Namespace:    {metadata.get('namespace', '')}")
        print(f"Kind:         {document['kind']} ({document['apiVersion']})")
        print(f"Generation:   {metadata.get('generation', '')}")
        found = self.client.binding_of(
            document["apiVersion"],
            document["kind"],
            metadata.get("namespace", ""),
            metadata["name"],
        )
        if found is None:
            waiting = self._waiting_for_overrides(document)
            print(f"Propagation:  not propagated ({waiting or 'no policy matches'})")
            return
        binding = message_to_document(found)
        spec, status = binding.get("spec", {}), binding.get("status", {})
        policy = spec.get("policy", {})
        if policy.get("kind"):
            where = f"{policy.get('namespace', '')}/{policy.get('name')}"
            print(f"Policy:       {policy.get('kind')} {where}")
            scheduled = _condition(binding, "Scheduled")
            reason = f"{scheduled.get('reason', '')}: {scheduled.get('message', '')}"
            print(f"Scheduled:    {scheduled.get('status', 'Unknown')} ({reason})")
        elif spec.get("autoPropagated"):
            print("Policy:       none: a Namespace goes to every member cluster by itself")
        else:
            print("Policy:       none: it goes where the workloads that need it run")
        for snapshot in spec.get("requiredBy", []):
            clusters = ", ".join(c["name"] for c in snapshot.get("clusters", [])) or "nowhere yet"
            print(f"Required by:  {snapshot.get('namespace')}/{snapshot.get('name')} ({clusters})")
        for failed in (
            "DependentOverridesReady",
            "Interpreted",
            "OverridesApplied",
            "StatusAggregated",
        ):
            condition = _condition(binding, failed)
            if condition.get("status") == "False":
                print(f"{failed}: False ({condition.get('message', '')})")
        applied = _condition(binding, "FullyApplied")
        print(f"FullyApplied: {applied.get('status', 'Unknown')} ({applied.get('message', '')})")
        rows = [["CLUSTER", "REPLICAS", "APPLIED", "HEALTH", "STATUS"]]
        replicas = {c["name"]: str(c.get("replicas", 0)) for c in spec.get("clusters", [])}
        for item in status.get("aggregatedStatus", []):
            rows.append(
                [
                    item["clusterName"],
                    replicas.get(item["clusterName"], "0"),
                    str(item.get("applied", False)).lower(),
                    item.get("health", "Unknown"),
                    json.dumps(item.get("status", {}), separators=(",", ":"))
                    if item.get("status")
                    else item.get("appliedMessage", ""),
                ]
            )
        print("Clusters:")
        print("  " + _table(rows).replace("\n", "\n  "))
        _describe_failover(spec, status)
        self._describe_overrides(binding, list(replicas))
        if "status" in document:
            print("Aggregated status:")
            print("  " + json.dumps(document["status"], separators=(", ", ": ")))

    def _waiting_for_overrides(self, document: dict[str, Any]) -> str:
        """What an unbound template waits for: the dependentOverrides of the policy that
        matches it, when some are missing (the policy controller's own rule); else ""."""
        try:
            return self._missing_overrides(document)
        except ClientError:
            return ""  # not allowed to list policies: say nothing rather than fail

    def _missing_overrides(self, document: dict[str, Any]) -> str:
        namespace = document["metadata"].get("namespace", "")
        policies = (
            self.client.list_objects(kinds.PROPAGATION_POLICY, namespace) if namespace else []
        )
        candidate = matching.choose(
            document, policies, self.client.list_objects(kinds.CLUSTER_PROPAGATION_POLICY)
        )
        if candidate is None or not candidate.policy.spec.dependent_overrides:
            return ""
        overrides = (
            {o.metadata.name for o in self.client.list_objects(kinds.OVERRIDE_POLICY, namespace)}
            if namespace
            else set()
        )
        cluster_overrides = {
            o.metadata.name for o in self.client.list_objects(kinds.CLUSTER_OVERRIDE_POLICY)
        }
        missing = matching.missing_dependent_overrides(candidate, overrides, cluster_overrides)
        return matching.waiting_for_overrides(candidate, missing) if missing else ""

    def _describe_overrides(self, binding: dict[str, Any], clusters: list[str]) -> None:
        """Per cluster, the override policies its work was rendered with, in order."""
        metadata = binding["metadata"]
        listed = self.client.list_objects(
            kinds.PROPAGATION_WORK, label_selector=f"{BINDING_NAME_LABEL}={metadata['name']}"
        )
        applied: dict[str, list[str]] = {}
        for item in listed:
            work = message_to_document(item)
            labels = work["metadata"].get("labels", {})
            if labels.get(BINDING_NAMESPACE_LABEL, "") != metadata.get("namespace", ""):
                continue
            annotations = work["metadata"].get("annotations", {})
            names = []
            for kind, key in APPLIED_OVERRIDES:
                for entry in json.loads(annotations.get(key, "[]")):
                    namespace = entry.get("policyNamespace")
                    name = (
                        f"{namespace}/{entry['policyName']}" if namespace else entry["policyName"]
                    )
                    names.append(f"{kind} {name}")
            applied[labels.get(CLUSTER_LABEL, "")] = names
        print("Overrides:")
        for cluster in sorted(set(clusters) | set(applied)):
            print(f"  {cluster}: {', '.join(applied.get(cluster) or []) or 'none'}")

    # -- cluster taints and rescheduling ---------------------------------------------------

    def _update_cluster(self, name: str, change: Any) -> None:
        """Read, change and write back a MemberCluster; retried if someone wrote first."""
        for attempt in range(5):
            cluster = self.client.get_object(kinds.MEMBER_CLUSTER, name)
            if not change(cluster):
                return
            try:
                self.client.apply_object(kinds.MEMBER_CLUSTER, cluster)
                return
            except ClientError as error:
                if error.code != grpc.StatusCode.ABORTED or attempt == 4:
                    raise

    def cordon(self) -> None:
        def add(cluster: Any) -> bool:
            if any(t.key == UNSCHEDULABLE_TAINT for t in cluster.spec.taints):
                return False
            cluster.spec.taints.add(key=UNSCHEDULABLE_TAINT, effect="NoSchedule")
            return True

        self._update_cluster(self.args.name, add)
        print(f"membercluster/{self.args.name} cordoned")

    def uncordon(self) -> None:
        self._update_cluster(self.args.name, lambda c: _remove_taints(c, UNSCHEDULABLE_TAINT, ""))
        print(f"membercluster/{self.args.name} uncordoned")

    def taint(self) -> None:
        spec = self.args.taint
        removing = spec.endswith("-")
        key_value, sep, effect = spec.rstrip("-").rpartition(":")
        if not sep:
            key_value, effect = spec.rstrip("-"), ""
        key, _, value = key_value.partition("=")
        if not key or (not removing and effect not in TAINT_EFFECTS):
            raise ClientError(
                f"taint: {spec!r} must be key[=value]:Effect (Effect: {', '.join(TAINT_EFFECTS)}), "
                "or key[:Effect]- to remove"
            )

        def apply(cluster: Any) -> bool:
            if removing:
                return _remove_taints(cluster, key, effect)
            for existing in cluster.spec.taints:
                if existing.key == key and existing.effect == effect:
                    if existing.value == value:
                        return False
                    existing.value = value
                    return True
            cluster.spec.taints.add(key=key, value=value, effect=effect)
            return True

        self._update_cluster(self.args.cluster, apply)
        print(f"membercluster/{self.args.cluster} {'untainted' if removing else 'tainted'}")

    def reschedule(self) -> None:
        """Schedule a template from scratch, as Karmada's WorkloadRebalancer does."""
        _, template = self._resolve(self.args.kind)
        if template is None:
            raise ClientError("reschedule: give the template's KIND and NAME, e.g. deployment web")
        api_version, kind = template
        namespace = self.client.template_namespace(api_version, kind, self.args.namespace)
        binding = self.client.binding_of(api_version, kind, namespace, self.args.name)
        if binding is None:
            where = f" in {namespace}" if namespace else ""
            raise ClientError(
                f"{kind.lower()}/{self.args.name}{where} has no binding: no policy propagates it",
                code=grpc.StatusCode.NOT_FOUND,
            )
        binding.spec.reschedule_triggered_at.GetCurrentTime()
        self.client.apply_object(kinds.PROPAGATION_BINDING, binding)
        print(f"{kind.lower()}/{self.args.name} rescheduling")

    def rebalance(self) -> None:
        """Create a WorkloadRebalancer for the templates named, and (unless --no-wait)
        wait for its result: exit code 1 when any workload failed."""
        args = self.args
        if args.ttl is not None and args.ttl < 0:
            raise ClientError(f"--ttl: must not be negative, not {args.ttl}")
        rebalancer = apps_pb2.WorkloadRebalancer(
            api_version=kinds.WORKLOAD_REBALANCER.api_version, kind=kinds.WORKLOAD_REBALANCER.name
        )
        rebalancer.metadata.name = f"rebalance-{_random_suffix()}"
        for target in args.targets:
            kind_name, _, name = target.partition("/")
            not_a_template = ClientError(
                f"rebalance: {target!r} is not KIND/NAME of a template, e.g. deployment/web"
            )
            if not kind_name or not name:
                raise not_a_template
            api_kind, template = self._resolve(kind_name)
            if api_kind is not None or template is None:
                raise not_a_template
            api_version, kind = template
            namespace = self.client.template_namespace(api_version, kind, args.namespace)
            rebalancer.spec.workloads.add(
                api_version=api_version, kind=kind, namespace=namespace, name=name
            )
        if args.ttl is not None:
            rebalancer.spec.ttl_seconds_after_finished = args.ttl
        created = self.client.apply_object(kinds.WORKLOAD_REBALANCER, rebalancer)
        name = created.metadata.name
        print(f"workloadrebalancer/{name} created")
        if args.no_wait:
            return
        finished = self._wait_for_rebalancer(name, args.timeout)
        if finished is None:
            print(f"workloadrebalancer/{name} finished and was deleted (ttl)")
            return
        failed = 0
        for observed in finished.status.observed_workloads:
            workload = observed.workload
            where = f" -n {workload.namespace}" if workload.namespace else ""
            outcome = observed.result
            if observed.result != "Successful":
                failed += 1
                outcome += f" ({observed.reason})" if observed.reason else ""
            print(f"{workload.kind.lower()}/{workload.name}{where}: {outcome}")
        if failed:
            total = len(finished.status.observed_workloads)
            raise ClientError(f"rebalance: {failed} of {total} workloads failed")

    def _wait_for_rebalancer(self, name: str, timeout: float) -> Any:
        """The rebalancer once its current spec finished; None when it is already gone
        (a TTL of 0 deletes it as it finishes)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                current = self.client.get_object(kinds.WORKLOAD_REBALANCER, name)
            except ClientError as error:
                if error.code == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
            status = current.status
            if (
                status.HasField("finish_time")
                and status.observed_generation == current.metadata.generation
            ):
                return current
            if time.monotonic() > deadline:
                raise ClientError(
                    f"workloadrebalancer/{name}: not finished after {timeout:g}s "
                    "(is the control plane's workload-rebalancer controller running?)"
                )
            time.sleep(0.2)

    # -- what-if simulation -----------------------------------------------------------------

    def schedule(self) -> None:
        from archipel.cli import simulate

        if not self.args.simulate:
            raise ClientError(
                "schedule: only --simulate is supported (the live scheduler runs itself)"
            )
        if not self.args.clusters or not self.args.filename:
            raise ClientError("schedule --simulate: give --clusters FILE and -f FILE")
        clusters = simulate.load_clusters(Path(self.args.clusters))
        documents = [pair for source in self.args.filename for pair in read_documents(source)]
        previous: dict[str, dict[str, int]] = {}
        if self.args.previous:
            try:
                previous = simulate.load_previous(Path(self.args.previous))
            except ClientError as error:
                raise ClientError(f"--previous: {error}") from error
        results = simulate.simulate(clusters, documents, previous=previous)
        if self.args.output == "json":
            print(json.dumps({"results": results}, indent=2))
            return
        if self.args.output == "yaml":
            print(yaml.safe_dump({"results": results}, sort_keys=False), end="")
            return
        for result in results:
            state = "scheduled" if result["scheduled"] else f"NOT scheduled ({result['reason']})"
            print(f"{result['template']}: {state} by {result.get('policy', '-')}")
            for cluster in result["clusters"]:
                print(f"  {cluster['name']}: {cluster['replicas']} replicas")
            if not result["scheduled"]:
                print(f"  {result['message']}")
            for name, why in sorted(result.get("rejected", {}).items()):
                print(f"  {name} filtered out: {why}")

    def render(self) -> None:
        """The final manifest for one cluster, by the binding controller's code: offline
        from files, or for a template on the server (KIND/NAME)."""
        from archipel.cli import simulate

        if self.args.target:
            self._render_from_server()
            return
        if not self.args.clusters or not self.args.filename or not self.args.cluster:
            raise ClientError(
                "render: give KIND/NAME --cluster NAME, or -f FILE (templates, overrides), "
                "--clusters FILE and --cluster NAME"
            )
        clusters = {c.name: c for c in simulate.load_clusters(Path(self.args.clusters))}
        cluster = clusters.get(self.args.cluster)
        if cluster is None:
            raise ClientError(f"--cluster: {self.args.cluster!r} is not in {self.args.clusters}")
        documents = [pair for source in self.args.filename for pair in read_documents(source)]
        # Offline, the files' own CRDs are all there is to say a kind is cluster-scoped.
        known = scopes.KindScopes()
        for number, (_, document) in enumerate(documents):
            known.observe(str(number), document)
        namespaced, cluster_wide, templates = [], [], []
        for origin, document in documents:
            # Checked as the control plane admits them: what it would refuse is refused
            # here, naming the document and the field, before any override runs.
            api_kind, checked = simulate.check_document(origin, document, scope_of=known.scope)
            if api_kind is None:
                templates.append(checked)
            elif api_kind.name == "OverridePolicy":
                namespaced.append(checked)
            elif api_kind.name == "ClusterOverridePolicy":
                cluster_wide.append(checked)
        rendered = [_render(t, namespaced, cluster_wide, cluster) for t in templates]
        _print(rendered, self.args.output or "yaml")

    def _render_from_server(self) -> None:
        """What the cluster's work holds; for a cluster without one, what it would hold."""

        if not self.args.cluster:
            raise ClientError("render: --cluster NAME is required")
        if self.args.filename or self.args.clusters:
            raise ClientError("render: give either KIND/NAME or -f and --clusters, not both")
        kind_name, _, name = self.args.target.partition("/")
        api_kind, resolved = self._resolve(kind_name)
        if api_kind is not None or resolved is None or not name:
            raise ClientError(f"render: {self.args.target!r} is not KIND/NAME of a template")
        api_version, kind = resolved
        namespace = self.client.template_namespace(api_version, kind, self.args.namespace)
        binding = self.client.binding_of(api_version, kind, namespace, name)
        work = None
        if binding is not None:
            try:
                work = self.client.get_object(
                    kinds.PROPAGATION_WORK,
                    f"{namespace or '_'}.{binding.metadata.name}",
                    kinds.execution_namespace(self.args.cluster),
                )
            except ClientError as error:
                # No work for the cluster: render what it would hold. Anything else (not
                # allowed, unreachable) is the user's to see.
                if error.code != grpc.StatusCode.NOT_FOUND:
                    raise
                work = None
        if work is not None:
            _print(
                [structs.from_struct(m) for m in work.spec.workload.manifests],
                self.args.output or "yaml",
            )
            return
        template = structs.from_struct(
            self.client.get_template(api_version, kind, name, namespace).manifest
        )
        cluster = ClusterInfo.from_proto(
            self.client.get_object(kinds.MEMBER_CLUSTER, self.args.cluster)
        )
        namespaced = self.client.list_objects(kinds.OVERRIDE_POLICY, namespace) if namespace else []
        cluster_wide = self.client.list_objects(kinds.CLUSTER_OVERRIDE_POLICY)
        print(
            f"# {self.args.cluster} holds no work for {self.args.target}: rendered from the "
            "template and the override policies as they are now",
            file=sys.stderr,
        )
        _print([_render(template, namespaced, cluster_wide, cluster)], self.args.output or "yaml")

    # -- promote ---------------------------------------------------------------------------

    def promote(self) -> None:
        from archipel.cli import promote

        promote.run(self.args, self.client)

    # -- version ---------------------------------------------------------------------------

    def version(self) -> None:
        print(f"client: {VERSION}")
        answer = self.client.version()
        print(f"server: {answer.version} (APIs {', '.join(answer.api_versions)})")

    # -- users and audit -------------------------------------------------------------------

    def user(self) -> None:
        args = self.args
        if args.user_command == "create":
            _, token = self.client.create_user(
                args.name, args.role, args.namespace or [], rotate=args.rotate
            )
            config: dict[str, Any] = {"server": self.client.config.server, "token": token}
            if self.client.config.insecure:
                config["insecure"] = True
            if self.client.config.tls_ca is not None:
                config["certificateAuthorityData"] = base64.b64encode(
                    self.client.config.tls_ca
                ).decode()
            text = yaml.safe_dump(config, sort_keys=False)
            if args.output_file:
                path = Path(args.output_file)
                path.parent.mkdir(parents=True, exist_ok=True)
                # The config holds the user's token: for that user's eyes only.
                path.touch(mode=0o600, exist_ok=True)
                path.chmod(0o600)
                path.write_text(text)
                print(f"user/{args.name} created; its CLI config is in {path}", file=sys.stderr)
            else:
                sys.stdout.write(text)
                print(f"user/{args.name} created ({args.role})", file=sys.stderr)
        elif args.user_command == "list":
            print(f"{'NAME':<30} {'ROLE':<9} {'NAMESPACES':<30} TOKEN ISSUED")
            for user in self.client.list_users():
                issued = user.token_issued.ToDatetime(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                namespaces = ",".join(user.namespaces) or "*"
                print(f"{user.name:<30} {user.role:<9} {namespaces:<30} {issued}")
        else:
            if not self.client.delete_user(args.name):
                raise ClientError(f"user {args.name} not found")
            print(f"user/{args.name} deleted")

    def audit(self) -> None:
        since = None
        if self.args.since:
            since = datetime.datetime.now(datetime.UTC) - _duration(self.args.since, "--since")
        events = self.client.audit_events(since, limit=self.args.limit)
        if self.args.output == "json":
            for event in events:
                print(json.dumps(json_format.MessageToDict(event), separators=(",", ":")))
            return
        print(f"{'TIME':<24} {'IDENTITY':<24} {'VERB':<8} {'OBJECT':<50} CODE")
        for event in events:
            when = event.time.ToDatetime(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4]
            target = "/".join(part for part in (event.namespace, event.name) if part)
            shown = f"{event.kind}/{target}" if event.kind else event.method
            print(
                f"{when:<24} {event.identity or '-':<24} {event.verb:<8} {shown:<50} {event.code}"
            )

    # -- admin -----------------------------------------------------------------------------

    def admin(self) -> None:
        getattr(self, f"admin_{self.args.admin_command}")()

    def admin_reencrypt(self) -> None:
        """Rewrite what etcd holds under the current encryption key; a table of what was
        done, and exit code 1 when some objects could not be rewritten."""
        answer = self.client.reencrypt(dry_run=self.args.dry_run)
        done = "WOULD REWRITE" if self.args.dry_run else "REWRITTEN"
        rows = [["RESOURCE", done, "UNCHANGED", "UNREADABLE", "SKIPPED"]]
        for item in answer.resources:
            rows.append(
                [
                    item.resource,
                    str(item.rewritten),
                    str(item.unchanged),
                    str(item.unreadable),
                    str(item.skipped),
                ]
            )
        print(_table(rows))
        unreadable = sum(item.unreadable for item in answer.resources)
        skipped = sum(item.skipped for item in answer.resources)
        if unreadable:
            raise ClientError(
                f"reencrypt: {unreadable} objects no configured key decrypts were left as they "
                "are (the control plane's log names them)"
            )
        if skipped:
            raise ClientError(
                f"reencrypt: {skipped} objects kept changing under the rewrite; run it again "
                "once every replica has the same encryption configuration"
            )

    # -- bootstrap tokens and certificate signing requests ---------------------------------

    def token(self) -> None:
        args = self.args
        if args.action == "create":
            ttl = int(_duration(args.ttl, "--ttl").total_seconds())
            answer = self.client.create_token(
                ttl_seconds=ttl, cluster=args.cluster or "", usages=args.usages or ()
            )
            made = answer.bootstrap_token
            # The token on stdout alone, for $(...) and files; the rest on stderr.
            print(answer.token)
            print(
                f"bootstrap token {made.id} expires {made.expires.ToJsonString()}"
                + (f", registers cluster {made.cluster} without approval" if made.cluster else "")
                + "; it is shown only now",
                file=sys.stderr,
            )
        elif args.action == "list":
            rows = [["ID", "CLUSTER", "USAGES", "EXPIRES", "DESCRIPTION"]]
            for token in self.client.list_tokens():
                rows.append(
                    [
                        token.id,
                        token.cluster or "<any: approve by hand>",
                        ",".join(token.usages),
                        token.expires.ToJsonString(),
                        token.description,
                    ]
                )
            print(_table(rows))
        else:
            if not args.id:
                raise ClientError("token delete: name the token's id")
            self.client.delete_token(args.id.split(".")[0])
            print(f"bootstrap token {args.id.split('.')[0]} deleted")

    def csr(self) -> None:
        args = self.args
        if args.action == "list":
            rows = [["NAME", "CLUSTER", "STATE", "TOKEN", "AGE", "MESSAGE"]]
            for request in self.client.list_requests():
                rows.append(
                    [
                        request.name,
                        request.cluster,
                        request.state,
                        request.token_id,
                        _age(request.created.ToJsonString()),
                        request.message,
                    ]
                )
            print(_table(rows))
            return
        if not args.name:
            raise ClientError(f"csr {args.action}: name the request (archipel csr list)")
        if args.action == "approve":
            decided = self.client.approve_request(args.name)
        else:
            decided = self.client.deny_request(args.name, args.reason or "")
        print(f"certificatesigningrequest/{decided.name} {decided.state.lower()}")

    # -- join ------------------------------------------------------------------------------

    def join(self) -> None:
        args = self.args
        labels = {}
        for pair in args.label or []:
            key, sep, value = pair.partition("=")
            if not sep:
                raise ClientError(f"--label: {pair!r} must be key=value")
            labels[key] = value
        _, token = self.client.join(
            args.name,
            labels=labels,
            provider=args.provider or "",
            region=args.region or "",
            zone=args.zone or "",
            rotate=args.rotate,
        )
        if args.print_manifests:
            # For `| kubectl apply -f -` in the member: YAML only on stdout.
            documents = agent_manifests.agent_manifests(
                server=args.server or self.client.config.server,
                token=token,
                namespace=args.namespace,
                image=args.image or "",
                ca=self.client.config.tls_ca,
            )
            sys.stdout.write(yaml.safe_dump_all(documents, sort_keys=False))
            print(f"membercluster/{args.name} joined", file=sys.stderr)
            return
        if args.token_file:
            path = Path(args.token_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(token + "\n")
            path.chmod(0o600)
            token_option = f"--token-file {path}"
        else:
            token_option = ""
            print(f"token: {token}")
        kubeconfig = f" --kubeconfig {args.kubeconfig}" if args.kubeconfig else ""
        ca_file = self.client.config.tls_ca_file
        if ca_file:
            kubeconfig = f" --tls-ca-file {ca_file}{kubeconfig}"
        print(f"membercluster/{args.name} joined")
        env = "" if args.token_file else f"ARCHIPEL_AGENT_TOKEN={token} "
        print(
            f"run the agent: {env}archipel-agent --server {self.client.config.server} "
            f"{token_option}{kubeconfig}".rstrip()
        )


# The kinds -f applies first, in this order (and a delete removes last).
_FIRST = {"Namespace": 0, scopes.CRD_KIND: 1}


def _describe_failover(spec: dict[str, Any], status: dict[str, Any]) -> None:
    """The evictions still holding an old copy, and the last failovers, newest last."""
    tasks = spec.get("gracefulEvictionTasks", [])
    if tasks:
        rows = [["FROM", "REPLICAS", "PURGE", "REASON", "SINCE", "MESSAGE"]]
        for task in tasks:
            rows.append(
                [
                    task.get("fromCluster", ""),
                    str(task.get("replicas", "")),
                    task.get("purgeMode", ""),
                    task.get("reason", ""),
                    task.get("creationTimestamp", ""),
                    task.get("message", ""),
                ]
            )
        print("Evictions (old copies kept for now):")
        print("  " + _table(rows).replace("\n", "\n  "))
    history = status.get("failoverHistory", [])
    if history:
        print("Failovers:")
        for item in history:
            before = ",".join(item.get("clustersBeforeFailover", [])) or "-"
            after = ",".join(item.get("clustersAfterFailover", [])) or "nowhere"
            print(
                f"  {item.get('startTime', '')} {item.get('originCluster', '')} "
                f"({item.get('reason', '')}): {before} -> {after}"
            )


def _random_suffix(length: int = 5) -> str:
    """Five random lowercase letters and digits, as Kubernetes' generateName adds."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _agent_column(agent: dict[str, Any]) -> str:
    """``Connected 0.1.0``: whether the agent is connected, and its version."""
    state = "Connected" if agent.get("connected") else "Disconnected"
    return f"{state} {agent['version']}" if agent.get("version") else state


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="archipel", description=__doc__)
    parser.add_argument("--version", action="version", version=f"archipel {VERSION}")
    parser.add_argument("--config", type=Path, help="config file (default .local/archipel.yaml)")
    parser.add_argument(
        "--server",
        dest="servers",
        action="append",
        metavar="HOST:PORT",
        help="the control plane, instead of the config's server; several (its replicas), "
        "separated by commas or by repeating the flag, are tried in turn",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def scoped(command: argparse.ArgumentParser) -> None:
        command.add_argument("-n", "--namespace")
        command.add_argument("-A", "--all-namespaces", action="store_true")
        command.add_argument("-l", "--selector")

    apply = sub.add_parser(
        "apply", help="create or update from YAML or JSON (Karmada policies too)"
    )
    apply.add_argument("-f", "--filename", action="append", help="file, directory or -")
    apply.add_argument("-n", "--namespace")
    get = sub.add_parser("get", help="list or show objects")
    get.add_argument("kind")
    get.add_argument("names", nargs="*")
    get.add_argument("-o", "--output", choices=["yaml", "json", "wide"], default="")
    scoped(get)
    describe = sub.add_parser(
        "describe", help="where a template is placed and its status per cluster"
    )
    describe.add_argument("kind")
    describe.add_argument("names", nargs="*")
    scoped(describe)
    delete = sub.add_parser("delete", help="delete objects")
    delete.add_argument("kind", nargs="?")
    delete.add_argument("names", nargs="*")
    delete.add_argument("-f", "--filename", action="append")
    delete.add_argument("-n", "--namespace")
    sub.add_parser("clusters", help="member clusters: ready, version, nodes, age")
    sub.add_parser("version", help="the versions of this CLI and of the control plane")
    cordon = sub.add_parser("cordon", help="keep new workloads off a member cluster")
    cordon.add_argument("name")
    uncordon = sub.add_parser("uncordon", help="let new workloads onto a member cluster again")
    uncordon.add_argument("name")
    taint = sub.add_parser("taint", help="taint a member cluster: key[=value]:Effect, or key-")
    taint.add_argument("cluster")
    taint.add_argument("taint")
    schedule = sub.add_parser("schedule", help="what-if: run the scheduler offline")
    schedule.add_argument("--simulate", action="store_true")
    schedule.add_argument("--clusters", help="clusters YAML (MemberClusters or a short list)")
    schedule.add_argument("-f", "--filename", action="append", help="templates and policies")
    schedule.add_argument("--previous", help="an earlier -o json result, for steady scaling")
    schedule.add_argument("-o", "--output", choices=["json", "yaml", ""], default="")
    render = sub.add_parser("render", help="the final manifest for one cluster")
    render.add_argument("target", nargs="?", metavar="KIND/NAME", help="a template on the server")
    render.add_argument("-n", "--namespace")
    render.add_argument("-f", "--filename", action="append", help="templates and override policies")
    render.add_argument("--clusters", help="clusters YAML, as for schedule --simulate")
    render.add_argument("--cluster", help="the cluster to render for")
    render.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    reschedule = sub.add_parser("reschedule", help="divide a template's replicas from scratch")
    reschedule.add_argument("kind")
    reschedule.add_argument("name")
    reschedule.add_argument("-n", "--namespace")
    rebalance = sub.add_parser(
        "rebalance",
        help="divide the replicas of templates afresh (a WorkloadRebalancer), and wait",
    )
    rebalance.add_argument("targets", nargs="+", metavar="KIND/NAME")
    rebalance.add_argument("-n", "--namespace")
    rebalance.add_argument(
        "--ttl", type=int, help="delete the WorkloadRebalancer this many seconds after it finished"
    )
    rebalance.add_argument(
        "--no-wait", action="store_true", help="print the rebalancer's name and return"
    )
    rebalance.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the result (default 60)"
    )
    promote = sub.add_parser(
        "promote", help="bring an object running in a member under Archipel, without a restart"
    )
    promote.add_argument("target", metavar="KIND/NAME")
    promote.add_argument("-n", "--namespace")
    promote.add_argument("--cluster", required=True, help="the member it runs in")
    promote.add_argument("--cluster-kubeconfig", required=True, help="that member's kubeconfig")
    promote.add_argument("--context", help="the kubeconfig context (default: its current one)")
    promote.add_argument("--dry-run", action="store_true", help="print the documents only")
    user = sub.add_parser("user", help="people and programs that use the API, with a role")
    users = user.add_subparsers(dest="user_command", required=True)
    create_user = users.add_parser(
        "create", help="create a user and print a CLI config with its token"
    )
    create_user.add_argument("name")
    create_user.add_argument(
        "--role", required=True, choices=["admin", "operator", "editor", "viewer"]
    )
    create_user.add_argument(
        "--namespace",
        action="append",
        help="limit an editor or viewer to this namespace (repeatable)",
    )
    create_user.add_argument(
        "--rotate", action="store_true", help="issue a new token for an existing user"
    )
    create_user.add_argument(
        "-o", "--output-file", help="write the CLI config here (mode 0600) instead of printing it"
    )
    users.add_parser("list", help="the users, their roles and namespaces")
    delete_user = users.add_parser("delete", help="delete a user: its token stops working")
    delete_user.add_argument("name")
    audit = sub.add_parser(
        "audit", help="what was changed, and who read Secrets (every replica's log)"
    )
    audit.add_argument("--since", help="only events this recent: 30s, 15m, 1h, 2d")
    audit.add_argument("--limit", type=int, default=0, help="at most this many, the latest")
    audit.add_argument("-o", "--output", choices=["json", ""], default="")
    admin = sub.add_parser("admin", help="administration of the control plane's storage")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    reencrypt = admin_sub.add_parser(
        "reencrypt",
        help="rewrite every stored object under the current encryption key (after a rotation)",
    )
    reencrypt.add_argument(
        "--dry-run", action="store_true", help="count what would be rewritten; write nothing"
    )
    clusters_parser = sub.choices["clusters"]
    clusters_parser.add_argument(
        "action", nargs="?", help="revoke: cut a cluster's agent off (certificates and token)"
    )
    clusters_parser.add_argument("name", nargs="?")
    token = sub.add_parser("token", help="bootstrap tokens for registering agents")
    token.add_argument("action", choices=["create", "list", "delete"])
    token.add_argument("id", nargs="?", help="delete: the token's id")
    token.add_argument("--ttl", default="1h", help="how long it works (90s, 15m, 1h, 2d)")
    token.add_argument(
        "--cluster", help="bind it to this cluster: registrations are approved without a person"
    )
    token.add_argument("--usages", action="append", help="join (the default)")
    csr = sub.add_parser("csr", help="agents' certificate signing requests")
    csr.add_argument("action", choices=["list", "approve", "deny"])
    csr.add_argument("name", nargs="?")
    csr.add_argument("--reason", help="deny: why, for the agent's log")
    join = sub.add_parser("join", help="register a member cluster and issue its agent credential")
    join.add_argument("name")
    join.add_argument("--label", action="append", help="key=value (repeatable)")
    join.add_argument("--provider")
    join.add_argument("--region")
    join.add_argument("--zone")
    join.add_argument("--kubeconfig", help="the member's kubeconfig, for the printed agent command")
    join.add_argument("--token-file", help="write the token here instead of printing it")
    join.add_argument(
        "--rotate", action="store_true", help="issue a new credential for an existing cluster"
    )
    join.add_argument(
        "--print-manifests",
        action="store_true",
        help="print the agent's manifests with its credential, for kubectl apply in the member",
    )
    join.add_argument(
        "--server", help="the control plane's host:port as the member reaches it (manifests)"
    )
    join.add_argument("--namespace", default="archipel-system", help="the agent's namespace")
    join.add_argument("--image", help="the agent's image (default archipel:<version>)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = Commands(args)
    try:
        getattr(commands, args.command)()
    except (ClientError, ArchipelError) as error:
        # One line, whatever the message holds (a server's details may span several). An
        # error of the core (Invalid: a field a file got wrong) names the field itself.
        print(f"error: {' '.join(str(error).splitlines())}", file=sys.stderr)
        return 1
    finally:
        if commands._client is not None:
            commands._client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
