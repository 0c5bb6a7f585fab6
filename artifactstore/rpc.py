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
from opentelemetry import propagate, trace

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

# Our own tracing of calls, not opentelemetry-instrumentation-grpc's interceptors: those
# cost about 125 µs of CPU per call on the server and 100 µs on the client (a wrapped
# servicer context, peer parsing, an extra task per intercepted client call), as much
# as the call itself for the mesh's small lookups. Spans keep the same names, kind and
# rpc.* attributes.
_tracer = trace.get_tracer(__name__)


class _CallInterceptor(grpc.aio.ServerInterceptor):
    """Every call a server handles gets a SERVER span in the caller's trace (named by the
    full method path), is counted and timed, and has a `RegistryError` its servicer
    raised turned into the rich gRPC status. Wrapped handlers are made once per method."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        try:
            return self._handlers[method]
        except KeyError:
            pass
        handler = await continuation(handler_call_details)
        wrapped = None if handler is None else _instrument(handler, method)
        self._handlers[method] = wrapped
        return wrapped


def _instrument(handler: grpc.RpcMethodHandler, path: str) -> grpc.RpcMethodHandler:
    service, _, method = path.strip("/").rpartition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }

    def start(context: grpc.aio.ServicerContext) -> Any:
        parent = propagate.extract(dict(context.invocation_metadata() or ()))
        return _tracer.start_as_current_span(
            path, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
        )

    def finish(
        span: trace.Span, context: grpc.aio.ServicerContext, started: float, failed: bool
    ) -> None:
        code = _code(context, failed)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(trace.StatusCode.ERROR, code.name)
        metrics.RPC_SECONDS.labels(service, method).observe(time.perf_counter() - started)
        metrics.RPC_HANDLED.labels(service, method, code.name).inc()

    def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            failed = True
            with start(context) as span:
                try:
                    result = await behaviour(request, context)
                    failed = False
                    return result
                except RegistryError as err:
                    await _abort(context, err)
                finally:
                    finish(span, context, started, failed)

        return wrapped

    def stream(behaviour: StreamBehaviour) -> StreamBehaviour:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            failed = True
            with start(context) as span:
                try:
                    async for item in behaviour(request, context):
                        yield item
                    failed = False
                except RegistryError as err:
                    await _abort(context, err)
                finally:
                    finish(span, context, started, failed)

        return wrapped

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **serializers)
    if handler.unary_stream:
        behaviour: Any = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(stream(behaviour), **serializers)
    return handler


def _code(context: grpc.aio.ServicerContext, failed: bool) -> grpc.StatusCode:
    # None until a status is set: an undecorated success, or an exception left to gRPC.
    code: grpc.StatusCode | None = context.code()
    if code is not None:
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


async def _abort(context: grpc.aio.ServicerContext, err: RegistryError) -> None:
    status = err.to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


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
        interceptors=[_CallInterceptor()],
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

# The gRPC metadata by which a manifest writer names its own WatchManifestChanges watch.
WATCHER_METADATA = "artifactstore-watcher"


class _Traced:
    """A multicallable whose calls get a CLIENT span, carry its trace context to the
    service, wait for a service that is starting or restarting (instead of failing at
    once with UNAVAILABLE), and have `timeout` as their default deadline."""

    def __init__(self, inner: Any, method: str, timeout: float | None) -> None:
        self._inner = inner
        self._name = method
        self._timeout = timeout
        service, _, name = method.strip("/").rpartition("/")
        self._attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str | bytes]] | None = None,
        **options: Any,
    ) -> Any:
        span = _tracer.start_span(
            self._name, kind=trace.SpanKind.CLIENT, attributes=self._attributes
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        options.setdefault("wait_for_ready", True)
        try:
            call = self._inner(
                request,
                timeout=self._timeout if timeout is None else timeout,
                metadata=(*(metadata or ()), *carrier.items()),
                **options,
            )
        except BaseException:
            span.end()
            raise
        call.add_done_callback(lambda done: _end(span, done))
        return call


def _end(span: trace.Span, call: Any) -> None:
    # A finished call's code() coroutine returns without suspending: run it here rather
    # than schedule a task for every call.
    coroutine = call.code()
    try:
        coroutine.send(None)
        coroutine.close()
        code = grpc.StatusCode.UNKNOWN
    except StopIteration as finished:
        code = finished.value
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(trace.StatusCode.ERROR, code.name)
    span.end()


class _Channel(grpc.aio.Channel):
    """A channel whose calls are `_Traced`; unary ones with a default deadline."""

    def __init__(self, inner: grpc.aio.Channel, unary_timeout: float) -> None:
        self._inner = inner
        self._unary_timeout = unary_timeout

    def _traced(
        self, factory: Any, method: str, timeout: float | None, *args: Any, **kw: Any
    ) -> Any:
        return _Traced(factory(method, *args, **kw), method, timeout)

    def unary_unary(self, method: str, *args: Any, **kw: Any) -> Any:
        return self._traced(self._inner.unary_unary, method, self._unary_timeout, *args, **kw)

    # Blob transfers and watches have no default deadline.
    def unary_stream(self, method: str, *args: Any, **kw: Any) -> Any:
        return self._traced(self._inner.unary_stream, method, None, *args, **kw)

    def stream_unary(self, method: str, *args: Any, **kw: Any) -> Any:
        return self._traced(self._inner.stream_unary, method, None, *args, **kw)

    def stream_stream(self, method: str, *args: Any, **kw: Any) -> Any:
        return self._traced(self._inner.stream_stream, method, None, *args, **kw)

    async def close(self, grace: float | None = None) -> None:
        await self._inner.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._inner.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._inner.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._inner.channel_ready()

    async def __aenter__(self) -> _Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._inner.close()


def channel(address: str, *, unary_timeout: float = UNARY_TIMEOUT_SECONDS) -> grpc.aio.Channel:
    """An insecure channel to a mesh service, traced, with the mesh's message limits.

    Calls wait for a service that is starting or restarting (unary calls up to
    `unary_timeout` seconds) rather than failing at once. Create one channel per address
    and process and reuse it: channels multiplex calls.
    """
    return _Channel(grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS), unary_timeout)


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
