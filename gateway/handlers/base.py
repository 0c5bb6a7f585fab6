"""The API version check (end-1)."""

from __future__ import annotations

from aiohttp import web


async def version_check(request: web.Request) -> web.Response:
    """`GET /v2/`: 200 with `{}` tells a client that this registry speaks the API (the
    Docker-Distribution-API-Version header is added to every response by the app)."""
    return web.json_response({})
