"""The aiohttp application of the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from artifactstore.config import Settings
from gateway.clients import connect
from gateway.errors import error_middleware
from gateway.keys import CLIENTS, SETTINGS
from gateway.responses import API_VERSION
from gateway.routes import setup_routes
from gateway.tracing import tracing_middleware


async def _backends(app: web.Application) -> AsyncIterator[None]:
    async with connect(app[SETTINGS]) as backends:
        app[CLIENTS] = backends
        yield


async def _api_version(request: web.Request, response: web.StreamResponse) -> None:
    # A signal rather than a middleware: it also reaches the responses aiohttp makes itself.
    response.headers[API_VERSION] = "registry/2.0"


def create_app(settings: Settings) -> web.Application:
    """The gateway application: the API's routes, one SERVER span per request, errors as
    the spec's JSON bodies, and channels to metadata_svc and blob_svc opened on startup
    and closed on cleanup.

    Request bodies are streamed by the handlers, so aiohttp's `client_max_size` (which
    bounds only whole-body reads) never applies to blobs.
    """
    app = web.Application(middlewares=[tracing_middleware, error_middleware])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_backends)
    app.on_response_prepare.append(_api_version)
    setup_routes(app)
    return app
