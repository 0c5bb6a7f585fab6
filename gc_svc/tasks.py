"""The GC queues' tasks: deleted repositories (ARTS_GC_REPOSITORY_QUEUE) and canonical
blobs whose last link went (ARTS_GC_CANONICAL_QUEUE).

Tasks are leased (ARTS_GC_LEASE_SECS), so several replicas share a queue without doing a
task twice at once; a task whose worker died becomes leasable again when its lease runs
out and is resumed from where metadata says it is. Each ends done, retried later with
backoff, or (after failing too often) parked; a blob already gone, a link already
removed, a task done twice are all fine.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from artifactstore import telemetry
from artifactstore.blob.v1 import blob_pb2
from artifactstore.errors import RegistryError
from artifactstore.metadata.v1 import gc_pb2 as gc
from artifactstore.metadata.v1 import metadata_pb2 as md
from artifactstore.rpc import call
from gc_svc.backends import Backends
from gc_svc.progress import DELETED_REPOSITORIES, ORPHANED_BLOBS

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

# Tasks leased at once by one worker.
LEASE_BATCH = 16
MAX_RETRY_SECONDS = 300.0

Handler = Callable[[Backends, md.Task], Awaitable[None]]


class LeaseRunningOut(Exception):
    """Too little of the lease is left to delete bytes safely; another worker takes over."""


async def delete_blob(b: Backends, task: md.Task) -> None:
    """A canonical-queue task: delete the digest's bytes if metadata, under this task's
    lease, finds no link and no commit of it (metadata_svc.gc explains the race)."""
    payload = json.loads(task.payload)
    digest = payload["digest"]
    category = DELETED_REPOSITORIES if payload.get("cause") == "repository" else ORPHANED_BLOBS
    lease = b.settings.gc_lease_seconds
    renewed = time.monotonic()
    decision = await call(
        b.gc.BeginBlobDeletion(
            gc.BeginBlobDeletionRequest(
                directory=b.directory,
                digest=digest,
                queue=task.queue,
                task_id=task.task_id,
                lease_id=task.lease_id,
                lease_seconds=lease,
            )
        )
    )
    if not decision.delete:
        log.debug("blob %s kept: %s", digest, decision.kept_because)
        return
    # The lease is the only thing keeping another worker off this digest: delete only with
    # half of it left, and give blob_svc a quarter, so the bytes go while it is ours.
    if time.monotonic() - renewed > lease / 2:
        raise LeaseRunningOut(f"lease of task {task.task_id} too short to delete {digest}")
    deleted = await call(
        b.blob.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest), timeout=lease / 4)
    )
    await call(
        b.gc.FinishBlobDeletion(
            gc.FinishBlobDeletionRequest(
                directory=b.directory,
                digest=digest,
                queue=task.queue,
                task_id=task.task_id,
                lease_id=task.lease_id,
            )
        )
    )
    if deleted.deleted:
        b.progress.record(category, reclaimed=1, size=deleted.size)


async def purge_repository(b: Backends, task: md.Task) -> None:
    """A repository-queue task: remove a deleted repository's links (their blobs go to the
    canonical queue) and upload sessions (with their bytes), batch by batch."""
    repository = json.loads(task.payload)["repository"]
    cursor = b""
    while True:
        page = await call(
            b.gc.PurgeRepository(
                gc.PurgeRepositoryRequest(
                    directory=b.directory,
                    repository=repository,
                    cursor=cursor,
                    batch=b.batch,
                    canonical_queue=b.settings.gc_canonical_queue,
                    queue=task.queue,
                    task_id=task.task_id,
                    lease_id=task.lease_id,
                    lease_seconds=b.settings.gc_lease_seconds,
                )
            )
        )
        for upload in page.uploads:
            freed = await b.cancel_upload(upload.upload_id)
            if freed is not None:
                b.progress.record(DELETED_REPOSITORIES, reclaimed=1, size=freed)
        if page.done:
            b.progress.record(DELETED_REPOSITORIES, swept=1)
            log.info("deleted repository %s purged", repository)
            return
        cursor = page.cursor


async def run_batch(b: Backends, queue: str, handler: Handler) -> int:
    """Lease up to LEASE_BATCH tasks of `queue` and run each; return how many were leased.
    A task that fails is retried later with backoff (and parked by the queue once it has
    failed too often)."""
    leased = await call(
        b.metadata.LeaseTasks(
            md.LeaseTasksRequest(
                queue=queue,
                worker=b.worker,
                batch=LEASE_BATCH,
                lease_seconds=b.settings.gc_lease_seconds,
            )
        )
    )
    for task in leased.tasks:
        # A trace of its own per task, linked to the trace of whatever queued it (a
        # repository delete, a sweep).
        with _tracer.start_as_current_span(
            f"gc {queue}",
            context=otel_context.Context(),
            kind=SpanKind.CONSUMER,
            links=telemetry.links_to(dict(task.trace_context)),
            attributes={"messaging.destination.name": queue, "messaging.message.id": task.task_id},
        ) as span:
            try:
                await handler(b, task)
            except Exception as err:
                # Whatever went wrong, the task is retried and in the end parked: never stuck.
                span.record_exception(err)
                span.set_status(StatusCode.ERROR, str(err)[:200])
                await _retry(b, task, err)
    return len(leased.tasks)


async def _retry(b: Backends, task: md.Task, err: Exception) -> None:
    log.warning(
        "task %s on %s failed (attempt %d): %s", task.task_id, task.queue, task.attempts, err
    )
    delay = 0.0 if isinstance(err, LeaseRunningOut) else min(2.0**task.attempts, MAX_RETRY_SECONDS)
    try:
        await call(
            b.metadata.RetryTask(
                md.RetryTaskRequest(
                    queue=task.queue,
                    task_id=task.task_id,
                    lease_id=task.lease_id,
                    error=str(err)[:2000],
                    delay_seconds=delay,
                )
            )
        )
    except (RegistryError, grpc.aio.AioRpcError) as retry_err:
        # The lease is gone (another worker has the task) or metadata_svc is down: either
        # way the task becomes leasable again when its lease runs out.
        log.warning("task %s not rescheduled: %s", task.task_id, retry_err)


async def pending(b: Backends, queue: str) -> tuple[int, int]:
    """(pending, parked) tasks of `queue`."""
    stats = await call(b.metadata.GetQueueStats(md.GetQueueStatsRequest(queue=queue)))
    return stats.pending, stats.parked
