"""Built-in interpreters for the Kubernetes kinds Karmada interprets natively.

Deployment, StatefulSet, ReplicaSet, DaemonSet, Job, CronJob, Pod, Service, Ingress,
PersistentVolumeClaim, PodDisruptionBudget and HorizontalPodAutoscaler: which fields
hold replicas, what status members report, how the template's status sums them up,
when an object is healthy, which fields the member owns, and what a pod template
depends on. Semantics follow Karmada's default/native interpreters.
"""

from __future__ import annotations

import copy
from typing import Any

from archipel.interpreter.base import (
    HEALTHY,
    UNHEALTHY,
    UNKNOWN,
    Dependency,
    KindInterpreter,
    Manifest,
    MemberStatus,
    replica_count,
)

# A template labelled (or annotated) so keeps each member's replica count: a
# member-side HorizontalPodAutoscaler owns it (Karmada's label key is honoured too).
RETAIN_REPLICAS_KEYS = (
    "archipel.io/retain-replicas",
    "resourcetemplate.karmada.io/retain-replicas",
)


def _spec(manifest: Manifest) -> dict[str, Any]:
    spec = manifest.get("spec")
    return spec if isinstance(spec, dict) else {}


def _status(manifest: Manifest) -> dict[str, Any]:
    status = manifest.get("status")
    return status if isinstance(status, dict) else {}


def _generation(manifest: Manifest) -> int:
    generation = manifest.get("metadata", {}).get("generation", 0)
    return generation if isinstance(generation, int) else 0


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _pick(status: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {k: copy.deepcopy(status[k]) for k in fields if k in status}


def _sum_counters(
    members: list[MemberStatus], counters: tuple[str, ...], template_generation: int
) -> dict[str, Any] | None:
    """Counters summed over members; observedGeneration only once every member caught up.

    As Karmada: the template's observedGeneration says its newest spec reached every
    cluster, so it is set only when each member observed the generation it was given.
    """
    statuses = [m.status for m in members if m.status is not None]
    if not statuses:
        return None
    total = dict.fromkeys(counters, 0)
    aligned = len(statuses) == len(members)
    for status in statuses:
        for counter in counters:
            total[counter] += _int(status.get(counter))
        if status.get("observedGeneration", 0) != status.get("generation", -1):
            aligned = False
    result: dict[str, Any] = {k: v for k, v in total.items() if v or k == counters[0]}
    if aligned:
        result["observedGeneration"] = template_generation
    return result


def _reflect_counters(manifest: Manifest, counters: tuple[str, ...]) -> dict[str, Any] | None:
    """The counters and observedGeneration, with the member's own generation: the
    control plane compares the two to tell a stale status (see :func:`_sum_counters`)."""
    if "status" not in manifest:
        return None
    reflected = _pick(_status(manifest), (*counters, "observedGeneration"))
    reflected["generation"] = _generation(manifest)
    return reflected


def _labelled(manifest: Manifest, keys: tuple[str, ...]) -> bool:
    metadata = manifest.get("metadata", {})
    for where in ("labels", "annotations"):
        values = metadata.get(where) or {}
        if any(str(values.get(key, "")).lower() == "true" for key in keys):
            return True
    return False


class _PodTemplated(KindInterpreter):
    """Kinds whose replicas are one field of ``spec`` over the pod template ``spec.template``."""

    replica_field = "replicas"

    def replicas(self, manifest: Manifest) -> int | None:
        value = _spec(manifest).get(self.replica_field)
        if value is None:
            return 1  # as Kubernetes defaults an unset replica count
        return replica_count(value, f"spec.{self.replica_field}")

    def pod_template(self, manifest: Manifest) -> dict[str, Any] | None:
        template = _spec(manifest).get("template")
        return template if isinstance(template, dict) else None

    def revise_replicas(self, manifest: Manifest, replicas: int) -> Manifest:
        revised = dict(manifest)
        revised["spec"] = {**_spec(manifest), self.replica_field: replicas}
        return revised

    def dependencies(self, manifest: Manifest) -> list[Dependency]:
        template = self.pod_template(manifest) or {}
        return pod_dependencies(manifest, template.get("spec"))


class _Replicated(_PodTemplated):
    """Deployment, StatefulSet and ReplicaSet: ``spec.replicas`` over ``spec.template``."""

    counters: tuple[str, ...] = (
        "replicas",
        "readyReplicas",
        "updatedReplicas",
        "availableReplicas",
        "unavailableReplicas",
    )
    ready_field = "readyReplicas"

    def reflect_status(self, manifest: Manifest) -> dict[str, Any] | None:
        return _reflect_counters(manifest, self.counters)

    def health(self, manifest: Manifest) -> str:
        status = _status(manifest)
        wanted = self.replicas(manifest) or 0
        if _int(status.get("observedGeneration")) < _generation(manifest):
            return UNHEALTHY
        updated = _int(status.get("updatedReplicas"), wanted)
        if updated == wanted and _int(status.get(self.ready_field)) >= wanted:
            return HEALTHY
        return UNHEALTHY

    def aggregate_status(
        self, members: list[MemberStatus], template_generation: int
    ) -> dict[str, Any] | None:
        return _sum_counters(members, self.counters, template_generation)

    def retained_paths(self, manifest: Manifest) -> tuple[tuple[str, ...], ...]:
        if _labelled(manifest, RETAIN_REPLICAS_KEYS):
            return (("spec", "replicas"),)
        return ()


class Deployment(_Replicated):
    name = "Deployment"
    ready_field = "availableReplicas"


class StatefulSet(_Replicated):
    name = "StatefulSet"
    counters = (
        "replicas",
        "readyReplicas",
        "currentReplicas",
        "updatedReplicas",
        "availableReplicas",
    )


class ReplicaSet(_Replicated):
    name = "ReplicaSet"
    counters = ("replicas", "readyReplicas", "availableReplicas", "fullyLabeledReplicas")

    def health(self, manifest: Manifest) -> str:
        status = _status(manifest)
        if _int(status.get("observedGeneration")) < _generation(manifest):
            return UNHEALTHY
        wanted = self.replicas(manifest) or 0
        return HEALTHY if _int(status.get("readyReplicas")) >= wanted else UNHEALTHY


class DaemonSet(KindInterpreter):
    name = "DaemonSet"
    counters = (
        "desiredNumberScheduled",
        "currentNumberScheduled",
        "numberReady",
        "numberAvailable",
        "numberUnavailable",
        "numberMisscheduled",
        "updatedNumberScheduled",
    )

    def reflect_status(self, manifest: Manifest) -> dict[str, Any] | None:
        return _reflect_counters(manifest, self.counters)

    def health(self, manifest: Manifest) -> str:
        status = _status(manifest)
        if _int(status.get("observedGeneration")) < _generation(manifest):
            return UNHEALTHY
        desired = _int(status.get("desiredNumberScheduled"))
        if _int(status.get("updatedNumberScheduled"), desired) < desired:
            return UNHEALTHY
        return HEALTHY if _int(status.get("numberAvailable")) >= desired else UNHEALTHY

    def aggregate_status(
        self, members: list[MemberStatus], template_generation: int
    ) -> dict[str, Any] | None:
        return _sum_counters(members, self.counters, template_generation)

    def dependencies(self, manifest: Manifest) -> list[Dependency]:
        template = _spec(manifest).get("template") or {}
        return pod_dependencies(manifest, template.get("spec"))


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in status.get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == kind:
            return condition
    return None


class Job(_PodTemplated):
    name = "Job"
    counters = ("active", "succeeded", "failed", "ready")
    # A Job's parallelism is what the clusters share, as Karmada divides it.
    replica_field = "parallelism"

    def replicas(self, manifest: Manifest) -> int | None:
        # Completions are divided in proportion to parallelism, so they must be a count
        # as well; a Job without them runs until one pod succeeds.
        completions = _spec(manifest).get("completions")
        if completions is not None:
            replica_count(completions, "spec.completions")
        return super().replicas(manifest)

    def reflect_status(self, manifest: Manifest) -> dict[str, Any] | None:
        if "status" not in manifest:
            return None
        return _pick(
            _status(manifest), (*self.counters, "startTime", "completionTime", "conditions")
        )

    def health(self, manifest: Manifest) -> str:
        failed = _condition(_status(manifest), "Failed")
        return UNHEALTHY if failed and failed.get("status") == "True" else HEALTHY

    def aggregate_status(
        self, members: list[MemberStatus], template_generation: int
    ) -> dict[str, Any] | None:
        statuses = [m.status for m in members if m.status is not None]
        if not statuses:
            return None
        result: dict[str, Any] = {c: sum(_int(s.get(c)) for s in statuses) for c in self.counters}
        result = {k: v for k, v in result.items() if v}
        starts = [s["startTime"] for s in statuses if s.get("startTime")]
        if starts:
            result["startTime"] = min(starts)
        complete = [m for m in members if m.status and _done(m.status, "Complete")]
        failed = [m.cluster for m in members if m.status and _done(m.status, "Failed")]
        if failed:
            result["conditions"] = [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "JobFailed",
                    "message": f"Job failed in: {', '.join(sorted(failed))}",
                }
            ]
        elif members and len(complete) == len(members):
            ends = [str(s["completionTime"]) for s in statuses if s.get("completionTime")]
            if ends:
                result["completionTime"] = max(ends)
            result["conditions"] = [
                {
                    "type": "Complete",
                    "status": "True",
                    "reason": "Completed",
                    "message": "Job completed in every cluster",
                }
            ]
        return result

    def retained_paths(self, manifest: Manifest) -> tuple[tuple[str, ...], ...]:
        # The member generates a Job's selector and its pod labels (controller-uid);
        # they are immutable, so a template without them must not drop them.
        if _spec(manifest).get("manualSelector"):
            return ()
        return (("spec", "selector"), ("spec", "template", "metadata", "labels"))


def _done(status: dict[str, Any], kind: str) -> bool:
    condition = _condition(status, kind)
    return condition is not None and condition.get("status") == "True"


class CronJob(KindInterpreter):
    name = "CronJob"

    def pod_template(self, manifest: Manifest) -> dict[str, Any] | None:
        job = _spec(manifest).get("jobTemplate") or {}
        template = (job.get("spec") or {}).get("template")
        return template if isinstance(template, dict) else None

    def aggregate_status(
        self, members: list[MemberStatus], template_generation: int
    ) -> dict[str, Any] | None:
        statuses = [m.status for m in members if m.status is not None]
        if not statuses:
            return None
        result: dict[str, Any] = {}
        active = [ref for s in statuses for ref in s.get("active") or []]
        if active:
            result["active"] = active
        for field in ("lastScheduleTime", "lastSuccessfulTime"):
            times = [s[field] for s in statuses if s.get(field)]
            if times:
                result[field] = max(times)
        return result

    def dependencies(self, manifest: Manifest) -> list[Dependency]:
        template = self.pod_template(manifest) or {}
        return pod_dependencies(manifest, template.get("spec"))


class Pod(KindInterpreter):
    name = "Pod"

    def replicas(self, manifest: Manifest) -> int | None:
        return 1

    def pod_template(self, manifest: Manifest) -> dict[str, Any] | None:
        return manifest

    def reflect_status(self, manifest: Manifest) -> dict[str, Any] | None:
        if "status" not in manifest:
            return None
        return _pick(_status(manifest), ("phase", "conditions", "containerStatuses", "podIP"))

    def health(self, manifest: Manifest) -> str:
        phase = _status(manifest).get("phase")
        return HEALTHY if phase in ("Running", "Succeeded") else UNHEALTHY

    def aggregate_status(
        self, members: list[MemberStatus], template_generation: int
    ) -> dict[str, Any] | None:
        phases = [m.status.get("phase") for m in members if m.status is not None]
        if not phases:
            return None
        # The least advanced member decides, as Karmada's Pod aggregation does.
        for phase in ("Failed", "Pending", "Unknown", "Running"):
            if phase in phases:
                return {"phase": phase}
        return {"phase": "Succeeded"}

    def retained_paths(self, manifest: Manifest) -> tuple[tuple[str, ...], ...]:
        return (("spec", "nodeName"),)

    def dependencies(self, manifest: Manifest) -> list[Dependency]:
        return pod_dependencies(manifest, manifest.get("spec"))


def _load_balancer_ingress(members: list[MemberStatus]) -> dict[str, Any] | None:
    statuses = [m.status for m in members if m.status is not None]
    if not statuses:
        return None
    ingress = []
    for member in members:
        for entry in ((member.status or {}).get("loadBalancer") or {}).get("ingress") or []:
            ingress.append(entry)
    return {"loadBalancer": {"ingress": ingress}} if ingress else {"loadBalancer": {}}


class Service(KindInterpreter):
    name = "Service"

    def reflect_status(self, manifest: Manifest) -> dict[str, Any] | None:
        if _spec(manifest).get("type") != "LoadBalancer":
            return {}
        return _pick(_status(manifest), ("loadBalancer",))

    def health(self, manifest: Manifest) -> str:
        if _spec(manifest).get("type") != "LoadBalancer":
            return HEALTHY
        ingress = (_status(manifest).get("loadBalancer") or {}).get("ingress")
        return HEALTHY if ingress else UNHEALTHY

    def aggregate_status(
        self, members: list[MemberStatus], template_generation: int
    ) -> dict[str, Any] | None:
        return _load_balancer_ingress(members)

    def retained_paths(self, manifest: Manifest) -> tuple[tuple[str, ...], ...]:
        # Each member allocates its own cluster IPs (immutable once set).
        return (("spec", "clusterIP"), ("spec", "clusterIPs"), ("spec", "healthCheckNodePort"))


class Ingress(KindInterpreter):
    name = "Ingress"

    def reflect_status(self, manifest: Manifest) -> dict[str, Any] | None:
        return _pick(_status(manifest), ("loadBalancer",))

    def health(self, manifest: Manifest) -> str:
        ingress = (_status(manifest).get("loadBalancer") or {}).get("ingress")
        return HEALTHY if ingress else UNHEALTHY

    def aggregate_status(
        self, members: list[MemberStatus], template_generation: int
    ) -> dict[str, Any] | None:
        return _load_balancer_ingress(members)

    def dependencies(self, manifest: Manifest) -> list[Dependency]:
        namespace = manifest.get("metadata", {}).get("namespace", "")
        names = {
            tls.get("secretName")
            for tls in _spec(manifest).get("tls") or []
            if isinstance(tls, dict) and tls.get("secretName")
        }
        return sorted(Dependency("v1", "Secret", namespace, str(n)) for n in names)


class PersistentVolumeClaim(KindInterpreter):
    name = "PersistentVolumeClaim"

    def reflect_status(self, manifest: Manifest) -> dict[str, Any] | None:
        return _pick(_status(manifest), ("phase", "capacity", "accessModes"))

    def health(self, manifest: Manifest) -> str:
        return HEALTHY if _status(manifest).get("phase") == "Bound" else UNHEALTHY

    def aggregate_status(
        self, members: list[MemberStatus], template_generation: int
    ) -> dict[str, Any] | None:
        phases = [m.status.get("phase") for m in members if m.status is not None]
        if not phases:
            return None
        for phase in ("Lost", "Pending"):
            if phase in phases:
                return {"phase": phase}
        return {"phase": "Bound"} if all(p == "Bound" for p in phases) else {}

    def retained_paths(self, manifest: Manifest) -> tuple[tuple[str, ...], ...]:
        # The member binds the claim to one of its own volumes.
        return (("spec", "volumeName"),)


class PodDisruptionBudget(KindInterpreter):
    name = "PodDisruptionBudget"
    counters = ("currentHealthy", "desiredHealthy", "disruptionsAllowed", "expectedPods")

    def reflect_status(self, manifest: Manifest) -> dict[str, Any] | None:
        if "status" not in manifest:
            return None
        return _pick(_status(manifest), self.counters)

    def health(self, manifest: Manifest) -> str:
        status = _status(manifest)
        if "currentHealthy" not in status:
            return UNKNOWN
        healthy = _int(status.get("currentHealthy")) >= _int(status.get("desiredHealthy"))
        return HEALTHY if healthy else UNHEALTHY

    def aggregate_status(
        self, members: list[MemberStatus], template_generation: int
    ) -> dict[str, Any] | None:
        statuses = [m.status for m in members if m.status is not None]
        if not statuses:
            return None
        return {c: sum(_int(s.get(c)) for s in statuses) for c in self.counters}


class HorizontalPodAutoscaler(KindInterpreter):
    name = "HorizontalPodAutoscaler"
    counters = ("currentReplicas", "desiredReplicas")

    def reflect_status(self, manifest: Manifest) -> dict[str, Any] | None:
        if "status" not in manifest:
            return None
        return _pick(_status(manifest), self.counters)

    def aggregate_status(
        self, members: list[MemberStatus], template_generation: int
    ) -> dict[str, Any] | None:
        statuses = [m.status for m in members if m.status is not None]
        if not statuses:
            return None
        return {c: sum(_int(s.get(c)) for s in statuses) for c in self.counters}


def pod_dependencies(manifest: Manifest, pod_spec: Any) -> list[Dependency]:
    """The ConfigMaps, Secrets, ServiceAccount and PVCs a pod spec names, sorted."""
    if not isinstance(pod_spec, dict):
        return []
    namespace = manifest.get("metadata", {}).get("namespace", "")
    found: set[tuple[str, str]] = set()

    def add(kind: str, name: Any) -> None:
        if isinstance(name, str) and name:
            found.add((kind, name))

    for volume in pod_spec.get("volumes") or []:
        if not isinstance(volume, dict):
            continue
        add("ConfigMap", (volume.get("configMap") or {}).get("name"))
        add("Secret", (volume.get("secret") or {}).get("secretName"))
        add("PersistentVolumeClaim", (volume.get("persistentVolumeClaim") or {}).get("claimName"))
        for source in (volume.get("projected") or {}).get("sources") or []:
            add("ConfigMap", (source.get("configMap") or {}).get("name"))
            add("Secret", (source.get("secret") or {}).get("name"))
    containers = [
        *(pod_spec.get("containers") or []),
        *(pod_spec.get("initContainers") or []),
        *(pod_spec.get("ephemeralContainers") or []),
    ]
    for container in containers:
        if not isinstance(container, dict):
            continue
        for env in container.get("env") or []:
            source = (env or {}).get("valueFrom") or {}
            add("ConfigMap", (source.get("configMapKeyRef") or {}).get("name"))
            add("Secret", (source.get("secretKeyRef") or {}).get("name"))
        for env_from in container.get("envFrom") or []:
            add("ConfigMap", ((env_from or {}).get("configMapRef") or {}).get("name"))
            add("Secret", ((env_from or {}).get("secretRef") or {}).get("name"))
    for pull_secret in pod_spec.get("imagePullSecrets") or []:
        add("Secret", (pull_secret or {}).get("name"))
    account = pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount")
    if account != "default":
        # Every namespace has its own "default" account; it never needs propagating.
        add("ServiceAccount", account)
    return sorted(Dependency("v1", kind, namespace, name) for kind, name in found)


# Kinds by (API group, kind), so any served version shares the interpreter.
BUILTIN: dict[tuple[str, str], KindInterpreter] = {
    ("apps", "Deployment"): Deployment(),
    ("apps", "StatefulSet"): StatefulSet(),
    ("apps", "ReplicaSet"): ReplicaSet(),
    ("apps", "DaemonSet"): DaemonSet(),
    ("batch", "Job"): Job(),
    ("batch", "CronJob"): CronJob(),
    ("", "Pod"): Pod(),
    ("", "Service"): Service(),
    ("networking.k8s.io", "Ingress"): Ingress(),
    ("", "PersistentVolumeClaim"): PersistentVolumeClaim(),
    ("policy", "PodDisruptionBudget"): PodDisruptionBudget(),
    ("autoscaling", "HorizontalPodAutoscaler"): HorizontalPodAutoscaler(),
}
