"""The GC worker: a cycle of mark and sweep every ARTS_GC_INTERVAL_SECS, and the repository
and canonical queues worked between cycles.

A cycle runs mark (mark.py), sweep (sweep.py), then upload expiry, then the queues until
no task is left (so that a cycle's report includes the bytes its sweep freed). One cycle
runs at a time in a process; replicas may run theirs concurrently, as every step is an
idempotent metadata transaction checked again where it removes anything. A cycle that
fails stops; the next one starts over.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from artifactstore.errors import RegistryError
from gc_svc.backends import Backends
from gc_svc.mark import mark
from gc_svc.progress import DELETED_REPOSITORIES, QUEUES, SWEEP, UPLOADS, Cycle
from gc_svc.sweep import sweep, sweep_uploads
from gc_svc.tasks import Handler, delete_blob, pending, purge_repository, run_batch

log = logging.getLogger(__name__)


def describe(err: BaseException) -> str:
    """A one-line account of why a cycle or task stopped."""
    if isinstance(err, RegistryError):
        return f"{err.reason}: {err.message}"
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    if isinstance(err, asyncio.CancelledError):
        return "cancelled"
    return f"{type(err).__name__}: {err}"


class Collector:
    """Runs cycles and works the GC queues for one gc_svc process."""

    def __init__(self, backends: Backends) -> None:
        self._b = backends
        self._lock = asyncio.Lock()

    @property
    def backends(self) -> Backends:
        """The clients and settings the collector works with."""
        return self._b

    async def run_cycle(self, dry_run: bool) -> Cycle:
        """Run one full cycle (after any cycle this process is running) and return it.
        Raises what stopped it, after recording it as the cycle's error."""
        b = self._b
        async with self._lock:
            cycle = b.progress.start(dry_run)
            try:
                await mark(b, cycle)
                cycle.phase = SWEEP
                await sweep(b, cycle)
                cycle.phase = UPLOADS
                await sweep_uploads(b, cycle)
                cycle.phase = QUEUES
                await self._drain(cycle)
            except BaseException as err:
                b.progress.end(cycle, describe(err))
                raise
            b.progress.end(cycle)
            return cycle

    async def _drain(self, cycle: Cycle) -> None:
        """Work both queues until no task is pending, for at most one lease period (a task
        leased by a worker that died waits that long before it can be leased again)."""
        b = self._b
        settings = b.settings
        waiting, _ = await pending(b, settings.gc_repository_queue)
        b.progress.record(DELETED_REPOSITORIES, cycle, marked=waiting)
        if cycle.dry_run:
            return
        deadline = time.monotonic() + settings.gc_lease_seconds
        queues: list[tuple[str, Handler]] = [
            (settings.gc_repository_queue, purge_repository),
            (settings.gc_canonical_queue, delete_blob),
        ]
        while True:
            worked = 0
            for queue, handler in queues:
                worked += await run_batch(b, queue, handler)
            if worked:
                continue
            left = [(await pending(b, queue))[0] for queue, _ in queues]
            if not any(left) or time.monotonic() > deadline:
                return
            await asyncio.sleep(settings.gc_poll_seconds)

    async def run_forever(self) -> None:
        """Run a cycle every ARTS_GC_INTERVAL_SECS (the first one interval after start) and
        work both queues meanwhile, until cancelled."""
        settings = self._b.settings
        await asyncio.gather(
            self._cycles(),
            self._consume(settings.gc_repository_queue, purge_repository),
            self._consume(settings.gc_canonical_queue, delete_blob),
        )

    async def _cycles(self) -> None:
        while True:
            await asyncio.sleep(self._b.settings.gc_interval_seconds)
            started = time.monotonic()
            try:
                cycle = await self.run_cycle(dry_run=False)
                log.info(
                    "GC cycle done in %.1f s: %s",
                    time.monotonic() - started,
                    ", ".join(
                        f"{name} {c.reclaimed} ({c.reclaimed_bytes} bytes)"
                        for name, c in cycle.counts.items()
                    ),
                )
            except Exception as err:
                log.warning("GC cycle stopped: %s", describe(err))

    async def _consume(self, queue: str, handler: Handler) -> None:
        while True:
            try:
                worked = await run_batch(self._b, queue, handler)
            except Exception as err:
                log.warning("cannot lease tasks of %s: %s", queue, describe(err))
                worked = 0
            if not worked:
                await asyncio.sleep(self._b.settings.gc_poll_seconds)
