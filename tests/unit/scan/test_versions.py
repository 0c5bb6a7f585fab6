"""Version orderings: dpkg against dpkg itself, apk against our vector file, PEP 440 and
SemVer/Go with the README's cases, and the one `compare` interface over them."""

from __future__ import annotations

import csv

import pytest

from scan_svc.analysis import AnalysisError, InvalidVersionError
from scan_svc.analysis.versions import apk, compare, dpkg, semantic, supports

from .layers import DATA

SIGN = {"<": -1, "=": 0, ">": 1}


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def test_dpkg_agrees_with_dpkg_compare_versions_on_all_vectors() -> None:
    with open(DATA / "vercmp" / "dpkg-vectors.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == 2135
    wrong = [r for r in rows if _sign(dpkg.compare(r["a"], r["b"])) != SIGN[r["expected"]]]
    assert wrong == []
    # Antisymmetry on the same data.
    assert all(_sign(dpkg.compare(r["b"], r["a"])) == -SIGN[r["expected"]] for r in rows)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0", "1:1.0", -1),
        ("1:9.2p1-2", "9.9", 1),
        ("1.0~rc1", "1.0", -1),
        ("0.13.0-1.1~deb12u1", "0.13.0-1.1", -1),
        ("1.0-1~deb12u1", "1.0-1", -1),
        ("1.0-1", "1.0-1+b1", -1),
        ("1.0-1+b1", "1.0-1+deb12u1", -1),
        ("3.0.19-1~deb12u2", "3.0.20-1~deb12u2", -1),
        ("1.0", "1.0-0", 0),
        ("1.0", "1.00", 0),
        ("1.0.0", "1.00", 1),
        ("1.0~~", "1.0~", -1),
        ("1.0a", "1.0+", -1),
        ("5.4.1-1+deb12u1", "5.4.1-2+deb12u1", -1),
        ("20.20.2-1nodesource1+repack1", "18.19.0+dfsg-6~deb12u1", 1),
    ],
)
def test_dpkg_rules_from_the_readme(a: str, b: str, expected: int) -> None:
    assert _sign(dpkg.compare(a, b)) == expected
    assert _sign(compare("Debian:12", a, b)) == expected


@pytest.mark.parametrize("bad", ["", "a:1.0", "1:", "1:-1"])
def test_dpkg_rejects_unparseable_versions(bad: str) -> None:
    with pytest.raises(InvalidVersionError):
        dpkg.compare(bad, "1.0")


def _apk_vectors() -> list[list[str]]:
    rows = []
    for line in (DATA / "vercmp" / "apk-vectors.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            rows.append(line.split("\t"))
    return rows


def test_apk_agrees_with_our_vector_file() -> None:
    rows = _apk_vectors()
    comparisons = [r for r in rows if r[0] == "cmp"]
    assert len(comparisons) >= 80
    for kind, a, op, b in comparisons:
        assert kind == "cmp"
        assert apk.compare(a, b) == SIGN[op], f"{a} {op} {b}"
        assert apk.compare(b, a) == -SIGN[op], f"{b} (reversed) {a}"
    for kind, version, *_ in rows:
        if kind in ("valid", "invalid"):
            assert apk.is_valid(version) is (kind == "valid"), version


def test_apk_through_the_interface() -> None:
    assert compare("Alpine:v3.19", "1.2.4_git20230717-r4", "1.2.4_git20230717-r5") < 0
    assert compare("Alpine", "1.2.3", "1.2.3-r0") < 0


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0RC1", "1.0rc1", 0),
        ("v1.0", "1.0", 0),
        ("1.0", "1.0.0", 0),
        ("1.0.dev0", "1.0a1", -1),
        ("1.0a1", "1.0b1", -1),
        ("1.0b1", "1.0rc1", -1),
        ("1.0rc1", "1.0", -1),
        ("1.0", "1.0.post1", -1),
        ("1.2.4.dev0", "1.2.4", -1),
        ("1!0.1", "2.0", 1),
        ("9.0.0+ds1", "9.0.0", 1),
    ],
)
def test_pep440(a: str, b: str, expected: int) -> None:
    assert _sign(compare("PyPI", a, b)) == expected


def test_pep440_legacy_version_raises_invalid() -> None:
    with pytest.raises(InvalidVersionError):
        compare("PyPI", "0.5.2dev_r42", "1.0")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.20.0-0", "1.20.0", -1),
        ("1.0.0-alpha", "1.0.0-alpha.1", -1),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta", -1),
        ("1.0.0-beta.2", "1.0.0-beta.11", -1),
        ("1.0.0-rc.1", "1.0.0", -1),
        ("1.0.0+build.1", "1.0.0+build.2", 0),
        ("4.6.1", "4.6.2", -1),
        ("v1.2.3", "1.2.3", 0),
    ],
)
def test_semver(a: str, b: str, expected: int) -> None:
    assert _sign(compare("npm", a, b)) == expected


@pytest.mark.parametrize(
    ("toolchain", "normalized"),
    [
        ("go1.19.8", "1.19.8"),
        ("go1.21", "1.21.0"),
        ("go1.21rc2", "1.21.0-rc.2"),
        ("go1.22.1 X:boringcrypto", "1.22.1"),
        ("v0.0.0-20220412211240-33da011f77ad", "0.0.0-20220412211240-33da011f77ad"),
    ],
)
def test_go_normalisation(toolchain: str, normalized: str) -> None:
    assert semantic.normalize_go(toolchain) == normalized


def test_go_ordering() -> None:
    assert compare("Go", "go1.19.8", "1.19.9") < 0
    assert compare("Go", "go1.21rc2", "1.21.0") < 0
    assert compare("Go", "go1.21rc2", "1.21.0-0") > 0
    assert compare("Go", "go1.21", "1.21.0") == 0
    with pytest.raises(InvalidVersionError):
        compare("Go", "go1.25-20250209-RC00", "1.25.0")


def test_unknown_ecosystem() -> None:
    assert not supports("Maven")
    with pytest.raises(AnalysisError, match="no version ordering"):
        compare("Maven", "1", "2")
