"""The KV store of metadata_svc: FoundationDB, or an embedded SQLite file."""

from __future__ import annotations

from pathlib import Path

from metadata_svc.kv.base import (
    MAX_KEY_SIZE,
    MAX_TRANSACTION_SECONDS,
    MAX_TRANSACTION_SIZE,
    MAX_VALUE_SIZE,
    CommitUnknownResult,
    Database,
    DatabaseClosed,
    InvertedRange,
    KeyOutsideLegalRange,
    KeyTooLarge,
    KVError,
    NotCommitted,
    Transaction,
    TransactionCancelled,
    TransactionStats,
    TransactionTimedOut,
    TransactionTooLarge,
    TransactionTooOld,
    UnknownKVError,
    UsedDuringCommit,
    ValueTooLarge,
    strinc,
)


def open_database(*, cluster_file: str | None, embedded_path: Path) -> Database:
    """Open FoundationDB if `cluster_file` is a non-empty path to its cluster
    file, else the embedded store at `embedded_path` (parents are created)."""
    if cluster_file:
        from metadata_svc.kv.fdb import FdbDatabase

        return FdbDatabase(cluster_file)
    from metadata_svc.kv.embedded import EmbeddedDatabase

    embedded_path.parent.mkdir(parents=True, exist_ok=True)
    return EmbeddedDatabase(embedded_path)


__all__ = [
    "MAX_KEY_SIZE",
    "MAX_TRANSACTION_SECONDS",
    "MAX_TRANSACTION_SIZE",
    "MAX_VALUE_SIZE",
    "CommitUnknownResult",
    "Database",
    "DatabaseClosed",
    "InvertedRange",
    "KVError",
    "KeyOutsideLegalRange",
    "KeyTooLarge",
    "NotCommitted",
    "Transaction",
    "TransactionCancelled",
    "TransactionStats",
    "TransactionTimedOut",
    "TransactionTooLarge",
    "TransactionTooOld",
    "UnknownKVError",
    "UsedDuringCommit",
    "ValueTooLarge",
    "open_database",
    "strinc",
]
