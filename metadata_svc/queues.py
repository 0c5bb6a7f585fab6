"""Named work queues with leases, in the KV store, so that several workers share a queue.

A task waits in the ready index under the time it may next be leased. Leasing moves it to
"now + lease", so a task whose worker dies becomes leasable again by itself when the lease
runs out; each lease carries a fresh lease id, and only the holder of the current lease id
can finish the task, so a worker that lost its lease cannot finish work another now owns.
A task ends one of three ways (Quay's queue): done; retried later with backoff; or, after
`max_attempts`, parked with its last error for operators to see.

Every function here works inside a caller's transaction, so that enqueueing is atomic with
the change that causes it (a manifest PUT enqueues its scan in the same transaction).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field, replace

from artifactstore.errors import Reason, RegistryError
from metadata_svc.keys import Keyspace, decode_int
from metadata_svc.kv import Database, Transaction

PENDING = "pending"
PARKED = "parked"
DEFAULT_MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class Task:
    """One unit of queued work."""

    task_id: str
    queue: str
    payload: str
    enqueued_at: float
    available_at: float
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    dedup_key: str = ""
    lease_id: str = ""
    leased_by: str = ""
    last_error: str = ""
    # W3C trace context of whatever enqueued the task, so the worker's span can link to it.
    trace_context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueStats:
    """How a queue is doing."""

    pending: int
    parked: int
    leased: int
    # Seconds the longest-waiting leasable task has waited (0 when none waits).
    oldest_wait: float


def _us(t: float) -> int:
    return int(t * 1_000_000)


def _dump(task: Task) -> bytes:
    return json.dumps(asdict(task), separators=(",", ":")).encode()


def _load(raw: bytes) -> Task:
    return Task(**json.loads(raw))


class Queues:
    """Queue operations over one registry keyspace."""

    def __init__(self, keys: Keyspace) -> None:
        self._keys = keys

    def enqueue(
        self,
        tr: Transaction,
        queue: str,
        payload: str,
        *,
        dedup_key: str = "",
        delay: float = 0.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        trace_context: dict[str, str] | None = None,
    ) -> Task:
        """Add a task (inside `tr`). With `dedup_key`, a task for that key that is not done
        yet (waiting or leased) is returned instead of adding another."""
        keys = self._keys
        if dedup_key:
            existing = tr.get(keys.queue_dedup(queue, dedup_key))
            if existing is not None:
                raw = tr.get(keys.queue_task(queue, existing.decode()))
                if raw is not None:
                    return _load(raw)
        now = time.time()
        task = Task(
            task_id=uuid.uuid4().hex,
            queue=queue,
            payload=payload,
            enqueued_at=now,
            available_at=now + delay,
            max_attempts=max_attempts,
            dedup_key=dedup_key,
            trace_context=dict(trace_context or {}),
        )
        self._put(tr, task)
        if dedup_key:
            tr.set(keys.queue_dedup(queue, dedup_key), task.task_id.encode())
        tr.add(keys.queue_counter(queue, PENDING), 1)
        return task

    def _put(self, tr: Transaction, task: Task) -> None:
        tr.set(self._keys.queue_task(task.queue, task.task_id), _dump(task))
        tr.set(self._keys.queue_ready(task.queue, _us(task.available_at), task.task_id), b"")

    def _move(self, tr: Transaction, old: Task, new: Task) -> None:
        tr.clear(self._keys.queue_ready(old.queue, _us(old.available_at), old.task_id))
        self._put(tr, new)

    def lease(
        self, tr: Transaction, queue: str, worker: str, batch: int, lease_seconds: float
    ) -> list[Task]:
        """Lease up to `batch` leasable tasks, oldest first, for `lease_seconds`."""
        keys = self._keys
        now = time.time()
        space = keys.queue_ready_all(queue)
        rows = tr.get_range(space.range().start, space.pack((_us(now) + 1,)), limit=batch)
        leased = []
        for key, _ in rows:
            _, task_id = space.unpack(key)
            raw = tr.get(keys.queue_task(queue, task_id))
            if raw is None:
                tr.clear(key)
                continue
            task = _load(raw)
            new = replace(
                task,
                attempts=task.attempts + 1,
                available_at=now + lease_seconds,
                lease_id=uuid.uuid4().hex,
                leased_by=worker,
            )
            self._move(tr, task, new)
            leased.append(new)
        return leased

    def _held(self, tr: Transaction, queue: str, task_id: str, lease_id: str) -> Task:
        raw = tr.get(self._keys.queue_task(queue, task_id))
        task = _load(raw) if raw else None
        if task is None or task.lease_id != lease_id:
            raise RegistryError(
                Reason.DENIED,
                f"task {task_id[:64]} is not leased with this lease id",
                task=task_id[:64],
            )
        return task

    def _remove(self, tr: Transaction, task: Task) -> None:
        keys = self._keys
        tr.clear(keys.queue_task(task.queue, task.task_id))
        tr.clear(keys.queue_ready(task.queue, _us(task.available_at), task.task_id))
        if task.dedup_key:
            tr.clear(keys.queue_dedup(task.queue, task.dedup_key))
        tr.add(keys.queue_counter(task.queue, PENDING), -1)

    def complete(self, tr: Transaction, queue: str, task_id: str, lease_id: str) -> None:
        """The task is done: remove it. DENIED when the lease is no longer the caller's."""
        self._remove(tr, self._held(tr, queue, task_id, lease_id))

    def retry(
        self, tr: Transaction, queue: str, task_id: str, lease_id: str, error: str, delay: float
    ) -> Task:
        """The attempt failed: lease the task again after `delay`, or park it with `error`
        once it has had `max_attempts` attempts. Returns the task as it now is."""
        task = self._held(tr, queue, task_id, lease_id)
        new = replace(task, lease_id="", leased_by="", last_error=error[:2000])
        if task.attempts >= task.max_attempts:
            self._remove(tr, task)
            tr.set(self._keys.queue_parked(queue, task_id), _dump(new))
            tr.add(self._keys.queue_counter(queue, PARKED), 1)
            return new
        new = replace(new, available_at=time.time() + delay)
        self._move(tr, task, new)
        return new

    def extend(
        self, tr: Transaction, queue: str, task_id: str, lease_id: str, seconds: float
    ) -> Task:
        """Keep the lease for `seconds` more from now."""
        task = self._held(tr, queue, task_id, lease_id)
        new = replace(task, available_at=time.time() + seconds)
        self._move(tr, task, new)
        return new

    def stats(self, tr: Transaction, queue: str) -> QueueStats:
        """Counts of waiting and parked tasks, leased ones among the next 1,000, and the
        wait of the oldest leasable task."""
        keys = self._keys
        now = time.time()
        space = keys.queue_ready_all(queue)
        first = tr.get_range(space.range().start, space.range().stop, limit=1, snapshot=True)
        oldest_wait = 0.0
        if first:
            available_us, _ = space.unpack(first[0][0])
            oldest_wait = max(0.0, now - available_us / 1_000_000)
        future = tr.get_range(
            space.pack((_us(now) + 1,)), space.range().stop, limit=1000, snapshot=True
        )
        return QueueStats(
            pending=decode_int(tr.get(keys.queue_counter(queue, PENDING), snapshot=True)),
            parked=decode_int(tr.get(keys.queue_counter(queue, PARKED), snapshot=True)),
            leased=len(future),
            oldest_wait=oldest_wait,
        )

    def parked(self, tr: Transaction, queue: str, limit: int) -> list[Task]:
        """Parked tasks, for operators."""
        space = self._keys.queue_parked_all(queue)
        return [_load(v) for _, v in tr.get_range_startswith(space.key(), limit=limit)]


class QueueStore:
    """The queue operations as transactions of their own, for the queue RPCs."""

    def __init__(self, db: Database, queues: Queues) -> None:
        self._db = db
        self.queues = queues

    async def enqueue(
        self,
        queue: str,
        payload: str,
        dedup_key: str,
        delay: float,
        max_attempts: int,
        trace_context: dict[str, str],
    ) -> Task:
        """Add a task (see Queues.enqueue)."""
        return await self._db.run(
            lambda tr: self.queues.enqueue(
                tr,
                queue,
                payload,
                dedup_key=dedup_key,
                delay=delay,
                max_attempts=max_attempts or DEFAULT_MAX_ATTEMPTS,
                trace_context=trace_context,
            )
        )

    async def lease(self, queue: str, worker: str, batch: int, lease_seconds: float) -> list[Task]:
        """Lease tasks (see Queues.lease)."""
        if batch <= 0 or lease_seconds <= 0:
            raise RegistryError(
                Reason.PAGINATION_INVALID, "batch and lease_seconds must be positive"
            )
        return await self._db.run(
            lambda tr: self.queues.lease(tr, queue, worker, batch, lease_seconds)
        )

    async def complete(self, queue: str, task_id: str, lease_id: str) -> None:
        """Finish a task (see Queues.complete)."""
        await self._db.run(lambda tr: self.queues.complete(tr, queue, task_id, lease_id))

    async def retry(
        self, queue: str, task_id: str, lease_id: str, error: str, delay: float
    ) -> Task:
        """Retry or park a task (see Queues.retry)."""
        return await self._db.run(
            lambda tr: self.queues.retry(tr, queue, task_id, lease_id, error, delay)
        )

    async def extend(self, queue: str, task_id: str, lease_id: str, seconds: float) -> Task:
        """Extend a lease (see Queues.extend)."""
        return await self._db.run(
            lambda tr: self.queues.extend(tr, queue, task_id, lease_id, seconds)
        )

    async def stats(self, queue: str) -> QueueStats:
        """A queue's statistics."""
        return await self._db.run(lambda tr: self.queues.stats(tr, queue))

    async def parked(self, queue: str, limit: int) -> list[Task]:
        """Parked tasks of a queue."""
        return await self._db.run(lambda tr: self.queues.parked(tr, queue, min(limit or 100, 1000)))
