"""FoundationDB backend: our Transaction and Database over the `fdb` bindings.

The `fdb` package itself is pure Python; only `fdb.api_version()` loads the
FoundationDB C client, and that happens when an FdbDatabase is created, so this
module imports on machines without the client.
"""

from __future__ import annotations

import contextlib
import struct
import threading
from collections.abc import Iterator
from typing import Any

import fdb
import fdb.subspace_impl

from metadata_svc.kv.base import (
    CommitUnknownResult,
    Database,
    InvertedRange,
    KeyOutsideLegalRange,
    KeyTooLarge,
    KVError,
    NotCommitted,
    Transaction,
    TransactionCancelled,
    TransactionTimedOut,
    TransactionTooLarge,
    TransactionTooOld,
    UnknownKVError,
    UsedDuringCommit,
    ValueTooLarge,
)

API_VERSION = 710

_ERRORS: dict[int, type[KVError]] = {
    cls.code: cls
    for cls in (
        NotCommitted,
        TransactionTooOld,
        CommitUnknownResult,
        TransactionTimedOut,
        TransactionCancelled,
        UsedDuringCommit,
        KeyOutsideLegalRange,
        InvertedRange,
        TransactionTooLarge,
        KeyTooLarge,
        ValueTooLarge,
    )
}

_api_lock = threading.Lock()


def _select_api_version() -> None:
    # api_version() loads the C client; it is a no-op when already selected at
    # this version and raises if another version was selected.
    with _api_lock:
        fdb.api_version(API_VERSION)


def _to_kv_error(err: Any) -> KVError:
    """Our error for an fdb.FDBError, by code."""
    cls = _ERRORS.get(err.code)
    if cls is not None:
        return cls(str(err))
    return UnknownKVError(str(err), code=err.code, retryable=fdb.predicates.is_retryable(err))


@contextlib.contextmanager
def _fdb_errors() -> Iterator[None]:
    try:
        yield
    except fdb.FDBError as err:
        raise _to_kv_error(err) from err


class FdbTransaction(Transaction):
    """Our Transaction over an `fdb.Transaction`."""

    def __init__(self, tr: Any) -> None:
        super().__init__()
        self._tr = tr

    def _reader(self, snapshot: bool) -> Any:
        return self._tr.snapshot if snapshot else self._tr

    def _get(self, key: bytes, snapshot: bool) -> bytes | None:
        with _fdb_errors():
            value = self._reader(snapshot).get(key).wait()
            return value.value if value.present() else None

    def _get_range(
        self, begin: bytes, end: bytes, limit: int, reverse: bool, snapshot: bool
    ) -> list[tuple[bytes, bytes]]:
        with _fdb_errors():
            kvs = self._reader(snapshot).get_range(begin, end, limit=limit, reverse=reverse)
            # to_list() streams in one batch (exact with a limit, else want_all).
            return [(kv.key, kv.value) for kv in kvs.to_list()]

    def _set(self, key: bytes, value: bytes) -> None:
        with _fdb_errors():
            self._tr.set(key, value)

    def _clear(self, key: bytes) -> None:
        with _fdb_errors():
            self._tr.clear(key)

    def _clear_range(self, begin: bytes, end: bytes) -> None:
        with _fdb_errors():
            self._tr.clear_range(begin, end)

    def _add(self, key: bytes, delta: int) -> None:
        with _fdb_errors():
            self._tr.add(key, struct.pack("<q", delta))

    def _add_conflict_key(self, key: bytes, *, write: bool) -> None:
        with _fdb_errors():
            if write:
                self._tr.add_write_conflict_key(key)
            else:
                self._tr.add_read_conflict_key(key)

    def commit(self) -> None:
        """See Transaction.commit."""
        with _fdb_errors():
            self._tr.commit().wait()

    def _on_error(self, err: KVError) -> None:
        if not err.retryable:
            raise err
        # FDB's on_error backs off and resets for retryable codes.
        with _fdb_errors():
            self._tr.on_error(err.code).wait()

    def reset(self) -> None:
        """See Transaction.reset."""
        self._tr.reset()

    def cancel(self) -> None:
        """See Transaction.cancel."""
        self._tr.cancel()


class FdbDatabase(Database):
    """A Database on a FoundationDB cluster.

    The bindings cannot close a database (the client's network thread runs
    until the process exits), so close() only stops the thread pool.
    """

    system = "foundationdb"

    def __init__(self, cluster_file: str) -> None:
        super().__init__()
        _select_api_version()
        with _fdb_errors():
            self._db = fdb.open(cluster_file)
        self._directories: dict[str, fdb.subspace_impl.Subspace] = {}

    @property
    def fdb_database(self) -> Any:
        """The underlying `fdb.Database`, for administration (e.g. removing
        directories in tests)."""
        return self._db

    def create_transaction(self) -> FdbTransaction:
        """See Database.create_transaction."""
        with _fdb_errors():
            return FdbTransaction(self._db.create_transaction())

    def directory(self, name: str) -> fdb.subspace_impl.Subspace:
        """See Database.directory; the prefix comes from FDB's directory layer
        and is cached, as it does not change unless the directory is removed."""
        if not name:
            raise ValueError("directory name must not be empty")
        subspace = self._directories.get(name)
        if subspace is None:
            with _fdb_errors():
                subspace = fdb.directory.create_or_open(self._db, (name,))
            self._directories[name] = subspace
        return subspace
