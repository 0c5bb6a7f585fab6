"""Blobs: `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>` (end-2, end-10).

A blob is served only if the repository links it (metadata_svc), then sent from blob_svc's
file by the kernel when blob_svc keeps it on this host's disk (gateway.localfiles), else
streamed from blob_svc as it arrives, never held whole; or, with ARTS_STORAGE_REDIRECT on object
storage, answered with a `307` to a short-lived presigned URL of the object store, so
the bytes go from there to the client directly (Distribution's `redirect` option). Access
is checked before either: the auth middleware runs before this handler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re

import grpc
from aiohttp import hdrs, web

from artifactstore.blob.v1 import blob_pb2 as bl
from artifactstore.errors import Reason, RegistryError
from artifactstore.metadata.v1 import metadata_pb2 as md
from artifactstore.rpc import call
from gateway import audit, localfiles, observe, params
from gateway.clients import Clients
from gateway.errors import EdgeError
from gateway.keys import blob_files, clients, manifest_cache, settings
from gateway.responses import CONTENT_DIGEST

log = logging.getLogger(__name__)

OCTET_STREAM = "application/octet-stream"
# One range of the "bytes" unit (RFC 9110 §14.1.2); several ranges are not served.
_BYTE_RANGE = re.compile(r"bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)", re.IGNORECASE)


def requested_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte positions (first, last) a `Range` header asks of a blob of `size`
    bytes, or None to send the whole blob: no header, or one RFC 9110 lets a server ignore
    (another unit, several ranges, bad syntax). RANGE_INVALID (416, with `Content-Range:
    bytes */size`) when the blob holds no byte of the range."""
    # An empty blob has no byte to range over: its whole (nothing) is the useful answer.
    if not header or size == 0:
        return None
    match = _BYTE_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    unsatisfiable = EdgeError(
        Reason.RANGE_INVALID,
        f"range {header[:100]!r} is outside the blob of {size} bytes",
        headers={hdrs.CONTENT_RANGE: f"bytes */{size}"},
    )
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0:
            raise unsatisfiable
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        raise unsatisfiable
    return first, min(int(last_text), size - 1) if last_text else size - 1


async def get_blob(request: web.Request) -> web.StreamResponse:
    """The blob's bytes (200), or those of one `Range` (206 with Content-Range); HEAD
    answers from the repository's link alone, one call. BLOB_UNKNOWN unless the repository
    links the blob."""
    name = params.repository(request)
    digest = params.digest(request.match_info["digest"])
    backends = clients(request)
    stat = md.StatBlobLinkRequest(repository=name, digest=digest)
    link = await manifest_cache(request).read(
        (name, "link", digest), md.BlobLink, lambda: call(backends.metadata.StatBlobLink(stat))
    )
    size = link.size
    headers = {
        hdrs.CONTENT_TYPE: OCTET_STREAM,
        CONTENT_DIGEST: digest,
        hdrs.ETAG: f'"{digest}"',
        hdrs.ACCEPT_RANGES: "bytes",
    }
    if request.method == hdrs.METH_HEAD:
        headers[hdrs.CONTENT_LENGTH] = str(size)
        return web.Response(headers=headers)
    config = settings(request)
    if config.storage_redirect:
        url = await _presigned(backends, digest, config.storage_redirect_seconds)
        if url is not None:
            # A Range header goes to the object store with the redirected request.
            return web.Response(status=307, headers={hdrs.LOCATION: url, CONTENT_DIGEST: digest})
    byte_range = requested_range(request.headers.get(hdrs.RANGE), size)
    if byte_range is None:
        status, first, length = 200, 0, size
    else:
        first, last = byte_range
        status, length = 206, last - first + 1
        headers[hdrs.CONTENT_RANGE] = f"bytes {first}-{last}/{size}"
    if length == 0:
        return web.Response(status=status, headers=headers)
    fd = await blob_files(request).open(backends, digest, size)
    if fd is not None:
        try:
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = length
            sent = await localfiles.send(request, response, fd, first, length)
        finally:
            os.close(fd)
        observe.body_sent(request, sent)
        if sent != length:
            _cut_off(request, name, digest, sent, length, "the client stopped taking bytes")
        return response
    return await _stream(request, name, digest, status, headers, first, length)


async def _stream(
    request: web.Request,
    name: str,
    digest: str,
    status: int,
    headers: dict[str, str],
    first: int,
    length: int,
) -> web.StreamResponse:
    """The response with the bytes blob_svc streams over gRPC, as they arrive."""
    backends = clients(request)
    async with contextlib.aclosing(backends.read_blob(digest, first, length)) as chunks:
        # Failures before the first bytes still become a proper error response.
        first_chunk = await anext(chunks, b"")
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = length
        await response.prepare(request)
        sent = 0
        failure = "the stream ended early"
        try:
            if first_chunk:
                await response.write(first_chunk)
                sent += len(first_chunk)
            async for chunk in chunks:
                await response.write(chunk)
                sent += len(chunk)
        except ConnectionError:
            return response
        except RegistryError as err:
            failure = err.message
        except grpc.aio.AioRpcError as err:
            failure = f"{err.code().name}: {err.details()}"
        finally:
            observe.body_sent(request, sent)
        if sent != length:
            _cut_off(request, name, digest, sent, length, failure)
    return response


def _cut_off(
    request: web.Request, name: str, digest: str, sent: int, length: int, failure: str
) -> None:
    log.warning(
        "blob %s of %s cut off after %d of %d bytes: %s", digest, name, sent, length, failure
    )
    # Headers are gone: the only way left to tell the client is to cut the connection
    # short of Content-Length.
    if request.transport is not None:
        request.transport.close()


async def _presigned(backends: Clients, digest: str, expires_seconds: int) -> str | None:
    """A presigned URL of the blob from blob_svc, or None when its storage cannot give one
    (local disk: the blob is streamed instead)."""
    try:
        reply = await call(
            backends.blob.PresignBlob(
                bl.PresignBlobRequest(digest=digest, expires_seconds=expires_seconds)
            )
        )
    except RegistryError as err:
        if err.reason != Reason.UNSUPPORTED:
            raise
        return None
    return reply.url


async def delete_blob(request: web.Request) -> web.Response:
    """Unlink the blob from the repository (202); its bytes go when GC finds no link left.
    BLOB_UNKNOWN when the repository did not link it."""
    name = params.repository(request)
    digest = params.digest(request.match_info["digest"])
    unlinking = md.UnlinkBlobRequest(repository=name, digest=digest)
    await manifest_cache(request).write(
        name, lambda sent: call(clients(request).metadata.UnlinkBlob(unlinking, metadata=sent))
    )
    await audit.record(request, "blob.delete", name, digest=digest)
    return web.Response(status=202, headers={CONTENT_DIGEST: digest})
