"""Keys of the state an application carries (settings, backend clients).

Kept apart from `app.py` so that handlers can read the state without importing the module
that imports them.
"""

from __future__ import annotations

from aiohttp import web

from artifactstore.config import Settings
from gateway.clients import Clients

SETTINGS = web.AppKey("settings", Settings)
CLIENTS = web.AppKey("clients", Clients)


def clients(request: web.Request) -> Clients:
    """The backend clients of the application serving `request`."""
    return request.app[CLIENTS]


def settings(request: web.Request) -> Settings:
    """The settings of the application serving `request`."""
    return request.app[SETTINGS]
