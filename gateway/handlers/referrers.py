"""The referrers API: `GET /v2/<name>/referrers/<digest>?artifactType=` (end-12a, end-12b)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from artifactstore import mediatypes as mt
from artifactstore.metadata.v1 import metadata_pb2 as md
from artifactstore.rpc import call
from gateway import params
from gateway.keys import clients
from gateway.responses import OCI_FILTERS_APPLIED, json_response


def _descriptor(found: md.Descriptor) -> dict[str, Any]:
    descriptor: dict[str, Any] = {
        "mediaType": found.media_type,
        "digest": found.digest,
        "size": found.size,
    }
    if found.artifact_type:
        descriptor["artifactType"] = found.artifact_type
    if found.annotations:
        descriptor["annotations"] = dict(found.annotations)
    return descriptor


async def list_referrers(request: web.Request) -> web.Response:
    """An image index of the manifests whose `subject` is `<digest>`, only those of one
    `artifactType` when asked (then `OCI-Filters-Applied: artifactType` says so).

    A digest nothing refers to gives an empty index, never 404: to a client, 404 means the
    registry has no referrers API. A malformed digest gives 400 DIGEST_INVALID.
    """
    name = params.repository(request)
    subject = params.digest(request.match_info["digest"])
    artifact_type = request.query.get("artifactType", "")
    found = await call(
        clients(request).metadata.ListReferrers(
            md.ListReferrersRequest(repository=name, digest=subject, artifact_type=artifact_type)
        )
    )
    index = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [_descriptor(d) for d in found.referrers],
    }
    response = json_response(index, content_type=mt.OCI_INDEX)
    if artifact_type:
        response.headers[OCI_FILTERS_APPLIED] = "artifactType"
    return response
