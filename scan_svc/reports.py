"""Scan reports: one Parquet file of findings per scan, and the package inventory beside it,
laid out so that data tools read every report at once.

Layout under the blob storage root (ARTS_STORAGE_URL):

    scans/repository=<repository, percent-encoded>/date=<YYYY-MM-DD>/<scan id>.parquet
    scan-packages/repository=<repository, percent-encoded>/date=<YYYY-MM-DD>/<scan id>.parquet

Both trees are hive-partitioned by repository and the scan's UTC date:
`pyarrow.dataset.dataset(f"{root}/scans", partitioning="hive")` reads every report (pyarrow
decodes the percent-encoding), and so does DuckDB with
`read_parquet('<root>/scans/**/*.parquet', hive_partitioning = true)` (which keeps the
encoded value in its `repository` partition column; the plain name is in the file's own
`repository` column, which pyarrow merges with the partition's). A rescan writes a new file;
older files stay as history, and the manifest's summary in metadata_svc names the latest
(`report_path`, `scan_id`). Files appear whole: they are written under a dot-name, which
dataset readers skip, and renamed.

Findings (`scans/`), one row per vulnerability per package per file per platform:

    scan_id            string   the scan (its summary's scan_id)
    repository         string
    manifest_digest    string   the manifest scanned: an image, or an index
    platform           string   os/architecture[/variant] of the image the row is about
    platform_digest    string   that image's manifest digest (= manifest_digest for images)
    vulnerability_id   string   OSV/CVE/GHSA id as the advisory names it
    aliases            list<string>
    package_name       string   the installed (binary) package
    source_package     string   what OS advisories name (Debian source, apk origin)
    ecosystem          string   OSV ecosystem, with the release for OS packages (Debian:12)
    installed_version  string
    fixed_version      string   lowest fixed version above the installed one; "" if none
    status             string   "fixed" (a fix exists) or "affected"
    severity           string   CRITICAL, HIGH, MEDIUM, LOW, UNKNOWN
    severity_source    string   where the severity came from (cvss_v3, database, …)
    cvss_score         double   CVSS v3 base score; null when unknown
    title              string
    layer_digest       string   the layer the package's file came from
    file_path          string   that file, relative to the image root
    analyzer           string   "artifactstore-offline" or "trivy"
    analyzer_version   string
    database_version   string   the vulnerability database's import time ("" for Trivy)
    scanned_at         timestamp[us, UTC]

Packages (`scan-packages/`), one row per installed package:

    scan_id, repository, manifest_digest, platform, platform_digest   as above
    name, version, ecosystem, type (dpkg, apk, python, npm, go, …)      string
    source_name, source_version                                        string
    file_path, layer_digest                                            string
    os_owned           bool     a language package whose file an OS package owns
    os_family, os_version       string   from the image's /etc/os-release
    analyzer, analyzer_version, database_version                       string
    scanned_at         timestamp[us, UTC]
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scan_svc.analysis import Finding, OSInfo, Package
from scan_svc.storage import Storage

FINDINGS_ROOT = "scans"
PACKAGES_ROOT = "scan-packages"

_SCAN_FIELDS = [
    ("scan_id", pa.string()),
    ("repository", pa.string()),
    ("manifest_digest", pa.string()),
    ("platform", pa.string()),
    ("platform_digest", pa.string()),
]
_STAMP_FIELDS = [
    ("analyzer", pa.string()),
    ("analyzer_version", pa.string()),
    ("database_version", pa.string()),
    ("scanned_at", pa.timestamp("us", tz="UTC")),
]
FINDINGS_SCHEMA = pa.schema(
    [
        *_SCAN_FIELDS,
        ("vulnerability_id", pa.string()),
        ("aliases", pa.list_(pa.string())),
        ("package_name", pa.string()),
        ("source_package", pa.string()),
        ("ecosystem", pa.string()),
        ("installed_version", pa.string()),
        ("fixed_version", pa.string()),
        ("status", pa.string()),
        ("severity", pa.string()),
        ("severity_source", pa.string()),
        ("cvss_score", pa.float64()),
        ("title", pa.string()),
        ("layer_digest", pa.string()),
        ("file_path", pa.string()),
        *_STAMP_FIELDS,
    ]
)
PACKAGES_SCHEMA = pa.schema(
    [
        *_SCAN_FIELDS,
        ("name", pa.string()),
        ("version", pa.string()),
        ("ecosystem", pa.string()),
        ("type", pa.string()),
        ("source_name", pa.string()),
        ("source_version", pa.string()),
        ("file_path", pa.string()),
        ("layer_digest", pa.string()),
        ("os_owned", pa.bool_()),
        ("os_family", pa.string()),
        ("os_version", pa.string()),
        *_STAMP_FIELDS,
    ]
)


@dataclass(frozen=True)
class Stamp:
    """What every row of one scan's report shares."""

    scan_id: str
    repository: str
    manifest_digest: str
    analyzer: str
    analyzer_version: str
    database_version: str
    scanned_at: dt.datetime

    @property
    def date(self) -> str:
        """The partition date: the scan's UTC day."""
        return self.scanned_at.astimezone(dt.UTC).date().isoformat()


@dataclass(frozen=True)
class Paths:
    """Where a scan's two files are, relative to the storage root."""

    findings: str
    packages: str


def paths_of(stamp: Stamp) -> Paths:
    """The findings and packages files of the scan `stamp` describes."""
    partition = f"repository={quote(stamp.repository, safe='')}/date={stamp.date}"
    name = f"{stamp.scan_id}.parquet"
    return Paths(f"{FINDINGS_ROOT}/{partition}/{name}", f"{PACKAGES_ROOT}/{partition}/{name}")


def findings_table(findings: Sequence[Finding], platform: str, platform_digest: str) -> pa.Table:
    """One platform's findings as rows of FINDINGS_SCHEMA (the scan-wide columns are filled
    in by `write`)."""
    rows = [
        {
            "platform": platform,
            "platform_digest": platform_digest,
            "vulnerability_id": f.vulnerability_id,
            "aliases": list(f.aliases),
            "package_name": f.package_name,
            "source_package": f.source_name,
            "ecosystem": f.ecosystem,
            "installed_version": f.installed_version,
            "fixed_version": f.fixed_version,
            "status": f.status,
            "severity": f.severity,
            "severity_source": f.severity_source,
            "cvss_score": f.cvss_score,
            "title": f.title,
            "layer_digest": f.layer,
            "file_path": f.path,
        }
        for f in findings
    ]
    return pa.Table.from_pylist(rows, schema=FINDINGS_SCHEMA)


def packages_table(
    packages: Sequence[Package], os_info: OSInfo | None, platform: str, platform_digest: str
) -> pa.Table:
    """One platform's package inventory as rows of PACKAGES_SCHEMA."""
    rows = [
        {
            "platform": platform,
            "platform_digest": platform_digest,
            "name": p.name,
            "version": p.version,
            "ecosystem": p.ecosystem,
            "type": p.type,
            "source_name": p.source_name,
            "source_version": p.source_version,
            "file_path": p.path,
            "layer_digest": p.layer,
            "os_owned": p.os_owned,
            "os_family": os_info.family if os_info else "",
            "os_version": os_info.version_id if os_info else "",
        }
        for p in packages
    ]
    return pa.Table.from_pylist(rows, schema=PACKAGES_SCHEMA)


def _stamped(tables: Iterable[pa.Table], schema: pa.Schema, stamp: Stamp) -> pa.Table:
    table = pa.concat_tables([t.select(schema.names) for t in tables] or [schema.empty_table()])
    values = {
        "scan_id": stamp.scan_id,
        "repository": stamp.repository,
        "manifest_digest": stamp.manifest_digest,
        "analyzer": stamp.analyzer,
        "analyzer_version": stamp.analyzer_version,
        "database_version": stamp.database_version,
        "scanned_at": stamp.scanned_at,
    }
    for name, value in values.items():
        index = schema.get_field_index(name)
        column = pa.array([value] * table.num_rows, type=schema.field(name).type)
        table = table.set_column(index, schema.field(name), column)
    return table


def write(
    storage: Storage, stamp: Stamp, findings: Iterable[pa.Table], packages: Iterable[pa.Table]
) -> Paths:
    """Write a scan's findings and packages (per-platform tables, concatenated and given
    the scan-wide columns of `stamp`) as its two files; return their paths. The package
    file goes first, so a findings file never lacks its inventory."""
    paths = paths_of(stamp)
    inventory = _stamped(packages, PACKAGES_SCHEMA, stamp)
    rows = _stamped(findings, FINDINGS_SCHEMA, stamp)
    storage.write_atomically(
        paths.packages,
        lambda p: pq.write_table(inventory, p, filesystem=storage.fs, compression="zstd"),
    )
    storage.write_atomically(
        paths.findings,
        lambda p: pq.write_table(rows, p, filesystem=storage.fs, compression="zstd"),
    )
    return paths


def read(storage: Storage, path: str, scan_id: str, digest: str) -> pa.Table:
    """The rows of a report file (findings or packages) that belong to scan `scan_id` and
    are about manifest `digest`: rows of an image's own scan, or of one platform of an
    index's scan (`platform_digest`), or all of an index's rows. OSError when the file
    cannot be read."""
    table = pq.read_table(storage.path(path), filesystem=storage.fs)
    about = pc.or_(
        pc.equal(table["manifest_digest"], digest), pc.equal(table["platform_digest"], digest)
    )
    return table.filter(pc.and_(pc.equal(table["scan_id"], scan_id), about))
