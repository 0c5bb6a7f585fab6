"""Liveness and readiness of the gateway, for orchestrators and load balancers."""

from __future__ import annotations

import asyncio

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2

from gateway.keys import clients
from gateway.responses import json_response

# A readiness probe must answer quickly, whatever the backends do.
CHECK_SECONDS = 1.0


async def live(request: web.Request) -> web.Response:
    """`GET /healthz`: 200 while the process serves HTTP at all."""
    return json_response({"status": "alive"})


async def _serving(stub: object) -> bool:
    try:
        reply = await stub.Check(  # type: ignore[attr-defined]
            health_pb2.HealthCheckRequest(service=""), timeout=CHECK_SECONDS, wait_for_ready=False
        )
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def ready(request: web.Request) -> web.Response:
    """`GET /readyz`: 200 when every service the gateway needs answers SERVING to a gRPC
    health check, else 503; the body says which is which."""
    stubs = clients(request).health
    results = await asyncio.gather(*(_serving(stub) for stub in stubs.values()))
    services = {
        name: "serving" if ok else "not serving" for name, ok in zip(stubs, results, strict=True)
    }
    ok = all(results)
    return json_response(
        {"status": "ready" if ok else "not ready", "services": services}, status=200 if ok else 503
    )
