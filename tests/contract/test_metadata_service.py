"""MetadataService contract: a real metadata_svc process, every RPC, every error's status
code and ErrorInfo reason."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from artifactstore import mediatypes as mt
from artifactstore import rpc
from artifactstore.digests import sha256_of
from artifactstore.errors import Reason, RegistryError
from artifactstore.metadata.v1 import metadata_pb2 as pb
from artifactstore.metadata.v1 import metadata_pb2_grpc
from artifactstore.upload_ids import UploadIds, issued_at
from tests.contract.conftest import StartService

if TYPE_CHECKING:
    from artifactstore.metadata.v1.metadata_pb2_grpc import MetadataServiceAsyncStub as Stub

CONFIG = sha256_of(b"config")
LAYER = sha256_of(b"layer")


def image(
    config: str = str(CONFIG), layers: tuple[str, ...] = (str(LAYER),), **extra: object
) -> bytes:
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


@pytest.fixture
async def stub(start_service: StartService) -> AsyncIterator[Stub]:
    address = start_service("metadata")
    async with rpc.channel(address) as channel:
        yield metadata_pb2_grpc.MetadataServiceStub(channel)


async def expect(reason: Reason, code: grpc.StatusCode, awaitable: object) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        await rpc.call(awaitable)  # type: ignore[arg-type]
    assert caught.value.reason == reason
    assert caught.value.grpc_code == code
    return caught.value


async def link(stub: Stub, repo: str, *digests: object) -> None:
    for d in digests:
        await rpc.call(stub.LinkBlob(pb.LinkBlobRequest(repository=repo, digest=str(d), size=5)))


def test_reflection_lists_the_service(start_service: StartService) -> None:
    address = start_service("metadata")
    with grpc.insecure_channel(address) as channel:
        # The typeshed stubs of grpcio-reflection omit the stub's methods.
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names = set()
        for reply in stub.ServerReflectionInfo(iter([request])):
            names |= {s.name for s in reply.list_services_response.service}
    assert {"artifactstore.metadata.v1.MetadataService", "grpc.health.v1.Health"} <= names


async def test_manifest_lifecycle(stub: Stub) -> None:
    await link(stub, "p/app", CONFIG, LAYER)
    body = image()
    put = await rpc.call(
        stub.PutManifest(pb.PutManifestRequest(repository="p/app", reference="v1", content=body))
    )
    assert put.digest == str(sha256_of(body))
    got = await rpc.call(
        stub.GetManifest(
            pb.GetManifestRequest(repository="p/app", reference="v1", include_content=True)
        )
    )
    assert (got.digest, got.content, got.media_type, got.size) == (
        put.digest,
        body,
        mt.OCI_MANIFEST,
        len(body),
    )
    head = await rpc.call(
        stub.GetManifest(pb.GetManifestRequest(repository="p/app", reference=put.digest))
    )
    assert head.content == b"" and head.size == len(body)
    # Idempotent re-put, and a second tag on the same manifest.
    await rpc.call(
        stub.PutManifest(pb.PutManifestRequest(repository="p/app", reference="v2", content=body))
    )
    tags = await rpc.call(stub.ListTags(pb.ListTagsRequest(repository="p/app")))
    assert list(tags.tags) == ["v1", "v2"] and not tags.more
    deleted = await rpc.call(
        stub.DeleteManifest(pb.DeleteManifestRequest(repository="p/app", reference="v1"))
    )
    assert list(deleted.removed_tags) == ["v1"]
    deleted = await rpc.call(
        stub.DeleteManifest(pb.DeleteManifestRequest(repository="p/app", reference=put.digest))
    )
    assert list(deleted.removed_tags) == ["v2"]
    await expect(
        Reason.MANIFEST_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        stub.GetManifest(pb.GetManifestRequest(repository="p/app", reference=put.digest)),
    )
    tags = await rpc.call(stub.ListTags(pb.ListTagsRequest(repository="p/app")))
    assert list(tags.tags) == []


async def test_large_manifest_is_split_and_read_back_whole(stub: Stub) -> None:
    await link(stub, "p/big", CONFIG, LAYER)
    body = image(annotations={"pad": "x" * (3 * 1024 * 1024)})
    await rpc.call(
        stub.PutManifest(pb.PutManifestRequest(repository="p/big", reference="t", content=body))
    )
    got = await rpc.call(
        stub.GetManifest(
            pb.GetManifestRequest(repository="p/big", reference="t", include_content=True)
        )
    )
    assert got.content == body


async def test_manifest_errors(stub: Stub) -> None:
    await link(stub, "p/err", CONFIG)
    await expect(
        Reason.MANIFEST_BLOB_UNKNOWN,
        grpc.StatusCode.FAILED_PRECONDITION,
        stub.PutManifest(pb.PutManifestRequest(repository="p/err", reference="t", content=image())),
    )
    await expect(
        Reason.DIGEST_INVALID,
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.PutManifest(
            pb.PutManifestRequest(
                repository="p/err", reference=str(sha256_of(b"x")), content=image(layers=())
            )
        ),
    )
    await expect(
        Reason.MANIFEST_INVALID,
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.PutManifest(pb.PutManifestRequest(repository="p/err", reference="t", content=b"{")),
    )
    await expect(
        Reason.MANIFEST_TOO_LARGE,
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.PutManifest(
            pb.PutManifestRequest(
                repository="p/err",
                reference="t",
                content=image(layers=(), annotations={"pad": "x" * (4 * 1024 * 1024)}),
            )
        ),
    )
    await expect(
        Reason.TAG_INVALID,
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.PutManifest(
            pb.PutManifestRequest(repository="p/err", reference="-bad", content=image(layers=()))
        ),
    )
    await expect(
        Reason.NAME_INVALID,
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.PutManifest(
            pb.PutManifestRequest(repository="P/Err", reference="t", content=image(layers=()))
        ),
    )
    await expect(
        Reason.NAME_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        stub.ListTags(pb.ListTagsRequest(repository="p/none")),
    )
    await expect(
        Reason.NAME_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        stub.GetManifest(pb.GetManifestRequest(repository="p/none", reference="t")),
    )
    await expect(
        Reason.MANIFEST_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        stub.GetManifest(pb.GetManifestRequest(repository="p/err", reference="t")),
    )
    await expect(
        Reason.MANIFEST_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        stub.DeleteManifest(pb.DeleteManifestRequest(repository="p/err", reference="t")),
    )
    await expect(
        Reason.PAGINATION_INVALID,
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListTags(pb.ListTagsRequest(repository="p/err", limit=-1)),
    )
    # Nothing of the refused manifests was stored.
    tags = await rpc.call(stub.ListTags(pb.ListTagsRequest(repository="p/err")))
    assert list(tags.tags) == []


async def test_index_needs_its_children(stub: Stub) -> None:
    await link(stub, "p/idx", CONFIG, LAYER)
    child = image()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {"mediaType": mt.OCI_MANIFEST, "digest": str(sha256_of(child)), "size": len(child)}
            ],
        }
    ).encode()
    await expect(
        Reason.MANIFEST_BLOB_UNKNOWN,
        grpc.StatusCode.FAILED_PRECONDITION,
        stub.PutManifest(
            pb.PutManifestRequest(repository="p/idx", reference="multi", content=index)
        ),
    )
    await rpc.call(
        stub.PutManifest(
            pb.PutManifestRequest(
                repository="p/idx", reference=str(sha256_of(child)), content=child
            )
        )
    )
    put = await rpc.call(
        stub.PutManifest(
            pb.PutManifestRequest(repository="p/idx", reference="multi", content=index)
        )
    )
    assert put.digest == str(sha256_of(index))


async def test_referrers(stub: Stub) -> None:
    await link(stub, "p/ref", CONFIG, LAYER)
    subject = image()
    subject_digest = str(sha256_of(subject))
    descriptor = {"mediaType": mt.OCI_MANIFEST, "digest": subject_digest, "size": len(subject)}
    sbom = image(
        artifactType="application/vnd.example.sbom", subject=descriptor, annotations={"k": "v"}
    )
    sig = image(artifactType="application/vnd.example.sig", subject=descriptor)
    # The subject need not exist.
    put = await rpc.call(
        stub.PutManifest(
            pb.PutManifestRequest(repository="p/ref", reference=str(sha256_of(sbom)), content=sbom)
        )
    )
    assert put.subject_digest == subject_digest
    await rpc.call(
        stub.PutManifest(
            pb.PutManifestRequest(repository="p/ref", reference=str(sha256_of(sig)), content=sig)
        )
    )
    found = await rpc.call(
        stub.ListReferrers(pb.ListReferrersRequest(repository="p/ref", digest=subject_digest))
    )
    assert {r.digest for r in found.referrers} == {str(sha256_of(sbom)), str(sha256_of(sig))}
    only = await rpc.call(
        stub.ListReferrers(
            pb.ListReferrersRequest(
                repository="p/ref",
                digest=subject_digest,
                artifact_type="application/vnd.example.sbom",
            )
        )
    )
    assert [(r.digest, r.artifact_type, dict(r.annotations)) for r in only.referrers] == [
        (str(sha256_of(sbom)), "application/vnd.example.sbom", {"k": "v"})
    ]
    none = await rpc.call(
        stub.ListReferrers(
            pb.ListReferrersRequest(repository="p/ref", digest=str(sha256_of(b"nothing")))
        )
    )
    assert list(none.referrers) == []
    await rpc.call(
        stub.DeleteManifest(
            pb.DeleteManifestRequest(repository="p/ref", reference=str(sha256_of(sig)))
        )
    )
    after = await rpc.call(
        stub.ListReferrers(pb.ListReferrersRequest(repository="p/ref", digest=subject_digest))
    )
    assert [r.digest for r in after.referrers] == [str(sha256_of(sbom))]


async def test_pagination(stub: Stub) -> None:
    await link(stub, "p/page", CONFIG, LAYER)
    body = image()
    names = [f"t{i:02d}" for i in range(25)]
    for tag in names:
        await rpc.call(
            stub.PutManifest(
                pb.PutManifestRequest(repository="p/page", reference=tag, content=body)
            )
        )
    seen: list[str] = []
    last = ""
    while True:
        page = await rpc.call(
            stub.ListTags(pb.ListTagsRequest(repository="p/page", limit=10, last=last))
        )
        seen += page.tags
        if not page.more:
            break
        last = page.tags[-1]
    assert seen == names
    for repo in ("q/b", "q/a", "q/c"):
        await link(stub, repo, CONFIG)
    repos = await rpc.call(
        stub.ListRepositories(pb.ListRepositoriesRequest(limit=2, last="p/page"))
    )
    assert list(repos.repositories) == ["q/a", "q/b"] and repos.more


async def test_blob_links_and_mounts(stub: Stub) -> None:
    await link(stub, "p/src", LAYER)
    got = await rpc.call(
        stub.StatBlobLink(pb.StatBlobLinkRequest(repository="p/src", digest=str(LAYER)))
    )
    assert got.size == 5
    await expect(
        Reason.BLOB_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        stub.StatBlobLink(pb.StatBlobLinkRequest(repository="p/dst", digest=str(LAYER))),
    )
    await expect(
        Reason.BLOB_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        stub.MountBlob(
            pb.MountBlobRequest(repository="p/dst", from_repository="p/src", digest=str(CONFIG))
        ),
    )
    mounted = await rpc.call(
        stub.MountBlob(
            pb.MountBlobRequest(repository="p/dst", from_repository="p/src", digest=str(LAYER))
        )
    )
    assert mounted.size == 5
    await rpc.call(stub.UnlinkBlob(pb.UnlinkBlobRequest(repository="p/src", digest=str(LAYER))))
    await expect(
        Reason.BLOB_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        stub.UnlinkBlob(pb.UnlinkBlobRequest(repository="p/src", digest=str(LAYER))),
    )
    assert (
        await rpc.call(
            stub.StatBlobLink(pb.StatBlobLinkRequest(repository="p/dst", digest=str(LAYER)))
        )
    ).size == 5
    await expect(
        Reason.DIGEST_INVALID,
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.StatBlobLink(pb.StatBlobLinkRequest(repository="p/dst", digest="sha256:nope")),
    )


async def test_upload_sessions(stub: Stub) -> None:
    session = await rpc.call(stub.CreateUpload(pb.CreateUploadRequest(repository="p/up")))
    assert session.repository == "p/up" and session.upload_id
    touched = await rpc.call(
        stub.GetUpload(
            pb.GetUploadRequest(repository="p/up", upload_id=session.upload_id, touch=True)
        )
    )
    assert touched.last_activity_at >= session.last_activity_at
    await expect(
        Reason.BLOB_UPLOAD_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        stub.GetUpload(pb.GetUploadRequest(repository="p/other", upload_id=session.upload_id)),
    )
    await rpc.call(
        stub.LinkBlob(
            pb.LinkBlobRequest(
                repository="p/up", digest=str(LAYER), size=5, upload_id=session.upload_id
            )
        )
    )
    await expect(
        Reason.BLOB_UPLOAD_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        stub.GetUpload(pb.GetUploadRequest(repository="p/up", upload_id=session.upload_id)),
    )
    other = await rpc.call(stub.CreateUpload(pb.CreateUploadRequest(repository="p/up")))
    await rpc.call(
        stub.DeleteUpload(pb.DeleteUploadRequest(repository="p/up", upload_id=other.upload_id))
    )
    await rpc.call(
        stub.DeleteUpload(pb.DeleteUploadRequest(repository="p/up", upload_id=other.upload_id))
    )
    await expect(
        Reason.BLOB_UPLOAD_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        stub.GetUpload(pb.GetUploadRequest(repository="p/up", upload_id=other.upload_id)),
    )


async def test_issued_upload_sessions_start_at_first_use(stub: Stub) -> None:
    """An id a gateway issued is recorded by its first GetUpload or BeginBlobCommit with
    `start`, in its repository only; once ended it never starts again; an id older than
    the idle limit (ARTS_GC_UPLOAD_IDLE_SECS, 3600 by default) never starts."""
    ids = UploadIds(ec.generate_private_key(ec.SECP256R1()))

    def get(upload_id: str, *, start: bool = True, repo: str = "p/iss") -> Any:
        return stub.GetUpload(
            pb.GetUploadRequest(repository=repo, upload_id=upload_id, start=start)
        )

    fresh = ids.issue("p/iss")
    unknown = Reason.BLOB_UPLOAD_UNKNOWN, grpc.StatusCode.NOT_FOUND
    await expect(*unknown, get(fresh, start=False))
    started = await rpc.call(get(fresh))
    assert (started.repository, started.started_at) == ("p/iss", issued_at(fresh))
    assert (await rpc.call(get(fresh, start=False))).upload_id == fresh
    await expect(*unknown, get(fresh, repo="p/other"))
    await rpc.call(stub.DeleteUpload(pb.DeleteUploadRequest(repository="p/iss", upload_id=fresh)))
    await expect(*unknown, get(fresh))

    # Ended by the link of its commit, never having been recorded before.
    linked = ids.issue("p/iss")
    await rpc.call(
        stub.LinkBlob(
            pb.LinkBlobRequest(repository="p/iss", digest=str(LAYER), size=5, upload_id=linked)
        )
    )
    await expect(*unknown, get(linked))
    # Ended before its first use.
    cancelled = ids.issue("p/iss")
    await rpc.call(
        stub.DeleteUpload(pb.DeleteUploadRequest(repository="p/iss", upload_id=cancelled))
    )
    await expect(*unknown, get(cancelled))

    await expect(*unknown, get(ids.issue("p/iss", now=time.time() - 3700)))
    assert (await rpc.call(get(ids.issue("p/iss", now=time.time() - 3500)))).repository
    await expect(*unknown, get("0" * 63 + "g"))


async def test_queue_leases_retries_and_parks(stub: Stub) -> None:
    q = "test-queue"
    first = await rpc.call(
        stub.Enqueue(pb.EnqueueRequest(queue=q, payload="a", dedup_key="k", max_attempts=2))
    )
    again = await rpc.call(stub.Enqueue(pb.EnqueueRequest(queue=q, payload="a", dedup_key="k")))
    assert again.task_id == first.task_id
    await rpc.call(stub.Enqueue(pb.EnqueueRequest(queue=q, payload="b")))
    leased = await rpc.call(
        stub.LeaseTasks(pb.LeaseTasksRequest(queue=q, worker="w1", batch=1, lease_seconds=60))
    )
    (task,) = leased.tasks
    assert (task.payload, task.attempts, task.leased_by) == ("a", 1, "w1")
    await expect(
        Reason.DENIED,
        grpc.StatusCode.PERMISSION_DENIED,
        stub.CompleteTask(
            pb.CompleteTaskRequest(queue=q, task_id=task.task_id, lease_id="not-mine")
        ),
    )
    stats = await rpc.call(stub.GetQueueStats(pb.GetQueueStatsRequest(queue=q)))
    assert (stats.pending, stats.leased, stats.parked) == (2, 1, 0)
    # The first attempt fails: leasable again at once, then parked after its second.
    await rpc.call(
        stub.RetryTask(
            pb.RetryTaskRequest(queue=q, task_id=task.task_id, lease_id=task.lease_id, error="boom")
        )
    )
    leased = await rpc.call(
        stub.LeaseTasks(pb.LeaseTasksRequest(queue=q, worker="w2", batch=5, lease_seconds=60))
    )
    # "b" has waited longer than the retried "a" (leasable again only from its retry).
    assert [t.payload for t in leased.tasks] == ["b", "a"]
    other, retried = leased.tasks
    assert retried.attempts == 2 and retried.last_error == "boom"
    parked = await rpc.call(
        stub.RetryTask(
            pb.RetryTaskRequest(
                queue=q, task_id=retried.task_id, lease_id=retried.lease_id, error="boom again"
            )
        )
    )
    assert parked.last_error == "boom again"
    listed = await rpc.call(stub.ListParkedTasks(pb.ListParkedTasksRequest(queue=q)))
    assert [t.task_id for t in listed.tasks] == [first.task_id]
    # A parked task no longer blocks its dedup key.
    fresh = await rpc.call(stub.Enqueue(pb.EnqueueRequest(queue=q, payload="a", dedup_key="k")))
    assert fresh.task_id != first.task_id
    await rpc.call(
        stub.CompleteTask(
            pb.CompleteTaskRequest(queue=q, task_id=other.task_id, lease_id=other.lease_id)
        )
    )
    stats = await rpc.call(stub.GetQueueStats(pb.GetQueueStatsRequest(queue=q)))
    assert (stats.pending, stats.parked) == (1, 1)


async def test_an_expired_lease_is_leased_again(stub: Stub) -> None:
    q = "expiring"
    await rpc.call(stub.Enqueue(pb.EnqueueRequest(queue=q, payload="x")))
    (lost,) = (
        await rpc.call(
            stub.LeaseTasks(
                pb.LeaseTasksRequest(queue=q, worker="dies", batch=1, lease_seconds=0.2)
            )
        )
    ).tasks
    assert not (
        await rpc.call(
            stub.LeaseTasks(pb.LeaseTasksRequest(queue=q, worker="w", batch=1, lease_seconds=60))
        )
    ).tasks
    await asyncio.sleep(0.3)
    (again,) = (
        await rpc.call(
            stub.LeaseTasks(pb.LeaseTasksRequest(queue=q, worker="w", batch=1, lease_seconds=60))
        )
    ).tasks
    assert again.task_id == lost.task_id and again.attempts == 2
    # The worker that lost its lease cannot finish the task any more.
    await expect(
        Reason.DENIED,
        grpc.StatusCode.PERMISSION_DENIED,
        stub.CompleteTask(
            pb.CompleteTaskRequest(queue=q, task_id=lost.task_id, lease_id=lost.lease_id)
        ),
    )
    await rpc.call(
        stub.CompleteTask(
            pb.CompleteTaskRequest(queue=q, task_id=again.task_id, lease_id=again.lease_id)
        )
    )


async def test_a_new_manifest_enqueues_its_scan_once(stub: Stub) -> None:
    await link(stub, "p/scan", CONFIG, LAYER)
    body = image()
    for tag in ("a", "b"):
        await rpc.call(
            stub.PutManifest(
                pb.PutManifestRequest(repository="p/scan", reference=tag, content=body)
            )
        )
    leased = await rpc.call(
        stub.LeaseTasks(
            pb.LeaseTasksRequest(queue="arts-scan", worker="w", batch=10, lease_seconds=60)
        )
    )
    payloads = [
        json.loads(t.payload)
        for t in leased.tasks
        if json.loads(t.payload)["repository"] == "p/scan"
    ]
    assert payloads == [{"repository": "p/scan", "digest": str(sha256_of(body))}]
