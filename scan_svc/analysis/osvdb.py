"""The offline vulnerability database: OSV records indexed for matching, kept as Parquet.

Layout of a saved database (a folder, local or on any `pyarrow.fs` filesystem):

    <path>/records.parquet   one row per record; `affected` nested (ranges, events, versions)
    <path>/sources.parquet   one row per imported file: path, kind, records, withdrawn,
                             sha256, imported_at

`records.parquet` carries the format version and the database's import time in its schema
metadata. The import time is the database's version: findings report it so a reader knows
how fresh the advisories behind them were.

When two inputs hold the same record id (pypa's YAML and osv.dev's JSON of one advisory),
the one with the later `modified` wins, and on a tie the one imported last.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import osv
from .errors import AnalysisError
from .osv import Affected, Event, Range, Record, Severity, normalize_name
from .ranges import evaluate

FORMAT_VERSION = "1"
_META_FORMAT = b"artifactstore.osvdb.format"
_META_IMPORTED = b"artifactstore.osvdb.imported_at"

_EVENT = pa.struct([("kind", pa.string()), ("value", pa.string())])
_RANGE = pa.struct([("type", pa.string()), ("events", pa.list_(_EVENT))])
_AFFECTED = pa.struct(
    [
        ("ecosystem", pa.string()),
        ("package", pa.string()),
        ("purl", pa.string()),
        ("severity", pa.string()),
        ("urgency", pa.string()),
        ("versions", pa.list_(pa.string())),
        ("ranges", pa.list_(_RANGE)),
    ]
)
RECORDS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("modified", pa.string()),
        ("published", pa.string()),
        ("aliases", pa.list_(pa.string())),
        ("upstream", pa.list_(pa.string())),
        ("summary", pa.string()),
        ("details", pa.string()),
        ("severity", pa.list_(pa.struct([("type", pa.string()), ("score", pa.string())]))),
        ("database_severity", pa.string()),
        ("affected", pa.list_(_AFFECTED)),
    ]
)
SOURCES_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("kind", pa.string()),
        ("records", pa.int64()),
        ("withdrawn", pa.int64()),
        ("sha256", pa.string()),
        ("imported_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class Source:
    """One imported input file and what it contributed."""

    path: str
    kind: str
    records: int
    withdrawn: int
    sha256: str
    imported_at: dt.datetime


@dataclass(frozen=True)
class Match:
    """A record whose affected entry covers the version asked about."""

    record: Record
    affected: Affected
    fixed_version: str


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse_modified(text: str) -> dt.datetime:
    """`modified` as a datetime for "newer wins"; unparseable or empty sorts oldest."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class OsvDatabase:
    """OSV records indexed by (ecosystem without release, normalised package name).

    Build one with `from_paths`, `import_path` or `add`; persist with `save` / `load`.
    Not thread-safe while importing; lookups on a finished database are read-only.
    """

    def __init__(self, imported_at: dt.datetime | None = None) -> None:
        self._records: dict[str, Record] = {}
        self._sources: list[Source] = []
        self._imported_at = imported_at
        self._index: dict[tuple[str, str], list[tuple[Record, Affected]]] | None = None

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_paths(
        cls, *paths: str | os.PathLike[str], imported_at: dt.datetime | None = None
    ) -> OsvDatabase:
        """A database of every record in the given files and folders (see `osv.read_path`).

        `imported_at` defaults to now (UTC). Raises AnalysisError on unreadable input.
        """
        db = cls()
        for path in paths:
            db.import_path(path, imported_at=imported_at)
        return db

    def import_path(
        self, path: str | os.PathLike[str], imported_at: dt.datetime | None = None
    ) -> int:
        """Import a file (JSON, YAML, osv.dev zip) or a folder of them; returns how many
        records were read. Records the import time and each file as a source."""
        when = imported_at or _utcnow()
        count = 0
        for read in osv.read_path(path):
            self.add(read.records)
            self._sources.append(
                Source(read.path, read.kind, len(read.records), read.withdrawn, read.sha256, when)
            )
            count += len(read.records)
        self._imported_at = when
        return count

    def add(self, records: Iterable[Record]) -> None:
        """Add records; a record replaces one of the same id unless that one is newer."""
        for record in records:
            old = self._records.get(record.id)
            if old is None or _parse_modified(record.modified) >= _parse_modified(old.modified):
                self._records[record.id] = record
        self._index = None

    # -- reading ----------------------------------------------------------------------------

    @property
    def imported_at(self) -> dt.datetime | None:
        """When the records were imported (the latest import); None for an empty database."""
        return self._imported_at

    @property
    def version(self) -> str:
        """The database version reported with findings: the import time in RFC 3339."""
        return self._imported_at.isoformat() if self._imported_at else ""

    @property
    def sources(self) -> tuple[Source, ...]:
        """Every imported file, in import order."""
        return tuple(self._sources)

    @property
    def records(self) -> list[Record]:
        """All records, sorted by id."""
        return [self._records[k] for k in sorted(self._records)]

    def get(self, record_id: str) -> Record | None:
        """The record with this id, if imported."""
        return self._records.get(record_id)

    def __len__(self) -> int:
        return len(self._records)

    def _build_index(self) -> dict[tuple[str, str], list[tuple[Record, Affected]]]:
        index: dict[tuple[str, str], list[tuple[Record, Affected]]] = {}
        for rid in sorted(self._records):
            record = self._records[rid]
            for entry in record.affected:
                index.setdefault((entry.ecosystem_base, entry.key), []).append((record, entry))
        return index

    def candidates(self, ecosystem: str, package: str) -> list[tuple[Record, Affected]]:
        """The (record, affected entry) pairs naming this package in this ecosystem.

        `ecosystem` may carry a release (`Debian:12`): then only entries of that release,
        and entries without a release, are returned; a release qualified further in the
        record (osv.dev's `Ubuntu:22.04:LTS`) counts as that release (`Ubuntu:22.04`).
        Without a release every entry of the ecosystem is returned.
        """
        if self._index is None:
            self._index = self._build_index()
        base, _, release = ecosystem.partition(":")
        found = self._index.get((base, normalize_name(base, package)), [])
        if not release:
            return list(found)
        return [(r, a) for r, a in found if _same_release(a.release, release)]

    def affected(self, ecosystem: str, package: str, version: str) -> list[Match]:
        """Every record affecting `version` of `package` in `ecosystem` (see `candidates` for
        the release scoping, `ranges.evaluate` for the range rules), in record-id order."""
        matches = []
        for record, entry in self.candidates(ecosystem, package):
            verdict = evaluate(version, entry)
            if verdict.affected:
                matches.append(Match(record, entry, verdict.fixed_version))
        return matches

    # -- persistence ------------------------------------------------------------------------

    def save(self, path: str, filesystem: pafs.FileSystem | None = None) -> None:
        """Write the database as Parquet under the folder `path` of `filesystem` (local disk
        when None), replacing a database saved there before. Sources go first and records
        last, so a reader never sees records without their sources' description."""
        fs, root = _resolve(path, filesystem)
        fs.create_dir(root, recursive=True)
        sources = pa.Table.from_pylist(
            [
                {
                    "path": s.path,
                    "kind": s.kind,
                    "records": s.records,
                    "withdrawn": s.withdrawn,
                    "sha256": s.sha256,
                    "imported_at": s.imported_at,
                }
                for s in self._sources
            ],
            schema=SOURCES_SCHEMA,
        )
        pq.write_table(sources, f"{root}/sources.parquet", filesystem=fs)
        meta = {_META_FORMAT: FORMAT_VERSION.encode(), _META_IMPORTED: self.version.encode()}
        records = pa.Table.from_pylist(
            [_record_row(r) for r in self.records], schema=RECORDS_SCHEMA.with_metadata(meta)
        )
        pq.write_table(records, f"{root}/records.parquet", filesystem=fs, compression="zstd")

    @classmethod
    def load(cls, path: str, filesystem: pafs.FileSystem | None = None) -> OsvDatabase:
        """Read a database written by `save`. Raises AnalysisError when it is missing, of
        another format version, or not readable as Parquet."""
        fs, root = _resolve(path, filesystem)
        try:
            records = pq.read_table(f"{root}/records.parquet", filesystem=fs)
            sources = pq.read_table(f"{root}/sources.parquet", filesystem=fs)
        except (OSError, pa.ArrowException) as exc:
            raise AnalysisError(f"cannot read the vulnerability database at {path}: {exc}") from exc
        meta = records.schema.metadata or {}
        if meta.get(_META_FORMAT) != FORMAT_VERSION.encode():
            raise AnalysisError(
                f"vulnerability database at {path} has format {meta.get(_META_FORMAT)!r}, "
                f"this analyzer reads {FORMAT_VERSION!r}"
            )
        imported = meta.get(_META_IMPORTED, b"").decode()
        db = cls(dt.datetime.fromisoformat(imported) if imported else None)
        db.add(_row_record(row) for row in records.to_pylist())
        db._sources = [Source(**row) for row in sources.to_pylist()]
        return db


def _same_release(entry_release: str, release: str) -> bool:
    return entry_release in ("", release) or entry_release.startswith(release + ":")


def _resolve(path: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _record_row(record: Record) -> dict[str, Any]:
    return {
        "id": record.id,
        "modified": record.modified,
        "published": record.published,
        "aliases": list(record.aliases),
        "upstream": list(record.upstream),
        "summary": record.summary,
        "details": record.details,
        "severity": [{"type": s.type, "score": s.score} for s in record.severity],
        "database_severity": record.database_severity,
        "affected": [
            {
                "ecosystem": a.ecosystem,
                "package": a.package,
                "purl": a.purl,
                "severity": a.severity,
                "urgency": a.urgency,
                "versions": list(a.versions),
                "ranges": [
                    {
                        "type": r.type,
                        "events": [{"kind": e.kind, "value": e.value} for e in r.events],
                    }
                    for r in a.ranges
                ],
            }
            for a in record.affected
        ],
    }


def _row_record(row: dict[str, Any]) -> Record:
    return Record(
        id=row["id"],
        modified=row["modified"] or "",
        published=row["published"] or "",
        aliases=tuple(row["aliases"] or ()),
        upstream=tuple(row["upstream"] or ()),
        summary=row["summary"] or "",
        details=row["details"] or "",
        severity=tuple(Severity(s["type"], s["score"]) for s in row["severity"] or ()),
        database_severity=row["database_severity"] or "",
        affected=tuple(
            Affected(
                ecosystem=a["ecosystem"],
                package=a["package"],
                purl=a["purl"] or "",
                severity=a["severity"] or "",
                urgency=a["urgency"] or "",
                versions=tuple(a["versions"] or ()),
                ranges=tuple(
                    Range(r["type"], tuple(Event(e["kind"], e["value"]) for e in r["events"]))
                    for r in a["ranges"] or ()
                ),
            )
            for a in row["affected"] or ()
        ),
    )


__all__ = ["Match", "OsvDatabase", "Source", "normalize_name"]
