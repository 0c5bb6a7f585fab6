"""Assembles gc_svc: the GcService server and the worker behind it (worker.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from artifactstore import rpc
from artifactstore.config import Settings
from artifactstore.gc.v1 import gc_pb2, gc_pb2_grpc
from gc_svc.backends import connect
from gc_svc.progress import Progress
from gc_svc.service import GcServicer
from gc_svc.worker import Collector

log = logging.getLogger(__name__)

SERVICE_NAME: str = gc_pb2.DESCRIPTOR.services_by_name["GcService"].full_name
# How long a disabled instance answers NOT_SERVING before it exits.
DISABLED_REPORT_SECONDS = 2.0


async def main(settings: Settings) -> None:
    """Serve GcService and collect garbage until SIGTERM or SIGINT; with ARTS_GC_ENABLED
    false, report NOT_SERVING for a moment and exit (status 0: the supervisor leaves a
    worker configured off stopped)."""
    if not settings.gc_enabled:
        await _report_disabled(settings.gc_address)
        return
    async with connect(settings, Progress()) as backends:
        collector = Collector(backends)
        worker = asyncio.create_task(collector.run_forever())

        async def stop_worker() -> None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

        servicer = rpc.Servicer(
            gc_pb2_grpc.add_GcServiceServicer_to_server, GcServicer(collector), SERVICE_NAME
        )
        await rpc.serve([servicer], settings.gc_address, on_stop=stop_worker)


async def _report_disabled(address: str) -> None:
    log.warning("garbage collection is disabled (ARTS_GC_ENABLED=false); gc_svc exits")
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if address.startswith("unix:"):
        await asyncio.to_thread(
            _replace_socket, Path(address.removeprefix("unix:").removeprefix("//"))
        )
    server.add_insecure_port(address)
    await server.start()
    await asyncio.sleep(DISABLED_REPORT_SECONDS)
    await server.stop(None)


def _replace_socket(path: Path) -> None:
    """Make a unix socket's folder and remove a stale socket a crash left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
