"""Pulling images through the gateway, as any registry client does.

The worker authenticates with its service-account key file through the Docker token flow:
a request without a (valid) token is answered 401 with a `Bearer realm=…,service=…,scope=…`
challenge; the realm hands out a token for that scope to Basic credentials (`_json_key` and
the key file); the request is repeated with the token. Tokens are kept per scope until
shortly before they expire. Every blob is hashed while it streams to a file in the scratch
space and refused unless its size and digest are what the manifest says, so memory stays
bounded by the chunk size whatever the blob's size. Requests carry the worker's trace
context, so the gateway's spans join the scan's trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from opentelemetry import propagate

from artifactstore import mediatypes as mt
from artifactstore.digests import Digest, is_digest

CHUNK_BYTES = 1 << 20
# Configuration blobs are small JSON documents; anything far larger is not one.
MAX_CONFIG_BYTES = 4 << 20
_ACCEPT = ", ".join(sorted(mt.MANIFESTS))
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
# A token is renewed this long before it expires.
_TOKEN_MARGIN_SECONDS = 10.0


class PullError(Exception):
    """The registry did not deliver what was asked (unreachable, refused, a server error,
    bytes that do not match their digest): the scan may succeed later."""


class ManifestGone(Exception):
    """The manifest no longer exists (deleted since the scan was queued)."""


@dataclass(frozen=True)
class Credentials:
    """Basic credentials for the token endpoint: `_json_key` and a key file's JSON."""

    username: str
    password: str


def parse_challenge(header: str) -> dict[str, str]:
    """The parameters of a `Bearer` WWW-Authenticate challenge ({} for other schemes)."""
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return {}
    return dict(_CHALLENGE_PARAM.findall(params))


class RegistryClient:
    """A pull-only client of one registry (`base_url` is `http(s)://host[:port]`)."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, credentials: Credentials
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._credentials = credentials
        self._tokens: dict[str, tuple[str, float]] = {}

    async def _token(self, challenge: dict[str, str]) -> str:
        scope = challenge.get("scope", "")
        cached = self._tokens.get(scope)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        params: dict[str, str] = {k: challenge[k] for k in ("service", "scope") if k in challenge}
        auth = aiohttp.BasicAuth(self._credentials.username, self._credentials.password)
        async with self._session.get(challenge["realm"], params=params, auth=auth) as resp:
            if resp.status != 200:
                raise PullError(
                    f"token endpoint answered {resp.status}: {(await resp.text())[:300]}"
                )
            doc = await resp.json(content_type=None)
        token = str(doc.get("token") or doc.get("access_token") or "")
        if not token:
            raise PullError("token endpoint answered no token")
        expires_in = float(doc.get("expires_in") or 60)
        self._tokens[scope] = (token, time.monotonic() + expires_in - _TOKEN_MARGIN_SECONDS)
        return token

    async def _get(self, path: str, scope: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """GET `path`, answering the token challenge once if one comes. The caller must
        release the response."""
        headers = dict(headers)
        propagate.inject(headers)
        cached = self._tokens.get(scope)
        if cached is not None and cached[1] > time.monotonic():
            headers["Authorization"] = f"Bearer {cached[0]}"
        resp = await self._session.get(self._base + path, headers=headers)
        if resp.status != 401:
            return resp
        challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        resp.release()
        if "realm" not in challenge:
            raise PullError(f"GET {path}: 401 without a Bearer challenge")
        self._tokens.pop(challenge.get("scope", ""), None)
        headers["Authorization"] = f"Bearer {await self._token(challenge)}"
        return await self._session.get(self._base + path, headers=headers)

    @staticmethod
    async def _fail(resp: aiohttp.ClientResponse, what: str) -> PullError:
        body = (await resp.text(errors="replace"))[:300]
        resp.release()
        return PullError(f"{what}: HTTP {resp.status}: {body}")

    async def manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        """The manifest's bytes and media type. ManifestGone on 404; PullError for other
        failures, and when a digest reference does not match the bytes."""
        scope = f"repository:{repository}:pull"
        try:
            resp = await self._get(
                f"/v2/{repository}/manifests/{reference}", scope, {"Accept": _ACCEPT}
            )
            if resp.status == 404:
                resp.release()
                raise ManifestGone(f"{repository}@{reference} does not exist")
            if resp.status != 200:
                raise await self._fail(resp, f"manifest {repository}@{reference}")
            body = await resp.content.read(mt.MAX_MANIFEST_BYTES + 1)
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            resp.release()
        except aiohttp.ClientError as exc:
            raise PullError(f"manifest {repository}@{reference}: {exc}") from exc
        if len(body) > mt.MAX_MANIFEST_BYTES:
            raise PullError(f"manifest {repository}@{reference} is over 4 MiB")
        if is_digest(reference):
            claimed = Digest.parse(reference)
            hasher = claimed.hasher()
            hasher.update(body)
            if hasher.hexdigest() != claimed.hex:
                raise PullError(f"manifest {repository}@{reference}: bytes do not match")
        return body, media_type

    async def json_blob(self, repository: str, digest: str) -> Any:
        """A small JSON blob (an image configuration), verified; PullError otherwise."""
        async with contextlib.aclosing(self._chunks(repository, digest, MAX_CONFIG_BYTES)) as it:
            chunks = [c async for c in it]
        try:
            return json.loads(b"".join(chunks))
        except ValueError as exc:
            raise PullError(f"blob {digest} is not JSON") from exc

    async def download(self, repository: str, digest: str, size: int, dest: Path) -> None:
        """Stream blob `digest` (of `size` bytes) into the new file `dest`, verifying size
        and digest on the way; PullError on any mismatch or failure."""
        received = 0
        out = await asyncio.to_thread(open, dest, "xb")
        try:
            async with contextlib.aclosing(self._chunks(repository, digest, size)) as chunks:
                async for chunk in chunks:
                    received += len(chunk)
                    await asyncio.to_thread(out.write, chunk)
        finally:
            await asyncio.to_thread(out.close)
        if received != size:
            raise PullError(f"blob {digest}: {received} bytes received, {size} expected")

    async def _chunks(
        self, repository: str, digest: str, limit: int
    ) -> AsyncGenerator[bytes, None]:
        """The blob's bytes as they arrive; PullError past `limit` bytes, and after the last
        chunk when they do not hash to `digest`."""
        expected = Digest.parse(digest)
        hasher = expected.hasher()
        received = 0
        scope = f"repository:{repository}:pull"
        try:
            resp = await self._get(f"/v2/{repository}/blobs/{digest}", scope, {})
            if resp.status != 200:
                raise await self._fail(resp, f"blob {digest}")
            try:
                async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                    received += len(chunk)
                    if received > limit:
                        raise PullError(f"blob {digest} is larger than {limit} bytes")
                    hasher.update(chunk)
                    yield chunk
            finally:
                resp.release()
        except aiohttp.ClientError as exc:
            raise PullError(f"blob {digest}: {exc}") from exc
        if hasher.hexdigest() != expected.hex:
            raise PullError(f"blob {digest}: the bytes received hash to something else")
