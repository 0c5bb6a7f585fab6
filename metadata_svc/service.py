"""The MetadataService servicer: proto messages in, store calls, proto messages out.

Domain errors are `RegistryError`s raised by the store; the server's interceptor turns
them into statuses with an ErrorInfo.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from artifactstore.metadata.v1 import metadata_pb2 as pb
from artifactstore.metadata.v1 import metadata_pb2_grpc
from metadata_svc.changes import ChangeFeed, excusing_caller
from metadata_svc.queues import QueueStore, Task
from metadata_svc.scans_service import policy_to_pb, summary_to_pb
from metadata_svc.store import MetadataStore, UploadRecord

Context = grpc.aio.ServicerContext


def _upload(record: UploadRecord) -> pb.UploadSession:
    return pb.UploadSession(
        upload_id=record.upload_id,
        repository=record.repository,
        started_at=record.started_at,
        last_activity_at=record.last_activity_at,
    )


def _task(task: Task) -> pb.Task:
    return pb.Task(
        task_id=task.task_id,
        queue=task.queue,
        payload=task.payload,
        enqueued_at=task.enqueued_at,
        available_at=task.available_at,
        attempts=task.attempts,
        max_attempts=task.max_attempts,
        dedup_key=task.dedup_key,
        lease_id=task.lease_id,
        leased_by=task.leased_by,
        last_error=task.last_error,
        trace_context=task.trace_context,
    )


class MetadataServicer(metadata_pb2_grpc.MetadataServiceServicer):
    """Answers MetadataService calls from the store."""

    def __init__(
        self, store: MetadataStore, queues: QueueStore, changes: ChangeFeed | None
    ) -> None:
        self._store = store
        self._queues = queues
        # None when the store has other writers: watchers are told to keep no copies.
        self._changes = changes

    async def PutManifest(
        self, request: pb.PutManifestRequest, context: Context
    ) -> pb.PutManifestResponse:
        with excusing_caller(context):
            record = await self._store.put_manifest(
                request.repository, request.reference, request.media_type, request.content
            )
        return pb.PutManifestResponse(digest=record.digest, subject_digest=record.subject)

    async def GetManifest(self, request: pb.GetManifestRequest, context: Context) -> pb.Manifest:
        manifest = await self._store.get_manifest(
            request.repository,
            request.reference,
            with_content=request.include_content,
            with_scan_policy=request.include_scan_policy,
            with_vulnerabilities=request.include_vulnerabilities,
        )
        r = manifest.record
        reply = pb.Manifest(
            digest=r.digest,
            media_type=r.media_type,
            size=r.size,
            content=manifest.content,
            subject_digest=r.subject,
            artifact_type=r.artifact_type,
        )
        scan = manifest.scan
        if scan is not None and scan.policy is not None:
            reply.scan_policy.CopyFrom(policy_to_pb(scan.policy))
        if scan is not None and (scan.summary is not None or request.include_vulnerabilities):
            reply.vulnerabilities.CopyFrom(
                summary_to_pb(scan.summary, request.repository, r.digest)
            )
        return reply

    async def WatchManifestChanges(
        self, request_iterator: AsyncIterator[pb.ManifestChangesAck], context: Context
    ) -> AsyncIterator[pb.ManifestChanges]:
        if self._changes is None:
            yield pb.ManifestChanges(cacheable=False)
            return
        async for message in self._changes.watch(request_iterator):
            yield message

    async def DeleteManifest(
        self, request: pb.DeleteManifestRequest, context: Context
    ) -> pb.DeleteManifestResponse:
        with excusing_caller(context):
            digest, tags = await self._store.delete_manifest(request.repository, request.reference)
        return pb.DeleteManifestResponse(digest=digest, removed_tags=tags)

    async def ListTags(self, request: pb.ListTagsRequest, context: Context) -> pb.ListTagsResponse:
        tags, more = await self._store.list_tags(request.repository, request.limit, request.last)
        return pb.ListTagsResponse(tags=tags, more=more)

    async def ListRepositories(
        self, request: pb.ListRepositoriesRequest, context: Context
    ) -> pb.ListRepositoriesResponse:
        names, more = await self._store.list_repositories(request.limit, request.last)
        return pb.ListRepositoriesResponse(repositories=names, more=more)

    async def ListReferrers(
        self, request: pb.ListReferrersRequest, context: Context
    ) -> pb.ListReferrersResponse:
        found = await self._store.list_referrers(
            request.repository, request.digest, request.artifact_type
        )
        return pb.ListReferrersResponse(
            referrers=[
                pb.Descriptor(
                    media_type=r.media_type,
                    digest=r.digest,
                    size=r.size,
                    artifact_type=r.artifact_type,
                    annotations=r.annotations,
                )
                for r in found
            ]
        )

    async def LinkBlob(self, request: pb.LinkBlobRequest, context: Context) -> pb.BlobLink:
        with excusing_caller(context):
            await self._store.link_blob(
                request.repository, request.digest, request.size, request.upload_id
            )
        return pb.BlobLink(repository=request.repository, digest=request.digest, size=request.size)

    async def MountBlob(self, request: pb.MountBlobRequest, context: Context) -> pb.BlobLink:
        with excusing_caller(context):
            size = await self._store.mount_blob(
                request.repository, request.from_repository, request.digest
            )
        return pb.BlobLink(repository=request.repository, digest=request.digest, size=size)

    async def StatBlobLink(self, request: pb.StatBlobLinkRequest, context: Context) -> pb.BlobLink:
        size = await self._store.stat_blob_link(request.repository, request.digest)
        return pb.BlobLink(repository=request.repository, digest=request.digest, size=size)

    async def UnlinkBlob(
        self, request: pb.UnlinkBlobRequest, context: Context
    ) -> pb.UnlinkBlobResponse:
        with excusing_caller(context):
            await self._store.unlink_blob(request.repository, request.digest)
        return pb.UnlinkBlobResponse()

    async def CreateUpload(
        self, request: pb.CreateUploadRequest, context: Context
    ) -> pb.UploadSession:
        return _upload(await self._store.create_upload(request.repository))

    async def GetUpload(self, request: pb.GetUploadRequest, context: Context) -> pb.UploadSession:
        record = await self._store.get_upload(
            request.repository, request.upload_id, touch=request.touch, start=request.start
        )
        return _upload(record)

    async def DeleteUpload(
        self, request: pb.DeleteUploadRequest, context: Context
    ) -> pb.DeleteUploadResponse:
        await self._store.delete_upload(request.repository, request.upload_id)
        return pb.DeleteUploadResponse()

    async def Enqueue(self, request: pb.EnqueueRequest, context: Context) -> pb.Task:
        task = await self._queues.enqueue(
            request.queue,
            request.payload,
            request.dedup_key,
            request.delay_seconds,
            request.max_attempts,
            dict(request.trace_context),
        )
        return _task(task)

    async def LeaseTasks(
        self, request: pb.LeaseTasksRequest, context: Context
    ) -> pb.LeaseTasksResponse:
        tasks = await self._queues.lease(
            request.queue, request.worker, request.batch, request.lease_seconds
        )
        return pb.LeaseTasksResponse(tasks=[_task(t) for t in tasks])

    async def CompleteTask(
        self, request: pb.CompleteTaskRequest, context: Context
    ) -> pb.CompleteTaskResponse:
        await self._queues.complete(request.queue, request.task_id, request.lease_id)
        return pb.CompleteTaskResponse()

    async def RetryTask(self, request: pb.RetryTaskRequest, context: Context) -> pb.Task:
        task = await self._queues.retry(
            request.queue, request.task_id, request.lease_id, request.error, request.delay_seconds
        )
        return _task(task)

    async def ExtendLease(self, request: pb.ExtendLeaseRequest, context: Context) -> pb.Task:
        task = await self._queues.extend(
            request.queue, request.task_id, request.lease_id, request.seconds
        )
        return _task(task)

    async def GetQueueStats(
        self, request: pb.GetQueueStatsRequest, context: Context
    ) -> pb.QueueStats:
        stats = await self._queues.stats(request.queue)
        return pb.QueueStats(
            queue=request.queue,
            pending=stats.pending,
            parked=stats.parked,
            leased=stats.leased,
            oldest_wait_seconds=stats.oldest_wait,
        )

    async def ListParkedTasks(
        self, request: pb.ListParkedTasksRequest, context: Context
    ) -> pb.ListParkedTasksResponse:
        tasks = await self._queues.parked(request.queue, request.limit)
        return pb.ListParkedTasksResponse(tasks=[_task(t) for t in tasks])
