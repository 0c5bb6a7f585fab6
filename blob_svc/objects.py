"""Object storage (S3 and compatible stores) under the blob store: upload sessions as part
objects, publishing as one multipart upload, retries, presigned URLs.

Objects cannot be appended to, so a session on object storage is a series of part objects
`uploads/<id>/parts/<offset>` (see `blob_svc.paths`), each written whole by one PUT; the
session's bytes are the parts in offset order, and it exists exactly while its
`startedat` object does. A commit assembles the parts into the canonical object as one S3
multipart upload: parts of 5 MiB or more are copied server-side (UploadPartCopy), smaller
neighbours are read and uploaded together, so bytes pass through blob_svc again only for
small chunks. The canonical object appears only when CompleteMultipartUpload succeeds:
whole, or not at all. Multipart uploads left by a crash are invisible and are removed by
`ObjectStore.abort_stale_multipart_uploads` (gc_svc calls it through BlobService).

Bytes stream through `pyarrow.fs`; what pyarrow does not offer (multipart copy, listing
and aborting multipart uploads, deleting one key without leaving a "directory" marker
behind, presigning) goes through botocore, with the same endpoint and region.

Every call to the store runs through `Retrier.call`: transient failures (connection
refused or reset, timeouts, 5xx, throttling) are retried with exponential backoff until
the retry budget is spent, and then, like any other failure of the store, become
UNAVAILABLE, which the gateway answers with 503.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import botocore.config
import botocore.exceptions
import botocore.session
import pyarrow.fs as pafs

from artifactstore.errors import Reason, RegistryError
from artifactstore.storage import S3Location, StorageOptions
from blob_svc import paths

log = logging.getLogger(__name__)

T = TypeVar("T")

MiB = 1024 * 1024
# S3's smallest part of a multipart upload (every part but the last).
MIN_PART_BYTES = 5 * MiB
# Neighbouring small session parts are uploaded together in parts of this size.
BUFFERED_PART_BYTES = 8 * MiB
# A session part larger than this is copied in ranges of this size (S3 allows 5 GiB).
COPY_PART_BYTES = 1024 * MiB
# S3's most parts in one multipart upload.
MAX_PARTS = 10_000
# Session part objects are written whole, from memory, so a failed PUT can be retried; a
# 6 GiB blob is about 400 of them.
SESSION_PART_BYTES = 16 * MiB
# Parts of one commit copied or uploaded at once.
ASSEMBLY_THREADS = 4

# S3 error codes that say "try again later" (besides any 5xx status).
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError"}
)
# pyarrow's OSError texts for failures no retry can fix (the store answered, and said no).
_PERMANENT_TEXTS = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH")


def transient(err: BaseException) -> bool:
    """Whether a failed call to the object store may succeed when tried again: connection
    failures, timeouts, 5xx and throttling are; missing objects and refusals are not."""
    if isinstance(err, FileNotFoundError | FileExistsError | NotADirectoryError):
        return False
    if isinstance(err, botocore.exceptions.ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return int(status) >= 500 or err.response.get("Error", {}).get("Code") in _TRANSIENT_CODES
    if isinstance(err, botocore.exceptions.BotoCoreError):
        return isinstance(
            err,
            botocore.exceptions.HTTPClientError | botocore.exceptions.EndpointConnectionError,
        )
    if isinstance(err, OSError):
        text = str(err)
        return not any(permanent in text for permanent in _PERMANENT_TEXTS)
    return False


@dataclass
class Retrier:
    """Runs calls to the object store with retries: exponential backoff from
    `first_delay` (doubling, at most `max_delay`, with jitter) while `budget_seconds` since
    the first attempt are not spent."""

    budget_seconds: float = 30.0
    first_delay: float = 0.2
    max_delay: float = 5.0
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, tried again on transient failures. Blocks (worker threads only).

        A failure that is not transient is raised as it is when it is a FileNotFoundError
        (callers map it to their own "unknown" errors) or a RegistryError, and as
        UNAVAILABLE otherwise; so is the last transient one once the budget is spent.
        """
        deadline = time.monotonic() + self.budget_seconds
        delay = self.first_delay
        attempt = 1
        while True:
            try:
                return fn(*args)
            except (FileNotFoundError, RegistryError):
                raise
            except Exception as err:
                pause = delay * self._random.uniform(0.5, 1.0)
                if not transient(err) or time.monotonic() + pause > deadline:
                    raise unavailable(err, attempt) from err
                log.warning("object storage call failed (attempt %d), retrying: %s", attempt, err)
                time.sleep(pause)
                delay = min(delay * 2, self.max_delay)
                attempt += 1


def unavailable(err: BaseException, attempts: int) -> RegistryError:
    """The UNAVAILABLE error a failure of the object store becomes. The failure itself is
    logged here, not sent: its text names internal endpoints, buckets and keys."""
    log.error("object storage call failed for good after %d attempt(s): %s", attempts, err)
    return RegistryError(
        Reason.UNAVAILABLE, f"blob storage is unavailable (after {attempts} attempts), retry later"
    )


# ---------------------------------------------------------------------- session parts


class SessionPart(NamedTuple):
    """One part object of a session: its path, where its bytes start, how many."""

    path: str
    offset: int
    size: int


def session_parts(infos: Sequence[pafs.FileInfo], upload_id: str) -> list[SessionPart]:
    """The parts of session `upload_id` in offset order, from a listing of its directory.
    BLOB_UPLOAD_INVALID if they do not follow each other without gap or overlap (no
    writer does that; it would mean the store lost an object)."""
    parts = sorted(
        (
            SessionPart(info.path, offset, int(info.size))
            for info in infos
            if info.type == pafs.FileType.File
            and (offset := paths.part_offset(info.base_name)) is not None
        ),
        key=lambda part: part.offset,
    )
    end = 0
    for part in parts:
        if part.offset != end:
            raise RegistryError(
                Reason.BLOB_UPLOAD_INVALID,
                f"upload {upload_id} has a gap or overlap at byte {end} (part at {part.offset})",
            )
        end += part.size
    return parts


class PartWriter:
    """Writes a session's incoming bytes as part objects of SESSION_PART_BYTES (the last
    one of a write shorter), each from one buffer in one PUT: a failed PUT is retried
    with the same bytes, and a PUT cut short leaves nothing behind (a pyarrow stream
    would make a multipart upload of it, which a failure leaves unfinished).

    A `_pipe` consumer: called with blocks of chunks, in order, from one thread at a time.
    `flush` stores what is buffered (call it once the blocks end, also after a failure of
    the sender: every chunk received is kept). `size` is the session's size counting what
    is stored; `failed` tells that a PUT failed for good (its retries are spent).
    """

    def __init__(self, objects: ObjectStore, root: str, upload_id: str, size: int) -> None:
        self._objects = objects
        self._root = root
        self._upload_id = upload_id
        self.size = size
        self.failed = False
        # Allocated whole once per part, so it never grows (a grown bytearray may be
        # copied); the buffer is handed to the PUT as it is.
        self._buffer: bytearray | None = None
        self._filled = 0

    def __call__(self, block: Sequence[bytes]) -> None:
        for chunk in block:
            view = memoryview(chunk)
            while view:
                if self._buffer is None:
                    self._buffer = bytearray(SESSION_PART_BYTES)
                take = min(len(view), SESSION_PART_BYTES - self._filled)
                self._buffer[self._filled : self._filled + take] = view[:take]
                self._filled += take
                view = view[take:]
                if self._filled == SESSION_PART_BYTES:
                    self.flush()

    def flush(self) -> None:
        """Store the buffered bytes as the next part object (none if nothing is held)."""
        if self._buffer is None or not self._filled:
            return
        del self._buffer[self._filled :]
        path = paths.upload_part(self._root, self._upload_id, self.size)
        try:
            self._objects.put(path, self._buffer)
        except BaseException:
            self.failed = True
            raise
        self.size += self._filled
        self._buffer, self._filled = None, 0


# ------------------------------------------------------------------ assembling a blob


class Copy(NamedTuple):
    """A part of the assembled object copied server-side: bytes [start, end) of `path`."""

    path: str
    start: int
    end: int


class Upload(NamedTuple):
    """A part of the assembled object uploaded from blob_svc: the ranges, read in order."""

    ranges: tuple[Copy, ...]


def plan_assembly(parts: Sequence[SessionPart]) -> list[Copy | Upload]:
    """The parts of a multipart upload that joins `parts`: every one but the last at least
    MIN_PART_BYTES (S3's rule). A run of small session parts is read and uploaded in
    BUFFERED_PART_BYTES pieces; a large one is copied server-side, in ranges of at most
    COPY_PART_BYTES plus MIN_PART_BYTES."""
    planned: list[Copy | Upload] = []
    buffered: list[Copy] = []
    buffered_bytes = 0
    for part in parts:
        position = 0
        while position < part.size:
            rest = part.size - position
            if not buffered and rest >= MIN_PART_BYTES:
                length = COPY_PART_BYTES if rest > COPY_PART_BYTES + MIN_PART_BYTES else rest
                planned.append(Copy(part.path, position, position + length))
            else:
                length = min(rest, BUFFERED_PART_BYTES - buffered_bytes)
                buffered.append(Copy(part.path, position, position + length))
                buffered_bytes += length
                if buffered_bytes >= BUFFERED_PART_BYTES:
                    planned.append(Upload(tuple(buffered)))
                    buffered, buffered_bytes = [], 0
            position += length
    if buffered:
        planned.append(Upload(tuple(buffered)))
    return planned


class ObjectStore:
    """The S3 operations blob_svc needs beyond `pyarrow.fs`, through botocore, on the
    bucket of one storage root. Thread-safe; every call blocks (worker threads only)."""

    def __init__(
        self,
        location: S3Location,
        filesystem: pafs.FileSystem,
        retrier: Retrier,
        options: StorageOptions,
    ) -> None:
        self._location = location
        self._fs = filesystem
        self._retrier = retrier
        config = botocore.config.Config(
            region_name=location.region,
            signature_version="s3v4",
            # Custom endpoints (Ceph, MinIO, a DFS) are addressed by path; AWS by host.
            s3={"addressing_style": "path" if location.endpoint_url else "auto"},
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=options.connect_timeout_seconds,
            read_timeout=options.request_timeout_seconds,
            max_pool_connections=ASSEMBLY_THREADS * 2,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = botocore.session.get_session().create_client(
            "s3", endpoint_url=location.endpoint_url, config=config
        )

    @property
    def retrier(self) -> Retrier:
        """How calls to this store are retried."""
        return self._retrier

    @property
    def bucket(self) -> str:
        """The bucket of the storage root."""
        return self._location.bucket

    def key(self, path: str) -> str:
        """The object key of a pyarrow path (`bucket/key`) in this bucket."""
        bucket, _, key = path.partition("/")
        assert bucket == self._location.bucket, path
        return key

    def put(self, path: str, data: bytes | bytearray) -> None:
        """Create or replace the object at `path` with `data`, in one request."""
        self._retrier.call(
            lambda: self._client.put_object(Bucket=self.bucket, Key=self.key(path), Body=data)
        )

    def delete(self, path: str) -> None:
        """Delete the object at `path` (no error if there is none). Unlike pyarrow's
        delete_file, this leaves no empty "directory" marker object behind."""
        self._retrier.call(
            lambda: self._client.delete_object(Bucket=self.bucket, Key=self.key(path))
        )

    def delete_many(self, paths_: Sequence[str]) -> None:
        """Delete the objects at `paths_`, in their order, in batches of 1,000."""
        for start in range(0, len(paths_), 1000):
            batch = [{"Key": self.key(p)} for p in paths_[start : start + 1000]]
            reply = self._retrier.call(
                lambda batch=batch: self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            )
            if reply.get("Errors"):
                raise unavailable(RuntimeError(f"deleting objects: {reply['Errors'][:3]}"), 1)

    def presign_get(self, path: str, expires_seconds: int) -> str:
        """A URL that GETs the object at `path` (Range requests included) without further
        credentials for `expires_seconds`. Signing is local: nothing is sent."""
        url: str = self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.key(path)},
            ExpiresIn=expires_seconds,
        )
        return url

    def assemble(self, parts: Sequence[SessionPart], target: str) -> None:
        """Make the object `target` out of `parts` (in order) with one multipart upload
        (an empty object when there are no bytes). `target` appears whole or not at all;
        on failure the multipart upload is aborted (if that fails too, it is left for
        `abort_stale_multipart_uploads`) and the error raised."""
        planned = plan_assembly(parts)
        if not planned:
            self.put(target, b"")
            return
        # One request instead of a multipart upload's four, for the many small blobs.
        if len(parts) == 1 and parts[0].size <= COPY_PART_BYTES:
            self._retrier.call(
                lambda: self._client.copy_object(
                    Bucket=self.bucket,
                    Key=self.key(target),
                    CopySource={"Bucket": self.bucket, "Key": self.key(parts[0].path)},
                )
            )
            return
        if len(planned) == 1 and isinstance(planned[0], Upload):
            self.put(target, b"".join(self._retrier.call(self._read, r) for r in planned[0].ranges))
            return
        if len(planned) > MAX_PARTS:
            raise RegistryError(
                Reason.SIZE_INVALID, f"an upload of {len(planned)} parts exceeds S3's {MAX_PARTS}"
            )
        key = self.key(target)
        started = self._retrier.call(
            lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        )
        upload_id = started["UploadId"]
        try:
            with ThreadPoolExecutor(ASSEMBLY_THREADS, thread_name_prefix="assemble") as pool:
                etags = list(
                    pool.map(
                        lambda numbered: self._part(key, upload_id, *numbered),
                        enumerate(planned, start=1),
                    )
                )
            expected = sum(part.size for part in parts)
            self._retrier.call(self._complete, key, upload_id, etags, expected)
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def _part(self, key: str, upload_id: str, number: int, piece: Copy | Upload) -> str:
        """Copy or upload one planned part; its ETag."""
        if isinstance(piece, Copy):
            reply = self._retrier.call(
                lambda: self._client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": self.key(piece.path)},
                    CopySourceRange=f"bytes={piece.start}-{piece.end - 1}",
                )
            )
            return str(reply["CopyPartResult"]["ETag"])
        body = b"".join(self._retrier.call(self._read, part) for part in piece.ranges)
        reply = self._retrier.call(
            lambda: self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
        )
        return str(reply["ETag"])

    def _read(self, piece: Copy) -> bytes:
        with self._fs.open_input_file(piece.path) as source:
            data: bytes = source.read_at(piece.end - piece.start, piece.start)
        if len(data) != piece.end - piece.start:
            raise RegistryError(Reason.BLOB_UPLOAD_INVALID, f"{piece.path} shrank while read")
        return data

    def _complete(self, key: str, upload_id: str, etags: list[str], expected: int) -> None:
        try:
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, start=1)]
                },
            )
        except botocore.exceptions.ClientError as err:
            # A retry after a completion whose answer was lost: the object is there.
            if err.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise
            head = self._client.head_object(Bucket=self.bucket, Key=key)
            if int(head["ContentLength"]) != expected:
                raise

    def abort_stale_multipart_uploads(self, older_than: timedelta) -> int:
        """Abort every multipart upload under the storage root begun more than
        `older_than` ago (left by a blob_svc that died while writing or committing);
        return how many were aborted. Younger ones may still be in progress."""
        cutoff = datetime.now(UTC) - older_than
        prefix = f"{self._location.prefix}/" if self._location.prefix else ""
        uploads = self._retrier.call(
            lambda: [
                upload
                for page in self._client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=prefix
                )
                for upload in page.get("Uploads", [])
            ]
        )
        stale = [upload for upload in uploads if upload["Initiated"] < cutoff]
        for upload in stale:
            with contextlib.suppress(RegistryError):
                self._retrier.call(
                    lambda upload=upload: self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                )
        return len(stale)
