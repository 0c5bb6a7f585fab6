"""The gRPC face of the blob store: translates artifactstore.blob.v1 messages to and from
BlobStore calls. Errors are RegistryErrors raised by the store (or here, for malformed
streams); the interceptor of artifactstore.rpc turns them into statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, Literal

import grpc

from artifactstore.blob.v1 import blob_pb2, blob_pb2_grpc
from artifactstore.digests import Digest
from artifactstore.errors import Reason, RegistryError
from blob_svc.store import BlobStore

SERVICE_NAME: str = blob_pb2.DESCRIPTOR.services_by_name["BlobService"].full_name
# The most entries a listing answers at once.
MAX_LIST = 1000
# Presigned URLs are meant to be short-lived.
MAX_PRESIGN_SECONDS = 3600
# A younger multipart upload may belong to a write or commit still in progress.
MIN_MULTIPART_AGE_SECONDS = 60.0

Context = grpc.aio.ServicerContext[Any, Any]


class BlobServicer(blob_pb2_grpc.BlobServiceServicer):
    """artifactstore.blob.v1.BlobService over one BlobStore (contract: blob.proto)."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store

    async def StartUpload(
        self, request: blob_pb2.StartUploadRequest, context: Context
    ) -> blob_pb2.UploadStatus:
        size = await self._store.start_upload(request.upload_id)
        return blob_pb2.UploadStatus(upload_id=request.upload_id, size=size)

    async def WriteUpload(
        self, request_iterator: AsyncIterator[blob_pb2.WriteUploadRequest], context: Context
    ) -> blob_pb2.UploadStatus:
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None or first.WhichOneof("part") != "header":
            raise RegistryError(
                Reason.BLOB_UPLOAD_INVALID, "the first WriteUpload message must be the header"
            )
        header = first.header
        if header.appended_by_caller:
            size = await self._store.hash_appended(header.upload_id, _parts(messages, "appended"))
        else:
            offset = header.offset if header.HasField("offset") else None
            size = await self._store.write_upload(
                header.upload_id, offset, _parts(messages, "data"), start=header.start
            )
        return blob_pb2.UploadStatus(upload_id=header.upload_id, size=size)

    async def LocateUpload(
        self, request: blob_pb2.LocateUploadRequest, context: Context
    ) -> blob_pb2.UploadLocation:
        path, size = await self._store.locate_upload(request.upload_id, start=request.start)
        return blob_pb2.UploadLocation(path=path, size=size)

    async def GetUploadStatus(
        self, request: blob_pb2.GetUploadStatusRequest, context: Context
    ) -> blob_pb2.UploadStatus:
        size = await self._store.upload_size(request.upload_id)
        return blob_pb2.UploadStatus(upload_id=request.upload_id, size=size)

    async def CommitUpload(
        self, request: blob_pb2.CommitUploadRequest, context: Context
    ) -> blob_pb2.BlobInfo:
        digest = Digest.parse(request.digest)
        info = await self._store.commit_upload(
            request.upload_id, digest, request.data, start=request.start
        )
        return blob_pb2.BlobInfo(digest=str(info.digest), size=info.size)

    async def CancelUpload(
        self, request: blob_pb2.CancelUploadRequest, context: Context
    ) -> blob_pb2.CancelUploadResponse:
        cancelled = await self._store.cancel_upload(request.upload_id)
        return blob_pb2.CancelUploadResponse(cancelled=cancelled)

    async def StatBlob(
        self, request: blob_pb2.StatBlobRequest, context: Context
    ) -> blob_pb2.BlobInfo:
        digest = Digest.parse(request.digest)
        size = await self._store.stat(digest)
        return blob_pb2.BlobInfo(digest=str(digest), size=size)

    async def StatBlobs(
        self, request: blob_pb2.StatBlobsRequest, context: Context
    ) -> blob_pb2.StatBlobsResponse:
        if not 1 <= len(request.digests) <= MAX_LIST:
            raise RegistryError(
                Reason.PAGINATION_INVALID, f"between 1 and {MAX_LIST} digests at once"
            )
        digests = [Digest.parse(d) for d in request.digests]
        sizes = await self._store.stat_many(digests)
        return blob_pb2.StatBlobsResponse(
            blobs=[
                blob_pb2.BlobInfo(digest=str(d), size=size, path=self._store.local_path(d))
                for d, size in zip(digests, sizes, strict=True)
                if size is not None
            ]
        )

    async def ReadBlob(
        self, request: blob_pb2.ReadBlobRequest, context: Context
    ) -> AsyncIterator[blob_pb2.ReadBlobResponse]:
        digest = Digest.parse(request.digest)
        length = request.length if request.length != 0 else None
        chunks = self._store.read(digest, request.offset, length)
        try:
            async for chunk in chunks:
                yield blob_pb2.ReadBlobResponse(data=chunk)
        finally:
            await chunks.aclose()

    async def DeleteBlob(
        self, request: blob_pb2.DeleteBlobRequest, context: Context
    ) -> blob_pb2.DeleteBlobResponse:
        freed = await self._store.reclaim(Digest.parse(request.digest))
        return blob_pb2.DeleteBlobResponse(deleted=freed is not None, size=freed or 0)

    async def ListBlobs(
        self, request: blob_pb2.ListBlobsRequest, context: Context
    ) -> blob_pb2.ListBlobsResponse:
        after = Digest.parse(request.after) if request.after else None
        blobs, more = await self._store.list_blobs(after, _limit(request.limit))
        return blob_pb2.ListBlobsResponse(
            blobs=[
                blob_pb2.StoredBlob(digest=str(b.digest), size=b.size, modified_at=b.modified_at)
                for b in blobs
            ],
            more=more,
        )

    async def ListUploads(
        self, request: blob_pb2.ListUploadsRequest, context: Context
    ) -> blob_pb2.ListUploadsResponse:
        uploads, more = await self._store.list_uploads(request.after, _limit(request.limit))
        return blob_pb2.ListUploadsResponse(
            uploads=[
                blob_pb2.StoredUpload(upload_id=u.upload_id, size=u.size, modified_at=u.modified_at)
                for u in uploads
            ],
            more=more,
        )

    async def PresignBlob(
        self, request: blob_pb2.PresignBlobRequest, context: Context
    ) -> blob_pb2.PresignBlobResponse:
        digest = Digest.parse(request.digest)
        if not 1 <= request.expires_seconds <= MAX_PRESIGN_SECONDS:
            raise RegistryError(
                Reason.UNSUPPORTED,
                f"expires_seconds must be between 1 and {MAX_PRESIGN_SECONDS}",
            )
        url = await self._store.presign(digest, request.expires_seconds)
        if url is None:
            raise RegistryError(Reason.UNSUPPORTED, "this storage cannot presign URLs")
        return blob_pb2.PresignBlobResponse(url=url)

    async def LocateBlob(
        self, request: blob_pb2.LocateBlobRequest, context: Context
    ) -> blob_pb2.BlobLocation:
        path, size = await self._store.locate(Digest.parse(request.digest))
        return blob_pb2.BlobLocation(path=path, size=size)

    async def AbortStaleMultipartUploads(
        self, request: blob_pb2.AbortStaleMultipartUploadsRequest, context: Context
    ) -> blob_pb2.AbortStaleMultipartUploadsResponse:
        if request.older_than_seconds < MIN_MULTIPART_AGE_SECONDS:
            raise RegistryError(
                Reason.UNSUPPORTED,
                f"older_than_seconds must be at least {MIN_MULTIPART_AGE_SECONDS}",
            )
        aborted = await self._store.abort_stale_multipart_uploads(
            timedelta(seconds=request.older_than_seconds)
        )
        return blob_pb2.AbortStaleMultipartUploadsResponse(aborted=aborted)


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIST:
        raise RegistryError(
            Reason.PAGINATION_INVALID, f"limit must be between 1 and {MAX_LIST}, not {limit}"
        )
    return limit


async def _parts(
    messages: AsyncIterator[blob_pb2.WriteUploadRequest], part: Literal["data", "appended"]
) -> AsyncIterator[Any]:
    """The `part` of each message after the header (bytes, or sizes appended by the
    caller); a message with another part is an error."""
    async for message in messages:
        if message.WhichOneof("part") != part:
            raise RegistryError(
                Reason.BLOB_UPLOAD_INVALID,
                f"every WriteUpload message after the header must carry {part}",
            )
        yield getattr(message, part)
