"""Blob uploads: `POST /v2/<name>/blobs/uploads/` (end-4a, end-4b, end-11) and
`GET`/`PATCH`/`PUT`/`DELETE /v2/<name>/blobs/uploads/<id>` (end-13, end-5, end-6).

A session lives in two places under one id: metadata_svc records it (and which repository
it belongs to), blob_svc holds its bytes. Every request on a session first asks
metadata_svc for it, so a session can only be used through its own repository, and marks
it active (GC collects sessions idle for an hour). A blob becomes visible only once
blob_svc has verified its digest and metadata_svc has linked it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from aiohttp import hdrs, web

from artifactstore.access import PULL
from artifactstore.blob.v1 import blob_pb2 as bl
from artifactstore.errors import Reason, RegistryError
from artifactstore.metadata.v1 import gc_pb2 as gc
from artifactstore.metadata.v1 import metadata_pb2 as md
from artifactstore.names import check_name
from artifactstore.rpc import call
from gateway import params
from gateway.auth import gatekeeper, identity
from gateway.bodies import BodyStream
from gateway.keys import clients, manifest_cache, settings, upload_files, upload_ids
from gateway.responses import CONTENT_DIGEST, UPLOAD_UUID

log = logging.getLogger(__name__)

COMMIT_TIMEOUT_SECONDS = 600.0
# How long a commit waits for GC to finish deleting the same digest's old bytes.
COMMIT_WAIT_SECONDS = 10.0
# A closing body up to this size travels inside CommitUpload rather than as a stream.
INLINE_COMMIT_BYTES = 1024 * 1024

# The spec's chunk range is `^[0-9]+-[0-9]+$`; RFC 9110's "bytes a-b/len" form is
# accepted too, as some clients send it.
_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?")


def _upload_location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def _blob_location(name: str, digest: str) -> str:
    return f"/v2/{name}/blobs/{digest}"


def _progress(name: str, upload_id: str, size: int, status: int) -> web.Response:
    """A session's state: where to send the next request and, as `Range: 0-<last byte>`,
    what it holds. The spec's form cannot describe an empty session ("0-0" would claim one
    byte; opencontainers/distribution-spec#578), so an empty session has no Range."""
    headers = {hdrs.LOCATION: _upload_location(name, upload_id), UPLOAD_UUID: upload_id}
    if size:
        headers[hdrs.RANGE] = f"0-{size - 1}"
    return web.Response(status=status, headers=headers)


def _created(name: str, digest: str) -> web.Response:
    return web.Response(
        status=201,
        headers={hdrs.LOCATION: _blob_location(name, digest), CONTENT_DIGEST: digest},
    )


def _chunk_offset(request: web.Request) -> int | None:
    """Where the request's chunk must start (its Content-Range), or None to append.

    RANGE_INVALID for a malformed range; SIZE_INVALID when Content-Length disagrees.
    """
    text = request.headers.get(hdrs.CONTENT_RANGE)
    if text is None:
        return None
    match = _CONTENT_RANGE.fullmatch(text.strip())
    if match is None or int(match[2]) < int(match[1]):
        raise RegistryError(
            Reason.RANGE_INVALID, f"invalid Content-Range {text[:100]!r}: expected <first>-<last>"
        )
    first, last = int(match[1]), int(match[2])
    length = request.content_length
    if length is not None and length != last - first + 1:
        raise RegistryError(
            Reason.SIZE_INVALID,
            f"Content-Length {length} does not match Content-Range {first}-{last}",
        )
    return first


def _issued(request: web.Request, name: str, upload_id: str) -> bool:
    """Whether a gateway issued `upload_id` for `name`: metadata_svc then records the
    session at its first use (artifactstore/upload_ids.py)."""
    return upload_ids(request).vouches(upload_id, name)


async def _session(request: web.Request, name: str, *, touch: bool = True) -> str:
    """The path's upload id, once metadata_svc confirms the session belongs to `name`
    (BLOB_UPLOAD_UNKNOWN otherwise) and, with `touch`, has recorded this activity."""
    upload_id = request.match_info["upload_id"]
    await call(
        clients(request).metadata.GetUpload(
            md.GetUploadRequest(
                repository=name,
                upload_id=upload_id,
                touch=touch,
                start=_issued(request, name, upload_id),
            )
        )
    )
    return upload_id


def _new_session(request: web.Request, name: str) -> str:
    """A new session's id, issued here without a call: metadata_svc records the session
    at its first use, and blob_svc starts its bytes at the first append or at the commit
    (`start`), so a small push makes three calls in all."""
    return upload_ids(request).issue(name)


async def _append(request: web.Request, upload_id: str, offset: int | None) -> int:
    """Stream the request body into the session (at `offset`, when given) and return the
    session's size: written into blob_svc's file of the session when it is on this host,
    else streamed to blob_svc. A body cut short leaves what arrived in the session, then
    fails."""
    body = BodyStream(request, settings(request).upload_chunk_bytes)
    backends = clients(request)
    chunks = body.chunks()
    size = await upload_files(request).append(backends, upload_id, offset, chunks)
    if size is None:
        size = await backends.write_upload(upload_id, chunks, offset)
    body.raise_if_cut()
    return size


async def _small_body(request: web.Request) -> bytes:
    """A small closing body, read whole to travel with the commit (one call instead of a
    stream and a call). Cut short, it fails with nothing appended: the client sends the
    whole body again."""
    body = BodyStream(request, settings(request).upload_chunk_bytes)
    data = b"".join([chunk async for chunk in body.chunks()])
    body.raise_if_cut()
    return data


def _inline(request: web.Request, offset: int | None) -> bool:
    """Whether the closing body is small enough to travel with the commit."""
    length = request.content_length
    return (
        request.body_exists
        and offset is None
        and length is not None
        and length <= INLINE_COMMIT_BYTES
    )


async def _begin_commit(request: web.Request, name: str, digest: str, upload_id: str) -> None:
    """Tell metadata_svc that a commit of `digest` is in flight, so that GC deletes none
    of its bytes until the link is made (metadata_svc.gc, rule 3), once it has confirmed
    that the session is `name`'s (BLOB_UPLOAD_UNKNOWN otherwise). While GC is deleting
    them, wait for it to finish (the commit then stores them anew); UNAVAILABLE after
    COMMIT_WAIT_SECONDS, with the session intact for a retry."""
    deadline = time.monotonic() + COMMIT_WAIT_SECONDS
    delay = 0.01
    begin = gc.BeginBlobCommitRequest(
        repository=name, digest=digest, upload_id=upload_id, start=_issued(request, name, upload_id)
    )
    while True:
        try:
            await call(clients(request).metadata_gc.BeginBlobCommit(begin))
            return
        except RegistryError as err:
            if err.reason != Reason.UNAVAILABLE or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def _complete(
    request: web.Request, name: str, upload_id: str, digest: str, offset: int | None
) -> web.Response:
    """Append the body (if any), have blob_svc verify the whole against `digest`, and link
    the blob to the repository, which ends the session. On a digest mismatch
    (DIGEST_INVALID) the session stays, so the client may try again."""
    backends = clients(request)
    data = b""
    if _inline(request, offset):
        data = await _small_body(request)
    elif request.body_exists:
        await _append(request, upload_id, offset)
    await _begin_commit(request, name, digest, upload_id)
    blob = await call(
        backends.blob.CommitUpload(
            bl.CommitUploadRequest(upload_id=upload_id, digest=digest, data=data, start=True),
            # After a blob_svc restart a commit re-hashes the stored bytes (about 1 GB/s),
            # which for a multi-GiB blob outlasts the default unary deadline.
            timeout=COMMIT_TIMEOUT_SECONDS,
        )
    )
    linking = md.LinkBlobRequest(
        repository=name, digest=blob.digest, size=blob.size, upload_id=upload_id
    )
    await manifest_cache(request).write(
        name, lambda sent: call(backends.metadata.LinkBlob(linking, metadata=sent))
    )
    return _created(name, blob.digest)


async def _mount(request: web.Request, name: str, digest: str, source: str) -> str | None:
    """Link the blob `source` has into `name` and return its digest, or None when the
    blob cannot be mounted from there (the client then uploads it): it is not there, or
    the caller may not pull from `source` — the two look the same, so a mount never tells
    whether a repository the caller cannot read holds a blob."""
    try:
        if PULL not in await gatekeeper(request).allowed(identity(request), check_name(source)):
            return None
        mounting = md.MountBlobRequest(
            repository=name, from_repository=check_name(source), digest=params.digest(digest)
        )
        link = await manifest_cache(request).write(
            name, lambda sent: call(clients(request).metadata.MountBlob(mounting, metadata=sent))
        )
    except RegistryError as err:
        log.debug("no mount of %s from %s into %s: %s", digest, source, name, err.message)
        return None
    return link.digest


async def start_upload(request: web.Request) -> web.Response:
    """Start an upload session (202 with its Location), or, with `?digest=`, upload the
    body as the whole blob in this one request (201), or, with `?mount=&from=`, link the
    blob another repository has (201) and fall back to a new session (202) when it cannot.
    """
    name = params.repository(request)
    query = request.query
    if "digest" in query:
        digest = params.digest(query["digest"])
        upload_id = _new_session(request, name)
        return await _complete(request, name, upload_id, digest, offset=None)
    mount, source = query.get("mount"), query.get("from")
    if mount and source:
        mounted = await _mount(request, name, mount, source)
        if mounted is not None:
            return _created(name, mounted)
    upload_id = _new_session(request, name)
    return _progress(name, upload_id, 0, 202)


async def upload_status(request: web.Request) -> web.Response:
    """204 with the session's Location and Range: where a client resumes after a 416 or a
    lost connection."""
    name = params.repository(request)
    upload_id = await _session(request, name)
    try:
        status = await call(
            clients(request).blob.GetUploadStatus(bl.GetUploadStatusRequest(upload_id=upload_id))
        )
    except RegistryError as err:
        if err.reason != Reason.BLOB_UPLOAD_UNKNOWN:
            raise
        # metadata_svc knows the session; blob_svc has no bytes of it yet.
        return _progress(name, upload_id, 0, 204)
    return _progress(name, upload_id, status.size, 204)


async def append_chunk(request: web.Request) -> web.Response:
    """Append the body to the session: 202 with its new Range. With Content-Range, the
    chunk must start where the session ends, else 416 and nothing is appended; without, the
    body is appended as it streams (a streamed upload)."""
    name = params.repository(request)
    offset = _chunk_offset(request)
    upload_id = await _session(request, name)
    size = await _append(request, upload_id, offset)
    return _progress(name, upload_id, size, 202)


async def finish_upload(request: web.Request) -> web.Response:
    """Close the session with `?digest=` of the whole blob, appending the body first if
    there is one: 201 with the blob's Location. DIGEST_INVALID when the digest is missing,
    malformed or does not match the bytes."""
    name = params.repository(request)
    text = request.query.get("digest")
    if not text:
        raise RegistryError(Reason.DIGEST_INVALID, "the digest query parameter is required")
    digest = params.digest(text)
    offset = _chunk_offset(request)
    upload_id = request.match_info["upload_id"]
    if request.body_exists and not _inline(request, offset):
        # Bytes are appended before the commit begins, so the session is confirmed first
        # (otherwise BeginBlobCommit confirms it). No activity to record: the session
        # ends here, or stays after a failed commit only for the client's immediate retry.
        await _session(request, name, touch=False)
    return await _complete(request, name, upload_id, digest, offset)


async def cancel_upload(request: web.Request) -> web.Response:
    """Drop the session and its bytes: 204."""
    name = params.repository(request)
    upload_id = await _session(request, name)
    backends = clients(request)
    await call(backends.blob.CancelUpload(bl.CancelUploadRequest(upload_id=upload_id)))
    await call(
        backends.metadata.DeleteUpload(md.DeleteUploadRequest(repository=name, upload_id=upload_id))
    )
    return web.Response(status=204)
