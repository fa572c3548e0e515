"""Kubernetes manifests as ``google.protobuf.Struct`` and back.

A Struct stores every number as a double, but Kubernetes rejects ``3.0`` where an
integer belongs, so whole numbers come back as ints. (Integers beyond 2**53 cannot
survive a Struct; Kubernetes objects carry such values as strings or quantities.)
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2


def to_struct(manifest: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(manifest)
    return struct


def _value(value: struct_pb2.Value) -> Any:
    which = value.WhichOneof("kind")
    if which == "struct_value":
        return from_struct(value.struct_value)
    if which == "list_value":
        return [_value(item) for item in value.list_value.values]
    if which == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() else number
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    return None


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {key: _value(value) for key, value in struct.fields.items()}
