"""The aiohttp application of the gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import web

from artifactstore.config import Settings
from artifactstore.upload_ids import UploadIds
from gateway.auth import GATEKEEPER, Gatekeeper, auth_middleware
from gateway.clients import connect
from gateway.errors import error_middleware
from gateway.keys import (
    BLOB_FILES,
    CLIENTS,
    MANIFEST_CACHE,
    SETTINGS,
    UPLOAD_FILES,
    UPLOAD_IDS,
)
from gateway.localfiles import BlobFiles
from gateway.localuploads import UploadFiles
from gateway.manifest_cache import ManifestCache
from gateway.observe import observe_middleware
from gateway.responses import API_VERSION
from gateway.routes import setup_routes
from gateway.tokens import TokenIssuer, load_or_create_key


async def _backends(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with connect(settings) as backends:
        app[CLIENTS] = backends
        key = await asyncio.to_thread(load_or_create_key, settings.token_key_file)
        issuer = TokenIssuer(key, settings.token_service)
        app[UPLOAD_IDS] = UploadIds(key)
        app[GATEKEEPER] = keeper = Gatekeeper(backends.iam, issuer, settings.token_realm)
        app[MANIFEST_CACHE] = cache = ManifestCache(settings.manifest_cache_bytes)
        watches = [keeper.watch_policy()]
        if settings.manifest_cache_bytes > 0:
            watches.append(cache.watch(backends.metadata))
        async with _running(watches):
            yield


@contextlib.asynccontextmanager
async def _running(coroutines: list[Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Run the coroutines (the gateway's watches, which never return) as tasks for the
    life of the context."""
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _api_version(request: web.Request, response: web.StreamResponse) -> None:
    # A signal rather than a middleware: it also reaches the responses aiohttp makes itself.
    response.headers[API_VERSION] = "registry/2.0"


def create_app(settings: Settings) -> web.Application:
    """The gateway application: the API's routes, one SERVER span per request, errors as
    the spec's JSON bodies, every request authenticated and authorised, and channels to
    metadata_svc, blob_svc and IAM opened on startup and closed on cleanup.

    Request bodies are streamed by the handlers, so aiohttp's `client_max_size` (which
    bounds only whole-body reads) never applies to blobs.
    """
    app = web.Application()
    requirements = setup_routes(app)
    # Outermost first: the span covers everything; errors from access checks get bodies.
    app.middlewares.extend([observe_middleware, error_middleware, auth_middleware(requirements)])
    app[SETTINGS] = settings
    app[BLOB_FILES] = BlobFiles()
    app[UPLOAD_FILES] = UploadFiles()
    app.cleanup_ctx.append(_backends)
    app.on_response_prepare.append(_api_version)
    return app
