"""Trivy's JSON reports as Finding and Package rows, and the `trivy image` command line."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from scan_svc.analysis import SEVERITIES, AnalysisError
from scan_svc.analysis.trivy import image_command, parse_report

from .layers import DATA

REPORTS = sorted((DATA / "trivy").glob("*.json"))


def test_all_five_reports_are_here() -> None:
    assert [p.name for p in REPORTS] == [
        "alpine-310.json",
        "debian-buster.json",
        "npm.json",
        "sl-micro-rancher5.4.json",
        "ubi-7-comprehensive.json",
    ]


@pytest.mark.parametrize("path", REPORTS, ids=[p.stem for p in REPORTS])
def test_rows_and_counts_equal_the_reports_own(path: Path) -> None:
    doc = json.loads(path.read_text())
    vulns = [v for r in doc.get("Results", []) for v in r.get("Vulnerabilities") or []]
    packages = [p for r in doc.get("Results", []) for p in r.get("Packages") or []]
    report = parse_report(path.read_bytes())
    expected_counts = Counter(v["Severity"] for v in vulns)
    assert report.counts == {s: expected_counts.get(s, 0) for s in SEVERITIES}
    assert [
        (
            f.vulnerability_id,
            f.package_name,
            f.installed_version,
            f.fixed_version,
            f.severity,
            f.path,
            f.layer,
            f.status,
        )
        for f in report.findings
    ] == [
        (
            v["VulnerabilityID"],
            v["PkgName"],
            v["InstalledVersion"],
            v.get("FixedVersion", ""),
            v["Severity"],
            v.get("PkgPath", ""),
            v.get("Layer", {}).get("Digest", ""),
            v["Status"],
        )
        for v in vulns
    ]
    assert [(p.name, p.version) for p in report.packages] == [
        (p["Name"], p["Version"]) for p in packages
    ]
    assert report.trivy_version == doc["Trivy"]["Version"]


def test_details_of_the_debian_and_python_reports() -> None:
    debian = parse_report((DATA / "trivy" / "debian-buster.json").read_text())
    assert debian.os is not None and (debian.os.family, debian.os.version_id) == ("debian", "10.1")
    idn = next(f for f in debian.findings if f.vulnerability_id == "CVE-2019-18224")
    assert (idn.ecosystem, idn.aliases, idn.cvss_score) == ("Debian:10", ("DSA-4613-1",), 9.8)
    assert idn.title and idn.layer.startswith("sha256:")
    ubi = parse_report((DATA / "trivy" / "ubi-7-comprehensive.json").read_text())
    setuptools = next(f for f in ubi.findings if f.package_name == "setuptools")
    assert setuptools.ecosystem == "PyPI"
    assert setuptools.path.endswith("setuptools-0.9.8-py2.7.egg-info/PKG-INFO")
    assert setuptools.fixed_version == "65.5.1"
    npm = parse_report((DATA / "trivy" / "npm.json").read_text())
    assert len(npm.packages) == 12 and npm.os is None
    assert {p.ecosystem for p in npm.packages} == {"npm"}
    clean = parse_report((DATA / "trivy" / "sl-micro-rancher5.4.json").read_text())
    assert clean.findings == () and sum(clean.counts.values()) == 0


def test_other_schema_versions_are_refused() -> None:
    with pytest.raises(AnalysisError, match="SchemaVersion 1"):
        parse_report('{"SchemaVersion": 1}')
    with pytest.raises(AnalysisError, match="not JSON"):
        parse_report(b"<html>")


def test_image_command_keeps_the_password_out_of_argv() -> None:
    cmd = image_command(
        "registry.local:7111/proj/app@sha256:" + "a" * 64,
        trivy_path="/opt/trivy",
        server="http://trivy:4954",
        username="scanner",
        password="s3cret",
        insecure=True,
        image_source="remote",
    )
    assert cmd.argv == (
        "/opt/trivy",
        "image",
        "--format",
        "json",
        "--quiet",
        "--scanners",
        "vuln",
        "--server",
        "http://trivy:4954",
        "--username",
        "scanner",
        "--insecure",
        "--image-src",
        "remote",
        "--list-all-pkgs",
        "registry.local:7111/proj/app@sha256:" + "a" * 64,
    )
    assert cmd.env == {"TRIVY_PASSWORD": "s3cret"}
    assert not any("s3cret" in arg for arg in cmd.argv)


def test_image_command_minimal_and_refusals() -> None:
    cmd = image_command("host/repo@sha256:" + "b" * 64, list_all_packages=False, comprehensive=True)
    assert cmd.argv[-3:] == (
        "--detection-priority",
        "comprehensive",
        "host/repo@sha256:" + "b" * 64,
    )
    assert "--username" not in cmd.argv and "--insecure" not in cmd.argv and cmd.env == {}
    for bad in ("", "--config=/etc/shadow"):
        with pytest.raises(AnalysisError, match="invalid image reference"):
            image_command(bad)
