"""The sweep phase: remove what has stayed marked past its grace, each removal checked again
in the metadata transaction that makes it; hand canonical blobs whose last link went to
the canonical queue; and remove upload sessions that were abandoned or expired, with
their bytes.

In a dry run nothing is removed and nothing enqueued: the counts say what would be, and
the bytes a canonical blob would free are those of the blobs whose every remaining link
this sweep would remove, or that are marked already.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from artifactstore.blob.v1 import blob_pb2
from artifactstore.errors import Reason, RegistryError
from artifactstore.metadata.v1 import gc_pb2 as md
from artifactstore.rpc import call
from gc_svc.backends import Backends
from gc_svc.mark import MAX_LISTING
from gc_svc.progress import (
    ABANDONED_UPLOADS,
    EXPIRED_UPLOADS,
    ORPHANED_BLOBS,
    UNTAGGED_MANIFESTS,
    Cycle,
)

log = logging.getLogger(__name__)

# AbortStaleMultipartUploads refuses younger ages (blob.proto): a write or commit in
# progress may be that recent.
MIN_MULTIPART_AGE_SECONDS = 60.0
# ExpiredUpload.reason (metadata/v1/gc.proto) → category.
_UPLOAD_CATEGORIES = {"abandoned": ABANDONED_UPLOADS, "expired": EXPIRED_UPLOADS}


async def sweep(b: Backends, cycle: Cycle) -> None:
    """Remove marked manifests past the retention period (when one is set), then marked
    links and canonical blobs past the pending grace."""
    retention = b.settings.gc_untagged_retention_seconds
    if retention is not None:
        await _sweep_manifests(b, cycle, retention)
    would_free = await _sweep_links(b, cycle)
    await _sweep_blob_marks(b, cycle, would_free)


async def _sweep_manifests(b: Backends, cycle: Cycle, retention: float) -> None:
    cursor = b""
    while True:
        reply = await call(
            b.gc.SweepManifests(
                md.SweepManifestsRequest(
                    directory=b.directory,
                    cursor=cursor,
                    batch=b.batch,
                    retention_seconds=retention,
                    dry_run=cycle.dry_run,
                )
            )
        )
        # A manifest lives in metadata only: removing it frees its bytes.
        b.progress.record(
            UNTAGGED_MANIFESTS,
            cycle,
            swept=reply.swept,
            reclaimed=reply.swept,
            size=reply.swept_bytes,
        )
        if reply.done:
            return
        cursor = reply.cursor


async def _sweep_links(b: Backends, cycle: Cycle) -> dict[str, int]:
    """Sweep the links; in a dry run, return the digests (with sizes) whose last link the
    sweep would remove."""
    cursor = b""
    due: Counter[str] = Counter()
    sizes: dict[str, int] = {}
    links_left: dict[str, int] = {}
    while True:
        reply = await call(
            b.gc.SweepLinks(
                md.SweepLinksRequest(
                    directory=b.directory,
                    cursor=cursor,
                    batch=b.batch,
                    grace_seconds=b.settings.gc_pending_grace_seconds,
                    canonical_queue=b.settings.gc_canonical_queue,
                    dry_run=cycle.dry_run,
                )
            )
        )
        b.progress.record(ORPHANED_BLOBS, cycle, swept=len(reply.links))
        for link in reply.links:
            due[link.digest] += 1
            sizes[link.digest] = link.size
            links_left[link.digest] = link.remaining_links
        if reply.done:
            break
        cursor = reply.cursor
    if not cycle.dry_run:
        return {}
    return {d: sizes[d] for d, n in due.items() if n >= links_left[d]}


async def _sweep_blob_marks(b: Backends, cycle: Cycle, would_free: dict[str, int]) -> None:
    cursor = b""
    marked: list[str] = []
    while True:
        reply = await call(
            b.gc.SweepBlobMarks(
                md.SweepBlobMarksRequest(
                    directory=b.directory,
                    cursor=cursor,
                    batch=b.batch,
                    grace_seconds=b.settings.gc_pending_grace_seconds,
                    canonical_queue=b.settings.gc_canonical_queue,
                    dry_run=cycle.dry_run,
                )
            )
        )
        marked.extend(reply.digests)
        if reply.done:
            break
        cursor = reply.cursor
    if not cycle.dry_run:
        return
    for digest in marked:
        if digest not in would_free:
            try:
                info = await call(b.blob.StatBlob(blob_pb2.StatBlobRequest(digest=digest)))
            except RegistryError as err:
                if err.reason != Reason.BLOB_UNKNOWN:
                    raise
                continue
            would_free[digest] = info.size
    b.progress.record(
        ORPHANED_BLOBS, cycle, reclaimed=len(would_free), size=sum(would_free.values())
    )


async def sweep_uploads(b: Backends, cycle: Cycle) -> None:
    """Remove upload sessions idle for ARTS_GC_UPLOAD_IDLE_SECS or open for longer than
    ARTS_GC_UPLOAD_TIMEOUT_SECS, then the upload directories in storage that metadata
    does not know (their metadata went, their bytes did not: a crash in between) once
    they are idle as long, then (object storage) multipart uploads as old that a killed
    blob_svc left unfinished."""
    await _expire_uploads(b, cycle)
    await _remove_unknown_uploads(b, cycle)
    if not cycle.dry_run:
        older_than = max(b.settings.gc_upload_idle_seconds, MIN_MULTIPART_AGE_SECONDS)
        reply = await call(
            b.blob.AbortStaleMultipartUploads(
                blob_pb2.AbortStaleMultipartUploadsRequest(older_than_seconds=older_than)
            )
        )
        b.progress.record(ABANDONED_UPLOADS, cycle, marked=reply.aborted, reclaimed=reply.aborted)


async def _expire_uploads(b: Backends, cycle: Cycle) -> None:
    settings = b.settings
    cursor = b""
    while True:
        reply = await call(
            b.gc.ExpireUploads(
                md.ExpireUploadsRequest(
                    directory=b.directory,
                    cursor=cursor,
                    batch=b.batch,
                    idle_seconds=settings.gc_upload_idle_seconds,
                    timeout_seconds=settings.gc_upload_timeout_seconds,
                    dry_run=cycle.dry_run,
                )
            )
        )
        for upload in reply.uploads:
            category = _UPLOAD_CATEGORIES[upload.reason]
            if cycle.dry_run:
                size = await b.upload_size(upload.upload_id)
                b.progress.record(category, cycle, marked=1, swept=1, reclaimed=1, size=size)
                continue
            # The record is gone already; its bytes follow (or wait for the unknown-upload
            # sweep, should this process die first).
            freed = await b.cancel_upload(upload.upload_id)
            b.progress.record(
                category,
                cycle,
                marked=1,
                swept=1,
                reclaimed=int(freed is not None),
                size=freed or 0,
            )
        if reply.done:
            return
        cursor = reply.cursor


async def _remove_unknown_uploads(b: Backends, cycle: Cycle) -> None:
    idle_before = time.time() - b.settings.gc_upload_idle_seconds
    after = ""
    while True:
        page = await call(
            b.blob.ListUploads(
                blob_pb2.ListUploadsRequest(after=after, limit=min(b.batch, MAX_LISTING))
            )
        )
        if not page.uploads:
            return
        after = page.uploads[-1].upload_id
        idle = [u for u in page.uploads if u.modified_at < idle_before]
        if idle:
            reply = await call(
                b.gc.FindUploads(
                    md.FindUploadsRequest(
                        directory=b.directory, upload_ids=[u.upload_id for u in idle]
                    )
                )
            )
            known = set(reply.known)
            for upload in idle:
                if upload.upload_id in known:
                    continue
                if cycle.dry_run:
                    freed: int | None = upload.size
                else:
                    freed = await b.cancel_upload(upload.upload_id)
                    log.info("removed upload %s that metadata no longer knows", upload.upload_id)
                b.progress.record(
                    ABANDONED_UPLOADS,
                    cycle,
                    marked=1,
                    reclaimed=int(freed is not None),
                    size=freed or 0,
                )
        if not page.more:
            return
