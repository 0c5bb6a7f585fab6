"""What the gateway's responses are made of: the registry's own header names and JSON
bodies with exactly the Content-Type the spec names (no charset parameter)."""

from __future__ import annotations

import json

from aiohttp import web

API_VERSION = "Docker-Distribution-API-Version"
CONTENT_DIGEST = "Docker-Content-Digest"
UPLOAD_UUID = "Docker-Upload-UUID"
OCI_SUBJECT = "OCI-Subject"
OCI_FILTERS_APPLIED = "OCI-Filters-Applied"

JSON = "application/json"


def json_response(value: object, *, status: int = 200, content_type: str = JSON) -> web.Response:
    """`value` as compact JSON, sent as `content_type`."""
    body = json.dumps(value, separators=(",", ":")).encode()
    return web.Response(status=status, body=body, headers={"Content-Type": content_type})
