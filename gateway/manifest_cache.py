"""The gateway's cache of manifest reads (GetManifest answers, ListTags pages and
StatBlobLink answers, which blob HEADs and GETs ask), coherent with every write.

metadata_svc's WatchManifestChanges stream names each repository a commit changed, and a
commit is answered only once this gateway has acknowledged it (or its lease has run out):
so a push that returned is never followed by an older answer from here, whichever gateway
the push went through. Entries are used only while the lease runs; a broken stream drops
them all. A read that a change overtook is not stored (`generation`). Without the lease
(starting, metadata_svc away, or a store with other writers) every read goes to
metadata_svc as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import grpc
from google.protobuf.message import Message
from prometheus_client import Counter

from artifactstore.metadata.v1 import metadata_pb2 as md
from artifactstore.metrics import REGISTRY
from artifactstore.rpc import WATCHER_METADATA

if TYPE_CHECKING:
    from artifactstore.metadata.v1.metadata_pb2_grpc import MetadataServiceAsyncStub

log = logging.getLogger(__name__)

# The lease is cut short by this much, for the two clocks' rates.
LEASE_MARGIN_SECONDS = 0.5
# Larger manifests are rare and would crowd out the rest.
MAX_ENTRY_BYTES = 1024 * 1024
# A bound on each entry's bookkeeping, on top of its content.
ENTRY_OVERHEAD = 512
RECONNECT_SECONDS = 1.0
# When metadata_svc says not to cache, ask again this much later (it may be replaced).
UNCACHEABLE_RETRY_SECONDS = 30.0

LOOKUPS = Counter(
    "artifactstore_manifest_cache_lookups",
    "Manifest, tag-list and blob-link reads the gateway answered from its cache (hit) or from "
    "metadata_svc (miss).",
    ["read", "result"],
    registry=REGISTRY,
)

# (repository, what is read: "manifest", "tags" or "link", then that read's arguments).
Key = tuple[str, ...]
M = TypeVar("M", bound=Message)


class ManifestCache:
    """metadata_svc's answers to manifest reads of a repository, by `Key`, bounded in
    bytes (LRU)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        # Each answer with the bytes it is counted for.
        self._entries: OrderedDict[Key, tuple[Message, int]] = OrderedDict()
        self._by_repository: dict[str, set[Key]] = {}
        self._bytes = 0
        # Until when (monotonic) the entries may be used; 0 without a lease.
        self._lease_until = 0.0
        # Moves on every change applied: a read begun before it may be stale.
        self.generation = 0
        # This gateway's watch, named to metadata_svc with its own writes.
        self._watcher_id = ""

    def leased(self) -> bool:
        return time.monotonic() < self._lease_until

    async def read(self, key: Key, kind: type[M], fetch: Callable[[], Awaitable[M]]) -> M:
        """The cached answer to a read, or `fetch()`'s, kept unless a change overtook it."""
        answer = self._get(key, kind)
        if answer is None:
            generation = self.generation
            answer = await fetch()
            self._put(key, answer, generation)
        return answer

    def _get(self, key: Key, kind: type[M]) -> M | None:
        """The cached answer (a `kind`), or None (absent, or no lease to use it by)."""
        entry = self._entries.get(key) if self.leased() else None
        if entry is None or not isinstance(entry[0], kind):
            LOOKUPS.labels(key[1], "miss").inc()
            return None
        self._entries.move_to_end(key)
        LOOKUPS.labels(key[1], "hit").inc()
        return entry[0]

    def _put(self, key: Key, answer: Message, generation: int) -> None:
        """Keep an answer read while `generation` was current, unless a change came since."""
        size = answer.ByteSize() + ENTRY_OVERHEAD
        if generation != self.generation or not self.leased() or size > MAX_ENTRY_BYTES:
            return
        self._drop(key)
        self._entries[key] = (answer, size)
        self._by_repository.setdefault(key[0], set()).add(key)
        self._bytes += size
        while self._bytes > self._max_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= entry[1]
        keys = self._by_repository[key[0]]
        keys.discard(key)
        if not keys:
            del self._by_repository[key[0]]

    async def write(
        self, repository: str, send: Callable[[tuple[tuple[str, str], ...]], Awaitable[M]]
    ) -> M:
        """`send(metadata)`'s answer: a write to metadata_svc of `repository`'s reads, sent
        with metadata that spares its commit waiting for this gateway's own ack, and this
        gateway's copies of the repository dropped whatever the outcome."""
        try:
            return await send(((WATCHER_METADATA, self._watcher_id),) if self._watcher_id else ())
        finally:
            self.written(repository)

    def written(self, repository: str) -> None:
        """Drop the copies of a repository this gateway has just written (or may have:
        call it whatever the write's outcome)."""
        self.generation += 1
        for key in list(self._by_repository.get(repository, ())):
            self._drop(key)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_repository.clear()
        self._bytes = 0

    def apply(self, changes: md.ManifestChanges) -> None:
        """Drop what a change names."""
        if changes.everything:
            self.clear()
            return
        if not changes.repositories and not changes.projects:
            return
        self.generation += 1
        repositories = set(changes.repositories)
        for project in changes.projects:
            repositories.update(r for r in self._by_repository if r.split("/", 1)[0] == project)
        for repository in repositories:
            self.written(repository)

    async def watch(self, metadata: MetadataServiceAsyncStub) -> None:
        """Follow metadata_svc's change feed for good, reconnecting when it breaks (and
        dropping every entry, since changes may have been missed meanwhile)."""
        while True:
            retry = RECONNECT_SECONDS
            try:
                retry = await self._follow(metadata)
            except grpc.aio.AioRpcError as err:
                log.debug("manifest change feed interrupted: %s", err.code())
            self._lease_until = 0.0
            self._watcher_id = ""
            self.clear()
            await asyncio.sleep(retry)

    async def _follow(self, metadata: MetadataServiceAsyncStub) -> float:
        acks: asyncio.Queue[md.ManifestChangesAck] = asyncio.Queue()
        sent_at: dict[int, float] = {}
        next_ack = 0

        async def outgoing() -> AsyncIterator[md.ManifestChangesAck]:
            while True:
                yield await acks.get()

        call = metadata.WatchManifestChanges(outgoing())
        try:
            async for changes in call:
                if not changes.cacheable:
                    return UNCACHEABLE_RETRY_SECONDS
                if next_ack == 0:
                    self.clear()  # Whatever was kept before this stream may be stale.
                    self._watcher_id = changes.watcher_id
                self.apply(changes)
                granted = sent_at.pop(changes.granted_ack_id, None)
                if granted is not None:
                    until = granted + changes.lease_seconds - LEASE_MARGIN_SECONDS
                    self._lease_until = max(self._lease_until, until)
                    for older in [i for i in sent_at if i < changes.granted_ack_id]:
                        del sent_at[older]
                next_ack += 1
                sent_at[next_ack] = time.monotonic()
                acks.put_nowait(md.ManifestChangesAck(ack_id=next_ack, sequence=changes.sequence))
        finally:
            call.cancel()
        return RECONNECT_SECONDS
