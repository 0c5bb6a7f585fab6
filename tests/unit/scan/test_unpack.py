"""Layer unpacking: whiteouts, limits, and hostile layers. After every case the directory
around the scratch root (a sentinel parent with a file of its own) must be unchanged."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from scan_svc.analysis import AnalysisError, Layer, Limits, Options, OsvDatabase, analyze
from scan_svc.analysis.unpack import RootFS, Want, unpack

from .layers import E, file, gz, tar_bytes


def everything(path: str, member: tarfile.TarInfo) -> Want:
    return Want.EXTRACT


def _listing(top: Path, skip: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            out[str(p.relative_to(top))] = (st.st_mode, data)
    return out


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """`tmp_path/sentinel/scratch`; on teardown, everything outside it is as it was."""
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("sentinel")
    root = sentinel / "scratch"
    root.mkdir()
    before = _listing(tmp_path, root)
    yield root
    assert _listing(tmp_path, root) == before, "something was written outside the scratch dir"
    # And the scratch tree holds nothing but plain directories and regular files.
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            assert not p.is_symlink() and (p.is_dir() or p.is_file()), p


def _layers(*layers: list[E]) -> list[Layer]:
    return [
        Layer(io.BytesIO(gz(tar_bytes(entries))), f"sha256:{n:064x}")
        for n, entries in enumerate(layers, 1)
    ]


def _unpack(scratch: Path, *layers: list[E], limits: Limits | None = None) -> RootFS:
    return unpack(_layers(*layers), scratch, everything, limits)


def _tree(fs: RootFS) -> dict[str, bytes]:
    return {p: (fs.read_bytes(p) or b"") for p in fs.files()}


# -- not a tar, corrupt streams ----------------------------------------------------------------


@pytest.mark.parametrize(
    "blob",
    [
        b"this is not a tar archive at all" * 40,
        gz(b"neither is this" * 100),
        b"",
        zlib.compress(b"x"),
    ],
    ids=["text", "gzip-of-text", "empty", "zlib"],
)
def test_a_layer_that_is_not_a_tar(scratch: Path, blob: bytes) -> None:
    with pytest.raises(AnalysisError, match="layer 1") as err:
        unpack([Layer(io.BytesIO(blob), "sha256:" + "a" * 64)], scratch, everything)
    assert "tar" in str(err.value) or "corrupt" in str(err.value)


def test_truncated_gzip_layer(scratch: Path) -> None:
    blob = gz(tar_bytes([file("etc/os-release", "ID=debian\n" * 1000)]))
    with pytest.raises(AnalysisError, match="layer 1"):
        unpack([Layer(io.BytesIO(blob[: len(blob) // 2]))], scratch, everything)


# -- limits ------------------------------------------------------------------------------------


def _gzip_bomb(declared: int = 1 << 30) -> bytes:
    """A gzip stream of a tar with one `declared`-byte file of zeros, ~1000x smaller than
    what it expands to: the first member holds the tar header, then a 16 MiB member of
    zeros repeated (gzip allows concatenated members)."""
    info = tarfile.TarInfo("bomb")
    info.size = declared
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    chunk = gzip.compress(b"\0" * (16 << 20), compresslevel=9, mtime=0)
    return gzip.compress(header, mtime=0) + chunk * (declared // (16 << 20))


def test_gzip_bomb_stops_at_the_total_limit_quickly(scratch: Path) -> None:
    bomb = _gzip_bomb()
    assert len(bomb) < 2 << 20
    start = time.monotonic()
    with pytest.raises(AnalysisError, match="exceeds the limit of 8388608 bytes"):
        unpack([Layer(io.BytesIO(bomb))], scratch, everything, Limits(max_total_bytes=8 << 20))
    assert time.monotonic() - start < 2


def test_per_file_limit_uses_the_declared_size(scratch: Path) -> None:
    with pytest.raises(AnalysisError, match="'bomb' declares 1073741824 bytes"):
        unpack(
            [Layer(io.BytesIO(_gzip_bomb()))], scratch, everything, Limits(max_file_bytes=1 << 20)
        )


def test_entry_count_limit(scratch: Path) -> None:
    entries = [file(f"f{i}", "x") for i in range(50)]
    with pytest.raises(AnalysisError, match="more than 10 entries"):
        _unpack(scratch, entries, limits=Limits(max_entries=10))


def test_limits_are_for_the_whole_image(scratch: Path) -> None:
    layer = [file("a", b"x" * 4096)]
    with pytest.raises(AnalysisError, match="layer 3"):
        _unpack(scratch, layer, layer, layer, limits=Limits(max_total_bytes=3 * 10240 - 1))


# -- hostile names and links -------------------------------------------------------------------


def test_dotdot_and_absolute_names_are_skipped(scratch: Path, tmp_path: Path) -> None:
    fs = _unpack(
        scratch,
        [
            file("../escaped", "x"),
            file("a/../../escaped2", "x"),
            file(f"{tmp_path}/absolute", "x"),
            file("/etc/passwd", "root"),
            file("./fine/file", "ok"),
        ],
    )
    assert _tree(fs) == {"fine/file": b"ok"}
    reasons = {s.name: s.reason for s in fs.skipped}
    assert reasons["../escaped"] == "path with a '..' component"
    assert reasons["a/../../escaped2"] == "path with a '..' component"
    assert reasons["/etc/passwd"] == "absolute path"
    assert all(s.layer == f"sha256:{1:064x}" for s in fs.skipped)


def test_symlink_outside_then_a_file_through_it(scratch: Path, tmp_path: Path) -> None:
    fs = _unpack(
        scratch,
        [
            E("symlink", "up", "../../.."),
            E("symlink", "deep/up", "../../../outside"),
            E("symlink", "abs", str(tmp_path)),  # absolute: inside the image, not the host
            E("symlink", "chain1", "chain2"),
            E("symlink", "chain2", "../.."),
        ],
        [
            file("up/pwned", "1"),
            file("deep/up/pwned", "2"),
            file("abs/pwned", "3"),
            file("chain1/pwned", "4"),
        ],
    )
    skipped = {s.name: s.reason for s in fs.skipped}
    assert "outside the root" in skipped["up"]
    assert "outside the root" in skipped["deep/up"]
    assert "outside the root" in skipped["chain2"]
    assert fs.symlinks == {"abs": str(tmp_path), "chain1": "chain2"}
    files = _tree(fs)
    # Rejected links are not there, so their names became plain directories in the root.
    assert files["up/pwned"] == b"1" and files["deep/up/pwned"] == b"2"
    assert files[f"{str(tmp_path).lstrip('/')}/pwned"] == b"3"
    assert files["chain2/pwned"] == b"4"


def test_a_chain_that_escapes_later_is_caught_when_used(scratch: Path) -> None:
    fs = _unpack(
        scratch,
        [E("symlink", "a", "b/c"), E("dir", "b")],
        [E("symlink", "b/c", "../d")],  # fine on its own: resolves to d
        [E("symlink", "d", "/"), file("a/x", "ok")],  # a -> b/c -> ../d -> d -> /
    )
    assert _tree(fs) == {"x": b"ok"}
    assert fs.resolve("a/x") == "x"


def test_merged_usr_symlinks_are_followed_inside_the_root(scratch: Path) -> None:
    fs = _unpack(
        scratch,
        [E("symlink", "lib", "usr/lib"), E("symlink", "etc/os-release", "../usr/lib/os-release")],
        [file("lib/os-release", "ID=debian\n"), file("lib/apk/db/installed", "P:x\nV:1\n")],
    )
    assert fs.files() == ["usr/lib/apk/db/installed", "usr/lib/os-release"]
    assert fs.read_bytes("etc/os-release") == b"ID=debian\n"
    assert fs.read_bytes("lib/apk/db/installed") == b"P:x\nV:1\n"
    assert fs.layer_of("etc/os-release") == f"sha256:{2:064x}"


def test_hard_links(scratch: Path, tmp_path: Path) -> None:
    fs = _unpack(
        scratch,
        [file("etc/shadow", "secret"), E("symlink", "sl", "etc/shadow")],
        [
            E("hardlink", "h-out", "../../sentinel/keep.txt"),
            E("hardlink", "h-abs", f"{tmp_path}/sentinel/keep.txt"),
            E("hardlink", "h-missing", "not/extracted"),
            E("hardlink", "h-ok", "etc/shadow"),
            E("hardlink", "h-sym", "sl"),
        ],
    )
    reasons = {s.name: s.reason for s in fs.skipped}
    assert "'..'" in reasons["h-out"]
    assert "absolute" in reasons["h-abs"]
    assert "not extracted" in reasons["h-missing"]
    assert _tree(fs) == {"etc/shadow": b"secret", "h-ok": b"secret"}
    assert fs.layer_of("h-ok") == f"sha256:{2:064x}"
    assert fs.symlinks["h-sym"] == "etc/shadow"


def test_special_files_are_skipped(scratch: Path) -> None:
    fs = _unpack(scratch, [E("fifo", "dev/fifo"), E("chr", "dev/null"), file("ok", "1")])
    assert _tree(fs) == {"ok": b"1"}
    assert {s.name for s in fs.skipped} == {"dev/fifo", "dev/null"}
    assert not (scratch / "dev").exists()


# -- whiteouts ---------------------------------------------------------------------------------


def test_whiteouts_and_opaque_directories_across_layers(scratch: Path) -> None:
    fs = _unpack(
        scratch,
        [
            file("a/x", "ax"),
            file("a/y", "ay"),
            file("b/z", "bz"),
            file("c/old", "c1"),
            file("c/sub/old", "c2"),
            E("symlink", "c/link", "../a/y"),
            file("d/keep", "d"),
        ],
        [file("a/.wh.x", ""), file(".wh.b", ""), file("c/mid", "m"), file("d/.wh.nothing", "")],
        # The opaque marker comes after this layer's own entry in c/: that entry survives.
        [file("c/new", "n"), file("c/.wh..wh..opq", ""), file("e", "e")],
    )
    assert _tree(fs) == {"a/y": b"ay", "c/new": b"n", "d/keep": b"d", "e": b"e"}
    assert fs.symlinks == {}
    assert [s.name for s in fs.skipped] == []


def test_whiteout_then_recreate_in_the_same_layer(scratch: Path) -> None:
    fs = _unpack(
        scratch,
        [file("app/lib/old.py", "old"), file("app/keep", "k")],
        [file("app/lib/new.py", "new"), file("app/.wh.lib", "")],
    )
    assert _tree(fs) == {"app/keep": b"k", "app/lib/new.py": b"new"}


def test_replacements_between_files_dirs_and_symlinks(scratch: Path) -> None:
    fs = _unpack(
        scratch,
        [file("x/inner", "1"), file("y", "2"), E("symlink", "z", "x")],
        [
            file("x", "now a file"),
            E("dir", "y"),
            file("y/inner", "3"),
            E("dir", "z"),
            file("z/f", "4"),
        ],
    )
    assert _tree(fs) == {"x": b"now a file", "y/inner": b"3", "z/f": b"4"}
    assert fs.symlinks == {}


def test_unwanted_files_still_replace_wanted_ones(scratch: Path) -> None:
    def only_status(path: str, member: tarfile.TarInfo) -> Want:
        return Want.EXTRACT if path == "var/lib/dpkg/status" else Want.SKIP

    layers = _layers(
        [file("var/lib/dpkg/status", "Package: a\n"), file("other", "o")],
        [E("symlink", "var/lib/dpkg/status", "/dev/null")],
    )
    fs = unpack(layers, scratch, only_status)
    assert fs.files() == []
    assert fs.read_bytes("var/lib/dpkg/status") is None


# -- compression, digests ----------------------------------------------------------------------


def test_plain_and_zstd_layers_and_computed_digests(scratch: Path) -> None:
    plain = tar_bytes([file("a", "plain")])
    zst = zstandard.ZstdCompressor().compress(tar_bytes([file("b", "zstd")]))
    fs = unpack([Layer(io.BytesIO(plain)), Layer(io.BytesIO(zst))], scratch, everything)
    digests = [f"sha256:{hashlib.sha256(b).hexdigest()}" for b in (plain, zst)]
    assert fs.layers == digests
    assert _tree(fs) == {"a": b"plain", "b": b"zstd"}
    assert (fs.layer_of("a"), fs.layer_of("b")) == tuple(digests)


def test_layers_given_as_paths(scratch: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    blobs = tmp_path_factory.mktemp("blobs")
    blob = blobs / "layer.tar.gz"
    blob.write_bytes(gz(tar_bytes([file("from/path", "p")])))
    fs = unpack([Layer(str(blob))], scratch, everything)
    assert _tree(fs) == {"from/path": b"p"}
    assert fs.layers == [f"sha256:{hashlib.sha256(blob.read_bytes()).hexdigest()}"]
    with pytest.raises(AnalysisError, match="layer 1: cannot open"):
        unpack([Layer(str(blobs / "missing"))], tmp_path_factory.mktemp("empty"), everything)


def test_zstd_without_the_zstandard_package(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)
    zst = zstandard.ZstdCompressor().compress(tar_bytes([file("b", "zstd")]))
    with pytest.raises(AnalysisError, match="zstandard package is not installed"):
        unpack([Layer(io.BytesIO(zst))], scratch, everything)


def test_scratch_must_be_empty(scratch: Path) -> None:
    (scratch / "leftover").write_text("x")
    with pytest.raises(AnalysisError, match="must exist and be empty"):
        unpack([], scratch, everything)
    (scratch / "leftover").unlink()


# -- through analyze ---------------------------------------------------------------------------


def test_corrupt_dpkg_status_is_an_analysis_error(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    status = "Package: a\nStatus: install ok installed\nVersion: 1\n\n\x00\x01garbage line\n"
    layers = _layers(
        [file("etc/os-release", "ID=debian\nVERSION_ID=12\n"), file("var/lib/dpkg/status", status)]
    )

    with pytest.raises(
        AnalysisError, match=r"var/lib/dpkg/status: line 5: not a 'Field: value' line"
    ):
        analyze(layers, OsvDatabase(), Options(scratch_parent=str(sentinel)))
    assert os.listdir(sentinel) == []  # the temporary root is gone, nothing else appeared
