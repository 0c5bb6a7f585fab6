"""The content-addressed blob store: upload sessions and canonical blobs on a
`pyarrow.fs.FileSystem`.

Every operation is a coroutine; the blocking pyarrow calls run in worker threads, in
blocks of several MiB so that a thread hop is paid per block, not per message. Bytes are
hashed once as they stream and are never held whole in memory.

Where storage kinds differ (see `_local`):
- local disk (and DFS mounts): sessions grow by appending to `uploads/<id>/data`; a commit
  fsyncs the bytes and hard-links them to the canonical path, which publishes a complete
  file atomically and never replaces an existing blob.
- object storage (S3 and compatible stores; see `blob_svc.objects`): objects cannot be
  appended to, so a session is a series of part objects, joined at commit into the
  canonical object by one multipart upload, which becomes visible only whole. There is no
  "create if absent", so two racing commits of one digest may both write the same
  verified bytes, which is harmless. Every call to the store is retried with backoff
  while failures are transient; failures that persist become UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from artifactstore import filelocks
from artifactstore.digests import ALGORITHMS, Digest
from artifactstore.errors import Reason, RegistryError, offset_mismatch
from artifactstore.rpc import STREAM_CHUNK_BYTES
from artifactstore.storage import StorageOptions, open_storage
from blob_svc import paths
from blob_svc.uploads import STREAM_ALGORITHM, HashState, HashStates, SessionLocks
from blob_svc.writeback import Writeback

# blob_svc.objects (and botocore with it, ~15 MiB) is imported only on object storage.
if TYPE_CHECKING:
    from blob_svc.objects import ObjectStore, SessionPart

# Bytes handed to one worker-thread call when writing; one block is written while the next
# is received, so memory per upload stays below two blocks.
WRITE_BLOCK_BYTES = 4 * 1024 * 1024
# Chunks of STREAM_CHUNK_BYTES read per worker-thread call; one batch is read ahead.
READ_BATCH_CHUNKS = 4
# Block size for hashing stored bytes again (after a restart, or for another algorithm).
REHASH_BLOCK_BYTES = 8 * 1024 * 1024

T = TypeVar("T")


class _Appending(Exception):
    """A gateway holds the lock of the session's file: it is appending to it itself."""


class BlobInfo(NamedTuple):
    """A canonical blob: its digest and size in bytes."""

    digest: Digest
    size: int


class StoredBlob(NamedTuple):
    """A canonical blob as listed: digest, size, last modification (unix seconds)."""

    digest: Digest
    size: int
    modified_at: float


class StoredUpload(NamedTuple):
    """An upload session's directory as listed: id, bytes held, last modification."""

    upload_id: str
    size: int
    modified_at: float


class BlobStore:
    """Upload sessions and canonical blobs under one storage root.

    One instance serves one event loop. Operations on one upload session are serialised
    within this process; a canonical blob needs no lock (it is immutable once visible).
    """

    def __init__(
        self, filesystem: pafs.FileSystem, root: str, objects: ObjectStore | None = None
    ) -> None:
        """Use `root` (a pyarrow.fs path, which must exist) on `filesystem`; `objects`
        when the filesystem is object storage (the layout of sessions differs)."""
        self._fs = filesystem
        self._root = root.rstrip("/")
        self._local = isinstance(filesystem, pafs.LocalFileSystem)
        # What LocateBlob answers must not depend on the reader's working directory.
        self._local_root = os.path.abspath(self._root) if self._local else ""
        self._objects = objects
        self._hashes = HashStates()
        self._locks = SessionLocks()
        self._blob_locks = SessionLocks()

    @classmethod
    def from_url(
        cls,
        storage_url: str,
        options: StorageOptions | None = None,
        retry_seconds: float = 30.0,
    ) -> BlobStore:
        """Open the store at `storage_url` (`file:///dir` or `s3://bucket/prefix`, see
        `artifactstore.storage`), creating the root directory if needed; calls to object
        storage are retried for up to `retry_seconds`. Blocks: call it at start-up."""
        options = options or StorageOptions()
        storage = open_storage(storage_url, options)
        objects = None
        if storage.s3 is not None:
            from blob_svc.objects import ObjectStore, Retrier

            retrier = Retrier(budget_seconds=retry_seconds)
            objects = ObjectStore(storage.s3, storage.filesystem, retrier, options)
        return cls(storage.filesystem, storage.root, objects)

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem the store lives on."""
        return self._fs

    @property
    def root(self) -> str:
        """The storage root, a path on `filesystem`."""
        return self._root

    def _retried(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`; on object storage with retries, failures that persist becoming
        UNAVAILABLE. Only for calls that may run twice (reads, whole-object writes)."""
        if self._objects is None:
            return fn(*args)
        return self._objects.retrier.call(fn, *args)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """`_retried(fn, *args)` in a worker thread."""
        return await asyncio.to_thread(self._retried, fn, *args)

    # ----------------------------------------------------------------- upload sessions

    async def start_upload(self, upload_id: str) -> int:
        """Create an empty upload session `upload_id` and return its size.

        Idempotent: an existing session is left as it is and its current size returned.
        Raises BLOB_UPLOAD_INVALID for an id that is not 1-64 characters of [A-Za-z0-9-].
        """
        paths.check_upload_id(upload_id)
        async with self._locks.hold(upload_id):
            return await self._io(self._start_upload, upload_id)

    def _start_upload(self, upload_id: str) -> int:
        if self._objects is not None:
            started_at = paths.upload_started_at(self._root, upload_id)
            if self._fs.get_file_info(started_at).type == pafs.FileType.File:
                return self._session_size(upload_id)
            _write_started_at(self._fs, started_at)
            return 0
        data = paths.upload_data(self._root, upload_id)
        info = self._fs.get_file_info(data)
        if info.type == pafs.FileType.File:
            return int(info.size)
        self._fs.create_dir(paths.upload_dir(self._root, upload_id), recursive=True)
        _write_started_at(self._fs, paths.upload_started_at(self._root, upload_id))
        # The data file is what makes the session exist, so it is created last. Append
        # mode creates it without truncating one a racing start made.
        self._fs.open_append_stream(data, compression=None).close()
        return 0

    async def write_upload(
        self,
        upload_id: str,
        offset: int | None,
        chunks: AsyncIterator[bytes],
        *,
        start: bool = False,
    ) -> int:
        """Append every chunk of `chunks` to session `upload_id`; return its new size.

        When `offset` is not None it must equal the session's size before the append, else
        RANGE_INVALID is raised and nothing is appended (`chunks` is not consumed). Bytes
        are hashed as they are written. If `chunks` raises or the caller is cancelled
        part-way, every chunk received before stays appended and the error propagates; the
        session remains consistent (its size tells the client where to resume).
        Raises BLOB_UPLOAD_INVALID for a malformed id, BLOB_UPLOAD_UNKNOWN if there is no
        such session, or if its commit already made it canonical (and died before ending
        the session, which this then does). With `start`, a session that does not exist is
        started first (`start_upload`).
        """
        paths.check_upload_id(upload_id)
        async with self._locks.hold(upload_id), self._held_across_awaits(upload_id, start) as size:
            if offset is not None and offset != size:
                raise offset_mismatch(upload_id, size, offset)
            if self._local and await asyncio.to_thread(self._published_before, upload_id):
                raise _upload_unknown(upload_id)
            state = await asyncio.to_thread(
                self._catch_up, upload_id, self._hashes.take(upload_id), size
            )
            if self._objects is not None:
                return await self._write_parts(upload_id, size, state, chunks)
            data = paths.upload_data(self._root, upload_id)
            try:
                stream = await asyncio.to_thread(
                    self._fs.open_append_stream, data, compression=None
                )
            except FileNotFoundError:
                raise _upload_unknown(upload_id) from None
            local = paths.upload_data(self._local_root, upload_id) if self._local else None
            writeback = Writeback(local, size)
            try:
                # Writing and hashing a block run side by side, each in its own thread.
                await _pipe(chunks, (partial(_write_all, stream, writeback), _hash_all(state)))
            finally:
                writeback.close()
                await asyncio.to_thread(stream.close)
                # Both consumers saw the same blocks unless a write failed part-way; then
                # the hash may cover bytes never stored and must be rebuilt from storage.
                stored = await asyncio.to_thread(self._fs.get_file_info, data)
                if stored.type == pafs.FileType.File and stored.size == state.size:
                    self._hashes.put(upload_id, state)
            return state.size

    async def locate_upload(self, upload_id: str, *, start: bool = False) -> tuple[str, int]:
        """The absolute path of session `upload_id`'s data file, and its size, for a caller
        on this host to append bytes to it itself (blob.proto, LocateUpload); with `start`,
        a session that does not exist is started first. BLOB_UPLOAD_UNKNOWN as
        `write_upload` gives it; UNSUPPORTED when the storage is not a local filesystem."""
        paths.check_upload_id(upload_id)
        self._require_local("upload sessions")
        async with self._locks.hold(upload_id):
            size = await asyncio.to_thread(self._located_upload, upload_id, start)
        return paths.upload_data(self._local_root, upload_id), size

    async def hash_appended(self, upload_id: str, sizes: AsyncIterator[int]) -> int:
        """Hash the bytes a caller on this host appends to session `upload_id`'s file
        itself (LocateUpload), up to each size of `sizes` as it arrives, starting their
        writeback as well; return the session's size after. BLOB_UPLOAD_INVALID when a
        size is below the bytes hashed so far or beyond those stored.

        No lock of this process is taken: the caller holds the file's lock until it has
        this answer, and every other write, commit and cancel of the session waits for
        that lock (filelocks) before it takes the hash state back.
        """
        paths.check_upload_id(upload_id)
        self._require_local("upload sessions")
        data = paths.upload_data(self._root, upload_id)
        state = self._hashes.take(upload_id) or HashState()
        try:
            writeback = Writeback(data, state.size)
        except FileNotFoundError:
            raise _upload_unknown(upload_id) from None
        try:
            async for end in sizes:
                if end < state.size:
                    raise RegistryError(
                        Reason.BLOB_UPLOAD_INVALID,
                        f"upload {upload_id}: {end} bytes appended, after {state.size} before",
                    )
                begun = state.size
                await asyncio.to_thread(self._hash_announced, upload_id, state, end)
                writeback.appended(end - begun)
        finally:
            writeback.close()
            stored = await asyncio.to_thread(self._fs.get_file_info, data)
            if stored.type == pafs.FileType.File and stored.size == state.size:
                self._hashes.put(upload_id, state)
        if stored.type != pafs.FileType.File:
            raise _upload_unknown(upload_id)
        # Not the sizes announced: the stored bytes are the session's, announced or not.
        return int(stored.size)

    async def _write_parts(
        self, upload_id: str, size: int, state: HashState, chunks: AsyncIterator[bytes]
    ) -> int:
        """write_upload's body on object storage: `chunks` become part objects after the
        session's `size` bytes (which `state` has hashed)."""
        from blob_svc.objects import PartWriter

        assert self._objects is not None
        writer = PartWriter(self._objects, self._root, upload_id, size)
        try:
            await _pipe(chunks, (writer, _hash_all(state)))
        finally:
            # What was received but not yet stored is stored now (a failed store is not
            # tried again: its retries are spent).
            if not writer.failed:
                flushing = asyncio.create_task(asyncio.to_thread(writer.flush))
                cancelled = await _settle([flushing])
                flushing.result()
                if cancelled:
                    raise asyncio.CancelledError
            if writer.size == state.size:
                self._hashes.put(upload_id, state)
        return writer.size

    async def upload_size(self, upload_id: str) -> int:
        """The number of bytes session `upload_id` holds, once any write of it in progress
        in this process has ended (so after a client went away mid-stream, the size
        counts every chunk that arrived, and a resume from it succeeds).

        Raises BLOB_UPLOAD_INVALID for a malformed id, BLOB_UPLOAD_UNKNOWN if there is no
        such session.
        """
        paths.check_upload_id(upload_id)
        async with self._locks.hold(upload_id):
            return await self._io(self._session_size, upload_id)

    async def commit_upload(
        self, upload_id: str, digest: Digest, data: bytes = b"", *, start: bool = False
    ) -> BlobInfo:
        """Append `data` (a small closing chunk, possibly empty) to session `upload_id`,
        verify the whole against `digest`, make it the canonical blob of `digest` and end
        the session.

        A digest mismatch raises DIGEST_INVALID and keeps the session (with `data`
        appended), so the client may retry. If the canonical blob already exists it is
        kept as it is and the session's bytes are dropped. A canonical blob is visible only
        complete and verified: a crash at any point leaves either no blob or the whole blob
        (and possibly the session, which a retried commit or GC then removes). Concurrent
        commits of one digest from several sessions all succeed, with one stored copy.
        Raises BLOB_UPLOAD_INVALID for a malformed id, BLOB_UPLOAD_UNKNOWN if there is no
        such session; with `start`, a session that does not exist is started first.
        """
        if data and not self._local:
            # Object storage appends by writing a part object, which the streaming path does.
            await self.write_upload(upload_id, None, _once(data), start=start)
            data, start = b"", False
        paths.check_upload_id(upload_id)
        async with self._locks.hold(upload_id):
            # One worker-thread call for the whole commit: a small blob's push is mostly
            # such fixed costs (a hop is tens of microseconds).
            while True:
                state = self._hashes.take(upload_id)
                try:
                    info, actual, state = await asyncio.to_thread(
                        self._commit, upload_id, digest, data, state, start
                    )
                    break
                except _Appending:
                    # The appender's own state (it hashes as it appends) may replace it.
                    if state is not None:
                        self._hashes.put(upload_id, state)
                    await asyncio.sleep(filelocks.POLL_SECONDS)
            if info is None:
                if state is not None:
                    self._hashes.put(upload_id, state)
                raise RegistryError(
                    Reason.DIGEST_INVALID,
                    f"upload {upload_id} has digest {digest.algorithm}:{actual}, not {digest}",
                    digest=str(digest),
                )
            return info

    def _commit(
        self, upload_id: str, digest: Digest, data: bytes, state: HashState | None, start: bool
    ) -> tuple[BlobInfo | None, str, HashState | None]:
        """commit_upload's body, in a worker thread: the blob (None when the bytes do not
        match `digest`), the hex digest they have, and the hash state to keep."""
        with self._held_session(upload_id, start) as size:
            return self._commit_held(upload_id, digest, data, state, size)

    def _commit_held(
        self, upload_id: str, digest: Digest, data: bytes, state: HashState | None, size: int
    ) -> tuple[BlobInfo | None, str, HashState | None]:
        if data:
            if self._published_before(upload_id):
                raise _upload_unknown(upload_id)
            state = self._catch_up(upload_id, state, size)
            with self._fs.open_append_stream(
                paths.upload_data(self._root, upload_id), compression=None
            ) as stream:
                stream.write(data)
            state.update(data)
            size += len(data)
        if digest.algorithm == STREAM_ALGORITHM:
            state = self._catch_up(upload_id, state, size)
            actual = state.hexdigest()
        else:
            actual = self._hash_stored(upload_id, digest, size)
        if actual != digest.hex:
            return None, actual, state
        self._publish(upload_id, digest, size)
        return BlobInfo(digest, size), actual, None

    async def cancel_upload(self, upload_id: str) -> bool:
        """Remove session `upload_id` and its bytes; return False if it did not exist.

        Idempotent. Waits for a write or commit of this session in progress in this process.
        Raises BLOB_UPLOAD_INVALID for a malformed id.
        """
        paths.check_upload_id(upload_id)
        async with self._locks.hold(upload_id):
            removed = await self._after_appenders(self._cancel, upload_id)
            self._hashes.drop(upload_id)
            return removed

    # ---------------------------------------------------------------- canonical blobs

    async def stat(self, digest: Digest) -> int:
        """The size of the canonical blob `digest`; BLOB_UNKNOWN if there is none."""
        info = await self._io(self._fs.get_file_info, paths.blob_data(self._root, digest))
        if info.type != pafs.FileType.File:
            raise _blob_unknown(digest)
        return int(info.size)

    async def stat_many(self, digests: list[Digest]) -> list[int | None]:
        """The size of each canonical blob of `digests`, None for those absent, in one
        worker-thread call (and on object storage, requests the filesystem runs at once)."""
        infos = await self._io(
            self._fs.get_file_info, [paths.blob_data(self._root, d) for d in digests]
        )
        return [int(i.size) if i.type == pafs.FileType.File else None for i in infos]

    async def read(
        self, digest: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Yield the bytes [offset, offset+length) of blob `digest` (to its end when
        `length` is None) in chunks of at most STREAM_CHUNK_BYTES.

        Errors surface before the first chunk: BLOB_UNKNOWN if there is no such blob,
        RANGE_INVALID if offset or length is negative or the range ends beyond the blob
        (an empty range at the blob's end, such as offset 0 of an empty blob, is valid).
        """
        if offset < 0 or (length is not None and length < 0):
            raise RegistryError(Reason.RANGE_INVALID, f"negative range {offset}+{length}")
        try:
            source = await self._io(self._fs.open_input_file, paths.blob_data(self._root, digest))
        except FileNotFoundError:
            raise _blob_unknown(digest) from None
        pending: asyncio.Task[list[bytes]] | None = None
        try:
            size = source.size()
            end = size if length is None else offset + length
            if offset > size or end > size:
                raise RegistryError(
                    Reason.RANGE_INVALID,
                    f"range {offset}-{end} is outside blob {digest} of {size} bytes",
                    size=str(size),
                )
            position = offset
            while position < end or pending is not None:
                if pending is None:
                    batch = await self._io(_read_batch, source, position, end)
                else:
                    batch = await pending
                    pending = None
                position += sum(len(chunk) for chunk in batch)
                if position < end:
                    # Read the next batch while this one is being sent.
                    pending = asyncio.create_task(self._io(_read_batch, source, position, end))
                for chunk in batch:
                    yield chunk
        finally:
            cancelled = pending is not None and await _settle([pending])
            await asyncio.to_thread(source.close)
            if cancelled:
                raise asyncio.CancelledError

    async def delete(self, digest: Digest) -> bool:
        """Delete the canonical blob `digest`; return False if it did not exist.

        Idempotent. Callers (gc_svc) must have removed every link to it first; a commit of
        the same digest racing with the delete may find its blob gone afterwards.
        """
        return await self.reclaim(digest) is not None

    async def reclaim(self, digest: Digest) -> int | None:
        """`delete`, returning the bytes freed (None when the blob did not exist)."""
        # Object storage has no conditional delete: only serialising the deletes of one
        # digest tells which of several concurrent ones (in this process) removed it.
        async with self._blob_locks.hold(str(digest)):
            return await asyncio.to_thread(self._delete, digest)

    async def list_blobs(self, after: Digest | None, limit: int) -> tuple[list[StoredBlob], bool]:
        """Up to `limit` canonical blobs after `after` in (algorithm, hex) order, and
        whether more remain. Entries that are not blobs of this layout are skipped."""
        return await self._io(self._list_blobs, after, limit)

    async def list_uploads(self, after: str, limit: int) -> tuple[list[StoredUpload], bool]:
        """Up to `limit` upload sessions' directories after id `after` in id order (with
        or without data: a crash may leave a directory without it), and whether more
        remain."""
        return await self._io(self._list_uploads, after, limit)

    async def presign(self, digest: Digest, expires_seconds: int) -> str | None:
        """A URL from which blob `digest` can be fetched (ranges too) without credentials
        for `expires_seconds`, or None when the storage cannot give one (local disk).
        Whether the blob exists is not checked: callers have checked its link."""
        if self._objects is None:
            return None
        return self._objects.presign_get(paths.blob_data(self._root, digest), expires_seconds)

    def local_path(self, digest: Digest) -> str:
        """The absolute path blob `digest`'s data file has when the storage is a local
        filesystem (whether or not the blob is stored); empty on object storage."""
        return paths.blob_data(self._local_root, digest) if self._local else ""

    async def locate(self, digest: Digest) -> tuple[str, int]:
        """The absolute path of the local file holding blob `digest`, and its size, for a
        reader on this host to send without copying; BLOB_UNKNOWN if there is none,
        UNSUPPORTED when the storage is not a local filesystem."""
        self._require_local("blobs")
        size = await self.stat(digest)
        return self.local_path(digest), size

    def _require_local(self, what: str) -> None:
        """UNSUPPORTED unless the storage is a local filesystem (whose files a caller on
        this host may use itself)."""
        if not self._local:
            raise RegistryError(Reason.UNSUPPORTED, f"{what} are not stored on a local filesystem")

    async def abort_stale_multipart_uploads(self, older_than: timedelta) -> int:
        """Abort the multipart uploads of the storage begun more than `older_than` ago
        (invisible leftovers of a blob_svc that died while writing a part or committing)
        and return how many there were; 0 on storage that has none (local disk).
        `older_than` must exceed the longest write or commit (an hour is safe)."""
        if self._objects is None:
            return 0
        return await asyncio.to_thread(self._objects.abort_stale_multipart_uploads, older_than)

    # ------------------------------------------------------------------ worker threads

    async def _after_appenders(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker thread, run again a little later while it finds that a
        gateway is appending to the session's file itself (`_Appending`)."""
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except _Appending:
                await asyncio.sleep(filelocks.POLL_SECONDS)

    @contextlib.contextmanager
    def _held_session(self, upload_id: str, start: bool) -> Iterator[int]:
        """`_started_size`, for a block that holds the lock of the session's data file on
        local storage, so that no gateway appends to the file meanwhile (filelocks);
        `_Appending` while one does."""
        size = self._started_size(upload_id, start)
        if not self._local:
            yield size
            return
        try:
            fd = os.open(paths.upload_data(self._root, upload_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _upload_unknown(upload_id) from None
        try:
            if not filelocks.try_lock(fd):
                raise _Appending
            # What the appender added before it let go is the session's too.
            yield os.fstat(fd).st_size
        finally:
            os.close(fd)

    @contextlib.asynccontextmanager
    async def _held_across_awaits(self, upload_id: str, start: bool) -> AsyncIterator[int]:
        """`_held_session` for a block that awaits."""
        while True:
            held = contextlib.ExitStack()
            try:
                size = await asyncio.to_thread(
                    held.enter_context, self._held_session(upload_id, start)
                )
                break
            except _Appending:
                await asyncio.sleep(filelocks.POLL_SECONDS)
        with held:
            yield size

    def _started_size(self, upload_id: str, start: bool) -> int:
        """The session's size, the session started first with `start`."""
        return self._retried(self._start_upload if start else self._session_size, upload_id)

    def _located_upload(self, upload_id: str, start: bool) -> int:
        size = self._started_size(upload_id, start)
        if self._published_before(upload_id):
            raise _upload_unknown(upload_id)
        return size

    def _hash_announced(self, upload_id: str, state: HashState, end: int) -> None:
        try:
            self._hash_range(upload_id, state.size, end, state.update)
        except RegistryError as err:
            if err.reason != Reason.BLOB_UPLOAD_INVALID:
                raise
            raise RegistryError(
                Reason.BLOB_UPLOAD_INVALID,
                f"upload {upload_id} holds fewer than the {end} bytes announced",
            ) from None

    def _cancel(self, upload_id: str) -> bool:
        if not self._local:
            return self._retried(self._remove_session, upload_id)
        try:
            with self._held_session(upload_id, start=False):
                return self._retried(self._remove_session, upload_id)
        except RegistryError as err:
            if err.reason != Reason.BLOB_UPLOAD_UNKNOWN:
                raise
        # No data file: a session whose start was cut short leaves its directory.
        return self._retried(self._remove_session, upload_id)

    def _session_size(self, upload_id: str) -> int:
        if self._objects is not None:
            return sum(part.size for part in self._session_parts(upload_id))
        info = self._fs.get_file_info(paths.upload_data(self._root, upload_id))
        if info.type != pafs.FileType.File:
            raise _upload_unknown(upload_id)
        return int(info.size)

    def _session_objects(self, upload_id: str) -> list[pafs.FileInfo]:
        """Every object of a session on object storage (one listing)."""
        selector = pafs.FileSelector(
            paths.upload_dir(self._root, upload_id), recursive=True, allow_not_found=True
        )
        return [i for i in self._fs.get_file_info(selector) if i.type == pafs.FileType.File]

    def _session_parts(self, upload_id: str) -> list[SessionPart]:
        """The part objects of a session on object storage; BLOB_UPLOAD_UNKNOWN if it has
        no `startedat` (never started, or ended)."""
        return self._session_listing(upload_id)[0]

    def _session_listing(self, upload_id: str) -> tuple[list[SessionPart], list[str]]:
        """`_session_parts`, and the paths of every object of the session."""
        from blob_svc.objects import session_parts

        infos = self._session_objects(upload_id)
        started_at = paths.upload_started_at(self._root, upload_id)
        if not any(info.path == started_at for info in infos):
            raise _upload_unknown(upload_id)
        return session_parts(infos, upload_id), [info.path for info in infos]

    def _delete_session_objects(self, upload_id: str, found: list[str]) -> None:
        """Delete the objects `found` of a session on object storage. `startedat` goes
        first: from then on the session does not exist, even if the deletion of its parts
        is interrupted (GC removes such leftovers)."""
        assert self._objects is not None
        started_at = paths.upload_started_at(self._root, upload_id)
        self._objects.delete_many(sorted(found, key=lambda path: path != started_at))

    def _published_before(self, upload_id: str) -> bool:
        """Whether a commit of the session linked its data to a canonical blob and then
        died before removing the session; if so, finish that commit (remove the session).

        Appending to such a session would append to the canonical blob, which shares its
        file."""
        try:
            links = os.stat(paths.upload_data(self._root, upload_id)).st_nlink
        except FileNotFoundError:
            return True
        if links > 1:
            self._remove_session(upload_id)
            return True
        return False

    def _catch_up(self, upload_id: str, state: HashState | None, size: int) -> HashState:
        """A hash state covering the first `size` stored bytes of the session, reusing
        `state` when it covers a prefix of them (hashing only the bytes it lacks)."""
        if state is None or state.size > size:
            state = HashState()
        if state.size < size:
            self._hash_range(upload_id, state.size, size, state.update)
        return state

    def _hash_stored(self, upload_id: str, digest: Digest, size: int) -> str:
        hasher = digest.hasher()
        self._hash_range(upload_id, 0, size, hasher.update)
        return hasher.hexdigest()

    def _hash_range(
        self, upload_id: str, start: int, end: int, consume: Callable[[bytes], None]
    ) -> None:
        if self._objects is not None:
            self._hash_parts(upload_id, start, end, consume)
            return
        try:
            source = self._fs.open_input_file(paths.upload_data(self._root, upload_id))
        except FileNotFoundError:
            raise _upload_unknown(upload_id) from None
        with source:
            position = start
            while position < end:
                block = source.read_at(min(REHASH_BLOCK_BYTES, end - position), position)
                if not block:
                    raise RegistryError(
                        Reason.BLOB_UPLOAD_INVALID, f"upload {upload_id} shrank while hashed"
                    )
                consume(block)
                position += len(block)

    def _stored_session(self, upload_id: str) -> StoredUpload:
        """A session on object storage as listed: the bytes of its parts, and when its
        latest object was written (object storage has no directory times)."""
        infos = self._session_objects(upload_id)
        size = sum(
            int(info.size) for info in infos if paths.part_offset(info.base_name) is not None
        )
        return StoredUpload(upload_id, size, max((_seconds(i) for i in infos), default=0.0))

    def _hash_parts(
        self, upload_id: str, start: int, end: int, consume: Callable[[bytes], None]
    ) -> None:
        """_hash_range on object storage: bytes [start, end) across the part objects, each
        read retried on its own (a read may run twice, a hash update may not)."""
        for part in self._retried(self._session_parts, upload_id):
            first, stop = max(start, part.offset), min(end, part.offset + part.size)
            if first >= stop:
                continue
            try:
                source = self._retried(self._fs.open_input_file, part.path)
            except FileNotFoundError:
                raise _upload_unknown(upload_id) from None
            with source:
                position = first
                while position < stop:
                    length = min(REHASH_BLOCK_BYTES, stop - position)
                    block = self._retried(source.read_at, length, position - part.offset)
                    if len(block) != length:
                        raise RegistryError(
                            Reason.BLOB_UPLOAD_INVALID, f"upload {upload_id} shrank while hashed"
                        )
                    consume(block)
                    position += length

    def _publish(self, upload_id: str, digest: Digest, size: int) -> None:
        """Make the verified `size` bytes of the session the canonical blob, then end the
        session."""
        if self._local:
            self._publish_local(upload_id, digest)
            self._retried(self._remove_session, upload_id)
            return
        assert self._objects is not None
        target = paths.blob_data(self._root, digest)
        parts, found = self._retried(self._session_listing, upload_id)
        if self._retried(self._fs.get_file_info, target).type == pafs.FileType.NotFound:
            if sum(part.size for part in parts) != size:
                raise RegistryError(
                    Reason.BLOB_UPLOAD_INVALID, f"upload {upload_id} changed while committed"
                )
            self._objects.assemble(parts, target)
        self._delete_session_objects(upload_id, found)

    def _publish_local(self, upload_id: str, digest: Digest) -> None:
        source = paths.upload_data(self._root, upload_id)
        target = paths.blob_data(self._root, digest)
        try:
            _fsync(source)
        except FileNotFoundError:
            raise _upload_unknown(upload_id) from None
        for _ in range(3):
            _make_dirs_durably(
                [
                    paths.blobs_root(self._root),
                    paths.blob_algorithm_dir(self._root, digest.algorithm),
                    paths.blob_prefix_dir(self._root, digest),
                    paths.blob_dir(self._root, digest),
                ]
            )
            try:
                # A link never replaces an existing blob and shows the file only whole.
                os.link(source, target)
            except FileExistsError:
                return
            except FileNotFoundError:
                if not os.path.exists(source):
                    raise _upload_unknown(upload_id) from None
                continue  # a concurrent delete removed the blob's directory: make it again
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # No hard links here (some DFS mounts): rename, which replaces a racing
                # commit's blob at worst, and that blob has the same verified bytes.
                if os.path.exists(target):
                    return
                os.rename(source, target)
            _fsync(paths.blob_dir(self._root, digest))
            return
        raise OSError(errno.ENOENT, f"blob directory of {digest} keeps disappearing")

    def _remove_session(self, upload_id: str) -> bool:
        if self._objects is not None:
            found = [info.path for info in self._session_objects(upload_id)]
            self._delete_session_objects(upload_id, found)
            return bool(found)
        try:
            self._fs.delete_dir(paths.upload_dir(self._root, upload_id))
        except FileNotFoundError:
            return False
        return True

    def _delete(self, digest: Digest) -> int | None:
        target = paths.blob_data(self._root, digest)
        info = self._retried(self._fs.get_file_info, target)
        if info.type == pafs.FileType.NotFound:
            return None
        try:
            if self._objects is not None:
                self._objects.delete(target)
            else:
                self._fs.delete_file(target)
        except FileNotFoundError:
            return None
        if self._local:
            # rmdir, not delete_dir: a racing commit may have linked a new copy in there.
            with contextlib.suppress(OSError):
                os.rmdir(paths.blob_dir(self._root, digest))
        return int(info.size)

    def _entries(self, directory: str) -> list[pafs.FileInfo]:
        """The entries of `directory` by name (none if it does not exist)."""
        selector = pafs.FileSelector(directory, allow_not_found=True, recursive=False)
        return sorted(self._fs.get_file_info(selector), key=lambda info: info.base_name)

    def _list_blobs(self, after: Digest | None, limit: int) -> tuple[list[StoredBlob], bool]:
        start = (after.algorithm, after.hex) if after else ("", "")
        found: list[StoredBlob] = []
        for algorithm in self._entries(paths.blobs_root(self._root)):
            if algorithm.base_name not in ALGORITHMS or algorithm.base_name < start[0]:
                continue
            for prefix in self._entries(algorithm.path):
                if (algorithm.base_name, prefix.base_name) < (start[0], start[1][:2]):
                    continue
                for entry in self._entries(prefix.path):
                    if (algorithm.base_name, entry.base_name) <= start:
                        continue
                    try:
                        digest = Digest.parse(f"{algorithm.base_name}:{entry.base_name}")
                    except RegistryError:
                        continue
                    data = self._fs.get_file_info(paths.blob_data(self._root, digest))
                    if data.type != pafs.FileType.File:
                        continue
                    if len(found) == limit:
                        return found, True
                    found.append(StoredBlob(digest, int(data.size), _seconds(data)))
        return found, False

    def _list_uploads(self, after: str, limit: int) -> tuple[list[StoredUpload], bool]:
        found: list[StoredUpload] = []
        for entry in self._entries(paths.uploads_root(self._root)):
            upload_id = entry.base_name
            if upload_id <= after or entry.type != pafs.FileType.Directory:
                continue
            try:
                paths.check_upload_id(upload_id)
            except RegistryError:
                continue
            if len(found) == limit:
                return found, True
            if self._objects is not None:
                found.append(self._stored_session(upload_id))
                continue
            data = self._fs.get_file_info(paths.upload_data(self._root, upload_id))
            if data.type == pafs.FileType.File:
                found.append(StoredUpload(upload_id, int(data.size), _seconds(data)))
            else:
                found.append(StoredUpload(upload_id, 0, _seconds(entry)))
        return found, False


async def _pipe(
    chunks: AsyncIterator[bytes], consumers: Sequence[Callable[[Sequence[bytes]], None]]
) -> None:
    """Give `chunks`, in blocks of about WRITE_BLOCK_BYTES, to every consumer, each
    consumer running in its own worker thread; the next block is received while the
    consumers process the previous one.

    If `chunks` fails or the caller is cancelled, every chunk received so far still reaches
    every consumer before the error propagates; once a consumer fails, no further block is
    given out. Returns or raises only once no consumer is running any more.
    """
    pending: list[asyncio.Task[None]] = []
    block: list[bytes] = []
    block_bytes = 0

    def start(block: list[bytes]) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(asyncio.to_thread(consume, block)) for consume in consumers]

    cancelled = False

    async def join(tasks: list[asyncio.Task[None]]) -> None:
        nonlocal cancelled
        cancelled |= await _settle(tasks)
        for task in tasks:
            task.result()

    try:
        async for chunk in chunks:
            if not chunk:
                continue
            block.append(chunk)
            block_bytes += len(chunk)
            if block_bytes >= WRITE_BLOCK_BYTES:
                await join(pending)
                if cancelled:
                    raise asyncio.CancelledError
                pending = start(block)
                block, block_bytes = [], 0
    finally:
        await join(pending)
        if block:
            await join(start(block))
    if cancelled:
        raise asyncio.CancelledError


async def _settle(tasks: Sequence[asyncio.Task[Any]]) -> bool:
    """Wait until every task is done, even through cancellation, and return whether the
    caller was cancelled meanwhile (it must then raise CancelledError itself): a worker
    thread cannot be interrupted, and the files it uses must stay open until it is done."""
    cancelled = False
    running = [task for task in tasks if not task.done()]
    while running:
        try:
            await asyncio.wait(running)
        except asyncio.CancelledError:
            cancelled = True
        running = [task for task in running if not task.done()]
    return cancelled


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _write_all(stream: pa.NativeFile, writeback: Writeback, block: Sequence[bytes]) -> None:
    for chunk in block:
        stream.write(chunk)
    writeback.appended(sum(len(chunk) for chunk in block))


def _hash_all(state: HashState) -> Callable[[Sequence[bytes]], None]:
    def consume(block: Sequence[bytes]) -> None:
        for chunk in block:
            state.update(chunk)

    return consume


def _read_batch(source: pa.NativeFile, position: int, end: int) -> list[bytes]:
    # One read per batch: on object storage each read is a ranged GET.
    length = min(READ_BATCH_CHUNKS * STREAM_CHUNK_BYTES, end - position)
    data = source.read_at(length, position)
    if len(data) != length:
        raise RegistryError(Reason.BLOB_UNKNOWN, "blob shrank while read")
    return [data[i : i + STREAM_CHUNK_BYTES] for i in range(0, length, STREAM_CHUNK_BYTES)]


def _write_started_at(filesystem: pafs.FileSystem, path: str) -> None:
    with filesystem.open_output_stream(path, compression=None) as f:
        f.write(datetime.now(UTC).isoformat(timespec="seconds").encode())


def _seconds(info: pafs.FileInfo) -> float:
    """A file's modification time in unix seconds (0 when the storage has none)."""
    return info.mtime_ns / 1e9 if info.mtime_ns is not None else 0.0


def _fsync(path: str) -> None:
    """Flush a local file's or directory's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs_durably(chain: Sequence[str]) -> None:
    """Create each local directory of `chain` (each the parent of the next) that is
    missing, fsyncing the parent of every one created so its entry survives a crash."""
    for directory in chain:
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue
        _fsync(os.path.dirname(directory))


def _upload_unknown(upload_id: str) -> RegistryError:
    return RegistryError(
        Reason.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id} is unknown", upload_id=upload_id
    )


def _blob_unknown(digest: Digest) -> RegistryError:
    return RegistryError(Reason.BLOB_UNKNOWN, f"blob {digest} is unknown", digest=str(digest))
