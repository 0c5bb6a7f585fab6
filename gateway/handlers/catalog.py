"""The repository catalog: `GET /v2/_catalog?n=&last=`."""

from __future__ import annotations

from aiohttp import web

from artifactstore.access import PULL
from artifactstore.metadata.v1 import metadata_pb2 as md
from artifactstore.rpc import call
from gateway.auth import gatekeeper, identity
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
    # Only what the caller may pull is listed; paging still walks every name, so a page
    # can hold fewer than `n` names and the Link goes on from the last name looked at.
    keeper, who = gatekeeper(request), identity(request)
    visible = [n for n in names if PULL in await keeper.allowed(who, n)]
    return page_response(request, page, {"repositories": visible}, names, more=found.more)
