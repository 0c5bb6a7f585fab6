"""The built-in analyzer's vulnerability database, kept in blob storage where every worker
finds it.

Layout under the blob storage root (ARTS_STORAGE_URL):

    vulndb/CURRENT                JSON: {"id", "version", "records", "imported_at"}: which
                                  folder is the database now
    vulndb/<id>/records.parquet   the OSV records (scan_svc.analysis.osvdb's format)
    vulndb/<id>/sources.parquet   one row per imported file: path, kind, records,
                                  withdrawn, sha256, imported_at

`import_database` (behind `artifact-store scan db import`) reads OSV JSON or YAML files,
folders of them and osv.dev's per-ecosystem `all.zip`, adds them to the current database
(or, with `replace`, starts from nothing), writes the result into a new folder, and only
then points CURRENT at it (written whole, see `Storage.write_atomically`). The folder
before stays, for workers still loading it; older ones are removed. The database's version
is its last import time; every finding reports it.

Workers keep the loaded database in a `DatabaseCache` and look at CURRENT (a small read)
before each batch of tasks, loading the new folder when it changed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scan_svc.analysis import AnalysisError, OsvDatabase
from scan_svc.storage import Storage

log = logging.getLogger(__name__)

ROOT = "vulndb"
POINTER = f"{ROOT}/CURRENT"


@dataclass(frozen=True)
class Pointer:
    """What CURRENT says: the database's folder id, version and size."""

    id: str
    version: str
    records: int
    imported_at: str

    @property
    def location(self) -> str:
        """The database's folder, relative to the storage root."""
        return f"{ROOT}/{self.id}"


def current(storage: Storage) -> Pointer | None:
    """The database CURRENT names, or None when none was imported."""
    raw = storage.read_bytes(POINTER)
    return Pointer(**json.loads(raw)) if raw else None


def load(storage: Storage, pointer: Pointer) -> OsvDatabase:
    """Read the database `pointer` names (AnalysisError when it cannot be read)."""
    return OsvDatabase.load(storage.path(pointer.location), storage.fs)


def sources(storage: Storage, pointer: Pointer) -> list[dict[str, Any]]:
    """The rows of the database's sources.parquet (path, kind, records, withdrawn, sha256,
    imported_at)."""
    table = pq.read_table(
        storage.path(f"{pointer.location}/sources.parquet"), filesystem=storage.fs
    )
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def import_database(
    storage: Storage, paths: Sequence[str | os.PathLike[str]], *, replace: bool = False
) -> Pointer:
    """Import OSV files, folders and zips into the shared database and make the result
    current; return its pointer. Raises AnalysisError for unreadable input (nothing is
    changed then)."""
    before = current(storage)
    db = OsvDatabase() if replace or before is None else load(storage, before)
    for path in paths:
        db.import_path(path)
    now = dt.datetime.now(dt.UTC)
    pointer = Pointer(
        id=f"{now:%Y%m%dT%H%M%S}Z-{secrets.token_hex(4)}",
        version=db.version,
        records=len(db),
        imported_at=now.isoformat(),
    )
    db.save(storage.path(pointer.location), storage.fs)
    body = json.dumps(asdict(pointer)).encode()

    def write(path: str) -> None:
        with storage.fs.open_output_stream(path) as out:
            out.write(body)

    storage.write_atomically(POINTER, write)
    keep = {pointer.id} | ({before.id} if before else set())
    for info in storage.fs.get_file_info(pafs.FileSelector(storage.path(ROOT))):
        if info.type == pafs.FileType.Directory and info.base_name not in keep:
            storage.fs.delete_dir(info.path)
    return pointer


class DatabaseCache:
    """One worker's loaded database, reloaded when CURRENT changes."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.pointer: Pointer | None = None
        self.database: OsvDatabase | None = None

    def refresh(self) -> None:
        """Load the current database if it is not the one loaded (blocking: run it in a
        thread). A database that cannot be read is logged and the loaded one kept."""
        pointer = current(self._storage)
        if pointer is None or pointer == self.pointer:
            return
        try:
            database = load(self._storage, pointer)
        except AnalysisError as exc:
            log.error("vulnerability database %s not loaded: %s", pointer.id, exc)
            return
        self.pointer, self.database = pointer, database
        log.info("loaded vulnerability database %s (%d records)", pointer.version, len(database))
