"""Assembles the blob service's gRPC server: BlobService on the configured storage, plus the
health checking, reflection and graceful stop that artifactstore.rpc gives every service."""

from __future__ import annotations

from artifactstore.blob.v1 import blob_pb2_grpc
from artifactstore.config import Settings
from artifactstore.rpc import Servicer, serve
from artifactstore.storage import StorageOptions
from blob_svc.service import SERVICE_NAME, BlobServicer
from blob_svc.store import BlobStore


async def main(settings: Settings) -> None:
    """Serve BlobService over `settings.storage_url` at `settings.blob_address` until
    SIGTERM or SIGINT."""
    store = BlobStore.from_url(
        settings.storage_url,
        StorageOptions.from_settings(settings),
        retry_seconds=settings.storage_retry_seconds,
    )
    servicer = Servicer(
        blob_pb2_grpc.add_BlobServiceServicer_to_server, BlobServicer(store), SERVICE_NAME
    )
    await serve([servicer], settings.blob_address)
