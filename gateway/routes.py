"""Every endpoint of the API, in one table (the spec's endpoint ids in comments).

Repository names contain slashes, so `<name>` matches greedily across path segments and is
validated by the handlers (NAME_INVALID). Order matters where paths overlap: `/v2/_catalog`
comes before any `<name>` route, and upload paths before the blob path.
"""

from __future__ import annotations

from aiohttp import web

from gateway.handlers import base, blobs, catalog, manifests, referrers, tags, uploads

NAME = "{name:.+}"


def setup_routes(app: web.Application) -> None:
    """Register the API on `app`. GET routes answer HEAD too."""
    manifest = f"/v2/{NAME}/manifests/{{reference}}"
    upload = f"/v2/{NAME}/blobs/uploads/{{upload_id}}"
    blob = f"/v2/{NAME}/blobs/{{digest}}"
    app.router.add_routes(
        [
            web.get("/v2/", base.version_check, name="base"),  # end-1
            web.get("/v2/_catalog", catalog.list_repositories, name="catalog"),
            web.get(f"/v2/{NAME}/tags/list", tags.list_tags, name="tags"),  # end-8a, end-8b
            web.get(manifest, manifests.get_manifest, name="manifest"),  # end-3
            web.put(manifest, manifests.put_manifest, name="manifest"),  # end-7
            web.delete(manifest, manifests.delete_manifest, name="manifest"),  # end-9
            # end-4a, end-4b, end-11
            web.post(f"/v2/{NAME}/blobs/uploads/", uploads.start_upload, name="uploads"),
            web.get(upload, uploads.upload_status, name="upload"),  # end-13
            web.patch(upload, uploads.append_chunk, name="upload"),  # end-5
            web.put(upload, uploads.finish_upload, name="upload"),  # end-6
            web.delete(upload, uploads.cancel_upload, name="upload"),
            web.get(blob, blobs.get_blob, name="blob"),  # end-2
            web.delete(blob, blobs.delete_blob, name="blob"),  # end-10
            # end-12a, end-12b
            web.get(f"/v2/{NAME}/referrers/{{digest}}", referrers.list_referrers, name="referrers"),
        ]
    )
