"""The control plane's small error vocabulary, and its one mapping to gRPC status codes.

Everything below the servicers raises these; only :func:`grpc_code` knows gRPC. A
message that concerns one field starts with the field's path, so a user reading
``spec.placement.clusterAffinity.clusterNames[1]: must be a DNS label`` knows
exactly what to fix.
"""

from __future__ import annotations

import grpc


class ArchipelError(Exception):
    """Base of every error the control plane reports to a caller."""

    code = grpc.StatusCode.INTERNAL


class Invalid(ArchipelError):
    """The input is wrong; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


class NotFound(ArchipelError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ArchipelError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Conflict(ArchipelError):
    """The object changed since the caller read it (resourceVersion mismatch).

    Controllers requeue on it; API callers get ABORTED and should read again.
    """

    code = grpc.StatusCode.ABORTED


class Expired(ArchipelError):
    """A watch or a continue token names a revision etcd has compacted away: list again.

    Kubernetes answers ``410 Gone`` here; gRPC's nearest code is OUT_OF_RANGE.
    """

    code = grpc.StatusCode.OUT_OF_RANGE


class FailedPrecondition(ArchipelError):
    """The object is in a state that forbids the request (deletion protection)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Corrupt(ArchipelError):
    """A stored object cannot be decoded (written by hand, or by a buggy version).

    It is quarantined: skipped by caches and listings, reported, and deletable.
    """

    code = grpc.StatusCode.DATA_LOSS

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"stored object {key} cannot be decoded ({reason}); delete it to recover")


class TooMuch(ArchipelError):
    """A caller or an agent went over one of the limits in :mod:`archipel.limits`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ArchipelError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ArchipelError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ArchipelError):
    """A dependency (etcd) cannot be reached; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


def grpc_code(error: BaseException) -> grpc.StatusCode:
    if isinstance(error, ArchipelError):
        return error.code
    return grpc.StatusCode.INTERNAL
