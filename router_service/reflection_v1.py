"""Server reflection under ``grpc.reflection.v1`` as well as ``v1alpha``.

grpcio-reflection only ships v1alpha; newer tools (grpcurl, Postman, buf
curl) ask for v1 first. The two protos are identical on the wire (same
messages and field numbers, only the package differs), so the v1alpha
servicer answers v1 calls registered under the v1 name.

Two gaps of grpcio-reflection are closed here, because clients in other
languages walk what reflection lists: the v1 service was listed but its
descriptor was not in the pool (``describe grpc.reflection.v1.ServerReflection``
failed), so a v1 copy of the v1alpha file is registered; and
``file_containing_symbol`` did not resolve a method
(``router.v1.Router.RankProviders``), which the reflection proto lists as a
valid symbol, so a method resolves to its service's file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

from router_service.rpc_guard import LogLimiter, add_guarded_service

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Add ``grpc.reflection.v1`` to ``pool``: the v1alpha file, package renamed."""
    try:
        pool.FindFileByName(_V1_FILE)
        return  # already there (a newer grpcio-reflection, or a second server)
    except KeyError:
        pass
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = _V1_FILE, "grpc.reflection.v1"
    for message in file.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in file.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    pool.AddSerializedFile(file.SerializeToString())


def _method_to_service(pool: descriptor_pool.DescriptorPool, name: str) -> str:
    """``pkg.Service.Method`` -> ``pkg.Service`` when that is a method; else ``name``."""
    try:
        pool.FindFileContainingSymbol(name)
        return name
    except KeyError:
        pass
    service_name, _, method = name.rpartition(".")
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        return name
    return service_name if method in service.methods_by_name else name


class _ReflectionServicer(reflection.aio.ReflectionServicer):
    """grpcio-reflection's servicer, resolving method symbols as the spec allows."""

    def __init__(self, service_names: Sequence[str], pool: descriptor_pool.DescriptorPool) -> None:
        super().__init__(service_names, pool=pool)
        self._symbols = pool

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        name = _method_to_service(self._symbols, fully_qualified_name)
        return super()._file_containing_symbol(request, name)  # type: ignore[misc]


def enable_reflection(
    service_names: Sequence[str], server: grpc.aio.Server, limiter: LogLimiter
) -> None:
    """Serve reflection (v1 and v1alpha) listing ``service_names`` and both reflection
    services; a corrupt request is INVALID_ARGUMENT, logged under ``limiter``."""
    pool = descriptor_pool.Default()
    _register_v1_descriptor(pool)
    names = (*service_names, reflection.SERVICE_NAME, SERVICE_NAME)
    servicer = _ReflectionServicer(names, pool)
    descriptor = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
    for service in (reflection.SERVICE_NAME, SERVICE_NAME):
        add_guarded_service(server, descriptor, servicer, reflection_pb2, limiter, service)
