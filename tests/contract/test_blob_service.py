"""Contract of artifactstore.blob.v1.BlobService (protos/artifactstore/blob/v1/blob.proto),
checked against the real service process (`artifact-store blob`) over its unix socket:
every RPC, every error's status code and ErrorInfo reason, health checking, reflection,
and the streaming throughput (printed). The module runs twice: blobs on local disk, and
on the Ceph RADOS Gateway that `make test` starts (tests/objectstore.py)."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from artifactstore import rpc
from artifactstore.blob.v1 import blob_pb2, blob_pb2_grpc
from artifactstore.errors import DOMAIN, Reason, RegistryError
from blob_svc.store import BlobStore
from tests.conformance.test_storage import leftovers
from tests.objectstore import fresh_s3_url

if TYPE_CHECKING:
    from artifactstore.blob.v1.blob_pb2_grpc import BlobServiceAsyncStub as Stub

MiB = 1024 * 1024
SERVICE = "artifactstore.blob.v1.BlobService"


def _wait_serving(address: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        # The typeshed stubs of grpcio-health-checking omit the stub's methods.
        health: Any = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"blob service at {address} did not become SERVING")
            time.sleep(0.05)


@pytest.fixture(scope="module", params=["file", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    """The storage the service runs on: `file` or `s3`."""
    return str(request.param)


@pytest.fixture(scope="module")
def address(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One blob service process for the module; it must stop cleanly on SIGTERM."""
    data = tmp_path_factory.mktemp("blob")
    address = f"unix:{data / 'blob.sock'}"
    env = {**os.environ, "ARTS_DATA_DIR": str(data), "ARTS_BLOB_ADDRESS": address}
    storage_url = (data / "storage").as_uri() if backend == "file" else fresh_s3_url("contract")
    env["ARTS_STORAGE_URL"] = storage_url
    process = subprocess.Popen([sys.executable, "-m", "artifactstore.cli", "blob"], env=env)
    try:
        _wait_serving(address)
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    # Every test ends its sessions and deletes its blobs: nothing may remain.
    store = BlobStore.from_url(storage_url)
    left = leftovers(store.filesystem, store.root)
    assert not left, f"left behind in storage: {left}"
    unfinished = asyncio.run(store.abort_stale_multipart_uploads(timedelta(0)))
    assert not unfinished, f"{unfinished} unfinished multipart uploads left behind"


@pytest.fixture
async def channel(address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with rpc.channel(address) as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Stub:
    return blob_pb2_grpc.BlobServiceStub(channel)


async def expect_error(call: Awaitable[Any], code: grpc.StatusCode, reason: Reason) -> None:
    """Assert that `call` fails with status `code` carrying an ErrorInfo with `reason`."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    error = RegistryError.from_rpc_error(caught.value)
    assert error is not None, "no ErrorInfo of domain " + DOMAIN
    assert error.reason == reason


async def expect_stream_error(
    stream: AsyncIterable[Any], code: grpc.StatusCode, reason: Reason
) -> None:
    async def drain() -> None:
        async for _ in stream:
            pass

    await expect_error(drain(), code, reason)


def digest_of(*chunks: bytes) -> str:
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(chunk)
    return f"sha256:{hasher.hexdigest()}"


def header(upload_id: str, offset: int | None = None) -> blob_pb2.WriteUploadRequest:
    return blob_pb2.WriteUploadRequest(
        header=blob_pb2.UploadHeader(upload_id=upload_id, offset=offset)
    )


async def messages(
    upload_id: str, chunks: list[bytes], offset: int | None = None
) -> AsyncIterator[blob_pb2.WriteUploadRequest]:
    yield header(upload_id, offset)
    for chunk in chunks:
        yield blob_pb2.WriteUploadRequest(data=chunk)


async def read(stub: Stub, digest: str, offset: int = 0, length: int = 0) -> bytes:
    call = stub.ReadBlob(blob_pb2.ReadBlobRequest(digest=digest, offset=offset, length=length))
    parts = [reply.data async for reply in call]
    assert all(len(part) <= rpc.STREAM_CHUNK_BYTES for part in parts)
    return b"".join(parts)


async def test_health_is_serving(channel: grpc.aio.Channel) -> None:
    health: Any = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(channel: grpc.aio.Channel) -> None:
    # The typeshed stubs of grpcio-reflection omit the stub's methods.
    untyped: Any = channel
    reflection: Any = reflection_pb2_grpc.ServerReflectionStub(untyped)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = [reply async for reply in reflection.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names


async def test_upload_commit_read_delete(stub: Stub) -> None:
    rng = random.Random(1)
    first, second = [rng.randbytes(MiB), rng.randbytes(12345)], [rng.randbytes(3 * MiB)]
    data = b"".join(first + second)
    upload_id = str(uuid.uuid4())

    status = await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
    assert (status.upload_id, status.size) == (upload_id, 0)
    status = await stub.WriteUpload(messages(upload_id, first, offset=0))
    assert status.size == MiB + 12345
    status = await stub.WriteUpload(messages(upload_id, second))
    assert status.size == len(data)
    # StartUpload again leaves the session as it is.
    assert (await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))).size == (
        len(data)
    )
    status = await stub.GetUploadStatus(blob_pb2.GetUploadStatusRequest(upload_id=upload_id))
    assert status.size == len(data)

    digest = digest_of(data)
    info = await stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digest))
    assert (info.digest, info.size) == (digest, len(data))
    await expect_error(
        stub.GetUploadStatus(blob_pb2.GetUploadStatusRequest(upload_id=upload_id)),
        grpc.StatusCode.NOT_FOUND,
        Reason.BLOB_UPLOAD_UNKNOWN,
    )
    info = await stub.StatBlob(blob_pb2.StatBlobRequest(digest=digest))
    assert (info.digest, info.size) == (digest, len(data))
    assert await read(stub, digest) == data
    assert await read(stub, digest, offset=MiB - 5, length=10) == data[MiB - 5 : MiB + 5]
    assert await read(stub, digest, offset=len(data) - 3) == data[-3:]
    assert await read(stub, digest, offset=len(data)) == b""

    deleted = await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))
    assert (deleted.deleted, deleted.size) == (True, len(data))
    deleted = await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))
    assert (deleted.deleted, deleted.size) == (False, 0)


async def test_start_on_write_and_commit(stub: Stub) -> None:
    """`start` begins a session that does not exist (as StartUpload) on the first append
    or on the commit itself; on one that exists it changes nothing. Without it, the same
    calls on an unknown session fail (test_upload_errors)."""
    streamed, inline = str(uuid.uuid4()), str(uuid.uuid4())
    first, rest = b"first bytes, ", b"then the rest"

    async def started(upload_id: str, chunk: bytes) -> AsyncIterator[blob_pb2.WriteUploadRequest]:
        yield blob_pb2.WriteUploadRequest(
            header=blob_pb2.UploadHeader(upload_id=upload_id, start=True)
        )
        yield blob_pb2.WriteUploadRequest(data=chunk)

    assert (await stub.WriteUpload(started(streamed, first))).size == len(first)
    assert (await stub.WriteUpload(started(streamed, rest))).size == len(first + rest)
    digest = digest_of(first, rest)
    info = await stub.CommitUpload(
        blob_pb2.CommitUploadRequest(upload_id=streamed, digest=digest, start=True)
    )
    assert (info.digest, info.size) == (digest, len(first + rest))
    assert await read(stub, digest) == first + rest

    body = b"a small blob in the closing call"
    info = await stub.CommitUpload(
        blob_pb2.CommitUploadRequest(
            upload_id=inline, digest=digest_of(body), data=body, start=True
        )
    )
    assert (info.digest, info.size) == (digest_of(body), len(body))
    assert await read(stub, digest_of(body)) == body
    await expect_error(
        stub.GetUploadStatus(blob_pb2.GetUploadStatusRequest(upload_id=inline)),
        grpc.StatusCode.NOT_FOUND,
        Reason.BLOB_UPLOAD_UNKNOWN,
    )
    for digest in (digest_of(first, rest), digest_of(body)):
        await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))


async def test_cancel_upload(stub: Stub) -> None:
    upload_id = str(uuid.uuid4())
    await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
    await stub.WriteUpload(messages(upload_id, [b"abc"]))
    reply = await stub.CancelUpload(blob_pb2.CancelUploadRequest(upload_id=upload_id))
    assert reply.cancelled is True
    reply = await stub.CancelUpload(blob_pb2.CancelUploadRequest(upload_id=upload_id))
    assert reply.cancelled is False


async def test_upload_errors(stub: Stub) -> None:
    invalid, unknown = "not/valid", str(uuid.uuid4())
    for bad in (invalid, "", "x" * 65):
        await expect_error(
            stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=bad)),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.BLOB_UPLOAD_INVALID,
        )
    await expect_error(
        stub.WriteUpload(messages(invalid, [b"x"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.BLOB_UPLOAD_INVALID,
    )
    await expect_error(
        stub.GetUploadStatus(blob_pb2.GetUploadStatusRequest(upload_id=invalid)),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.BLOB_UPLOAD_INVALID,
    )
    await expect_error(
        stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=invalid, digest=digest_of(b"x"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.BLOB_UPLOAD_INVALID,
    )
    await expect_error(
        stub.CancelUpload(blob_pb2.CancelUploadRequest(upload_id=invalid)),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.BLOB_UPLOAD_INVALID,
    )
    await expect_error(
        stub.WriteUpload(messages(unknown, [b"x"])),
        grpc.StatusCode.NOT_FOUND,
        Reason.BLOB_UPLOAD_UNKNOWN,
    )
    await expect_error(
        stub.GetUploadStatus(blob_pb2.GetUploadStatusRequest(upload_id=unknown)),
        grpc.StatusCode.NOT_FOUND,
        Reason.BLOB_UPLOAD_UNKNOWN,
    )
    await expect_error(
        stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=unknown, digest=digest_of(b"x"))),
        grpc.StatusCode.NOT_FOUND,
        Reason.BLOB_UPLOAD_UNKNOWN,
    )
    reply = await stub.CancelUpload(blob_pb2.CancelUploadRequest(upload_id=unknown))
    assert reply.cancelled is False


async def test_malformed_write_streams(stub: Stub) -> None:
    upload_id = str(uuid.uuid4())
    await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))

    async def no_header() -> AsyncIterator[blob_pb2.WriteUploadRequest]:
        yield blob_pb2.WriteUploadRequest(data=b"x")

    async def two_headers() -> AsyncIterator[blob_pb2.WriteUploadRequest]:
        yield header(upload_id)
        yield blob_pb2.WriteUploadRequest(data=b"ab")
        yield header(upload_id)

    async def nothing() -> AsyncIterator[blob_pb2.WriteUploadRequest]:
        return
        yield

    for stream in (no_header(), two_headers(), nothing()):
        await expect_error(
            stub.WriteUpload(stream), grpc.StatusCode.INVALID_ARGUMENT, Reason.BLOB_UPLOAD_INVALID
        )
    # Data before a misplaced header was received, and stays.
    status = await stub.GetUploadStatus(blob_pb2.GetUploadStatusRequest(upload_id=upload_id))
    assert status.size == 2
    await stub.CancelUpload(blob_pb2.CancelUploadRequest(upload_id=upload_id))


async def test_offset_mismatch(stub: Stub) -> None:
    upload_id = str(uuid.uuid4())
    await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
    await stub.WriteUpload(messages(upload_id, [b"12345"], offset=0))
    for wrong in (0, 4, 6):
        await expect_error(
            stub.WriteUpload(messages(upload_id, [b"678"], offset=wrong)),
            grpc.StatusCode.OUT_OF_RANGE,
            Reason.RANGE_INVALID,
        )
    status = await stub.GetUploadStatus(blob_pb2.GetUploadStatusRequest(upload_id=upload_id))
    assert status.size == 5
    assert (await stub.WriteUpload(messages(upload_id, [b"678"], offset=5))).size == 8
    await stub.CancelUpload(blob_pb2.CancelUploadRequest(upload_id=upload_id))


async def test_digest_errors(stub: Stub) -> None:
    upload_id = str(uuid.uuid4())
    await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
    await stub.WriteUpload(messages(upload_id, [b"content"]))
    for wrong in (digest_of(b"other"), "sha256:abc", "md5:" + "0" * 32, "nonsense"):
        await expect_error(
            stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=wrong)),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.DIGEST_INVALID,
        )
    # The session survived the mismatches; the right digest commits it.
    status = await stub.GetUploadStatus(blob_pb2.GetUploadStatusRequest(upload_id=upload_id))
    assert status.size == len(b"content")
    digest = digest_of(b"content")
    await stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digest))

    for malformed in ("sha256:XYZ", "", "sha256:" + "0" * 63):
        await expect_error(
            stub.StatBlob(blob_pb2.StatBlobRequest(digest=malformed)),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.DIGEST_INVALID,
        )
        await expect_stream_error(
            stub.ReadBlob(blob_pb2.ReadBlobRequest(digest=malformed)),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.DIGEST_INVALID,
        )
        await expect_error(
            stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=malformed)),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.DIGEST_INVALID,
        )
    assert (await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))).deleted


async def test_blob_errors(stub: Stub) -> None:
    missing = digest_of(b"never pushed")
    await expect_error(
        stub.StatBlob(blob_pb2.StatBlobRequest(digest=missing)),
        grpc.StatusCode.NOT_FOUND,
        Reason.BLOB_UNKNOWN,
    )
    await expect_stream_error(
        stub.ReadBlob(blob_pb2.ReadBlobRequest(digest=missing)),
        grpc.StatusCode.NOT_FOUND,
        Reason.BLOB_UNKNOWN,
    )
    assert (await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=missing))).deleted is False

    upload_id = str(uuid.uuid4())
    await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
    await stub.WriteUpload(messages(upload_id, [b"0123456789"]))
    digest = digest_of(b"0123456789")
    await stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digest))
    for offset, length in ((11, 0), (10, 1), (0, 11), (9, 2), (-1, 0), (0, -1)):
        await expect_stream_error(
            stub.ReadBlob(blob_pb2.ReadBlobRequest(digest=digest, offset=offset, length=length)),
            grpc.StatusCode.OUT_OF_RANGE,
            Reason.RANGE_INVALID,
        )
    assert await read(stub, digest, offset=9, length=1) == b"9"
    assert (await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))).deleted


async def test_throughput_256_mib(
    stub: Stub,
    capsys: pytest.CaptureFixture[str],
    record_property: Any,
) -> None:
    block = random.Random(2).randbytes(rpc.STREAM_CHUNK_BYTES)
    count = 256
    digest = digest_of(*([block] * count))
    upload_id = str(uuid.uuid4())
    await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))

    started = time.perf_counter()
    status = await stub.WriteUpload(messages(upload_id, [block] * count, offset=0))
    info = await stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digest))
    write_seconds = time.perf_counter() - started
    assert status.size == info.size == count * MiB

    started = time.perf_counter()
    received = 0
    async for reply in stub.ReadBlob(blob_pb2.ReadBlobRequest(digest=digest)):
        received += len(reply.data)
    read_seconds = time.perf_counter() - started
    assert received == count * MiB

    write_rate, read_rate = count / write_seconds, count / read_seconds
    record_property("write_commit_mib_per_s", round(write_rate))
    record_property("read_mib_per_s", round(read_rate))
    with capsys.disabled():
        print(
            f"\nblob_svc over unix socket, {count} MiB: WriteUpload+CommitUpload "
            f"{write_rate:.0f} MiB/s, ReadBlob {read_rate:.0f} MiB/s"
        )
    assert (await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))).deleted


async def test_many_concurrent_uploads(stub: Stub) -> None:
    rng = random.Random(3)
    blobs = [rng.randbytes(rng.randrange(1, 3 * MiB)) for _ in range(8)] + [b"same"] * 4

    async def push(data: bytes) -> blob_pb2.BlobInfo:
        upload_id = str(uuid.uuid4())
        await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
        chunks = [data[i : i + MiB] for i in range(0, len(data), MiB)]
        await stub.WriteUpload(messages(upload_id, chunks, offset=0))
        return await stub.CommitUpload(
            blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digest_of(data))
        )

    infos = await asyncio.gather(*(push(data) for data in blobs))
    for info, data in zip(infos, blobs, strict=True):
        assert info.digest == digest_of(data)
        assert await read(stub, info.digest) == data
    for digest in {info.digest for info in infos}:
        assert (await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))).deleted


async def test_client_gone_mid_stream_then_resume(stub: Stub) -> None:
    rng = random.Random(4)
    chunks = [rng.randbytes(MiB) for _ in range(10)]
    upload_id = str(uuid.uuid4())
    await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))

    async def client_goes_away() -> AsyncIterator[blob_pb2.WriteUploadRequest]:
        # What the gateway's request stream does when its HTTP client disconnects.
        yield header(upload_id, 0)
        for chunk in chunks[:6]:
            yield blob_pb2.WriteUploadRequest(data=chunk)
        await asyncio.sleep(0.5)  # the chunks are on their way; let them arrive
        raise ConnectionResetError("the HTTP client went away")

    with pytest.raises(asyncio.CancelledError):
        await stub.WriteUpload(client_goes_away())

    # Every chunk that arrived before the client left is kept; the client resumes there.
    request = blob_pb2.GetUploadStatusRequest(upload_id=upload_id)
    size = (await stub.GetUploadStatus(request)).size
    assert size == 6 * MiB
    status = await stub.WriteUpload(messages(upload_id, chunks[6:], offset=size))
    assert status.size == 10 * MiB
    digest = digest_of(*chunks)
    await stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digest))
    assert await read(stub, digest) == b"".join(chunks)
    assert (await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))).deleted


async def test_list_blobs_and_uploads(stub: Stub) -> None:
    """GC's view of storage: canonical blobs in digest order and upload sessions in id
    order, page by page."""
    stored: dict[str, int] = {}
    for n in range(5):
        upload_id = str(uuid.uuid4())
        data = f"blob {n} to list".encode()
        await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
        await stub.WriteUpload(messages(upload_id, [data]))
        digest = digest_of(data)
        await stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digest))
        stored[digest] = len(data)
    sessions = sorted(str(uuid.uuid4()) for _ in range(3))
    for upload_id in sessions:
        await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
        await stub.WriteUpload(messages(upload_id, [b"partial"]))
    try:
        listed: list[blob_pb2.StoredBlob] = []
        after, more = "", True
        while more:
            page = await stub.ListBlobs(blob_pb2.ListBlobsRequest(after=after, limit=2))
            assert len(page.blobs) <= 2
            listed += page.blobs
            after, more = (page.blobs[-1].digest if page.blobs else after), page.more
        assert [b.digest for b in listed] == sorted(stored)
        assert all(b.size == stored[b.digest] and b.modified_at > 0 for b in listed)

        uploads = await stub.ListUploads(blob_pb2.ListUploadsRequest(after=sessions[0], limit=1))
        assert [(u.upload_id, u.size) for u in uploads.uploads] == [(sessions[1], 7)]
        assert uploads.more
        uploads = await stub.ListUploads(blob_pb2.ListUploadsRequest(limit=1000))
        assert [u.upload_id for u in uploads.uploads] == sessions
        assert not uploads.more

        for bad in (0, 1001):
            await expect_error(
                stub.ListBlobs(blob_pb2.ListBlobsRequest(limit=bad)),
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.PAGINATION_INVALID,
            )
            await expect_error(
                stub.ListUploads(blob_pb2.ListUploadsRequest(limit=bad)),
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.PAGINATION_INVALID,
            )
        await expect_error(
            stub.ListBlobs(blob_pb2.ListBlobsRequest(after="sha256:nope", limit=1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.DIGEST_INVALID,
        )
    finally:
        for digest in stored:
            await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))
        for upload_id in sessions:
            await stub.CancelUpload(blob_pb2.CancelUploadRequest(upload_id=upload_id))


async def test_presign_blob(backend: str, stub: Stub) -> None:
    data = b"fetched straight from the store"
    upload_id = str(uuid.uuid4())
    await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
    await stub.WriteUpload(messages(upload_id, [data]))
    digest = digest_of(data)
    await stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digest))
    try:
        for bad in (0, 3601):
            await expect_error(
                stub.PresignBlob(blob_pb2.PresignBlobRequest(digest=digest, expires_seconds=bad)),
                grpc.StatusCode.UNIMPLEMENTED,
                Reason.UNSUPPORTED,
            )
        await expect_error(
            stub.PresignBlob(blob_pb2.PresignBlobRequest(digest="sha256:x", expires_seconds=9)),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.DIGEST_INVALID,
        )
        request = blob_pb2.PresignBlobRequest(digest=digest, expires_seconds=30)
        if backend == "file":
            # Local disk cannot presign: the caller streams with ReadBlob.
            await expect_error(
                stub.PresignBlob(request), grpc.StatusCode.UNIMPLEMENTED, Reason.UNSUPPORTED
            )
            return
        url = (await stub.PresignBlob(request)).url
        assert "X-Amz-Expires=30" in url
        assert await asyncio.to_thread(fetch, url) == data
    finally:
        await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))


async def test_commit_with_data(stub: Stub) -> None:
    head, tail = b"streamed first, ", b"then sent with the commit"
    upload_id = str(uuid.uuid4())
    await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
    await stub.WriteUpload(messages(upload_id, [head]))
    # A wrong digest: the data stays appended, the session stays for a retry.
    await expect_error(
        stub.CommitUpload(
            blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digest_of(b"other"), data=tail)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.DIGEST_INVALID,
    )
    status = await stub.GetUploadStatus(blob_pb2.GetUploadStatusRequest(upload_id=upload_id))
    assert status.size == len(head + tail)
    digest = digest_of(head, tail)
    info = await stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digest))
    try:
        assert (info.digest, info.size) == (digest, len(head + tail))
        assert await read(stub, digest) == head + tail
    finally:
        await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))


async def test_stat_blobs(stub: Stub) -> None:
    stored = [f"stat {i}".encode() for i in range(3)]
    digests = []
    for data in stored:
        upload_id = str(uuid.uuid4())
        await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
        await stub.WriteUpload(messages(upload_id, [data]))
        digests.append(digest_of(data))
        await stub.CommitUpload(
            blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digests[-1])
        )
    absent = digest_of(b"never stored")
    try:
        asked = [digests[2], absent, digests[0], digests[1]]
        reply = await stub.StatBlobs(blob_pb2.StatBlobsRequest(digests=asked))
        assert [(b.digest, b.size) for b in reply.blobs] == [
            (digests[2], len(stored[2])),
            (digests[0], len(stored[0])),
            (digests[1], len(stored[1])),
        ]
        await expect_error(
            stub.StatBlobs(blob_pb2.StatBlobsRequest(digests=[digests[0], "sha256:x"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.DIGEST_INVALID,
        )
        for count in (0, 1001):
            await expect_error(
                stub.StatBlobs(blob_pb2.StatBlobsRequest(digests=[absent] * count)),
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.PAGINATION_INVALID,
            )
    finally:
        for digest in digests:
            await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))


async def test_locate_blob(backend: str, stub: Stub) -> None:
    data = b"sent by the kernel"
    upload_id = str(uuid.uuid4())
    await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
    await stub.WriteUpload(messages(upload_id, [data]))
    digest = digest_of(data)
    await stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digest))
    request = blob_pb2.LocateBlobRequest(digest=digest)
    try:
        await expect_error(
            stub.LocateBlob(blob_pb2.LocateBlobRequest(digest="sha256:x")),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.DIGEST_INVALID,
        )
        if backend == "s3":
            # Object storage has no local file: the caller streams with ReadBlob.
            await expect_error(
                stub.LocateBlob(request), grpc.StatusCode.UNIMPLEMENTED, Reason.UNSUPPORTED
            )
            return
        location = await stub.LocateBlob(request)
        assert location.size == len(data)
        assert Path(location.path).is_absolute()
        assert await asyncio.to_thread(Path(location.path).read_bytes) == data
    finally:
        await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))
    if backend == "file":
        await expect_error(stub.LocateBlob(request), grpc.StatusCode.NOT_FOUND, Reason.BLOB_UNKNOWN)


async def announced(upload_id: str, sizes: list[int]) -> AsyncIterator[blob_pb2.WriteUploadRequest]:
    """A WriteUpload of a caller that appends to the session's file itself."""
    yield blob_pb2.WriteUploadRequest(
        header=blob_pb2.UploadHeader(upload_id=upload_id, appended_by_caller=True)
    )
    for size in sizes:
        yield blob_pb2.WriteUploadRequest(appended=size)


def locked_for_append(path: str) -> int:
    """A descriptor of a session's file open for appending, holding its lock (as the
    gateway holds it while it appends)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


async def test_locate_upload_and_append_there(backend: str, stub: Stub) -> None:
    """A caller on this host appends to the session's file itself, under its lock, and
    announces the bytes; blob_svc's own writes wait for the lock."""
    upload_id = str(uuid.uuid4())
    if backend == "s3":
        await expect_error(
            stub.LocateUpload(blob_pb2.LocateUploadRequest(upload_id=upload_id, start=True)),
            grpc.StatusCode.UNIMPLEMENTED,
            Reason.UNSUPPORTED,
        )
        await expect_error(
            stub.WriteUpload(announced(upload_id, [0])),
            grpc.StatusCode.UNIMPLEMENTED,
            Reason.UNSUPPORTED,
        )
        return
    await expect_error(
        stub.LocateUpload(blob_pb2.LocateUploadRequest(upload_id=upload_id)),
        grpc.StatusCode.NOT_FOUND,
        Reason.BLOB_UPLOAD_UNKNOWN,
    )
    await expect_error(
        stub.WriteUpload(announced(upload_id, [0])),
        grpc.StatusCode.NOT_FOUND,
        Reason.BLOB_UPLOAD_UNKNOWN,
    )
    first, second, third = b"streamed by blob_svc, ", b"appended by the caller, ", b"and more"
    location = await stub.LocateUpload(
        blob_pb2.LocateUploadRequest(upload_id=upload_id, start=True)
    )
    assert Path(location.path).is_absolute() and location.size == 0
    await stub.WriteUpload(messages(upload_id, [first]))
    again = await stub.LocateUpload(blob_pb2.LocateUploadRequest(upload_id=upload_id))
    assert (again.path, again.size) == (location.path, len(first))

    fd = locked_for_append(location.path)
    try:
        os.write(fd, second[:9])
        os.write(fd, second[9:])
        writing = asyncio.ensure_future(stub.WriteUpload(messages(upload_id, [third])))
        status = await stub.WriteUpload(announced(upload_id, [len(first) + 9, len(first + second)]))
        assert status.size == len(first + second)
        await asyncio.sleep(0.3)
        assert not writing.done(), "blob_svc wrote to the session while its file was locked"
    finally:
        os.close(fd)
    # The lock released, blob_svc's stream appends after the caller's bytes.
    assert (await writing).size == len(first + second + third)
    digest = digest_of(first, second, third)
    info = await stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digest))
    try:
        assert (info.digest, info.size) == (digest, len(first + second + third))
        assert await read(stub, digest) == first + second + third
        # The session ended with the commit.
        await expect_error(
            stub.LocateUpload(blob_pb2.LocateUploadRequest(upload_id=upload_id)),
            grpc.StatusCode.NOT_FOUND,
            Reason.BLOB_UPLOAD_UNKNOWN,
        )
    finally:
        await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))


async def test_appends_by_the_caller_that_go_wrong(backend: str, stub: Stub) -> None:
    """Announcements that do not match the file are refused; bytes appended but never
    announced (a gateway that died) are still the session's, hashed by the commit, which
    waits for the lock, as a cancel does."""
    upload_id = str(uuid.uuid4())
    if backend == "s3":
        # Not even a session that exists has a file here.
        await stub.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
        await expect_error(
            stub.LocateUpload(blob_pb2.LocateUploadRequest(upload_id=upload_id)),
            grpc.StatusCode.UNIMPLEMENTED,
            Reason.UNSUPPORTED,
        )
        await stub.CancelUpload(blob_pb2.CancelUploadRequest(upload_id=upload_id))
        return
    location = await stub.LocateUpload(
        blob_pb2.LocateUploadRequest(upload_id=upload_id, start=True)
    )
    fd = locked_for_append(location.path)
    try:
        os.write(fd, b"12345")
        for sizes in ([6], [3, 2], [5, 4]):
            await expect_error(
                stub.WriteUpload(announced(upload_id, sizes)),
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.BLOB_UPLOAD_INVALID,
            )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.WriteUpload(announced(upload_id, [6]))
        assert "fewer than the 6 bytes announced" in str(caught.value.details())

        async def data_after_announcing() -> AsyncIterator[blob_pb2.WriteUploadRequest]:
            async for message in announced(upload_id, [5]):
                yield message
            yield blob_pb2.WriteUploadRequest(data=b"x")

        await expect_error(
            stub.WriteUpload(data_after_announcing()),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.BLOB_UPLOAD_INVALID,
        )
        os.write(fd, b"678")
        # The answer is the session's size, announced or not.
        assert (await stub.WriteUpload(announced(upload_id, []))).size == 8
        digest = digest_of(b"12345678")
        commit = asyncio.ensure_future(
            stub.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=digest))
        )
        await asyncio.sleep(0.3)
        assert not commit.done(), "a commit ran while the session's file was locked"
    finally:
        os.close(fd)
    info = await commit
    try:
        assert (info.digest, info.size) == (digest, 8)
        assert await read(stub, digest) == b"12345678"
    finally:
        await stub.DeleteBlob(blob_pb2.DeleteBlobRequest(digest=digest))

    upload_id = str(uuid.uuid4())
    location = await stub.LocateUpload(
        blob_pb2.LocateUploadRequest(upload_id=upload_id, start=True)
    )
    fd = locked_for_append(location.path)
    try:
        cancel = asyncio.ensure_future(
            stub.CancelUpload(blob_pb2.CancelUploadRequest(upload_id=upload_id))
        )
        await asyncio.sleep(0.3)
        assert not cancel.done(), "a cancel ran while the session's file was locked"
    finally:
        os.close(fd)
    assert (await cancel).cancelled
    assert not await asyncio.to_thread(os.path.exists, location.path)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as reply:
        body: bytes = reply.read()
        return body


async def test_abort_stale_multipart_uploads(stub: Stub) -> None:
    """Nothing is stale here (every commit finished): nothing to abort, on any storage."""
    reply = await stub.AbortStaleMultipartUploads(
        blob_pb2.AbortStaleMultipartUploadsRequest(older_than_seconds=3600)
    )
    assert reply.aborted == 0
    await expect_error(
        stub.AbortStaleMultipartUploads(
            blob_pb2.AbortStaleMultipartUploadsRequest(older_than_seconds=59)
        ),
        grpc.StatusCode.UNIMPLEMENTED,
        Reason.UNSUPPORTED,
    )
