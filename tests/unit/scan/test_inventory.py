"""Inventory readers and matching details on small built images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from scan_svc.analysis import AnalysisError, Layer, Options, OsvDatabase, Report, analyze
from scan_svc.analysis.match import severity_of
from scan_svc.analysis.osv import Affected, Record, Severity

from .layers import DATA, E, file, go_elf, gz, tar_bytes

DEBIAN_12 = 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
ALPINE = 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.19.1\n'


@pytest.fixture(scope="module")
def db() -> OsvDatabase:
    return OsvDatabase.from_paths(DATA / "osv")


def _scan(db: OsvDatabase, *layers: list[E], comprehensive: bool = False) -> Report:
    blobs = [
        Layer(io.BytesIO(gz(tar_bytes(entries))), f"sha256:{n:064x}")
        for n, entries in enumerate(layers, 1)
    ]
    return analyze(blobs, db, Options(comprehensive=comprehensive))


def _stanza(**fields: str) -> str:
    return "".join(f"{k.replace('_', '-')}: {v}\n" for k, v in fields.items()) + "\n"


def _found(report: Report) -> set[tuple[str, str, str]]:
    return {(f.vulnerability_id, f.package_name, f.installed_version) for f in report.findings}


def test_dpkg_status_fields_and_source_versions(db: OsvDatabase) -> None:
    installed = "install ok installed"
    status = (
        _stanza(
            Package="libssh2-1",
            Status=installed,
            Version="1.10.0-3+b1",
            Source="libssh2 (1.10.0-3)",
        )
        + _stanza(
            Package="libcap2", Status=installed, Version="1:2.66-4+deb12u2+b2", Source="libcap2"
        )
        + _stanza(Package="xz-utils", Status="hold ok installed", Version="5.4.1-1+b1")
        + _stanza(
            Package="cpp", Status=installed, Version="4:12.2.0-3", Source="gcc-defaults (1.203)"
        )
        + _stanza(Package="dpkg", Status="deinstall ok config-files", Version="1.21.22")
        + _stanza(Package="zip", Status="install ok half-installed", Version="3.0-13")
        + "Package: multi\nStatus: install ok installed\nVersion: 1\nDescription: one\n two\n .\n"
    )
    report = _scan(db, [file("etc/os-release", DEBIAN_12), file("var/lib/dpkg/status", status)])
    packages = {p.name: p for p in report.packages}
    assert set(packages) == {"libssh2-1", "libcap2", "xz-utils", "cpp", "multi"}
    assert (packages["libssh2-1"].source_name, packages["libssh2-1"].source_version) == (
        "libssh2",
        "1.10.0-3",
    )
    assert packages["libcap2"].source_version == "1:2.66-4+deb12u2"  # binary NMU suffix dropped
    assert (packages["xz-utils"].source_name, packages["xz-utils"].source_version) == (
        "xz-utils",
        "5.4.1-1",
    )
    assert (packages["cpp"].source_name, packages["cpp"].source_version) == (
        "gcc-defaults",
        "1.203",
    )
    assert _found(report) == {
        ("DEBIAN-CVE-2025-15661", "libssh2-1", "1.10.0-3+b1"),
        ("DEBIAN-CVE-2026-4878", "libcap2", "1:2.66-4+deb12u2+b2"),
        ("DEBIAN-CVE-2026-34743", "xz-utils", "5.4.1-1+b1"),
    }


def test_distroless_status_d(db: OsvDatabase) -> None:
    report = _scan(
        db,
        [
            file("etc/os-release", DEBIAN_12),
            file(
                "var/lib/dpkg/status.d/libssl3",
                _stanza(Package="libssl3", Version="3.0.19-1~deb12u2", Source="openssl"),
            ),
            file(
                "var/lib/dpkg/status.d/libssl3.md5sums",
                "d41d8cd98f00b204e9800998ecf8427e  usr/lib/x\n",
            ),
            file(
                "var/lib/dpkg/status.d/tzdata", _stanza(Package="tzdata", Version="2025b-0+deb12u1")
            ),
        ],
    )
    assert {(p.name, p.path) for p in report.packages} == {
        ("libssl3", "var/lib/dpkg/status.d/libssl3"),
        ("tzdata", "var/lib/dpkg/status.d/tzdata"),
    }
    assert _found(report) == {("DEBIAN-CVE-2026-34180", "libssl3", "3.0.19-1~deb12u2")}
    (finding,) = report.findings
    assert (finding.fixed_version, finding.path) == (
        "3.0.20-1~deb12u2",
        "var/lib/dpkg/status.d/libssl3",
    )


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (
            "Package: a\nVersion: 1\nStatus: install ok installed\n garbage?\nnot a field\n",
            "line 5",
        ),
        (" leading continuation\n", "line 1: continuation without a field"),
        ("Status: install ok installed\nVersion: 1\n", "without Package or Version"),
    ],
)
def test_corrupt_dpkg_status(db: OsvDatabase, status: str, message: str) -> None:
    with pytest.raises(AnalysisError, match=message):
        _scan(db, [file("var/lib/dpkg/status", status)])


def test_non_utf8_status_is_an_error(db: OsvDatabase) -> None:
    with pytest.raises(AnalysisError, match="not UTF-8"):
        _scan(db, [file("var/lib/dpkg/status", b"Package: \xff\xfe\n")])


def test_unknown_release_gets_no_os_findings(db: OsvDatabase) -> None:
    status = _stanza(Package="xz-utils", Status="install ok installed", Version="5.4.1-1")
    report = _scan(db, [file("var/lib/dpkg/status", status)])
    assert report.os is None
    assert [(p.name, p.ecosystem) for p in report.packages] == [("xz-utils", "Debian")]
    assert report.findings == ()


def test_alpine_installed_db_matches_on_origin(db: OsvDatabase) -> None:
    installed = (
        "C:Q1abc=\nP:musl\nV:1.2.4_git20230717-r4\nA:x86_64\no:musl\nF:lib\nR:ld-musl-x86_64.so.1\n\n"
        "P:musl-utils\nV:1.2.4_git20230717-r4\no:musl\nF:usr/bin\nR:ldd\n\n"
        "P:py3-six\nV:1.16.0-r9\no:py-six\nF:usr/lib/python3.11/site-packages/six-1.16.0.dist-info\nR:METADATA\n\n"
    )
    six = "usr/lib/python3.11/site-packages/six-1.16.0.dist-info/METADATA"
    layers = [
        file("etc/os-release", ALPINE),
        file("lib/apk/db/installed", installed),
        file(six, "Metadata-Version: 2.1\nName: six\nVersion: 1.16.0\n"),
    ]
    report = _scan(db, layers)
    assert report.os is not None and report.os.family == "alpine"
    assert {(p.name, p.source_name, p.ecosystem) for p in report.packages} == {
        ("musl", "musl", "Alpine:v3.19"),
        ("musl-utils", "musl", "Alpine:v3.19"),
        ("py3-six", "py-six", "Alpine:v3.19"),
    }
    assert {(f.vulnerability_id, f.package_name, f.fixed_version) for f in report.findings} == {
        ("ALPINE-CVE-2025-26519", "musl", "1.2.4_git20230717-r5"),
        ("ALPINE-CVE-2025-26519", "musl-utils", "1.2.4_git20230717-r5"),
    }
    full = _scan(db, layers, comprehensive=True)
    (python,) = [p for p in full.packages if p.type == "python"]
    assert (python.name, python.os_owned, python.path) == ("six", True, six)


def test_language_packages(db: OsvDatabase) -> None:
    site = "usr/local/lib/python3.11/site-packages"
    mod = (
        "path\tapp\nmod\tapp\t(devel)\t\n"
        "dep\tgolang.org/x/net\tv0.16.0\th1:x=\n"
        "dep\tgolang.org/x/text\tv0.1.0\th1:y=\n"
        "=>\tgolang.org/x/text\tv0.14.0\th1:z=\n"
    )
    report = _scan(
        db,
        [
            file(
                f"{site}/requests-2.28.1.dist-info/METADATA",
                "Metadata-Version: 2.1\nName: requests\nVersion: 2.28.1\n",
            ),
            file(
                f"{site}/idna-3.3-py3.11.egg-info",
                "Metadata-Version: 1.2\nName: idna\nVersion: 3.3\n",
            ),
            file("opt/notpython/foo-1.0.dist-info/METADATA", "Name: foo\nVersion: 1.0\n"),
            file(
                "app/node_modules/bootstrap/package.json",
                json.dumps({"name": "bootstrap", "version": "4.6.1"}),
            ),
            file("app/node_modules/bootstrap/dist/package.json", json.dumps({"type": "module"})),
            file("app/node_modules/@scope/broken/package.json", "{not json"),
            file(
                "app/node_modules/ansi-html/package.json",
                json.dumps({"name": "ansi-html", "version": "0.0.7"}),
            ),
            file("usr/local/bin/app", go_elf("go1.21.2", mod), 0o755),
            file("usr/local/lib/not-executable", go_elf("go1.19.8"), 0o644),
            file("usr/local/bin/script", "#!/bin/sh\n", 0o755),
        ],
    )
    assert {(p.type, p.name, p.version, p.path) for p in report.packages} == {
        ("python", "requests", "2.28.1", f"{site}/requests-2.28.1.dist-info/METADATA"),
        ("python", "idna", "3.3", f"{site}/idna-3.3-py3.11.egg-info"),
        ("npm", "bootstrap", "4.6.1", "app/node_modules/bootstrap/package.json"),
        ("npm", "ansi-html", "0.0.7", "app/node_modules/ansi-html/package.json"),
        ("gobinary", "stdlib", "1.21.2", "usr/local/bin/app"),
        ("gobinary", "golang.org/x/net", "0.16.0", "usr/local/bin/app"),
        ("gobinary", "golang.org/x/text", "0.14.0", "usr/local/bin/app"),  # the replacement
    }
    assert {(f.vulnerability_id, f.package_name, f.fixed_version) for f in report.findings} == {
        ("PYSEC-2023-74", "requests", "2.31.0"),
        ("PYSEC-2024-60", "idna", "3.7"),
        ("GHSA-vc8w-jr9v-vj7f", "bootstrap", ""),
        ("GHSA-whgm-jr23-g3j9", "ansi-html", "0.0.8"),
        ("GO-2023-2102", "stdlib", "1.21.3"),
        ("GO-2023-2102", "golang.org/x/net", "0.17.0"),
        ("GO-2025-3563", "stdlib", "1.23.8"),
    }
    assert all(not p.os_owned for p in report.packages)


def test_whiteout_removes_a_package_database(db: OsvDatabase) -> None:
    status = _stanza(Package="xz-utils", Status="install ok installed", Version="5.4.1-1")
    report = _scan(
        db,
        [file("etc/os-release", DEBIAN_12), file("var/lib/dpkg/status", status)],
        [E("file", "var/lib/dpkg/.wh.status")],
    )
    assert report.packages == () and report.findings == ()


def test_severity_sources() -> None:
    def record(**kw: object) -> Record:
        return Record(id="X", modified="", **kw)  # type: ignore[arg-type]

    entry = Affected("Debian:12", "p", urgency="medium**")
    vector = Severity("CVSS_V3", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")
    assert severity_of(record(severity=(vector,)), entry) == ("CRITICAL", 9.8, "cvss_v3")
    broken = Severity("CVSS_V3", "CVSS:3.1/AV:N")
    assert severity_of(record(severity=(broken,), database_severity="MODERATE"), entry) == (
        "MEDIUM",
        None,
        "database",
    )
    assert severity_of(record(), entry) == ("MEDIUM", None, "urgency")
    assert severity_of(record(), Affected("Debian:12", "p", urgency="unimportant"))[0] == "LOW"
    assert (
        severity_of(record(), Affected("Debian:12", "p", urgency="not yet assigned"))[0]
        == "UNKNOWN"
    )
    assert severity_of(record(severity=(Severity("Ubuntu", "negligible"),)))[0] == "LOW"
    assert severity_of(record()) == ("UNKNOWN", None, "")


def test_findings_are_deduplicated_per_id_package_and_path(tmp_path: Path) -> None:
    record = json.loads((DATA / "osv" / "npm" / "GHSA-whgm-jr23-g3j9.json").read_text())
    record["affected"] = record["affected"] * 2  # the same package twice in one record
    (tmp_path / "dup.json").write_text(json.dumps(record))
    db = OsvDatabase.from_paths(tmp_path)
    manifest = json.dumps({"name": "ansi-html", "version": "0.0.7"})
    report = _scan(
        db,
        [
            file("a/node_modules/ansi-html/package.json", manifest),
            file("b/node_modules/ansi-html/package.json", manifest),
        ],
    )
    assert [(f.vulnerability_id, f.path) for f in report.findings] == [
        ("GHSA-whgm-jr23-g3j9", "a/node_modules/ansi-html/package.json"),
        ("GHSA-whgm-jr23-g3j9", "b/node_modules/ansi-html/package.json"),
    ]
    assert report.counts["HIGH"] == 2
