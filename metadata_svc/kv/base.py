"""The key-value interface of metadata_svc, with FoundationDB's semantics.

Keys are ordered byte strings; transactions are serializable, read their own
writes, and are retried on conflict. The limits below are FoundationDB's, and
every backend enforces them, so code that works on the embedded backend also
works on a FoundationDB cluster.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

import fdb.subspace_impl
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from artifactstore.metrics import LATENCY_BUCKETS, REGISTRY

T = TypeVar("T")

MAX_KEY_SIZE = 10_000
MAX_VALUE_SIZE = 100_000
MAX_TRANSACTION_SIZE = 10_000_000
MAX_TRANSACTION_SECONDS = 5.0

# Keys at or above b"\xff" are FoundationDB's system keyspace.
MAX_USER_KEY = b"\xff"


class KVError(Exception):
    """A key-value error, modelled on a FoundationDB error code.

    `retryable` errors mean the transaction did not (or may not) commit and can
    be run again after `Transaction.on_error`.
    """

    code: int = 4000  # FDB's unknown_error
    retryable: bool = False


class NotCommitted(KVError):
    """The transaction conflicted with another one and was not committed."""

    code = 1020
    retryable = True


class TransactionTooOld(KVError):
    """The transaction's read version is older than MAX_TRANSACTION_SECONDS."""

    code = 1007
    retryable = True


class CommitUnknownResult(KVError):
    """The commit may or may not have been applied."""

    code = 1021
    retryable = True


class TransactionTimedOut(KVError):
    """The transaction ran past its timeout."""

    code = 1031


class TransactionCancelled(KVError):
    """The transaction was used after `cancel()`."""

    code = 1025


class UsedDuringCommit(KVError):
    """The transaction was used after `commit()` without a `reset()`."""

    code = 2017


class DatabaseClosed(KVError):
    """The database was used after `close()` (FDB's client_invalid_operation)."""

    code = 2000


class KeyOutsideLegalRange(KVError):
    """A key is at or above b"\\xff", FoundationDB's system keyspace."""

    code = 2004


class InvertedRange(KVError):
    """A range to clear has its begin key after its end key."""

    code = 2005


class TransactionTooLarge(KVError):
    """The transaction's mutations exceed MAX_TRANSACTION_SIZE bytes."""

    code = 2101


class KeyTooLarge(KVError):
    """A key exceeds MAX_KEY_SIZE bytes."""

    code = 2102


class ValueTooLarge(KVError):
    """A value exceeds MAX_VALUE_SIZE bytes."""

    code = 2103


class UnknownKVError(KVError):
    """A backend error without a class of its own; carries the backend's code."""

    def __init__(self, message: str, *, code: int, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


@dataclass
class TransactionStats:
    """Work done by one Transaction object, summed over all its attempts.

    keys_read: keys returned by reads (a point read counts one, found or not).
    keys_written: set, clear, clear_range and add calls.
    bytes_written: bytes of keys and values in those calls.
    retries: calls of on_error that led to a retry.
    """

    keys_read: int = 0
    keys_written: int = 0
    bytes_written: int = 0
    retries: int = 0


def strinc(prefix: bytes) -> bytes:
    """Return the first key after every key that starts with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        raise ValueError("a prefix of only 0xff bytes has no successor")
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _check_key(key: bytes) -> None:
    if len(key) > MAX_KEY_SIZE:
        raise KeyTooLarge(f"key of {len(key)} bytes exceeds {MAX_KEY_SIZE}")
    if key >= MAX_USER_KEY:
        raise KeyOutsideLegalRange(f"key {key[:32]!r} is in the system keyspace")


def _check_range(begin: bytes, end: bytes) -> None:
    if begin > MAX_USER_KEY or end > MAX_USER_KEY:
        raise KeyOutsideLegalRange("range reaches into the system keyspace")


class Transaction(abc.ABC):
    """A serializable transaction that reads its own writes.

    Reads see a consistent snapshot plus this transaction's own mutations.
    Unless `snapshot=True`, a read adds a read conflict, and `commit()` fails
    with NotCommitted if another transaction wrote to what was read after this
    one started. Mutations are buffered until `commit()`.

    A Transaction is not thread-safe: use it from one thread at a time. The
    public methods validate arguments and count `stats`; backends implement
    the underscored hooks.
    """

    def __init__(self) -> None:
        self.stats = TransactionStats()
        # The [begin, end) ranges every attempt wrote (a point write is [key, key\0)): what
        # a CommitObserver is told. Kept across retries, so it may name more than the
        # commit wrote, never less.
        self.written: list[tuple[bytes, bytes]] = []

    def get(self, key: bytes, *, snapshot: bool = False) -> bytes | None:
        """Return the value of `key`, or None if it is absent."""
        _check_key(key)
        value = self._get(key, snapshot)
        self.stats.keys_read += 1
        return value

    def get_range(
        self,
        begin: bytes,
        end: bytes,
        *,
        limit: int = 0,
        reverse: bool = False,
        snapshot: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """Return the pairs with begin <= key < end in key order.

        `limit` > 0 returns at most that many; `reverse` returns them from the
        end backwards (with `limit`, the last ones). Only the part of the range
        actually read becomes a read conflict.
        """
        _check_range(begin, end)
        if limit < 0:
            raise ValueError("limit must be >= 0")
        if begin >= end:
            return []
        pairs = self._get_range(begin, end, limit, reverse, snapshot)
        self.stats.keys_read += len(pairs)
        return pairs

    def get_range_startswith(
        self,
        prefix: bytes,
        *,
        limit: int = 0,
        reverse: bool = False,
        snapshot: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """`get_range` over every key that starts with `prefix`."""
        return self.get_range(
            prefix, strinc(prefix), limit=limit, reverse=reverse, snapshot=snapshot
        )

    def set(self, key: bytes, value: bytes) -> None:
        """Set `key` to `value`."""
        _check_key(key)
        if len(value) > MAX_VALUE_SIZE:
            raise ValueTooLarge(f"value of {len(value)} bytes exceeds {MAX_VALUE_SIZE}")
        self._set(key, value)
        self._count_write(len(key) + len(value))
        self.written.append((key, key + b"\x00"))

    def clear(self, key: bytes) -> None:
        """Remove `key` if it exists."""
        _check_key(key)
        self._clear(key)
        self._count_write(len(key))
        self.written.append((key, key + b"\x00"))

    def clear_range(self, begin: bytes, end: bytes) -> None:
        """Remove every key with begin <= key < end."""
        _check_range(begin, end)
        if begin > end:
            raise InvertedRange(f"clear_range begin {begin!r} is after end {end!r}")
        if begin < end:
            self._clear_range(begin, end)
            self.written.append((begin, end))
        self._count_write(len(begin) + len(end))

    def clear_range_startswith(self, prefix: bytes) -> None:
        """Remove every key that starts with `prefix`."""
        self.clear_range(prefix, strinc(prefix))

    def add(self, key: bytes, delta: int) -> None:
        """Atomically add `delta` to the little-endian signed 64-bit value at `key`.

        An absent key counts as 0; the sum wraps around at 64 bits. Adds no read
        conflict, so concurrent adds to one key never conflict; a later read of
        `key` in this transaction sees the sum (and does add a read conflict).
        """
        _check_key(key)
        if not -(2**63) <= delta < 2**63:
            raise ValueError("delta must fit in a signed 64-bit integer")
        self._add(key, delta)
        self._count_write(len(key) + 8)
        self.written.append((key, key + b"\x00"))

    def add_read_conflict_key(self, key: bytes) -> None:
        """Make the commit fail if another transaction writes `key` concurrently."""
        _check_key(key)
        self._add_conflict_key(key, write=False)

    def add_write_conflict_key(self, key: bytes) -> None:
        """Make concurrent transactions that read `key` fail, without writing it."""
        _check_key(key)
        self._add_conflict_key(key, write=True)

    def on_error(self, err: KVError) -> None:
        """Prepare to retry after `err`: re-raise it if it is not retryable,
        otherwise back off briefly and reset the transaction."""
        self._on_error(err)
        self.stats.retries += 1

    @abc.abstractmethod
    def commit(self) -> None:
        """Atomically apply the buffered mutations, or raise KVError.

        A read-only transaction commits trivially. Afterwards the transaction
        must be reset before it is used again.
        """

    @abc.abstractmethod
    def reset(self) -> None:
        """Discard all reads and mutations and start afresh (stats are kept)."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Abandon the transaction; any later use raises TransactionCancelled
        until reset(). Safe to call more than once, and after commit()."""

    def _count_write(self, size: int) -> None:
        self.stats.keys_written += 1
        self.stats.bytes_written += size

    @abc.abstractmethod
    def _get(self, key: bytes, snapshot: bool) -> bytes | None: ...

    @abc.abstractmethod
    def _get_range(
        self, begin: bytes, end: bytes, limit: int, reverse: bool, snapshot: bool
    ) -> list[tuple[bytes, bytes]]:
        """Called only with begin < end and limit >= 0."""

    @abc.abstractmethod
    def _set(self, key: bytes, value: bytes) -> None: ...

    @abc.abstractmethod
    def _clear(self, key: bytes) -> None: ...

    @abc.abstractmethod
    def _clear_range(self, begin: bytes, end: bytes) -> None:
        """Called only with begin < end."""

    @abc.abstractmethod
    def _add(self, key: bytes, delta: int) -> None: ...

    @abc.abstractmethod
    def _add_conflict_key(self, key: bytes, *, write: bool) -> None: ...

    @abc.abstractmethod
    def _on_error(self, err: KVError) -> None: ...


_tracer = trace.get_tracer(__name__)

TRANSACTION_SECONDS = Histogram(
    "artifactstore_kv_transaction_duration_seconds",
    "Time a KV transaction took, retries included.",
    ["system"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CONFLICTS = Counter(
    "artifactstore_kv_conflicts",
    "KV transactions that conflicted with another and were retried.",
    ["system"],
    registry=REGISTRY,
)


class CommitObserver(Protocol):
    """Told of every commit that wrote, before its caller hears of it (the manifest change
    feed that keeps readers' caches coherent)."""

    def committed(self, written: Sequence[tuple[bytes, bytes]]) -> int:
        """Note a commit's written ranges; thread-safe. Returns the sequence number to
        pass to `delivered`, or 0 when the commit changed nothing observed."""

    async def delivered(self, sequence: int) -> None:
        """Return once the change numbered `sequence` has reached those who must know."""


class Database(abc.ABC):
    """A handle on the key-value store; thread-safe.

    `transact` gives up after `retry_limit` retries or `retry_seconds` seconds,
    whichever comes first, raising the last error.
    """

    retry_limit: int = 100
    retry_seconds: float = MAX_TRANSACTION_SECONDS
    # The `db.system.name` of the backend, for traces.
    system: str = "kv"
    # Whether `run()` and `read()` call `fn` on the event loop: true for a backend whose
    # reads never wait on others (no network, no locks held across calls), where the
    # thread hop costs more than the reads themselves. Such a backend's `run()` still
    # commits off the loop.
    runs_inline: bool = False
    # Whether this process is the store's only writer (a backend that locks it), so that
    # its commits are every commit: what a cache of its reads needs to stay coherent.
    sole_writer: bool = False
    # Told of commits by `run()` (whose callers wait for `delivered`) and `transact()`.
    observer: CommitObserver | None = None

    def __init__(self, *, threads: int = 16) -> None:
        # Runs `run()`'s blocking transactions off the asyncio event loop.
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kv")

    @abc.abstractmethod
    def create_transaction(self) -> Transaction:
        """Return a new transaction; commit() or cancel() it when done."""

    @abc.abstractmethod
    def directory(self, name: str) -> fdb.subspace_impl.Subspace:
        """Return the subspace of the top-level directory `name`, creating it
        if needed. All of a component's keys belong inside its directory."""

    def transact(self, fn: Callable[[Transaction], T]) -> T:
        """Run `fn` in a transaction, commit it and return `fn`'s result (the observer
        is told of the commit; only `run()` waits for its delivery).

        On a retryable KVError (from `fn` or the commit) the transaction is reset
        and `fn` runs again, so `fn` must be idempotent apart from its effects on
        the transaction: it may run several times, and after CommitUnknownResult
        an earlier attempt may already have committed. Non-retryable errors and
        any other exception propagate at once.
        """
        return self._transact(fn)[0]

    def _transact(self, fn: Callable[[Transaction], T]) -> tuple[T, int]:
        """`transact(fn)`, and the observer's sequence number for the commit."""
        tr = self.create_transaction()
        with self._attempts(tr) as may_retry:
            while True:
                try:
                    result = fn(tr)
                    tr.commit()
                    return result, self._observed(tr)
                except KVError as err:
                    may_retry(err)
                    tr.on_error(err)  # re-raises `err` if it is not retryable

    def _observed(self, tr: Transaction) -> int:
        """Tell the observer of a committed transaction's writes."""
        if self.observer is None or not tr.written:
            return 0
        return self.observer.committed(tr.written)

    async def _delivered(self, sequence: int) -> None:
        if sequence and self.observer is not None:
            await self.observer.delivered(sequence)

    @contextlib.contextmanager
    def _attempts(self, tr: Transaction) -> Iterator[Callable[[KVError], None]]:
        """The span, timing and retry budget of one transaction's attempts: yields the
        check to make on each error, which re-raises it once the budget is spent."""
        started = time.monotonic()
        deadline = started + self.retry_seconds
        with _tracer.start_as_current_span(
            "kv.transaction",
            kind=trace.SpanKind.CLIENT,
            attributes={"db.system.name": self.system},
        ) as span:

            def may_retry(err: KVError) -> None:
                span.add_event("retry", {"error.code": err.code})
                if isinstance(err, NotCommitted):
                    span.set_attribute("db.kv.conflict", True)
                    CONFLICTS.labels(self.system).inc()
                if tr.stats.retries >= self.retry_limit or time.monotonic() >= deadline:
                    raise err

            try:
                yield may_retry
            finally:
                TRANSACTION_SECONDS.labels(self.system).observe(time.monotonic() - started)
                span.set_attributes(
                    {
                        "db.kv.retries": tr.stats.retries,
                        "db.kv.keys_read": tr.stats.keys_read,
                        "db.kv.keys_written": tr.stats.keys_written,
                        "db.kv.bytes_written": tr.stats.bytes_written,
                    }
                )
                tr.cancel()

    async def run(self, fn: Callable[[Transaction], T]) -> T:
        """`transact(fn)` on the database's thread pool, for asyncio callers (a backend
        that `runs_inline` calls `fn` on the loop instead and awaits its commit).

        Cancelling the awaiting task does not stop a transaction that has begun.
        """
        loop = asyncio.get_running_loop()
        # Carry context variables (e.g. the current trace span) into the thread.
        call = functools.partial(contextvars.copy_context().run, self._transact, fn)
        result, sequence = await loop.run_in_executor(self._executor, call)
        await self._delivered(sequence)
        return result

    async def read(self, fn: Callable[[Transaction], T]) -> T:
        """`run(fn)` for an `fn` that only reads; on the event loop itself where the
        backend's `runs_inline` allows. An `fn` that writes fails before its commit."""

        def only_reads(tr: Transaction) -> T:
            result = fn(tr)
            if tr.stats.keys_written:
                raise RuntimeError("a transaction run by read() wrote")
            return result

        if self.runs_inline:
            return self.transact(only_reads)
        return await self.run(only_reads)

    def close(self) -> None:
        """Release the database's resources; it must not be used afterwards."""
        self._executor.shutdown(wait=True)
