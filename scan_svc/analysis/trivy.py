"""Trivy as an analyzer: the command line for scanning a registry image, and its JSON report
(`--format json`, SchemaVersion 2) turned into this library's Finding and Package rows.

Mapping of a Trivy vulnerability to a Finding: `VulnerabilityID` → id, `VendorIDs` →
aliases, `PkgName`, `InstalledVersion`, `FixedVersion` ("" when absent; Trivy may list
several, comma-separated, kept as written), `Severity`, the V3 score of the CVSS source
Trivy took the severity from (else NVD's, else any), `Title` or the first line of
`Description`, `Layer.Digest`, `PkgPath` ("" for OS packages, whose file Trivy does not
name), and `Status`. The ecosystem is the OSV name of the result's `Type`, scoped to the
OS release for OS packages (`Debian:10`, `Alpine:v3.10`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import AnalysisError
from .inventory import OSInfo, Package, os_ecosystem
from .match import Finding, count_by_severity

# Trivy result types → OSV ecosystems (Trivy's analyzer types; others keep Trivy's name).
_ECOSYSTEMS = {
    "debian": "Debian",
    "ubuntu": "Ubuntu",
    "alpine": "Alpine",
    "redhat": "Red Hat",
    "centos": "CentOS",
    "rocky": "Rocky Linux",
    "alma": "AlmaLinux",
    "amazon": "Amazon Linux",
    "oracle": "Oracle Linux",
    "photon": "Photon OS",
    "suse linux enterprise server": "SUSE",
    "slem": "SUSE",
    "opensuse.leap": "openSUSE",
    "wolfi": "Wolfi",
    "chainguard": "Chainguard",
    "python-pkg": "PyPI",
    "pip": "PyPI",
    "pipenv": "PyPI",
    "poetry": "PyPI",
    "uv": "PyPI",
    "npm": "npm",
    "yarn": "npm",
    "pnpm": "npm",
    "node-pkg": "npm",
    "bun": "npm",
    "gomod": "Go",
    "gobinary": "Go",
    "jar": "Maven",
    "pom": "Maven",
    "gradle": "Maven",
    "cargo": "crates.io",
    "rustbinary": "crates.io",
    "composer": "Packagist",
    "bundler": "RubyGems",
    "gemspec": "RubyGems",
    "nuget": "NuGet",
    "dotnet-core": "NuGet",
    "conan": "ConanCenter",
    "pub": "Pub",
    "hex": "Hex",
    "swift": "SwiftURL",
    "cocoapods": "CocoaPods",
}


@dataclass(frozen=True)
class TrivyCommand:
    """A command to run: argv (no secrets in it) and extra environment variables."""

    argv: tuple[str, ...]
    env: dict[str, str]


def image_command(
    image: str,
    *,
    trivy_path: str = "trivy",
    server: str = "",
    username: str = "",
    password: str = "",
    insecure: bool = False,
    image_source: str = "",
    list_all_packages: bool = True,
    comprehensive: bool = False,
    timeout_seconds: int = 0,
) -> TrivyCommand:
    """The `trivy image` invocation for a registry image (`host/repo@sha256:…`).

    With `server`, Trivy runs in client mode against that Trivy server. `image_source`
    ("remote" for a registry) stops Trivy from looking for the image in a local Docker,
    containerd or Podman first. The password goes in
    the environment (`TRIVY_PASSWORD`), never in argv, where any local user could read it
    in the process list. `list_all_packages` adds `--list-all-pkgs` so the report carries the
    package inventory. Raises AnalysisError for an empty image reference or one starting with
    `-` (it would be read as an option).
    """
    if not image or image.startswith("-"):
        raise AnalysisError(f"invalid image reference for trivy: {image!r}")
    argv = [trivy_path, "image", "--format", "json", "--quiet", "--scanners", "vuln"]
    if server:
        argv += ["--server", server]
    if username:
        argv += ["--username", username]
    if insecure:
        argv.append("--insecure")
    if image_source:
        argv += ["--image-src", image_source]
    if list_all_packages:
        argv.append("--list-all-pkgs")
    if comprehensive:
        argv += ["--detection-priority", "comprehensive"]
    if timeout_seconds:
        argv += ["--timeout", f"{timeout_seconds}s"]
    argv.append(image)
    env = {"TRIVY_PASSWORD": password} if password else {}
    return TrivyCommand(tuple(argv), env)


@dataclass(frozen=True)
class TrivyReport:
    """A Trivy report in this library's terms."""

    artifact_name: str
    trivy_version: str
    os: OSInfo | None
    findings: tuple[Finding, ...]
    packages: tuple[Package, ...]
    counts: dict[str, int]


def _ecosystem(result_type: str, os_info: OSInfo | None, result_class: str) -> str:
    base = _ECOSYSTEMS.get(result_type, result_type)
    if result_class != "os-pkgs" or os_info is None or not os_info.version_id:
        return base
    if base in ("Debian", "Ubuntu", "Alpine"):
        return os_ecosystem(OSInfo(base.lower(), _release(os_info)))
    return f"{base}:{os_info.version_id}"


def _release(os_info: OSInfo) -> str:
    """Trivy names Debian by its point release (`10.1`, from /etc/debian_version); Debian's
    advisories are scoped by the major version. os_ecosystem cuts Alpine's itself."""
    if os_info.family == "debian":
        return os_info.version_id.split(".")[0]
    return os_info.version_id


def _score(vuln: dict[str, Any]) -> float | None:
    cvss = vuln.get("CVSS")
    if not isinstance(cvss, dict):
        return None
    for source in (vuln.get("SeveritySource"), "nvd", *cvss):
        entry = cvss.get(source) if isinstance(source, str) else None
        if isinstance(entry, dict) and isinstance(entry.get("V3Score"), int | float):
            return float(entry["V3Score"])
    return None


def _title(vuln: dict[str, Any]) -> str:
    title = vuln.get("Title")
    if isinstance(title, str) and title:
        return title
    description = vuln.get("Description")
    return description.strip().split("\n", 1)[0] if isinstance(description, str) else ""


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_report(data: bytes | str | dict[str, Any]) -> TrivyReport:
    """Read a Trivy JSON report (SchemaVersion 2). Raises AnalysisError for other schema
    versions and for JSON that is not such a report."""
    try:
        doc = json.loads(data) if isinstance(data, bytes | str) else data
    except ValueError as exc:
        raise AnalysisError(f"trivy report is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("SchemaVersion") != 2:
        version = doc.get("SchemaVersion") if isinstance(doc, dict) else None
        raise AnalysisError(f"unsupported trivy report (SchemaVersion {version!r}, expected 2)")
    os_meta = _obj(_obj(doc.get("Metadata")).get("OS"))
    os_info = (
        OSInfo(str(os_meta.get("Family", "")).lower(), str(os_meta.get("Name", "")))
        if os_meta
        else None
    )
    findings: list[Finding] = []
    packages: list[Package] = []
    for result in doc.get("Results") or ():
        if not isinstance(result, dict):
            raise AnalysisError("trivy report: a result is not an object")
        ecosystem = _ecosystem(str(result.get("Type", "")), os_info, str(result.get("Class", "")))
        for vuln in result.get("Vulnerabilities") or ():
            layer = _obj(vuln.get("Layer"))
            fixed = str(vuln.get("FixedVersion") or "")
            findings.append(
                Finding(
                    vulnerability_id=str(vuln.get("VulnerabilityID", "")),
                    aliases=tuple(str(v) for v in vuln.get("VendorIDs") or ()),
                    package_name=str(vuln.get("PkgName", "")),
                    ecosystem=ecosystem,
                    installed_version=str(vuln.get("InstalledVersion", "")),
                    fixed_version=fixed,
                    severity=str(vuln.get("Severity") or "UNKNOWN"),
                    cvss_score=_score(vuln),
                    title=_title(vuln),
                    layer=str(layer.get("Digest", "")),
                    path=str(vuln.get("PkgPath", "")),
                    status=str(vuln.get("Status") or ("fixed" if fixed else "affected")),
                    severity_source=str(vuln.get("SeveritySource", "")),
                )
            )
        for pkg in result.get("Packages") or ():
            layer = _obj(pkg.get("Layer"))
            packages.append(
                Package(
                    name=str(pkg.get("Name", "")),
                    version=str(pkg.get("Version", "")),
                    ecosystem=ecosystem,
                    type=str(result.get("Type", "")),
                    path=str(pkg.get("FilePath") or result.get("Target", "")),
                    layer=str(layer.get("Digest", "")),
                    source_name=str(pkg.get("SrcName", "")),
                    source_version=str(pkg.get("SrcVersion", "")),
                )
            )
    trivy = _obj(doc.get("Trivy"))
    return TrivyReport(
        artifact_name=str(doc.get("ArtifactName", "")),
        trivy_version=str(trivy.get("Version", "")),
        os=os_info,
        findings=tuple(findings),
        packages=tuple(packages),
        counts=count_by_severity(findings),
    )
