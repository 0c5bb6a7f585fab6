"""The GcService servicer: status and on-demand cycles of this gc_svc process."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

import artifactstore
from artifactstore.errors import Reason, RegistryError
from artifactstore.gc.v1 import gc_pb2, gc_pb2_grpc
from gc_svc.progress import stats
from gc_svc.tasks import pending
from gc_svc.worker import Collector, describe

Context = grpc.aio.ServicerContext


class GcServicer(gc_pb2_grpc.GcServiceServicer):
    """Answers GcService calls (contract: protos/artifactstore/gc/v1/gc.proto)."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    async def GetServiceInfo(
        self, request: gc_pb2.GetServiceInfoRequest, context: Context
    ) -> gc_pb2.ServiceInfo:
        """This instance's version; it is collecting (a disabled one does not serve)."""
        return gc_pb2.ServiceInfo(version=artifactstore.__version__, enabled=True)

    async def GetStatus(
        self, request: gc_pb2.GetStatusRequest, context: Context
    ) -> gc_pb2.GcStatus:
        """The current and last cycles, the totals and the queues (a queue whose stats
        metadata_svc cannot give now shows zeros)."""
        b = self._collector.backends
        progress = b.progress
        status = gc_pb2.GcStatus(
            enabled=True,
            running=progress.current is not None,
            cycles=progress.cycles,
            totals=stats(progress.totals),
        )
        if progress.current is not None:
            status.current.CopyFrom(progress.current.message())
        if progress.last is not None:
            status.last.CopyFrom(progress.last.message())
        for field, queue in (
            (status.repository_queue, b.settings.gc_repository_queue),
            (status.canonical_queue, b.settings.gc_canonical_queue),
        ):
            field.queue = queue
            with contextlib.suppress(RegistryError, grpc.aio.AioRpcError):
                field.pending, field.parked = await pending(b, queue)
        return status

    async def RunCycle(self, request: gc_pb2.RunCycleRequest, context: Context) -> gc_pb2.Cycle:
        """Run one full cycle and answer its report. The cycle runs to its end even if the
        caller goes away. UNAVAILABLE when a service it needs does not answer."""
        run = asyncio.ensure_future(self._collector.run_cycle(request.dry_run))
        try:
            cycle = await asyncio.shield(run)
        except grpc.aio.AioRpcError as err:
            raise RegistryError(
                Reason.UNAVAILABLE, f"the GC cycle stopped: {describe(err)}"
            ) from None
        return cycle.message()
