"""gRPC bootstrap shared by every service: servers with health checking, reflection,
error translation and graceful stop; client channels with the same options.

A servicer raises `RegistryError`; the interceptor here turns it into a rich status, so
service code never builds statuses by hand.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor

from artifactstore import metrics
from artifactstore.errors import RegistryError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Manifests may be 4 MiB and travel whole in one message; leave room for the envelope.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Blob bytes stream in messages of this size (DESIGN principle 5: large chunks).
STREAM_CHUNK_BYTES = 1024 * 1024

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 1),
    # A restarted service is reached again within a couple of seconds, not gRPC's
    # default of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


# Clients ping every 30 s (keepalive_time_ms); the server must allow that, or it answers
# "too many pings" with GOAWAY and takes down every call on the shared connection.
SERVER_OPTIONS: list[tuple[str, Any]] = [
    *CHANNEL_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


UnaryBehaviour = Callable[..., Awaitable[Any]]
StreamBehaviour = Callable[..., AsyncIterator[Any]]


def rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[UnaryBehaviour], UnaryBehaviour],
    stream: Callable[[StreamBehaviour], StreamBehaviour],
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour wrapped: `unary` for calls answered by one message
    (unary-unary, stream-unary), `stream` for calls answered by a stream (unary-stream).
    Server interceptors use it to add behaviour around every call."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **serializers)
    if handler.unary_stream:
        behaviour: Any = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(stream(behaviour), **serializers)
    return handler


class _ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns a `RegistryError` raised by a servicer into its rich gRPC status."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        return None if handler is None else rewrap(handler, _wrap_unary, _wrap_stream)


class _MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every gRPC call a server handles."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.strip("/").rpartition("/")
        return rewrap(
            handler,
            lambda behaviour: _timed_unary(behaviour, service, method),
            lambda behaviour: _timed_stream(behaviour, service, method),
        )


def _code(context: grpc.aio.ServicerContext, failed: bool) -> str:
    # None until a status is set: an undecorated success, or an exception left to gRPC.
    code: grpc.StatusCode | None = context.code()
    if code is not None:
        return code.name
    return "UNKNOWN" if failed else "OK"


def _timed_unary(
    behaviour: Callable[..., Awaitable[Any]], service: str, method: str
) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        failed = True
        try:
            result = await behaviour(request, context)
            failed = False
            return result
        finally:
            metrics.RPC_SECONDS.labels(service, method).observe(time.perf_counter() - start)
            metrics.RPC_HANDLED.labels(service, method, _code(context, failed)).inc()

    return wrapped


def _timed_stream(behaviour: Callable[..., Any], service: str, method: str) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        failed = True
        try:
            async for item in behaviour(request, context):
                yield item
            failed = False
        finally:
            metrics.RPC_SECONDS.labels(service, method).observe(time.perf_counter() - start)
            metrics.RPC_HANDLED.labels(service, method, _code(context, failed)).inc()

    return wrapped


async def _abort(context: grpc.aio.ServicerContext, err: RegistryError) -> None:
    status = err.to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


def _wrap_unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behaviour(request, context)
        except RegistryError as err:
            await _abort(context, err)

    return wrapped


def _wrap_stream(behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in behaviour(request, context):
                yield item
        except RegistryError as err:
            await _abort(context, err)

    return wrapped


@dataclass(frozen=True)
class Servicer:
    """One gRPC service to serve: the generated `add_..._to_server`, the implementation and
    its full service name (for health checking and reflection)."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    implementation: object
    name: str


def _prepare_address(address: str) -> None:
    """Create the folder of a unix socket and remove a stale socket left by a crash."""
    if address.startswith("unix:"):
        path = Path(address.removeprefix("unix:").removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)


async def serve(
    servicers: Sequence[Servicer],
    address: str,
    *,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    grace_seconds: float = 5.0,
) -> None:
    """Serve `servicers` at `address` (host:port or unix:path) until SIGTERM or SIGINT.

    Every server also answers gRPC health checking (each service SERVING once started,
    NOT_SERVING while stopping) and server reflection. On a signal the server stops taking
    calls, lets running ones finish for `grace_seconds`, then runs `on_stop`.
    """
    server = grpc.aio.server(
        # Outermost first: the span and the metrics see the status errors become.
        interceptors=[aio_server_interceptor(), _MetricsInterceptor(), _ErrorInterceptor()],
        options=SERVER_OPTIONS,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for s in servicers:
        s.add_to_server(s.implementation, server)
    names = [s.name for s in servicers]
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    _prepare_address(address)
    if server.add_insecure_port(address) == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s at %s", ", ".join(names), address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping %s", ", ".join(names))
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_seconds)
    if on_stop is not None:
        await on_stop()


# Unary calls that take longer than this (a service down for good, say) fail with
# DEADLINE_EXCEEDED instead of hanging; a restarting service is back well within it.
UNARY_TIMEOUT_SECONDS = 10.0


def _patient(
    details: grpc.aio.ClientCallDetails, timeout: float | None
) -> grpc.aio.ClientCallDetails:
    # wait_for_ready: a call made while its service is (re)starting waits for it to come
    # up, instead of failing at once with UNAVAILABLE.
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout if details.timeout is not None else timeout,
        metadata=details.metadata,
        credentials=details.credentials,
        wait_for_ready=True if details.wait_for_ready is None else details.wait_for_ready,
    )


class _PatientUnary(grpc.aio.UnaryUnaryClientInterceptor):
    """Unary calls wait for their service and carry a default deadline."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_patient(details, self._timeout), request)


class _PatientStreams(grpc.aio.UnaryStreamClientInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    """Streaming calls wait for their service; blob transfers have no default deadline."""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_patient(details, None), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_patient(details, None), requests)


def channel(address: str, *, unary_timeout: float = UNARY_TIMEOUT_SECONDS) -> grpc.aio.Channel:
    """An insecure channel to a mesh service, traced, with the mesh's message limits.

    Calls wait for a service that is starting or restarting (unary calls up to
    `unary_timeout` seconds) rather than failing at once. Create one channel per address
    and process and reuse it: channels multiplex calls.
    """
    return grpc.aio.insecure_channel(
        address,
        options=CHANNEL_OPTIONS,
        interceptors=[*aio_client_interceptors(), _PatientUnary(unary_timeout), _PatientStreams()],
    )


async def call(awaitable: Awaitable[T]) -> T:
    """Await a gRPC call, turning a status that carries an ErrorInfo into RegistryError.

    Statuses without one (UNAVAILABLE from a service that is down, for instance) stay
    `grpc.aio.AioRpcError`.
    """
    try:
        return await awaitable
    except grpc.aio.AioRpcError as err:
        registry_error = RegistryError.from_rpc_error(err)
        if registry_error is None:
            raise
        raise registry_error from None
