"""The MetadataGcService servicer: proto messages in, GcStore calls, proto messages out.

Domain errors are `RegistryError`s raised by the store; the server's interceptor turns
them into statuses with an ErrorInfo.
"""

from __future__ import annotations

import grpc

from artifactstore.metadata.v1 import gc_pb2 as pb
from artifactstore.metadata.v1 import gc_pb2_grpc
from metadata_svc.gc import Expired, GcStore, MarkCounts, SweptLink

Context = grpc.aio.ServicerContext


def _mark(counts: MarkCounts) -> pb.MarkResponse:
    return pb.MarkResponse(
        cursor=counts.cursor,
        done=counts.done,
        scanned=counts.scanned,
        marked=counts.marked,
        already_marked=counts.already_marked,
        unmarked=counts.unmarked,
    )


def _links(links: list[SweptLink]) -> list[pb.SweptLink]:
    return [
        pb.SweptLink(
            repository=link.repository,
            digest=link.digest,
            size=link.size,
            remaining_links=link.remaining_links,
        )
        for link in links
    ]


def _uploads(uploads: list[Expired]) -> list[pb.ExpiredUpload]:
    return [
        pb.ExpiredUpload(
            upload_id=u.upload_id,
            repository=u.repository,
            reason=u.reason,
            started_at=u.started_at,
            last_activity_at=u.last_activity_at,
        )
        for u in uploads
    ]


class MetadataGcServicer(gc_pb2_grpc.MetadataGcServiceServicer):
    """Answers MetadataGcService calls from the GC store (contract: metadata/v1/gc.proto)."""

    def __init__(self, store: GcStore) -> None:
        self._store = store

    async def MarkLinks(self, request: pb.MarkLinksRequest, context: Context) -> pb.MarkResponse:
        counts = await self._store.mark_links(
            request.directory, request.cursor, request.batch, request.dry_run
        )
        return _mark(counts)

    async def MarkManifests(
        self, request: pb.MarkManifestsRequest, context: Context
    ) -> pb.MarkResponse:
        counts = await self._store.mark_manifests(
            request.directory, request.cursor, request.batch, request.dry_run
        )
        return _mark(counts)

    async def MarkBlobs(
        self, request: pb.MarkBlobsRequest, context: Context
    ) -> pb.MarkBlobsResponse:
        counts = await self._store.mark_blobs(
            request.directory, list(request.digests), request.dry_run
        )
        return pb.MarkBlobsResponse(
            marked=counts.marked, already_marked=counts.already_marked, unmarked=counts.unmarked
        )

    async def SweepManifests(
        self, request: pb.SweepManifestsRequest, context: Context
    ) -> pb.SweepManifestsResponse:
        page = await self._store.sweep_manifests(
            request.directory,
            request.cursor,
            request.batch,
            request.retention_seconds,
            request.dry_run,
        )
        return pb.SweepManifestsResponse(
            cursor=page.cursor, done=page.done, swept=page.swept, swept_bytes=page.swept_bytes
        )

    async def SweepLinks(
        self, request: pb.SweepLinksRequest, context: Context
    ) -> pb.SweepLinksResponse:
        page = await self._store.sweep_links(
            request.directory,
            request.cursor,
            request.batch,
            request.grace_seconds,
            request.canonical_queue,
            request.dry_run,
        )
        return pb.SweepLinksResponse(
            cursor=page.cursor, done=page.done, links=_links(page.links), unmarked=page.unmarked
        )

    async def SweepBlobMarks(
        self, request: pb.SweepBlobMarksRequest, context: Context
    ) -> pb.SweepBlobMarksResponse:
        page = await self._store.sweep_blob_marks(
            request.directory,
            request.cursor,
            request.batch,
            request.grace_seconds,
            request.canonical_queue,
            request.dry_run,
        )
        return pb.SweepBlobMarksResponse(cursor=page.cursor, done=page.done, digests=page.digests)

    async def BeginBlobDeletion(
        self, request: pb.BeginBlobDeletionRequest, context: Context
    ) -> pb.BeginBlobDeletionResponse:
        kept = await self._store.begin_blob_deletion(
            request.directory,
            request.digest,
            request.queue,
            request.task_id,
            request.lease_id,
            request.lease_seconds,
        )
        return pb.BeginBlobDeletionResponse(delete=not kept, kept_because=kept)

    async def FinishBlobDeletion(
        self, request: pb.FinishBlobDeletionRequest, context: Context
    ) -> pb.FinishBlobDeletionResponse:
        await self._store.finish_blob_deletion(
            request.directory, request.digest, request.queue, request.task_id, request.lease_id
        )
        return pb.FinishBlobDeletionResponse()

    async def BeginBlobCommit(
        self, request: pb.BeginBlobCommitRequest, context: Context
    ) -> pb.BeginBlobCommitResponse:
        await self._store.begin_blob_commit(
            request.directory,
            request.digest,
            request.upload_id,
            request.repository,
            start=request.start,
        )
        return pb.BeginBlobCommitResponse()

    async def DeleteRepository(
        self, request: pb.DeleteRepositoryRequest, context: Context
    ) -> pb.DeleteRepositoryResponse:
        task_id, deleted_at = await self._store.delete_repository(
            request.directory, request.repository, request.queue
        )
        return pb.DeleteRepositoryResponse(
            repository=request.repository, task_id=task_id, deleted_at=deleted_at
        )

    async def PurgeRepository(
        self, request: pb.PurgeRepositoryRequest, context: Context
    ) -> pb.PurgeRepositoryResponse:
        page = await self._store.purge_repository(
            request.directory,
            request.repository,
            request.cursor,
            request.batch,
            request.canonical_queue,
            (request.queue, request.task_id, request.lease_id, request.lease_seconds),
        )
        return pb.PurgeRepositoryResponse(
            cursor=page.cursor,
            done=page.done,
            links=_links(page.links),
            uploads=_uploads(page.uploads),
        )

    async def ExpireUploads(
        self, request: pb.ExpireUploadsRequest, context: Context
    ) -> pb.ExpireUploadsResponse:
        page = await self._store.expire_uploads(
            request.directory,
            request.cursor,
            request.batch,
            request.idle_seconds,
            request.timeout_seconds,
            request.dry_run,
        )
        return pb.ExpireUploadsResponse(
            cursor=page.cursor, done=page.done, uploads=_uploads(page.uploads)
        )

    async def FindUploads(
        self, request: pb.FindUploadsRequest, context: Context
    ) -> pb.FindUploadsResponse:
        known = await self._store.find_uploads(request.directory, list(request.upload_ids))
        return pb.FindUploadsResponse(known=known)
