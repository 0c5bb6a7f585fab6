"""gc_svc's clients of metadata_svc (MetadataService for the queues, MetadataGcService for
marks and sweeps) and blob_svc, with the settings every GC step shares."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from artifactstore import rpc
from artifactstore.blob.v1 import blob_pb2, blob_pb2_grpc
from artifactstore.config import Settings
from artifactstore.errors import Reason, RegistryError
from artifactstore.metadata.v1 import gc_pb2_grpc, metadata_pb2_grpc
from gc_svc.progress import Progress

if TYPE_CHECKING:
    from artifactstore.blob.v1.blob_pb2_grpc import BlobServiceAsyncStub
    from artifactstore.metadata.v1.gc_pb2_grpc import MetadataGcServiceAsyncStub
    from artifactstore.metadata.v1.metadata_pb2_grpc import MetadataServiceAsyncStub


@dataclass(frozen=True)
class Backends:
    """What every GC step needs: the stubs, the settings, and the progress to count in."""

    settings: Settings
    metadata: MetadataServiceAsyncStub
    gc: MetadataGcServiceAsyncStub
    blob: BlobServiceAsyncStub
    progress: Progress
    # Who leases queue tasks, for operators ("gc_svc@host:pid").
    worker: str

    @property
    def directory(self) -> str:
        """The registry directory this worker collects (FDB_DIRECTORY)."""
        return self.settings.fdb_directory

    @property
    def batch(self) -> int:
        """Keys per transaction of a scan (ARTS_GC_BATCH_SIZE)."""
        return self.settings.gc_batch_size

    async def upload_size(self, upload_id: str) -> int:
        """The bytes an upload session holds in blob_svc (0 when it has none)."""
        try:
            status = await rpc.call(
                self.blob.GetUploadStatus(blob_pb2.GetUploadStatusRequest(upload_id=upload_id))
            )
        except RegistryError as err:
            if err.reason not in (Reason.BLOB_UPLOAD_UNKNOWN, Reason.BLOB_UPLOAD_INVALID):
                raise
            return 0
        return status.size

    async def cancel_upload(self, upload_id: str) -> int | None:
        """Remove an upload session's bytes from blob_svc; the bytes freed, or None when
        there was no such session."""
        size = await self.upload_size(upload_id)
        reply = await rpc.call(
            self.blob.CancelUpload(blob_pb2.CancelUploadRequest(upload_id=upload_id))
        )
        return size if reply.cancelled else None


@contextlib.asynccontextmanager
async def connect(settings: Settings, progress: Progress) -> AsyncIterator[Backends]:
    """Open the channels to metadata_svc and blob_svc for the life of the context."""
    timeout = settings.rpc_timeout_seconds
    async with (
        rpc.channel(settings.metadata_address, unary_timeout=timeout) as metadata,
        rpc.channel(settings.blob_address, unary_timeout=timeout) as blob,
    ):
        yield Backends(
            settings=settings,
            metadata=metadata_pb2_grpc.MetadataServiceStub(metadata),
            gc=gc_pb2_grpc.MetadataGcServiceStub(metadata),
            blob=blob_pb2_grpc.BlobServiceStub(blob),
            progress=progress,
            worker=f"gc_svc@{socket.gethostname()}:{os.getpid()}",
        )
