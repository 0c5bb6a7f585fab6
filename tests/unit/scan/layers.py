"""Builders for test layers: tar blobs made with tarfile, and minimal Go ELF executables."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

from scan_svc.analysis.gobinary import encode_buildinfo

DATA = Path(__file__).resolve().parents[2] / "data" / "vulndata"


@dataclass(frozen=True)
class E:
    """One tar entry: kind is file, dir, symlink, hardlink, fifo or chr."""

    kind: str
    name: str
    data: bytes | str = b""
    mode: int = 0o644


def file(name: str, data: bytes | str, mode: int = 0o644) -> E:
    return E("file", name, data, mode)


def tar_bytes(entries: list[E]) -> bytes:
    """An uncompressed tar of `entries`, in the given order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mode = entry.mode
            payload = entry.data.encode() if isinstance(entry.data, str) else entry.data
            if entry.kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            if entry.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload.decode()
            elif entry.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload.decode()
            elif entry.kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif entry.kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            else:
                raise ValueError(entry.kind)
            tar.addfile(info)
    return out.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


def go_elf(go_version: str, modinfo: str = "") -> bytes:
    """A minimal little-endian ELF64 executable whose `.go.buildinfo` section holds Go 1.18+
    build information (the only part of a Go binary the analyzer reads)."""
    buildinfo = encode_buildinfo(go_version, modinfo)
    shstrtab = b"\0.shstrtab\0.go.buildinfo\0"
    data_off = 0x40
    buildinfo_off = data_off
    strtab_off = buildinfo_off + len(buildinfo)
    shoff = (strtab_off + len(shstrtab) + 7) & ~7
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)
    body = bytearray(header.ljust(data_off, b"\0"))
    body += buildinfo + shstrtab
    body = body.ljust(shoff, b"\0")

    def section(name: int, typ: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, typ, 0, 0, offset, size, 0, 0, 1, 0)

    body += b"\0" * 64
    body += section(1, 3, strtab_off, len(shstrtab))
    body += section(11, 1, buildinfo_off, len(buildinfo))
    return bytes(body)
