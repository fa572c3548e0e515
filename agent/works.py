"""Applying works in the member, watching what was applied, and reporting on it.

This is the member-side half of execution and work status (Karmada's agent runs
the same pair). Works are handled one key at a time, several in parallel, with
backoff on failure: a member API server that is down only delays the apply.

* Apply: Namespaces and CRDs first; missing namespaces are created; every object is
  server-side applied under the agent's field manager. An object that exists but was
  not created by Archipel is left alone unless the work says ``Overwrite``. Objects a
  work no longer contains are deleted; the ledger records what is held.
* Watch: one watch per applied kind (label-selected to Archipel's objects, never a
  poll). Status is reported only when it changes.
* Drift: an object edited or deleted by someone else is applied again, and the next
  report counts the correction.
* Restarts: the ledger keeps hashes, not contents, so a restarted agent asks the
  control plane for every work again (see :mod:`agent.main`). A work that comes back
  at the generation the ledger records is checked, not applied: each object is read
  and compared with the recorded hashes, and only missing or changed ones are applied.
  Until then drift cannot be judged, and waits for that resend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    wait_exponential,
)

from agent import drift
from agent.kube import Kube, KubeError, Manifest, NotLeader, describe
from agent.ledger import Entry, Ledger, ObjectRef, digest
from archipel import interpreter, limits, structs
from archipel.core.names import MANAGED_LABEL, WORK_ANNOTATION
from archipel.v1alpha1 import agent_pb2, interpreter_pb2, work_pb2
from archipel.workqueue import Reconciler, WorkQueue

log = logging.getLogger(__name__)
R = TypeVar("R")
_FIRST = {"Namespace": 0, "CustomResourceDefinition": 1}
# A watch that fails for any reason starts over after 0.5 s, doubling up to 10 s.
WATCH_BACKOFF = Retrying(
    wait=wait_exponential(multiplier=0.5, max=10.0),
    retry=retry_if_exception_type(Exception),
)


@dataclasses.dataclass
class Observed:
    status: dict[str, Any] | None
    health: str
    resource_version: int = 0
    # Why health is Unknown: a customization that failed on this object.
    health_message: str = ""

    @classmethod
    def of(cls, manifest: Manifest, interpreters: interpreter.Registry) -> Observed:
        version = manifest.get("metadata", {}).get("resourceVersion", "0")
        kind_interpreter = interpreters.of(manifest)
        status: dict[str, Any] | None = None
        problems = []
        try:
            status = kind_interpreter.reflect_status(manifest)
        except interpreter.InterpreterError as error:
            problems.append(str(error))
        if status is not None and limits.depth(status) > limits.MAX_MANIFEST_DEPTH:
            # Checked here, on the dict: a member object we do not control could be
            # deep enough to exhaust the recursion of the conversion to a Struct, and
            # the control plane could not decode the report anyway.
            status = None
            problems.append(
                f"status not reported: nested deeper than {limits.MAX_MANIFEST_DEPTH} levels"
            )
        try:
            health = kind_interpreter.health(manifest)
        except interpreter.InterpreterError as error:
            health = interpreter.UNKNOWN
            problems.append(str(error))
        return cls(
            status,
            health,
            int(version) if str(version).isdigit() else 0,
            "; ".join(problems),
        )

    def same_state(self, other: Observed) -> bool:
        return (
            self.status == other.status
            and self.health == other.health
            and self.health_message == other.health_message
        )


def _identifier(ordinal: int, ref: ObjectRef) -> work_pb2.ResourceIdentifier:
    group, _, version = ref.api_version.rpartition("/")
    return work_pb2.ResourceIdentifier(
        ordinal=ordinal,
        group=group,
        version=version,
        kind=ref.kind,
        namespace=ref.namespace,
        name=ref.name,
    )


class WorkManager:
    def __init__(
        self,
        kube: Kube,
        ledger: Ledger,
        *,
        send: Callable[[agent_pb2.AgentMessage], None],
        workers: int = 16,
        on_new_api: Callable[[], None] = lambda: None,
        watch: Callable[[str, str], None] | None = None,
        fence: Callable[[], None] | None = None,
    ) -> None:
        """``watch``, if given, is called with (apiVersion, kind) once for each kind the
        agent starts holding objects of (Namespaces aside), instead of starting a watch
        thread for it: tests, which have no API server to watch, pass one and deliver
        watch events themselves through :meth:`on_event`. ``None`` (the agent) watches.

        ``fence``, if given, raises NotLeader once this agent may no longer write to the
        member (its leadership term is over, agent/election.py); every write to the
        member checks it first, in the thread that makes the write."""
        self.fence = fence
        self.on_new_api = on_new_api
        self._start_watch = watch
        self.kube = kube
        self.ledger = ledger
        self.send = send
        self.workers = workers
        self.queue = WorkQueue("agent-works", base_delay=0.25, max_delay=15.0)
        self._reconciler = Reconciler(
            "agent-works",
            self._reconcile,
            workers=workers,
            queue=self.queue,
            on_failure=_log_failure,
        )
        self.desired: dict[str, work_pb2.PropagationWork] = {}
        self.deleting: dict[str, agent_pb2.WorkDelete] = {}
        self.observed: dict[ObjectRef, Observed] = {}
        self.owner: dict[ObjectRef, str] = {}
        self.drifted: set[str] = set()
        # Works being applied now, with the newest resourceVersion a watch event brought
        # for each of their objects meanwhile. Such an event is judged once the apply is
        # over: against the ledger's entry it would meet the previous generation's
        # projection (the new one is recorded last), and the apply's own write would
        # look like a change made in the member.
        self.applying: dict[str, dict[ObjectRef, int]] = {}
        self.corrections: dict[str, int] = {}
        self.applies = 0
        self._last_report: dict[str, bytes] = {}
        self._watched: set[tuple[str, str]] = set()
        # Namespaces known to exist, to spare a lookup per object; forgotten on failure.
        self._namespaces: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self.interpreters = interpreter.Registry()
        self._reinterpreting: set[asyncio.Task[None]] = set()

    # -- what the control plane says ------------------------------------------------

    def restore(self) -> None:
        """Rebuild what is held from the ledger, and watch it, without applying."""
        for entry in self.ledger.entries.values():
            for ref in entry.objects:
                self.owner[ref] = entry.work
                self._watch(ref.api_version, ref.kind)

    def receive(self, work: work_pb2.PropagationWork) -> None:
        name = work.metadata.name
        self.deleting.pop(name, None)
        self.desired[name] = work
        self.queue.add(name)

    def set_customizations(
        self, customizations: Iterable[interpreter_pb2.ResourceInterpreterCustomization]
    ) -> None:
        """A new set of customizations: re-read the objects of every kind that changed."""
        before = {key: self.interpreters.get(*key) for key in self._kinds_held()}
        self.interpreters.update(customizations)
        changed = {key for key, old in before.items() if self.interpreters.get(*key) is not old}
        log.info(
            "%d interpreter customizations; re-reading %s",
            len(self.interpreters.customized()),
            ", ".join(sorted(kind for _, kind in changed)) or "nothing",
        )
        if changed and self._loop is not None:
            task = self._loop.create_task(self._reinterpret(changed))
            self._reinterpreting.add(task)
            task.add_done_callback(self._reinterpreting.discard)

    def _kinds_held(self) -> set[tuple[str, str]]:
        return {(ref.api_version, ref.kind) for ref in self.owner}

    async def _reinterpret(self, changed: set[tuple[str, str]]) -> None:
        for ref, name in list(self.owner.items()):
            if (ref.api_version, ref.kind) not in changed:
                continue
            try:
                live = await self.kube.call(
                    self.kube.get, ref.api_version, ref.kind, ref.namespace, ref.name
                )
            except Exception as error:
                log.debug("re-reading %s: %s", ref, describe(error))
                continue  # the watch brings it when the member answers again
            if live is not None:
                self.observed.pop(ref, None)
                self._observe(ref, live)
                self.report(name, applied=True, message="")

    def receive_delete(self, delete: agent_pb2.WorkDelete) -> None:
        self.desired.pop(delete.name, None)
        self.deleting[delete.name] = delete
        self.queue.add(delete.name)

    # -- reconcile -------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.restore()
        await self._reconciler.run()

    async def _reconcile(self, name: str) -> None:
        await self.reconcile(name)

    async def reconcile(self, name: str) -> None:
        delete = self.deleting.get(name)
        if delete is not None:
            await self._delete(name, delete)
            return
        work = self.desired.get(name)
        if work is None:
            return
        entry = self.ledger.entries.get(name)
        current = (
            entry is not None
            and entry.uid == work.metadata.uid
            and entry.generation == work.metadata.generation
        )
        if current and name not in self.drifted and entry is not None and entry.has_contents:
            self.report(name, applied=True, message="")
            return
        self.applying[name] = {}
        try:
            await self._apply(work, entry)
        except NotLeader:
            # The term is over and the agent stops acting: the next leader reports, and
            # this one must not write its partial record to the ledger.
            raise
        except Exception as error:
            self._namespaces.clear()
            await self._record_partial(work, entry)
            self.report(
                name, applied=False, message=describe(error), generation=work.metadata.generation
            )
            raise
        finally:
            # A failed apply is retried from the start, events and all.
            self.applying.pop(name, None)

    async def _record_partial(self, work: work_pb2.PropagationWork, entry: Entry | None) -> None:
        """After a work failed part-way, have the ledger list the objects it applied
        before the failure, so a restarted agent still deletes them with the work.

        The entry says generation 0 and vouches for no object (no hashes): the hello
        then asks for the work again, and every object is applied anew.
        """
        name = work.metadata.name
        held = list(entry.objects) if entry is not None else []
        applied = [ref for ref, owner in self.owner.items() if owner == name and ref not in held]
        if not applied:
            # The ledger lists everything this work holds, and names as pending what
            # the attempt may have created before it failed (a write that timed out
            # may still have been made).
            return
        objects = held + applied
        current = self.ledger.entries.get(name)
        partial = Entry(
            work=name,
            uid=work.metadata.uid,
            generation=0,
            objects=objects,
            manifest_hashes=[""] * len(objects),
            projection_hashes=[""] * len(objects),
            pending=[ref for ref in (current.pending if current else []) if ref not in objects],
        )
        try:
            await self.ledger.record(partial)
        except Exception as error:  # the apply's own error is the one to report
            log.warning("work %s: recording what it applied failed: %s", name, describe(error))

    async def _apply(self, work: work_pb2.PropagationWork, entry: Entry | None) -> None:
        """Apply the work's objects; or, for a work the ledger holds at this generation
        without its contents (from before a restart), only those that changed since."""
        name = work.metadata.name
        was_drifted = name in self.drifted
        self.drifted.discard(name)
        manifests = [structs.from_struct(m) for m in work.spec.workload.manifests]
        ordered = sorted(manifests, key=lambda m: _FIRST.get(m.get("kind", ""), 2))
        held = set(entry.objects) if entry is not None else set()
        # Objects applied for this work by an attempt that failed part-way are its too.
        held |= {ref for ref, owner in self.owner.items() if owner == name}
        await self._write_ahead(work, entry, [ObjectRef.of(m) for m in ordered])
        recorded: dict[ObjectRef, tuple[str, str]] = {}
        if (
            entry is not None
            and not entry.has_contents
            and entry.uid == work.metadata.uid
            and entry.generation == work.metadata.generation
        ):
            recorded = dict(
                zip(
                    entry.objects,
                    zip(entry.manifest_hashes, entry.projection_hashes, strict=False),
                    strict=False,
                )
            )
        refs: list[ObjectRef] = []
        bodies: list[Manifest] = []
        projections: list[Any] = []
        # What each object's resourceVersion was when this apply left it.
        applied_versions: dict[ObjectRef, int] = {}
        applies = 0
        for manifest in ordered:
            ref = ObjectRef.of(manifest)
            body = _with_ownership(manifest, name)
            live: Manifest | None = None
            fetched = False
            if ref in recorded and recorded[ref][0] == digest(body):
                live = await self.kube.call(
                    self.kube.get, ref.api_version, ref.kind, ref.namespace, ref.name
                )
                fetched = True
                if live is not None and not _terminating(ref, live):
                    projection = self._projection(body, live)
                    if digest(projection) == recorded[ref][1]:
                        # As it was left: applying it again would change nothing.
                        self._hold(ref, name, body, live, refs, bodies)
                        projections.append(projection)
                        applied_versions[ref] = _resource_version(live)
                        continue
            try:
                applied = await self._apply_object(
                    ref, body, work, held, live=live, fetched=fetched
                )
            except Exception as error:
                # The worker's retry line names only the work; which object fails, and
                # why, is what whoever reads the member's logs needs.
                where = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
                log.warning(
                    "work %s: applying %s %s failed: %s", name, ref.kind, where, describe(error)
                )
                raise
            applies += 1
            self._hold(ref, name, body, applied, refs, bodies)
            projections.append(self._projection(body, applied))
            applied_versions[ref] = _resource_version(applied)
        for stale in held - set(refs):
            if not self._held_by(name, stale):
                continue  # another work took it over
            await self._write(
                self.kube.delete, stale.api_version, stale.kind, stale.namespace, stale.name
            )
            self.owner.pop(stale, None)
            self.observed.pop(stale, None)
        for maybe in entry.pending if entry is not None else []:
            # Written ahead by an attempt that did not finish, and not in this generation:
            # the last chance to remove it, since the record below no longer names it.
            if maybe not in held and maybe not in refs and self._held_by(name, maybe):
                await self._delete_if_applied(name, maybe)
        await self.ledger.record(
            Entry.applied(
                work=name,
                uid=work.metadata.uid,
                generation=work.metadata.generation,
                objects=refs,
                manifests=bodies,
                projections=projections,
            )
        )
        if any(
            version > applied_versions.get(ref, 0)
            for ref, version in self.applying.pop(name, {}).items()
        ):
            # Something wrote an object after this apply did: judge it as drift, by
            # applying again (which changes nothing if it was only a status).
            self._drift(name)
        if recorded:
            log.info(
                "work %s: checked after a restart, %d of %d objects applied again",
                name,
                applies,
                len(refs),
            )
        if was_drifted or (recorded and applies):
            self.corrections[name] = self.corrections.get(name, 0) + 1
            log.info("work %s: restored objects changed in the member", name)
        self.report(name, applied=True, message="")

    async def _write_ahead(
        self, work: work_pb2.PropagationWork, entry: Entry | None, refs: list[ObjectRef]
    ) -> None:
        """Have the ledger name every object this apply may create before it creates any.

        The apply records its objects last; an agent killed (or deposed) in between
        would otherwise leave objects no ledger names, which the next leader could not
        delete with the work. They are written as *pending*: not yet known to be this
        work's (a conflict may refuse one), so deleting one checks the live object.
        """
        listed = set(entry.objects) if entry is not None else set()
        already = entry.pending if entry is not None else []
        new = [ref for ref in refs if ref not in listed and ref not in already]
        if not new:
            return
        if entry is None:
            ahead = Entry(
                work=work.metadata.name,
                uid=work.metadata.uid,
                generation=0,
                objects=[],
                pending=new,
            )
        else:
            ahead = dataclasses.replace(entry, pending=[*already, *new])
        await self.ledger.record(ahead)

    async def _delete_if_applied(self, name: str, ref: ObjectRef) -> bool:
        """Delete a pending object if the live one is work ``name``'s (it carries the
        work's annotation): one refused as a conflict is someone else's and stays."""
        deleted = await self._write(
            self.kube.delete_owned,
            ref.api_version,
            ref.kind,
            ref.namespace,
            ref.name,
            annotation=WORK_ANNOTATION,
            value=name,
        )
        self.owner.pop(ref, None)
        self.observed.pop(ref, None)
        return deleted

    def _hold(
        self,
        ref: ObjectRef,
        name: str,
        body: Manifest,
        live: Manifest,
        refs: list[ObjectRef],
        bodies: list[Manifest],
    ) -> None:
        """Count an object as held by work ``name``, as it is now, and watch its kind."""
        refs.append(ref)
        bodies.append(body)
        self.owner[ref] = name
        self._observe(ref, live)
        self._watch(ref.api_version, ref.kind)

    async def _apply_object(
        self,
        ref: ObjectRef,
        body: Manifest,
        work: work_pb2.PropagationWork,
        held: set[ObjectRef],
        *,
        live: Manifest | None,
        fetched: bool,
    ) -> Manifest:
        """Server-side apply one object of ``work``; ``live`` is it as just read, if
        ``fetched``. Returns the object as the API server answered."""
        name = work.metadata.name
        if ref.namespace and ref.namespace not in self._namespaces:
            await self._write(
                self.kube.ensure_namespace, ref.namespace, labels={MANAGED_LABEL: "true"}
            )
            self._namespaces.add(ref.namespace)
        if ref not in held:
            await self._check_conflict(ref, name, work.spec.conflict_resolution)
        kind_interpreter = self.interpreters.of(body)
        retained = kind_interpreter.retained_paths(body)
        if retained:
            # Fields the member owns (a Service's clusterIP, replicas under a
            # member-side autoscaler) keep their live values.
            if not fetched:
                live = await self.kube.call(
                    self.kube.get, ref.api_version, ref.kind, ref.namespace, ref.name
                )
            body = kind_interpreter.retain(body, live)
        applied = await self._write(self.kube.apply, body)
        self.applies += 1
        if _terminating(ref, applied):
            # Applied to a namespace on its way out, it is gone for good once it goes,
            # and no watch restores it (namespaces are not watched): fail, so the work
            # is applied again, with backoff, and creates it anew once it is gone.
            raise KubeError(
                f"Namespace {ref.name} is being deleted in the member; "
                "it is created again once it is gone"
            )
        if ref.kind == "CustomResourceDefinition":
            # The cluster now serves a new kind: the control plane's scheduler
            # should hear about it at the next heartbeat, not in ten.
            self.on_new_api()
        return applied

    async def _write(self, function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """``function`` (a write to the member) in the executor, unless the fence says
        this agent may no longer act: checked in the worker thread, right before the
        write, since the executor may start it well after it was queued."""
        fence = self.fence
        if fence is None:
            return await self.kube.call(function, *args, **kwargs)

        def fenced() -> R:
            assert fence is not None
            fence()
            return function(*args, **kwargs)

        return await self.kube.call(fenced)

    async def _check_conflict(self, ref: ObjectRef, work: str, resolution: str) -> None:
        """Refuse, unless the policy says Overwrite, an object someone else holds: one
        Archipel does not manage, or one another work of this cluster holds now (two
        templates that make the same member object must not take it from each other,
        and deleting one must not remove the other's object)."""
        if resolution == "Overwrite":
            return
        where = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
        holder = self.owner.get(ref)
        if holder is not None and holder != work:
            raise KubeError(
                f"{ref.kind} {where} is already held by work {holder} in this member; "
                "set conflictResolution: Overwrite in the policy to take it over"
            )
        existing = await self.kube.call(
            self.kube.get, ref.api_version, ref.kind, ref.namespace, ref.name
        )
        if existing is None:
            return
        metadata = existing.get("metadata", {})
        # Anything Archipel made (including namespaces created for other works, and
        # objects left from before a rejoin) is ours.
        if (metadata.get("labels") or {}).get(MANAGED_LABEL) == "true":
            return
        raise KubeError(
            f"{ref.kind} {where} already exists in the member and is not managed by Archipel; "
            "set conflictResolution: Overwrite in the policy to take it over"
        )

    def _held_by(self, name: str, ref: ObjectRef) -> bool:
        """Whether ``ref`` is still work ``name``'s to delete (no other work took it)."""
        return self.owner.get(ref, name) == name

    async def _delete(self, name: str, delete: agent_pb2.WorkDelete) -> None:
        entry = self.ledger.entries.get(name)
        # What the ledger records, and what this process applied for the work since
        # (a work that failed part-way holds objects its entry does not list yet).
        refs = list(entry.objects) if entry is not None else []
        refs += [ref for ref, owner in self.owner.items() if owner == name and ref not in refs]
        released = 0
        if not delete.preserve_resources:
            for maybe in entry.pending if entry is not None else []:
                if maybe not in refs and self._held_by(name, maybe):
                    released += await self._delete_if_applied(name, maybe)
        for ref in refs:
            if not self._held_by(name, ref):
                continue  # another work took it over: it stays, and stays theirs
            released += 1
            if not delete.preserve_resources:
                await self._write(
                    self.kube.delete, ref.api_version, ref.kind, ref.namespace, ref.name
                )
            self.owner.pop(ref, None)
            self.observed.pop(ref, None)
        if entry is not None:
            await self.ledger.forget(name)
        # Every deletion in a member says so: what Archipel removed, and why it did not.
        log.info(
            "work %s deleted: %d objects %s",
            name,
            released,
            "left in place (preserveResourcesOnDeletion)"
            if delete.preserve_resources
            else "removed from the member",
        )
        self.deleting.pop(name, None)
        self._last_report.pop(name, None)
        self.send(agent_pb2.AgentMessage(deleted=agent_pb2.WorkDeleted(name=name, uid=delete.uid)))

    # -- status ------------------------------------------------------------------------

    def report(
        self, name: str, *, applied: bool, message: str, generation: int | None = None
    ) -> None:
        """Send the work's status if it differs from the last one sent."""
        entry = self.ledger.entries.get(name)
        work = self.desired.get(name)
        uid = work.metadata.uid if work is not None else (entry.uid if entry else "")
        report = agent_pb2.WorkStatusReport(
            name=name,
            uid=uid,
            generation=generation if generation is not None else (entry.generation if entry else 0),
            applied=applied,
            message=message,
            drift_corrections=self.corrections.get(name, 0),
        )
        if applied and entry is not None:
            for ordinal, ref in enumerate(entry.objects):
                observed = self.observed.get(ref)
                status = report.manifest_statuses.add()
                status.identifier.CopyFrom(_identifier(ordinal, ref))
                status.health = observed.health if observed else interpreter.UNKNOWN
                if observed is not None:
                    status.health_message = observed.health_message
                if observed is not None and observed.status is not None:
                    status.status.CopyFrom(structs.to_struct(observed.status))
        encoded = report.SerializeToString(deterministic=True)
        if self._last_report.get(name) == encoded:
            return
        self._last_report[name] = encoded
        self.send(agent_pb2.AgentMessage(status=report))

    def resend_reports(self) -> None:
        """After a reconnect: the control plane may have missed the last reports."""
        self._last_report.clear()
        for name in list(self.ledger.entries):
            if name not in self.deleting:
                self.report(name, applied=True, message="")

    # -- watching ----------------------------------------------------------------------

    def _watch(self, api_version: str, kind: str) -> None:
        if (api_version, kind) in self._watched or kind == "Namespace":
            return
        self._watched.add((api_version, kind))
        if self._start_watch is not None:
            self._start_watch(api_version, kind)
            return
        thread = threading.Thread(
            target=self._watch_loop, args=(api_version, kind), daemon=True, name=f"watch-{kind}"
        )
        thread.start()

    def _watch_loop(self, api_version: str, kind: str) -> None:
        """List and watch one kind until the manager stops; runs in its own thread."""

        def log_retry(state: RetryCallState) -> None:
            # The API server may be down: a debug line only, the works' reports say so.
            error = state.outcome.exception() if state.outcome else None
            log.debug(
                "watch %s %s: %s; retrying in %.1fs",
                api_version,
                kind,
                describe(error) if isinstance(error, Exception) else error,
                state.upcoming_sleep,
            )

        resource_version: str | None = None
        while not self._stop.is_set():
            # A fresh backoff after every watch that ended well: one that breaks after
            # an hour is retried after the shortest delay.
            retrying = WATCH_BACKOFF.copy(
                stop=lambda state: self._stop.is_set(),
                # Waiting on the stop event ends the backoff as soon as the agent stops.
                sleep=self._stop.wait,
                before_sleep=log_retry,
            )
            try:
                for attempt in retrying:
                    with attempt:
                        if self._stop.is_set():
                            return
                        if attempt.retry_state.attempt_number > 1:
                            resource_version = None  # after a failure, a fresh list
                        resource = self.kube.resource(api_version, kind)
                        if resource_version is None:
                            listed = resource.get(label_selector=f"{MANAGED_LABEL}=true")
                            present = []
                            for item in listed.items:
                                manifest = item.to_dict()
                                present.append(ObjectRef.of(manifest))
                                self._emit("ADDED", manifest)
                            # What was deleted while no watch was open shows only as an absence.
                            self._emit_listed(api_version, kind, present)
                            resource_version = listed.metadata.resourceVersion
                        for event in self.kube.dynamic.watch(  # type: ignore[no-untyped-call]
                            resource,
                            label_selector=f"{MANAGED_LABEL}=true",
                            resource_version=resource_version,
                            timeout=60,
                        ):
                            raw = event["raw_object"]
                            if event["type"] == "ERROR":
                                resource_version = None
                                break
                            resource_version = raw.get("metadata", {}).get(
                                "resourceVersion", resource_version
                            )
                            self._emit(event["type"], raw)
            except RetryError:
                return  # stopped while backing off

    def _projection(self, desired: Manifest, live: Manifest) -> Any:
        """The live values at the paths the agent applied, less those the member owns."""
        retained = self.interpreters.of(desired).retained_paths(desired)
        return drift.project(drift.applied_fields(interpreter.drop_paths(desired, retained)), live)

    def _emit(self, type_: str, manifest: Manifest) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.on_event, type_, manifest)

    def _emit_listed(self, api_version: str, kind: str, present: list[ObjectRef]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_listed, api_version, kind, set(present))

    def _on_listed(self, api_version: str, kind: str, present: set[ObjectRef]) -> None:
        """A fresh listing of a kind: every object held of that kind but missing from it
        was deleted while the watch was down (or the agent was away)."""
        gone = [
            ref
            for ref in self.owner
            if ref.api_version == api_version and ref.kind == kind and ref not in present
        ]
        for ref in gone:
            metadata = {"name": ref.name, **({"namespace": ref.namespace} if ref.namespace else {})}
            self.on_event(
                "DELETED", {"apiVersion": ref.api_version, "kind": ref.kind, "metadata": metadata}
            )

    def _observe(self, ref: ObjectRef, manifest: Manifest) -> bool | None:
        """Keep the newest state seen of an object; True when its status or health moved,
        None when ``manifest`` is older than what is already known."""
        observed = Observed.of(manifest, self.interpreters)
        previous = self.observed.get(ref)
        if previous is not None and previous.resource_version > observed.resource_version:
            return None  # an older copy (the apply's response raced the watch)
        self.observed[ref] = observed
        return previous is None or not previous.same_state(observed)

    def on_event(self, type_: str, manifest: Manifest) -> None:
        """One watch event (ADDED, MODIFIED or DELETED) for an object of a watched kind,
        handled on the event loop: the watch threads hand theirs over here."""
        ref = ObjectRef.of(manifest)
        name = self.owner.get(ref)
        if name is None or name in self.deleting:
            return
        if name in self.applying:
            version = _resource_version(manifest)
            seen = self.applying[name]
            seen[ref] = max(seen.get(ref, 0), version)
            if type_ != "DELETED":
                self._observe(ref, manifest)
            return
        if type_ == "DELETED":
            self.observed.pop(ref, None)
        elif self._observe(ref, manifest) is None:
            # Older than the last apply's answer: it says nothing about drift, and
            # judging it against the newer projection would re-apply for nothing.
            return
        entry = self.ledger.entries.get(name)
        if entry is None or ref not in entry.objects:
            return  # still being applied: the apply reports when it is done
        if entry.manifests is None or entry.projections is None:
            # Held from before a restart: without the contents drift cannot be judged.
            # The Hello made the control plane send the work again, and the check that
            # follows its arrival reads every object anew; if it is already under way,
            # it may have read this object before the change, so it runs once more.
            if name in self.desired:
                self.queue.add(name)
            self.report(name, applied=True, message="")
            return
        if type_ == "DELETED":
            self._drift(name)
            return
        index = entry.objects.index(ref)
        if (
            index < len(entry.projections)
            and self._projection(entry.manifests[index], manifest) != entry.projections[index]
        ):
            self._drift(name)
            return
        self.report(name, applied=True, message="")

    def _drift(self, name: str) -> None:
        # Only a work received in this process's lifetime can be re-applied: one held
        # from before a restart waits for the resend its Hello asked for.
        if name in self.desired:
            self.drifted.add(name)
            self.queue.add(name)

    def stop(self) -> None:
        self._stop.set()


def _log_failure(name: str, error: Exception, delay: float) -> None:
    log.warning("work %s: %s; retrying in %.1fs", name, describe(error), delay)


def _resource_version(manifest: Manifest) -> int:
    """A member object's resourceVersion as a number (etcd's revision, as every
    kube-apiserver gives it; 0 when absent or not a number)."""
    version = (manifest.get("metadata") or {}).get("resourceVersion", "0")
    try:
        return int(version)
    except (TypeError, ValueError):
        return 0


def _terminating(ref: ObjectRef, live: Manifest) -> bool:
    """Whether ``live`` is a Namespace being deleted in the member."""
    return ref.kind == "Namespace" and bool((live.get("metadata") or {}).get("deletionTimestamp"))


def _with_ownership(manifest: Manifest, work: str) -> Manifest:
    body = dict(manifest)
    metadata = dict(body.get("metadata", {}))
    metadata["labels"] = {**(metadata.get("labels") or {}), MANAGED_LABEL: "true"}
    metadata["annotations"] = {**(metadata.get("annotations") or {}), WORK_ANNOTATION: work}
    body["metadata"] = metadata
    return body
