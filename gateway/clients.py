"""The gateway's clients of metadata_svc and blob_svc: one channel per service and process,
shared by every request, and the two streaming calls wrapped so that their failures arrive
as `RegistryError` like those of unary calls (`artifactstore.rpc.call`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from artifactstore import rpc
from artifactstore.blob.v1 import blob_pb2, blob_pb2_grpc
from artifactstore.config import Settings
from artifactstore.errors import RegistryError
from artifactstore.iam.v1 import iam_pb2_grpc
from artifactstore.metadata.v1 import gc_pb2_grpc, metadata_pb2_grpc
from artifactstore.scan.v1 import scan_pb2_grpc

if TYPE_CHECKING:
    from artifactstore.blob.v1.blob_pb2_grpc import BlobServiceAsyncStub
    from artifactstore.iam.v1.iam_pb2_grpc import IamServiceAsyncStub
    from artifactstore.metadata.v1.gc_pb2_grpc import MetadataGcServiceAsyncStub
    from artifactstore.metadata.v1.metadata_pb2_grpc import MetadataServiceAsyncStub
    from artifactstore.scan.v1.scan_pb2_grpc import ScanServiceAsyncStub


def translate(err: grpc.aio.AioRpcError) -> Exception:
    """The `RegistryError` a failed call carried, or the call's own error when it carried
    none (a service that is down, for instance)."""
    return RegistryError.from_rpc_error(err) or err


@dataclass(frozen=True)
class Clients:
    """Stubs of the services behind the gateway."""

    metadata: MetadataServiceAsyncStub
    # metadata_svc's GC side: commits in flight (so GC spares their blobs) and repository
    # deletion.
    metadata_gc: MetadataGcServiceAsyncStub
    blob: BlobServiceAsyncStub
    # The authorisation service: metadata_svc's IamService unless ARTS_IAM_ADDRESS names
    # another implementation of the same contract.
    iam: IamServiceAsyncStub
    # Vulnerability scan results and requests (the gateway's readiness does not depend on
    # it: pushes and pulls never wait for scanning).
    scan: ScanServiceAsyncStub
    # Health checking of each backend, by the service it reaches.
    health: dict[str, Any]

    async def read_blob(self, digest: str, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        """Yield the bytes [offset, offset+length) of a canonical blob (length 0: to the
        end) as blob_svc streams them. Close the iterator (`contextlib.aclosing`) when
        stopping early, so that the call is cancelled rather than left streaming."""
        call = self.blob.ReadBlob(
            blob_pb2.ReadBlobRequest(digest=digest, offset=offset, length=length)
        )
        try:
            async for message in call:
                yield message.data
        except grpc.aio.AioRpcError as err:
            raise translate(err) from None
        finally:
            call.cancel()

    async def write_upload(
        self, upload_id: str, chunks: AsyncIterator[bytes], offset: int | None = None
    ) -> int:
        """Append `chunks` to an upload session and return the session's size after it.

        With `offset`, blob_svc appends only if the session holds exactly that many bytes
        (else RANGE_INVALID, nothing appended). blob_svc starts the session's bytes if
        they do not exist yet: the caller has had metadata_svc confirm the session.
        """
        header = (
            blob_pb2.UploadHeader(upload_id=upload_id, start=True)
            if offset is None
            else blob_pb2.UploadHeader(upload_id=upload_id, offset=offset, start=True)
        )
        return await self._write_upload(
            header, (blob_pb2.WriteUploadRequest(data=chunk) async for chunk in chunks)
        )

    async def announce_appends(self, upload_id: str, sizes: AsyncIterator[int]) -> int:
        """Have blob_svc hash the bytes the caller appends to session `upload_id`'s file
        itself, holding its lock (blob.proto, LocateUpload), up to each size of `sizes` as
        it comes; the session's size after them."""
        header = blob_pb2.UploadHeader(upload_id=upload_id, appended_by_caller=True)
        return await self._write_upload(
            header, (blob_pb2.WriteUploadRequest(appended=size) async for size in sizes)
        )

    async def _write_upload(
        self, header: blob_pb2.UploadHeader, parts: AsyncIterator[blob_pb2.WriteUploadRequest]
    ) -> int:
        async def messages() -> AsyncIterator[blob_pb2.WriteUploadRequest]:
            yield blob_pb2.WriteUploadRequest(header=header)
            async for part in parts:
                yield part

        status = await rpc.call(self.blob.WriteUpload(messages()))
        return status.size


@contextlib.asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[Clients]:
    """Open the channels to metadata_svc, blob_svc, the IAM service and scan_svc (one per
    distinct address) for the life of the context.

    Channels connect lazily: a service that is not up yet only fails the calls made to
    it (UNAVAILABLE), never the gateway's start.
    """
    channels = {
        address: rpc.channel(address, unary_timeout=settings.rpc_timeout_seconds)
        for address in (
            settings.metadata_address,
            settings.blob_address,
            settings.iam_address,
            settings.scan_address,
        )
    }
    try:
        yield Clients(
            metadata=metadata_pb2_grpc.MetadataServiceStub(channels[settings.metadata_address]),
            metadata_gc=gc_pb2_grpc.MetadataGcServiceStub(channels[settings.metadata_address]),
            blob=blob_pb2_grpc.BlobServiceStub(channels[settings.blob_address]),
            iam=iam_pb2_grpc.IamServiceStub(channels[settings.iam_address]),
            scan=scan_pb2_grpc.ScanServiceStub(channels[settings.scan_address]),
            # The typeshed stubs of grpcio-health-checking omit HealthStub's methods, hence Any.
            health={
                "metadata": health_pb2_grpc.HealthStub(channels[settings.metadata_address]),
                "blob": health_pb2_grpc.HealthStub(channels[settings.blob_address]),
                "iam": health_pb2_grpc.HealthStub(channels[settings.iam_address]),
            },
        )
    finally:
        for channel in channels.values():
            await channel.close()
