"""Inventory against vulnerability database: findings.

How packages are looked up:

* dpkg packages by their **source** package and **source** version in `Debian:<VERSION_ID>`
  (Debian's advisories name source packages), reported once per binary package;
* apk packages by their origin (source) package and version in `Alpine:v<major.minor>`;
* PyPI, npm and Go packages by name and version.

OS packages of an image whose release is unknown (no os-release, or no VERSION_ID) are not
matched: advisories are scoped to a release, and comparing with another release's fixed
versions reports nonsense in both directions.

Severity of a finding, first that applies:
1. the CVSS v3 base score of the record's first CVSS_V3 vector (rated by `cvss`);
2. a severity word of the record (GHSA `database_specific.severity`: LOW, MODERATE, HIGH,
   CRITICAL) or of the affected entry;
3. the Debian urgency of the affected entry, mapped as Trivy maps the Debian Security
   Tracker's: `unimportant`, `low`, `end-of-life` → LOW; `medium` → MEDIUM; `high` → HIGH;
   `not yet assigned` and anything else → UNKNOWN (trailing `*` marks are dropped first);
   an Ubuntu-type severity score (`negligible` → LOW, and the same words otherwise);
4. UNKNOWN.

Findings are deduplicated per (vulnerability id, package name, file path).
"""

from __future__ import annotations

from dataclasses import dataclass

from .cvss import base_score, severity_of_score
from .errors import AnalysisError
from .inventory import Inventory, Package
from .osv import Affected, Record
from .osvdb import OsvDatabase

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")
_WORDS = {
    "critical": "CRITICAL",
    "high": "HIGH",
    "important": "HIGH",
    "moderate": "MEDIUM",
    "medium": "MEDIUM",
    "low": "LOW",
    "negligible": "LOW",
    "unimportant": "LOW",
    "end-of-life": "LOW",
}
_OS_TYPES = ("dpkg", "apk")


@dataclass(frozen=True)
class Finding:
    """One vulnerability in one package at one path: a row of the scan's Parquet report.

    `fixed_version` is the lowest fix above the installed version ("" when none); `status`
    is "fixed" when a fix exists, else "affected". `cvss_score` is the v3 base score when
    the record has a vector, else None. `layer` is the digest of the layer the package's
    file came from, `path` that file (image-relative).
    """

    vulnerability_id: str
    aliases: tuple[str, ...]
    package_name: str
    ecosystem: str
    installed_version: str
    fixed_version: str
    severity: str
    cvss_score: float | None
    title: str
    layer: str
    path: str
    status: str = "affected"
    source_name: str = ""
    severity_source: str = ""


def _word(text: str) -> str | None:
    return _WORDS.get(text.strip().rstrip("*").strip().lower())


def severity_of(record: Record, entry: Affected | None = None) -> tuple[str, float | None, str]:
    """(severity, CVSS v3 score or None, where the severity came from) for a record, per the
    order in the module docstring."""
    for sev in record.severity:
        if sev.type == "CVSS_V3":
            try:
                score = base_score(sev.score)
            except AnalysisError:
                continue  # a malformed vector is no severity; try the next source
            return severity_of_score(score), score, "cvss_v3"
    for text in (record.database_severity, entry.severity if entry else ""):
        word = _word(text) if text else None
        if word:
            return word, None, "database"
    if entry is not None and entry.urgency:
        return _word(entry.urgency) or "UNKNOWN", None, "urgency"
    for sev in record.severity:
        if sev.type == "Ubuntu" and _word(sev.score):
            return _word(sev.score) or "UNKNOWN", None, "ubuntu"
    return "UNKNOWN", None, ""


def _aliases(record: Record) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for alias in (*record.aliases, *record.upstream):
        if alias != record.id:
            seen.setdefault(alias, None)
    return tuple(seen)


def _query(package: Package) -> tuple[str, str, str] | None:
    if package.type in _OS_TYPES:
        if ":" not in package.ecosystem:
            return None  # release unknown: see the module docstring
        return (
            package.ecosystem,
            package.source_name or package.name,
            (package.source_version or package.version),
        )
    return package.ecosystem, package.name, package.version


def match(inventory: Inventory, db: OsvDatabase) -> list[Finding]:
    """Every finding of the inventory's packages against the database, deduplicated and
    sorted by (package, vulnerability id, path)."""
    findings: dict[tuple[str, str, str], Finding] = {}
    for package in inventory.packages:
        query = _query(package)
        if query is None:
            continue
        for hit in db.affected(*query):
            key = (hit.record.id, package.name, package.path)
            if key in findings:
                continue
            severity, score, source = severity_of(hit.record, hit.affected)
            findings[key] = Finding(
                vulnerability_id=hit.record.id,
                aliases=_aliases(hit.record),
                package_name=package.name,
                ecosystem=package.ecosystem,
                installed_version=package.version,
                fixed_version=hit.fixed_version,
                severity=severity,
                cvss_score=score,
                title=hit.record.title,
                layer=package.layer,
                path=package.path,
                status="fixed" if hit.fixed_version else "affected",
                source_name=package.source_name,
                severity_source=source,
            )
    return sorted(findings.values(), key=lambda f: (f.package_name, f.vulnerability_id, f.path))


def count_by_severity(findings: list[Finding] | tuple[Finding, ...]) -> dict[str, int]:
    """Findings per severity, every severity present (zero when none), CRITICAL first."""
    counts = dict.fromkeys(SEVERITIES, 0)
    for finding in findings:
        counts[finding.severity if finding.severity in counts else "UNKNOWN"] += 1
    return counts
