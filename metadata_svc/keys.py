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

Values must fit FoundationDB's 100,000-byte limit; manifest bodies (up to 4 MiB) are the
only values that can be larger, hence (3)'s parts (the Record Layer's SplitHelper idea).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from fdb.subspace_impl import Subspace

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
        return self.root.pack((REPOSITORY, repo))

    def repositories(self) -> Subspace:
        return self.root.subspace((REPOSITORY,))

    def manifest(self, repo: str, digest: str) -> bytes:
        return self.root.pack((MANIFEST, repo, digest))

    def manifest_part(self, repo: str, digest: str, part: int) -> bytes:
        return self.root.pack((MANIFEST_PART, repo, digest, part))

    def manifest_parts(self, repo: str, digest: str) -> Subspace:
        return self.root.subspace((MANIFEST_PART, repo, digest))

    def tag(self, repo: str, tag: str) -> bytes:
        return self.root.pack((TAG, repo, tag))

    def tags(self, repo: str) -> Subspace:
        return self.root.subspace((TAG, repo))

    def blob_link(self, repo: str, digest: str) -> bytes:
        return self.root.pack((BLOB_LINK, repo, digest))

    def manifest_blob(self, repo: str, manifest: str, blob: str) -> bytes:
        return self.root.pack((MANIFEST_BLOB, repo, manifest, blob))

    def manifest_blobs(self, repo: str, manifest: str) -> Subspace:
        return self.root.subspace((MANIFEST_BLOB, repo, manifest))

    def manifest_child(self, repo: str, manifest: str, child: str) -> bytes:
        return self.root.pack((MANIFEST_CHILD, repo, manifest, child))

    def manifest_children(self, repo: str, manifest: str) -> Subspace:
        return self.root.subspace((MANIFEST_CHILD, repo, manifest))

    def referrer(self, repo: str, subject: str, referrer: str) -> bytes:
        return self.root.pack((REFERRER, repo, subject, referrer))

    def referrers(self, repo: str, subject: str) -> Subspace:
        return self.root.subspace((REFERRER, repo, subject))

    def upload(self, upload_id: str) -> bytes:
        return self.root.pack((UPLOAD, upload_id))

    def blob_refcount(self, digest: str) -> bytes:
        return self.root.pack((BLOB_REFCOUNT, digest))

    def tag_of_manifest(self, repo: str, manifest: str, tag: str) -> bytes:
        return self.root.pack((TAG_OF_MANIFEST, repo, manifest, tag))

    def tags_of_manifest(self, repo: str, manifest: str) -> Subspace:
        return self.root.subspace((TAG_OF_MANIFEST, repo, manifest))

    def parent_of_manifest(self, repo: str, child: str, parent: str) -> bytes:
        return self.root.pack((PARENT_OF_MANIFEST, repo, child, parent))

    def manifest_of_blob(self, repo: str, blob: str, manifest: str) -> bytes:
        return self.root.pack((MANIFEST_OF_BLOB, repo, blob, manifest))

    def manifests_of_blob(self, repo: str, blob: str) -> Subspace:
        return self.root.subspace((MANIFEST_OF_BLOB, repo, blob))
