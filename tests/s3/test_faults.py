"""blob_svc's store when the object store fails: refused connections, 5xx answers and
stalled requests between it and the real Ceph RADOS Gateway (through `FaultProxy`).

Transient failures are retried with backoff and the operation succeeds with the bytes
intact; failures that outlast the retry budget become UNAVAILABLE (503 at the edge), and
leave no blob that is partial or visible before it is whole, and no unfinished multipart
upload; the session keeps exactly what was stored, so the client can resume."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from artifactstore.digests import Digest
from artifactstore.errors import Reason, RegistryError
from artifactstore.storage import StorageOptions
from blob_svc.store import BlobStore
from tests.conformance.test_storage import leftovers
from tests.objectstore import endpoint_of, fresh_s3_url, s3_base_url, with_endpoint
from tests.s3.faults import Fault, FaultProxy

MiB = 1024 * 1024
# Retry budget of the stores under test: enough for a few transient failures (the SDKs
# back off too), short enough that persistent ones end quickly.
RETRY_SECONDS = 5.0
# The budget of a store meant to give up quickly.
IMPATIENT_SECONDS = 1.0
OPTIONS = StorageOptions(request_timeout_seconds=2.0, connect_timeout_seconds=1.0)


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    """A fault-injecting proxy in front of the test cluster's RADOS Gateway."""
    faults = FaultProxy(endpoint_of(s3_base_url()))
    await faults.start()
    yield faults
    await faults.close()


@pytest.fixture
def url(proxy: FaultProxy) -> str:
    """A fresh prefix of the test bucket, reached through `proxy`."""
    return with_endpoint(fresh_s3_url("faults"), proxy.endpoint)


@pytest.fixture
async def store(proxy: FaultProxy, url: str) -> AsyncIterator[BlobStore]:
    """A store on `url`; the teardown (with the proxy healed) fails if anything is left:
    objects or unfinished multipart uploads."""
    blob_store = await asyncio.to_thread(BlobStore.from_url, url, OPTIONS, RETRY_SECONDS)
    yield blob_store
    proxy.heal()
    assert not await asyncio.to_thread(leftovers, blob_store.filesystem, blob_store.root)
    assert await blob_store.abort_stale_multipart_uploads(timedelta(0)) == 0


async def feed(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def sha256(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


async def read_all(store: BlobStore, digest: Digest, offset: int = 0) -> bytes:
    return b"".join([chunk async for chunk in store.read(digest, offset)])


def new_id() -> str:
    return f"faults-{random.getrandbits(64):x}"


async def test_errors_resets_and_stalls_are_retried(proxy: FaultProxy, store: BlobStore) -> None:
    data = random.Random(1).randbytes(21 * MiB + 5)
    upload_id = new_id()

    proxy.fail(Fault.ERROR, times=4)
    assert await store.start_upload(upload_id) == 0
    proxy.fail(Fault.ERROR, match=rb"^PUT ", times=3)
    assert await store.write_upload(upload_id, 0, feed(data[: 17 * MiB])) == 17 * MiB
    proxy.fail(Fault.REFUSE, times=3)
    assert await store.write_upload(upload_id, None, feed(data[17 * MiB :])) == len(data)
    # Part copies and the completion of the multipart upload.
    proxy.fail(Fault.ERROR, match=rb"uploadId=", times=3)
    info = await store.commit_upload(upload_id, sha256(data))
    proxy.fail(Fault.STALL, match=rb"^GET ", times=1)
    assert await read_all(store, info.digest) == data
    assert proxy.failed == 4 + 3 + 3 + 3 + 1
    proxy.heal()
    assert await store.delete(info.digest)


async def test_store_down_is_unavailable_then_works_again(
    proxy: FaultProxy, url: str, store: BlobStore
) -> None:
    info_data = b"stored before the outage"
    upload_id = new_id()
    await store.start_upload(upload_id)
    await store.write_upload(upload_id, 0, feed(info_data))
    digest = (await store.commit_upload(upload_id, sha256(info_data))).digest

    impatient = await asyncio.to_thread(BlobStore.from_url, url, OPTIONS, IMPATIENT_SECONDS)
    proxy.fail(Fault.REFUSE)
    for operation in (
        impatient.start_upload(new_id()),
        impatient.stat(digest),
        read_all(impatient, digest),
        impatient.upload_size(upload_id),
    ):
        started = time.monotonic()
        with pytest.raises(RegistryError) as caught:
            await operation
        assert caught.value.reason == Reason.UNAVAILABLE, caught.value.message
        # The retry budget bounds the wait (plus the SDK's own quick retries).
        assert time.monotonic() - started < IMPATIENT_SECONDS + 6

    proxy.heal()
    assert await read_all(store, digest) == info_data
    assert await store.delete(digest)


async def test_commit_failing_for_good_leaves_no_blob_and_the_session_whole(
    proxy: FaultProxy, store: BlobStore
) -> None:
    data = random.Random(2).randbytes(24 * MiB + 1)
    digest = sha256(data)
    upload_id = new_id()
    await store.start_upload(upload_id)
    await store.write_upload(upload_id, 0, feed(data))

    # Every CompleteMultipartUpload fails: the parts are copied, the object never appears.
    proxy.fail(Fault.ERROR, match=rb"^POST [^ ]*\?uploadId=")
    with pytest.raises(RegistryError) as caught:
        await store.commit_upload(upload_id, digest)
    assert caught.value.reason == Reason.UNAVAILABLE
    assert proxy.failed > 0
    proxy.heal()

    with pytest.raises(RegistryError) as unknown:
        await store.stat(digest)
    assert unknown.value.reason == Reason.BLOB_UNKNOWN
    # The failed commit aborted its multipart upload; the session is as it was.
    assert await store.abort_stale_multipart_uploads(timedelta(0)) == 0
    assert await store.upload_size(upload_id) == len(data)
    assert await store.commit_upload(upload_id, digest)
    assert await read_all(store, digest, 5 * MiB) == data[5 * MiB :]
    assert await store.delete(digest)


async def test_write_failing_for_good_keeps_what_was_stored(
    proxy: FaultProxy, store: BlobStore
) -> None:
    rng = random.Random(3)
    first, second = rng.randbytes(16 * MiB), rng.randbytes(5 * MiB)
    upload_id = new_id()
    await store.start_upload(upload_id)
    await store.write_upload(upload_id, 0, feed(first))

    proxy.fail(Fault.ERROR, match=rb"^PUT ")
    with pytest.raises(RegistryError) as caught:
        await store.write_upload(upload_id, len(first), feed(second))
    assert caught.value.reason == Reason.UNAVAILABLE
    proxy.heal()

    # The client asks where the session ends and sends the rest again.
    assert await store.upload_size(upload_id) == len(first)
    assert await store.write_upload(upload_id, len(first), feed(second)) == len(first + second)
    info = await store.commit_upload(upload_id, sha256(first + second))
    assert await read_all(store, info.digest) == first + second
    assert await store.delete(info.digest)


async def test_presigned_urls_serve_the_blob_ranges_and_expire(store: BlobStore) -> None:
    data = random.Random(4).randbytes(3 * MiB + 3)
    upload_id = new_id()
    await store.start_upload(upload_id)
    await store.write_upload(upload_id, 0, feed(data))
    digest = (await store.commit_upload(upload_id, sha256(data))).digest

    url = await store.presign(digest, 60)
    assert url is not None and "X-Amz-Expires=60" in url

    def get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    assert await asyncio.to_thread(get, url, {}) == (200, data)
    assert await asyncio.to_thread(get, url, {"Range": "bytes=100-199"}) == (206, data[100:200])
    short = await store.presign(digest, 1)
    assert short is not None
    await asyncio.sleep(2.5)
    status, _ = await asyncio.to_thread(get, short, {})
    assert status == 403
    assert await store.delete(digest)


async def test_abandoned_multipart_uploads_are_aborted(store: BlobStore) -> None:
    """What a blob_svc killed mid-commit leaves: a multipart upload never completed."""
    objects = store._objects
    assert objects is not None
    key = objects.key(f"{store.root}/blobs/sha256/00/{'0' * 64}/data")
    client = objects._client
    for _ in range(2):
        await asyncio.to_thread(client.create_multipart_upload, Bucket=objects.bucket, Key=key)
    assert await store.abort_stale_multipart_uploads(timedelta(hours=1)) == 0
    assert await store.abort_stale_multipart_uploads(timedelta(0)) == 2
    assert await store.abort_stale_multipart_uploads(timedelta(0)) == 0
