"""The bytes the benchmark pushes: blobs cut from one pool of random bytes, small OCI
manifests, and an OCI image layout for skopeo — all built here, without a registry.

Random bytes cost more to make (about 200 MiB/s here) than registries take to store, so
the pool is made once; a blob is a copy of part of it with a unique nonce at its start,
which gives it a digest of its own. Layers are gzip streams of stored (level 0) deflate
blocks: valid gzip that skopeo copies as it is, without the client spending the run
compressing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import BenchError

MIB = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
EPOCH_SECONDS = 1704067200
NONCE_BYTES = 32


def sha256(data: bytes | bytearray | memoryview) -> str:
    """The `sha256:<hex>` digest of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Compact JSON with sorted keys."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class Pool:
    """`size` random bytes (seeded: the same every run), made once."""

    def __init__(self, size: int, seed: int = 8) -> None:
        rng = random.Random(seed)
        self.data = b"".join(rng.randbytes(MIB) for _ in range(size // MIB))

    def blob(self, size: int, nonce: str, offset: int = 0) -> bytes:
        """`size` pool bytes from `offset`, the first of them replaced by `nonce` (so each
        nonce gives a distinct digest)."""
        if offset + size > len(self.data):
            raise ValueError(f"the pool holds {len(self.data)} bytes, not {offset + size}")
        stamp = nonce.encode()[:NONCE_BYTES].ljust(NONCE_BYTES, b"\0")[:size]
        return stamp + self.data[offset + len(stamp) : offset + size]


@dataclass(frozen=True)
class Blob:
    """Bytes and their descriptor."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        """The content digest."""
        return sha256(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        """An OCI descriptor of this blob."""
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


def config_blob(label: str, diff_ids: list[str]) -> Blob:
    """An image config for linux/amd64 with the given layers' diff ids."""
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"bench": label}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return Blob(OCI_CONFIG, canonical_json(doc))


def manifest(config: Blob, layers: list[dict[str, Any]], label: str) -> Blob:
    """A small OCI image manifest over `config` and layer descriptors, made distinct by
    an annotation `label`."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layers,
        "annotations": {"bench.label": label},
    }
    return Blob(OCI_MANIFEST, canonical_json(doc))


def _layer(content: bytes | bytearray, index: int) -> tuple[Blob, str]:
    """A gzip (stored blocks) layer holding one file; the blob and its diff id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"layer{index}/data.bin")
        info.size = len(content)
        info.mode = 0o644
        info.mtime = EPOCH_SECONDS
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    compressed = gzip.compress(tar_bytes, compresslevel=0, mtime=0)
    return Blob(OCI_LAYER_GZIP, compressed), sha256(tar_bytes)


@dataclass(frozen=True)
class Layout:
    """An OCI image layout on disk: its path, tag, manifest digest and blob sizes."""

    path: Path
    tag: str
    digest: str
    blobs: dict[str, int]


def write_layout(path: Path, pool: Pool, nonce: str, layers: int, total: int) -> Layout:
    """Write an image of `layers` layers of `total` bytes in all (content cut from
    `pool`, unique by `nonce`) as an OCI image layout tagged `latest`."""
    blob_dir = path / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    each = total // layers
    blobs: list[Blob] = []
    diff_ids: list[str] = []
    for i in range(layers):
        layer, diff_id = _layer(pool.blob(each, f"{nonce}/{i}", offset=i * each), i)
        blobs.append(layer)
        diff_ids.append(diff_id)
    config = config_blob(nonce, diff_ids)
    image = manifest(config, [b.descriptor() for b in blobs], nonce)
    sizes: dict[str, int] = {}
    for blob in (*blobs, config, image):
        (blob_dir / blob.digest.removeprefix("sha256:")).write_bytes(blob.data)
        sizes[blob.digest] = len(blob.data)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [image.descriptor(annotations={REF_NAME: "latest"})],
    }
    (path / "index.json").write_text(json.dumps(index))
    return Layout(path=path, tag="latest", digest=image.digest, blobs=sizes)


def check_layout(path: Path, expected: Layout) -> None:
    """Check that the layout at `path` holds the image `expected` describes: the same
    manifest digest under its tag, and every blob with bytes that hash to its name."""
    index = json.loads((path / "index.json").read_text())
    digests = [
        m["digest"]
        for m in index["manifests"]
        if m.get("annotations", {}).get(REF_NAME) == expected.tag
    ]
    if digests != [expected.digest]:
        raise BenchError(f"{path}: tag {expected.tag} is {digests}, not {expected.digest}")
    for digest, size in expected.blobs.items():
        data = (path / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
        if len(data) != size or sha256(data) != digest:
            raise BenchError(f"{path}: blob {digest} has other bytes than were pushed")
