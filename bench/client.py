"""The benchmark's HTTP client: one aiohttp session per measurement, its connection pool
sized to the concurrency, and the registry operations the scenarios are made of.

Every operation checks its answer (status, digest, length, bytes) and raises
`BenchError` on the first wrong one: a benchmark that gets wrong answers fails loudly.

Artifact Store is called with a Bearer token, as docker does after `docker login`:
the first request for a repository fetches a token for it from the realm its challenge
names (`GET /v2/token` with Basic credentials, scope `repository:<name>:pull,push`), and
that token is reused until shortly before it expires. Distribution runs without auth.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from bench import BenchError
from bench.images import OCI_MANIFEST, sha256
from bench.servers import basic_authorization

MANIFEST_ACCEPT = ", ".join(
    (
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)
OCTET_STREAM = {"Content-Type": "application/octet-stream"}
DIGEST_HEADER = "Docker-Content-Digest"
# Fetch a new token this long before the current one expires.
TOKEN_MARGIN_SECONDS = 30.0
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass(frozen=True)
class Reply:
    """One answer, read whole."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    # Whether the registry redirected the request (to object storage): the final answer's
    # headers are then the storage's, without the registry's own.
    redirected: bool = False


def _shown(method: str, url: str, reply: Reply) -> str:
    return f"{method} {url} answered {reply.status}: {reply.body[:300]!r}"


class Auth:
    """No credentials (the base class: Distribution runs without auth)."""

    async def headers(self, http: Http, repository: str) -> Mapping[str, str]:
        """The headers that authorise a request on `repository`."""
        return {}


class TokenAuth(Auth):
    """Bearer tokens from the registry's token endpoint, one per repository scope,
    fetched on first use with Basic credentials and renewed before they expire."""

    def __init__(self, user: str, password: str) -> None:
        self._basic = basic_authorization(user, password)
        self._realm: str | None = None
        self._service = ""
        self._tokens: dict[str, tuple[float, Mapping[str, str]]] = {}
        self._pending: dict[str, asyncio.Future[Mapping[str, str]]] = {}

    async def headers(self, http: Http, repository: str) -> Mapping[str, str]:
        """`Authorization: Bearer …` for `repository` (a cached token while it is valid)."""
        cached = self._tokens.get(repository)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        pending = self._pending.get(repository)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Mapping[str, str]] = asyncio.get_running_loop().create_future()
        self._pending[repository] = future
        try:
            await self.prefetch(http, [repository])
            future.set_result(self._tokens[repository][1])
        except BaseException as err:
            future.set_exception(err)
            # Retrieved here so that an unawaited failure is not reported twice.
            future.exception()
            raise
        finally:
            del self._pending[repository]
        return future.result()

    async def prefetch(self, http: Http, repositories: Iterable[str]) -> None:
        """Fetch one token for all `repositories` at once (a login for many scopes)."""
        names = list(repositories)
        if self._realm is None:
            await self._discover(http)
        assert self._realm is not None
        query = [("service", self._service)]
        query += [("scope", f"repository:{name}:pull,push") for name in names]
        url = URL(self._realm).with_query(query)
        async with http.session.get(url, headers={"Authorization": self._basic}) as resp:
            body = await resp.read()
        if resp.status != 200:
            raise BenchError(f"token request answered {resp.status}: {body[:300]!r}")
        doc = json.loads(body)
        token = doc.get("token") or doc.get("access_token")
        if not token:
            raise BenchError(f"token answer without a token: {body[:300]!r}")
        lifetime = float(doc.get("expires_in", 60))
        deadline = time.monotonic() + lifetime - min(TOKEN_MARGIN_SECONDS, lifetime / 2)
        headers = {"Authorization": f"Bearer {token}"}
        for name in names:
            self._tokens[name] = (deadline, headers)

    async def _discover(self, http: Http) -> None:
        """Read the realm and service from the challenge of an anonymous `GET /v2/`."""
        async with http.session.get(f"{http.base}/v2/") as resp:
            await resp.read()
            challenge = resp.headers.get("WWW-Authenticate", "")
        if resp.status != 401 or not challenge.lower().startswith("bearer"):
            raise BenchError(f"GET /v2/ answered {resp.status} without a Bearer challenge")
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        self._realm = params["realm"]
        self._service = params.get("service", "")


class Http:
    """An aiohttp session on one registry, pooled for `concurrency` requests in flight."""

    def __init__(self, base: str, auth: Auth, concurrency: int) -> None:
        self.base = base
        self.auth = auth
        connector = aiohttp.TCPConnector(
            limit=concurrency, limit_per_host=concurrency, force_close=False
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            # A multi-GiB upload is answered only once all of it is stored.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600),
        )

    async def __aenter__(self) -> Http:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.session.close()

    def url(self, location: str) -> URL:
        """An absolute URL for a path or a Location the registry answered (kept as sent)."""
        if location.startswith("/"):
            location = self.base + location
        return URL(location, encoded=True)

    async def request(
        self,
        method: str,
        location: str,
        repository: str,
        expect: int,
        *,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """One request on `repository`'s behalf, read whole; BenchError unless it
        answered `expect`."""
        sent = dict(await self.auth.headers(self, repository))
        if headers:
            sent.update(headers)
        async with self.session.request(
            method, self.url(location), headers=sent, data=data
        ) as resp:
            reply = Reply(resp.status, resp.headers, await resp.read(), bool(resp.history))
        if reply.status != expect:
            raise BenchError(_shown(method, location, reply))
        return reply

    @contextlib.asynccontextmanager
    async def open(
        self, location: str, repository: str, expect: int, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET `location` for its body to be read as it arrives; BenchError unless it
        answered `expect`."""
        sent = dict(await self.auth.headers(self, repository))
        if headers:
            sent.update(headers)
        async with self.session.get(self.url(location), headers=sent) as resp:
            if resp.status != expect:
                reply = Reply(resp.status, resp.headers, await resp.read())
                raise BenchError(_shown("GET", location, reply))
            yield resp


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def _check_digest(reply: Reply, digest: str, what: str) -> None:
    got = reply.headers.get(DIGEST_HEADER)
    if got != digest:
        raise BenchError(f"{what}: {DIGEST_HEADER} is {got!r}, expected {digest}")


async def start_upload(http: Http, repo: str) -> str:
    """POST a new upload session; its Location."""
    reply = await http.request("POST", f"/v2/{repo}/blobs/uploads/", repo, 202)
    location = reply.headers.get("Location")
    if not location:
        raise BenchError(f"POST upload in {repo} answered no Location")
    return location


async def push_blob(
    http: Http, repo: str, data: bytes | bytearray | memoryview, digest: str
) -> None:
    """Upload a blob monolithically: POST, then one PUT with the whole body."""
    location = await start_upload(http, repo)
    reply = await http.request(
        "PUT", _with_digest(location, digest), repo, 201, data=data, headers=OCTET_STREAM
    )
    _check_digest(reply, digest, f"PUT blob {digest} in {repo}")


async def push_blob_chunked(
    http: Http, repo: str, data: bytes | bytearray | memoryview, digest: str, chunk: int
) -> None:
    """Upload a blob in chunks: POST, one PATCH (with Content-Range) per `chunk` bytes,
    each answered with the Range so far, then a PUT without a body."""
    location = await start_upload(http, repo)
    view = memoryview(data)
    for first in range(0, len(view), chunk):
        part = view[first : first + chunk]
        last = first + len(part) - 1
        reply = await http.request(
            "PATCH",
            location,
            repo,
            202,
            data=part,
            headers={**OCTET_STREAM, "Content-Range": f"{first}-{last}"},
        )
        if reply.headers.get("Range") != f"0-{last}":
            raise BenchError(f"PATCH {first}-{last}: Range {reply.headers.get('Range')!r}")
        location = reply.headers.get("Location", location)
    reply = await http.request("PUT", _with_digest(location, digest), repo, 201)
    _check_digest(reply, digest, f"PUT chunked blob {digest} in {repo}")


async def push_blob_stream(http: Http, repo: str, chunks: AsyncIterator[bytes], size: int) -> str:
    """Upload a blob whose bytes are produced as it goes (one streamed PATCH, then the
    PUT): hashed on the way, never held whole. Its digest."""
    location = await start_upload(http, repo)
    hasher = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            hasher.update(chunk)
            yield chunk

    reply = await http.request("PATCH", location, repo, 202, data=body(), headers=OCTET_STREAM)
    if reply.headers.get("Range") != f"0-{size - 1}":
        raise BenchError(f"streamed PATCH of {size} bytes: Range {reply.headers.get('Range')!r}")
    digest = "sha256:" + hasher.hexdigest()
    location = reply.headers.get("Location", location)
    reply = await http.request("PUT", _with_digest(location, digest), repo, 201)
    _check_digest(reply, digest, f"PUT streamed blob in {repo}")
    return digest


async def mount_blob(http: Http, repo: str, digest: str, source: str) -> None:
    """Link a blob `source` holds into `repo` without sending it (201)."""
    reply = await http.request(
        "POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={source}", repo, 201
    )
    _check_digest(reply, digest, f"mount {digest} into {repo}")


async def head_blob(http: Http, repo: str, digest: str, size: int) -> None:
    """HEAD a blob: 200 with its length and digest (the digest header only when the
    registry answered itself, not through a redirect to object storage)."""
    reply = await http.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo, 200)
    if not reply.redirected:
        _check_digest(reply, digest, f"HEAD blob {digest}")
    if reply.headers.get("Content-Length") != str(size):
        raise BenchError(
            f"HEAD blob {digest}: Content-Length {reply.headers.get('Content-Length')}"
        )


async def get_blob(http: Http, repo: str, digest: str) -> bytes:
    """GET a (small) blob whole; its bytes, checked against the digest."""
    reply = await http.request("GET", f"/v2/{repo}/blobs/{digest}", repo, 200)
    if sha256(reply.body) != digest:
        raise BenchError(f"GET blob {digest} in {repo}: the bytes hash to {sha256(reply.body)}")
    return reply.body


async def pull_blob(http: Http, repo: str, digest: str, size: int, *, verify: bool) -> None:
    """GET a large blob and count its bytes as they arrive (and hash them, with `verify`):
    200, its digest header (unless redirected to object storage), exactly `size` bytes."""
    hasher = hashlib.sha256() if verify else None
    received = 0
    async with http.open(f"/v2/{repo}/blobs/{digest}", repo, 200) as resp:
        got = resp.headers.get(DIGEST_HEADER)
        if not resp.history and got != digest:
            raise BenchError(f"GET blob {digest}: {DIGEST_HEADER} is {got!r}")
        async for chunk in resp.content.iter_any():
            received += len(chunk)
            if hasher is not None:
                hasher.update(chunk)
    if received != size:
        raise BenchError(f"GET blob {digest}: {received} bytes of {size}")
    if hasher is not None and "sha256:" + hasher.hexdigest() != digest:
        raise BenchError(f"GET blob {digest}: the bytes hash to sha256:{hasher.hexdigest()}")


async def get_range(
    http: Http, repo: str, digest: str, data: bytes | bytearray, header: str
) -> None:
    """GET one `Range` of a blob whose bytes are `data`: 206, the right Content-Range and
    exactly those bytes."""
    size = len(data)
    spec = header.removeprefix("bytes=")
    first_text, _, last_text = spec.partition("-")
    if not first_text:
        first, last = size - int(last_text), size - 1
    else:
        first = int(first_text)
        last = min(int(last_text), size - 1) if last_text else size - 1
    reply = await http.request(
        "GET", f"/v2/{repo}/blobs/{digest}", repo, 206, headers={"Range": header}
    )
    expected_range = f"bytes {first}-{last}/{size}"
    if reply.headers.get("Content-Range") != expected_range:
        raise BenchError(
            f"Range {header}: Content-Range {reply.headers.get('Content-Range')!r}, "
            f"expected {expected_range!r}"
        )
    if reply.body != data[first : last + 1]:
        raise BenchError(f"Range {header}: {len(reply.body)} bytes, not those asked for")


async def put_manifest(http: Http, repo: str, reference: str, body: bytes, digest: str) -> None:
    """PUT an OCI manifest under a tag or digest: 201 and its digest."""
    reply = await http.request(
        "PUT",
        f"/v2/{repo}/manifests/{reference}",
        repo,
        201,
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    _check_digest(reply, digest, f"PUT manifest {repo}:{reference}")


async def get_manifest(http: Http, repo: str, reference: str, body: bytes, digest: str) -> None:
    """GET a manifest: 200, its digest, exactly `body`."""
    reply = await http.request(
        "GET", f"/v2/{repo}/manifests/{reference}", repo, 200, headers={"Accept": MANIFEST_ACCEPT}
    )
    _check_digest(reply, digest, f"GET manifest {repo}:{reference}")
    if reply.body != body:
        raise BenchError(f"GET manifest {repo}:{reference}: other bytes than were pushed")


async def tag_page(http: Http, location: str, repo: str) -> tuple[list[str], str | None]:
    """One page of a tag list: its tags and the next page's Location (Link rel=next)."""
    reply = await http.request("GET", location, repo, 200)
    tags = json.loads(reply.body).get("tags") or []
    link = _NEXT_LINK.search(reply.headers.get("Link", ""))
    return tags, link.group(1) if link else None


async def walk_tags(http: Http, repo: str, page: int) -> list[str]:
    """Every tag of `repo`, following `Link` pages of `n=page` (a registry that ignores
    `n` answers them all at once)."""
    tags: list[str] = []
    location: str | None = f"/v2/{repo}/tags/list?n={page}"
    while location is not None:
        page_tags, location = await tag_page(http, location, repo)
        tags.extend(page_tags)
    return tags
