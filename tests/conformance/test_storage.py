"""Storage conformance suite: BlobStore's contract, run against every storage backend.

Backends: `file://` in a temporary directory, and S3 on the Ceph RADOS Gateway that
`make test` starts (ARTS_TEST_S3_URL, see tests/objectstore.py; the S3 tests fail when it
is not set), each test getting a fresh prefix of the test bucket.

As in distribution's driver test suite, every test cleans up after itself through the
store's own API, and the teardown fails if anything is left in the storage root: no
session, no temporary file, no blob; only the empty fan-out directories of the layout.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from artifactstore.digests import Digest
from artifactstore.errors import Reason, RegistryError
from artifactstore.rpc import STREAM_CHUNK_BYTES
from blob_svc import paths
from blob_svc.objects import SESSION_PART_BYTES
from blob_svc.store import BlobInfo, BlobStore
from tests.objectstore import fresh_s3_url

MiB = 1024 * 1024


@pytest.fixture(params=["file", "s3"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty storage root on one backend."""
    if request.param == "file":
        return (tmp_path / "storage").as_uri()
    return fresh_s3_url("conformance")


@pytest.fixture
def store(storage_url: str) -> Iterator[BlobStore]:
    """A BlobStore on a fresh root; the teardown fails if the test left anything behind:
    a file or object, or on object storage an unfinished multipart upload too."""
    blob_store = BlobStore.from_url(storage_url)
    yield blob_store
    left = leftovers(blob_store.filesystem, blob_store.root)
    assert not left, f"storage not cleaned up, left behind: {left}"
    unfinished = asyncio.run(blob_store.abort_stale_multipart_uploads(timedelta(0)))
    assert not unfinished, f"{unfinished} unfinished multipart upload(s) left behind"


def leftovers(filesystem: pafs.FileSystem, root: str) -> list[str]:
    """Everything under `root` except the empty directories the layout keeps."""
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    left = []
    for info in filesystem.get_file_info(selector):
        relative = info.path[len(root) :].strip("/").split("/")
        layout_dir = relative == [paths.UPLOADS] or (
            relative[0] == paths.BLOBS and len(relative) <= 3
        )
        if info.type != pafs.FileType.Directory or not layout_dir:
            left.append("/".join(relative))
    return sorted(left)


@contextmanager
def raises(reason: Reason) -> Iterator[None]:
    """Assert that the block raises RegistryError with `reason`."""
    with pytest.raises(RegistryError) as caught:
        yield
    assert caught.value.reason == reason, caught.value.message


async def feed(*chunks: bytes) -> AsyncIterator[bytes]:
    """The chunks as the async iterator write_upload consumes."""
    for chunk in chunks:
        yield chunk


def sha256(*chunks: bytes) -> Digest:
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(chunk)
    return Digest("sha256", hasher.hexdigest())


def new_id() -> str:
    return str(uuid.uuid4())


async def read_all(
    store: BlobStore, digest: Digest, offset: int = 0, length: int | None = None
) -> bytes:
    chunks = [chunk async for chunk in store.read(digest, offset, length)]
    assert all(0 < len(chunk) <= STREAM_CHUNK_BYTES for chunk in chunks)
    return b"".join(chunks)


async def push(store: BlobStore, data: bytes) -> BlobInfo:
    """Upload `data` in one session and commit it."""
    upload_id = new_id()
    await store.start_upload(upload_id)
    await store.write_upload(upload_id, 0, feed(data))
    return await store.commit_upload(upload_id, sha256(data))


async def test_upload_in_many_chunks_then_read_and_delete(store: BlobStore) -> None:
    upload_id = new_id()
    assert await store.start_upload(upload_id) == 0
    assert await store.upload_size(upload_id) == 0
    rng = random.Random(1)
    parts = [rng.randbytes(n) for n in (1, 0, 4095, MiB + 3, 17, 3 * MiB, 5 * MiB - 1, 2)]
    expected = 0
    # Three appends of several chunks each, two of them at a checked offset.
    for checked, group in ((True, parts[:3]), (False, parts[3:6]), (True, parts[6:])):
        offset = expected if checked else None
        expected += sum(len(part) for part in group)
        assert await store.write_upload(upload_id, offset, feed(*group)) == expected
        assert await store.upload_size(upload_id) == expected

    data = b"".join(parts)
    info = await store.commit_upload(upload_id, sha256(data))
    assert info == BlobInfo(sha256(data), len(data))
    assert await store.stat(info.digest) == len(data)
    assert await read_all(store, info.digest) == data
    with raises(Reason.BLOB_UPLOAD_UNKNOWN):
        await store.upload_size(upload_id)
    assert await store.delete(info.digest) is True


async def test_start_is_idempotent_and_cancel_removes_the_session(store: BlobStore) -> None:
    upload_id = new_id()
    await store.start_upload(upload_id)
    assert await store.write_upload(upload_id, None, feed(b"0123456789")) == 10
    assert await store.start_upload(upload_id) == 10
    assert await store.upload_size(upload_id) == 10
    assert await store.cancel_upload(upload_id) is True
    assert await store.cancel_upload(upload_id) is False
    with raises(Reason.BLOB_UPLOAD_UNKNOWN):
        await store.upload_size(upload_id)
    with raises(Reason.BLOB_UPLOAD_UNKNOWN):
        await store.commit_upload(upload_id, sha256(b"0123456789"))


async def test_offset_mismatch_appends_nothing(store: BlobStore) -> None:
    upload_id = new_id()
    await store.start_upload(upload_id)
    await store.write_upload(upload_id, 0, feed(b"hello"))
    consumed = False

    async def must_not_be_read() -> AsyncIterator[bytes]:
        nonlocal consumed
        consumed = True
        yield b"XXXX"

    for wrong in (0, 3, 6, -1):
        with raises(Reason.RANGE_INVALID):
            await store.write_upload(upload_id, wrong, must_not_be_read())
    assert not consumed
    assert await store.upload_size(upload_id) == 5
    assert await store.write_upload(upload_id, 5, feed(b" world")) == 11
    info = await store.commit_upload(upload_id, sha256(b"hello world"))
    assert await read_all(store, info.digest) == b"hello world"
    assert await store.delete(info.digest)


async def test_unknown_session(store: BlobStore) -> None:
    upload_id = new_id()
    with raises(Reason.BLOB_UPLOAD_UNKNOWN):
        await store.write_upload(upload_id, None, feed(b"x"))
    with raises(Reason.BLOB_UPLOAD_UNKNOWN):
        await store.write_upload(upload_id, 0, feed(b"x"))
    with raises(Reason.BLOB_UPLOAD_UNKNOWN):
        await store.upload_size(upload_id)
    with raises(Reason.BLOB_UPLOAD_UNKNOWN):
        await store.commit_upload(upload_id, sha256(b"x"))
    assert await store.cancel_upload(upload_id) is False


@pytest.mark.parametrize(
    "bad_id", ["", "a" * 65, "..", "../x", "a/b", "a.b", "a b", "ä", "a\x00", "a_b"]
)
async def test_invalid_upload_ids(store: BlobStore, bad_id: str) -> None:
    with raises(Reason.BLOB_UPLOAD_INVALID):
        await store.start_upload(bad_id)
    with raises(Reason.BLOB_UPLOAD_INVALID):
        await store.write_upload(bad_id, None, feed(b"x"))
    with raises(Reason.BLOB_UPLOAD_INVALID):
        await store.upload_size(bad_id)
    with raises(Reason.BLOB_UPLOAD_INVALID):
        await store.commit_upload(bad_id, sha256(b""))
    with raises(Reason.BLOB_UPLOAD_INVALID):
        await store.cancel_upload(bad_id)


@pytest.mark.parametrize("good_id", ["a", "A" * 64, "0-Z-9", "-"])
async def test_valid_upload_ids(store: BlobStore, good_id: str) -> None:
    await store.start_upload(good_id)
    assert await store.write_upload(good_id, 0, feed(b"abc")) == 3
    assert await store.cancel_upload(good_id) is True


async def test_resume_after_restart_and_across_replicas(storage_url: str, store: BlobStore) -> None:
    rng = random.Random(2)
    a, b, c, d = (rng.randbytes(n) for n in (3 * MiB + 5, 2 * MiB, 7, MiB))
    upload_id = new_id()
    await store.start_upload(upload_id)
    await store.write_upload(upload_id, 0, feed(a))

    # A restarted process has no hash state: it re-hashes the stored bytes once.
    restarted = BlobStore.from_url(storage_url)
    assert await restarted.upload_size(upload_id) == len(a)
    await restarted.write_upload(upload_id, len(a), feed(b))
    # The first store's state is now behind what is stored: it hashes only the tail.
    await store.write_upload(upload_id, len(a) + len(b), feed(c))
    await restarted.write_upload(upload_id, None, feed(d))

    with raises(Reason.DIGEST_INVALID):
        await store.commit_upload(upload_id, sha256(a, b, c))
    info = await store.commit_upload(upload_id, sha256(a, b, c, d))
    assert info.size == len(a) + len(b) + len(c) + len(d)
    assert await read_all(restarted, info.digest) == a + b + c + d
    assert await restarted.delete(info.digest)


async def test_interrupted_write_keeps_what_arrived(store: BlobStore) -> None:
    rng = random.Random(3)
    first, second, later = rng.randbytes(5 * MiB), rng.randbytes(MiB), rng.randbytes(999)

    async def broken() -> AsyncIterator[bytes]:
        yield first
        yield second
        raise ConnectionResetError("client went away")

    upload_id = new_id()
    await store.start_upload(upload_id)
    with pytest.raises(ConnectionResetError):
        await store.write_upload(upload_id, 0, broken())
    size = await store.upload_size(upload_id)
    assert size == len(first) + len(second)
    await store.write_upload(upload_id, size, feed(later))
    info = await store.commit_upload(upload_id, sha256(first, second, later))
    assert await read_all(store, info.digest) == first + second + later
    assert await store.delete(info.digest)


async def test_digest_mismatch_keeps_the_session(store: BlobStore) -> None:
    data = b"the real bytes"
    upload_id = new_id()
    await store.start_upload(upload_id)
    await store.write_upload(upload_id, 0, feed(data))
    with raises(Reason.DIGEST_INVALID):
        await store.commit_upload(upload_id, sha256(b"other bytes"))
    with raises(Reason.DIGEST_INVALID):
        await store.commit_upload(upload_id, Digest("sha512", "0" * 128))
    with raises(Reason.BLOB_UNKNOWN):
        await store.stat(sha256(b"other bytes"))
    assert await store.upload_size(upload_id) == len(data)
    # The client retries with the right digest, here under another algorithm.
    sha512 = Digest("sha512", hashlib.sha512(data).hexdigest())
    assert await store.commit_upload(upload_id, sha512) == BlobInfo(sha512, len(data))
    assert await read_all(store, sha512) == data
    assert await store.delete(sha512)


async def test_empty_blob(store: BlobStore) -> None:
    upload_id = new_id()
    await store.start_upload(upload_id)
    assert await store.write_upload(upload_id, 0, feed()) == 0
    info = await store.commit_upload(upload_id, sha256(b""))
    assert info == BlobInfo(sha256(b""), 0)
    assert await store.stat(info.digest) == 0
    assert await read_all(store, info.digest) == b""
    assert await read_all(store, info.digest, 0, 0) == b""
    with raises(Reason.RANGE_INVALID):
        await read_all(store, info.digest, 0, 1)
    assert await store.delete(info.digest)


async def test_existing_blob_is_never_rewritten(store: BlobStore) -> None:
    data = random.Random(4).randbytes(2 * MiB)
    first = await push(store, data)
    target = paths.blob_data(store.root, first.digest)
    before = store.filesystem.get_file_info(target)
    await asyncio.sleep(0.02)  # a rewrite would now show in the modification time

    again = await push(store, data)
    assert again == first
    after = store.filesystem.get_file_info(target)
    assert (after.mtime_ns, after.size) == (before.mtime_ns, before.size)
    assert blob_files(store) == [target]
    assert await store.delete(first.digest)


def blob_files(store: BlobStore) -> list[str]:
    selector = pafs.FileSelector(paths.blobs_root(store.root), recursive=True, allow_not_found=True)
    infos = store.filesystem.get_file_info(selector)
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


async def test_concurrent_commits_of_one_digest(storage_url: str, store: BlobStore) -> None:
    data = random.Random(5).randbytes(3 * MiB + 1)
    replica = BlobStore.from_url(storage_url)
    stores = [store, replica] * 4
    ids = [new_id() for _ in stores]
    for s, upload_id in zip(stores, ids, strict=True):
        await s.start_upload(upload_id)
    await asyncio.gather(
        *(s.write_upload(i, 0, feed(data)) for s, i in zip(stores, ids, strict=True))
    )
    results = await asyncio.gather(
        *(s.commit_upload(i, sha256(data)) for s, i in zip(stores, ids, strict=True))
    )
    assert set(results) == {BlobInfo(sha256(data), len(data))}
    assert blob_files(store) == [paths.blob_data(store.root, sha256(data))]
    for s, upload_id in zip(stores, ids, strict=True):
        with raises(Reason.BLOB_UPLOAD_UNKNOWN):
            await s.upload_size(upload_id)
    assert await read_all(replica, sha256(data)) == data
    assert await store.delete(sha256(data))


async def test_concurrent_uploads_to_distinct_sessions(store: BlobStore) -> None:
    rng = random.Random(6)
    blobs = [rng.randbytes(rng.randrange(1, 6 * MiB)) for _ in range(6)]

    async def upload(data: bytes) -> BlobInfo:
        upload_id = new_id()
        await store.start_upload(upload_id)
        for start in range(0, len(data), 700_000):
            await store.write_upload(upload_id, start, feed(data[start : start + 700_000]))
        return await store.commit_upload(upload_id, sha256(data))

    infos = await asyncio.gather(*(upload(data) for data in blobs))
    for info, data in zip(infos, blobs, strict=True):
        assert await read_all(store, info.digest) == data
        assert await store.delete(info.digest)


async def test_ranged_reads_at_the_edges(store: BlobStore) -> None:
    data = random.Random(7).randbytes(5 * MiB + 7)
    size = len(data)
    digest = (await push(store, data)).digest
    ranges = [
        (0, None),
        (0, size),
        (0, 0),
        (0, 1),
        (size - 1, None),
        (size - 1, 1),
        (size, None),
        (size, 0),
        (MiB - 1, 2),
        (MiB, MiB),
        (4 * MiB - 1, MiB + 2),
        (3, size - 3),
    ]
    for offset, length in ranges:
        end = size if length is None else offset + length
        assert await read_all(store, digest, offset, length) == data[offset:end], (offset, length)
    for offset, length in [(size, 1), (size + 1, None), (0, size + 1), (-1, None), (0, -1)]:
        with raises(Reason.RANGE_INVALID):
            await read_all(store, digest, offset, length)

    # A reader that stops early releases everything (the teardown sees no leftovers, and
    # the delete below succeeds on every platform).
    reader = store.read(digest)
    assert len(await anext(reader)) == STREAM_CHUNK_BYTES
    await reader.aclose()
    assert await store.delete(digest)


async def test_unknown_blob(store: BlobStore) -> None:
    digest = sha256(b"never stored")
    with raises(Reason.BLOB_UNKNOWN):
        await store.stat(digest)
    with raises(Reason.BLOB_UNKNOWN):
        await read_all(store, digest)
    assert await store.delete(digest) is False


async def test_delete_is_idempotent(store: BlobStore) -> None:
    info = await push(store, b"short-lived")
    assert await store.delete(info.digest) is True
    assert await store.delete(info.digest) is False
    with raises(Reason.BLOB_UNKNOWN):
        await store.stat(info.digest)
    with raises(Reason.BLOB_UNKNOWN):
        await read_all(store, info.digest)
    # The digest can be pushed again after its deletion.
    assert await push(store, b"short-lived") == info
    assert await read_all(store, info.digest) == b"short-lived"
    assert await asyncio.gather(store.delete(info.digest), store.delete(info.digest)) in (
        [True, False],
        [False, True],
    )


async def test_64_mib_blob_streams_in_bounded_memory(storage_url: str, store: BlobStore) -> None:
    block = random.Random(8).randbytes(MiB)
    count = 64
    expected = sha256(*([block] * count))
    upload_id = new_id()

    tracemalloc.start()
    try:
        await store.start_upload(upload_id)
        assert await store.write_upload(upload_id, 0, feed(*([block] * count))) == count * MiB
        info = await store.commit_upload(upload_id, expected)
        hasher = hashlib.sha256()
        async for chunk in store.read(info.digest):
            hasher.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert hasher.hexdigest() == expected.hex
    # Object storage buffers one session part object on top (it is PUT whole).
    limit = 16 * MiB + (SESSION_PART_BYTES if storage_url.startswith("s3:") else 0)
    assert peak < limit, f"peak {peak / MiB:.1f} MiB for a {count} MiB blob"
    assert await store.delete(info.digest)


# Pushes blobs forever, each in several appends, printing a line after each commit.
_PUSH_FOREVER = """
import asyncio, hashlib, os, sys
from artifactstore.digests import Digest
from blob_svc.store import BlobStore

async def feed(chunks):
    for chunk in chunks:
        yield chunk

async def main():
    store = BlobStore.from_url(sys.argv[1])
    while True:
        chunks = [os.urandom(1 << 20) for _ in range(12)]
        digest = Digest("sha256", hashlib.sha256(b"".join(chunks)).hexdigest())
        upload_id = os.urandom(8).hex()
        await store.start_upload(upload_id)
        for i in range(0, 12, 3):
            await store.write_upload(upload_id, None, feed(chunks[i : i + 3]))
        await store.commit_upload(upload_id, digest)
        print(digest, flush=True)

asyncio.run(main())
"""


async def test_kill_9_leaves_no_partial_blob(storage_url: str, store: BlobStore) -> None:
    rng = random.Random(9)
    committed: set[str] = set()
    for _ in range(3):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _PUSH_FOREVER,
            storage_url,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        committed.add((await process.stdout.readline()).decode().strip())
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        process.kill()
        output, _ = await process.communicate()
        committed.update(output.decode().split())

    # Every visible blob is complete and verified; every reported commit is visible.
    found = {
        f"{p.split('/')[-4]}:{p.split('/')[-2]}" for p in await asyncio.to_thread(blob_files, store)
    }
    assert committed <= found
    for text in found:
        digest = Digest.parse(text)
        hasher = digest.hasher()
        async for chunk in store.read(digest):
            hasher.update(chunk)
        assert hasher.hexdigest() == digest.hex
        assert await store.delete(digest)
    # Sessions interrupted by the kills remain, as sessions only, and on object storage
    # perhaps an unfinished multipart upload; GC's job, done here.
    selector = pafs.FileSelector(paths.uploads_root(store.root), allow_not_found=True)
    for info in await asyncio.to_thread(store.filesystem.get_file_info, selector):
        assert await store.cancel_upload(info.base_name)
    await store.abort_stale_multipart_uploads(timedelta(0))


async def test_local_commit_interrupted_after_publishing(tmp_path: Path) -> None:
    """On local disk a commit hard-links the session's file to the canonical path, then
    removes the session. Killed in between, the session and the blob share one file: an
    append to the session must not reach the blob; a retried commit must succeed."""
    store = BlobStore.from_url((tmp_path / "storage").as_uri())
    data = b"verified bytes"
    digest = sha256(data)
    for retry in ("write", "commit"):
        upload_id = new_id()
        await store.start_upload(upload_id)
        await store.write_upload(upload_id, 0, feed(data))
        # The state a kill -9 leaves between publishing and ending the session.
        target = Path(paths.blob_data(store.root, digest))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(paths.upload_data(store.root, upload_id), target)

        if retry == "write":
            with raises(Reason.BLOB_UPLOAD_UNKNOWN):
                await store.write_upload(upload_id, None, feed(b"appended"))
        else:
            assert await store.commit_upload(upload_id, digest) == BlobInfo(digest, len(data))
        with raises(Reason.BLOB_UPLOAD_UNKNOWN):
            await store.upload_size(upload_id)
        assert await read_all(store, digest) == data
        assert await store.delete(digest)
    assert not leftovers(store.filesystem, store.root)
