"""Registry semantics over the KV store: each public method is one serializable
transaction (retried on conflict), so every multi-key change is all-or-nothing.

Transaction functions are idempotent, because a transaction may be retried even after it
succeeded (FoundationDB's rule). Blob links are created only after blob_svc has verified
and stored the bytes; a manifest is accepted only when every blob it needs is linked in
its repository, read inside the same transaction, so a concurrent removal of a link
conflicts with the manifest's transaction instead of leaving it dangling.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from artifactstore import upload_ids
from artifactstore.digests import Digest, is_digest, sha256_of
from artifactstore.errors import Reason, RegistryError
from artifactstore.manifests import parse
from artifactstore.names import check_name, check_tag
from metadata_svc.keys import PART_BYTES, Keyspace, decode_int, encode_int
from metadata_svc.kv import Database, Transaction
from metadata_svc.queues import Queues
from metadata_svc.scans import Scans, ScanView

DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
# How far ahead of this process's clock a gateway's may run (an id issued "in the future").
CLOCK_SKEW = 60.0


@dataclass(frozen=True)
class ManifestRecord:
    """A stored manifest's metadata (its body is kept in parts beside it)."""

    digest: str
    media_type: str
    size: int
    subject: str = ""
    artifact_type: str = ""
    created_at: float = 0.0
    parts: int = 1


@dataclass(frozen=True)
class Manifest:
    """A manifest as read back: its record and, when asked for, its body and what
    scanning knows about it."""

    record: ManifestRecord
    content: bytes = b""
    scan: ScanView | None = None


@dataclass(frozen=True)
class ReferrerRecord:
    """The descriptor of a manifest that names a subject."""

    media_type: str
    digest: str
    size: int
    artifact_type: str = ""
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadRecord:
    """An upload session's bookkeeping (its bytes live in blob_svc)."""

    upload_id: str
    repository: str
    started_at: float
    last_activity_at: float


def _dump(record: object) -> bytes:
    return json.dumps(asdict(record), separators=(",", ":")).encode()  # type: ignore[call-overload]


def _page(limit: int) -> int:
    if limit < 0:
        raise RegistryError(Reason.PAGINATION_INVALID, f"invalid page size {limit}")
    return min(limit or DEFAULT_PAGE, MAX_PAGE)


def _check_digest(text: str) -> str:
    return str(Digest.parse(text))


class MetadataStore:
    """The domain operations of metadata_svc."""

    def __init__(
        self,
        db: Database,
        directory: str,
        on_new_repository: Callable[[Transaction, str], None] | None = None,
        on_new_manifest: Callable[[Transaction, str, ManifestRecord], None] | None = None,
        unused_upload_seconds: float = 3600.0,
    ) -> None:
        """`on_new_repository(tr, name)` runs inside the transaction creating a repository
        (IAM creates its project there, so the two never disagree); `on_new_manifest(tr,
        repository, record)` inside the one storing a manifest not stored before (a scan
        is enqueued there, so no pushed image goes unscanned). An issued upload id not
        used within `unused_upload_seconds` (GC's idle limit) cannot start its session."""
        self._db = db
        self.unused_upload_seconds = unused_upload_seconds
        self._keys = Keyspace(db.directory(directory))
        self._on_new_repository = on_new_repository
        self._on_new_manifest = on_new_manifest
        self.queues = Queues(self._keys)
        self.scans = Scans(self._keys)

    @property
    def keys(self) -> Keyspace:
        """The registry keyspace this store works in."""
        return self._keys

    # -- repositories -----------------------------------------------------------------

    def _ensure_repository(self, tr: Transaction, repo: str) -> None:
        key = self._keys.repository(repo)
        if tr.get(key) is None:
            # GC is still removing the links of a deleted repository of this name; new
            # content now would be removed with them (metadata_svc.gc).
            if tr.get(self._keys.gc_repository_deleting(repo)) is not None:
                raise RegistryError(
                    Reason.UNAVAILABLE,
                    f"repository {repo!r} is being deleted; retry shortly",
                    name=repo,
                )
            tr.set(key, json.dumps({"created_at": time.time()}).encode())
            if self._on_new_repository is not None:
                self._on_new_repository(tr, repo)

    def has_repositories(self, tr: Transaction, project: str) -> bool:
        """Inside a transaction: whether any repository belongs to `project`."""
        space = self._keys.repositories()
        if tr.get(space.pack((project,))) is not None:
            return True
        # Names starting "<project>/" sort between "<project>/" and "<project>0".
        nested = tr.get_range(space.pack((project + "/",)), space.pack((project + "0",)), limit=1)
        return bool(nested)

    def _require_repository(self, tr: Transaction, repo: str) -> None:
        if tr.get(self._keys.repository(repo)) is None:
            raise RegistryError(Reason.NAME_UNKNOWN, f"repository {repo!r} is not known", name=repo)

    async def list_repositories(self, limit: int, last: str) -> tuple[list[str], bool]:
        """Repository names after `last` in lexical order, and whether more remain."""
        page = _page(limit)
        space = self._keys.repositories()

        def fn(tr: Transaction) -> tuple[list[str], bool]:
            begin = space.pack((last,)) + b"\x00" if last else space.range().start
            rows = tr.get_range(begin, space.range().stop, limit=page + 1)
            names = [space.unpack(k)[0] for k, _ in rows]
            return names[:page], len(names) > page

        return await self._db.read(fn)

    # -- manifests --------------------------------------------------------------------

    async def put_manifest(
        self, repo: str, reference: str, media_type: str, content: bytes
    ) -> ManifestRecord:
        """Store a manifest and, when `reference` is a tag, point the tag at it.

        Raises MANIFEST_BLOB_UNKNOWN when a blob or child manifest it needs is not in the
        repository, DIGEST_INVALID when a digest reference does not match the body, and
        MANIFEST_INVALID / MANIFEST_TOO_LARGE for bodies this registry does not accept.
        """
        check_name(repo)
        tag = ""
        if is_digest(reference):
            claimed = Digest.parse(reference)
            hasher = claimed.hasher()
            hasher.update(content)
            if hasher.hexdigest() != claimed.hex:
                raise RegistryError(
                    Reason.DIGEST_INVALID,
                    f"manifest body does not match digest {claimed}",
                    digest=str(claimed),
                )
            digest = str(claimed)
        else:
            tag = check_tag(reference)
            digest = str(sha256_of(content))
        parsed = parse(content, media_type)
        record = ManifestRecord(
            digest=digest,
            media_type=parsed.media_type,
            size=len(content),
            subject=str(parsed.subject.digest) if parsed.subject else "",
            artifact_type=parsed.artifact_type,
            created_at=time.time(),
            parts=max(1, -(-len(content) // PART_BYTES)),
        )
        keys = self._keys
        blobs = {str(b.digest) for b in parsed.required_blobs()}
        children = {str(m.digest) for m in parsed.manifests}

        def fn(tr: Transaction) -> ManifestRecord:
            missing = [b for b in sorted(blobs) if tr.get(keys.blob_link(repo, b)) is None]
            missing += [c for c in sorted(children) if tr.get(keys.manifest(repo, c)) is None]
            if missing:
                raise RegistryError(
                    Reason.MANIFEST_BLOB_UNKNOWN,
                    f"manifest references {len(missing)} unknown blob(s) or manifest(s), "
                    f"first {missing[0]}",
                    digest=missing[0],
                )
            self._ensure_repository(tr, repo)
            # A manifest naming a blob makes its link referenced again (metadata_svc.gc).
            for b in blobs:
                tr.clear(keys.gc_link_mark(repo, b))
            stored = tr.get(keys.manifest(repo, digest))
            result = ManifestRecord(**json.loads(stored)) if stored else record
            if stored is None:
                tr.set(keys.manifest(repo, digest), _dump(record))
                for i in range(record.parts):
                    part = content[i * PART_BYTES : (i + 1) * PART_BYTES]
                    tr.set(keys.manifest_part(repo, digest, i), part)
                for b in blobs:
                    tr.set(keys.manifest_blob(repo, digest, b), b"")
                    tr.set(keys.manifest_of_blob(repo, b, digest), b"")
                for c in children:
                    tr.set(keys.manifest_child(repo, digest, c), b"")
                    tr.set(keys.parent_of_manifest(repo, c, digest), b"")
                if parsed.subject is not None:
                    referrer = ReferrerRecord(
                        media_type=parsed.media_type,
                        digest=digest,
                        size=len(content),
                        artifact_type=parsed.artifact_type,
                        annotations=parsed.annotations,
                    )
                    tr.set(keys.referrer(repo, record.subject, digest), _dump(referrer))
                if self._on_new_manifest is not None:
                    self._on_new_manifest(tr, repo, record)
            if tag:
                previous = tr.get(keys.tag(repo, tag))
                if previous is not None and previous.decode() != digest:
                    tr.clear(keys.tag_of_manifest(repo, previous.decode(), tag))
                tr.set(keys.tag(repo, tag), digest.encode())
                tr.set(keys.tag_of_manifest(repo, digest, tag), b"")
                tr.clear(keys.gc_manifest_mark(repo, digest))
            return result

        return await self._db.run(fn)

    def _resolve(self, tr: Transaction, repo: str, reference: str) -> str:
        if is_digest(reference):
            return _check_digest(reference)
        target = tr.get(self._keys.tag(repo, check_tag(reference)))
        if target is None:
            self._require_repository(tr, repo)
            raise RegistryError(
                Reason.MANIFEST_UNKNOWN, f"tag {reference!r} is not known", tag=reference
            )
        return target.decode()

    async def get_manifest(
        self,
        repo: str,
        reference: str,
        *,
        with_content: bool,
        with_scan_policy: bool = False,
        with_vulnerabilities: bool = False,
    ) -> Manifest:
        """A manifest by tag or digest; MANIFEST_UNKNOWN (or NAME_UNKNOWN) when absent.

        With `with_scan_policy` or `with_vulnerabilities`, also its project's scan policy
        and (when asked for, or when the policy blocks on findings) its scan summary, read
        in the same transaction (`Scans.view`).
        """
        check_name(repo)
        keys = self._keys

        def fn(tr: Transaction) -> Manifest:
            digest = self._resolve(tr, repo, reference)
            raw = tr.get(keys.manifest(repo, digest))
            if raw is None:
                self._require_repository(tr, repo)
                raise RegistryError(
                    Reason.MANIFEST_UNKNOWN, f"manifest {digest} is not known", digest=digest
                )
            record = ManifestRecord(**json.loads(raw))
            scan = None
            if with_scan_policy or with_vulnerabilities:
                scan = self.scans.view(tr, repo, digest, with_summary=with_vulnerabilities)
            if not with_content:
                return Manifest(record, scan=scan)
            parts = tr.get_range_startswith(keys.manifest_parts(repo, digest).key())
            return Manifest(record, b"".join(v for _, v in parts), scan)

        return await self._db.read(fn)

    async def delete_manifest(self, repo: str, reference: str) -> tuple[str, list[str]]:
        """By digest: remove the manifest, its tags and references. By tag: only the tag.

        Returns the manifest's digest and the tags removed; MANIFEST_UNKNOWN when absent.
        """
        check_name(repo)
        keys = self._keys

        def fn(tr: Transaction) -> tuple[str, list[str]]:
            digest = self._resolve(tr, repo, reference)
            if not is_digest(reference):
                tr.clear(keys.tag(repo, reference))
                tr.clear(keys.tag_of_manifest(repo, digest, reference))
                return digest, [reference]
            raw = tr.get(keys.manifest(repo, digest))
            if raw is None:
                self._require_repository(tr, repo)
                raise RegistryError(
                    Reason.MANIFEST_UNKNOWN, f"manifest {digest} is not known", digest=digest
                )
            return digest, self.remove_manifest(tr, repo, ManifestRecord(**json.loads(raw)))

        return await self._db.run(fn)

    def remove_manifest(self, tr: Transaction, repo: str, record: ManifestRecord) -> list[str]:
        """Inside a transaction: remove the stored manifest `record` of `repo`, its tags
        and its references; return the tags removed."""
        keys = self._keys
        digest = record.digest
        tags_space = keys.tags_of_manifest(repo, digest)
        tags = [tags_space.unpack(k)[0] for k, _ in tr.get_range_startswith(tags_space.key())]
        for t in tags:
            tr.clear(keys.tag(repo, t))
        tr.clear_range_startswith(tags_space.key())
        blobs_space = keys.manifest_blobs(repo, digest)
        for k, _ in tr.get_range_startswith(blobs_space.key()):
            tr.clear(keys.manifest_of_blob(repo, blobs_space.unpack(k)[0], digest))
        tr.clear_range_startswith(blobs_space.key())
        children_space = keys.manifest_children(repo, digest)
        for k, _ in tr.get_range_startswith(children_space.key()):
            tr.clear(keys.parent_of_manifest(repo, children_space.unpack(k)[0], digest))
        tr.clear_range_startswith(children_space.key())
        if record.subject:
            tr.clear(keys.referrer(repo, record.subject, digest))
        tr.clear_range_startswith(keys.manifest_parts(repo, digest).key())
        tr.clear(keys.manifest(repo, digest))
        tr.clear(keys.gc_manifest_mark(repo, digest))
        self.scans.forget(tr, repo, digest)
        return tags

    async def list_tags(self, repo: str, limit: int, last: str) -> tuple[list[str], bool]:
        """Tags of `repo` after `last` in lexical order, and whether more remain."""
        check_name(repo)
        page = _page(limit)
        space = self._keys.tags(repo)

        def fn(tr: Transaction) -> tuple[list[str], bool]:
            self._require_repository(tr, repo)
            if page == 0:
                return [], False
            begin = space.pack((last,)) + b"\x00" if last else space.range().start
            rows = tr.get_range(begin, space.range().stop, limit=page + 1)
            tags = [space.unpack(k)[0] for k, _ in rows]
            return tags[:page], len(tags) > page

        return await self._db.read(fn)

    async def list_referrers(
        self, repo: str, subject: str, artifact_type: str
    ) -> list[ReferrerRecord]:
        """Descriptors of the manifests naming `subject`, optionally of one artifactType."""
        check_name(repo)
        subject = _check_digest(subject)
        space = self._keys.referrers(repo, subject)

        def fn(tr: Transaction) -> list[ReferrerRecord]:
            rows = tr.get_range_startswith(space.key())
            found = [ReferrerRecord(**json.loads(v)) for _, v in rows]
            return [r for r in found if not artifact_type or r.artifact_type == artifact_type]

        return await self._db.read(fn)

    # -- blob links -------------------------------------------------------------------

    def _link(self, tr: Transaction, repo: str, digest: str, size: int) -> None:
        keys = self._keys
        key = keys.blob_link(repo, digest)
        if tr.get(key) is None:
            # The tombstone of a canonical deletion in progress: its bytes may be gone
            # already, and a link now would point at nothing (see metadata_svc.gc).
            if tr.get(keys.gc_blob_deleting(digest)) is not None:
                raise RegistryError(
                    Reason.BLOB_UNKNOWN,
                    f"blob {digest} is being garbage-collected; upload it again",
                    digest=digest,
                )
            self._ensure_repository(tr, repo)
            tr.set(key, encode_int(size))
            tr.add(keys.blob_refcount(digest), 1)
        # A link made again cancels its pending marks.
        tr.clear(keys.gc_link_mark(repo, digest))
        tr.clear(keys.gc_blob_mark(digest))

    async def link_blob(self, repo: str, digest: str, size: int, upload_id: str) -> None:
        """Link a verified blob into `repo`; end the upload session `upload_id` if given.

        BLOB_UNKNOWN while GC is deleting the blob's bytes; UNAVAILABLE while a deleted
        repository of this name is still being purged (metadata_svc.gc).
        """
        check_name(repo)
        digest = _check_digest(digest)
        if size < 0:
            raise RegistryError(Reason.SIZE_INVALID, f"invalid size {size}")

        def fn(tr: Transaction) -> None:
            self._link(tr, repo, digest, size)
            if upload_id:
                self._end_upload(tr, upload_id)
                # The commit this link completes no longer holds off GC: the link does.
                tr.clear(self._keys.gc_blob_commit(digest, upload_id))

        await self._db.run(fn)

    async def mount_blob(self, repo: str, source: str, digest: str) -> int:
        """Link into `repo` a blob that `source` has; returns its size (BLOB_UNKNOWN if not)."""
        check_name(repo)
        check_name(source)
        digest = _check_digest(digest)

        def fn(tr: Transaction) -> int:
            raw = tr.get(self._keys.blob_link(source, digest))
            # A deleted source's links stay until GC purges them: none may be mounted.
            if raw is None or tr.get(self._keys.repository(source)) is None:
                raise RegistryError(
                    Reason.BLOB_UNKNOWN, f"{source} has no blob {digest}", digest=digest
                )
            size = decode_int(raw)
            self._link(tr, repo, digest, size)
            return size

        return await self._db.run(fn)

    async def stat_blob_link(self, repo: str, digest: str) -> int:
        """The size of the blob `repo` links to; BLOB_UNKNOWN when it has no such link,
        NAME_UNKNOWN when `repo` has been deleted (its links stay until GC purges them)."""
        check_name(repo)
        digest = _check_digest(digest)
        key = self._keys.blob_link(repo, digest)

        def fn(tr: Transaction) -> bytes | None:
            raw = tr.get(key)
            if raw is not None:
                self._require_repository(tr, repo)
            return raw

        raw = await self._db.read(fn)
        if raw is None:
            raise RegistryError(Reason.BLOB_UNKNOWN, f"blob {digest} is not known", digest=digest)
        return decode_int(raw)

    async def unlink_blob(self, repo: str, digest: str) -> None:
        """Remove `repo`'s link to a blob; BLOB_UNKNOWN when there was none, DENIED while a
        manifest of `repo` needs it (GC would otherwise delete the bytes of a manifest
        that still exists; delete the manifest first)."""
        check_name(repo)
        digest = _check_digest(digest)
        keys = self._keys

        def fn(tr: Transaction) -> None:
            if tr.get(keys.blob_link(repo, digest)) is None:
                raise RegistryError(
                    Reason.BLOB_UNKNOWN, f"blob {digest} is not known", digest=digest
                )
            users = keys.manifests_of_blob(repo, digest)
            user = tr.get_range_startswith(users.key(), limit=1)
            if user:
                raise RegistryError(
                    Reason.DENIED,
                    f"blob {digest} is used by manifest {users.unpack(user[0][0])[0]} of "
                    f"{repo}; delete the manifest first",
                    digest=digest,
                )
            tr.clear(keys.blob_link(repo, digest))
            tr.add(keys.blob_refcount(digest), -1)

        await self._db.run(fn)

    # -- upload sessions --------------------------------------------------------------

    async def create_upload(self, repo: str) -> UploadRecord:
        """Allocate an upload session for `repo`."""
        check_name(repo)
        now = time.time()
        record = UploadRecord(uuid.uuid4().hex, repo, now, now)

        def fn(tr: Transaction) -> None:
            tr.set(self._keys.upload(record.upload_id), _dump(record))

        await self._db.run(fn)
        return record

    async def get_upload(
        self, repo: str, upload_id: str, *, touch: bool, start: bool = False
    ) -> UploadRecord:
        """`repo`'s upload session `upload_id`; BLOB_UPLOAD_UNKNOWN when it has none. With
        `start`, see `upload_of`. With `touch`, its activity is recorded unless it was
        recorded less than a sixtieth of `unused_upload_seconds` ago (the idle limit), so
        a client's burst of chunks costs no write each."""
        check_name(repo)

        def fn(tr: Transaction) -> UploadRecord:
            record = self.upload_of(tr, repo, upload_id, start=start)
            idle = time.time() - record.last_activity_at
            if touch and idle >= self.unused_upload_seconds / 60:
                record = UploadRecord(
                    record.upload_id, record.repository, record.started_at, time.time()
                )
                tr.set(self._keys.upload(upload_id), _dump(record))
            return record

        return await (self._db.run(fn) if touch or start else self._db.read(fn))

    def upload_of(
        self, tr: Transaction, repo: str, upload_id: str, *, start: bool = False
    ) -> UploadRecord:
        """Inside a transaction: `repo`'s upload session `upload_id`; BLOB_UPLOAD_UNKNOWN
        when it has none. With `start`, the caller vouches that a gateway issued the id for
        `repo` (artifactstore/upload_ids.py): a session not recorded yet is recorded now,
        unless it has ended or its id is older than `unused_upload_seconds`."""
        raw = tr.get(self._keys.upload(upload_id))
        record = UploadRecord(**json.loads(raw)) if raw else None
        if record is None and start:
            record = self._start_issued(tr, repo, upload_id)
        if record is None or record.repository != repo:
            raise RegistryError(
                Reason.BLOB_UPLOAD_UNKNOWN,
                f"upload {upload_id[:100]!r} is not known",
                upload_id=upload_id[:100],
            )
        return record

    def _start_issued(self, tr: Transaction, repo: str, upload_id: str) -> UploadRecord | None:
        issued = upload_ids.issued_at(upload_id)
        now = time.time()
        if issued is None or not now - self.unused_upload_seconds < issued <= now + CLOCK_SKEW:
            return None
        if tr.get(self._keys.upload_ended(issued, upload_id)) is not None:
            return None
        record = UploadRecord(upload_id, repo, float(issued), now)
        tr.set(self._keys.upload(upload_id), _dump(record))
        return record

    def _end_upload(self, tr: Transaction, upload_id: str) -> None:
        """Forget a session; an issued id that could still start it is remembered as ended."""
        tr.clear(self._keys.upload(upload_id))
        issued = upload_ids.issued_at(upload_id)
        if issued is not None and issued > time.time() - self.unused_upload_seconds:
            tr.set(self._keys.upload_ended(issued, upload_id), b"")

    async def delete_upload(self, repo: str, upload_id: str) -> None:
        """End `repo`'s upload session `upload_id` (nothing happens if it is another
        repository's)."""
        check_name(repo)
        key = self._keys.upload(upload_id)

        def fn(tr: Transaction) -> None:
            raw = tr.get(key)
            if raw is None or json.loads(raw)["repository"] == repo:
                self._end_upload(tr, upload_id)

        await self._db.run(fn)
