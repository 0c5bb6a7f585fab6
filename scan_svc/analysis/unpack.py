"""Build an image's root filesystem from its layers, safely, in a scratch directory.

Layers are applied in order with OCI whiteouts (image-spec `layer.md`): `.wh.<name>` deletes
`<name>` from the lower layers, `.wh..wh..opq` hides every lower entry of its directory.
Whiteouts only hide what lower layers put there: entries of the same layer survive whatever
order the tar lists them in.

What is extracted. Only the files the caller's selector wants (for the inventory: package
databases, os-release, language package metadata, executables that are ELF files) are
written; every other regular file is read past. Whiteouts and replacements still apply to
what was extracted, because they are applied to the tree on disk: an unwanted file or a
directory that replaces a wanted file removes it, and a whiteout of a directory removes the
wanted files under it. Symbolic links are never created on disk; they are kept in a table
and every path is resolved through that table by this module, so the scratch directory only
ever holds plain directories and regular files and no later reader can be led out of it.

Safety rules (each one is a test):
* entry names with a `..` component or an absolute path are skipped;
* a symlink whose target would resolve above the root is skipped; a path that would resolve
  outside through the table (a chain of links) is skipped;
* a hard link whose target is outside, or was not extracted, is skipped;
* device files, FIFOs and other special files are skipped;
* files are created with O_EXCL | O_NOFOLLOW under directories this module made;
* limits: decompressed bytes of all layers together, the declared size of any one entry,
  the number of entries. Exceeding one stops the unpack with AnalysisError at once, so a
  gzip bomb costs no more than the limit.

Every skipped entry is recorded with its layer and the reason (`RootFS.skipped`). Layers are
plain tar, gzip or zstd (detected from the first bytes; zstd needs the `zstandard` package).
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from .errors import AnalysisError

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ELF_MAGIC = b"\x7fELF"
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_MAX_SYMLINK_HOPS = 40  # Linux's MAXSYMLINKS
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Bounds on what one image may make the unpacker do."""

    max_total_bytes: int = 32 << 30
    """Decompressed tar bytes of all layers together (headers included)."""
    max_file_bytes: int = 4 << 30
    """Declared size of any one tar entry, extracted or not."""
    max_entries: int = 2_000_000
    """Tar entries of all layers together."""


@dataclass(frozen=True)
class Layer:
    """One layer blob: a file path or a binary file object, and its digest.

    When `digest` is empty the unpacker computes the sha256 of the blob's bytes as read
    (the digest a registry knows the layer by); a given digest is trusted, not verified (the
    registry verified it on push). A file object is read, not closed.
    """

    source: str | os.PathLike[str] | BinaryIO
    digest: str = ""


class Want(enum.Enum):
    """What a selector says about one regular file."""

    SKIP = "skip"
    EXTRACT = "extract"
    EXTRACT_IF_ELF = "extract-if-elf"


Selector = Callable[[str, tarfile.TarInfo], Want]
"""Decides from the image-relative canonical path (no leading `/`) and the tar header."""


@dataclass(frozen=True)
class Skipped:
    """A tar entry that was not applied, and why."""

    layer: str
    name: str
    reason: str


@dataclass
class RootFS:
    """The unpacked root: extracted files on disk under `root`, symlinks in a table.

    Paths are image-relative without a leading `/`. Files are looked up through the symlink
    table with `resolve`, which never leaves the root.
    """

    root: Path
    layers: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)
    """Extracted regular file → digest of the layer that last wrote it."""
    symlinks: dict[str, str] = field(default_factory=dict)
    """Symlink path → its target text, as the layers left them."""
    skipped: list[Skipped] = field(default_factory=list)

    def resolve(self, path: str) -> str | None:
        """The canonical path of `path` after following symlinks (absolute targets are
        relative to the image root); None when it would leave the root or loops."""
        try:
            return "/".join(_resolve(self.symlinks, _split(path), follow_last=True))
        except _Unresolvable:
            return None

    def files(self) -> list[str]:
        """Every extracted regular file, sorted."""
        return sorted(self.origin)

    def disk_path(self, path: str) -> Path | None:
        """The on-disk location of an extracted file (after resolution), or None."""
        real = self.resolve(path)
        if real is None or real not in self.origin:
            return None
        return self.root.joinpath(*real.split("/"))

    def read_bytes(self, path: str) -> bytes | None:
        """The content of an extracted file, or None when it is not there."""
        disk = self.disk_path(path)
        return disk.read_bytes() if disk is not None else None

    def layer_of(self, path: str) -> str:
        """The digest of the layer an extracted file came from ("" when not extracted)."""
        real = self.resolve(path)
        return self.origin.get(real, "") if real is not None else ""


class _Unresolvable(Exception):
    """A path that leaves the root or loops; internal to this module."""


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def _resolve(symlinks: dict[str, str], parts: list[str], follow_last: bool) -> list[str]:
    """Resolve `parts` component by component inside the root through the symlink table.

    `..` pops a resolved component; popping above the root raises _Unresolvable (a layer
    that tries is hostile, not clamped). More than 40 link hops raise too (a loop).
    """
    resolved: list[str] = []
    pending = list(parts)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                raise _Unresolvable("escapes the root")
            resolved.pop()
            continue
        candidate = "/".join([*resolved, part])
        target = symlinks.get(candidate)
        if target is None or (not pending and not follow_last):
            resolved.append(part)
            continue
        hops += 1
        if hops > _MAX_SYMLINK_HOPS:
            raise _Unresolvable("too many levels of symbolic links")
        if target.startswith("/"):
            resolved = []
        pending = target.split("/") + pending
    return resolved


def _clean_name(name: str) -> list[str]:
    """The components of a tar entry name; raises ValueError for an absolute name or one
    with a `..` component."""
    if name.startswith("/"):
        raise ValueError("absolute path")
    parts = _split(name)
    if ".." in parts:
        raise ValueError("path with a '..' component")
    return parts


class _Reader:
    """A read()-only stream over `head` then `raw`, optionally hashing and counting.

    Hashing sees the compressed blob (the layer digest); counting wraps the decompressed
    stream elsewhere."""

    def __init__(self, raw: IO[bytes], head: bytes, digest: Any | None) -> None:
        self._raw = raw
        self._head = head
        self._digest = digest

    def read(self, size: int = -1) -> bytes:
        if self._head:
            # The head was hashed when it was read; hand it out first (a short read).
            n = len(self._head) if size < 0 or size >= len(self._head) else size
            data, self._head = self._head[:n], self._head[n:]
            return data
        data = self._raw.read(size)
        if self._digest is not None:
            self._digest.update(data)
        return data

    def drain(self) -> None:
        """Read the rest of the blob so the digest covers all of it."""
        while self.read(_CHUNK):
            pass


class _Budget:
    """The image-wide counters behind Limits."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.total_bytes = 0
        self.entries = 0


class _Counted:
    """Counts decompressed bytes against the budget and stops the moment it is exceeded."""

    def __init__(self, inner: Any, budget: _Budget, label: str) -> None:
        self._inner = inner
        self._budget = budget
        self._label = label

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._inner.read(size)
        self._budget.total_bytes += len(data)
        if self._budget.total_bytes > self._budget.limits.max_total_bytes:
            raise AnalysisError(
                f"{self._label}: uncompressed image content exceeds the limit of "
                f"{self._budget.limits.max_total_bytes} bytes (decompression bomb?)"
            )
        return data


def _decompressor(reader: _Reader, head: bytes, label: str) -> Any:
    if head.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=cast(IO[bytes], reader), mode="rb")
    if head.startswith(_ZSTD_MAGIC):
        try:
            import zstandard
        except ImportError:
            raise AnalysisError(
                f"{label}: zstd-compressed layer, and the zstandard package is not installed"
            ) from None
        return zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], reader), read_across_frames=True
        )
    return reader


def _open_tar(stream: _Counted, label: str) -> tarfile.TarFile:
    """Open a tar stream for sequential reading; AnalysisError when it is not a tar."""
    try:
        return tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|")
    except tarfile.ReadError as exc:
        raise AnalysisError(f"{label}: not a tar archive ({exc})") from exc


class _Unpacker:
    def __init__(self, root: Path, select: Selector, limits: Limits) -> None:
        self.fs = RootFS(root=root)
        self.select = select
        self.budget = _Budget(limits)
        # Paths (and their ancestors) this layer put on disk or in the symlink table:
        # whiteouts of the same layer must not remove them.
        self.current: set[str] = set()
        # Every directory above an extracted file or a symlink ever recorded. The disk holds
        # nothing but `origin`'s files and these directories, so a path in neither has
        # nothing to remove: most entries of a layer cost no system call and no table scan.
        # Entries may be stale (their tree was removed since); that only costs a check.
        self.containers: set[str] = set()
        self.digest = ""

    # -- on-disk helpers ----------------------------------------------------------------

    def _disk(self, parts: list[str]) -> Path:
        return self.fs.root.joinpath(*parts)

    def _mark_current(self, parts: list[str]) -> None:
        for i in range(1, len(parts) + 1):
            self.current.add("/".join(parts[:i]))

    def _track(self, parts: list[str]) -> None:
        for i in range(1, len(parts)):
            self.containers.add("/".join(parts[:i]))

    def _under(self, table: dict[str, str], path: str) -> list[str]:
        """Keys of `table` strictly below `path` ("" is the root)."""
        if path and path not in self.containers:
            return []
        prefix = path + "/" if path else ""
        return [k for k in table if k.startswith(prefix)]

    def _remove(self, parts: list[str]) -> None:
        """Remove whatever is at `parts`: on disk (file or tree) and in the tables."""
        path = "/".join(parts)
        if path in self.fs.origin:
            self._disk(parts).unlink(missing_ok=True)
            del self.fs.origin[path]
        elif path in self.containers:
            disk = self._disk(parts)
            if disk.is_dir():
                shutil.rmtree(disk)
        self.fs.symlinks.pop(path, None)
        for table in (self.fs.symlinks, self.fs.origin):
            for key in self._under(table, path):
                del table[key]

    def _remove_lower(self, parts: list[str]) -> None:
        """Whiteout semantics: remove what lower layers left at `parts`, keep this layer's."""
        path = "/".join(parts)
        if path not in self.current:
            self._remove(parts)
            return
        self._remove_lower_children(parts)

    def _remove_lower_children(self, parts: list[str]) -> None:
        """Apply `_remove_lower` to everything below the directory `parts`."""
        path = "/".join(parts)
        if path and path not in self.containers:
            return
        disk = self._disk(parts)
        if disk.is_dir():
            for child in sorted(os.listdir(disk)):
                self._remove_lower([*parts, child])
        for key in self._under(self.fs.symlinks, path):
            if key not in self.current:
                del self.fs.symlinks[key]

    def _make_parents(self, parts: list[str]) -> None:
        """Create the directories above `parts`, replacing files that stand in the way.
        No symlink exists on disk, so creating an existing directory again is harmless."""
        for i in range(1, len(parts)):
            prefix = parts[:i]
            if "/".join(prefix) in self.fs.origin:
                self._remove(prefix)
            self._disk(prefix).mkdir(mode=0o755, exist_ok=True)
            self.containers.add("/".join(prefix))

    def _write(self, parts: list[str], chunks: Iterable[bytes]) -> None:
        self._remove(parts)
        self._make_parents(parts)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self._disk(parts), flags, 0o644)
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        self.fs.origin["/".join(parts)] = self.digest
        self._mark_current(parts)

    # -- entries ----------------------------------------------------------------------------

    def _skip(self, name: str, reason: str) -> None:
        self.fs.skipped.append(Skipped(self.digest, name, reason))

    def _real(self, parts: list[str]) -> list[str]:
        """Resolve the parent directories of `parts` through the symlink table; the last
        component is the entry itself and is not followed (tar semantics)."""
        return [*_resolve(self.fs.symlinks, parts[:-1], follow_last=True), parts[-1]]

    def apply(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        try:
            parts = _clean_name(member.name)
        except ValueError as exc:
            self._skip(member.name, str(exc))
            return
        if not parts:
            return  # the root directory itself
        base = parts[-1]
        try:
            if base == _OPAQUE:
                self._opaque(parts[:-1])
            elif base.startswith(_WHITEOUT + _WHITEOUT):
                self._skip(member.name, "unknown whiteout metadata")
            elif base.startswith(_WHITEOUT):
                real = self._real([*parts[:-1], base[len(_WHITEOUT) :]])
                self._remove_lower(real)
            elif member.isdir():
                self._directory(self._real(parts))
            elif member.issym():
                self._symlink(member, self._real(parts))
            elif member.islnk():
                self._hardlink(member, self._real(parts))
            elif member.isreg():
                self._regular(tar, member, self._real(parts))
            else:
                self._skip(member.name, "device file, FIFO or other special file")
        except _Unresolvable as exc:
            self._skip(member.name, f"resolves outside the root ({exc})")

    def _opaque(self, dir_parts: list[str]) -> None:
        real = _resolve(self.fs.symlinks, dir_parts, follow_last=True)
        self._remove_lower_children(real)
        self._mark_current(real)

    def _directory(self, real: list[str]) -> None:
        path = "/".join(real)
        if path in self.fs.symlinks or path in self.fs.origin:
            self._remove(real)
        self._mark_current(real)

    def _symlink(self, member: tarfile.TarInfo, real: list[str]) -> None:
        target = member.linkname
        # The target is resolved from the link's directory; it must stay inside the root.
        start = [] if target.startswith("/") else real[:-1]
        try:
            _resolve(self.fs.symlinks, [*start, *target.split("/")], follow_last=True)
        except _Unresolvable as exc:
            if "escapes" in str(exc):
                self._skip(member.name, f"symlink target {target!r} is outside the root")
                return
            # A loop today may be broken by a later layer; keep the link like tar would.
        self._remove(real)
        self.fs.symlinks["/".join(real)] = target
        self._track(real)
        self._mark_current(real)

    def _hardlink(self, member: tarfile.TarInfo, real: list[str]) -> None:
        try:
            target_parts = _clean_name(member.linkname)
        except ValueError as exc:
            self._skip(member.name, f"hard link target {member.linkname!r}: {exc}")
            return
        if not target_parts:
            self._skip(member.name, "hard link to the root directory")
            return
        target = [*_resolve(self.fs.symlinks, target_parts[:-1], follow_last=True)]
        target.append(target_parts[-1])
        target_path = "/".join(target)
        if target_path in self.fs.symlinks:
            self._remove(real)
            self.fs.symlinks["/".join(real)] = self.fs.symlinks[target_path]
            self._track(real)
            self._mark_current(real)
            return
        if target_path not in self.fs.origin:
            self._remove(real)
            if self.select("/".join(real), member) is not Want.SKIP:
                self._skip(member.name, f"hard link target {member.linkname!r} was not extracted")
            return
        source = self._disk(target)
        self._remove(real)
        self._make_parents(real)
        os.link(source, self._disk(real), follow_symlinks=False)
        self.fs.origin["/".join(real)] = self.digest
        self._mark_current(real)

    def _regular(self, tar: tarfile.TarFile, member: tarfile.TarInfo, real: list[str]) -> None:
        want = self.select("/".join(real), member)
        if want is Want.SKIP:
            # Not extracted, but it still replaces whatever a lower layer had there.
            self._remove(real)
            return
        stream = tar.extractfile(member)
        if stream is None:
            self._remove(real)
            return
        head = stream.read(len(_ELF_MAGIC))
        if want is Want.EXTRACT_IF_ELF and head != _ELF_MAGIC:
            self._remove(real)
            return

        def chunks() -> Iterator[bytes]:
            yield head
            while chunk := stream.read(_CHUNK):
                yield chunk

        self._write(real, chunks())

    # -- layers -----------------------------------------------------------------------------

    def unpack_layer(self, index: int, layer: Layer) -> None:
        label = f"layer {index}" + (f" ({layer.digest})" if layer.digest else "")
        own = not hasattr(layer.source, "read")
        try:
            raw: IO[bytes] = (
                open(layer.source, "rb")  # type: ignore[arg-type]  # noqa: SIM115
                if own
                else layer.source  # type: ignore[assignment]
            )
        except OSError as exc:
            raise AnalysisError(f"{label}: cannot open: {exc.strerror}") from exc
        try:
            hasher = None if layer.digest else hashlib.sha256()
            head = raw.read(len(_ZSTD_MAGIC))
            if hasher is not None:
                hasher.update(head)
            reader = _Reader(raw, head, hasher)
            stream = _Counted(_decompressor(reader, head, label), self.budget, label)
            self.digest = layer.digest or f"pending:{index}"
            self.current = set()
            with _open_tar(stream, label) as tar:
                while (member := tar.next()) is not None:
                    # Stream mode keeps every header read in `members`; a private list, but
                    # without emptying it a million-entry layer holds a million headers.
                    cast(Any, tar).members = []
                    self.budget.entries += 1
                    if self.budget.entries > self.budget.limits.max_entries:
                        raise AnalysisError(
                            f"{label}: more than {self.budget.limits.max_entries} entries"
                        )
                    if member.size > self.budget.limits.max_file_bytes:
                        raise AnalysisError(
                            f"{label}: entry {member.name!r} declares {member.size} bytes, "
                            f"over the limit of {self.budget.limits.max_file_bytes}"
                        )
                    self.apply(tar, member)
            if hasher is not None:
                reader.drain()
                self._rename_pending(f"pending:{index}", f"sha256:{hasher.hexdigest()}")
            self.fs.layers.append(self.digest)
        except AnalysisError:
            raise
        except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as exc:
            raise AnalysisError(f"{label}: corrupt or unreadable layer: {exc}") from exc
        except Exception as exc:
            # zstandard raises its own ZstdError; anything else from decoding is corruption.
            if type(exc).__module__.startswith("zstandard"):
                raise AnalysisError(f"{label}: corrupt zstd stream: {exc}") from exc
            raise
        finally:
            if own:
                raw.close()

    def _rename_pending(self, pending: str, digest: str) -> None:
        self.digest = digest
        for path, origin in self.fs.origin.items():
            if origin == pending:
                self.fs.origin[path] = digest
        for i, skipped in enumerate(self.fs.skipped):
            if skipped.layer == pending:
                self.fs.skipped[i] = Skipped(digest, skipped.name, skipped.reason)


def unpack(
    layers: Iterable[Layer],
    scratch: str | os.PathLike[str],
    select: Selector,
    limits: Limits | None = None,
) -> RootFS:
    """Apply `layers` in order into the empty directory `scratch` and return the root.

    Only regular files that `select` wants are written; see the module docstring for the
    whiteout semantics, the safety rules and the limits. Raises AnalysisError for a layer
    that is not a (gzip/zstd) tar, a corrupt stream, an exceeded limit, or a scratch
    directory that is not empty. Nothing is ever written outside `scratch`.
    """
    root = Path(scratch)
    if not root.is_dir() or any(root.iterdir()):
        raise AnalysisError(f"scratch directory {root} must exist and be empty")
    unpacker = _Unpacker(root, select, limits or Limits())
    for index, layer in enumerate(layers, start=1):
        unpacker.unpack_layer(index, layer)
    return unpacker.fs


def is_executable(member: tarfile.TarInfo) -> bool:
    """True for a regular file with any execute bit."""
    return member.isreg() and bool(member.mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
