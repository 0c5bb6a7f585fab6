"""The API version check (end-1)."""

from __future__ import annotations

from aiohttp import web

from gateway.responses import json_response


async def version_check(request: web.Request) -> web.Response:
    """`GET /v2/`: 200 with `{}` tells a client that this registry speaks the API (the
    Docker-Distribution-API-Version header is added to every response by the app)."""
    return json_response({})
