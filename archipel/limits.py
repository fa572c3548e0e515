"""Every bound Archipel puts on what a caller or an agent may send, in one place.

Each limit exists so that one object, one request or one stream can never stop
propagation for everybody. They are documented for users in ``docs/limits.md``; the
server, the agent and the CLI all read them from here.
"""

from __future__ import annotations

from typing import Any

# -- objects -------------------------------------------------------------------------

MAX_MANIFEST_DEPTH = 28
"""Most levels of nesting in a template (objects and lists alike; a scalar at the top
is level 1). Manifests travel as ``google.protobuf.Struct``, where each JSON level
costs up to three protobuf levels, and protobuf decoders (upb, Java, C++) refuse more
than 100. A work wraps its template in about eight more levels and an agent's status
report about as many, so a template at this depth still yields decodable works,
stream messages and status reports. Kubernetes' own kinds stay under 15 levels and
deep CRD schemas under 25."""

MAX_OBJECT_BYTES = 1024 * 1024
"""Largest encoded object a caller may write (a template's JSON, a policy's protobuf).
etcd refuses requests over 1.5 MiB; the work built from a template carries the
template plus a little metadata, so 1 MiB leaves room for it."""

MAX_MANIFEST_NODES = MAX_OBJECT_BYTES // 2
"""Most values (scalars, lists, mappings and keys) one YAML or JSON document may hold
once its aliases are expanded, as the CLI reads it. Each value costs at least two bytes
of JSON (``0,``), so a document with more could never be written under
:data:`MAX_OBJECT_BYTES`; counting while parsing refuses an alias bomb ("billion
laughs", a few lines that expand to billions of values) before it is expanded."""

MAX_MANIFEST_FILE_BYTES = 64 * 1024 * 1024
"""Largest file (or standard input) ``archipel apply -f`` and the other commands that
read manifests will read; a larger one is refused before it is read to the end, so a
pipe or device that never ends cannot exhaust memory."""

MAX_WORK_MANIFESTS = 100
"""Most manifests one PropagationWork may carry (``spec.workload.manifests``). The
controllers write one per work; the bound is for works written through the API, as
Karmada users write Works by hand. Each manifest costs the agent a server-side apply,
a watch of its kind and a status in every report, and a work of thousands of tiny
manifests fits in :data:`MAX_OBJECT_BYTES` (an empty one takes two bytes), so the
byte bound alone would let one object make an agent do unbounded work. 100 is far
beyond any hand-written Work seen in Karmada's issues and samples."""

MAX_REPLICAS = 2**31 - 1
"""Replica counts are int32, as in Kubernetes."""

MAX_ECHO_CHARS = 200
"""An error message quotes at most this much of the offending value: gRPC's
metadata (where status messages travel) is limited to a few KiB."""

MAX_NAME_CHARS = 253
"""Longest object name, API group or label-key prefix: Kubernetes' DNS-subdomain
bound (RFC 1123), so every name Archipel accepts stays valid on the members."""

MAX_LABEL_CHARS = 63
"""Longest DNS label (namespaces, cluster names), label value, label-key name part and
kind: Kubernetes' own bound, which the members would enforce anyway."""

MAX_ANNOTATIONS_BYTES = 256 * 1024
"""Most bytes of annotation keys and values on one object, as kube-apiserver counts
them: a template over it would be refused by every member."""

# -- the API ---------------------------------------------------------------------------

MAX_STATUS_MESSAGE_BYTES = 2048
"""Longest error message (UTF-8) the API sends. It travels percent-encoded in gRPC
trailers, which clients cap at 8 KiB by default; past that the client sees
``RESOURCE_EXHAUSTED`` instead of the real answer. Messages are cut, never dropped."""

MAX_RECEIVE_BYTES = 4 * 1024 * 1024
"""Largest gRPC message the control plane accepts (gRPC's own default). gRPC refuses a
larger one from its length prefix, before buffering it, so a run of huge requests
costs no memory; every message an agent sends is kept below it."""

MAX_AGENT_RECEIVE_BYTES = 16 * 1024 * 1024
"""Largest gRPC message an agent accepts: a batch of works, or one work of the largest
template plus what overrides add to it."""

MAX_SEND_BYTES = MAX_AGENT_RECEIVE_BYTES
"""Largest gRPC message the control plane sends, on the API and the agent stream alike
(one port serves both): what an agent accepts. API answers stay far below it (an object
is at most what etcd stores, 1.5 MiB; a List page stops at :data:`MAX_LIST_PAGE_BYTES`
plus one object), so it only ever stops a bug from sending an unbounded message."""

MAX_AGENT_SEND_BYTES = MAX_RECEIVE_BYTES
"""Largest gRPC message an agent sends: what the control plane accepts. The agent keeps
its messages under :data:`MAX_REPORT_BATCH_BYTES`; a larger one (a bug) fails in the
agent, which reconnects, instead of crossing the network to be refused."""

MAX_REQUEST_BYTES = 2 * MAX_OBJECT_BYTES + 64 * 1024
"""Largest API request (other than the agent stream) that is decoded at all: room for
one object of ``MAX_OBJECT_BYTES`` in any encoding. A larger request is refused
unread, so a run of huge requests costs no memory."""

MAX_LIST_PAGE_BYTES = 3 * 1024 * 1024
"""A List answer stops adding objects before it would pass this many bytes and hands
back a continue token (it always holds at least one object). Below gRPC's default
4 MiB receive limit, so grpcurl and stubs in any language read pages as they come."""

MAX_LIST_PAGE_ITEMS = 1000
"""Most objects one List answer holds. A request's ``limit`` of 0 ("everything") or
above this is served as this many, with a ``continue`` token when more remain: what
Kubernetes' contract allows (a page may hold fewer than ``limit``; clients go by the
``continue`` token alone). The byte bound alone would let a page hold tens of thousands
of small objects, each a Python object in the control plane's memory at once."""

MAX_STREAM_BATCH_BYTES = 4 * 1024 * 1024
"""A batch of works to an agent stops growing past this many bytes; a single work
larger than ``MAX_AGENT_RECEIVE_BYTES`` is never sent (its status says why)."""

MAX_REPORT_BATCH_BYTES = 1024 * 1024
"""A message from an agent (a batch of acknowledgements and reports, or a part of its
hello) stops growing past this many bytes, well within ``MAX_RECEIVE_BYTES``."""

# -- callers' rates ---------------------------------------------------------------------

DEFAULT_MUTATION_RATE = 1000.0
"""Mutating calls (Apply, Delete, Join and every other call that is not a Get, List or
Watch) one identity may make per second, on average (``--mutation-rate``; 0 turns the
limit off). Beyond it the call is refused with ``RESOURCE_EXHAUSTED`` and a hint of
when to retry, so one runaway script cannot take etcd's write capacity from every other
caller and the controllers. One identity's bulk apply runs at 400 to 800 Applies per
second on a 2-core machine (64 concurrent Applies, as ``make bench`` sends them: no call
refused at this default); the project's target is 2,000 per second in all, from several
callers, so 1,000 per identity leaves room for any one of them."""

DEFAULT_MUTATION_BURST = 2000
"""Mutating calls one identity may make at once after a quiet spell, above the rate
(``--mutation-burst``): ``archipel apply -f`` of a directory of 2,000 objects is never
slowed down."""

MAX_RATE_LIMITED_IDENTITIES = 10_000
"""Most identities whose rate the control plane tracks at once. An identity idle long
enough for its bucket to refill is forgotten at once (it would start full anyway);
beyond this many busy ones, the least recently seen is forgotten, which only ever
gives it a full bucket again: memory stays bounded whatever credentials callers
invent."""

# -- one agent stream ------------------------------------------------------------------

MAX_REPORTED_STATUS_BYTES = 256 * 1024
"""Largest reflected status of one manifest an agent reports as it is; a larger one
(from a member object Archipel does not control) is reported empty, with a health
message saying why, so no report can break the stream it travels on."""

MAX_HELD_WORKS = 100_000
"""Most works an agent may claim to hold when it connects."""

MAX_HEARTBEAT_BYTES = 1024 * 1024
"""Largest heartbeat an agent may send (API enablements, nodes, resources)."""


def depth(value: Any, *, stop_after: int = MAX_MANIFEST_DEPTH) -> int:
    """Levels of nesting of a JSON-like value, counting no further than ``stop_after + 1``.

    Iterative, so a hostile value cannot exhaust Python's recursion limit, and it stops
    as soon as the answer is known to be over the limit.
    """
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if level > deepest:
            deepest = level
            if deepest > stop_after:
                return deepest
        if isinstance(item, dict):
            pending.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            pending.extend((child, level + 1) for child in item)
    return deepest


def echo(value: object) -> str:
    """``repr(value)`` cut to :data:`MAX_ECHO_CHARS`, for quoting in error messages."""
    text = repr(value)
    if len(text) <= MAX_ECHO_CHARS:
        return text
    return f"{text[:MAX_ECHO_CHARS]}... ({len(text)} characters)"


def page_size(limit: int) -> int:
    """The most objects a List page holds for a request's ``limit`` (not negative):
    ``limit`` itself up to :data:`MAX_LIST_PAGE_ITEMS`, and that bound for 0 or more."""
    return limit if 0 < limit <= MAX_LIST_PAGE_ITEMS else MAX_LIST_PAGE_ITEMS
