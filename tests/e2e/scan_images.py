"""Images for the scanning tests, built from bytes like those of `tests.e2e.images`, but
with the content a vulnerability scanner looks at: an OS release, a dpkg database, Python
package metadata; and hostile layers (not a tar, a decompression bomb, `..` and absolute
entries, links out of the root, a corrupt dpkg database).

The findings a scan of them must give are computed here without the analyzer: with the
independent expectation of the analyzer's own headline test (the real `dpkg
--compare-versions`, `packaging`, OSV ranges read pairwise).
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from tests.e2e.images import (
    EPOCH,
    EPOCH_SECONDS,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Blob,
    Image,
    ImageIndex,
    canonical_json,
    sha256,
)
from tests.unit.scan.test_headline import _dpkg_lt, _expected, _python_rows, _records

STATUS_PATH = "var/lib/dpkg/status"
OS_RELEASE = (
    'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
    'VERSION_ID="12"\nVERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'
)

# (id, package, file path, installed version, fixed version) of one finding.
Key = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class Entry:
    """One tar entry: kind is file, dir, symlink or hardlink."""

    name: str
    data: bytes = b""
    kind: str = "file"
    link: str = ""


def tar_of(entries: Iterable[Entry]) -> bytes:
    """An uncompressed tar of `entries`, in order, with fixed timestamps."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mtime = EPOCH_SECONDS
            info.mode = 0o644
            if entry.kind == "file":
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
            }[entry.kind]
            info.mode = 0o755 if entry.kind == "dir" else 0o777
            info.linkname = entry.link
            tar.addfile(info)
    return out.getvalue()


def image_of(
    layers: list[tuple[bytes, bytes]], *, architecture: str = "amd64", os: str = "linux"
) -> Image:
    """An OCI image of `layers`, each (uncompressed tar, the layer blob as pushed)."""
    blobs = tuple(Blob(OCI_LAYER_GZIP, blob) for _, blob in layers)
    diff_ids = tuple(sha256(raw) for raw, _ in layers)
    config = Blob(
        OCI_CONFIG,
        canonical_json(
            {
                "architecture": architecture,
                "os": os,
                "created": EPOCH,
                "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
                "config": {},
            }
        ),
    )
    manifest = Blob(
        OCI_MANIFEST,
        canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [b.descriptor() for b in blobs],
            }
        ),
    )
    return Image(manifest, config, blobs, diff_ids, {"architecture": architecture, "os": os})


def gz_layer(entries: Iterable[Entry]) -> tuple[bytes, bytes]:
    """A gzip-compressed tar layer of `entries`."""
    raw = tar_of(entries)
    return raw, gzip.compress(raw, compresslevel=1, mtime=0)


def attestation_of(image: Image) -> Image:
    """A build attestation of `image` as BuildKit puts it in an index: an image manifest
    whose layer is in-toto JSON (not a tar), listed under the platform unknown/unknown."""
    statement = Blob("application/vnd.in-toto+json", canonical_json({"subject": image.digest}))
    config = Blob(OCI_CONFIG, canonical_json({"architecture": "unknown", "os": "unknown"}))
    manifest = Blob(
        OCI_MANIFEST,
        canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [statement.descriptor()],
            }
        ),
    )
    platform = {"architecture": "unknown", "os": "unknown"}
    return Image(manifest, config, (statement,), (), platform)


def artifact() -> Image:
    """An OCI artifact (artifactType, empty config, a text layer): not a container image."""
    config = Blob("application/vnd.oci.empty.v1+json", b"{}")
    note = Blob("text/plain", b"release notes\n")
    manifest = Blob(
        OCI_MANIFEST,
        canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/vnd.example.notes",
                "config": config.descriptor(),
                "layers": [note.descriptor()],
            }
        ),
    )
    return Image(manifest, config, (note,), (), {})


def index_of(images: list[Image]) -> ImageIndex:
    """An OCI index of `images`, each under the platform it was built for."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [i.manifest.descriptor(platform=i.platform) for i in images],
    }
    return ImageIndex(Blob(OCI_INDEX, canonical_json(doc)), tuple(images))


# -- the vulnerable image -------------------------------------------------------------------


def os_layer(status: bytes) -> tuple[bytes, bytes]:
    """Debian 12: os-release (through the usual symlink) and the dpkg database `status`."""
    return gz_layer(
        [
            Entry("usr/lib/os-release", OS_RELEASE.encode()),
            Entry("etc/os-release", kind="symlink", link="../usr/lib/os-release"),
            Entry(STATUS_PATH, status),
        ]
    )


def python_layer() -> tuple[bytes, bytes]:
    """The collection machine's 71 Python distributions (names, versions and metadata
    paths of `python-dist-packages.tsv`), with no dpkg file list owning them: a
    site-packages of known versions that a default scan reports."""
    return gz_layer(
        Entry(
            row["path"],
            f"Metadata-Version: 2.1\nName: {row['name']}\nVersion: {row['version']}\n".encode(),
        )
        for row in _python_rows()
    )


def vulnerable_image(status: bytes, *, architecture: str = "amd64") -> Image:
    """The OS layer over `status`, then the Python layer."""
    return image_of([os_layer(status), python_layer()], architecture=architecture)


def expected_findings(status: bytes) -> set[Key]:
    """The findings a scan of `vulnerable_image(status)` must give, computed without the
    analyzer: Debian advisories against each installed binary package's source version
    (the real `dpkg --compare-versions`), PyPI advisories as the headline test reads them
    (its packages are not owned by dpkg here, so a default scan keeps them)."""
    stanzas = []
    for stanza in status.decode().strip().split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", stanza, re.M))
        if "install ok installed" not in fields.get("Status", ""):
            continue
        source = str(fields.get("Source", fields["Package"]))
        m = re.fullmatch(r"(\S+) \((.+)\)", source)
        name, version = (m[1], m[2]) if m else (source, fields["Version"])
        stanzas.append((fields["Package"], fields["Version"], name, version))
    found: set[Key] = set()
    for record in _records():
        for affected in record.get("affected", []):
            if affected["package"]["ecosystem"] != "Debian:12":
                continue
            (events,) = [r["events"] for r in affected["ranges"] if r["type"] != "GIT"]
            fixed = next((e["fixed"] for e in events if "fixed" in e), "")
            for binary, installed, source, source_version in stanzas:
                if source == affected["package"]["name"] and (
                    not fixed or _dpkg_lt(source_version, fixed)
                ):
                    found.add((record["id"], binary, STATUS_PATH, installed, fixed))
    fixes = _pypi_fixes()
    for vid, package, path, installed in _expected(comprehensive=True)["PyPI"]:
        found.add((vid, package, path, installed, fixes[(vid, package, installed)]))
    return found


def _pypi_fixes() -> dict[tuple[str, str, str], str]:
    """The lowest fixed version above each installed version, per PyPI advisory."""
    from packaging.version import InvalidVersion, Version

    fixes: dict[tuple[str, str, str], str] = {}
    for record in _records():
        for affected in record.get("affected", []):
            if affected["package"]["ecosystem"] != "PyPI":
                continue
            fixed = [
                e["fixed"]
                for r in affected.get("ranges", [])
                if r["type"] != "GIT"
                for e in r["events"]
                if "fixed" in e
            ]
            for row in _python_rows():
                if (
                    re.sub(r"[-_.]+", "-", row["name"]).lower()
                    != re.sub(r"[-_.]+", "-", affected["package"]["name"]).lower()
                ):
                    continue
                above = []
                for f in fixed:
                    try:
                        if Version(f) > Version(row["version"]):
                            above.append(Version(f))
                    except InvalidVersion:
                        continue
                fixes[(record["id"], row["name"], row["version"])] = (
                    str(min(above)) if above else ""
                )
    return fixes


# -- hostile layers -------------------------------------------------------------------------


def not_a_tar() -> tuple[bytes, bytes]:
    """Gzip of bytes that are not a tar archive."""
    raw = b"this is not a tar archive\n" * 100
    return raw, gzip.compress(raw, mtime=0)


def gzip_bomb(decompressed_bytes: int) -> tuple[bytes, bytes]:
    """A gzip layer that inflates to `decompressed_bytes` of zeros in 64 MiB tar entries
    (each under the per-entry limit, together over the image limit). Built as concatenated
    gzip members, each compressed once and repeated, so it costs nothing to make; only
    the compressed form is returned (the uncompressed one would be the bomb)."""
    piece = 64 << 20
    zeros = zlib.compressobj(9, zlib.DEFLATED, 31)
    member = zeros.compress(bytes(piece)) + zeros.flush()
    parts = []
    for n in range(decompressed_bytes // piece):
        info = tarfile.TarInfo(f"bomb/{n}.bin")
        info.size = piece
        parts.append(gzip.compress(info.tobuf(format=tarfile.PAX_FORMAT), mtime=0))
        parts.append(member)
    parts.append(gzip.compress(bytes(1024), mtime=0))
    return b"", b"".join(parts)


def escaping_layer(kind: str, target: str) -> tuple[bytes, bytes]:
    """A tar whose entries try to write `target` (an absolute path outside any scratch
    space): `dotdot` climbs with `..`, `absolute` names it, `symlink` plants a link to its
    folder and writes through it."""
    folder, _, name = target.rpartition("/")
    if kind == "dotdot":
        entries = [Entry("../" * 12 + target.lstrip("/"), b"escaped")]
    elif kind == "absolute":
        entries = [Entry(target, b"escaped")]
    elif kind == "symlink":
        entries = [
            Entry("etc/escape", kind="symlink", link="../" * 12 + folder.lstrip("/")),
            Entry(f"etc/escape/{name}", b"escaped"),
        ]
    else:
        raise ValueError(kind)
    return gz_layer([Entry("usr/lib/os-release", OS_RELEASE.encode()), *entries])


def corrupt_status_layer() -> tuple[bytes, bytes]:
    """Debian 12 whose dpkg status is not a dpkg database."""
    return os_layer(
        b"Package: a\nVersion: 1\nStatus: install ok installed\n garbage?\nnot a field\n"
    )
