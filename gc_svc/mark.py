"""The mark phase: find what nothing references any more and mark it pending, with a
timestamp, in metadata. Every scan goes in batches of ARTS_GC_BATCH_SIZE keys, each one
transaction in metadata_svc, resuming from the cursor the previous batch answered."""

from __future__ import annotations

from artifactstore.blob.v1 import blob_pb2
from artifactstore.metadata.v1 import gc_pb2 as md
from artifactstore.rpc import call
from gc_svc.backends import Backends
from gc_svc.progress import ORPHANED_BLOBS, UNTAGGED_MANIFESTS, Cycle

# blob_svc answers listings of at most this many blobs.
MAX_LISTING = 1000


async def mark(b: Backends, cycle: Cycle) -> None:
    """Mark untagged manifests nothing live needs (only with a retention period), blob
    links no manifest references, and canonical blobs no repository links."""
    if b.settings.gc_untagged_retention_seconds is not None:
        await _mark_manifests(b, cycle)
    await _mark_links(b, cycle)
    await _mark_blobs(b, cycle)


async def _mark_manifests(b: Backends, cycle: Cycle) -> None:
    cursor = b""
    while True:
        reply = await call(
            b.gc.MarkManifests(
                md.MarkManifestsRequest(
                    directory=b.directory, cursor=cursor, batch=b.batch, dry_run=cycle.dry_run
                )
            )
        )
        b.progress.record(UNTAGGED_MANIFESTS, cycle, marked=reply.marked + reply.already_marked)
        if reply.done:
            return
        cursor = reply.cursor


async def _mark_links(b: Backends, cycle: Cycle) -> None:
    cursor = b""
    while True:
        reply = await call(
            b.gc.MarkLinks(
                md.MarkLinksRequest(
                    directory=b.directory, cursor=cursor, batch=b.batch, dry_run=cycle.dry_run
                )
            )
        )
        b.progress.record(ORPHANED_BLOBS, cycle, marked=reply.marked + reply.already_marked)
        if reply.done:
            return
        cursor = reply.cursor


async def _mark_blobs(b: Backends, cycle: Cycle) -> None:
    """Canonical blobs come from blob storage itself, so bytes that no link ever named (a
    commit whose link never came) are found too."""
    after = ""
    while True:
        page = await call(
            b.blob.ListBlobs(
                blob_pb2.ListBlobsRequest(after=after, limit=min(b.batch, MAX_LISTING))
            )
        )
        if page.blobs:
            reply = await call(
                b.gc.MarkBlobs(
                    md.MarkBlobsRequest(
                        directory=b.directory,
                        digests=[blob.digest for blob in page.blobs],
                        dry_run=cycle.dry_run,
                    )
                )
            )
            b.progress.record(ORPHANED_BLOBS, cycle, marked=reply.marked + reply.already_marked)
            after = page.blobs[-1].digest
        if not page.more:
            return
