"""Path and query parameters of the API, validated as the spec defines them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import hdrs, web

from artifactstore.digests import Digest, is_digest
from artifactstore.errors import Reason, RegistryError
from artifactstore.names import check_name, check_tag
from gateway.responses import json_response

# Page sizes travel as int32 in the metadata contract.
_MAX_PAGE = 2**31 - 1
_COUNT = re.compile(r"[0-9]+")


def repository(request: web.Request) -> str:
    """The `<name>` of the path; NAME_INVALID unless it follows the spec's grammar."""
    return check_name(request.match_info["name"])


def digest(text: str) -> str:
    """`text` as a digest; DIGEST_INVALID unless it is one of a registered algorithm."""
    return str(Digest.parse(text))


def reference(request: web.Request) -> str:
    """The manifest `<reference>` of the path: a digest (DIGEST_INVALID if malformed) or a
    tag (TAG_INVALID if malformed)."""
    text = request.match_info["reference"]
    return digest(text) if is_digest(text) else check_tag(text)


@dataclass(frozen=True)
class Page:
    """The `n` and `last` query parameters of a listing."""

    # None when the client gave no `n` (the server's page size applies).
    size: int | None
    last: str

    @classmethod
    def of(cls, request: web.Request) -> Page:
        """Read the parameters; PAGINATION_INVALID unless `n` is a non-negative integer."""
        n = request.query.get("n", "")
        if n and not _COUNT.fullmatch(n):
            raise RegistryError(Reason.PAGINATION_INVALID, f"invalid page size n={n[:40]!r}")
        return cls(size=min(int(n), _MAX_PAGE) if n else None, last=request.query.get("last", ""))


def page_response(
    request: web.Request, page: Page, body: object, returned: list[str], more: bool
) -> web.Response:
    """A JSON listing; when entries remain, a `Link: <…>; rel="next"` header (RFC 5988)
    names the page after the last entry returned, as the spec asks."""
    response = json_response(body)
    if more and returned:
        size = page.size or len(returned)
        after = quote(returned[-1], safe="/")
        response.headers[hdrs.LINK] = f'<{request.path}?n={size}&last={after}>; rel="next"'
    return response
