"""What the services agree on about vulnerability scanning: severities and their order,
how counts are grouped for people, the scan queue's deduplication key, the scanner's
identity, the pull policy's decision, and how results are shown (API and CLI).

The gateway enforces a project's scan policy, metadata_svc stores it, scan_svc produces
the statistics it is decided on; each imports the rules from here so they cannot drift.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from artifactstore import access
from artifactstore.errors import Reason, RegistryError
from artifactstore.metadata.v1 import scans_pb2
from artifactstore.scan.v1 import scan_pb2

# Highest first. UNKNOWN ranks lowest: a policy blocking at UNKNOWN blocks every finding.
SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")

# The groups the product shows statistics in, each with the severities it adds up.
GROUPS = {
    "Critical": ("CRITICAL",),
    "Medium/High": ("HIGH", "MEDIUM"),
    "Low/Unknown": ("LOW", "UNKNOWN"),
}

# The system project and the service account scan_svc creates there on its first start and
# pulls images with (viewer at the root scope). A project name is unique in the registry
# and an account name unique in its project, so the email's local part and project name
# identify the account whatever the IAM service's email domain is.
SCANNER_PROJECT = "artifact-store"
SCANNER_ACCOUNT = "scanner"


def is_scanner(principal: str) -> bool:
    """Whether `principal` is scan_svc's service account (which the pull policy exempts:
    it must pull an image to rescan it)."""
    prefix = f"{access.SERVICE_ACCOUNT_PREFIX}{SCANNER_ACCOUNT}@{SCANNER_PROJECT}."
    return principal.startswith(prefix)


def parse_severity(text: str) -> str:
    """`text` as one of SEVERITIES (case-insensitive); SEVERITY_INVALID otherwise."""
    severity = text.strip().upper()
    if severity not in SEVERITIES:
        raise RegistryError(
            Reason.SEVERITY_INVALID,
            f"unknown severity {text[:40]!r}: expected one of {', '.join(SEVERITIES)}",
        )
    return severity


def parse_severities(values: Iterable[str]) -> frozenset[str]:
    """Severities named in `values`, each possibly a comma-separated list (the HTTP query
    form `severity=HIGH,CRITICAL`); empty when none are named."""
    return frozenset(
        parse_severity(part) for value in values for part in value.split(",") if part.strip()
    )


def at_or_above(threshold: str) -> tuple[str, ...]:
    """The severities ranked at or above `threshold` (which must be one of SEVERITIES)."""
    return SEVERITIES[: SEVERITIES.index(threshold) + 1]


def grouped(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts per severity (upper-case keys, missing ones 0) added up per GROUPS."""
    return {group: sum(counts.get(s, 0) for s in members) for group, members in GROUPS.items()}


def dedup_key(repository: str, digest: str) -> str:
    """The scan queue's deduplication key of a manifest: one pending scan per manifest."""
    return f"{repository}@{digest}"


def pull_denial(project: str, block_severity: str, counts: Mapping[str, int]) -> str | None:
    """The DENIED message when `project`'s policy (block at `block_severity`; "" is off)
    refuses a manifest whose latest scan counted `counts` (upper-case severity keys); None
    when the pull may go ahead. Unscanned manifests (no counts) are not refused."""
    if not block_severity:
        return None
    blocking = [(s, counts.get(s, 0)) for s in at_or_above(block_severity)]
    if not any(n for _, n in blocking):
        return None
    found = ", ".join(f"{n} {s.lower()}" for s, n in blocking if n)
    return (
        f"the scan policy of project {project} refuses images with {block_severity} or higher "
        f"vulnerabilities; this one has {found}"
    )


def _status_name(status: scans_pb2.ScanStatus.ValueType) -> str:
    name = scans_pb2.ScanStatus.Name(status).removeprefix("SCAN_STATUS_").lower()
    return "not_scanned" if name == "unspecified" else name


def _counts(message: scans_pb2.SeverityCounts) -> dict[str, int]:
    return {s: getattr(message, s.lower()) for s in SEVERITIES}


def _time(seconds: float) -> str | None:
    if not seconds:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def summary_to_dict(summary: scans_pb2.ScanSummary) -> dict[str, Any]:
    """A scan summary as the API and the CLI show it: status as a word (`not_scanned`,
    `succeeded`, `error`, `unsupported`), counts per severity and per GROUPS, times in
    RFC 3339."""
    counts = _counts(summary.counts)
    return {
        "status": _status_name(summary.status),
        "queued": summary.queued,
        "counts": {s.lower(): n for s, n in counts.items()},
        "grouped": grouped(counts),
        "scanned_at": _time(summary.scanned_at),
        "scan_id": summary.scan_id,
        "analyzer": summary.analyzer,
        "analyzer_version": summary.analyzer_version,
        "database_version": summary.database_version,
        "report_path": summary.report_path,
        "packages_path": summary.packages_path,
        "message": summary.message,
        "attempt": summary.attempt,
        "platforms": [
            {
                "platform": p.platform,
                "digest": p.digest,
                "status": _status_name(p.status),
                "counts": {s.lower(): n for s, n in _counts(p.counts).items()},
                "message": p.message,
            }
            for p in summary.platforms
        ],
    }


def finding_to_dict(finding: scan_pb2.Finding) -> dict[str, Any]:
    """A finding as the API and the CLI show it."""
    return {
        "vulnerability_id": finding.vulnerability_id,
        "aliases": list(finding.aliases),
        "package": finding.package_name,
        "source_package": finding.source_package,
        "ecosystem": finding.ecosystem,
        "installed_version": finding.installed_version,
        "fixed_version": finding.fixed_version,
        "status": finding.status,
        "severity": finding.severity,
        "cvss_score": finding.cvss_score if finding.HasField("cvss_score") else None,
        "title": finding.title,
        "platform": finding.platform,
        "platform_digest": finding.platform_digest,
        "layer_digest": finding.layer_digest,
        "file_path": finding.file_path,
    }
