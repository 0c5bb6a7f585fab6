"""Request bodies: streamed to blob_svc in large chunks, or read whole when small and bounded
(manifests).

A body is never held whole in memory when it may be large: its chunks go to blob_svc as they
arrive, gathered into messages of about `upload_chunk_bytes` (gRPC streams far faster in
large messages than in the small pieces a socket delivers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from artifactstore import mediatypes as mt
from artifactstore.errors import Reason, RegistryError

# How reading a body fails: the client went away, or its framing was broken.
_READ_ERRORS = (ConnectionError, HttpProcessingError)


class BodyStream:
    """A request body as an async iterator of chunks of about `chunk_bytes`.

    A body that ends early (the client disconnected, or sent broken framing) ends the
    iteration quietly instead of raising, so the gRPC stream it feeds closes normally and
    blob_svc keeps what arrived: the upload stays resumable at the size blob_svc reports.
    Call `raise_if_cut()` after the stream to fail the request in that case.
    """

    def __init__(self, request: web.Request, chunk_bytes: int) -> None:
        self._content = request.content
        self._chunk_bytes = chunk_bytes
        self._received = 0
        self._error: Exception | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body; each piece the socket delivers is copied at most once (when
        small pieces are gathered into one chunk)."""
        pending: list[bytes] = []
        pending_bytes = 0
        while True:
            try:
                data, end_of_http_chunk = await self._content.readchunk()
            except _READ_ERRORS as err:
                self._error = err
                break
            if not data:
                if end_of_http_chunk:
                    continue
                break
            self._received += len(data)
            if not pending and len(data) >= self._chunk_bytes:
                yield data
                continue
            pending.append(data)
            pending_bytes += len(data)
            if pending_bytes >= self._chunk_bytes:
                yield b"".join(pending)
                pending.clear()
                pending_bytes = 0
        if pending:
            yield b"".join(pending)

    def raise_if_cut(self) -> None:
        """Raise BLOB_UPLOAD_INVALID if the body ended before its end."""
        if self._error is not None:
            raise RegistryError(
                Reason.BLOB_UPLOAD_INVALID,
                f"the request body ended early, after {self._received} bytes: {self._error}",
            )


async def read_manifest(request: web.Request) -> bytes:
    """The whole body of a manifest PUT; MANIFEST_TOO_LARGE past the registry's limit,
    told by Content-Length before reading anything, or else by reading stopping at the
    first piece past the limit (so memory stays bounded whatever the client sends)."""
    limit = mt.MAX_MANIFEST_BYTES
    too_large = RegistryError(
        Reason.MANIFEST_TOO_LARGE, f"a manifest may have at most {limit} bytes"
    )
    if (request.content_length or 0) > limit:
        raise too_large
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            data, end_of_http_chunk = await request.content.readchunk()
        except _READ_ERRORS as err:
            raise RegistryError(
                Reason.MANIFEST_INVALID, f"the request body ended early: {err}"
            ) from None
        if not data:
            if end_of_http_chunk:
                continue
            return b"".join(parts)
        size += len(data)
        if size > limit:
            raise too_large
        parts.append(data)
