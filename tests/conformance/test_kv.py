"""Conformance suite for metadata_svc.kv backends.

Every test runs against the embedded backend (a fresh file per test) and, when
ARTS_TEST_FDB_CLUSTER_FILE names a cluster file, against FoundationDB too.
Each test writes only inside its own directory subspace and must clean up after
itself: teardown clears the directory and fails the test if anything was left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import fdb
import pytest

from metadata_svc.kv import (
    MAX_KEY_SIZE,
    MAX_TRANSACTION_SECONDS,
    MAX_VALUE_SIZE,
    Database,
    KeyOutsideLegalRange,
    KeyTooLarge,
    NotCommitted,
    Transaction,
    TransactionCancelled,
    TransactionTooLarge,
    TransactionTooOld,
    UsedDuringCommit,
    ValueTooLarge,
    open_database,
)
from metadata_svc.kv.embedded import EmbeddedDatabase
from metadata_svc.kv.fdb import FdbDatabase

FDB_CLUSTER_FILE = os.environ.get("ARTS_TEST_FDB_CLUSTER_FILE", "")
BACKENDS = ["embedded", "fdb"] if FDB_CLUSTER_FILE else ["embedded"]
REPO_ROOT = Path(__file__).resolve().parents[2]

Pairs = list[tuple[bytes, bytes]]


class FakeClock:
    """Real monotonic time plus an offset that tests can advance."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class Store:
    """One backend under test, with the current Database handle on it."""

    def __init__(self, kind: str, path: Path) -> None:
        self.path = path
        self.cluster_file = FDB_CLUSTER_FILE if kind == "fdb" else None
        self.clock = FakeClock()
        self.db = self._open()

    def _open(self) -> Database:
        if self.cluster_file:
            return open_database(cluster_file=self.cluster_file, embedded_path=self.path)
        return EmbeddedDatabase(self.path, clock=self.clock)

    @contextlib.contextmanager
    def closed(self) -> Iterator[None]:
        """Close the database for the duration, then open a new handle."""
        self.db.close()
        try:
            yield
        finally:
            self.db = self._open()

    def let_time_pass(self, seconds: float) -> None:
        """Age every open transaction by `seconds` (really, on FoundationDB)."""
        if self.cluster_file:
            time.sleep(seconds)
        else:
            self.clock.offset += seconds


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = Store(request.param, tmp_path / "kv.sqlite")
    yield s
    s.db.close()


@pytest.fixture
def db(store: Store) -> Database:
    return store.db


@pytest.fixture
def directory_name() -> str:
    """A test-unique name; every directory a test creates starts with it."""
    return f"kv-conformance-{uuid.uuid4().hex}"


@pytest.fixture
def space(store: Store, directory_name: str) -> Iterator[Any]:
    """The test's directory; the test must leave it (and the store) empty."""
    yield store.db.directory(directory_name)
    db = store.db  # The test may have reopened the store.
    if isinstance(db, FdbDatabase):
        raw = db.fdb_database
        names = [n for n in fdb.directory.list(raw) if n.startswith(directory_name)]
        subspaces = [db.directory(n) for n in names]
        leftovers = [kv for s in subspaces for kv in read_all(db, s)]
        for n in names:
            fdb.directory.remove(raw, (n,))
    else:
        # The file is the test's own: nothing may exist anywhere in it.
        leftovers = db.transact(lambda tr: tr.get_range(b"", b"\xff"))
        db.transact(lambda tr: tr.clear_range(b"", b"\xff"))
    if leftovers:
        pytest.fail(f"test left {len(leftovers)} keys behind, e.g. {leftovers[:3]}")


def clear_all(db: Database, space: Any) -> None:
    db.transact(lambda tr: tr.clear_range_startswith(space.key()))


def set_all(db: Database, pairs: Iterable[tuple[bytes, bytes]]) -> None:
    items = list(pairs)

    def write(tr: Transaction) -> None:
        for key, value in items:
            tr.set(key, value)

    db.transact(write)


def read_all(db: Database, space: Any) -> Pairs:
    return db.transact(lambda tr: tr.get_range_startswith(space.key()))


def int64(value: bytes | None) -> int:
    assert value is not None and len(value) == 8
    return int(struct.unpack("<q", value)[0])


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run target(i) on `count` threads at once; re-raise the first failure."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def body(i: int) -> None:
        try:
            start.wait()
            target(i)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# -- basic operations ----------------------------------------------------------


def test_get_set_clear(db: Database, space: Any) -> None:
    k1, k2 = space.pack(("a",)), space.pack(("b",))

    def write(tr: Transaction) -> None:
        tr.set(k1, b"one")
        tr.set(k2, b"")

    db.transact(write)
    assert db.transact(lambda tr: (tr.get(k1), tr.get(k2))) == (b"one", b"")
    assert db.transact(lambda tr: tr.get(space.pack(("missing",)))) is None

    db.transact(lambda tr: tr.set(k1, b"uno"))
    assert db.transact(lambda tr: tr.get(k1)) == b"uno"

    db.transact(lambda tr: tr.clear(k1))
    assert db.transact(lambda tr: tr.get(k1)) is None
    db.transact(lambda tr: tr.clear(k1))  # Clearing an absent key is fine.
    db.transact(lambda tr: tr.clear(k2))
    assert read_all(db, space) == []


def test_directories_are_stable_and_disjoint(db: Database, space: Any, directory_name: str) -> None:
    assert db.directory(directory_name).key() == space.key()
    other = db.directory(directory_name + "-other")
    assert not other.key().startswith(space.key())
    assert not space.key().startswith(other.key())
    set_all(db, [(space.pack(("k",)), b"1"), (other.pack(("k",)), b"2")])
    assert read_all(db, space) == [(space.pack(("k",)), b"1")]
    assert read_all(db, other) == [(other.pack(("k",)), b"2")]
    clear_all(db, space)
    clear_all(db, other)


# -- read-your-writes ----------------------------------------------------------


def test_point_reads_see_own_writes(db: Database, space: Any) -> None:
    a, b, c = (space.pack((n,)) for n in ("a", "b", "c"))
    set_all(db, [(a, b"A0"), (b, b"B0")])

    def check(tr: Transaction) -> None:
        tr.set(a, b"A1")
        assert tr.get(a) == b"A1"
        tr.clear(b)
        assert tr.get(b) is None
        tr.set(c, b"C1")
        tr.clear_range_startswith(space.key())
        assert (tr.get(a), tr.get(b), tr.get(c)) == (None, None, None)
        tr.set(b, b"B2")  # After the clear_range: must survive it.
        assert tr.get(b) == b"B2"

    db.transact(check)
    assert read_all(db, space) == [(b, b"B2")]
    clear_all(db, space)


def test_uncommitted_writes_are_invisible_to_others(db: Database, space: Any) -> None:
    key = space.pack(("k",))
    writer = db.create_transaction()
    writer.set(key, b"v")
    assert db.transact(lambda tr: tr.get(key)) is None
    writer.commit()
    assert db.transact(lambda tr: tr.get(key)) == b"v"
    clear_all(db, space)


def test_reads_come_from_one_snapshot(db: Database, space: Any) -> None:
    key = space.pack(("k",))
    db.transact(lambda tr: tr.set(key, b"old"))
    reader = db.create_transaction()
    assert reader.get(key) == b"old"
    set_all(db, [(key, b"new"), (space.pack(("k2",)), b"x")])
    assert reader.get(key) == b"old"
    assert reader.get_range_startswith(space.key()) == [(key, b"old")]
    reader.cancel()
    clear_all(db, space)


def model_range(
    model: dict[bytes, bytes], begin: bytes, end: bytes, limit: int, reverse: bool
) -> Pairs:
    pairs = sorted((k, v) for k, v in model.items() if begin <= k < end)
    if reverse:
        pairs.reverse()
    return pairs[:limit] if limit else pairs


def test_range_reads_merge_own_writes(db: Database, space: Any) -> None:
    keys = [space.pack((i,)) for i in range(20)]
    committed = {k: b"c%d" % i for i, k in enumerate(keys) if i % 2 == 0}
    set_all(db, committed.items())

    model = dict(committed)
    tr = db.create_transaction()
    for i in (1, 3, 4, 19):  # New keys, and an overwrite of committed key 4.
        tr.set(keys[i], b"t%d" % i)
        model[keys[i]] = b"t%d" % i
    tr.clear(keys[6])  # A committed key.
    del model[keys[6]]
    tr.clear_range(keys[9], keys[14])  # Committed keys 10 and 12.
    for i in (10, 12):
        del model[keys[i]]
    tr.set(keys[11], b"t11")  # Inside the cleared range, after the clear.
    model[keys[11]] = b"t11"

    bounds = [(space.key(), space.range().stop), (keys[2], keys[12]), (keys[5], keys[6])]
    for begin, end in bounds:
        for limit in (0, 1, 2, 3, 5, 100):
            for reverse in (False, True):
                got = tr.get_range(begin, end, limit=limit, reverse=reverse)
                assert got == model_range(model, begin, end, limit, reverse), (limit, reverse)
    tr.commit()
    assert read_all(db, space) == model_range(model, space.key(), space.range().stop, 0, False)
    clear_all(db, space)


def test_clear_range_over_committed_keys(db: Database, space: Any) -> None:
    keys = [space.pack((i,)) for i in range(10)]
    set_all(db, ((k, b"v") for k in keys))

    def clear_middle(tr: Transaction) -> None:
        tr.clear_range(keys[3], keys[7])
        assert [k for k, _ in tr.get_range_startswith(space.key())] == keys[:3] + keys[7:]
        assert tr.get(keys[5]) is None
        assert tr.get(keys[7]) == b"v"  # The end is exclusive.

    db.transact(clear_middle)
    assert [k for k, _ in read_all(db, space)] == keys[:3] + keys[7:]
    clear_all(db, space)
    assert read_all(db, space) == []


def apply_add(old: bytes | None, delta: int) -> bytes:
    base = int.from_bytes((old or b"")[:8], "little")
    return ((base + delta) % 2**64).to_bytes(8, "little")


@pytest.mark.parametrize("seed", range(8))
def test_random_operations_match_a_model(db: Database, space: Any, seed: int) -> None:
    rng = random.Random(seed)
    keys = [space.pack((i,)) for i in range(24)]
    committed = {k: b"%d" % rng.randrange(100) for k in rng.sample(keys, 12)}
    set_all(db, committed.items())
    model = dict(committed)
    tr = db.create_transaction()
    for _ in range(150):
        op = rng.choice(["set", "clear", "clear_range", "add", "get", "range"])
        key = rng.choice(keys)
        lo, hi = sorted(rng.sample(range(len(keys) + 1), 2))
        begin = keys[lo]
        end = keys[hi] if hi < len(keys) else space.range().stop
        if op == "set":
            value = rng.randbytes(rng.randrange(4))
            tr.set(key, value)
            model[key] = value
        elif op == "clear":
            tr.clear(key)
            model.pop(key, None)
        elif op == "clear_range":
            tr.clear_range(begin, end)
            for k in [k for k in model if begin <= k < end]:
                del model[k]
        elif op == "add":
            delta = rng.randrange(-(2**63), 2**63)
            tr.add(key, delta)
            model[key] = apply_add(model.get(key), delta)
        elif op == "get":
            assert tr.get(key, snapshot=rng.random() < 0.5) == model.get(key)
        else:
            limit, reverse = rng.choice([0, 1, 2, 5]), rng.random() < 0.5
            got = tr.get_range(begin, end, limit=limit, reverse=reverse)
            assert got == model_range(model, begin, end, limit, reverse)
    tr.commit()
    assert read_all(db, space) == model_range(model, space.key(), space.range().stop, 0, False)
    clear_all(db, space)


# -- ordering and ranges -------------------------------------------------------


def test_tuple_keys_sort_in_tuple_order(db: Database, space: Any) -> None:
    # Within each type by value, and types in the tuple layer's order.
    expected: list[tuple[Any, ...]] = [
        (b"",),
        (b"\x00",),
        (b"\x00\x00",),
        (b"\x01",),
        (b"\xff",),
        ("",),
        ("a",),
        ("a\x00",),
        ("ab",),
        ("b",),
        ("tag", 1),
        ("tag", 1, "x"),
        ("tag", 2),
        ("é",),
        (("a",),),
        (("a", 1),),
        (("b",),),
        (-(2**40),),
        (-1000,),
        (-1,),
        (0,),
        (1,),
        (255,),
        (256,),
        (2**40,),
    ]
    shuffled = expected[:]
    random.Random(7).shuffle(shuffled)
    set_all(db, ((space.pack(t), b"") for t in shuffled))

    got = [space.unpack(k) for k, _ in read_all(db, space)]
    assert got == expected
    in_tag = db.transact(lambda tr: tr.get_range(*bounds(space.range(("tag",)))))
    assert [space.unpack(k) for k, _ in in_tag] == [("tag", 1), ("tag", 1, "x"), ("tag", 2)]
    clear_all(db, space)


def bounds(r: slice) -> tuple[bytes, bytes]:
    return r.start, r.stop


def test_range_limit_reverse_and_bounds(db: Database, space: Any) -> None:
    keys = [space.pack((i,)) for i in range(10)]
    set_all(db, ((k, b"%d" % i) for i, k in enumerate(keys)))

    def check(tr: Transaction) -> None:
        assert [k for k, _ in tr.get_range(keys[2], keys[5])] == keys[2:5]
        assert [k for k, _ in tr.get_range(keys[2], keys[5], reverse=True)] == keys[4:1:-1]
        assert [k for k, _ in tr.get_range(keys[0], keys[9], limit=3)] == keys[:3]
        assert [k for k, _ in tr.get_range(keys[0], keys[9], limit=3, reverse=True)] == [
            keys[8],
            keys[7],
            keys[6],
        ]
        assert tr.get_range_startswith(space.key(), limit=1, reverse=True) == [(keys[9], b"9")]
        assert tr.get_range(keys[5], keys[5]) == []
        assert tr.get_range(keys[6], keys[2]) == []
        with pytest.raises(ValueError):
            tr.get_range(keys[0], keys[9], limit=-1)

    db.transact(check)
    clear_all(db, space)


# -- atomic add ----------------------------------------------------------------


def test_add_semantics(db: Database, space: Any) -> None:
    k = space.pack(("counter",))
    short, long_ = space.pack(("short",)), space.pack(("long",))
    db.transact(lambda tr: tr.add(k, 5))
    assert int64(db.transact(lambda tr: tr.get(k))) == 5
    db.transact(lambda tr: tr.add(k, -7))
    assert int64(db.transact(lambda tr: tr.get(k))) == -2
    db.transact(lambda tr: tr.add(k, 2**63 - 1))  # Wraps around like int64.
    assert int64(db.transact(lambda tr: tr.get(k))) == 2**63 - 3

    def in_one_transaction(tr: Transaction) -> None:
        tr.set(k, struct.pack("<q", 10))
        tr.add(k, 1)
        assert int64(tr.get(k)) == 11
        tr.clear(k)
        tr.add(k, 3)  # Cleared counts as absent, i.e. 0.
        tr.add(k, 4)
        assert int64(tr.get(k)) == 7
        # Shorter values are zero-extended, longer ones truncated to 8 bytes.
        tr.set(short, b"\x01")
        tr.set(long_, struct.pack("<q", 1) + b"\xff\xff")

    db.transact(in_one_transaction)
    db.transact(lambda tr: tr.add(short, 1))
    db.transact(lambda tr: tr.add(long_, 1))
    assert int64(db.transact(lambda tr: tr.get(short))) == 2
    assert int64(db.transact(lambda tr: tr.get(long_))) == 2

    def pending_add_is_read_through(tr: Transaction) -> None:
        tr.add(k, 100)  # Base unknown to the transaction until read.
        assert int64(tr.get(k)) == 107
        assert [(key, int64(v)) for key, v in tr.get_range(k, k + b"\x00")] == [(k, 107)]

    db.transact(pending_add_is_read_through)
    with pytest.raises(ValueError):
        db.transact(lambda tr: tr.add(k, 2**63))
    clear_all(db, space)


def test_concurrent_adds_sum_exactly_without_conflicts(db: Database, space: Any) -> None:
    k = space.pack(("counter",))

    def adder(i: int) -> None:
        for _ in range(50):
            tr = db.create_transaction()
            tr.add(k, i + 1)
            tr.commit()  # No retry loop: any conflict would fail the test.

    run_threads(8, adder)
    assert int64(db.transact(lambda tr: tr.get(k))) == 50 * sum(range(1, 9))
    clear_all(db, space)


def test_add_adds_no_read_conflict(db: Database, space: Any) -> None:
    k = space.pack(("counter",))
    adder = db.create_transaction()
    assert adder.get(space.pack(("unrelated",))) is None  # Takes a read version.
    adder.add(k, 1)
    db.transact(lambda tr: tr.set(k, struct.pack("<q", 41)))
    adder.commit()
    assert int64(db.transact(lambda tr: tr.get(k))) == 42
    clear_all(db, space)


# -- conflicts -----------------------------------------------------------------


def test_read_modify_write_conflict(db: Database, space: Any) -> None:
    k = space.pack(("k",))
    db.transact(lambda tr: tr.set(k, b"0"))
    first, second = db.create_transaction(), db.create_transaction()
    for tr in (first, second):
        tr.set(k, b"%d" % (int(tr.get(k) or b"0") + 1))
    first.commit()
    with pytest.raises(NotCommitted) as raised:
        second.commit()
    assert raised.value.code == 1020 and raised.value.retryable
    assert db.transact(lambda tr: tr.get(k)) == b"1"
    clear_all(db, space)


def test_transact_retries_concurrent_increments_exactly(db: Database, space: Any) -> None:
    k = space.pack(("k",))

    def increment(tr: Transaction) -> None:
        tr.set(k, b"%d" % (int(tr.get(k) or b"0") + 1))

    def worker(_: int) -> None:
        for _ in range(50):
            db.transact(increment)

    run_threads(8, worker)
    assert db.transact(lambda tr: tr.get(k)) == b"400"
    clear_all(db, space)


def test_snapshot_reads_do_not_conflict(db: Database, space: Any) -> None:
    k, other = space.pack(("k",)), space.pack(("other",))
    reader = db.create_transaction()
    assert reader.get(k, snapshot=True) is None
    assert reader.get_range_startswith(space.key(), snapshot=True) == []
    reader.set(other, b"x")
    db.transact(lambda tr: tr.set(k, b"v"))
    reader.commit()
    assert db.transact(lambda tr: tr.get(other)) == b"x"
    clear_all(db, space)


def test_write_into_a_range_read_conflicts(db: Database, space: Any) -> None:
    # The write creates a key the reader did not see (a phantom).
    reader = db.create_transaction()
    assert reader.get_range(*bounds(space.range(("items",)))) == []
    reader.set(space.pack(("summary",)), b"empty")
    db.transact(lambda tr: tr.set(space.pack(("items", 1)), b"x"))
    with pytest.raises(NotCommitted):
        reader.commit()
    clear_all(db, space)


def test_limited_range_read_conflicts_only_on_what_it_read(db: Database, space: Any) -> None:
    keys = [space.pack((i,)) for i in range(10)]
    set_all(db, ((k, b"") for k in keys))
    for reverse, beyond, within in ((False, keys[5], keys[1]), (True, keys[4], keys[8])):
        for written, conflicts in ((beyond, False), (within, True)):
            reader = db.create_transaction()
            assert len(reader.get_range(keys[0], keys[9], limit=2, reverse=reverse)) == 2
            reader.set(space.pack(("flag",)), b"")
            set_all(db, [(written, b"changed")])
            if conflicts:
                with pytest.raises(NotCommitted):
                    reader.commit()
            else:
                reader.commit()
    clear_all(db, space)


def test_blind_writes_do_not_conflict(db: Database, space: Any) -> None:
    k = space.pack(("k",))
    first, second = db.create_transaction(), db.create_transaction()
    first.set(k, b"first")
    second.set(k, b"second")
    first.commit()
    second.commit()
    assert db.transact(lambda tr: tr.get(k)) == b"second"
    clear_all(db, space)


def test_explicit_conflict_keys(db: Database, space: Any) -> None:
    k = space.pack(("lock",))
    reader = db.create_transaction()
    reader.add_read_conflict_key(k)
    reader.set(space.pack(("work",)), b"done")
    marker = db.create_transaction()
    marker.add_write_conflict_key(k)  # Conflicts without writing anything.
    marker.commit()
    with pytest.raises(NotCommitted):
        reader.commit()
    assert read_all(db, space) == []


# -- limits --------------------------------------------------------------------


def key_of_size(space: Any, size: int) -> bytes:
    key = space.pack(("k",))
    return key + b"x" * (size - len(key))


def test_key_size_limit(db: Database, space: Any) -> None:
    largest, too_large = key_of_size(space, MAX_KEY_SIZE), key_of_size(space, MAX_KEY_SIZE + 1)
    db.transact(lambda tr: tr.set(largest, b"v"))
    assert db.transact(lambda tr: tr.get(largest)) == b"v"
    for use in (lambda tr: tr.set(too_large, b"v"), lambda tr: tr.get(too_large)):
        with pytest.raises(KeyTooLarge) as raised:
            db.transact(use)
        assert raised.value.code == 2102 and not raised.value.retryable
    clear_all(db, space)


def test_value_size_limit(db: Database, space: Any) -> None:
    k = space.pack(("k",))
    db.transact(lambda tr: tr.set(k, b"v" * MAX_VALUE_SIZE))
    assert db.transact(lambda tr: tr.get(k)) == b"v" * MAX_VALUE_SIZE
    with pytest.raises(ValueTooLarge) as raised:
        db.transact(lambda tr: tr.set(k, b"v" * (MAX_VALUE_SIZE + 1)))
    assert raised.value.code == 2103
    clear_all(db, space)


def test_transaction_size_limit(db: Database, space: Any) -> None:
    value = b"v" * MAX_VALUE_SIZE

    set_all(db, ((space.pack((i,)), value) for i in range(95)))  # 9.5 MB: allowed.
    clear_all(db, space)
    with pytest.raises(TransactionTooLarge) as raised:
        # 10.1 MB: over the limit, and nothing is applied.
        set_all(db, ((space.pack((i,)), value) for i in range(101)))
    assert raised.value.code == 2101
    assert read_all(db, space) == []


def test_system_keys_are_out_of_reach(db: Database, space: Any) -> None:
    for use in (
        lambda tr: tr.get(b"\xff/x"),
        lambda tr: tr.set(b"\xff/x", b""),
        lambda tr: tr.get_range(b"", b"\xff\xff"),
    ):
        with pytest.raises(KeyOutsideLegalRange):
            db.transact(use)
    assert read_all(db, space) == []


def test_old_transactions_are_too_old(store: Store, db: Database, space: Any) -> None:
    k = space.pack(("k",))
    reader, writer = db.create_transaction(), db.create_transaction()
    reader.get(k)
    writer.get(k)
    writer.set(k, b"late")
    store.let_time_pass(MAX_TRANSACTION_SECONDS + 1)
    with pytest.raises(TransactionTooOld) as raised:
        reader.get(k)
    assert raised.value.code == 1007 and raised.value.retryable
    with pytest.raises(TransactionTooOld):
        writer.commit()
    # on_error resets the transaction, which then works again.
    reader.on_error(raised.value)
    assert reader.get(k) is None
    reader.commit()
    assert db.transact(lambda tr: tr.get(k)) is None


# -- lifecycle -----------------------------------------------------------------


def test_transaction_misuse(db: Database, space: Any) -> None:
    k = space.pack(("k",))
    tr = db.create_transaction()
    tr.set(k, b"v")
    tr.commit()
    with pytest.raises(UsedDuringCommit):
        tr.get(k)
    tr.reset()
    assert tr.get(k) == b"v"
    tr.cancel()
    with pytest.raises(TransactionCancelled):
        tr.set(k, b"w")
    tr.reset()
    tr.clear(k)
    tr.commit()
    assert read_all(db, space) == []


def test_stats_count_work(db: Database, space: Any) -> None:
    k = space.pack(("k",))
    tr = db.create_transaction()
    tr.get(k)
    tr.set(k, b"12345")
    tr.add(space.pack(("c",)), 1)
    tr.get_range_startswith(space.key())
    tr.on_error(NotCommitted())
    assert tr.stats.keys_read == 3  # One point read, two rows.
    assert tr.stats.keys_written == 2
    assert tr.stats.bytes_written == len(k) + 5 + len(space.pack(("c",))) + 8
    assert tr.stats.retries == 1
    tr.cancel()
    assert read_all(db, space) == []


def test_transact_returns_result_and_retries_only_retryable_errors(
    db: Database, space: Any
) -> None:
    k, first_only = space.pack(("k",)), space.pack(("first-attempt",))
    calls: list[int] = []

    def flaky(tr: Transaction) -> str:
        calls.append(1)
        tr.set(k, b"%d" % len(calls))
        if len(calls) == 1:
            tr.set(first_only, b"")
        if len(calls) < 3:
            raise NotCommitted("injected")
        return "result"

    assert db.transact(flaky) == "result"
    assert len(calls) == 3
    # Only the successful attempt's writes were committed.
    assert read_all(db, space) == [(k, b"3")]

    def fails(error: Exception) -> Callable[[Transaction], None]:
        def fn(tr: Transaction) -> None:
            calls.append(1)
            raise error

        return fn

    for error in (KeyTooLarge("injected"), ValueError("not a KV error")):
        calls.clear()
        with pytest.raises(type(error)):
            db.transact(fails(error))
        assert len(calls) == 1

    db.retry_limit = 3
    calls.clear()
    with pytest.raises(NotCommitted):
        db.transact(fails(NotCommitted("always")))
    assert len(calls) == 4
    clear_all(db, space)


async def test_run_executes_where_the_backend_says(db: Database, space: Any) -> None:
    k = space.pack(("k",))

    def write(tr: Transaction) -> str:
        tr.set(k, b"v")
        return threading.current_thread().name

    thread_name = await db.run(write)
    # On the event loop's thread exactly where the backend says transactions run there.
    assert (thread_name == threading.current_thread().name) is db.runs_inline
    assert await db.run(lambda tr: tr.get(k)) == b"v"
    await db.run(lambda tr: tr.clear(k))


async def test_concurrent_runs_are_serializable(db: Database, space: Any) -> None:
    """Many transactions in flight at once, as the services run them: the increments
    (read-modify-write, so they conflict) and the adds (which never do) all count once,
    however the backend groups their commits."""
    counter, total = space.pack(("counter",)), space.pack(("total",))

    def increment(tr: Transaction) -> None:
        tr.set(counter, b"%d" % (int(tr.get(counter) or b"0") + 1))

    def add(tr: Transaction) -> None:
        tr.add(total, 1)

    await asyncio.gather(*(db.run(increment) for _ in range(60)), *(db.run(add) for _ in range(60)))
    assert await db.run(lambda tr: tr.get(counter)) == b"60"
    assert int64(await db.run(lambda tr: tr.get(total))) == 60
    clear_all(db, space)


async def test_read_sees_commits_and_refuses_writes(db: Database, space: Any) -> None:
    k, other = space.pack(("k",)), space.pack(("other",))
    await db.run(lambda tr: tr.set(k, b"v"))
    value, thread = await db.read(lambda tr: (tr.get(k), threading.current_thread().name))
    assert value == b"v"
    # On the event loop's thread exactly where the backend says reads may run there.
    assert (thread == threading.current_thread().name) is db.runs_inline

    def writes(tr: Transaction) -> None:
        tr.set(other, b"x")

    with pytest.raises(RuntimeError, match="wrote"):
        await db.read(writes)
    assert await db.run(lambda tr: tr.get(other)) is None
    await db.run(lambda tr: tr.clear(k))


# -- durability ----------------------------------------------------------------


def test_committed_data_survives_reopen(store: Store, space: Any) -> None:
    committed, uncommitted = space.pack(("committed",)), space.pack(("uncommitted",))
    store.db.transact(lambda tr: tr.set(committed, b"kept"))
    pending = store.db.create_transaction()
    pending.set(uncommitted, b"lost")
    with store.closed():
        pass
    pending.cancel()
    assert read_all(store.db, space) == [(committed, b"kept")]
    clear_all(store.db, space)


CRASHING_WRITER = """
import os, signal, sys
from pathlib import Path
from metadata_svc.kv import open_database

db = open_database(cluster_file=sys.argv[1] or None, embedded_path=Path(sys.argv[2]))
space = db.directory(sys.argv[3])
db.transact(lambda tr: tr.set(space.pack(("committed",)), b"kept"))
tr = db.create_transaction()
tr.set(space.pack(("uncommitted",)), b"lost")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_committed_data_survives_a_crash(store: Store, space: Any, directory_name: str) -> None:
    args = [store.cluster_file or "", str(store.path), directory_name]
    with store.closed():
        result = subprocess.run(
            [sys.executable, "-c", CRASHING_WRITER, *args],
            cwd=REPO_ROOT,
            capture_output=True,
            timeout=60,
        )
    assert result.returncode == -9, result.stderr.decode()
    assert read_all(store.db, space) == [(space.pack(("committed",)), b"kept")]
    clear_all(store.db, space)


# -- embedded backend only -----------------------------------------------------


def test_embedded_file_is_opened_by_one_handle_only(tmp_path: Path) -> None:
    db = open_database(cluster_file=None, embedded_path=tmp_path / "nested" / "kv.sqlite")
    try:
        with pytest.raises(RuntimeError, match="already open"):
            EmbeddedDatabase(tmp_path / "nested" / "kv.sqlite")
    finally:
        db.close()
    EmbeddedDatabase(tmp_path / "nested" / "kv.sqlite").close()


def test_embedded_refuses_commits_it_can_no_longer_check(tmp_path: Path) -> None:
    # Commits pruned from the history can no longer be checked against, so a
    # transaction whose read version predates them must be refused as too old.
    clock = FakeClock()
    db = EmbeddedDatabase(tmp_path / "kv.sqlite", clock=clock)
    try:
        reader = db.create_transaction()
        reader.get(b"k")
        db.transact(lambda tr: tr.set(b"k", b"v"))
        clock.offset += MAX_TRANSACTION_SECONDS + 1
        db.transact(lambda tr: tr.set(b"other", b"v"))  # Prunes the first commit.
        clock.offset -= MAX_TRANSACTION_SECONDS + 1  # The reader itself is not old.
        reader.set(b"x", b"v")
        with pytest.raises(TransactionTooOld):
            reader.commit()
    finally:
        db.close()
