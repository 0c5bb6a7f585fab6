"""Assembles scan_svc's gRPC server."""

from __future__ import annotations

from artifactstore import rpc
from artifactstore.config import Settings
from artifactstore.scan.v1 import scan_pb2, scan_pb2_grpc
from scan_svc.service import ScanServicer


async def main(settings: Settings) -> None:
    """Serve ScanService at the configured address until SIGTERM or SIGINT."""
    name = scan_pb2.DESCRIPTOR.services_by_name["ScanService"].full_name
    servicer = rpc.Servicer(scan_pb2_grpc.add_ScanServiceServicer_to_server, ScanServicer(), name)
    await rpc.serve([servicer], settings.scan_address)
