"""One SERVER span per request, continuing the caller's W3C trace context.

The span is named by the route template (`PUT /v2/{name}/manifests/{reference}`), never by
the concrete path, so that spans of one endpoint group together. Calls to the services
behind the gateway become its children through the gRPC client interceptors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

_tracer = trace.get_tracer(__name__)

# Path parameters recorded on the span, and the attribute each becomes. Only these: headers
# and query strings may carry credentials.
_PARAMETERS = {
    "name": "artifactstore.repository",
    "reference": "artifactstore.reference",
    "digest": "artifactstore.digest",
    "upload_id": "artifactstore.upload_id",
}


@web.middleware
async def tracing_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Run `handler` inside a SERVER span whose parent is the context the request's
    `traceparent` names (a malformed one starts a new trace)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    attributes: dict[str, AttributeValue] = {
        "http.request.method": request.method,
        "url.path": request.path,
        "url.scheme": request.scheme,
    }
    if route is not None:
        attributes["http.route"] = route
    for key, attribute in _PARAMETERS.items():
        if value := request.match_info.get(key):
            attributes[attribute] = value
    with _tracer.start_as_current_span(
        f"{request.method} {route}" if route else request.method,
        context=propagate.extract(request.headers),
        kind=SpanKind.SERVER,
        attributes=attributes,
    ) as span:
        response = await handler(request)
        span.set_attribute("http.response.status_code", response.status)
        # For a server, 4xx is the client's failure, not the span's.
        if response.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        return response
