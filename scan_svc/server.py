"""Assembles scan_svc: the ScanService gRPC server and the queue worker beside it."""

from __future__ import annotations

import asyncio
import contextlib

from artifactstore import rpc
from artifactstore.config import Settings
from artifactstore.iam.v1 import iam_pb2_grpc
from artifactstore.metadata.v1 import metadata_pb2_grpc, scans_pb2_grpc
from artifactstore.scan.v1 import scan_pb2, scan_pb2_grpc
from artifactstore.storage import StorageOptions
from scan_svc.service import ScanServicer
from scan_svc.storage import Storage
from scan_svc.vulndb import DatabaseCache
from scan_svc.worker import Worker, WorkerStatus


async def main(settings: Settings) -> None:
    """Serve ScanService at the configured address and work the scan queue until SIGTERM
    or SIGINT; a scan running then is abandoned (its lease runs out and another worker
    takes the task)."""
    storage = Storage.open(settings.storage_url, StorageOptions.from_settings(settings))
    database = DatabaseCache(storage)
    status = WorkerStatus()
    timeout = settings.rpc_timeout_seconds
    async with (
        rpc.channel(settings.metadata_address, unary_timeout=timeout) as metadata_channel,
        rpc.channel(settings.iam_address, unary_timeout=timeout) as iam_channel,
    ):
        metadata = metadata_pb2_grpc.MetadataServiceStub(metadata_channel)
        scans = scans_pb2_grpc.ScanMetadataServiceStub(metadata_channel)
        iam = iam_pb2_grpc.IamServiceStub(iam_channel)
        worker = Worker(settings, metadata, scans, iam, storage, database, status)
        servicer = ScanServicer(metadata, scans, storage, database, status, settings.scan_queue)
        name = scan_pb2.DESCRIPTOR.services_by_name["ScanService"].full_name
        running = asyncio.create_task(worker.run())

        async def stop() -> None:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

        await rpc.serve(
            [rpc.Servicer(scan_pb2_grpc.add_ScanServiceServicer_to_server, servicer, name)],
            settings.scan_address,
            on_stop=stop,
        )
