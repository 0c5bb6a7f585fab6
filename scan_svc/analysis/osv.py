"""OSV records: the parts a scanner needs, and readers for the forms they are published in.

Forms read (https://ossf.github.io/osv-schema/ and osv.dev's bulk export):

* one JSON file holding a record, a list of records or an API answer `{"vulns": [...]}`;
* one YAML file of the same shapes (pypa/advisory-database);
* an osv.dev `all.zip`: flat `<ID>.json` entries, compact JSON, one record each;
* a folder holding any of these, searched recursively.

What a record keeps: id, aliases, upstream, published, modified, summary, details, the
`severity` vectors, the GHSA-style `database_specific.severity`, and per `affected[]` entry
the ecosystem with its release suffix (`Debian:12`), the package name (PyPI names PEP 503
normalised in `key`), purl, the ECOSYSTEM and SEMVER ranges (GIT ranges hold commit hashes,
not versions, and are dropped), the explicit `versions`, and the entry's own severity or
Debian urgency. Withdrawn records are skipped by the readers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import AnalysisError

EVENT_KINDS = ("introduced", "fixed", "last_affected", "limit")
VERSION_RANGE_TYPES = ("ECOSYSTEM", "SEMVER")


def normalize_name(ecosystem: str, name: str) -> str:
    """The lookup key of a package name: PEP 503 for PyPI (`PyJWT` → `pyjwt`, `zc.lockfile`
    → `zc-lockfile`), the name itself elsewhere (Go module paths are case-sensitive)."""
    if ecosystem.split(":", 1)[0] == "PyPI":
        return re.sub(r"[-_.]+", "-", name).lower()
    return name


@dataclass(frozen=True)
class Event:
    """One range event: `kind` is introduced, fixed, last_affected or limit."""

    kind: str
    value: str


@dataclass(frozen=True)
class Range:
    """An ECOSYSTEM or SEMVER range: its events in the record's order."""

    type: str
    events: tuple[Event, ...]


@dataclass(frozen=True)
class Affected:
    """One `affected[]` entry of a record."""

    ecosystem: str
    package: str
    purl: str = ""
    ranges: tuple[Range, ...] = ()
    versions: tuple[str, ...] = ()
    severity: str = ""
    urgency: str = ""

    @property
    def ecosystem_base(self) -> str:
        """The ecosystem without its release suffix (`Debian:12` → `Debian`)."""
        return self.ecosystem.split(":", 1)[0]

    @property
    def release(self) -> str:
        """The release suffix (`Debian:12` → `12`), empty when the entry is unscoped."""
        return self.ecosystem.partition(":")[2]

    @property
    def key(self) -> str:
        """The normalised package name the database indexes this entry by."""
        return normalize_name(self.ecosystem, self.package)


@dataclass(frozen=True)
class Severity:
    """A `severity[]` entry: type (CVSS_V3, CVSS_V4, Ubuntu, …) and its score text."""

    type: str
    score: str


@dataclass(frozen=True)
class Record:
    """An OSV vulnerability record, reduced to what scanning and reporting need."""

    id: str
    modified: str
    aliases: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    published: str = ""
    summary: str = ""
    details: str = ""
    severity: tuple[Severity, ...] = ()
    database_severity: str = ""
    affected: tuple[Affected, ...] = field(default=())

    @property
    def title(self) -> str:
        """The summary, or else the first line of the details."""
        if self.summary:
            return self.summary
        return self.details.strip().split("\n", 1)[0] if self.details else ""


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AnalysisError(f"{where}: expected a list of strings")
    return tuple(value)


def _text(value: Any) -> str:
    """A scalar field as text; YAML may hand over numbers (`versions: [0.10]` unquoted)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _specific_severity(entry: dict[str, Any]) -> tuple[str, str]:
    """(severity, urgency) from an affected entry's ecosystem_specific / database_specific."""
    severity = urgency = ""
    for block_name in ("ecosystem_specific", "database_specific"):
        block = entry.get(block_name)
        if not isinstance(block, dict):
            continue
        if not severity and isinstance(block.get("severity"), str):
            severity = block["severity"]
        if not urgency and isinstance(block.get("urgency"), str):
            urgency = block["urgency"]
    return severity, urgency


def _parse_affected(entry: Any, where: str) -> Affected | None:
    if not isinstance(entry, dict):
        raise AnalysisError(f"{where}: affected entry is not an object")
    package = entry.get("package")
    if not isinstance(package, dict):
        # Entries without a package describe only GIT commits; nothing to match by version.
        return None
    ecosystem, name = package.get("ecosystem"), package.get("name")
    if not isinstance(ecosystem, str) or not isinstance(name, str) or not ecosystem or not name:
        raise AnalysisError(f"{where}: affected package lacks an ecosystem or a name")
    ranges: list[Range] = []
    for raw in entry.get("ranges") or ():
        if not isinstance(raw, dict) or not isinstance(raw.get("events"), list):
            raise AnalysisError(f"{where}: malformed range in {name}")
        if raw.get("type") not in VERSION_RANGE_TYPES:
            continue
        events: list[Event] = []
        for event in raw["events"]:
            if not isinstance(event, dict) or len(event) != 1:
                raise AnalysisError(f"{where}: malformed range event {event!r}")
            ((kind, value),) = event.items()
            if kind not in EVENT_KINDS:
                raise AnalysisError(f"{where}: unknown range event {kind!r}")
            events.append(Event(kind, _text(value)))
        ranges.append(Range(raw["type"], tuple(events)))
    versions = tuple(_text(v) for v in entry.get("versions") or ())
    severity, urgency = _specific_severity(entry)
    return Affected(
        ecosystem=ecosystem,
        package=name,
        purl=_text(package.get("purl")),
        ranges=tuple(ranges),
        versions=versions,
        severity=severity,
        urgency=urgency,
    )


def is_record(data: Any) -> bool:
    """True for a mapping that looks like an OSV record: a string `id` plus `modified` or
    `affected` (other JSON in a folder, such as the OSV schema itself, has neither)."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("id"), str)
        and ("modified" in data or "affected" in data)
    )


def parse_record(data: Any, where: str = "record") -> Record | None:
    """Turn one decoded OSV record into a Record; None when it is withdrawn.

    `where` names the input in error messages. Raises AnalysisError when the mapping is not
    a well-formed record.
    """
    if not is_record(data):
        raise AnalysisError(f"{where}: not an OSV record (no id, modified or affected)")
    rid: str = data["id"]
    where = f"{where}: {rid}"
    if data.get("withdrawn"):
        return None
    severities: list[Severity] = []
    for sev in data.get("severity") or ():
        if isinstance(sev, dict) and isinstance(sev.get("type"), str):
            severities.append(Severity(sev["type"], _text(sev.get("score"))))
    db_specific = data.get("database_specific")
    db_severity = ""
    if isinstance(db_specific, dict) and isinstance(db_specific.get("severity"), str):
        db_severity = db_specific["severity"]
    affected = []
    for entry in data.get("affected") or ():
        parsed = _parse_affected(entry, where)
        if parsed is not None:
            affected.append(parsed)
    return Record(
        id=rid,
        modified=_text(data.get("modified")),
        aliases=_strings(data.get("aliases"), f"{where}: aliases"),
        upstream=_strings(data.get("upstream"), f"{where}: upstream"),
        published=_text(data.get("published")),
        summary=_text(data.get("summary")),
        details=_text(data.get("details")),
        severity=tuple(severities),
        database_severity=db_severity,
        affected=tuple(affected),
    )


class _StringTimestampLoader(yaml.SafeLoader):
    """A safe YAML loader that leaves timestamps as strings.

    pypa/advisory-database writes some `modified:` values unquoted; the default resolver
    turns them into datetime objects, which are not OSV (the schema wants RFC 3339 text)."""


_StringTimestampLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _documents(data: Any) -> Iterator[Any]:
    """The record candidates in one decoded file: a record, a list, or `{"vulns": [...]}`."""
    if isinstance(data, list):
        yield from data
    elif isinstance(data, dict) and "id" not in data and isinstance(data.get("vulns"), list):
        yield from data["vulns"]
    else:
        yield data


@dataclass(frozen=True)
class SourceRead:
    """What one input file yielded: its records, how many were withdrawn, its sha256."""

    path: str
    kind: str
    sha256: str
    records: tuple[Record, ...]
    withdrawn: int


def _decode(raw: bytes, kind: str, where: str) -> Any:
    try:
        if kind == "yaml":
            return yaml.load(raw, Loader=_StringTimestampLoader)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise AnalysisError(f"{where}: cannot decode {kind}: {exc}") from exc


def _records_of(data: Any, where: str) -> tuple[list[Record], int]:
    records: list[Record] = []
    withdrawn = 0
    for doc in _documents(data):
        if not is_record(doc):
            # A folder may hold other JSON (the OSV schema itself, manifests): not records.
            continue
        record = parse_record(doc, where)
        if record is None:
            withdrawn += 1
        else:
            records.append(record)
    return records, withdrawn


def read_file(path: str | os.PathLike[str]) -> SourceRead:
    """Read one `.json`, `.yaml`/`.yml` or `.zip` file of OSV records.

    Raises AnalysisError for unreadable or undecodable input and malformed records.
    """
    where = os.fspath(path)
    suffix = Path(where).suffix.lower()
    if suffix == ".zip":
        return read_zip(where)
    kind = "yaml" if suffix in (".yaml", ".yml") else "json"
    try:
        raw = Path(where).read_bytes()
    except OSError as exc:
        raise AnalysisError(f"{where}: cannot read: {exc.strerror}") from exc
    records, withdrawn = _records_of(_decode(raw, kind, where), where)
    return SourceRead(where, kind, hashlib.sha256(raw).hexdigest(), tuple(records), withdrawn)


def read_zip(path: str | os.PathLike[str]) -> SourceRead:
    """Read an osv.dev bulk export (`<ECOSYSTEM>/all.zip`): every `*.json` entry is a record.

    Raises AnalysisError for a file that is not a zip or an entry that is not a record.
    """
    where = os.fspath(path)
    digest = hashlib.sha256()
    try:
        with open(where, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        records: list[Record] = []
        withdrawn = 0
        with zipfile.ZipFile(where) as archive:
            for info in archive.infolist():
                if info.is_dir() or not info.filename.endswith(".json"):
                    continue
                entry_where = f"{where}!{info.filename}"
                data = _decode(archive.read(info), "json", entry_where)
                found, gone = _records_of(data, entry_where)
                records.extend(found)
                withdrawn += gone
    except (OSError, zipfile.BadZipFile) as exc:
        raise AnalysisError(f"{where}: cannot read zip: {exc}") from exc
    return SourceRead(where, "zip", digest.hexdigest(), tuple(records), withdrawn)


def read_path(path: str | os.PathLike[str]) -> list[SourceRead]:
    """Read a file, or every `.json`/`.yaml`/`.yml`/`.zip` file under a folder (recursively,
    in sorted order so imports are reproducible)."""
    root = Path(path)
    if root.is_dir():
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in (".json", ".yaml", ".yml", ".zip")
        )
        return [read_file(p) for p in files]
    if not root.exists():
        raise AnalysisError(f"{root}: no such file or folder")
    return [read_file(root)]


def records_from(data: Iterable[dict[str, Any]], where: str = "records") -> list[Record]:
    """Parse decoded records (for callers that fetched them elsewhere); withdrawn skipped."""
    out = []
    for item in data:
        record = parse_record(item, where)
        if record is not None:
            out.append(record)
    return out
