"""The ScanService servicer."""

from __future__ import annotations

import grpc

import artifactstore
from artifactstore.scan.v1 import scan_pb2, scan_pb2_grpc


class ScanServicer(scan_pb2_grpc.ScanServiceServicer):
    """Answers ScanService calls."""

    async def GetServiceInfo(
        self, request: scan_pb2.GetServiceInfoRequest, context: grpc.aio.ServicerContext
    ) -> scan_pb2.ServiceInfo:
        """This instance's version; vulnerability scanning work arrives in a later version."""
        return scan_pb2.ServiceInfo(version=artifactstore.__version__, enabled=False)
