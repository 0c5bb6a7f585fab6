"""OSV import (folder, osv.dev all.zip, pypa YAML), the database's bookkeeping, Parquet
persistence, and range evaluation."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from scan_svc.analysis import AnalysisError, OsvDatabase
from scan_svc.analysis.osv import Affected, Event, Range, read_file
from scan_svc.analysis.ranges import evaluate

from .layers import DATA

OSV = DATA / "osv"
WHEN = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def _json_records() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(OSV.rglob("*.json"))]


def _build_all_zip(path: Path, records: list[dict[str, Any]]) -> None:
    """osv.dev's export (README 2.1): flat `<ID>.json` entries, deflated, sorted by ID,
    compact JSON, each entry's mtime the record's `modified`."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for record in sorted(records, key=lambda r: r["id"]):
            modified = dt.datetime.fromisoformat(record["modified"].replace("Z", "+00:00"))
            stamp = max(modified.timetuple()[:6], (1980, 1, 1, 0, 0, 0))
            info = zipfile.ZipInfo(f"{record['id']}.json", date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, json.dumps(record, separators=(",", ":")))


def _matches(db: OsvDatabase, *query: str) -> list[tuple[str, str]]:
    return [(m.record.id, m.fixed_version) for m in db.affected(*query)]


QUERIES = [
    ("Debian:12", "dpkg", "1.21.22"),
    ("Debian:12", "xz-utils", "5.4.1-1"),
    ("Debian:12", "xz-utils", "5.4.1-1+deb12u1"),
    ("Debian:9", "openssl", "1.1.0l-1~deb9u5"),
    ("PyPI", "Werkzeug", "2.2.2"),
    ("PyPI", "urllib3", "1.26.12"),
    ("Go", "stdlib", "go1.19.8"),
    ("npm", "bootstrap", "4.6.1"),
    ("Alpine:v3.19", "musl", "1.2.4_git20230717-r4"),
]


def test_folder_import_records_sources_and_time() -> None:
    db = OsvDatabase.from_paths(OSV, imported_at=WHEN)
    files = sorted(p for p in OSV.rglob("*") if p.suffix in (".json", ".yaml"))
    # 47 + 4 Debian, 14 YAML + 6 JSON PyPI of which 2 are the same ids, 8 Go, 2 npm, 1 Alpine.
    assert len(db) == 80
    assert db.imported_at == WHEN and db.version == WHEN.isoformat()
    assert [s.path for s in db.sources] == [str(p) for p in files]
    for source, path in zip(db.sources, files, strict=True):
        assert source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert source.records == 1 and source.withdrawn == 0 and source.imported_at == WHEN
    assert {s.kind for s in db.sources} == {"json", "yaml"}
    record = db.get("DEBIAN-CVE-2026-34743")
    assert record is not None and record.upstream == ("CVE-2026-34743",)
    (entry,) = record.affected
    assert (entry.ecosystem, entry.release, entry.package, entry.urgency) == (
        "Debian:12",
        "12",
        "xz-utils",
        "not yet assigned",
    )


def test_all_zip_import_equals_folder_import(tmp_path: Path) -> None:
    records = _json_records()
    zip_path = tmp_path / "all.zip"
    _build_all_zip(zip_path, records)
    from_zip = OsvDatabase.from_paths(zip_path, imported_at=WHEN)
    (source,) = from_zip.sources
    assert (source.kind, source.records, source.path) == ("zip", len(records), str(zip_path))
    assert source.sha256 == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    from_json = OsvDatabase.from_paths(*sorted(OSV.rglob("*.json")), imported_at=WHEN)
    assert from_zip.records == from_json.records
    for query in QUERIES:
        assert _matches(from_zip, *query) == _matches(from_json, *query)


def test_pypa_yaml_folder_import() -> None:
    db = OsvDatabase.from_paths(OSV / "pypi" / "pypa-yaml", imported_at=WHEN)
    assert len(db) == 14 and len(db.sources) == 14
    assert {s.kind for s in db.sources} == {"yaml"}
    assert dict(_matches(db, "PyPI", "cryptography", "38.0.4")) == {
        "PYSEC-2023-11": "39.0.1",
        "PYSEC-2023-254": "41.0.6",
    }
    # pypa lists branch fixes out of order (2.0.6 after 1.26.17): the lowest fix above wins.
    assert dict(_matches(db, "PyPI", "urllib3", "1.26.12"))["PYSEC-2023-192"] == "1.26.17"


def test_yaml_and_json_forms_of_a_record_agree() -> None:
    for rid, package in (("PYSEC-2023-74", "requests"), ("PYSEC-2020-148", "urllib3")):
        from_yaml = read_file(OSV / "pypi" / "pypa-yaml" / package / f"{rid}.yaml").records[0]
        from_json = read_file(OSV / "pypi" / "osv-dev-json" / f"{rid}.json").records[0]
        assert from_yaml.id == from_json.id == rid
        assert from_yaml.aliases == from_json.aliases
        # Unquoted YAML timestamps stay text, as OSV wants them.
        assert isinstance(from_yaml.modified, str) and from_yaml.modified.startswith("20")
        yaml_ranges = [a.ranges for a in from_yaml.affected]
        json_ranges = [a.ranges for a in from_json.affected]
        assert yaml_ranges == json_ranges
        # GIT ranges (commit hashes) are dropped: only ECOSYSTEM/SEMVER remain.
        assert all(r.type in ("ECOSYSTEM", "SEMVER") for rs in yaml_ranges for r in rs)


def test_withdrawn_records_are_skipped(tmp_path: Path) -> None:
    live = json.loads((OSV / "npm" / "GHSA-whgm-jr23-g3j9.json").read_text())
    gone = {**live, "id": "GHSA-gone-gone-gone", "withdrawn": "2024-01-01T00:00:00Z"}
    (tmp_path / "a.json").write_text(json.dumps([live, gone]))
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "b.json").write_text(json.dumps({**gone, "id": "GHSA-b"}))
    (tmp_path / "schema.json").write_text(json.dumps({"$id": "not a record", "type": "object"}))
    db = OsvDatabase.from_paths(tmp_path)
    assert [r.id for r in db.records] == ["GHSA-whgm-jr23-g3j9"]
    assert [(Path(s.path).name, s.records, s.withdrawn) for s in db.sources] == [
        ("a.json", 1, 1),
        ("b.json", 0, 1),
        ("schema.json", 0, 0),
    ]
    assert _matches(db, "npm", "ansi-html", "0.0.7") == [("GHSA-whgm-jr23-g3j9", "0.0.8")]
    assert db.imported_at is not None and db.imported_at.tzinfo is not None


def test_broken_inputs_raise_analysis_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AnalysisError, match=r"bad\.json"):
        OsvDatabase.from_paths(tmp_path / "bad.json")
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    with pytest.raises(AnalysisError, match=r"bad\.zip"):
        OsvDatabase.from_paths(tmp_path / "bad.zip")
    (tmp_path / "shape.json").write_text(json.dumps({"id": "X-1", "modified": "", "affected": [1]}))
    with pytest.raises(AnalysisError, match="X-1"):
        OsvDatabase.from_paths(tmp_path / "shape.json")
    with pytest.raises(AnalysisError, match="no such file"):
        OsvDatabase.from_paths(tmp_path / "missing")


def test_newer_record_wins_over_older_duplicate(tmp_path: Path) -> None:
    base = json.loads((OSV / "npm" / "GHSA-whgm-jr23-g3j9.json").read_text())
    newer = {**base, "modified": "2099-01-01T00:00:00Z", "summary": "newer"}
    older = {**base, "modified": "2000-01-01T00:00:00Z", "summary": "older"}
    (tmp_path / "1.json").write_text(json.dumps(newer))
    (tmp_path / "2.json").write_text(json.dumps(older))
    record = OsvDatabase.from_paths(tmp_path).get(base["id"])
    assert record is not None and record.summary == "newer"


def test_parquet_round_trip_gives_the_same_matches(tmp_path: Path) -> None:
    db = OsvDatabase.from_paths(OSV, imported_at=WHEN)
    db.save(str(tmp_path / "db"))
    loaded = OsvDatabase.load(str(tmp_path / "db"))
    # The same through a pyarrow filesystem, as blob storage will be used.
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    db.save("remote/osv", filesystem=fs)
    remote = OsvDatabase.load("remote/osv", filesystem=fs)
    assert (tmp_path / "remote" / "osv" / "records.parquet").is_file()
    for other in (loaded, remote):
        assert other.records == db.records
        assert other.sources == db.sources
        assert other.imported_at == WHEN and other.version == db.version
        for query in QUERIES:
            assert _matches(other, *query) == _matches(db, *query)
    assert _matches(loaded, *QUERIES[0]) == [("DEBIAN-CVE-2025-6297", "1.21.23")]


def test_load_rejects_missing_or_foreign_data(tmp_path: Path) -> None:
    with pytest.raises(AnalysisError, match="cannot read"):
        OsvDatabase.load(str(tmp_path / "nothing"))


# -- matching semantics ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db() -> OsvDatabase:
    return OsvDatabase.from_paths(OSV)


def test_debian_matches_are_scoped_to_the_release(db: OsvDatabase) -> None:
    assert _matches(db, "Debian:12", "xz-utils", "5.4.1-1") == [
        ("DEBIAN-CVE-2026-34743", "5.4.1-1+deb12u1")
    ]
    # The tracker's non-existent 5.4.1-2+deb12u1 would have kept flagging the fixed package.
    assert _matches(db, "Debian:12", "xz-utils", "5.4.1-1+deb12u1") == []
    # Boundary: installed == fixed is not affected.
    assert _matches(db, "Debian:12", "libwebp", "1.2.4-0.2+deb12u1") == []
    # DLA records are Debian 9: nothing on bookworm, a match on stretch (versions list too).
    bookworm = dict(_matches(db, "Debian:12", "openssl", "1.1.0l-1~deb9u5"))
    assert not any(rid.startswith("DLA-") for rid in bookworm)
    assert ("DLA-3008-1", "1.1.0l-1~deb9u6") in _matches(
        db, "Debian:9", "openssl", "1.1.0l-1~deb9u5"
    )


def test_pypi_names_are_normalised_and_branches_respected(db: OsvDatabase) -> None:
    assert _matches(db, "PyPI", "WERKZEUG", "2.2.2") == _matches(db, "PyPI", "werkzeug", "2.2.2")
    werkzeug = dict(_matches(db, "PyPI", "Werkzeug", "2.2.2"))
    assert werkzeug == {
        "PYSEC-2023-221": "2.3.8",
        "PYSEC-2023-57": "2.2.3",
        "PYSEC-2023-58": "2.2.3",
    }
    # Between the two branches of PYSEC-2023-221 (fixed 2.3.8, introduced 3.0.0).
    assert "PYSEC-2023-221" not in dict(_matches(db, "PyPI", "Werkzeug", "2.3.8"))
    assert dict(_matches(db, "PyPI", "Werkzeug", "3.0.0"))["PYSEC-2023-221"] == "3.0.1"
    assert _matches(db, "PyPI", "urllib3", "1.26.12") != []
    assert "PYSEC-2020-148" not in dict(_matches(db, "PyPI", "urllib3", "1.26.12"))


def test_go_and_npm(db: OsvDatabase) -> None:
    assert dict(_matches(db, "Go", "stdlib", "go1.19.8")) == {
        "GO-2023-1751": "1.19.9",
        "GO-2023-1878": "1.19.11",
        "GO-2023-2102": "1.20.10",
        "GO-2025-3563": "1.23.8",
    }
    assert dict(_matches(db, "Go", "stdlib", "go1.24.1")) == {"GO-2025-3563": "1.24.2"}
    assert _matches(db, "Go", "stdlib", "go1.25-20250209-RC00") == []
    # last_affected is inclusive.
    assert _matches(db, "npm", "bootstrap", "4.6.2") == [("GHSA-vc8w-jr9v-vj7f", "")]
    assert _matches(db, "npm", "bootstrap", "4.6.3") == []
    assert _matches(db, "npm", "bootstrap", "3.4.1") == []


def test_alpine_release_and_apk_ordering(db: OsvDatabase) -> None:
    assert _matches(db, "Alpine:v3.19", "musl", "1.2.4_git20230717-r4") == [
        ("ALPINE-CVE-2025-26519", "1.2.4_git20230717-r5")
    ]
    assert _matches(db, "Alpine:v3.19", "musl", "1.2.4_git20230717-r5") == []
    assert _matches(db, "Alpine:v3.19", "musl", "0.9.12-r0") == []


def _entry(*events: tuple[str, str], versions: tuple[str, ...] = (), eco: str = "PyPI") -> Affected:
    return Affected(
        ecosystem=eco,
        package="p",
        ranges=(Range("ECOSYSTEM", tuple(Event(k, v) for k, v in events)),),
        versions=versions,
    )


def test_range_evaluation_rules() -> None:
    unsorted = _entry(
        ("fixed", "2.0"), ("introduced", "1.5"), ("introduced", "0"), ("fixed", "1.0")
    )
    assert [evaluate(v, unsorted).affected for v in ("0.9", "1.0", "1.6", "2.0")] == [
        True,
        False,
        True,
        False,
    ]
    assert evaluate("0.9", unsorted).fixed_version == "1.0"
    assert evaluate("1.6", unsorted).fixed_version == "2.0"
    limited = _entry(("introduced", "1.0"), ("limit", "1.5"))
    assert [evaluate(v, limited).affected for v in ("0.9", "1.2", "1.5", "9")] == [
        False,
        True,
        False,
        False,
    ]
    listed = _entry(versions=("0.5.2dev_r42", "1.0.0"))
    assert evaluate("1.0", listed).affected  # PEP 440 equality, legacy string skipped
    assert not evaluate("1.1", listed).affected
    # A legacy version in the events makes that range undecidable: skipped, no match.
    legacy = _entry(("introduced", "0"), ("fixed", "0.5.2dev_r42"))
    assert not evaluate("0.1", legacy).affected
    # An installed version the ordering cannot parse matches nothing.
    assert not evaluate("not a version", _entry(("introduced", "0"))).affected
    # Ecosystems without an ordering only match their versions list.
    other = _entry(("introduced", "0"), versions=("7",), eco="Maven")
    assert evaluate("7", other).affected and not evaluate("8", other).affected


def test_qualified_releases_and_unscoped_entries(tmp_path: Path) -> None:
    def record(rid: str, ecosystem: str) -> dict[str, Any]:
        events = [{"introduced": "0"}, {"fixed": "2.0-1"}]
        return {
            "id": rid,
            "modified": "2026-01-01T00:00:00Z",
            "affected": [
                {
                    "package": {"ecosystem": ecosystem, "name": "zlib"},
                    "ranges": [{"type": "ECOSYSTEM", "events": events}],
                }
            ],
        }

    records = [
        record("UBUNTU-1", "Ubuntu:22.04:LTS"),
        record("UBUNTU-2", "Ubuntu:Pro:22.04:LTS"),
        record("UBUNTU-3", "Ubuntu:24.04:LTS"),
        record("ANY-1", "Ubuntu"),
    ]
    (tmp_path / "r.json").write_text(json.dumps(records))
    db = OsvDatabase.from_paths(tmp_path)
    assert [rid for rid, _ in _matches(db, "Ubuntu:22.04", "zlib", "1.0-1")] == [
        "ANY-1",
        "UBUNTU-1",
    ]
    assert len(_matches(db, "Ubuntu", "zlib", "1.0-1")) == 4
    assert _matches(db, "Ubuntu:22.04", "zlib", "2.0-1") == []
