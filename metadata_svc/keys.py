"""The whole registry keyspace, declared once.

Every key is a tuple packed with FoundationDB's tuple layer inside the directory named by
ARTIFACT_STORE_DIRECTORY. The first element numbers the area; numbers are never reused.

    (1,  repo)                          → Repository record (JSON)
    (2,  repo, digest)                  → Manifest record (JSON: media type, size, subject, …)
    (3,  repo, digest, part)            → manifest body, split in parts of ≤ 90,000 bytes
    (4,  repo, tag)                     → manifest digest (ASCII)
    (5,  repo, digest)                  → blob link: size (int64 LE) — what GC counts
    (6,  repo, manifest, blob)          → ''   manifest → blob reference
    (7,  repo, manifest, child)         → ''   index → child manifest reference
    (8,  repo, subject, referrer)       → referrer descriptor (JSON)
    (9,  upload_id)                     → upload session record (JSON)
    (10, digest)                        → global count of repository links (atomic int64 LE)
    (11, repo, manifest, tag)           → ''   reverse of (4): the tags of a manifest
    (12, repo, child, parent)           → ''   reverse of (7): the indexes naming a manifest
    (13, repo, blob, manifest)          → ''   reverse of (6): the manifests naming a blob
    (14, issued second, upload_id)      → ''   an ended session whose issued id
                                          (artifactstore/upload_ids.py) could still start
    (20, queue, available at µs, task)  → ''   a queue's tasks by when they may be leased
    (21, queue, task)                   → task record (JSON)
    (22, queue, dedup key)              → task id: a task not yet done for this key
    (23, queue, task)                   → parked task (JSON): failed too often
    (24, queue, counter)                → atomic int64 LE: "pending", "parked"
    (30, repo, digest)                  → GC pending mark of a blob link (JSON: marked_at)
    (31, repo, manifest)                → GC pending mark of an untagged manifest (JSON)
    (32, digest)                        → GC pending mark of a canonical blob no link
                                          names (JSON: marked_at)
    (33, digest)                        → GC tombstone: the canonical blob is being
                                          deleted (JSON: since, task, size)
    (34, digest, upload_id)             → a commit of the blob in flight (JSON: since);
                                          no deletion of the digest starts meanwhile
    (35, repo)                          → the repository is being deleted (JSON)
    (40, repo, digest)                  → latest scan summary of a manifest (JSON: status,
                                          counts, time, analyzer, report location, …)
    (41, project)                       → the project's scan policy (JSON)
    (42, job)                           → last run of a periodic scan job (JSON: at, by)

The platform's IAM data lives in its own directory, ARTS_METADATA_DIRECTORY:

    (1,  organization)                  → Organization record (JSON)
    (2,  project)                       → Project record (JSON: organization, …)
    (3,  organization, project)         → ''   the projects of an organization
    (4,  user)                          → User record (JSON: scrypt hash, disabled, …)
    (5,  service account email)         → ServiceAccount record (JSON)
    (6,  project, service account)      → ''   the service accounts of a project
    (7,  key id)                        → Key record (JSON: public key PEM, …)
    (8,  service account, key id)       → ''   the keys of a service account
    (9,  scope kind, scope name, principal) → role
    (10, principal, scope kind, scope name) → role   reverse of (9)
    (11,)                               → policy version (atomic int64 LE)
    (12, time ns, nonce)                → audit entry (JSON)
    (13, principal)                     → recent authentication failures (JSON)
    (14,)                               → bootstrap done (JSON)

Values must fit FoundationDB's 100,000-byte limit; manifest bodies (up to 4 MiB) are the
only values that can be larger, hence (3)'s parts (the Record Layer's SplitHelper idea).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from fdb.subspace_impl import Subspace

from metadata_svc.kv.base import strinc


@enum.unique
class Area(enum.IntEnum):
    """The registry directory's top-level areas; a number is never reused."""

    REPOSITORY = 1
    MANIFEST = 2
    MANIFEST_PART = 3
    TAG = 4
    BLOB_LINK = 5
    MANIFEST_BLOB = 6
    MANIFEST_CHILD = 7
    REFERRER = 8
    UPLOAD = 9
    BLOB_REFCOUNT = 10
    TAG_OF_MANIFEST = 11
    PARENT_OF_MANIFEST = 12
    MANIFEST_OF_BLOB = 13
    UPLOAD_ENDED = 14
    QUEUE_READY = 20
    QUEUE_TASK = 21
    QUEUE_DEDUP = 22
    QUEUE_PARKED = 23
    QUEUE_COUNTER = 24
    GC_LINK_MARK = 30
    GC_MANIFEST_MARK = 31
    GC_BLOB_MARK = 32
    GC_BLOB_DELETING = 33
    GC_BLOB_COMMIT = 34
    GC_REPOSITORY_DELETING = 35
    SCAN_SUMMARY = 40
    SCAN_POLICY = 41
    SCAN_SCHEDULE = 42


# Leaves headroom under the 100,000-byte value limit.
PART_BYTES = 90_000


def encode_int(value: int) -> bytes:
    """An int64 little-endian value, the encoding FoundationDB's atomic add uses."""
    return struct.pack("<q", value)


def decode_int(value: bytes | None) -> int:
    """Decode encode_int's form; an absent value is 0."""
    return 0 if value is None else struct.unpack("<q", value)[0]


@dataclass(frozen=True)
class Keyspace:
    """Typed key builders for each shape above, inside one directory subspace."""

    root: Subspace

    def repository(self, repo: str) -> bytes:
        return self.root.pack((Area.REPOSITORY, repo))

    def repositories(self) -> Subspace:
        return self.root.subspace((Area.REPOSITORY,))

    def manifest(self, repo: str, digest: str) -> bytes:
        return self.root.pack((Area.MANIFEST, repo, digest))

    def manifests(self) -> Subspace:
        return self.root.subspace((Area.MANIFEST,))

    def manifest_part(self, repo: str, digest: str, part: int) -> bytes:
        return self.root.pack((Area.MANIFEST_PART, repo, digest, part))

    def manifest_parts(self, repo: str, digest: str) -> Subspace:
        return self.root.subspace((Area.MANIFEST_PART, repo, digest))

    def tag(self, repo: str, tag: str) -> bytes:
        return self.root.pack((Area.TAG, repo, tag))

    def tags(self, repo: str) -> Subspace:
        return self.root.subspace((Area.TAG, repo))

    def blob_link(self, repo: str, digest: str) -> bytes:
        return self.root.pack((Area.BLOB_LINK, repo, digest))

    def blob_links(self) -> Subspace:
        return self.root.subspace((Area.BLOB_LINK,))

    def blob_links_of(self, repo: str) -> Subspace:
        return self.root.subspace((Area.BLOB_LINK, repo))

    def manifest_blob(self, repo: str, manifest: str, blob: str) -> bytes:
        return self.root.pack((Area.MANIFEST_BLOB, repo, manifest, blob))

    def manifest_blobs(self, repo: str, manifest: str) -> Subspace:
        return self.root.subspace((Area.MANIFEST_BLOB, repo, manifest))

    def manifest_child(self, repo: str, manifest: str, child: str) -> bytes:
        return self.root.pack((Area.MANIFEST_CHILD, repo, manifest, child))

    def manifest_children(self, repo: str, manifest: str) -> Subspace:
        return self.root.subspace((Area.MANIFEST_CHILD, repo, manifest))

    def referrer(self, repo: str, subject: str, referrer: str) -> bytes:
        return self.root.pack((Area.REFERRER, repo, subject, referrer))

    def referrers(self, repo: str, subject: str) -> Subspace:
        return self.root.subspace((Area.REFERRER, repo, subject))

    def upload(self, upload_id: str) -> bytes:
        return self.root.pack((Area.UPLOAD, upload_id))

    def uploads(self) -> Subspace:
        return self.root.subspace((Area.UPLOAD,))

    def upload_ended(self, issued: int, upload_id: str) -> bytes:
        return self.root.pack((Area.UPLOAD_ENDED, issued, upload_id))

    def uploads_ended(self) -> Subspace:
        return self.root.subspace((Area.UPLOAD_ENDED,))

    def blob_refcount(self, digest: str) -> bytes:
        return self.root.pack((Area.BLOB_REFCOUNT, digest))

    def tag_of_manifest(self, repo: str, manifest: str, tag: str) -> bytes:
        return self.root.pack((Area.TAG_OF_MANIFEST, repo, manifest, tag))

    def tags_of_manifest(self, repo: str, manifest: str) -> Subspace:
        return self.root.subspace((Area.TAG_OF_MANIFEST, repo, manifest))

    def parent_of_manifest(self, repo: str, child: str, parent: str) -> bytes:
        return self.root.pack((Area.PARENT_OF_MANIFEST, repo, child, parent))

    def parents_of_manifest(self, repo: str, child: str) -> Subspace:
        return self.root.subspace((Area.PARENT_OF_MANIFEST, repo, child))

    def manifest_of_blob(self, repo: str, blob: str, manifest: str) -> bytes:
        return self.root.pack((Area.MANIFEST_OF_BLOB, repo, blob, manifest))

    def manifests_of_blob(self, repo: str, blob: str) -> Subspace:
        return self.root.subspace((Area.MANIFEST_OF_BLOB, repo, blob))

    def queue_ready(self, queue: str, available_us: int, task: str) -> bytes:
        return self.root.pack((Area.QUEUE_READY, queue, available_us, task))

    def queue_ready_all(self, queue: str) -> Subspace:
        return self.root.subspace((Area.QUEUE_READY, queue))

    def queue_task(self, queue: str, task: str) -> bytes:
        return self.root.pack((Area.QUEUE_TASK, queue, task))

    def queue_dedup(self, queue: str, dedup_key: str) -> bytes:
        return self.root.pack((Area.QUEUE_DEDUP, queue, dedup_key))

    def queue_parked(self, queue: str, task: str) -> bytes:
        return self.root.pack((Area.QUEUE_PARKED, queue, task))

    def queue_parked_all(self, queue: str) -> Subspace:
        return self.root.subspace((Area.QUEUE_PARKED, queue))

    def queue_counter(self, queue: str, counter: str) -> bytes:
        return self.root.pack((Area.QUEUE_COUNTER, queue, counter))

    def scan_summary(self, repo: str, digest: str) -> bytes:
        return self.root.pack((Area.SCAN_SUMMARY, repo, digest))

    def scan_summaries(self) -> Subspace:
        return self.root.subspace((Area.SCAN_SUMMARY,))

    def scan_policy(self, project: str) -> bytes:
        return self.root.pack((Area.SCAN_POLICY, project))

    def scan_schedule(self, job: str) -> bytes:
        return self.root.pack((Area.SCAN_SCHEDULE, job))

    def gc_link_mark(self, repo: str, digest: str) -> bytes:
        return self.root.pack((Area.GC_LINK_MARK, repo, digest))

    def gc_link_marks(self) -> Subspace:
        return self.root.subspace((Area.GC_LINK_MARK,))

    def gc_manifest_mark(self, repo: str, manifest: str) -> bytes:
        return self.root.pack((Area.GC_MANIFEST_MARK, repo, manifest))

    def gc_manifest_marks(self) -> Subspace:
        return self.root.subspace((Area.GC_MANIFEST_MARK,))

    def gc_blob_mark(self, digest: str) -> bytes:
        return self.root.pack((Area.GC_BLOB_MARK, digest))

    def gc_blob_marks(self) -> Subspace:
        return self.root.subspace((Area.GC_BLOB_MARK,))

    def gc_blob_deleting(self, digest: str) -> bytes:
        return self.root.pack((Area.GC_BLOB_DELETING, digest))

    def gc_blob_deletions(self) -> Subspace:
        return self.root.subspace((Area.GC_BLOB_DELETING,))

    def gc_blob_commit(self, digest: str, upload_id: str) -> bytes:
        return self.root.pack((Area.GC_BLOB_COMMIT, digest, upload_id))

    def gc_blob_commits(self, digest: str) -> Subspace:
        return self.root.subspace((Area.GC_BLOB_COMMIT, digest))

    def gc_blob_commits_all(self) -> Subspace:
        return self.root.subspace((Area.GC_BLOB_COMMIT,))

    def gc_repository_deleting(self, repo: str) -> bytes:
        return self.root.pack((Area.GC_REPOSITORY_DELETING, repo))


# A part of the keyspace a write changed, for readers' caches: ("repository", name),
# ("project", name), or EVERYTHING.
Scope = tuple[str, str]
EVERYTHING: Scope = ("everything", "")

# The areas GetManifest reads (with its repository check and scan policy) and ListTags
# reads (tags, repository check), by what their second element names.
_READ_SCOPE_OF_AREA = {
    Area.REPOSITORY: "repository",
    Area.BLOB_LINK: "repository",
    Area.MANIFEST: "repository",
    Area.MANIFEST_PART: "repository",
    Area.TAG: "repository",
    Area.SCAN_SUMMARY: "repository",
    Area.SCAN_POLICY: "project",
}

# The areas whose keys start with a repository name and hold nothing that is counted
# elsewhere: a repository delete clears each with one range clear. Blob links are not
# among them (each one counts in its digest's global reference count).
REPOSITORY_CONTENT = (
    Area.MANIFEST,
    Area.MANIFEST_PART,
    Area.TAG,
    Area.MANIFEST_BLOB,
    Area.MANIFEST_CHILD,
    Area.REFERRER,
    Area.TAG_OF_MANIFEST,
    Area.PARENT_OF_MANIFEST,
    Area.MANIFEST_OF_BLOB,
    Area.GC_LINK_MARK,
    Area.GC_MANIFEST_MARK,
    Area.SCAN_SUMMARY,
)


def repository_content(keys: Keyspace, repo: str) -> list[Subspace]:
    """The subspaces of `REPOSITORY_CONTENT` that belong to `repo` alone."""
    return [keys.root.subspace((area, repo)) for area in REPOSITORY_CONTENT]


def manifest_read_scope(keys: Keyspace, begin: bytes, end: bytes) -> Scope | None:
    """What a write of the keys [begin, end) can change of GetManifest's, ListTags' and
    StatBlobLink's answers: the repository or project it names, EVERYTHING when the range
    is not within one, or None when it touches none of the areas those reads read."""
    root = keys.root.key()
    if not begin.startswith(root):
        return EVERYTHING if begin < root < end else None
    try:
        key = keys.root.unpack(begin)
    except (ValueError, KeyError, IndexError):
        return EVERYTHING
    if not key:
        return EVERYTHING
    kind = _READ_SCOPE_OF_AREA.get(key[0])
    if len(key) >= 2 and isinstance(key[1], str) and end <= strinc(keys.root.pack(key[:2])):
        return None if kind is None else (kind, key[1])
    if end <= strinc(keys.root.pack(key[:1])):
        return None if kind is None else EVERYTHING
    return EVERYTHING


@enum.unique
class IamArea(enum.IntEnum):
    """The IAM directory's top-level areas; a number is never reused."""

    ORGANIZATION = 1
    PROJECT = 2
    PROJECT_OF_ORGANIZATION = 3
    USER = 4
    SERVICE_ACCOUNT = 5
    SERVICE_ACCOUNT_OF_PROJECT = 6
    KEY = 7
    KEY_OF_SERVICE_ACCOUNT = 8
    BINDING = 9
    BINDING_OF_PRINCIPAL = 10
    POLICY_VERSION = 11
    AUDIT = 12
    AUTH_FAILURES = 13
    BOOTSTRAP = 14


@dataclass(frozen=True)
class IamKeyspace:
    """Typed key builders for the IAM directory's shapes above."""

    root: Subspace

    def organization(self, org: str) -> bytes:
        return self.root.pack((IamArea.ORGANIZATION, org))

    def organizations(self) -> Subspace:
        return self.root.subspace((IamArea.ORGANIZATION,))

    def project(self, project: str) -> bytes:
        return self.root.pack((IamArea.PROJECT, project))

    def projects(self) -> Subspace:
        return self.root.subspace((IamArea.PROJECT,))

    def project_of_organization(self, org: str, project: str) -> bytes:
        return self.root.pack((IamArea.PROJECT_OF_ORGANIZATION, org, project))

    def projects_of_organization(self, org: str) -> Subspace:
        return self.root.subspace((IamArea.PROJECT_OF_ORGANIZATION, org))

    def user(self, user: str) -> bytes:
        return self.root.pack((IamArea.USER, user))

    def users(self) -> Subspace:
        return self.root.subspace((IamArea.USER,))

    def service_account(self, email: str) -> bytes:
        return self.root.pack((IamArea.SERVICE_ACCOUNT, email))

    def service_account_of_project(self, project: str, email: str) -> bytes:
        return self.root.pack((IamArea.SERVICE_ACCOUNT_OF_PROJECT, project, email))

    def service_accounts_of_project(self, project: str) -> Subspace:
        return self.root.subspace((IamArea.SERVICE_ACCOUNT_OF_PROJECT, project))

    def key(self, key_id: str) -> bytes:
        return self.root.pack((IamArea.KEY, key_id))

    def key_of_service_account(self, email: str, key_id: str) -> bytes:
        return self.root.pack((IamArea.KEY_OF_SERVICE_ACCOUNT, email, key_id))

    def keys_of_service_account(self, email: str) -> Subspace:
        return self.root.subspace((IamArea.KEY_OF_SERVICE_ACCOUNT, email))

    def binding(self, kind: str, name: str, principal: str) -> bytes:
        return self.root.pack((IamArea.BINDING, kind, name, principal))

    def bindings(self, kind: str, name: str) -> Subspace:
        return self.root.subspace((IamArea.BINDING, kind, name))

    def binding_of_principal(self, principal: str, kind: str, name: str) -> bytes:
        return self.root.pack((IamArea.BINDING_OF_PRINCIPAL, principal, kind, name))

    def bindings_of_principal(self, principal: str) -> Subspace:
        return self.root.subspace((IamArea.BINDING_OF_PRINCIPAL, principal))

    def policy_version(self) -> bytes:
        return self.root.pack((IamArea.POLICY_VERSION,))

    def audit(self, at_ns: int, nonce: str) -> bytes:
        return self.root.pack((IamArea.AUDIT, at_ns, nonce))

    def audits(self) -> Subspace:
        return self.root.subspace((IamArea.AUDIT,))

    def auth_failures(self, principal: str) -> bytes:
        return self.root.pack((IamArea.AUTH_FAILURES, principal))

    def bootstrap(self) -> bytes:
        return self.root.pack((IamArea.BOOTSTRAP,))
