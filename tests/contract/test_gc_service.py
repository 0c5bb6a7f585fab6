"""Contracts of garbage collection, against real processes: MetadataGcService
(protos/artifactstore/metadata/v1/gc.proto, served by metadata_svc) and GcService
(protos/artifactstore/gc/v1/gc.proto, served by gc_svc), with every error's status code
and ErrorInfo reason."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from artifactstore import mediatypes as mt
from artifactstore import rpc
from artifactstore.digests import sha256_of
from artifactstore.errors import Reason, RegistryError
from artifactstore.gc.v1 import gc_pb2, gc_pb2_grpc
from artifactstore.metadata.v1 import gc_pb2 as pb
from artifactstore.metadata.v1 import gc_pb2_grpc as pb_grpc
from artifactstore.metadata.v1 import metadata_pb2 as md
from artifactstore.metadata.v1 import metadata_pb2_grpc
from tests.contract.conftest import StartService, wait_serving

if TYPE_CHECKING:
    from artifactstore.gc.v1.gc_pb2_grpc import GcServiceAsyncStub
    from artifactstore.metadata.v1.gc_pb2_grpc import MetadataGcServiceAsyncStub
    from artifactstore.metadata.v1.metadata_pb2_grpc import MetadataServiceAsyncStub

CANONICAL = "test-canonical"
REPOSITORIES = "test-repositories"
CONFIG = str(sha256_of(b"config"))
LAYER = str(sha256_of(b"layer"))
SHARED = str(sha256_of(b"shared"))
GC_SERVICE = "artifactstore.gc.v1.GcService"


def image(*layers: str, config: str = CONFIG, **extra: object) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_IMAGE_CONFIG, "digest": config, "size": 6},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": 5}
                for d in layers
            ],
            **extra,
        }
    ).encode()


def index(*children: bytes) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {"mediaType": mt.OCI_MANIFEST, "digest": str(sha256_of(c)), "size": len(c)}
                for c in children
            ],
        }
    ).encode()


class Meta:
    """Both metadata_svc services on one channel, with the calls these tests repeat."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.md: MetadataServiceAsyncStub = metadata_pb2_grpc.MetadataServiceStub(channel)
        self.gc: MetadataGcServiceAsyncStub = pb_grpc.MetadataGcServiceStub(channel)

    async def link(self, repo: str, *digests: str, upload_id: str = "") -> None:
        for d in digests:
            await rpc.call(
                self.md.LinkBlob(
                    md.LinkBlobRequest(repository=repo, digest=d, size=5, upload_id=upload_id)
                )
            )

    async def put(self, repo: str, reference: str, body: bytes) -> str:
        reply = await rpc.call(
            self.md.PutManifest(
                md.PutManifestRequest(repository=repo, reference=reference, content=body)
            )
        )
        return reply.digest

    async def has_link(self, repo: str, digest: str) -> bool:
        try:
            await rpc.call(
                self.md.StatBlobLink(md.StatBlobLinkRequest(repository=repo, digest=digest))
            )
        except RegistryError as err:
            assert err.reason == Reason.BLOB_UNKNOWN
            return False
        return True

    async def mark_links(self, dry_run: bool = False) -> pb.MarkResponse:
        """Every batch of a link marking (batches of 2, so the cursor is exercised), summed."""
        total = pb.MarkResponse()
        while not total.done:
            reply = await rpc.call(
                self.gc.MarkLinks(
                    pb.MarkLinksRequest(cursor=total.cursor, batch=2, dry_run=dry_run)
                )
            )
            total.scanned += reply.scanned
            total.marked += reply.marked
            total.already_marked += reply.already_marked
            total.unmarked += reply.unmarked
            total.cursor, total.done = reply.cursor, reply.done
        return total

    async def sweep_links(self, grace: float, dry_run: bool = False) -> list[pb.SweptLink]:
        """Every batch of a link sweep (batches of 2, so the cursor is exercised)."""
        links: list[pb.SweptLink] = []
        cursor = b""
        while True:
            reply = await rpc.call(
                self.gc.SweepLinks(
                    pb.SweepLinksRequest(
                        cursor=cursor,
                        batch=2,
                        grace_seconds=grace,
                        canonical_queue=CANONICAL,
                        dry_run=dry_run,
                    )
                )
            )
            links += reply.links
            if reply.done:
                return links
            cursor = reply.cursor

    async def lease(self, queue: str) -> list[md.Task]:
        reply = await rpc.call(
            self.md.LeaseTasks(
                md.LeaseTasksRequest(queue=queue, worker="test", batch=10, lease_seconds=30)
            )
        )
        return list(reply.tasks)

    async def pending(self, queue: str) -> int:
        stats = await rpc.call(self.md.GetQueueStats(md.GetQueueStatsRequest(queue=queue)))
        return stats.pending

    async def orphan(self, digest: str) -> md.Task:
        """Make `digest` a canonical blob no repository links, marked and due, and lease
        its canonical task."""
        await rpc.call(self.gc.MarkBlobs(pb.MarkBlobsRequest(digests=[digest])))
        await rpc.call(
            self.gc.SweepBlobMarks(
                pb.SweepBlobMarksRequest(batch=10, grace_seconds=0, canonical_queue=CANONICAL)
            )
        )
        tasks = await self.lease(CANONICAL)
        assert [json.loads(t.payload)["digest"] for t in tasks] == [digest]
        return tasks[0]

    def begin_deletion(self, task: md.Task, lease_id: str = "") -> Awaitable[Any]:
        return self.gc.BeginBlobDeletion(
            pb.BeginBlobDeletionRequest(
                digest=json.loads(task.payload)["digest"],
                queue=task.queue,
                task_id=task.task_id,
                lease_id=lease_id or task.lease_id,
                lease_seconds=30,
            )
        )

    def finish_deletion(self, task: md.Task, lease_id: str = "") -> Awaitable[Any]:
        return self.gc.FinishBlobDeletion(
            pb.FinishBlobDeletionRequest(
                digest=json.loads(task.payload)["digest"],
                queue=task.queue,
                task_id=task.task_id,
                lease_id=lease_id or task.lease_id,
            )
        )


@pytest.fixture
async def meta(start_service: StartService) -> AsyncIterator[Meta]:
    async with rpc.channel(start_service("metadata")) as channel:
        yield Meta(channel)


async def expect(reason: Reason, code: grpc.StatusCode, awaitable: Awaitable[Any]) -> None:
    with pytest.raises(RegistryError) as caught:
        await rpc.call(awaitable)
    assert (caught.value.reason, caught.value.grpc_code) == (reason, code), caught.value.message


async def test_marks_sweeps_and_cancelled_marks(meta: Meta) -> None:
    """Unreferenced links are marked, kept while their grace runs, then removed; a link
    made again or named by a new manifest loses its mark; referenced links stay."""
    await meta.link("p/app", CONFIG, LAYER, SHARED)
    await meta.link("p/other", SHARED)
    await meta.put("p/app", "v1", image(LAYER))

    for _ in range(2):
        dry = await meta.mark_links(dry_run=True)
        assert (dry.scanned, dry.marked, dry.already_marked) == (4, 2, 0)
    marked = await meta.mark_links()
    assert (marked.scanned, marked.marked, marked.already_marked) == (4, 2, 0)
    assert (await meta.mark_links()).already_marked == 2

    assert await meta.sweep_links(grace=3600) == []
    assert len(await meta.sweep_links(grace=0, dry_run=True)) == 2
    await meta.link("p/other", SHARED)  # made again: its mark is gone
    swept = await meta.sweep_links(grace=0)
    assert [(s.repository, s.digest, s.remaining_links) for s in swept] == [("p/app", SHARED, 1)]
    assert not await meta.has_link("p/app", SHARED)
    assert await meta.has_link("p/other", SHARED)
    assert await meta.has_link("p/app", LAYER) and await meta.has_link("p/app", CONFIG)
    assert await meta.pending(CANONICAL) == 0

    # A manifest that names marked links cancels their marks.
    await meta.link("p/other", CONFIG)
    assert (await meta.mark_links()).marked == 2
    await meta.put("p/other", "v1", image(SHARED))
    assert await meta.sweep_links(grace=0) == []

    # The last link of a digest goes: its canonical blob is handed to the canonical queue.
    lone = "sha256:" + "1" * 64
    await meta.link("p/app", lone)
    await meta.mark_links()
    swept = await meta.sweep_links(grace=0)
    assert [(s.digest, s.remaining_links) for s in swept] == [(lone, 0)]
    tasks = await meta.lease(CANONICAL)
    assert [json.loads(t.payload) for t in tasks] == [{"digest": lone, "cause": "orphan"}]


async def test_canonical_deletion_tombstone(meta: Meta) -> None:
    """While a digest is being deleted no link to it and no commit of it can begin; only
    the holder of the task's lease finishes the deletion."""
    digest = str(sha256_of(b"going"))
    task = await meta.orphan(digest)
    await expect(Reason.DENIED, grpc.StatusCode.PERMISSION_DENIED, meta.begin_deletion(task, "x"))
    decision = await rpc.call(meta.begin_deletion(task))
    assert decision.delete is True
    assert (await rpc.call(meta.begin_deletion(task))).delete is True  # resumed: same answer

    await expect(
        Reason.BLOB_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        meta.md.LinkBlob(md.LinkBlobRequest(repository="p/app", digest=digest, size=5)),
    )
    await expect(
        Reason.UNAVAILABLE,
        grpc.StatusCode.UNAVAILABLE,
        meta.gc.BeginBlobCommit(pb.BeginBlobCommitRequest(digest=digest, upload_id="u1")),
    )
    await expect(Reason.DENIED, grpc.StatusCode.PERMISSION_DENIED, meta.finish_deletion(task, "x"))
    await rpc.call(meta.finish_deletion(task))
    assert await meta.pending(CANONICAL) == 0
    await rpc.call(
        meta.gc.BeginBlobCommit(pb.BeginBlobCommitRequest(digest=digest, upload_id="u1"))
    )
    await meta.link("p/app", digest, upload_id="u1")


async def test_linked_or_committing_blob_is_kept(meta: Meta) -> None:
    committing = str(sha256_of(b"committing"))
    await rpc.call(
        meta.gc.BeginBlobCommit(pb.BeginBlobCommitRequest(digest=committing, upload_id="u2"))
    )
    task = await meta.orphan(committing)
    decision = await rpc.call(meta.begin_deletion(task))
    assert (decision.delete, decision.kept_because) == (False, "commit in flight")
    assert await meta.pending(CANONICAL) == 0  # the task is done

    linked = str(sha256_of(b"linked"))
    task = await meta.orphan(linked)
    await meta.link("p/app", linked)
    decision = await rpc.call(meta.begin_deletion(task))
    assert (decision.delete, decision.kept_because) == (False, "linked")

    await expect(
        Reason.DIGEST_INVALID,
        grpc.StatusCode.INVALID_ARGUMENT,
        meta.gc.BeginBlobCommit(pb.BeginBlobCommitRequest(digest="sha256:x", upload_id="u")),
    )
    await expect(
        Reason.BLOB_UPLOAD_INVALID,
        grpc.StatusCode.INVALID_ARGUMENT,
        meta.gc.BeginBlobCommit(pb.BeginBlobCommitRequest(digest=linked, upload_id="")),
    )


async def test_delete_and_purge_repository(meta: Meta) -> None:
    await meta.link("p/gone", CONFIG, LAYER)
    await meta.link("p/kept", LAYER)
    await meta.put("p/gone", "v1", image(LAYER))
    upload = await rpc.call(meta.md.CreateUpload(md.CreateUploadRequest(repository="p/gone")))
    request = pb.DeleteRepositoryRequest(repository="p/gone", queue=REPOSITORIES)
    deleted = await rpc.call(meta.gc.DeleteRepository(request))
    assert deleted.task_id and deleted.deleted_at > 0
    again = await rpc.call(meta.gc.DeleteRepository(request))
    assert (again.task_id, again.deleted_at) == (deleted.task_id, deleted.deleted_at)

    # Gone at once: tags, manifests, blob links (though kept until the purge, for GC);
    # new content waits for the purge.
    await expect(
        Reason.NAME_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        meta.md.ListTags(md.ListTagsRequest(repository="p/gone")),
    )
    await expect(
        Reason.NAME_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        meta.md.GetManifest(md.GetManifestRequest(repository="p/gone", reference="v1")),
    )
    await expect(
        Reason.NAME_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        meta.md.StatBlobLink(md.StatBlobLinkRequest(repository="p/gone", digest=CONFIG)),
    )
    mount = md.MountBlobRequest(repository="p/kept", from_repository="p/gone", digest=CONFIG)
    await expect(Reason.BLOB_UNKNOWN, grpc.StatusCode.NOT_FOUND, meta.md.MountBlob(mount))
    await expect(
        Reason.UNAVAILABLE,
        grpc.StatusCode.UNAVAILABLE,
        meta.md.LinkBlob(md.LinkBlobRequest(repository="p/gone", digest=SHARED, size=5)),
    )

    (task,) = await meta.lease(REPOSITORIES)
    assert task.task_id == deleted.task_id

    def purge(cursor: bytes = b"", lease_id: str = "") -> Awaitable[Any]:
        return meta.gc.PurgeRepository(
            pb.PurgeRepositoryRequest(
                repository="p/gone",
                cursor=cursor,
                batch=1,
                canonical_queue=CANONICAL,
                queue=REPOSITORIES,
                task_id=task.task_id,
                lease_id=lease_id or task.lease_id,
                lease_seconds=30,
            )
        )

    await expect(Reason.DENIED, grpc.StatusCode.PERMISSION_DENIED, purge(lease_id="x"))
    links: list[pb.SweptLink] = []
    uploads: list[pb.ExpiredUpload] = []
    cursor = b""
    while True:
        page = await rpc.call(purge(cursor))
        links += page.links
        uploads += page.uploads
        if page.done:
            break
        cursor = page.cursor
    assert sorted((s.digest, s.remaining_links) for s in links) == sorted([(CONFIG, 0), (LAYER, 1)])
    assert [(u.upload_id, u.reason) for u in uploads] == [(upload.upload_id, "deleted repository")]
    tasks = await meta.lease(CANONICAL)
    assert [json.loads(t.payload) for t in tasks] == [{"digest": CONFIG, "cause": "repository"}]
    assert await meta.pending(REPOSITORIES) == 0
    assert await meta.has_link("p/kept", LAYER)

    # The name is free again once the purge is done.
    await expect(Reason.NAME_UNKNOWN, grpc.StatusCode.NOT_FOUND, meta.gc.DeleteRepository(request))
    await meta.link("p/gone", LAYER)
    await expect(
        Reason.NAME_INVALID,
        grpc.StatusCode.INVALID_ARGUMENT,
        meta.gc.DeleteRepository(pb.DeleteRepositoryRequest(repository="P/Bad", queue="q")),
    )


async def test_commit_of_a_session_is_begun_only_in_its_repository(meta: Meta) -> None:
    created = await rpc.call(meta.md.CreateUpload(md.CreateUploadRequest(repository="p/own")))
    digest = str(sha256_of(b"session bytes"))

    def begin(repository: str, upload_id: str) -> Awaitable[Any]:
        return meta.gc.BeginBlobCommit(
            pb.BeginBlobCommitRequest(repository=repository, digest=digest, upload_id=upload_id)
        )

    for repository, upload_id in (("p/other", created.upload_id), ("p/own", "0" * 32)):
        await expect(
            Reason.BLOB_UPLOAD_UNKNOWN, grpc.StatusCode.NOT_FOUND, begin(repository, upload_id)
        )
    # A refused begin holds nothing off: GC may delete the digest.
    task = await meta.orphan(digest)
    decision = await rpc.call(meta.begin_deletion(task))
    assert decision.delete
    await rpc.call(meta.finish_deletion(task))

    await rpc.call(begin("p/own", created.upload_id))
    task = await meta.orphan(digest)
    decision = await rpc.call(meta.begin_deletion(task))
    assert (decision.delete, decision.kept_because) == (False, "commit in flight")


async def test_expire_uploads(meta: Meta) -> None:
    ids = []
    for _ in range(3):
        created = await rpc.call(meta.md.CreateUpload(md.CreateUploadRequest(repository="p/up")))
        ids.append(created.upload_id)
    await rpc.call(
        meta.gc.BeginBlobCommit(pb.BeginBlobCommitRequest(digest=LAYER, upload_id=ids[0]))
    )

    def expire(
        idle: float, timeout: float, cursor: bytes = b"", dry_run: bool = False
    ) -> Awaitable[Any]:
        return meta.gc.ExpireUploads(
            pb.ExpireUploadsRequest(
                cursor=cursor, batch=2, idle_seconds=idle, timeout_seconds=timeout, dry_run=dry_run
            )
        )

    async def expire_all(idle: float, max_age: float) -> list[pb.ExpiredUpload]:
        """Every batch: the sessions, then the commit records."""
        found: list[pb.ExpiredUpload] = []
        cursor = b""
        while True:
            page = await rpc.call(expire(idle, max_age, cursor))
            found += page.uploads
            if page.done:
                return found
            cursor = page.cursor

    assert await expire_all(3600, 3600) == []
    page = await rpc.call(expire(0, 3600, dry_run=True))
    assert [u.reason for u in page.uploads] == ["abandoned", "abandoned"] and not page.done
    found = await rpc.call(meta.gc.FindUploads(pb.FindUploadsRequest(upload_ids=[*ids, "none"])))
    assert sorted(found.known) == sorted(ids)

    expired = await expire_all(3600, 0)
    assert sorted(u.upload_id for u in expired) == sorted(ids)
    assert {(u.reason, u.repository) for u in expired} == {("expired", "p/up")}
    found = await rpc.call(meta.gc.FindUploads(pb.FindUploadsRequest(upload_ids=ids)))
    assert list(found.known) == []
    await expect(Reason.PAGINATION_INVALID, grpc.StatusCode.INVALID_ARGUMENT, expire(0, -1))


async def test_untagged_manifests(meta: Meta) -> None:
    """With a retention period: a manifest that is not tagged, not listed by a live index
    and not a referrer of a live manifest is marked, then removed."""
    await meta.link("p/ret", CONFIG, LAYER, SHARED)
    child = image(LAYER)
    await meta.put("p/ret", str(sha256_of(child)), child)
    await meta.put("p/ret", "multi", index(child))
    tagged = await meta.put("p/ret", "v1", image(SHARED))
    referrer = image(subject={"mediaType": mt.OCI_MANIFEST, "digest": tagged, "size": 1})
    await meta.put("p/ret", str(sha256_of(referrer)), referrer)
    untagged = image(LAYER, SHARED)
    gone = await meta.put("p/ret", str(sha256_of(untagged)), untagged)

    marked = await rpc.call(meta.gc.MarkManifests(pb.MarkManifestsRequest(batch=100)))
    assert (marked.scanned, marked.marked) == (5, 1)

    def sweep(retention: float) -> Awaitable[Any]:
        return meta.gc.SweepManifests(
            pb.SweepManifestsRequest(batch=100, retention_seconds=retention)
        )

    assert (await rpc.call(sweep(3600))).swept == 0
    swept = await rpc.call(sweep(0))
    assert (swept.swept, swept.swept_bytes) == (1, len(untagged))
    await expect(
        Reason.MANIFEST_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        meta.md.GetManifest(md.GetManifestRequest(repository="p/ret", reference=gone)),
    )
    # Its blobs stay linked and named by the manifests left.
    assert (await meta.mark_links()).marked == 0


async def test_argument_errors(meta: Meta) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect(
        Reason.UNSUPPORTED,
        grpc.StatusCode.UNIMPLEMENTED,
        meta.gc.MarkLinks(pb.MarkLinksRequest(directory="another", batch=1)),
    )
    await expect(Reason.PAGINATION_INVALID, invalid, meta.gc.MarkLinks(pb.MarkLinksRequest()))
    await expect(
        Reason.PAGINATION_INVALID,
        invalid,
        meta.gc.SweepLinks(pb.SweepLinksRequest(batch=1, cursor=b"\x01elsewhere")),
    )
    await expect(
        Reason.PAGINATION_INVALID,
        invalid,
        meta.gc.SweepLinks(pb.SweepLinksRequest(batch=1, grace_seconds=-1)),
    )
    await expect(
        Reason.DIGEST_INVALID,
        invalid,
        meta.gc.MarkBlobs(pb.MarkBlobsRequest(digests=["sha256:short"])),
    )
    await expect(
        Reason.PAGINATION_INVALID,
        invalid,
        meta.gc.FindUploads(pb.FindUploadsRequest(upload_ids=["u"] * 1001)),
    )


# -- gc_svc ---------------------------------------------------------------------------


@pytest.fixture
def start_gc(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `artifact-store gc` in the data directory the other services of the test
    use, with extra environment; each must exit 0 on SIGTERM (or by itself)."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> subprocess.Popen[bytes]:
        full = {**os.environ, "ARTS_DATA_DIR": str(tmp_path / "data"), **env}
        process = subprocess.Popen([sys.executable, "-m", "artifactstore.cli", "gc"], env=full)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        assert process.wait(timeout=15) == 0


# A cycle waits up to a lease (ARTS_GC_LEASE_SECS, 60) for tasks another worker holds.
CYCLE_SECONDS = 120.0


def gc_address(tmp_path: Path) -> str:
    return f"unix:{tmp_path / 'data' / 'run' / 'gc.sock'}"


async def test_gc_service_runs_cycles(
    start_service: StartService, start_gc: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    metadata = start_service("metadata")
    start_service("blob")
    start_gc(ARTS_GC_PENDING_GRACE_SECS="0", ARTS_GC_INTERVAL_SECS="3600")
    # A second replica, and a worker configured for another registry directory.
    replica = f"unix:{tmp_path / 'replica' / 'gc.sock'}"
    start_gc(ARTS_GC_PENDING_GRACE_SECS="0", ARTS_GC_INTERVAL_SECS="3600", ARTS_GC_ADDRESS=replica)
    elsewhere = f"unix:{tmp_path / 'elsewhere' / 'gc.sock'}"
    start_gc(FDB_DIRECTORY="elsewhere", ARTS_GC_INTERVAL_SECS="3600", ARTS_GC_ADDRESS=elsewhere)
    address = gc_address(tmp_path)
    wait_serving(address, GC_SERVICE)
    async with rpc.channel(metadata) as channel:
        await Meta(channel).link("p/app", CONFIG)  # no manifest: collected
    async with rpc.channel(address) as channel:
        stub: GcServiceAsyncStub = gc_pb2_grpc.GcServiceStub(channel)
        info = await rpc.call(stub.GetServiceInfo(gc_pb2.GetServiceInfoRequest()))
        assert info.enabled
        dry = await rpc.call(
            stub.RunCycle(gc_pb2.RunCycleRequest(dry_run=True), timeout=CYCLE_SECONDS)
        )
        assert dry.dry_run and dry.phase == "done" and dry.finished_at >= dry.started_at
        assert [c.category for c in dry.categories] == [
            "orphaned_blobs",
            "deleted_repositories",
            "abandoned_uploads",
            "expired_uploads",
            "untagged_manifests",
        ]
        cycle = await rpc.call(stub.RunCycle(gc_pb2.RunCycleRequest(), timeout=CYCLE_SECONDS))
        blobs = cycle.categories[0]
        assert (blobs.marked, blobs.swept) == (1, 1), cycle
        status = await rpc.call(stub.GetStatus(gc_pb2.GetStatusRequest()))
        assert status.enabled and status.cycles == 2 and not status.running
        assert status.last.finished_at > 0 and not status.last.error
        assert status.repository_queue.queue == "arts-gc"
        assert status.canonical_queue.queue == "arts-gc-canonical"
        # The reflection service lists GcService.
        untyped: Any = channel
        reflection: Any = reflection_pb2_grpc.ServerReflectionStub(untyped)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in reflection.ServerReflectionInfo(iter([request]))]
        assert GC_SERVICE in {s.name for s in replies[0].list_services_response.service}
    async with rpc.channel(metadata) as channel:
        meta = Meta(channel)
        assert not await meta.has_link("p/app", CONFIG)
        # Two replicas collecting at once: every link swept exactly once, none left.
        orphans = [str(sha256_of(f"orphan {n}".encode())) for n in range(40)]
        await meta.link("p/two", *orphans)
        wait_serving(replica, GC_SERVICE)
        async with rpc.channel(address) as one, rpc.channel(replica) as two:
            cycles = await asyncio.gather(
                *(
                    rpc.call(
                        gc_pb2_grpc.GcServiceStub(c).RunCycle(
                            gc_pb2.RunCycleRequest(), timeout=CYCLE_SECONDS
                        )
                    )
                    for c in (one, two)
                )
            )
        assert sum(c.categories[0].swept for c in cycles) == len(orphans)
        assert not any([await meta.has_link("p/two", d) for d in orphans])
        assert await meta.pending("arts-gc-canonical") == 0
    wait_serving(elsewhere, GC_SERVICE)
    async with rpc.channel(elsewhere) as channel:
        stub = gc_pb2_grpc.GcServiceStub(channel)
        await expect(
            Reason.UNSUPPORTED,
            grpc.StatusCode.UNIMPLEMENTED,
            stub.RunCycle(gc_pb2.RunCycleRequest(dry_run=True)),
        )


async def test_run_cycle_unavailable_without_metadata(
    start_gc: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    start_gc(ARTS_RPC_TIMEOUT_SECS="0.5", ARTS_GC_INTERVAL_SECS="3600")
    address = gc_address(tmp_path)
    wait_serving(address, GC_SERVICE)
    async with rpc.channel(address) as channel:
        stub: GcServiceAsyncStub = gc_pb2_grpc.GcServiceStub(channel)
        await expect(
            Reason.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, stub.RunCycle(gc_pb2.RunCycleRequest())
        )
        status = await rpc.call(stub.GetStatus(gc_pb2.GetStatusRequest()))
        assert status.last.error.startswith("DEADLINE_EXCEEDED")
        assert status.cycles == 1


def test_disabled_worker_reports_not_serving_and_exits(
    start_gc: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    process = start_gc(ARTS_GC_ENABLED="false")
    address = gc_address(tmp_path)
    seen = None
    deadline = time.monotonic() + 10
    while seen is None and time.monotonic() < deadline:
        with grpc.insecure_channel(address) as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)
            try:
                seen = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
            except grpc.RpcError:
                time.sleep(0.05)
    assert seen == health_pb2.HealthCheckResponse.NOT_SERVING
    assert process.wait(timeout=10) == 0
