"""Tag listing: `GET /v2/<name>/tags/list?n=&last=` (end-8a, end-8b)."""

from __future__ import annotations

from aiohttp import web

from artifactstore.metadata.v1 import metadata_pb2 as md
from artifactstore.rpc import call
from gateway.keys import clients, manifest_cache
from gateway.params import Page, page_response, repository


async def list_tags(request: web.Request) -> web.Response:
    """`{"name": …, "tags": [...]}` in lexical order, at most `n` after `last`, with a Link
    header to the next page when more remain; NAME_UNKNOWN for an unknown repository.

    `n=0` must answer an empty list without a Link; one tag is still asked for, because the
    answer must be 404 when the repository does not exist.
    """
    name = repository(request)
    page = Page.of(request)
    limit = 1 if page.size == 0 else page.size or 0
    listing = md.ListTagsRequest(repository=name, limit=limit, last=page.last)
    found = await manifest_cache(request).read(
        (name, "tags", str(limit), page.last),
        md.ListTagsResponse,
        lambda: call(clients(request).metadata.ListTags(listing)),
    )
    tags = [] if page.size == 0 else list(found.tags)
    more = found.more and page.size != 0
    return page_response(request, page, {"name": name, "tags": tags}, tags, more=more)
