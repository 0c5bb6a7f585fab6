"""The GcService servicer."""

from __future__ import annotations

import grpc

import artifactstore
from artifactstore.gc.v1 import gc_pb2, gc_pb2_grpc


class GcServicer(gc_pb2_grpc.GcServiceServicer):
    """Answers GcService calls."""

    async def GetServiceInfo(
        self, request: gc_pb2.GetServiceInfoRequest, context: grpc.aio.ServicerContext
    ) -> gc_pb2.ServiceInfo:
        """This instance's version; garbage collection work arrives in a later version."""
        return gc_pb2.ServiceInfo(version=artifactstore.__version__, enabled=False)
