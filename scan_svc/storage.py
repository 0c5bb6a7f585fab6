"""The blob storage root as scan_svc uses it: the root ARTS_STORAGE_URL names, opened as
blob_svc opens it (`artifactstore.storage`: a local directory or DFS mount, or S3), for the
folders scanning owns (`scans/`, `scan-packages/`, `vulndb/`; see `scan_svc.reports` and
`scan_svc.vulndb`). Canonical blobs are never touched here."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.fs as pafs

from artifactstore.storage import StorageOptions, open_storage


@dataclass(frozen=True)
class Storage:
    """A filesystem and the root path under it."""

    fs: pafs.FileSystem
    root: str

    @classmethod
    def open(cls, url: str, options: StorageOptions | None = None) -> Storage:
        """The storage at `url` (`file:///…`, a local path, or `s3://…`; see
        `artifactstore.storage.open_storage`, whose errors it raises). Blocks."""
        opened = open_storage(url, options)
        return cls(opened.filesystem, opened.root)

    def path(self, relative: str) -> str:
        """The filesystem path of `relative` (a `/`-separated path under the root)."""
        return f"{self.root}/{relative}"

    def write_atomically(self, relative: str, write: Callable[[str], None]) -> None:
        """Create `relative` whole or not at all: `write(path)` writes a dot-named sibling,
        which is then moved into place. Dataset readers skip dot-names, so they never see
        a file being written; on object stores the move makes the object appear whole."""
        folder, _, name = relative.rpartition("/")
        self.fs.create_dir(self.path(folder), recursive=True)
        temporary = self.path(f"{folder}/.{name}.{uuid.uuid4().hex}.tmp")
        try:
            write(temporary)
            self.fs.move(temporary, self.path(relative))
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(temporary)

    def read_bytes(self, relative: str) -> bytes | None:
        """The content of a small file, or None when it does not exist."""
        try:
            with self.fs.open_input_stream(self.path(relative)) as stream:
                data: bytes = stream.read()
                return data
        except FileNotFoundError:
            return None
