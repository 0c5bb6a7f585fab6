"""Garbage collection's side of the registry metadata: marks, sweeps, canonical deletions,
repository deletion and upload expiry, each one serializable transaction (the contract is
protos/artifactstore/metadata/v1/gc.proto; gc_svc drives it).

Why a blob that a manifest needs is never deleted
-------------------------------------------------
Three kinds of change meet on a digest D: links made into a repository (LinkBlob after an
upload commit, MountBlob: `MetadataStore._link`), manifests naming D (`put_manifest`,
which reads D's link in its repository inside its own transaction), and GC, which removes
links (here) and then, outside the KV, D's bytes (blob_svc DeleteBlob, by gc_svc).

1. Link sweep against a manifest PUT. `sweep_links` removes a link in a transaction that
   reads the link, its mark and the (repo, D, *) range of manifest references; a manifest
   PUT reads the link and writes into that range. Serializable transactions leave two
   outcomes: the PUT commits first, so the sweep conflicts, runs again and finds the
   reference (the link stays); or the sweep commits first, so the PUT conflicts, runs
   again, finds no link and answers MANIFEST_BLOB_UNKNOWN (its client uploads again).
2. Canonical deletion against new links. Bytes are not in the KV, so their deletion
   cannot share a transaction with anything. `begin_blob_deletion` reads D's global link
   count and D's commit records and, only when both are zero, writes D's tombstone in
   that same transaction. Every link creation reads the tombstone and refuses while it
   exists, so once it is committed no link to D can appear until `finish_blob_deletion`
   removes it, which gc_svc calls only after blob_svc has deleted the bytes. A manifest
   PUT needs D linked in its repository, and no repository links D from the tombstone
   on, so by rule 1 it is refused too; no check of its own is needed.
3. Canonical deletion against uploads. A commit in blob_svc that finds D's canonical
   bytes present drops its own copy ("a canonical blob is never rewritten"); had GC
   deleted D just after, the LinkBlob that follows would link nothing. So the gateway calls
   `begin_blob_commit` before CommitUpload: it writes a commit record (D, upload) in a
   transaction that reads D's tombstone and fails while it exists (UNAVAILABLE: the
   gateway waits and retries; by then the bytes are gone and the commit stores them anew),
   and `begin_blob_deletion` keeps D while a record exists. LinkBlob replaces the record
   with the link in one transaction. So either the record commits first, and no deletion
   of D begins until a link holds it, or the tombstone does, and the commit begins only
   after the deletion ended. A record expires after COMMIT_RECORD_SECONDS, well past the
   gateway's commit deadline, so a gateway that died mid-commit does not hold D forever.
4. One deleter at a time. A digest has at most one canonical task waiting or leased
   (deduplicated by digest); `begin_blob_deletion` and `finish_blob_deletion` run only
   under the task's current lease, and gc_svc calls DeleteBlob only well within it, so a
   worker that lost its lease never deletes bytes that a later commit stored.

Crash safety: links go before bytes (the tombstone needs a zero link count); a worker
killed between the two steps leaves the tombstone and its leased task, which becomes
leasable again and resumes at DeleteBlob (idempotent); and a tombstoned digest keeps a due
mark until `finish_blob_deletion`, so a task that got lost anyway is enqueued again by
the next `sweep_blob_marks`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from fdb.subspace_impl import Subspace

from artifactstore import telemetry
from artifactstore.digests import Digest
from artifactstore.errors import Reason, RegistryError
from artifactstore.names import check_name
from metadata_svc.keys import Keyspace, decode_int, repository_content
from metadata_svc.kv import Database, Transaction
from metadata_svc.store import ManifestRecord, MetadataStore, UploadRecord

# Longer than any commit can take: the gateway gives CommitUpload 600 s, then LinkBlob
# its unary deadline; a record older than this belongs to a commit that has failed.
COMMIT_RECORD_SECONDS = 1800.0
MAX_BATCH = 10_000
MAX_IDS = 1000
# Tasks retry with backoff; a canonical task that still fails this often is parked, and its
# digest's due mark has it enqueued again by a later cycle.
TASK_MAX_ATTEMPTS = 20
# Index → child → referrer chains are a few levels deep; deeper is kept, not collected.
MAX_LIVENESS_DEPTH = 16

# Causes written into canonical-queue task payloads.
CAUSE_ORPHAN = "orphan"
CAUSE_REPOSITORY = "repository"

ABANDONED = "abandoned"
EXPIRED = "expired"
DELETED_REPOSITORY = "deleted repository"


@dataclass(frozen=True)
class MarkCounts:
    """What one mark batch did (see MarkResponse in the contract)."""

    cursor: bytes
    done: bool
    scanned: int = 0
    marked: int = 0
    already_marked: int = 0
    unmarked: int = 0


@dataclass(frozen=True)
class SweptLink:
    """A link a sweep or a repository purge removed (or, in a dry run, would remove)."""

    repository: str
    digest: str
    size: int
    # Links to the digest left afterwards (dry run: before); 0 hands its bytes to GC.
    remaining_links: int


@dataclass(frozen=True)
class Expired:
    """An upload session removed (or that would be), and why."""

    upload_id: str
    repository: str
    reason: str
    started_at: float
    last_activity_at: float


@dataclass(frozen=True)
class Page:
    """A batch of a scan: where to continue, whether it ended, what it found."""

    cursor: bytes
    done: bool
    links: list[SweptLink] = field(default_factory=list)
    uploads: list[Expired] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    swept: int = 0
    swept_bytes: int = 0
    unmarked: int = 0


def _mark(at: float) -> bytes:
    return json.dumps({"marked_at": at}).encode()


def _marked_at(raw: bytes) -> float:
    return float(json.loads(raw)["marked_at"])


def _batch(batch: int) -> int:
    if batch <= 0:
        raise RegistryError(Reason.PAGINATION_INVALID, f"batch must be positive, not {batch}")
    return min(batch, MAX_BATCH)


def _check_seconds(value: float, name: str) -> None:
    if value < 0:
        raise RegistryError(Reason.PAGINATION_INVALID, f"{name} must not be negative")


def _digest(text: str) -> str:
    return str(Digest.parse(text))


def _scan(
    tr: Transaction, space: Subspace, cursor: bytes, batch: int
) -> tuple[list[tuple[bytes, bytes]], bytes, bool]:
    """Up to `batch` pairs of `space` after `cursor`: (rows, next cursor, reached the end)."""
    if cursor and not space.contains(cursor):
        raise RegistryError(Reason.PAGINATION_INVALID, "the cursor belongs to another scan")
    begin = cursor + b"\x00" if cursor else space.range().start
    rows = tr.get_range(begin, space.range().stop, limit=batch)
    return rows, (rows[-1][0] if rows else cursor), len(rows) < batch


class GcStore:
    """The GC operations over one registry directory (the one `store` works in)."""

    def __init__(self, db: Database, store: MetadataStore, directory: str) -> None:
        self._db = db
        self._store = store
        self._keys: Keyspace = store.keys
        self._queues = store.queues
        self._directory = directory

    def check_directory(self, directory: str) -> None:
        """Refuse (UNSUPPORTED) a caller that collects another registry directory."""
        if directory and directory != self._directory:
            raise RegistryError(
                Reason.UNSUPPORTED,
                f"this metadata_svc serves directory {self._directory!r}, not {directory!r}",
                directory=directory[:100],
            )

    # -- helpers inside transactions ---------------------------------------------------

    def _referenced(self, tr: Transaction, repo: str, digest: str) -> bool:
        space = self._keys.manifests_of_blob(repo, digest)
        return bool(tr.get_range_startswith(space.key(), limit=1))

    def _live(self, tr: Transaction, repo: str, digest: str, depth: int = 0) -> bool:
        """Whether manifest `digest` of `repo` is live: tagged, listed by a live index, or
        a referrer of a live manifest."""
        keys = self._keys
        if depth > MAX_LIVENESS_DEPTH:
            return True
        if tr.get_range_startswith(keys.tags_of_manifest(repo, digest).key(), limit=1):
            return True
        parents = keys.parents_of_manifest(repo, digest)
        for key, _ in tr.get_range_startswith(parents.key()):
            if self._live(tr, repo, parents.unpack(key)[0], depth + 1):
                return True
        raw = tr.get(keys.manifest(repo, digest))
        subject = json.loads(raw).get("subject", "") if raw else ""
        return bool(
            subject
            and tr.get(keys.manifest(repo, subject)) is not None
            and self._live(tr, repo, subject, depth + 1)
        )

    def _unlink(
        self, tr: Transaction, repo: str, digest: str, size: int, cause: str, queue: str
    ) -> SweptLink:
        """Remove a link; when it was the digest's last, give the digest a due mark and a
        canonical task (both in this transaction)."""
        keys = self._keys
        tr.clear(keys.blob_link(repo, digest))
        tr.clear(keys.gc_link_mark(repo, digest))
        tr.add(keys.blob_refcount(digest), -1)
        remaining = decode_int(tr.get(keys.blob_refcount(digest)))
        if remaining <= 0:
            tr.set(keys.gc_blob_mark(digest), _mark(0.0))
            self._enqueue_deletion(tr, digest, cause, queue)
        return SweptLink(repo, digest, size, max(remaining, 0))

    def _enqueue_deletion(self, tr: Transaction, digest: str, cause: str, queue: str) -> None:
        self._queues.enqueue(
            tr,
            queue,
            json.dumps({"digest": digest, "cause": cause}),
            dedup_key=digest,
            max_attempts=TASK_MAX_ATTEMPTS,
            trace_context=telemetry.current_context(),
        )

    # -- mark -------------------------------------------------------------------------

    async def mark_links(
        self, directory: str, cursor: bytes, batch: int, dry_run: bool
    ) -> MarkCounts:
        """Mark the unreferenced links of the next batch; clear the marks of referenced ones."""
        limit = _batch(batch)
        keys = self._keys

        def fn(tr: Transaction) -> MarkCounts:
            rows, after, done = _scan(tr, keys.blob_links(), cursor, limit)
            now = time.time()
            marked = already = unmarked = 0
            for key, _ in rows:
                repo, digest = keys.blob_links().unpack(key)
                mark_key = keys.gc_link_mark(repo, digest)
                mark = tr.get(mark_key)
                if self._referenced(tr, repo, digest):
                    if mark is not None:
                        unmarked += 1
                        if not dry_run:
                            tr.clear(mark_key)
                elif mark is not None:
                    already += 1
                else:
                    marked += 1
                    if not dry_run:
                        tr.set(mark_key, _mark(now))
            return MarkCounts(after, done, len(rows), marked, already, unmarked)

        self.check_directory(directory)
        return await self._db.run(fn)

    async def mark_manifests(
        self, directory: str, cursor: bytes, batch: int, dry_run: bool
    ) -> MarkCounts:
        """Mark the manifests of the next batch that are not live; clear the marks of
        live ones."""
        limit = _batch(batch)
        keys = self._keys

        def fn(tr: Transaction) -> MarkCounts:
            rows, after, done = _scan(tr, keys.manifests(), cursor, limit)
            now = time.time()
            marked = already = unmarked = 0
            for key, _ in rows:
                repo, digest = keys.manifests().unpack(key)
                mark_key = keys.gc_manifest_mark(repo, digest)
                mark = tr.get(mark_key)
                if self._live(tr, repo, digest):
                    if mark is not None:
                        unmarked += 1
                        if not dry_run:
                            tr.clear(mark_key)
                elif mark is not None:
                    already += 1
                else:
                    marked += 1
                    if not dry_run:
                        tr.set(mark_key, _mark(now))
            return MarkCounts(after, done, len(rows), marked, already, unmarked)

        self.check_directory(directory)
        return await self._db.run(fn)

    async def mark_blobs(self, directory: str, digests: list[str], dry_run: bool) -> MarkCounts:
        """Mark each canonical digest no repository links; clear the marks of linked ones."""
        if len(digests) > MAX_IDS:
            raise RegistryError(Reason.PAGINATION_INVALID, f"at most {MAX_IDS} digests a call")
        checked = [_digest(d) for d in digests]
        keys = self._keys

        def fn(tr: Transaction) -> MarkCounts:
            now = time.time()
            marked = already = unmarked = 0
            for digest in checked:
                mark_key = keys.gc_blob_mark(digest)
                mark = tr.get(mark_key)
                if decode_int(tr.get(keys.blob_refcount(digest))) > 0:
                    if mark is not None:
                        unmarked += 1
                        if not dry_run:
                            tr.clear(mark_key)
                elif mark is not None:
                    already += 1
                else:
                    marked += 1
                    if not dry_run:
                        tr.set(mark_key, _mark(now))
            return MarkCounts(b"", True, len(checked), marked, already, unmarked)

        self.check_directory(directory)
        return await self._db.run(fn)

    # -- sweep ------------------------------------------------------------------------

    async def sweep_manifests(
        self, directory: str, cursor: bytes, batch: int, retention: float, dry_run: bool
    ) -> Page:
        """Remove the marked manifests of the next batch whose mark is older than
        `retention` seconds and that are still not live."""
        limit = _batch(batch)
        _check_seconds(retention, "retention_seconds")
        keys = self._keys

        def fn(tr: Transaction) -> Page:
            rows, after, done = _scan(tr, keys.gc_manifest_marks(), cursor, limit)
            due = time.time() - retention
            swept = swept_bytes = unmarked = 0
            for key, value in rows:
                if _marked_at(value) > due:
                    continue
                repo, digest = keys.gc_manifest_marks().unpack(key)
                raw = tr.get(keys.manifest(repo, digest))
                if raw is None or self._live(tr, repo, digest):
                    unmarked += 1
                    if not dry_run:
                        tr.clear(key)
                    continue
                record = ManifestRecord(**json.loads(raw))
                swept += 1
                swept_bytes += record.size
                if not dry_run:
                    self._store.remove_manifest(tr, repo, record)
            return Page(after, done, swept=swept, swept_bytes=swept_bytes, unmarked=unmarked)

        self.check_directory(directory)
        return await self._db.run(fn)

    async def sweep_links(
        self, directory: str, cursor: bytes, batch: int, grace: float, queue: str, dry_run: bool
    ) -> Page:
        """Remove the marked links of the next batch whose mark is older than `grace`
        seconds and that no manifest references (rule 1 of the module docstring)."""
        limit = _batch(batch)
        _check_seconds(grace, "grace_seconds")
        keys = self._keys

        def fn(tr: Transaction) -> Page:
            rows, after, done = _scan(tr, keys.gc_link_marks(), cursor, limit)
            due = time.time() - grace
            links: list[SweptLink] = []
            unmarked = 0
            for key, value in rows:
                if _marked_at(value) > due:
                    continue
                repo, digest = keys.gc_link_marks().unpack(key)
                link = tr.get(keys.blob_link(repo, digest))
                if link is None or self._referenced(tr, repo, digest):
                    unmarked += 1
                    if not dry_run:
                        tr.clear(key)
                    continue
                if dry_run:
                    count = decode_int(tr.get(keys.blob_refcount(digest)))
                    links.append(SweptLink(repo, digest, decode_int(link), count))
                else:
                    links.append(
                        self._unlink(tr, repo, digest, decode_int(link), CAUSE_ORPHAN, queue)
                    )
            return Page(after, done, links=links, unmarked=unmarked)

        self.check_directory(directory)
        return await self._db.run(fn)

    async def sweep_blob_marks(
        self, directory: str, cursor: bytes, batch: int, grace: float, queue: str, dry_run: bool
    ) -> Page:
        """Enqueue a canonical task for each marked digest of the next batch whose mark is
        older than `grace` seconds and that no repository links."""
        limit = _batch(batch)
        _check_seconds(grace, "grace_seconds")
        keys = self._keys

        def fn(tr: Transaction) -> Page:
            rows, after, done = _scan(tr, keys.gc_blob_marks(), cursor, limit)
            due = time.time() - grace
            digests: list[str] = []
            unmarked = 0
            for key, value in rows:
                if _marked_at(value) > due:
                    continue
                (digest,) = keys.gc_blob_marks().unpack(key)
                if decode_int(tr.get(keys.blob_refcount(digest))) > 0:
                    unmarked += 1
                    if not dry_run:
                        tr.clear(key)
                    continue
                digests.append(digest)
                if not dry_run:
                    self._enqueue_deletion(tr, digest, CAUSE_ORPHAN, queue)
            return Page(after, done, digests=digests, unmarked=unmarked)

        self.check_directory(directory)
        return await self._db.run(fn)

    # -- canonical deletion (rules 2-4) -----------------------------------------------

    async def begin_blob_deletion(
        self, directory: str, digest: str, queue: str, task_id: str, lease_id: str, lease: float
    ) -> str:
        """Decide a canonical task under its lease: "" to delete the bytes now (the
        tombstone is written), else why the blob stays (the task is then completed)."""
        digest = _digest(digest)
        keys = self._keys

        def fn(tr: Transaction) -> str:
            self._queues.extend(tr, queue, task_id, lease_id, lease)
            if tr.get(keys.gc_blob_deleting(digest)) is not None:
                return ""
            now = time.time()
            kept = ""
            if decode_int(tr.get(keys.blob_refcount(digest))) > 0:
                kept = "linked"
            else:
                commits = keys.gc_blob_commits(digest)
                for key, value in tr.get_range_startswith(commits.key()):
                    if json.loads(value)["since"] > now - COMMIT_RECORD_SECONDS:
                        kept = "commit in flight"
                    else:
                        tr.clear(key)
            if kept:
                tr.clear(keys.gc_blob_mark(digest))
                self._queues.complete(tr, queue, task_id, lease_id)
                return kept
            tr.set(
                keys.gc_blob_deleting(digest), json.dumps({"since": now, "task": task_id}).encode()
            )
            if tr.get(keys.gc_blob_mark(digest)) is None:
                tr.set(keys.gc_blob_mark(digest), _mark(0.0))
            return ""

        self.check_directory(directory)
        return await self._db.run(fn)

    async def finish_blob_deletion(
        self, directory: str, digest: str, queue: str, task_id: str, lease_id: str
    ) -> None:
        """The bytes are gone: remove the tombstone and the mark, complete the task."""
        digest = _digest(digest)
        keys = self._keys

        def fn(tr: Transaction) -> None:
            self._queues.complete(tr, queue, task_id, lease_id)
            tr.clear(keys.gc_blob_deleting(digest))
            tr.clear(keys.gc_blob_mark(digest))

        self.check_directory(directory)
        await self._db.run(fn)

    async def begin_blob_commit(
        self, directory: str, digest: str, upload_id: str, repo: str = "", *, start: bool = False
    ) -> None:
        """Record a commit of `digest` in flight (rule 3); UNAVAILABLE while it is being
        deleted. With `repo`, BLOB_UPLOAD_UNKNOWN unless the session is `repo`'s (with
        `start`, an issued session is recorded now: MetadataStore.upload_of)."""
        digest = _digest(digest)
        if repo:
            check_name(repo)  # the session's record then vouches for the id
        elif not upload_id or len(upload_id) > 64:
            raise RegistryError(Reason.BLOB_UPLOAD_INVALID, "an upload id of 1-64 characters")
        keys = self._keys

        def fn(tr: Transaction) -> None:
            if repo:
                self._store.upload_of(tr, repo, upload_id, start=start)
            if tr.get(keys.gc_blob_deleting(digest)) is not None:
                raise RegistryError(
                    Reason.UNAVAILABLE,
                    f"blob {digest} is being deleted; retry shortly",
                    digest=digest,
                )
            tr.set(
                keys.gc_blob_commit(digest, upload_id), json.dumps({"since": time.time()}).encode()
            )

        self.check_directory(directory)
        await self._db.run(fn)

    # -- repositories -----------------------------------------------------------------

    async def delete_repository(self, directory: str, repo: str, queue: str) -> tuple[str, float]:
        """Delete `repo` at once (everything but its links and upload sessions, which its
        repository-queue task removes); return that task's id and the deletion time."""
        check_name(repo)
        keys = self._keys

        def fn(tr: Transaction) -> tuple[str, float]:
            marker_key = keys.gc_repository_deleting(repo)
            if tr.get(keys.repository(repo)) is None:
                marker = tr.get(marker_key)
                if marker is None:
                    raise RegistryError(
                        Reason.NAME_UNKNOWN, f"repository {repo!r} is not known", name=repo
                    )
                found = json.loads(marker)
                return found["task"], found["deleted_at"]
            now = time.time()
            task = self._queues.enqueue(
                tr,
                queue,
                json.dumps({"repository": repo}),
                dedup_key=repo,
                max_attempts=TASK_MAX_ATTEMPTS,
                trace_context=telemetry.current_context(),
            )
            tr.clear(keys.repository(repo))
            for space in repository_content(keys, repo):
                tr.clear_range_startswith(space.key())
            tr.set(marker_key, json.dumps({"deleted_at": now, "task": task.task_id}).encode())
            return task.task_id, now

        self.check_directory(directory)
        return await self._db.run(fn)

    async def purge_repository(
        self,
        directory: str,
        repo: str,
        cursor: bytes,
        batch: int,
        canonical_queue: str,
        lease: tuple[str, str, str, float],
    ) -> Page:
        """One step of a deleted repository's task, under `lease` (queue, task id, lease
        id, seconds): its next links, else its next upload sessions; when none is left,
        the deletion record goes and the task is completed (`done`)."""
        check_name(repo)
        limit = _batch(batch)
        queue, task_id, lease_id, seconds = lease
        keys = self._keys

        def fn(tr: Transaction) -> Page:
            self._queues.extend(tr, queue, task_id, lease_id, seconds)
            rows = tr.get_range_startswith(keys.blob_links_of(repo).key(), limit=limit)
            if rows:
                links = [
                    self._unlink(
                        tr,
                        repo,
                        keys.blob_links_of(repo).unpack(key)[0],
                        decode_int(value),
                        CAUSE_REPOSITORY,
                        canonical_queue,
                    )
                    for key, value in rows
                ]
                return Page(b"", False, links=links)
            rows, after, done = _scan(tr, keys.uploads(), cursor, limit)
            uploads = []
            for key, value in rows:
                record = UploadRecord(**json.loads(value))
                if record.repository == repo:
                    tr.clear(key)
                    uploads.append(
                        Expired(
                            record.upload_id,
                            repo,
                            DELETED_REPOSITORY,
                            record.started_at,
                            record.last_activity_at,
                        )
                    )
            if done:
                tr.clear(keys.gc_repository_deleting(repo))
                self._queues.complete(tr, queue, task_id, lease_id)
            return Page(after, done, uploads=uploads)

        self.check_directory(directory)
        return await self._db.run(fn)

    # -- uploads ----------------------------------------------------------------------

    async def expire_uploads(
        self,
        directory: str,
        cursor: bytes,
        batch: int,
        idle: float,
        max_age: float,
        dry_run: bool,
    ) -> Page:
        """Remove the upload sessions of the next batch that are idle for `idle` seconds
        or older than `max_age` seconds, checked in this transaction (a request that
        touches a session concurrently conflicts with it); after the last session, the
        commit records older than COMMIT_RECORD_SECONDS (commits that never linked). The
        first batch also forgets the ended sessions whose ids can no longer start."""
        limit = _batch(batch)
        _check_seconds(idle, "idle_seconds")
        _check_seconds(max_age, "timeout_seconds")
        keys = self._keys
        commits = keys.gc_blob_commits_all()

        def fn(tr: Transaction) -> Page:
            if cursor and commits.contains(cursor):
                return expire_commits(tr)
            rows, after, done = _scan(tr, keys.uploads(), cursor, limit)
            now = time.time()
            if not cursor and not dry_run:
                ended = keys.uploads_ended()
                unusable = int(now - self._store.unused_upload_seconds)
                tr.clear_range(ended.range().start, ended.pack((unusable,)))
            uploads = []
            for key, value in rows:
                record = UploadRecord(**json.loads(value))
                if now - record.last_activity_at > idle:
                    reason = ABANDONED
                elif now - record.started_at > max_age:
                    reason = EXPIRED
                else:
                    continue
                uploads.append(
                    Expired(
                        record.upload_id,
                        record.repository,
                        reason,
                        record.started_at,
                        record.last_activity_at,
                    )
                )
                if not dry_run:
                    tr.clear(key)
            # The commit records come next: the cursor moves to the start of their area.
            return Page(commits.key() if done else after, False, uploads=uploads)

        def expire_commits(tr: Transaction) -> Page:
            rows, after, done = _scan(tr, commits, cursor, limit)
            stale = time.time() - COMMIT_RECORD_SECONDS
            for key, value in rows:
                if json.loads(value)["since"] < stale and not dry_run:
                    tr.clear(key)
            return Page(after, done)

        self.check_directory(directory)
        return await self._db.run(fn)

    async def find_uploads(self, directory: str, upload_ids: list[str]) -> list[str]:
        """Those of `upload_ids` that have a session record."""
        if len(upload_ids) > MAX_IDS:
            raise RegistryError(Reason.PAGINATION_INVALID, f"at most {MAX_IDS} ids a call")
        keys = self._keys

        def fn(tr: Transaction) -> list[str]:
            return [u for u in upload_ids if u and tr.get(keys.upload(u)) is not None]

        self.check_directory(directory)
        return await self._db.run(fn)
