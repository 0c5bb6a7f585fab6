"""The blob storage layout, declared once.

Every path blob_svc reads or writes under the storage root is built here, one function
per shape::

    <root>/
    ├── blobs/                                  canonical blobs, one copy per digest
    │   └── <algorithm>/                        sha256 | sha512
    │       └── <first 2 hex>/                  fan-out, at most 256 entries per level
    │           └── <hex>/                      the whole hex encoding of the digest
    │               └── data                    the blob's bytes; complete and verified
    │                                           whenever it is visible
    └── uploads/                                upload sessions in progress
        └── <upload id>/                        1-64 characters of [A-Za-z0-9-]
            ├── startedat                       RFC 3339 UTC time the session began; on
            │                                   object storage the session exists
            │                                   exactly when this object does
            ├── data                            local storage: the bytes received so
            │                                   far; the session exists exactly when
            │                                   this file does
            └── parts/                          object storage (no appends): the bytes
                └── <offset>                    received so far as objects, each named
                                                by its first byte's offset (20 digits,
                                                so names sort as offsets do)

`scans/…` (vulnerability reports) shares the root but belongs to scan_svc.

Paths are pyarrow.fs paths: '/'-separated and relative to nothing, so `root` is whatever
`pyarrow.fs.FileSystem.from_uri` returned for the storage URL (a local directory, or
`bucket/prefix` on object storage). Arguments must already be validated: upload ids by
`check_upload_id`, digests by `Digest.parse`; nothing here trusts its input to be a single
path component otherwise.
"""

from __future__ import annotations

import re

from artifactstore.digests import Digest
from artifactstore.errors import Reason, RegistryError

BLOBS = "blobs"
UPLOADS = "uploads"
DATA = "data"
STARTED_AT = "startedat"
PARTS = "parts"
_OFFSET_DIGITS = 20

_UPLOAD_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


def check_upload_id(upload_id: str) -> str:
    """Return `upload_id` if it is 1-64 characters of [A-Za-z0-9-] (so it is safe as one
    path component); raise BLOB_UPLOAD_INVALID otherwise."""
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise RegistryError(
            Reason.BLOB_UPLOAD_INVALID,
            f"invalid upload id {upload_id[:80]!r}: expected 1-64 characters of [A-Za-z0-9-]",
        )
    return upload_id


def _join(*parts: str) -> str:
    return "/".join(parts)


def blobs_root(root: str) -> str:
    """`<root>/blobs`: every canonical blob lives below it."""
    return _join(root, BLOBS)


def blob_algorithm_dir(root: str, algorithm: str) -> str:
    """`<root>/blobs/<algorithm>`."""
    return _join(root, BLOBS, algorithm)


def blob_prefix_dir(root: str, digest: Digest) -> str:
    """`<root>/blobs/<algorithm>/<first 2 hex>`: the fan-out directory of `digest`."""
    return _join(root, BLOBS, digest.algorithm, digest.hex[:2])


def blob_dir(root: str, digest: Digest) -> str:
    """`<root>/blobs/<algorithm>/<first 2 hex>/<hex>`: the directory of one blob."""
    return _join(blob_prefix_dir(root, digest), digest.hex)


def blob_data(root: str, digest: Digest) -> str:
    """`<root>/blobs/<algorithm>/<first 2 hex>/<hex>/data`: a canonical blob's bytes."""
    return _join(blob_dir(root, digest), DATA)


def uploads_root(root: str) -> str:
    """`<root>/uploads`: every upload session lives below it."""
    return _join(root, UPLOADS)


def upload_dir(root: str, upload_id: str) -> str:
    """`<root>/uploads/<id>`: everything one session owns; removing it ends the session."""
    return _join(root, UPLOADS, upload_id)


def upload_data(root: str, upload_id: str) -> str:
    """`<root>/uploads/<id>/data`: the bytes received so far."""
    return _join(upload_dir(root, upload_id), DATA)


def upload_started_at(root: str, upload_id: str) -> str:
    """`<root>/uploads/<id>/startedat`: when the session began (for GC of sessions that
    metadata_svc no longer knows)."""
    return _join(upload_dir(root, upload_id), STARTED_AT)


def upload_parts_dir(root: str, upload_id: str) -> str:
    """`<root>/uploads/<id>/parts`: a session's part objects (object storage)."""
    return _join(upload_dir(root, upload_id), PARTS)


def upload_part(root: str, upload_id: str, offset: int) -> str:
    """`<root>/uploads/<id>/parts/<offset>`: the part object whose first byte is byte
    `offset` of the session."""
    return _join(upload_parts_dir(root, upload_id), f"{offset:0{_OFFSET_DIGITS}d}")


def part_offset(name: str) -> int | None:
    """The offset a part object's base name stands for, or None if it names no part."""
    if len(name) != _OFFSET_DIGITS or not (name.isascii() and name.isdigit()):
        return None
    return int(name)
