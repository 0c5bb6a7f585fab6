"""Assembles gc_svc's gRPC server."""

from __future__ import annotations

from artifactstore import rpc
from artifactstore.config import Settings
from artifactstore.gc.v1 import gc_pb2, gc_pb2_grpc
from gc_svc.service import GcServicer


async def main(settings: Settings) -> None:
    """Serve GcService at the configured address until SIGTERM or SIGINT."""
    name = gc_pb2.DESCRIPTOR.services_by_name["GcService"].full_name
    servicer = rpc.Servicer(gc_pb2_grpc.add_GcServiceServicer_to_server, GcServicer(), name)
    await rpc.serve([servicer], settings.gc_address)
