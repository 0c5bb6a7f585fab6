"""The manifest change feed: how readers that keep copies of GetManifest and ListTags
answers (the gateway's manifest cache) stay coherent with every commit.

Each commit that writes keys a manifest read depends on (`keys.manifest_read_scope`)
gets a sequence number and is sent to every watcher (`WatchManifestChanges`). The commit's
caller is answered only once every watcher has acknowledged that sequence, or once the
watcher's lease has run out: so when a push returns, no gateway serves what it replaced.

Leases (Gray and Cheriton's): a watcher's lease here runs `lease_seconds` from when this
service received its latest ack; the watcher counts its own from when it sent that ack,
which is earlier, and only once this service has echoed the ack's id. A watcher that
stops answering (stalled, partitioned) therefore holds commits back for at most one lease,
and by then it has stopped using its copies.

This works only where this process sees every commit: a backend that is its sole writer.
Otherwise the feed tells watchers to keep no copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import grpc

from artifactstore.metadata.v1 import metadata_pb2 as pb
from artifactstore.rpc import WATCHER_METADATA
from metadata_svc.keys import EVERYTHING, Keyspace, Scope, manifest_read_scope

# How long a watcher that stopped acknowledging can hold commits back; heartbeats renew
# leases four times per lease.
LEASE_SECONDS = 4.0
# Changes kept for watchers that are behind; one further behind is told to drop all.
BACKLOG = 10_000

# The watch whose ack the current call's commits need not wait for (its caller's).
_excused: contextvars.ContextVar[str] = contextvars.ContextVar("excused_watcher", default="")
_ids = itertools.count(1)


@contextlib.contextmanager
def excusing_caller(context: grpc.aio.ServicerContext) -> Iterator[None]:
    """Within the context, commits do not wait for the watch the caller named: a gateway
    that drops its own copies of what it wrote once answered."""
    named = dict(context.invocation_metadata() or ()).get(WATCHER_METADATA, "")
    token = _excused.set(named if isinstance(named, str) else "")
    try:
        yield
    finally:
        _excused.reset(token)


@dataclass(eq=False)
class _Watcher:
    # The last sequence it acknowledged, and until when (our clock) it holds a lease.
    acked: int
    lease_until: float
    sent: int
    ack_id: int = 0
    id: str = field(default_factory=lambda: str(next(_ids)))
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class ChangeFeed:
    """The `CommitObserver` of metadata_svc's database, and the watchers it serves."""

    def __init__(self, keys: Keyspace, *, lease_seconds: float = LEASE_SECONDS) -> None:
        self._keys = keys
        self._lease = lease_seconds
        self._loop = asyncio.get_running_loop()
        # Commits may be observed on the database's threads: the sequence and the
        # backlog are shared under this lock.
        self._lock = threading.Lock()
        self._sequence = 0
        # (sequence, scope, the excused watcher of the commit: it need not be told).
        self._backlog: deque[tuple[int, Scope, str]] = deque(maxlen=BACKLOG)
        self._watchers: set[_Watcher] = set()
        self._acked = asyncio.Condition()

    # -- CommitObserver ---------------------------------------------------------------

    def committed(self, written: Sequence[tuple[bytes, bytes]]) -> int:
        """See CommitObserver.committed."""
        scopes = {
            scope
            for begin, end in written
            if (scope := manifest_read_scope(self._keys, begin, end)) is not None
        }
        if not scopes:
            return 0
        writer = _excused.get()
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
            changed = {EVERYTHING} if EVERYTHING in scopes else scopes
            self._backlog.extend((sequence, scope, writer) for scope in changed)
        self._loop.call_soon_threadsafe(self._wake_all, writer)
        return sequence

    async def delivered(self, sequence: int) -> None:
        """See CommitObserver.delivered: wait until every leased watcher has acked."""
        excused = _excused.get()
        async with self._acked:
            while True:
                now = time.monotonic()
                waiting = [
                    w
                    for w in self._watchers
                    if w.acked < sequence and w.lease_until > now and w.id != excused
                ]
                if not waiting:
                    return
                timeout = min(w.lease_until for w in waiting) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._acked.wait(), timeout)

    def _wake_all(self, writer: str) -> None:
        # The writer's gateway drops its own copies; it hears of the commit with the next
        # change or heartbeat.
        for watcher in self._watchers:
            if watcher.id != writer:
                watcher.wake.set()

    # -- WatchManifestChanges ---------------------------------------------------------

    async def watch(
        self, acks: AsyncIterator[pb.ManifestChangesAck]
    ) -> AsyncIterator[pb.ManifestChanges]:
        """One watcher's stream: the current sequence, then changes and heartbeats, until
        the watcher goes away."""
        with self._lock:
            current = self._sequence
        # Until its first ack arrives, commits wait for it as if it held a lease.
        watcher = _Watcher(acked=current, lease_until=time.monotonic() + self._lease, sent=current)
        self._watchers.add(watcher)
        reader = asyncio.create_task(self._read_acks(watcher, acks))
        try:
            yield pb.ManifestChanges(
                sequence=current, cacheable=True, lease_seconds=self._lease, watcher_id=watcher.id
            )
            while not reader.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.wake.wait(), self._lease / 4)
                watcher.wake.clear()
                yield self._changes_since(watcher)
        finally:
            self._watchers.discard(watcher)
            reader.cancel()
            async with self._acked:
                self._acked.notify_all()

    def _changes_since(self, watcher: _Watcher) -> pb.ManifestChanges:
        scopes: set[Scope] = set()
        with self._lock:
            current = self._sequence
            oldest = self._backlog[0][0] if self._backlog else current + 1
            everything = watcher.sent + 1 < oldest and watcher.sent < current
            if not everything:
                # Newest first, stopping at what the watcher has had.
                for sequence, scope, writer in reversed(self._backlog):
                    if sequence <= watcher.sent:
                        break
                    if writer != watcher.id:
                        scopes.add(scope)
        watcher.sent = current
        message = pb.ManifestChanges(
            sequence=current,
            cacheable=True,
            lease_seconds=self._lease,
            granted_ack_id=watcher.ack_id,
            everything=everything or EVERYTHING in scopes,
        )
        message.repositories.extend(sorted(n for kind, n in scopes if kind == "repository"))
        message.projects.extend(sorted(n for kind, n in scopes if kind == "project"))
        return message

    async def _read_acks(
        self, watcher: _Watcher, acks: AsyncIterator[pb.ManifestChangesAck]
    ) -> None:
        async for ack in acks:
            first = watcher.ack_id == 0
            watcher.ack_id = ack.ack_id
            watcher.acked = max(watcher.acked, min(ack.sequence, watcher.sent))
            watcher.lease_until = time.monotonic() + self._lease
            async with self._acked:
                self._acked.notify_all()
            # Later grants ride on the next heartbeat or change (answering every ack
            # would ping-pong); the first is sent at once, so caching starts at once.
            if first:
                watcher.wake.set()
