"""WatchManifestChanges: a real metadata_svc holds each commit that changes manifest reads
until every leased watcher has acknowledged it, and names what changed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from artifactstore import rpc
from artifactstore.digests import sha256_of
from artifactstore.metadata.v1 import metadata_pb2 as pb
from tests.contract.test_metadata_service import CONFIG, LAYER, image, link
from tests.contract.test_metadata_service import stub as stub

if TYPE_CHECKING:
    from artifactstore.metadata.v1.metadata_pb2_grpc import MetadataServiceAsyncStub as Stub


class Watcher:
    """One watch stream whose acks the test sends (or withholds) itself."""

    def __init__(self, stub: Stub) -> None:
        self._acks: asyncio.Queue[pb.ManifestChangesAck] = asyncio.Queue()
        self._next_ack = 0
        self.call = stub.WatchManifestChanges(self._outgoing())

    async def _outgoing(self) -> AsyncIterator[pb.ManifestChangesAck]:
        while True:
            yield await self._acks.get()

    async def next(self) -> pb.ManifestChanges:
        message = await asyncio.wait_for(self.call.read(), 10)
        assert isinstance(message, pb.ManifestChanges)
        return message

    def ack(self, sequence: int) -> None:
        self._next_ack += 1
        self._acks.put_nowait(pb.ManifestChangesAck(ack_id=self._next_ack, sequence=sequence))

    async def next_change(self) -> pb.ManifestChanges:
        """The next message that names a change (heartbeats acknowledged and skipped)."""
        while True:
            message = await self.next()
            if message.repositories or message.projects or message.everything:
                return message
            self.ack(message.sequence)


async def watching(stub: Stub) -> tuple[Watcher, pb.ManifestChanges]:
    """A watch whose first message (returned) is acknowledged, so it holds a lease."""
    watcher = Watcher(stub)
    first = await watcher.next()
    watcher.ack(first.sequence)
    return watcher, first


def put(stub: Stub, repo: str, tag: str, watcher: str = "") -> asyncio.Task[pb.PutManifestResponse]:
    body = image(annotations={"n": tag})
    request = pb.PutManifestRequest(
        repository=repo,
        reference=tag,
        media_type="application/vnd.oci.image.manifest.v1+json",
        content=body,
    )
    metadata = ((rpc.WATCHER_METADATA, watcher),) if watcher else ()
    return asyncio.ensure_future(rpc.call(stub.PutManifest(request, metadata=metadata)))


async def test_a_commit_waits_for_the_watchers_ack(stub: Stub) -> None:
    await link(stub, "p/app", CONFIG, LAYER)
    watcher, first = await watching(stub)
    assert first.cacheable and first.lease_seconds > 0 and not first.repositories

    pushed = put(stub, "p/app", "v1")
    change = await watcher.next_change()
    assert list(change.repositories) == ["p/app"] and change.sequence > first.sequence
    await asyncio.sleep(0.3)
    assert not pushed.done(), "the commit answered before the watcher acknowledged it"
    watcher.ack(change.sequence)
    reply = await asyncio.wait_for(pushed, 5)
    assert reply.digest.startswith("sha256:")

    # A blob link made or removed changes StatBlobLink's answers (the gateway caches
    # them for blob HEADs and GETs): named and waited for the same way.
    another = str(sha256_of(b"another"))
    unlink = pb.UnlinkBlobRequest(repository="p/app", digest=another)
    # Each call is made only when its turn comes: a gRPC call starts once it is created.
    writes: tuple[Callable[[], Awaitable[object]], ...] = (
        lambda: link(stub, "p/app", another),
        lambda: rpc.call(stub.UnlinkBlob(unlink)),
    )
    for write in writes:
        written = asyncio.ensure_future(write())
        change = await watcher.next_change()
        assert list(change.repositories) == ["p/app"]
        await asyncio.sleep(0.3)
        assert not written.done(), "the link commit answered before the watcher's ack"
        watcher.ack(change.sequence)
        await asyncio.wait_for(written, 5)

    # An upload session changes no cached read: no message, no wait.
    started = time.monotonic()
    await rpc.call(stub.CreateUpload(pb.CreateUploadRequest(repository="p/app")))
    assert time.monotonic() - started < 1.0
    watcher.call.cancel()


async def test_a_silent_watcher_holds_commits_for_one_lease_at_most(stub: Stub) -> None:
    await link(stub, "p/app", CONFIG, LAYER)
    watcher, first = await watching(stub)
    started = time.monotonic()
    await asyncio.wait_for(put(stub, "p/app", "v1"), 15)  # never acknowledged
    held = time.monotonic() - started
    assert 0.5 < held <= first.lease_seconds + 1.5
    watcher.call.cancel()


async def test_a_closed_watch_releases_waiting_commits(stub: Stub) -> None:
    await link(stub, "p/app", CONFIG, LAYER)
    watcher, _ = await watching(stub)
    pushed = put(stub, "p/app", "v1")
    await watcher.next_change()
    watcher.call.cancel()
    await asyncio.wait_for(pushed, 2)


async def test_the_writers_own_watch_is_not_waited_for(stub: Stub) -> None:
    """A gateway naming its own watch with a write (PutManifest, LinkBlob, MountBlob,
    UnlinkBlob) drops its copies itself: the commit answers without its ack, the others
    are told what changed, and it is not (its stream only moves on to the commit's
    sequence); others' commits it is told of."""
    await link(stub, "p/app", CONFIG, LAYER)
    (writer, first), (other, _) = await watching(stub), await watching(stub)
    assert first.watcher_id
    pushed = put(stub, "p/app", "v1", watcher=first.watcher_id)
    change = await other.next_change()
    assert list(change.repositories) == ["p/app"]
    other.ack(change.sequence)
    reply = await asyncio.wait_for(pushed, 2)
    assert reply.digest.startswith("sha256:")
    while (told := await writer.next()).sequence < change.sequence:
        writer.ack(told.sequence)
    assert not told.repositories and not told.everything, told
    writer.ack(told.sequence)

    # So do its blob link writes: made, mounted and removed without its ack.
    named = ((rpc.WATCHER_METADATA, first.watcher_id),)
    another = str(sha256_of(b"another"))
    linking = pb.LinkBlobRequest(repository="p/app", digest=another, size=5)
    mounting = pb.MountBlobRequest(repository="p/copy", from_repository="p/app", digest=another)
    unlinking = pb.UnlinkBlobRequest(repository="p/app", digest=another)
    writes: tuple[Callable[[], Awaitable[object]], ...] = (
        lambda: rpc.call(stub.LinkBlob(linking, metadata=named)),
        lambda: rpc.call(stub.MountBlob(mounting, metadata=named)),
        lambda: rpc.call(stub.UnlinkBlob(unlinking, metadata=named)),
    )
    for write in writes:
        written = asyncio.ensure_future(write())
        other.ack((await other.next_change()).sequence)
        await asyncio.wait_for(written, 2)

    pushed = put(stub, "p/app", "v2")  # a commit of no watcher's
    assert list((await writer.next_change()).repositories) == ["p/app"]
    writer.call.cancel()
    other.call.cancel()
    await asyncio.wait_for(pushed, 2)
