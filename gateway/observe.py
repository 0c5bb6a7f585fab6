"""What the gateway records about each request: its SERVER span, its metrics and its log
line, all in one middleware so the three always agree.

The span is named by the route template (`PUT /v2/{name}/manifests/{reference}`), never by
the concrete path, so that spans of one endpoint group together; it continues the caller's
W3C trace context (a malformed `traceparent` starts a new trace). Calls to the services
behind the gateway become its children through the traced channel (artifactstore.rpc).
Metrics and the log line use the same route template; the log line carries the trace and
span ids.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue
from prometheus_client import Counter, Histogram

from artifactstore.metrics import LATENCY_BUCKETS, REGISTRY

_tracer = trace.get_tracer(__name__)
access_log = logging.getLogger("artifactstore.access")

# Path parameters recorded on the span, and the attribute each becomes. Only these: headers
# and query strings may carry credentials.
_PARAMETERS = {
    "name": "artifactstore.repository",
    "reference": "artifactstore.reference",
    "digest": "artifactstore.digest",
    "upload_id": "artifactstore.upload_id",
}

REQUESTS = Counter(
    "artifactstore_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "artifactstore_http_request_duration_seconds",
    "Time to answer an HTTP request, to the last byte sent.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
BYTES_IN = Counter(
    "artifactstore_http_received_bytes",
    "Request body bytes received, by route template.",
    ["route"],
    registry=REGISTRY,
)
BYTES_OUT = Counter(
    "artifactstore_http_sent_bytes",
    "Response body bytes sent, by route template.",
    ["route"],
    registry=REGISTRY,
)


# Body bytes a handler sent itself (a blob streamed or sent from its file), which aiohttp
# counts only once the response ends, after this middleware.
_BODY_SENT = web.RequestKey("body_sent", int)


def body_sent(request: web.Request, count: int) -> None:
    """Record the body bytes the handler of `request` sent itself."""
    request[_BODY_SENT] = count


def _sent(request: web.Request, response: web.StreamResponse | None) -> int:
    """Body bytes of a response: as its handler recorded them for one it sent itself, the
    Content-Length of one not sent yet (aiohttp sends those after the middleware)."""
    if response is None:
        return 0
    if response.prepared:
        return request.get(_BODY_SENT, response.body_length)
    return response.content_length or 0


@web.middleware
async def observe_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Run `handler` inside a SERVER span, then count, time and log the request."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    attributes: dict[str, AttributeValue] = {
        "http.request.method": request.method,
        "url.path": request.path,
        "url.scheme": request.scheme,
        "http.route": route,
    }
    for key, attribute in _PARAMETERS.items():
        if value := request.match_info.get(key):
            attributes[attribute] = value
    start = time.perf_counter()
    status = 500
    response: web.StreamResponse | None = None
    with _tracer.start_as_current_span(
        f"{request.method} {route}",
        context=propagate.extract(request.headers),
        kind=SpanKind.SERVER,
        attributes=attributes,
    ) as span:
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            span.set_attribute("http.response.status_code", status)
            # For a server, 4xx is the client's failure, not the span's.
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            elapsed = time.perf_counter() - start
            received = request.content.total_bytes
            sent = _sent(request, response)
            REQUESTS.labels(route, request.method, str(status)).inc()
            REQUEST_SECONDS.labels(route, request.method).observe(elapsed)
            BYTES_IN.labels(route).inc(received)
            BYTES_OUT.labels(route).inc(sent)
            context = span.get_span_context()
            access_log.info(
                "%s %s %d",
                request.method,
                route,
                status,
                extra={
                    "http_method": request.method,
                    "http_route": route,
                    "http_status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "bytes_in": received,
                    "bytes_out": sent,
                    "remote": request.remote,
                    "trace_id": format(context.trace_id, "032x"),
                    "span_id": format(context.span_id, "016x"),
                },
            )
