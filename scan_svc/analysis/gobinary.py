"""Go build information from executables: the toolchain version and the module list.

Since Go 1.18 the linker stores a `\\xff Go buildinf:` header (32 bytes: the magic, the
pointer size, flags) followed, when flag bit 2 is set, by two length-prefixed strings (the
length an unsigned varint): the toolchain version (`go1.21.3`) and the module information,
framed by 16-byte sentinels. The header sits at the start of the ELF section
`.go.buildinfo`, 16-byte aligned; when the section table is stripped the header is searched
for at aligned offsets instead.

Binaries built before Go 1.18 store pointers into the data segment instead of inline
strings; they are not read here (`read_buildinfo` returns None), which only means such
binaries contribute no Go packages to the inventory.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

MAGIC = b"\xff Go buildinf:"
_HEADER = 32
_FLAG_INLINE = 0x2
_SENTINEL = 16
_MAX_SEARCH = 64 << 20  # the header is in the first data segment; do not scan whole GiBs
_MAX_BLOB = 1 << 20  # version plus module list: a few KB, a large binary's tens of KB


Buffer = bytes | mmap.mmap
"""The binary's content: bytes, or an mmap of the file so that only touched pages are read."""


@dataclass(frozen=True)
class Module:
    """A Go module linked into a binary (`v` prefix kept as Go writes it)."""

    path: str
    version: str


@dataclass(frozen=True)
class BuildInfo:
    """What a Go binary says about how it was built."""

    go_version: str
    main: Module | None
    deps: tuple[Module, ...]


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            break
    raise ValueError("bad varint")


def _section(data: Buffer, name: bytes) -> bytes | None:
    """The bytes of ELF section `name`, or None when it (or the section table) is absent."""
    if len(data) < 0x40 or data[0:4] != b"\x7fELF":
        return None
    ident = data[4:6]
    is64 = ident[0] == 2
    endian = "<" if ident[1] == 1 else ">"
    try:
        if is64:
            shoff, shentsize, shnum, shstrndx = (
                struct.unpack_from(endian + "Q", data, 0x28)[0],
                *struct.unpack_from(endian + "HHH", data, 0x3A),
            )
        else:
            shoff, shentsize, shnum, shstrndx = (
                struct.unpack_from(endian + "I", data, 0x20)[0],
                *struct.unpack_from(endian + "HHH", data, 0x2E),
            )
        if shoff == 0 or shnum == 0 or shstrndx >= shnum:
            return None

        def header(i: int) -> tuple[int, int, int]:
            base = shoff + i * shentsize
            if is64:
                name_off = struct.unpack_from(endian + "I", data, base)[0]
                offset, size = struct.unpack_from(endian + "QQ", data, base + 0x18)
            else:
                name_off = struct.unpack_from(endian + "I", data, base)[0]
                offset, size = struct.unpack_from(endian + "II", data, base + 0x10)
            return name_off, offset, size

        _, str_off, str_size = header(shstrndx)
        strtab = data[str_off : str_off + str_size]
        for i in range(shnum):
            name_off, offset, size = header(i)
            end = strtab.find(b"\0", name_off)
            if strtab[name_off:end] == name:
                return data[offset : offset + size]
    except struct.error:
        return None
    return None


def _find_header(data: Buffer) -> bytes | None:
    section = _section(data, b".go.buildinfo")
    if section is not None and section.startswith(MAGIC):
        return section
    limit = min(len(data), _MAX_SEARCH)
    pos = data.find(MAGIC, 0, limit)
    while pos != -1:
        if pos % 16 == 0:
            return data[pos : pos + _MAX_BLOB]
        pos = data.find(MAGIC, pos + 1, limit)
    return None


def _modules(text: str) -> tuple[Module | None, tuple[Module, ...]]:
    main: Module | None = None
    deps: list[Module] = []
    for line in text.splitlines():
        fields = line.split("\t")
        if fields[0] == "mod" and len(fields) >= 3:
            main = Module(fields[1], fields[2])
        elif fields[0] == "dep" and len(fields) >= 3:
            deps.append(Module(fields[1], fields[2]))
        elif fields[0] == "=>" and len(fields) >= 3 and deps:
            # A replacement applies to the dependency just above it: the code linked in is
            # the replacement's, so that is what advisories must be matched against.
            deps[-1] = Module(fields[1], fields[2])
    return main, tuple(deps)


def read_buildinfo(data: Buffer) -> BuildInfo | None:
    """The build information of a Go 1.18+ executable (its bytes or an mmap of it), or None
    when `data` is not one."""
    blob = _find_header(data)
    if blob is None or len(blob) < _HEADER or not blob[len(MAGIC) + 1] & _FLAG_INLINE:
        return None
    try:
        length, pos = _uvarint(blob, _HEADER)
        version = blob[pos : pos + length].decode("utf-8", "replace")
        pos += length
        length, pos = _uvarint(blob, pos)
        mod = blob[pos : pos + length]
    except ValueError:
        return None
    if len(mod) >= 2 * _SENTINEL + 1 and mod[-_SENTINEL - 1 : -_SENTINEL] == b"\n":
        mod = mod[_SENTINEL:-_SENTINEL]
    if not version:
        return None
    main, deps = _modules(mod.decode("utf-8", "replace"))
    return BuildInfo(version, main, deps)


def encode_buildinfo(go_version: str, modinfo: str = "") -> bytes:
    """The inline build-information blob a Go 1.18+ linker writes (for building test
    binaries and fixtures; the inverse of `read_buildinfo`)."""

    def uvarint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte = n & 0x7F
            n >>= 7
            if n:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                return bytes(out)

    header = MAGIC + bytes([8, _FLAG_INLINE])
    header += b"\0" * (_HEADER - len(header))
    mod = modinfo.encode()
    if mod:
        mod = (
            b"0" * _SENTINEL + mod + b"\n" + b"1" * _SENTINEL
            if not mod.endswith(b"\n")
            else (b"0" * _SENTINEL + mod + b"1" * _SENTINEL)
        )
    version = go_version.encode()
    return header + uvarint(len(version)) + version + uvarint(len(mod)) + mod
