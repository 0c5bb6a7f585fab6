"""Real container images for the end-to-end tests, built without any registry or network.

Every image is made here from bytes: each layer is a tar of random files (a seeded
`random.Random`, so the same seed gives the same bytes and digests), gzip-compressed with
a fixed timestamp; the config carries the right `rootfs.diff_ids` (sha256 of each
uncompressed tar); the manifest names config and layers by digest and size. Three shapes:

- an OCI image manifest (`build_image(fmt="oci")`),
- a Docker schema 2 manifest with Docker media types (`build_image(fmt="docker")`),
- an OCI image index over one image per platform (`build_index`).

`write_layout` stores an OCI image or index as an OCI image layout (`oci-layout`,
`index.json`, `blobs/sha256/<hex>`) that skopeo and podman read with the `oci:`
transport; `read_layout` reads such a layout back (for instance one skopeo pulled) so a
test can compare digests and bytes. The `oci:` transport of skopeo 1.9 only finds OCI
manifests and indexes in `index.json` ("no descriptor found" for a Docker manifest), so a
Docker schema 2 image is stored with `write_dir` in the `dir:` transport's layout
(`manifest.json`, one file per blob, `version`), which keeps the manifest byte for byte.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REF_NAME = "org.opencontainers.image.ref.name"

# A fixed instant for every timestamp, so that builds are reproducible.
EPOCH = "2024-01-01T00:00:00Z"
EPOCH_SECONDS = 1704067200


def sha256(data: bytes) -> str:
    """The "sha256:<hex>" digest of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Compact JSON with sorted keys: the exact bytes a manifest or config is stored as."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Blob:
    """Bytes with the media type they are referenced under."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        """The blob's content digest."""
        return sha256(self.data)

    @property
    def size(self) -> int:
        """The blob's length in bytes."""
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        """An OCI descriptor of this blob (`extra` adds fields such as `platform`)."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Image:
    """One single-platform image: manifest, config and layers, all as bytes."""

    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]
    platform: dict[str, str]

    @property
    def digest(self) -> str:
        """The manifest digest (what a registry answers as Docker-Content-Digest)."""
        return self.manifest.digest

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Config and layers: what must be uploaded before the manifest."""
        return (self.config, *self.layers)

    @property
    def layer_digests(self) -> list[str]:
        """The compressed layer digests, in manifest order."""
        return [layer.digest for layer in self.layers]


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform image: an OCI index and the images it lists."""

    index: Blob
    images: tuple[Image, ...]

    @property
    def digest(self) -> str:
        """The index digest."""
        return self.index.digest

    @property
    def manifest(self) -> Blob:
        """The index itself (so that `Image` and `ImageIndex` share `.manifest`)."""
        return self.index


@dataclass
class Layout:
    """An OCI image layout read back from disk."""

    path: Path
    # index.json's descriptors, and every blob by digest.
    refs: list[dict[str, Any]] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)

    def ref(self, tag: str) -> dict[str, Any]:
        """The index.json descriptor named `tag` (fails the test if there is none)."""
        for desc in self.refs:
            if desc.get("annotations", {}).get(REF_NAME) == tag:
                return desc
        names = [d.get("annotations", {}).get(REF_NAME) for d in self.refs]
        raise AssertionError(f"no ref {tag!r} in {self.path}/index.json (refs: {names})")

    def json_blob(self, digest: str) -> Any:
        """A JSON blob (manifest, index or config) of this layout, parsed."""
        return json.loads(self.blobs[digest])


def _layer(rng: random.Random, index: int, files: int, file_size: int) -> tuple[bytes, bytes]:
    """One layer as (uncompressed tar, gzip of it): `files` random files in a directory."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo(f"layer{index}")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        directory.mtime = EPOCH_SECONDS
        tar.addfile(directory)
        for n in range(files):
            # Vary the size a little so that layers do not all look alike.
            content = rng.randbytes(file_size + rng.randrange(0, 4096))
            info = tarfile.TarInfo(f"layer{index}/file{n}.bin")
            info.size = len(content)
            info.mode = 0o644
            info.mtime = EPOCH_SECONDS
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return tar_bytes, gzip.compress(tar_bytes, compresslevel=6, mtime=0)


def build_image(
    seed: int,
    *,
    layers: int = 3,
    files_per_layer: int = 3,
    file_size: int = 16 * 1024,
    fmt: Literal["oci", "docker"] = "oci",
    architecture: str = "amd64",
    os: str = "linux",
) -> Image:
    """A single-platform image of `layers` random layers.

    The same arguments always give the same bytes. `fmt="docker"` writes a Docker
    schema 2 manifest with Docker media types for the config and layers; the config
    JSON is the same shape either way (the Docker and OCI configs share it).
    """
    rng = random.Random(seed)
    layer_media = OCI_LAYER_GZIP if fmt == "oci" else DOCKER_LAYER_GZIP
    blobs: list[Blob] = []
    diff_ids: list[str] = []
    for i in range(layers):
        tar_bytes, compressed = _layer(rng, i, files_per_layer, file_size)
        blobs.append(Blob(layer_media, compressed))
        diff_ids.append(sha256(tar_bytes))
    config_doc = {
        "architecture": architecture,
        "os": os,
        "created": EPOCH,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/true"],
            "Labels": {"test.seed": str(seed)},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": EPOCH, "created_by": f"tests/e2e/images.py layer {i}"}
            for i in range(layers)
        ],
    }
    config = Blob(OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG, canonical_json(config_doc))
    manifest_doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST,
        "config": config.descriptor(),
        "layers": [b.descriptor() for b in blobs],
    }
    if fmt == "oci":
        manifest_doc["annotations"] = {"org.opencontainers.image.created": EPOCH}
    manifest = Blob(manifest_doc["mediaType"], canonical_json(manifest_doc))
    return Image(
        manifest=manifest,
        config=config,
        layers=tuple(blobs),
        diff_ids=tuple(diff_ids),
        platform={"architecture": architecture, "os": os},
    )


def build_index(
    seed: int,
    *,
    platforms: tuple[tuple[str, str], ...] = (("linux", "amd64"), ("linux", "arm64")),
    layers: int = 2,
) -> ImageIndex:
    """An OCI image index listing one OCI image per (os, architecture) in `platforms`."""
    images = tuple(
        build_image(seed * 100 + n, layers=layers, os=os_name, architecture=arch)
        for n, (os_name, arch) in enumerate(platforms)
    )
    index_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [img.manifest.descriptor(platform=img.platform) for img in images],
    }
    return ImageIndex(index=Blob(OCI_INDEX, canonical_json(index_doc)), images=images)


def write_layout(path: Path, content: Image | ImageIndex, tag: str = "latest") -> Path:
    """Write `content` as an OCI image layout at `path`, its root named `tag`."""
    assert content.manifest.media_type in {OCI_MANIFEST, OCI_INDEX}, (
        "skopeo's oci: transport reads only OCI manifests and indexes; use write_dir"
    )
    blob_dir = path / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    images = content.images if isinstance(content, ImageIndex) else (content,)
    every: list[Blob] = [content.manifest]
    for img in images:
        every.extend((img.manifest, *img.blobs))
    for blob in every:
        (blob_dir / blob.digest.removeprefix("sha256:")).write_bytes(blob.data)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [content.manifest.descriptor(annotations={REF_NAME: tag})],
    }
    (path / "index.json").write_text(json.dumps(index))
    return path


def read_layout(path: Path) -> Layout:
    """Read an OCI image layout: index.json's descriptors and every blob, verified.

    Fails the test if a blob's bytes do not hash to its file name.
    """
    layout = Layout(path=path)
    layout.refs = json.loads((path / "index.json").read_text())["manifests"]
    for algorithm_dir in (path / "blobs").iterdir():
        for blob_file in algorithm_dir.iterdir():
            data = blob_file.read_bytes()
            actual = hashlib.new(algorithm_dir.name, data).hexdigest()
            assert actual == blob_file.name, f"{blob_file} holds bytes whose hash is {actual}"
            layout.blobs[f"{algorithm_dir.name}:{blob_file.name}"] = data
    return layout


DIR_TRANSPORT_VERSION = "Directory Transport Version: 1.1\n"


def write_dir(path: Path, image: Image) -> Path:
    """Write `image` in the layout of skopeo's `dir:` transport (any manifest type)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_bytes(image.manifest.data)
    for blob in image.blobs:
        (path / blob.digest.removeprefix("sha256:")).write_bytes(blob.data)
    (path / "version").write_text(DIR_TRANSPORT_VERSION)
    return path


def read_dir(path: Path) -> tuple[bytes, dict[str, bytes]]:
    """Read a `dir:` transport directory: the manifest's bytes and every blob by digest.

    Fails the test if a blob's bytes do not hash to its file name.
    """
    manifest = (path / "manifest.json").read_bytes()
    blobs: dict[str, bytes] = {}
    for f in path.iterdir():
        if f.name in {"manifest.json", "version"} or f.name.startswith("signature"):
            continue
        data = f.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        assert actual == f.name, f"{f} holds bytes whose sha256 is {actual}"
        blobs[f"sha256:{f.name}"] = data
    return manifest, blobs
