"""The vulndata headline check: an image made of the collection machine's inventory, scanned
against the collection's OSV records, gives exactly the findings the data implies.

The expected findings are computed here independently of the analyzer: Debian with the real
`dpkg --compare-versions`, PyPI with `packaging`, Go and npm with `semver`, and OSV ranges
read pairwise (introduced → fixed / last_affected) instead of the analyzer's sorted walk.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
from collections import defaultdict
from functools import cache
from io import BytesIO
from typing import Any

import pytest
import semver
import yaml
from packaging.version import InvalidVersion, Version

from scan_svc.analysis import Layer, Options, OsvDatabase, Report, analyze

from .layers import DATA, E, file, go_elf, gz, tar_bytes

OS_RELEASE = (
    'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
    'VERSION_ID="12"\nVERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'
)
STATUS = "var/lib/dpkg/status"


def _tsv(name: str) -> list[dict[str, str]]:
    with open(DATA / "host" / name, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _python_rows() -> list[dict[str, str]]:
    rows = []
    for row in _tsv("python-dist-packages.tsv"):
        leaf = "METADATA" if row["metadata_path"].endswith(".dist-info") else "PKG-INFO"
        rows.append({**row, "path": f"{row['metadata_path']}/{leaf}"})
    return rows


def _image_layers() -> list[Layer]:
    """Three layers: the OS (status, os-release via the usual symlink, dpkg file lists),
    Python metadata, then npm packages and Go executables."""
    owned: dict[str, list[str]] = defaultdict(list)
    python, node, go = _python_rows(), _tsv("node-packages.tsv"), _tsv("go-binaries.tsv")
    for row in python:
        owned[row["dpkg_package"]] += [row["metadata_path"], row["path"]]
    for row in node:
        owned[row["dpkg_package"]].append(row["path"])
    for row in go:
        owned[row["dpkg_package"]].append(row["path"])
    os_layer = [
        file("usr/lib/os-release", OS_RELEASE),
        E("symlink", "etc/os-release", "../usr/lib/os-release"),
        file(STATUS, (DATA / "host" / "dpkg-status").read_bytes()),
    ] + [
        file(f"var/lib/dpkg/info/{pkg}.list", "".join(f"/{p}\n" for p in paths))
        for pkg, paths in sorted(owned.items())
        if pkg
    ]
    python_layer = [
        file(
            row["path"], f"Metadata-Version: 2.1\nName: {row['name']}\nVersion: {row['version']}\n"
        )
        for row in python
    ]
    app_layer = [
        file(row["path"], json.dumps({"name": row["name"], "version": row["version"]}))
        for row in node
    ] + [
        file(row["path"], go_elf(row["go_version"], f"path\t{row['main_module']}\n"), 0o755)
        for row in go
    ]
    return [
        Layer(BytesIO(gz(tar_bytes(entries))), f"sha256:{n:064x}")
        for n, entries in enumerate((os_layer, python_layer, app_layer), start=1)
    ]


# -- the independent expectation ------------------------------------------------------------


def _records() -> list[dict[str, Any]]:
    out = []
    for path in sorted((DATA / "osv").rglob("*")):
        if path.suffix == ".json":
            out.append(json.loads(path.read_text()))
        elif path.suffix == ".yaml":
            out.append(yaml.load(path.read_text(), Loader=yaml.BaseLoader))
    return out


@cache
def _dpkg_lt(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode == 0


def _pairwise(events: list[dict[str, str]], ge: Any, gt: Any, v: Any) -> bool:
    """Affected by one range read as introduced→(fixed|last_affected) pairs in record order."""
    start = None
    for event in events:
        ((kind, value),) = event.items()
        if kind == "introduced":
            start = value
        elif start is not None:
            opened = start == "0" or ge(v, start)
            if opened and kind == "fixed" and not ge(v, value):
                return True
            if opened and kind == "last_affected" and not gt(v, value):
                return True
            start = None
    return start is not None and (start == "0" or ge(v, start))


def _pep503(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _go_semver(version: str) -> semver.Version | None:
    m = re.fullmatch(r"go(\d+)\.(\d+)(?:\.(\d+))?", version)
    if m is None:
        return None
    return semver.Version(int(m[1]), int(m[2]), int(m[3] or 0))


def _expected(comprehensive: bool) -> dict[str, set[tuple[str, str, str, str]]]:
    """(id, package, path, installed version) per ecosystem."""
    records = _records()
    status = (DATA / "host" / "dpkg-status").read_text()
    binaries = []
    for stanza in status.strip().split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", stanza, re.M))
        src = str(fields.get("Source", fields["Package"]))
        m = re.fullmatch(r"(\S+) \((.+)\)", src)
        src_name, src_version = (m[1], m[2]) if m else (src, fields["Version"])
        binaries.append((fields["Package"], fields["Version"], src_name, src_version))
    out: dict[str, set[tuple[str, str, str, str]]] = defaultdict(set)
    for rec in records:
        for aff in rec.get("affected", []):
            eco, name = aff["package"]["ecosystem"], aff["package"]["name"]
            ranges = [r for r in aff.get("ranges", []) if r["type"] != "GIT"]
            if eco == "Debian:12":
                (rng,) = ranges
                fixed = [e["fixed"] for e in rng["events"] if "fixed" in e]
                for binary, version, src_name, src_version in binaries:
                    if src_name == name and (not fixed or _dpkg_lt(src_version, fixed[0])):
                        out["Debian"].add((rec["id"], binary, STATUS, version))
            elif eco == "PyPI":
                for row in _python_rows():
                    if _pep503(row["name"]) != _pep503(name):
                        continue
                    if row["dpkg_package"] and not comprehensive:
                        continue
                    v = Version(row["version"])
                    hit = row["version"] in aff.get("versions", [])
                    for rng in ranges:

                        def ge(a: Version, b: str) -> bool:
                            try:
                                return a >= Version(b)
                            except InvalidVersion:
                                return False

                        def gt(a: Version, b: str) -> bool:
                            return a > Version(b)

                        hit = hit or _pairwise(rng["events"], ge, gt, v)
                    if hit:
                        out["PyPI"].add((rec["id"], row["name"], row["path"], row["version"]))
            elif eco in ("Go", "npm"):
                rows = _tsv("go-binaries.tsv") if eco == "Go" else _tsv("node-packages.tsv")
                for row in rows:
                    if row["dpkg_package"] and not comprehensive:
                        continue
                    if eco == "Go":
                        pkg, sv = "stdlib", _go_semver(row["go_version"])
                    else:
                        pkg, sv = row["name"], semver.Version.parse(row["version"])
                    if pkg != name or sv is None:
                        continue

                    def sge(a: semver.Version, b: str) -> bool:
                        return a >= semver.Version.parse(b)

                    def sgt(a: semver.Version, b: str) -> bool:
                        return a > semver.Version.parse(b)

                    if any(_pairwise(r["events"], sge, sgt, sv) for r in ranges):
                        out[eco].add((rec["id"], pkg, row["path"], str(sv)))
    return out


def _actual(report: Report) -> dict[str, set[tuple[str, str, str, str]]]:
    out: dict[str, set[tuple[str, str, str, str]]] = defaultdict(set)
    for f in report.findings:
        eco = f.ecosystem.split(":")[0]
        out[eco].add((f.vulnerability_id, f.package_name, f.path, f.installed_version))
    return out


@pytest.fixture(scope="module")
def db() -> OsvDatabase:
    return OsvDatabase.from_paths(DATA / "osv")


@pytest.fixture(scope="module")
def comprehensive(db: OsvDatabase) -> Report:
    return analyze(_image_layers(), db, Options(comprehensive=True))


def test_comprehensive_scan_finds_exactly_what_the_data_implies(comprehensive: Report) -> None:
    expected = _expected(comprehensive=True)
    actual = _actual(comprehensive)
    assert set(actual) == {"Debian", "PyPI", "Go", "npm"}
    for eco in ("Debian", "PyPI", "Go", "npm"):
        assert actual[eco] == expected[eco], eco
    # The README's numbers.
    assert len({f[0] for f in actual["Debian"]}) == 41
    assert len(actual["Debian"]) == 149
    assert len({f[0] for f in actual["PyPI"]}) == 13
    assert len(actual["PyPI"]) == 15
    assert len({f[0] for f in actual["Go"]}) == 4
    assert len({f[0] for f in actual["npm"]}) == 1


def test_default_scan_drops_language_packages_owned_by_dpkg(db: OsvDatabase) -> None:
    report = analyze(_image_layers(), db)
    expected = _expected(comprehensive=False)
    actual = _actual(report)
    assert actual["Debian"] == expected["Debian"]
    assert not actual["PyPI"] and not actual["Go"]
    assert actual["npm"] == expected["npm"]  # only the 7 unowned package.json files count
    unowned_npm = [r for r in _tsv("node-packages.tsv") if not r["dpkg_package"]]
    assert {p.path for p in report.packages if p.type == "npm"} == {r["path"] for r in unowned_npm}


def test_report_describes_the_image_and_the_database(
    comprehensive: Report, db: OsvDatabase
) -> None:
    report = comprehensive
    assert report.os is not None
    assert (report.os.family, report.os.version_id) == ("debian", "12")
    dpkg = [p for p in report.packages if p.type == "dpkg"]
    assert len(dpkg) == 867
    assert all(p.ecosystem == "Debian:12" and p.layer == f"sha256:{1:064x}" for p in dpkg)
    by_name = {p.name: p for p in dpkg}
    assert (by_name["libssh2-1"].source_name, by_name["libssh2-1"].source_version) == (
        "libssh2",
        "1.10.0-3",
    )
    python = [p for p in report.packages if p.type == "python"]
    assert len(python) == 71 and all(p.os_owned for p in python)
    assert report.database_version == db.version and report.database_version
    assert sum(report.counts.values()) == len(report.findings)
    assert report.layers == tuple(f"sha256:{n:064x}" for n in (1, 2, 3))
    # Every finding carries its package file's layer.
    layer_of = {"dpkg": 1, "PyPI": 2, "npm": 3, "Go": 3}
    for f in report.findings:
        key = "dpkg" if f.ecosystem.startswith("Debian") else f.ecosystem
        assert f.layer == f"sha256:{layer_of[key]:064x}"


def test_finding_details(comprehensive: Report) -> None:
    by_key = {(f.vulnerability_id, f.package_name, f.path): f for f in comprehensive.findings}
    xz = by_key[("DEBIAN-CVE-2026-34743", "liblzma5", STATUS)]
    assert (xz.fixed_version, xz.status, xz.aliases) == (
        "5.4.1-1+deb12u1",
        "fixed",
        ("CVE-2026-34743",),
    )
    assert xz.source_name == "xz-utils"
    apt = by_key[("DEBIAN-CVE-2011-3374", "apt", STATUS)]
    assert (apt.fixed_version, apt.status) == ("", "affected")
    assert apt.severity == "LOW" and apt.severity_source == "urgency"  # "unimportant"
    go = by_key[("GO-2023-2102", "stdlib", "usr/bin/podman")]
    assert (go.installed_version, go.fixed_version) == ("1.19.8", "1.20.10")
    assert go.severity == "UNKNOWN"
    werkzeug = by_key[
        (
            "PYSEC-2023-221",
            "Werkzeug",
            "usr/lib/python3/dist-packages/Werkzeug-2.2.2.egg-info/PKG-INFO",
        )
    ]
    assert werkzeug.fixed_version == "2.3.8"
    assert (werkzeug.severity, werkzeug.cvss_score) == ("HIGH", 7.5)
    bootstrap = by_key[
        ("GHSA-vc8w-jr9v-vj7f", "bootstrap", "usr/share/nodejs/bootstrap/package.json")
    ]
    assert (bootstrap.severity, bootstrap.cvss_score, bootstrap.fixed_version) == (
        "MEDIUM",
        6.4,
        "",
    )
    assert bootstrap.title == "Bootstrap Cross-Site Scripting (XSS) vulnerability"
