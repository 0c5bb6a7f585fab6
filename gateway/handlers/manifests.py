"""Manifests: `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>` (end-3, end-7,
end-9). Each is one call to metadata_svc, which parses, validates and stores them."""

from __future__ import annotations

import asyncio

from aiohttp import hdrs, web

from artifactstore import access, scanning
from artifactstore.blob.v1 import blob_pb2 as bl
from artifactstore.errors import Reason, RegistryError
from artifactstore.manifests import parse
from artifactstore.metadata.v1 import metadata_pb2 as md
from artifactstore.rpc import call
from gateway import audit, params
from gateway.auth import identity
from gateway.bodies import read_manifest
from gateway.keys import blob_files, clients, manifest_cache
from gateway.responses import CONTENT_DIGEST, OCI_SUBJECT

# Digests per StatBlobs call (blob_svc's limit).
STAT_BATCH = 1000


def _location(name: str, digest: str) -> str:
    return f"/v2/{name}/manifests/{digest}"


def _refuse_by_scan_policy(request: web.Request, name: str, manifest: md.Manifest) -> None:
    """DENIED when the project's scan policy refuses this manifest's findings (everyone
    but the scanner, which must pull to rescan)."""
    block = manifest.scan_policy.block_severity
    if not block or scanning.is_scanner(identity(request).principal):
        return
    counts = {s: getattr(manifest.vulnerabilities.counts, s.lower()) for s in scanning.SEVERITIES}
    message = scanning.pull_denial(access.project_of(name), block, counts)
    if message is not None:
        raise RegistryError(Reason.DENIED, message, name=name, digest=manifest.digest)


async def get_manifest(request: web.Request) -> web.Response:
    """The manifest a tag or digest names, with the media type it was pushed with as
    Content-Type; HEAD gives the same headers without the body (nor fetches it).

    A GET is refused (403 DENIED, naming the counts) when the project's scan policy blocks
    the manifest's findings; the policy and the scan summary come with the manifest, read
    in its transaction, so enforcing it costs no call of its own. HEAD is not refused: it
    reveals a digest, not content.
    """
    name = params.repository(request)
    reference = params.reference(request)
    head = request.method == hdrs.METH_HEAD
    reading = md.GetManifestRequest(
        repository=name, reference=reference, include_content=not head, include_scan_policy=not head
    )
    manifest = await manifest_cache(request).read(
        (name, "manifest", reference, "head" if head else "get"),
        md.Manifest,
        lambda: call(clients(request).metadata.GetManifest(reading)),
    )
    if not head:
        _refuse_by_scan_policy(request, name, manifest)
    headers = {
        hdrs.CONTENT_TYPE: manifest.media_type,
        CONTENT_DIGEST: manifest.digest,
        hdrs.ETAG: f'"{manifest.digest}"',
    }
    if head:
        headers[hdrs.CONTENT_LENGTH] = str(manifest.size)
        return web.Response(headers=headers)
    return web.Response(body=manifest.content, headers=headers)


async def _check_bytes_stored(request: web.Request, content: bytes, content_type: str) -> None:
    """Ask blob_svc that the bytes of every blob the manifest needs are in storage, as
    Distribution stats each referenced blob before accepting a manifest.

    What keeps a manifest's blobs while GC runs is metadata_svc's transaction (it checks
    the repository's links; see metadata_svc/gc.py); this catches bytes lost from storage
    underneath, before a manifest that cannot be pulled is stored. A body that does not
    parse is left for metadata_svc to refuse with the precise error.

    Blobs whose local file an earlier answer named are checked here with a stat() of it
    (`BlobFiles.stored`), the same check blob_svc makes, without the call.
    """
    try:
        parsed = parse(content, content_type)
    except RegistryError:
        return
    digests = sorted({str(b.digest) for b in parsed.required_blobs()})
    files = blob_files(request)
    stored = files.stored(digests)
    unknown = [d for d in digests if d not in stored]
    blob = clients(request).blob
    batches = [unknown[i : i + STAT_BATCH] for i in range(0, len(unknown), STAT_BATCH)]
    replies = await asyncio.gather(
        *(call(blob.StatBlobs(bl.StatBlobsRequest(digests=batch))) for batch in batches)
    )
    for info in (info for reply in replies for info in reply.blobs):
        stored.add(info.digest)
        if info.path:
            files.remember(info.digest, info.path)
    for digest in digests:
        if digest not in stored:
            raise RegistryError(
                Reason.MANIFEST_BLOB_UNKNOWN,
                f"manifest references blob {digest}, which is not stored",
                digest=digest,
            )


async def put_manifest(request: web.Request) -> web.Response:
    """Store the body as a manifest under a tag or digest: 201 with its Location and
    digest, and `OCI-Subject` when it has a subject (telling the client that this registry
    keeps referrers itself). 413 past the size limit."""
    name = params.repository(request)
    reference = params.reference(request)
    content = await read_manifest(request)
    content_type = request.headers.get(hdrs.CONTENT_TYPE, "")
    await _check_bytes_stored(request, content, content_type)
    request_pb = md.PutManifestRequest(
        repository=name, reference=reference, media_type=content_type, content=content
    )
    stored = await manifest_cache(request).write(
        name,
        lambda sent: call(clients(request).metadata.PutManifest(request_pb, metadata=sent)),
    )
    headers = {hdrs.LOCATION: _location(name, stored.digest), CONTENT_DIGEST: stored.digest}
    if stored.subject_digest:
        headers[OCI_SUBJECT] = stored.subject_digest
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request) -> web.Response:
    """By digest, delete the manifest and every tag on it; by tag, only the tag. 202."""
    name = params.repository(request)
    deleting = md.DeleteManifestRequest(repository=name, reference=params.reference(request))
    deleted = await manifest_cache(request).write(
        name,
        lambda sent: call(clients(request).metadata.DeleteManifest(deleting, metadata=sent)),
    )
    await audit.record(
        request,
        "manifest.delete",
        name,
        reference=request.match_info["reference"],
        digest=deleted.digest,
        tags=",".join(deleted.removed_tags),
    )
    return web.Response(status=202)
