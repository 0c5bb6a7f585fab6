"""Runs the gateway at `settings.address` (on the sockets its supervisor bound, when it has
one: see artifactstore.listening) until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from artifactstore import listening
from artifactstore.config import Settings
from gateway.app import create_app
from gateway.auth import MAX_AUTHORIZATION_BYTES

log = logging.getLogger(__name__)

# How long requests in flight may take to finish on shutdown; below the supervisor's
# grace before it kills a child (artifactstore.supervisor.STOP_GRACE_SECONDS).
SHUTDOWN_SECONDS = 8.0
# Four times the largest credential the auth layer accepts.
MAX_HEADER_BYTES = 4 * MAX_AUTHORIZATION_BYTES


async def main(settings: Settings) -> None:
    """Serve the API until SIGTERM or SIGINT, then stop listening, let requests in flight
    finish for up to `SHUTDOWN_SECONDS`, and close the channels to the services."""
    sockets = listening.inherited() or listening.bind(settings.address)
    runner = web.AppRunner(
        create_app(settings),
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_SECONDS,
        # One line per request costs real throughput; spans record requests already.
        access_log=logging.getLogger("aiohttp.access") if settings.debug else None,
        # Lets a body buffer whole upload chunks before reading pauses.
        read_bufsize=settings.upload_chunk_bytes,
        # aiohttp refuses longer header lines itself with a bare 400; this lets the auth
        # layer refuse oversized credentials (MAX_AUTHORIZATION_BYTES) with the spec's body.
        max_field_size=MAX_HEADER_BYTES,
    )
    await runner.setup()
    try:
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        log.info("serving the registry API at %s", settings.address)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
