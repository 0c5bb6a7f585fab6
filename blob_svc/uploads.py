"""In-memory state of upload sessions: the running hash of each session's bytes and a lock
that serialises the operations on one session.

Nothing here is needed for correctness across restarts: the session's bytes in storage are
the truth, and a hash state that is missing (restart, eviction, another replica took the
earlier chunks) is rebuilt by hashing the stored bytes once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

# The algorithm sessions are hashed with as bytes arrive; a commit under another algorithm
# hashes the stored bytes again (rare: clients push sha256).
STREAM_ALGORITHM = "sha256"


@dataclass
class HashState:
    """The hash of the first `size` bytes of one session's data.

    Invariant kept by BlobStore: a state it holds between calls has consumed exactly the
    first `size` bytes of the session's stored data. Stored data only grows, so a held
    state stays valid while `size` is at most the stored size, and lacks only the stored
    bytes after `size`.
    """

    hasher: hashlib._Hash = field(default_factory=lambda: hashlib.new(STREAM_ALGORITHM))
    size: int = 0

    def update(self, chunk: bytes) -> None:
        """Consume `chunk`, the next bytes of the session."""
        self.hasher.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        """The hex digest of the bytes consumed so far (the state stays usable)."""
        return self.hasher.copy().hexdigest()


class HashStates:
    """Hash states by upload id, least recently used dropped beyond `capacity` (a dropped
    state costs one re-hash of that session's stored bytes, never correctness)."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._states: OrderedDict[str, HashState] = OrderedDict()

    def take(self, upload_id: str) -> HashState | None:
        """Remove and return the state of `upload_id`, if one is held."""
        return self._states.pop(upload_id, None)

    def put(self, upload_id: str, state: HashState) -> None:
        """Hold `state` for `upload_id`, evicting the least recently used beyond capacity."""
        self._states[upload_id] = state
        self._states.move_to_end(upload_id)
        while len(self._states) > self._capacity:
            self._states.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        """Forget `upload_id` (its session ended)."""
        self._states.pop(upload_id, None)

    def __len__(self) -> int:
        return len(self._states)


class SessionLocks:
    """One asyncio lock per upload id, existing only while someone holds or awaits it.

    It serialises the operations of this process on one session; replicas do not share it,
    so callers (metadata_svc) must not run two mutations of one session at once anywhere.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[None]:
        """Hold the lock of `upload_id` for the duration of the `async with` block."""
        lock, users = self._locks.get(upload_id, (asyncio.Lock(), 0))
        self._locks[upload_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[upload_id]
            if users == 1:
                del self._locks[upload_id]
            else:
                self._locks[upload_id] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
