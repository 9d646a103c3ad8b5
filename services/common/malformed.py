"""Requests that are not valid protobuf get INVALID_ARGUMENT, not INTERNAL.

grpcio answers a request it cannot deserialize with a bare INTERNAL status.
The commonest cause is a string field holding bytes that are not UTF-8 (a
file name from a client that forgot to decode it), which deserves a precise
answer naming the field. `register_tolerant` installs the generated handlers
with deserializers that return a `MalformedRequest` instead of raising; the
error decorators turn it into INVALID_ARGUMENT with a field violation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor as _descriptor
from google.protobuf import empty_pb2, unknown_fields
from google.protobuf.message import DecodeError, Message

from services.common.errors import MalformedRequest

if TYPE_CHECKING:
    # A message class's DESCRIPTOR is either kind, depending on the protobuf backend.
    from google._upb._message import Descriptor as _UpbDescriptor


def _bad_utf8_fields(data: bytes, descriptor: _descriptor.Descriptor | _UpbDescriptor, prefix: str = "") -> list[str]:
    """Paths of string fields whose bytes are not UTF-8, found by walking the wire format."""
    found: list[str] = []
    try:
        fields = unknown_fields.UnknownFieldSet(empty_pb2.Empty.FromString(data))
    except DecodeError:
        return found
    for index in range(len(fields)):
        item = fields[index]
        field = descriptor.fields_by_number.get(item.field_number)
        if field is None or item.wire_type != 2:
            continue
        path = f"{prefix}{field.name}"
        if field.type == _descriptor.FieldDescriptor.TYPE_STRING:
            try:
                bytes(item.data).decode("utf-8")
            except UnicodeDecodeError:
                found.append(path)
        elif field.type == _descriptor.FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            found.extend(_bad_utf8_fields(bytes(item.data), field.message_type, path + "."))
    return found


def tolerant(deserializer: Callable[[bytes], Message], message_type: type[Message]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return MalformedRequest(str(exc), tuple(_bad_utf8_fields(data, message_type.DESCRIPTOR)))

    return deserialize


class _Capture:
    """Stands in for a server while a generated add_…_to_server registers handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, handlers


def register_tolerant(server: grpc.aio.Server, add_to_server: Callable[[Any, Any], None], servicer: Any,
                      request_types: dict[str, type[Message]]) -> None:
    capture = _Capture()
    add_to_server(servicer, capture)
    handlers = {}
    for method, handler in capture.handlers.items():
        message_type = request_types[method]
        if handler.request_deserializer is None:
            raise ValueError(f"{capture.service}/{method} has no request deserializer to make tolerant")
        # grpc's handlers are namedtuples, which its stubs don't say.
        handlers[method] = handler._replace(  # type: ignore[attr-defined]
            request_deserializer=tolerant(handler.request_deserializer, message_type)
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))


def request_types_of(service: _descriptor.ServiceDescriptor, module: Any) -> dict[str, type[Message]]:
    return {m.name: getattr(module, m.input_type.name) for m in service.methods}
