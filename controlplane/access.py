"""The servicers of ``archipel.v1alpha2``'s access API: users and the audit log.

Both services are administration, the admin's alone (:mod:`archipel.core.roles`).
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import grpc

from archipel.core.errors import Invalid
from archipel.v1alpha2 import access_pb2
from controlplane import auth
from controlplane.api import _guard as guard
from controlplane.audit import MAX_LISTED_EVENTS, AuditLog
from controlplane.users import UserDirectory

USER_SERVICE = access_pb2.DESCRIPTOR.services_by_name["UserService"].full_name
AUDIT_SERVICE = access_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name


class UserService:
    def __init__(self, users: UserDirectory) -> None:
        self.users = users

    @guard
    async def Create(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        auth.describe(kind="User", name=request.user.name)
        user, token = await self.users.create(request.user, rotate=request.rotate)
        return access_pb2.UserServiceCreateResponse(user=user, token=token)

    @guard
    async def List(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return access_pb2.UserServiceListResponse(users=self.users.list())

    @guard
    async def Delete(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        auth.describe(kind="User", name=request.name)
        return access_pb2.UserServiceDeleteResponse(deleted=await self.users.delete(request.name))


class AuditService:
    def __init__(self, log: AuditLog) -> None:
        self.log = log

    @guard
    async def List(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request.limit < 0:
            raise Invalid("limit", "must not be negative")
        since = None
        if request.HasField("since"):
            try:
                since = request.since.ToDatetime(datetime.UTC)
            except (ValueError, OverflowError) as error:
                raise Invalid("since", f"not a valid timestamp ({error})") from None
        limit = min(request.limit or MAX_LISTED_EVENTS, MAX_LISTED_EVENTS)
        # Reading files blocks: the default executor is bounded (min(32, cpus + 4)).
        events = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.log.read(since=since, limit=limit)
        )
        return access_pb2.AuditServiceListResponse(events=events)
