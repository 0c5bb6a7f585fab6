"""The repository catalog: `GET /v2/_catalog?n=&last=`."""

from __future__ import annotations

from aiohttp import web

from artifactstore.metadata.v1 import metadata_pb2 as md
from artifactstore.rpc import call
from gateway.keys import clients
from gateway.params import Page, page_response


async def list_repositories(request: web.Request) -> web.Response:
    """`{"repositories": [...]}` in lexical order, at most `n` after `last`, with a Link
    header to the next page when more remain; `n=0` is an empty list."""
    page = Page.of(request)
    if page.size == 0:
        return page_response(request, page, {"repositories": []}, [], more=False)
    found = await call(
        clients(request).metadata.ListRepositories(
            md.ListRepositoriesRequest(limit=page.size or 0, last=page.last)
        )
    )
    names = list(found.repositories)
    return page_response(request, page, {"repositories": names}, names, more=found.more)
