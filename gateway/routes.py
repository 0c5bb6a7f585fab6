"""Every endpoint of the API, in one table: method, path, handler, route name, and what a
caller needs to be let through (the spec's endpoint ids in comments).

Repository names contain slashes, so `<name>` matches greedily across path segments and is
validated by the handlers (NAME_INVALID). Order matters where paths overlap: `/v2/_catalog`
and `/v2/token` come before any `<name>` route, and upload paths before the blob path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

from aiohttp import hdrs, web

from artifactstore.access import DELETE, MANAGE, PULL, PUSH
from gateway.auth import PUBLIC, SIGNED_IN
from gateway.handlers import (
    base,
    blobs,
    catalog,
    health,
    manifests,
    referrers,
    repositories,
    tags,
    token,
    uploads,
    vulnerabilities,
)

NAME = "{name:.+}"
_MANIFEST = f"/v2/{NAME}/manifests/{{reference}}"
_UPLOAD = f"/v2/{NAME}/blobs/uploads/{{upload_id}}"
_BLOB = f"/v2/{NAME}/blobs/{{digest}}"
_SCANNED = f"/api/v1/repositories/{NAME}/manifests/{{reference}}"


class Route(NamedTuple):
    """One endpoint: GET routes answer HEAD too, with the same requirement."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    name: str
    # PUBLIC, SIGNED_IN, or the action needed on the path's repository.
    needs: str


GET, PUT, POST, PATCH, DEL = (
    hdrs.METH_GET,
    hdrs.METH_PUT,
    hdrs.METH_POST,
    hdrs.METH_PATCH,
    hdrs.METH_DELETE,
)

ROUTES = [
    Route(GET, "/v2/", base.version_check, "base", SIGNED_IN),  # end-1
    Route(GET, "/healthz", health.live, "healthz", PUBLIC),
    Route(GET, "/readyz", health.ready, "readyz", PUBLIC),
    Route(GET, "/v2/token", token.get_token, "token", PUBLIC),
    Route(POST, "/v2/token", token.post_token, "token", PUBLIC),
    Route(GET, "/v2/_catalog", catalog.list_repositories, "catalog", SIGNED_IN),
    Route(GET, f"/v2/{NAME}/tags/list", tags.list_tags, "tags", PULL),  # end-8a, end-8b
    Route(GET, _MANIFEST, manifests.get_manifest, "manifest", PULL),  # end-3
    Route(PUT, _MANIFEST, manifests.put_manifest, "manifest", PUSH),  # end-7
    Route(DEL, _MANIFEST, manifests.delete_manifest, "manifest", DELETE),  # end-9
    # end-4a, end-4b, end-11
    Route(POST, f"/v2/{NAME}/blobs/uploads/", uploads.start_upload, "uploads", PUSH),
    Route(GET, _UPLOAD, uploads.upload_status, "upload", PUSH),  # end-13
    Route(PATCH, _UPLOAD, uploads.append_chunk, "upload", PUSH),  # end-5
    Route(PUT, _UPLOAD, uploads.finish_upload, "upload", PUSH),  # end-6
    Route(DEL, _UPLOAD, uploads.cancel_upload, "upload", PUSH),
    Route(GET, _BLOB, blobs.get_blob, "blob", PULL),  # end-2
    Route(DEL, _BLOB, blobs.delete_blob, "blob", DELETE),  # end-10
    # end-12a, end-12b
    Route(GET, f"/v2/{NAME}/referrers/{{digest}}", referrers.list_referrers, "referrers", PULL),
    # The registry's own API. A repository delete is an owner's.
    Route(
        DEL, f"/api/v1/repositories/{NAME}", repositories.delete_repository, "repository", MANAGE
    ),
    # The registry's own API: vulnerability scans, under the same access control as pulls.
    Route(
        GET,
        f"{_SCANNED}/vulnerabilities",
        vulnerabilities.list_vulnerabilities,
        "vulnerabilities",
        PULL,
    ),
    Route(POST, f"{_SCANNED}/scan", vulnerabilities.request_scan, "scan", PULL),
]


def setup_routes(app: web.Application) -> dict[tuple[str, str], str]:
    """Register `ROUTES` on `app`; return what each (route name, method) needs."""
    app.router.add_routes([web.route(r.method, r.path, r.handler, name=r.name) for r in ROUTES])
    return {(r.name, r.method): r.needs for r in ROUTES}
