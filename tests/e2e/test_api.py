"""The HTTP edge, raw: every endpoint of the OCI Distribution Specification v1.1 (end-1 …
end-14) and the bad input a registry meets, each answer checked for its exact status,
its error code in the spec's JSON error body, and the store checked to be as it was.

The requests are made with aiohttp, or with a raw socket where a test must misbehave at
the transport level (a body cut short, a connection dropped in the middle of a chunk);
both send the registry administrator's Basic credentials (access control itself is
tested in test_access.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from yarl import URL

from tests.e2e.images import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    build_image,
    build_index,
    canonical_json,
    sha256,
)
from tests.e2e.test_observability import _metrics_address, _samples

OCTET = "application/octet-stream"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = Blob(OCI_EMPTY, b"{}")
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST])
RANGE = re.compile(r"^0-(\d+)$")


@dataclass
class Resp:
    """One HTTP answer, read whole."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class Client:
    """A thin aiohttp client for one registry: absolute or relative URLs, whole bodies."""

    def __init__(self, session: aiohttp.ClientSession, registry: Any, oci_error: Any) -> None:
        self.session = session
        self.registry = registry
        self.base = registry.url
        self.check_error = oci_error
        # Every request is the administrator's unless it sends an Authorization itself.
        self.authorization: str = registry.admin_authorization

    def url(self, path_or_url: str) -> URL:
        """An absolute URL of the registry (Location headers may be relative)."""
        return URL(urljoin(self.base + "/", path_or_url), encoded=True)

    async def request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Resp:
        """Send one request (as the administrator) and read the whole answer."""
        sent = {"Authorization": self.authorization, **(headers or {})}
        async with self.session.request(
            method, self.url(path), data=data, headers=sent, allow_redirects=True
        ) as r:
            return Resp(r.status, r.headers, await r.read())

    def error(self, resp: Resp, status: int, code: str | frozenset[str] | None = None) -> Any:
        """Assert `resp` is an OCI error of `status` (and `code`)."""
        return self.check_error(resp.status, resp.body, status, code)

    # --- blobs ---------------------------------------------------------------------

    async def start_upload(self, repo: str) -> str:
        """POST /v2/<repo>/blobs/uploads/ (chunked form: Content-Length 0); the Location."""
        r = await self.request("POST", f"/v2/{repo}/blobs/uploads/", data=b"")
        assert r.status == 202, r
        location = r.headers.get("Location")
        assert location, "POST upload answered no Location"
        return location

    async def patch(self, location: str, data: bytes, start: int) -> Resp:
        """PATCH one chunk with its Content-Range."""
        return await self.request(
            "PATCH",
            location,
            data=data,
            headers={"Content-Type": OCTET, "Content-Range": f"{start}-{start + len(data) - 1}"},
        )

    async def finish(self, location: str, digest: str, data: bytes = b"") -> Resp:
        """PUT <location>?digest=… with an optional final chunk."""
        headers = {"Content-Type": OCTET}
        if data:
            offset = await self.upload_offset(location)
            headers["Content-Range"] = f"{offset}-{offset + len(data) - 1}"
        return await self.request("PUT", with_digest(location, digest), data=data, headers=headers)

    async def upload_status(self, location: str) -> Resp:
        """GET <location>: the upload's status."""
        return await self.request("GET", location)

    async def upload_offset(self, location: str) -> int:
        """How many bytes the upload holds, from the status `Range: 0-<last>` (none while
        it holds nothing)."""
        r = await self.upload_status(location)
        assert r.status == 204, r
        return range_end(r) + 1 if "Range" in r.headers else 0

    async def push_blob(self, repo: str, data: bytes) -> str:
        """Monolithic POST + PUT; the digest."""
        digest = sha256(data)
        location = await self.start_upload(repo)
        r = await self.request(
            "PUT", with_digest(location, digest), data=data, headers={"Content-Type": OCTET}
        )
        assert r.status == 201, r
        return digest

    async def chunked_push(self, repo: str, data: bytes, chunk: int) -> Resp:
        """POST, PATCH every `chunk` bytes, PUT; the PUT's answer."""
        location = await self.start_upload(repo)
        for start in range(0, len(data), chunk):
            r = await self.patch(location, data[start : start + chunk], start)
            assert r.status == 202, r
            location = r.headers.get("Location", location)
        return await self.finish(location, sha256(data))

    async def blob_visible(self, repo: str, digest: str) -> bool:
        """Whether HEAD /v2/<repo>/blobs/<digest> finds the blob."""
        r = await self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        assert r.status in (200, 404), r
        return r.status == 200

    # --- manifests -----------------------------------------------------------------

    async def put_manifest(self, repo: str, reference: str, manifest: Blob) -> Resp:
        """PUT /v2/<repo>/manifests/<reference> with the manifest's media type."""
        return await self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            data=manifest.data,
            headers={"Content-Type": manifest.media_type},
        )

    async def get_manifest(self, repo: str, reference: str, method: str = "GET") -> Resp:
        """GET (or HEAD) a manifest, accepting every manifest type."""
        return await self.request(
            method, f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
        )

    async def push_image(self, repo: str, tag: str, seed: int, layers: int = 1) -> Any:
        """Push a small OCI image under `tag`; the built image."""
        image = build_image(seed, layers=layers, files_per_layer=1, file_size=2048)
        for blob in image.blobs:
            await self.push_blob(repo, blob.data)
        r = await self.put_manifest(repo, tag, image.manifest)
        assert r.status == 201, r
        return image

    async def tags(self, repo: str) -> list[str]:
        """The repository's whole tag list."""
        r = await self.request("GET", f"/v2/{repo}/tags/list")
        assert r.status == 200, r
        return list(r.json().get("tags") or [])


def with_digest(location: str, digest: str) -> str:
    """The upload location with `digest=` added to its query."""
    return f"{location}{'&' if '?' in location else '?'}digest={quote(digest, safe=':')}"


def range_end(resp: Resp) -> int:
    """The last byte index of an upload's `Range: 0-<last>` header."""
    value = resp.headers.get("Range")
    assert value is not None, f"no Range header in HTTP {resp.status}"
    match = RANGE.match(value)
    assert match, f"Range header {value!r} is not `0-<last>`"
    return int(match.group(1))


def random_bytes(n: int, seed: int) -> bytes:
    """`n` reproducible pseudo-random bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:n])


@pytest.fixture
async def api(registry, oci_error) -> AsyncIterator[Client]:
    """An aiohttp client for the session's registry."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        yield Client(session, registry, oci_error)


# --- raw sockets ---------------------------------------------------------------------


async def raw_exchange(
    host: str, head: str, body: bytes, *, half_close: bool, read_timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes] | None:
    """Send a request head and (part of) a body over a fresh connection.

    With `half_close`, shut the sending side and read the answer (None if the server
    closes without one); without it, drop the connection at once (answer None).
    """
    hostname, port = host.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(hostname, int(port))
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        if not half_close:
            writer.transport.abort()
            return None
        writer.write_eof()
        try:
            raw = await asyncio.wait_for(reader.read(-1), read_timeout)
        except (ConnectionResetError, BrokenPipeError):
            return None
    finally:
        writer.close()
    if not raw:
        return None
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        decoded = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded += rest[:size]
            rest = rest[size + 2 :]
        rest = decoded
    return status, headers, rest


# --- end-1: the base endpoint --------------------------------------------------------


async def test_base_endpoint(api):
    """GET /v2/ answers 200 with `Docker-Distribution-API-Version: registry/2.0`."""
    r = await api.request("GET", "/v2/")
    assert r.status == 200
    assert r.headers.get("Docker-Distribution-API-Version") == "registry/2.0"


def test_ready_means_every_backend_answers(start_registry):
    """The moment GET /v2/ first answers 200 on a fresh instance (the readiness signal
    operators and these tests use), requests that need metadata_svc and blob_svc work:
    an upload starts and completes, and a missing manifest is 404, not 503."""
    reg = start_registry()
    r = reg.request("GET", "/v2/ready/manifests/latest")
    r.expect_error(404, frozenset({"NAME_UNKNOWN", "MANIFEST_UNKNOWN"}))
    digest = reg.push_blob("ready/check", b"first request after readiness")
    r = reg.request("GET", f"/v2/ready/check/blobs/{digest}")
    assert r.status == 200
    assert r.body == b"first request after readiness"


# --- end-4a/4b, end-6: monolithic uploads --------------------------------------------


async def test_monolithic_post_then_put(api, unique_repo):
    """POST then PUT ?digest= with the whole blob: 201, Location pullable, bytes intact."""
    repo = unique_repo()
    data = random_bytes(100_000, seed=1)
    digest = sha256(data)
    location = await api.start_upload(repo)
    r = await api.request(
        "PUT", with_digest(location, digest), data=data, headers={"Content-Type": OCTET}
    )
    assert r.status == 201, r
    assert r.headers.get("Docker-Content-Digest") == digest
    blob_location = r.headers.get("Location")
    assert blob_location
    got = await api.request("GET", blob_location)
    assert got.status == 200
    assert got.body == data
    head = await api.request("HEAD", f"/v2/{repo}/blobs/{digest}")
    assert head.status == 200
    assert head.headers.get("Content-Length") == str(len(data))
    assert head.headers.get("Docker-Content-Digest") == digest
    assert head.body == b""
    assert api.registry.blob_file(digest).read_bytes() == data


async def test_single_post_with_digest(api, unique_repo):
    """POST /v2/<name>/blobs/uploads/?digest= with the body: 201 and the blob is there."""
    repo = unique_repo()
    data = random_bytes(50_000, seed=2)
    digest = sha256(data)
    r = await api.request(
        "POST",
        f"/v2/{repo}/blobs/uploads/?digest={digest}",
        data=data,
        headers={"Content-Type": OCTET},
    )
    assert r.status == 201, r
    assert r.headers.get("Location")
    assert r.headers.get("Docker-Content-Digest") == digest
    got = await api.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert got.status == 200
    assert got.body == data
    assert got.headers.get("Docker-Content-Digest") == digest


# --- end-5, end-13, end-14: chunked uploads ------------------------------------------


async def test_chunked_upload_with_status(api, unique_repo):
    """PATCH chunks with Content-Range (202, `Range: 0-<last>`), GET the status (204,
    Range, Location), close with PUT ?digest=: 201; the session is gone afterwards."""
    repo = unique_repo()
    data = random_bytes(300_000, seed=3)
    digest = sha256(data)
    location = await api.start_upload(repo)

    r = await api.patch(location, data[:100_000], 0)
    assert r.status == 202, r
    assert range_end(r) == 99_999
    location = r.headers.get("Location") or ""
    assert location, "PATCH answered no Location"

    status = await api.upload_status(location)
    assert status.status == 204, status
    assert range_end(status) == 99_999
    assert status.headers.get("Location")
    location = status.headers["Location"]

    r = await api.patch(location, data[100_000:250_000], 100_000)
    assert r.status == 202, r
    assert range_end(r) == 249_999
    location = r.headers["Location"]
    assert await api.upload_offset(location) == 250_000
    assert not await api.blob_visible(repo, digest), "blob visible before the upload closed"

    r = await api.finish(location, digest, data[250_000:])
    assert r.status == 201, r
    assert r.headers.get("Docker-Content-Digest") == digest
    assert r.headers.get("Location")
    got = await api.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert got.body == data

    api.error(await api.upload_status(location), 404, "BLOB_UPLOAD_UNKNOWN")


async def test_interrupted_chunk_is_resumed_from_status(api, registry, unique_repo):
    """A PATCH whose connection drops half-way through its body: the status `Range`
    says how much the registry kept (at least the earlier chunks, at most what was
    sent), the client resumes from there, and the finished blob has the right digest."""
    repo = unique_repo()
    data = random_bytes(3 * 1024 * 1024, seed=4)
    digest = sha256(data)
    first = 1024 * 1024
    location = await api.start_upload(repo)
    r = await api.patch(location, data[:first], 0)
    assert r.status == 202, r
    location = r.headers["Location"]

    # Second chunk: announce 1 MiB, send 512 KiB, drop the connection.
    chunk = data[first : 2 * first]
    sent = len(chunk) // 2
    target = api.url(location)
    path = target.raw_path_qs
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: {registry.host}\r\n"
        f"Authorization: {registry.admin_authorization}\r\n"
        f"Content-Type: {OCTET}\r\nContent-Length: {len(chunk)}\r\n"
        f"Content-Range: {first}-{first + len(chunk) - 1}\r\n\r\n"
    )
    assert await raw_exchange(registry.host, head, chunk[:sent], half_close=False) is None

    # Resume at once, as a client would: from the status `Range`, re-reading it after a
    # 416 (the registry may still be taking in the dropped chunk's bytes). Whatever it
    # kept must be a prefix of what was sent, and the data must end up in order.
    tail = len(data) - 100_000
    seen = [await api.upload_offset(location)]
    start = seen[0]
    from_status = True  # `start` was just read from the upload's status
    while start < tail:
        if from_status:
            assert first <= start <= first + sent, (
                f"after the drop the status says {start} bytes; {first} were acknowledged "
                f"and {first + sent} sent (offsets read: {seen})"
            )
        assert len(seen) < 40, f"the upload does not progress (offsets read: {seen})"
        end = min(start + first, tail)
        r = await api.patch(location, data[start:end], start)
        if r.status == 416:
            api.error(r, 416)
            await asyncio.sleep(0.05)
            start = await api.upload_offset(location)
            seen.append(start)
            from_status = True
            continue
        assert r.status == 202, r
        assert range_end(r) == end - 1
        location = r.headers["Location"]
        start = end
        from_status = False
    assert not await api.blob_visible(repo, digest)
    r = await api.finish(location, digest, data[len(data) - 100_000 :])
    assert r.status == 201, r
    assert r.headers.get("Docker-Content-Digest") == digest
    got = await api.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert got.status == 200
    assert hashlib.sha256(got.body).hexdigest() == digest.removeprefix("sha256:")
    assert registry.corrupt_canonical_blobs() == []


async def test_a_commit_waits_for_a_patch_still_sending_into_its_session(
    api, registry, unique_repo
):
    """A PUT that closes a session while a PATCH of it is still receiving its body waits
    for that PATCH to end (the gateway appends to the session's file under its lock), then
    verifies everything the PATCH stored: a commit that ran at once would find part of the
    blob (400), or later bytes would land in a blob already verified."""
    repo = unique_repo()
    data = random_bytes(3 * 1024 * 1024, seed=71)
    sent = 2 * 1024 * 1024 + 100_000
    location = await api.start_upload(repo)
    head = (
        f"PATCH {api.url(location).raw_path_qs} HTTP/1.1\r\nHost: {registry.host}\r\n"
        f"Authorization: {registry.admin_authorization}\r\n"
        f"Content-Type: {OCTET}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    hostname, port = registry.host.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(hostname, int(port))
    try:
        writer.write(head.encode() + data[:sent])
        await writer.drain()
        # Bytes stored: the PATCH holds the session's lock, and keeps it for the rest.
        for _ in range(100):
            if await api.upload_offset(location) > 0:
                break
            await asyncio.sleep(0.05)
        assert 0 < await api.upload_offset(location) <= sent
        digest = sha256(data)
        closing = asyncio.ensure_future(api.finish(location, digest))
        await asyncio.sleep(0.5)
        assert not closing.done(), "the commit ran while the PATCH was appending"
        writer.write(data[sent:])
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert answer.startswith(b"HTTP/1.1 202"), answer
    finally:
        writer.close()
    r = await closing
    assert r.status == 201, r
    assert (await api.request("GET", f"/v2/{repo}/blobs/{digest}")).body == data
    assert registry.corrupt_canonical_blobs() == []


async def test_out_of_order_and_repeated_chunks_are_416(api, unique_repo):
    """A chunk that does not start right after the last one (a gap, or the same chunk
    again) is 416; the upload keeps what it had and still completes."""
    repo = unique_repo()
    data = random_bytes(3000, seed=5)
    digest = sha256(data)
    location = await api.start_upload(repo)
    r = await api.patch(location, data[:1000], 0)
    assert r.status == 202, r
    location = r.headers["Location"]

    gap = await api.patch(location, data[2000:3000], 2000)
    api.error(gap, 416)
    repeated = await api.patch(location, data[:1000], 0)
    api.error(repeated, 416)
    overlapping = await api.patch(location, data[500:1500], 500)
    api.error(overlapping, 416)

    assert await api.upload_offset(location) == 1000
    r = await api.patch(location, data[1000:2000], 1000)
    assert r.status == 202, r
    assert range_end(r) == 1999
    r = await api.finish(r.headers["Location"], digest, data[2000:])
    assert r.status == 201, r
    got = await api.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert got.body == data


async def test_cancel_upload(api, unique_repo):
    """DELETE on an upload (end-14): 204, then the session is unknown (404)."""
    repo = unique_repo()
    data = random_bytes(5000, seed=6)
    location = await api.start_upload(repo)
    r = await api.patch(location, data, 0)
    assert r.status == 202, r
    location = r.headers["Location"]
    r = await api.request("DELETE", location)
    assert r.status == 204, r
    api.error(await api.upload_status(location), 404, "BLOB_UPLOAD_UNKNOWN")
    api.error(await api.finish(location, sha256(data)), 404, "BLOB_UPLOAD_UNKNOWN")
    assert not await api.blob_visible(repo, sha256(data))


async def test_sessions_end_for_good_before_and_after_their_bytes(api, unique_repo):
    """A session the gateway issued is recorded only at its first use; ended before any
    byte (DELETE right after POST) or by its commit, it stays unknown (404) to every
    upload endpoint."""
    repo = unique_repo()
    data = random_bytes(3000, seed=61)
    digest = sha256(data)
    cancelled = await api.start_upload(repo)
    r = await api.request("DELETE", cancelled)
    assert r.status == 204, r
    looked_at = await api.start_upload(repo)
    r = await api.upload_status(looked_at)
    assert r.status == 204 and "Range" not in r.headers, r  # nothing held yet
    r = await api.patch(looked_at, data, 0)
    assert r.status == 202, r
    r = await api.finish(looked_at, digest)
    assert r.status == 201, r
    closed_at_once = await api.start_upload(repo)
    put = with_digest(closed_at_once, digest)
    r = await api.request("PUT", put, data=data, headers={"Content-Type": OCTET})
    assert r.status == 201, r
    for location in (cancelled, looked_at, closed_at_once):
        api.error(await api.upload_status(location), 404, "BLOB_UPLOAD_UNKNOWN")
        api.error(await api.patch(location, data, 0), 404, "BLOB_UPLOAD_UNKNOWN")
        put = with_digest(location, digest)
        r = await api.request("PUT", put, data=data, headers={"Content-Type": OCTET})
        api.error(r, 404, "BLOB_UPLOAD_UNKNOWN")
        api.error(await api.request("DELETE", location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert (await api.request("GET", f"/v2/{repo}/blobs/{digest}")).body == data


# --- uploads that must fail ----------------------------------------------------------


async def test_wrong_digest_on_put_is_rejected(api, registry, unique_repo):
    """PUT ?digest= naming other content: 400 DIGEST_INVALID; neither the claimed nor
    the real digest becomes visible, in the repository or on disk."""
    repo = unique_repo()
    data = random_bytes(20_000, seed=7)
    claimed = sha256(b"something else entirely")
    location = await api.start_upload(repo)
    r = await api.request(
        "PUT", with_digest(location, claimed), data=data, headers={"Content-Type": OCTET}
    )
    api.error(r, 400, "DIGEST_INVALID")
    for digest in (claimed, sha256(data)):
        assert not await api.blob_visible(repo, digest)
        assert not registry.blob_file(digest).exists()


async def test_put_digest_of_more_bytes_than_uploaded(api, registry, unique_repo):
    """Close an upload holding half the blob with the digest of the whole blob:
    400 DIGEST_INVALID and nothing visible."""
    repo = unique_repo()
    data = random_bytes(40_000, seed=8)
    digest = sha256(data)
    location = await api.start_upload(repo)
    r = await api.patch(location, data[:20_000], 0)
    assert r.status == 202, r
    r = await api.finish(r.headers["Location"], digest)
    api.error(r, 400, "DIGEST_INVALID")
    assert not await api.blob_visible(repo, digest)
    assert not await api.blob_visible(repo, sha256(data[:20_000]))
    assert not registry.blob_file(digest).exists()


async def test_truncated_body_is_not_stored(api, registry, unique_repo):
    """A monolithic PUT announcing more bytes (Content-Length) than it sends before the
    client stops sending: no success, at most a 400 digest/size error, nothing stored."""
    repo = unique_repo()
    data = random_bytes(200_000, seed=9)
    digest = sha256(data)
    location = await api.start_upload(repo)
    target = api.url(with_digest(location, digest))
    head = (
        f"PUT {target.raw_path_qs} HTTP/1.1\r\nHost: {registry.host}\r\n"
        f"Authorization: {registry.admin_authorization}\r\n"
        f"Content-Type: {OCTET}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    answer = await raw_exchange(registry.host, head, data[:120_000], half_close=True)
    if answer is not None:
        status, _, body = answer
        api.check_error(status, body, 400, frozenset({"DIGEST_INVALID", "SIZE_INVALID"}))
    await asyncio.sleep(0.2)
    assert not await api.blob_visible(repo, digest)
    assert not await api.blob_visible(repo, sha256(data[:120_000]))
    assert not registry.blob_file(digest).exists()
    assert registry.files_holding(data) == []


async def test_unknown_upload_id(api, unique_repo):
    """Every upload endpoint with a session id the registry never issued, one shaped like
    an issued id but forged, or one issued for another repository: 404
    BLOB_UPLOAD_UNKNOWN (in a repository that exists)."""
    repo = unique_repo()
    await api.push_blob(repo, b"make the repository exist")
    elsewhere = (await api.start_upload(unique_repo())).rsplit("/", 1)[1]
    digest = sha256(b"x")
    for upload_id in (str(uuid.uuid4()), "ab" * 32, elsewhere):
        bogus = f"/v2/{repo}/blobs/uploads/{upload_id}"
        for method, path, data, headers in (
            ("GET", bogus, None, {}),
            ("PATCH", bogus, b"x", {"Content-Type": OCTET, "Content-Range": "0-0"}),
            ("PUT", with_digest(bogus, digest), b"x", {"Content-Type": OCTET}),
            ("DELETE", bogus, None, {}),
        ):
            r = await api.request(method, path, data=data, headers=headers)
            api.error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    assert not await api.blob_visible(repo, digest)


# --- names, tags and digests that break the grammar ----------------------------------


@pytest.mark.parametrize(
    "name",
    ["UPPER", "a..b", "Mixed/Case", "trailing-", "_leading", "a/-b", "x" * 256],
    ids=[
        "upper",
        "double-dot",
        "mixed-case",
        "trailing-dash",
        "leading-underscore",
        "component-leading-dash",
        "too-long",
    ],
)
async def test_invalid_repository_name(api, name):
    """A name outside `[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/…)*` (or over 255 characters):
    400 NAME_INVALID on every kind of endpoint, and no repository appears."""
    digest = sha256(b"name test")
    for method, path, data in (
        ("GET", f"/v2/{name}/tags/list", None),
        ("GET", f"/v2/{name}/manifests/latest", None),
        ("GET", f"/v2/{name}/blobs/{digest}", None),
        ("POST", f"/v2/{name}/blobs/uploads/", b""),
        ("POST", f"/v2/{name}/blobs/uploads/?digest={digest}", b"name test"),
        ("GET", f"/v2/{name}/referrers/{digest}", None),
    ):
        r = await api.request(method, path, data=data)
        api.error(r, 400, "NAME_INVALID")
    catalog = await api.request("GET", "/v2/_catalog")
    assert catalog.status == 200
    assert name not in (catalog.json().get("repositories") or [])


@pytest.mark.parametrize(
    "tag",
    ["-leading-dash", ".leading-dot", "bad!char", "t" * 129],
    ids=["leading-dash", "leading-dot", "bang", "too-long"],
)
async def test_invalid_tag(api, unique_repo, tag):
    """PUT of a valid manifest under a reference that is neither a digest nor a tag
    (`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`): 400, no tag created.

    The code: v1.1 says the code MUST be one of its table, whose catch-all for a rejected
    manifest PUT is MANIFEST_INVALID; its "legacy Docker support error codes" clause also
    lets registries answer TAG_INVALID. Those two, and only those, are accepted.
    """
    repo = unique_repo()
    image = await api.push_image(repo, "good", seed=10)
    r = await api.put_manifest(repo, tag, image.manifest)
    api.error(r, 400, frozenset({"MANIFEST_INVALID", "TAG_INVALID"}))
    assert await api.tags(repo) == ["good"]


async def test_invalid_digest(api, unique_repo):
    """Malformed digests: 400 DIGEST_INVALID wherever a digest is taken, nothing stored."""
    repo = unique_repo()
    await api.push_blob(repo, b"make the repository exist")
    bad = ["sha256:xyz", "sha256:" + "a" * 63, "sha256:" + "A" * 64, "nocolon", "sha256:"]
    for digest in bad:
        path_digest = quote(digest, safe=":")
        api.error(
            await api.request("GET", f"/v2/{repo}/blobs/{path_digest}"), 400, "DIGEST_INVALID"
        )
        r = await api.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/?digest={path_digest}",
            data=b"payload",
            headers={"Content-Type": OCTET},
        )
        api.error(r, 400, "DIGEST_INVALID")
        location = await api.start_upload(repo)
        r = await api.request(
            "PUT", with_digest(location, digest), data=b"payload", headers={"Content-Type": OCTET}
        )
        api.error(r, 400, "DIGEST_INVALID")
        api.error(
            await api.request("GET", f"/v2/{repo}/referrers/{path_digest}"), 400, "DIGEST_INVALID"
        )
        api.error(
            await api.request("DELETE", f"/v2/{repo}/blobs/{path_digest}"), 400, "DIGEST_INVALID"
        )
    assert not await api.blob_visible(repo, sha256(b"payload"))


# --- manifests -----------------------------------------------------------------------


async def test_manifest_get_and_head(api, unique_repo):
    """GET and HEAD by tag and by digest: 200, the exact bytes (GET), Content-Type,
    Docker-Content-Digest, Content-Length; unknown tags and digests are 404."""
    repo = unique_repo()
    image = await api.push_image(repo, "v1", seed=11, layers=2)
    for reference in ("v1", image.digest):
        got = await api.get_manifest(repo, reference)
        assert got.status == 200, got
        assert got.body == image.manifest.data
        assert got.headers.get("Content-Type") == OCI_MANIFEST
        assert got.headers.get("Docker-Content-Digest") == image.digest
        head = await api.get_manifest(repo, reference, method="HEAD")
        assert head.status == 200, head
        assert head.body == b""
        assert head.headers.get("Content-Type") == OCI_MANIFEST
        assert head.headers.get("Docker-Content-Digest") == image.digest
        assert head.headers.get("Content-Length") == str(image.manifest.size)
    api.error(await api.get_manifest(repo, "nope"), 404, "MANIFEST_UNKNOWN")
    api.error(await api.get_manifest(repo, sha256(b"no manifest")), 404, "MANIFEST_UNKNOWN")
    head = await api.get_manifest(repo, "nope", method="HEAD")
    assert head.status == 404
    api.error(
        await api.get_manifest(unique_repo("never-pushed"), "v1"),
        404,
        frozenset({"NAME_UNKNOWN", "MANIFEST_UNKNOWN"}),
    )


async def test_manifest_put_by_digest(api, unique_repo):
    """PUT by digest: 201 with Location and Docker-Content-Digest; no tag is created."""
    repo = unique_repo()
    await api.push_image(repo, "first", seed=12)
    image = build_image(13, layers=1, files_per_layer=1, file_size=1024)
    for blob in image.blobs:
        await api.push_blob(repo, blob.data)
    r = await api.put_manifest(repo, image.digest, image.manifest)
    assert r.status == 201, r
    assert r.headers.get("Docker-Content-Digest") == image.digest
    assert r.headers.get("Location")
    got = await api.request("GET", r.headers["Location"], headers={"Accept": MANIFEST_ACCEPT})
    assert got.body == image.manifest.data
    assert await api.tags(repo) == ["first"]


async def test_tag_moves_to_a_new_manifest(api, unique_repo):
    """PUT of another manifest under an existing tag moves the tag; the old manifest stays
    reachable by digest."""
    repo = unique_repo()
    old = await api.push_image(repo, "current", seed=26)
    new = await api.push_image(repo, "current", seed=27)
    got = await api.get_manifest(repo, "current")
    assert got.headers.get("Docker-Content-Digest") == new.digest
    assert got.body == new.manifest.data
    assert (await api.get_manifest(repo, old.digest)).body == old.manifest.data
    assert await api.tags(repo) == ["current"]


async def test_cached_manifest_reads_follow_every_write(api, unique_repo):
    """Reads the gateway answers from its manifest cache change the moment a write
    returns: a moved tag, a deleted tag, a deleted manifest (HEAD and GET alike), and the
    tag list (whole and by page)."""
    lookups = "artifactstore_manifest_cache_lookups_total"
    hits = (lookups, (("read", "manifest"), ("result", "hit")))
    tag_hits = (lookups, (("read", "tags"), ("result", "hit")))
    gateway = _metrics_address(api.registry, "gateway")
    repo = unique_repo()
    old = await api.push_image(repo, "current", seed=60)
    await api.push_image(repo, "keep", seed=61)
    before = _samples(gateway)
    for _ in range(3):
        got = await api.get_manifest(repo, "current")
        assert got.headers.get("Docker-Content-Digest") == old.digest
        head = await api.get_manifest(repo, "current", method="HEAD")
        assert head.headers.get("Docker-Content-Digest") == old.digest
        assert await api.tags(repo) == ["current", "keep"]
        assert (await api.request("GET", f"/v2/{repo}/tags/list?n=1")).json()["tags"] == ["current"]
    after = _samples(gateway)
    assert after.get(hits, 0.0) > before.get(hits, 0.0), "the reads never hit the cache"
    assert after.get(tag_hits, 0.0) > before.get(tag_hits, 0.0), "no tag list hit the cache"
    await api.push_image(repo, "added", seed=63)
    assert await api.tags(repo) == ["added", "current", "keep"]
    assert (await api.request("GET", f"/v2/{repo}/tags/list?n=1")).json()["tags"] == ["added"]

    new = await api.push_image(repo, "current", seed=62)
    got = await api.get_manifest(repo, "current")
    assert got.headers.get("Docker-Content-Digest") == new.digest
    assert got.body == new.manifest.data
    head = await api.get_manifest(repo, "current", method="HEAD")
    assert head.headers.get("Docker-Content-Digest") == new.digest

    assert (await api.request("DELETE", f"/v2/{repo}/manifests/current")).status == 202
    api.error(await api.get_manifest(repo, "current"), 404, "MANIFEST_UNKNOWN")
    assert (await api.get_manifest(repo, new.digest)).status == 200
    assert (await api.request("DELETE", f"/v2/{repo}/manifests/{new.digest}")).status == 202
    api.error(await api.get_manifest(repo, new.digest), 404, "MANIFEST_UNKNOWN")
    assert (await api.get_manifest(repo, "keep")).status == 200
    assert await api.tags(repo) == ["added", "keep"]


async def test_cached_blob_links_follow_every_write(api, unique_repo):
    """Blob HEADs and GETs the gateway answers from its cache of repository links change
    the moment a write returns: a deleted blob is unknown at once (HEAD and GET), a blob
    pushed again or mounted is found at once, and a mount source's delete leaves the
    target's link alone."""
    hits = ("artifactstore_manifest_cache_lookups_total", (("read", "link"), ("result", "hit")))
    gateway = _metrics_address(api.registry, "gateway")
    source, target = unique_repo("source"), unique_repo("target")
    data = random_bytes(20_000, seed=64)
    digest = await api.push_blob(source, data)
    await api.push_blob(target, b"make the target exist")
    before = _samples(gateway)
    for _ in range(3):
        assert await api.blob_visible(source, digest)
        assert (await api.request("GET", f"/v2/{source}/blobs/{digest}")).body == data
    assert not await api.blob_visible(target, digest)
    assert _samples(gateway).get(hits, 0.0) > before.get(hits, 0.0), "no link read hit the cache"

    mounted = await api.request("POST", f"/v2/{target}/blobs/uploads/?mount={digest}&from={source}")
    assert mounted.status == 201, mounted
    assert await api.blob_visible(target, digest)
    assert (await api.request("DELETE", f"/v2/{source}/blobs/{digest}")).status == 202
    assert not await api.blob_visible(source, digest)
    api.error(await api.request("GET", f"/v2/{source}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert await api.blob_visible(target, digest)

    assert await api.push_blob(source, data) == digest
    assert await api.blob_visible(source, digest)
    assert (await api.request("GET", f"/v2/{source}/blobs/{digest}")).body == data


async def test_invalid_manifest_body(api, unique_repo):
    """Bodies that are not a manifest (not JSON, JSON of the wrong shape, a schema
    version other than 2): 400 MANIFEST_INVALID, nothing stored."""
    repo = unique_repo()
    image = await api.push_image(repo, "base", seed=28)
    config = image.config.descriptor()
    bodies = [
        (OCI_MANIFEST, b"this is not json"),
        (OCI_MANIFEST, b"[1, 2, 3]"),
        (OCI_MANIFEST, canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST})),
        (
            OCI_MANIFEST,
            canonical_json(
                {"schemaVersion": 1, "mediaType": OCI_MANIFEST, "config": config, "layers": []}
            ),
        ),
        (
            OCI_MANIFEST,
            canonical_json(
                {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": 7}
            ),
        ),
    ]
    for media_type, body in bodies:
        r = await api.put_manifest(repo, "bad", Blob(media_type, body))
        api.error(r, 400, "MANIFEST_INVALID")
        api.error(await api.get_manifest(repo, sha256(body)), 404, "MANIFEST_UNKNOWN")
    api.error(await api.get_manifest(repo, "bad"), 404, "MANIFEST_UNKNOWN")
    assert await api.tags(repo) == ["base"]


async def test_manifest_with_missing_blob(api, unique_repo):
    """A manifest naming a layer the repository lacks, and an index naming a manifest it
    lacks: 400 MANIFEST_BLOB_UNKNOWN, no tag, no manifest."""
    repo = unique_repo()
    await api.push_image(repo, "base", seed=14)
    image = build_image(15, layers=2, files_per_layer=1, file_size=1024)
    await api.push_blob(repo, image.config.data)
    await api.push_blob(repo, image.layers[0].data)  # the second layer is never pushed
    r = await api.put_manifest(repo, "broken", image.manifest)
    api.error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    api.error(await api.get_manifest(repo, "broken"), 404, "MANIFEST_UNKNOWN")
    api.error(await api.get_manifest(repo, image.digest), 404, "MANIFEST_UNKNOWN")

    index = build_index(16, layers=1)
    r = await api.put_manifest(repo, "broken-index", index.index)
    api.error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    api.error(await api.get_manifest(repo, index.digest), 404, "MANIFEST_UNKNOWN")
    assert await api.tags(repo) == ["base"]


async def test_manifest_digest_mismatch(api, unique_repo):
    """PUT /manifests/<digest> with a body whose digest is another: 400 DIGEST_INVALID;
    the manifest is stored under neither digest."""
    repo = unique_repo()
    image = await api.push_image(repo, "base", seed=17)
    other = sha256(b"a different manifest")
    r = await api.put_manifest(repo, other, image.manifest)
    api.error(r, 400, "DIGEST_INVALID")
    api.error(await api.get_manifest(repo, other), 404, "MANIFEST_UNKNOWN")
    assert (await api.get_manifest(repo, image.digest)).status == 200
    assert await api.tags(repo) == ["base"]


def _padded_manifest(config: Blob, size: int) -> Blob:
    """A valid OCI image manifest padded with an annotation to exactly `size` bytes."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [],
        "annotations": {"pad": ""},
    }
    base = len(canonical_json(doc))
    doc["annotations"] = {"pad": "p" * (size - base)}
    data = canonical_json(doc)
    assert len(data) == size
    return Blob(OCI_MANIFEST, data)


async def test_manifest_size_limit(api, unique_repo):
    """A 4 MiB manifest is accepted and served byte for byte (the spec's floor); one byte
    more is 413 with an error body, and is not stored."""
    repo = unique_repo()
    await api.push_blob(repo, EMPTY_CONFIG.data)
    limit = 4 * 1024 * 1024
    fits = _padded_manifest(EMPTY_CONFIG, limit)
    r = await api.put_manifest(repo, "big", fits)
    assert r.status == 201, r
    got = await api.get_manifest(repo, "big")
    assert got.status == 200
    assert got.body == fits.data

    too_big = _padded_manifest(EMPTY_CONFIG, limit + 1)
    try:
        r = await api.put_manifest(repo, "too-big", too_big)
    except aiohttp.ClientError as e:
        pytest.fail(f"the registry broke the connection instead of answering 413: {e!r}")
    api.error(r, 413)
    api.error(await api.get_manifest(repo, "too-big"), 404, "MANIFEST_UNKNOWN")
    api.error(await api.get_manifest(repo, too_big.digest), 404, "MANIFEST_UNKNOWN")
    assert await api.tags(repo) == ["big"]


async def test_subject_to_missing_manifest_is_accepted(api, unique_repo):
    """A manifest whose `subject` names a manifest that does not exist: 201 with
    `OCI-Subject`, and the referrers API already lists it under that digest."""
    repo = unique_repo()
    await api.push_blob(repo, EMPTY_CONFIG.data)
    layer = Blob("application/vnd.example.note.v1", b"a note about an absent image")
    await api.push_blob(repo, layer.data)
    absent = sha256(b"an image pushed later, or never")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.note.v1",
        "config": EMPTY_CONFIG.descriptor(),
        "layers": [layer.descriptor()],
        "subject": {"mediaType": OCI_MANIFEST, "digest": absent, "size": 1234},
        "annotations": {"org.example.note": "yes"},
    }
    manifest = Blob(OCI_MANIFEST, canonical_json(doc))
    r = await api.put_manifest(repo, manifest.digest, manifest)
    assert r.status == 201, r
    assert r.headers.get("OCI-Subject") == absent
    ref = await api.request("GET", f"/v2/{repo}/referrers/{absent}")
    assert ref.status == 200, ref
    assert ref.json()["manifests"] == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": manifest.digest,
            "size": manifest.size,
            "artifactType": "application/vnd.example.note.v1",
            "annotations": {"org.example.note": "yes"},
        }
    ]


async def test_referrers_of_unknown_digest(api, unique_repo):
    """Referrers of a digest nothing refers to: 200 and an empty OCI index (never 404)."""
    repo = unique_repo()
    await api.push_image(repo, "v1", seed=18)
    r = await api.request("GET", f"/v2/{repo}/referrers/{sha256(b'nobody refers to me')}")
    assert r.status == 200, r
    assert r.headers.get("Content-Type") == OCI_INDEX
    doc = r.json()
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == OCI_INDEX
    assert doc["manifests"] == []


# --- blobs: ranges, unknown, mount, concurrency, delete ------------------------------


# Below and above the size the gateway reads on its event loop rather than in a thread.
@pytest.mark.parametrize("size", [10_000, 3 * 1024 * 1024 + 7])
async def test_blob_range_requests(api, unique_repo, size):
    """GET with Range: 206 with Content-Range and exactly those bytes; a range past the
    end is 416."""
    repo = unique_repo()
    data = random_bytes(size, seed=19)
    digest = await api.push_blob(repo, data)
    url = f"/v2/{repo}/blobs/{digest}"
    last = size - 1
    for header, lo, hi in (
        ("bytes=100-199", 100, 199),
        (f"bytes={size - 10}-", size - 10, last),
        ("bytes=-5", size - 5, last),
        ("bytes=0-0", 0, 0),
        (f"bytes={size - 1000}-{2 * size}", size - 1000, last),
        (f"bytes=1-{size - 2}", 1, size - 2),
    ):
        r = await api.request("GET", url, headers={"Range": header})
        assert r.status == 206, (header, r)
        assert r.headers.get("Content-Range") == f"bytes {lo}-{hi}/{size}", header
        assert r.headers.get("Content-Length") == str(hi - lo + 1), header
        assert r.body == data[lo : hi + 1], header
    r = await api.request("GET", url, headers={"Range": f"bytes={2 * size}-{3 * size}"})
    api.error(r, 416)
    full = await api.request("GET", url)
    assert full.status == 200
    assert full.headers.get("Docker-Content-Digest") == digest
    assert full.body == data


async def test_unknown_blob(api, unique_repo):
    """GET and HEAD of a blob the repository lacks: 404 (BLOB_UNKNOWN on GET)."""
    repo = unique_repo()
    await api.push_blob(repo, b"make the repository exist")
    missing = sha256(b"never uploaded")
    api.error(await api.request("GET", f"/v2/{repo}/blobs/{missing}"), 404, "BLOB_UNKNOWN")
    head = await api.request("HEAD", f"/v2/{repo}/blobs/{missing}")
    assert head.status == 404
    assert head.body == b""


async def test_cross_repository_mount(api, unique_repo):
    """Mount from a repository holding the blob: 201, Location, Docker-Content-Digest,
    and the blob is now in the target. Mount of a blob the source lacks: 202 and an
    upload session that completes normally."""
    source, target = unique_repo("source"), unique_repo("target")
    data = random_bytes(30_000, seed=20)
    digest = await api.push_blob(source, data)
    await api.push_blob(target, b"make the target exist")
    assert not await api.blob_visible(target, digest), "blob visible in an unlinked repository"

    r = await api.request("POST", f"/v2/{target}/blobs/uploads/?mount={digest}&from={source}")
    assert r.status == 201, r
    assert r.headers.get("Docker-Content-Digest") == digest
    assert r.headers.get("Location")
    got = await api.request("GET", r.headers["Location"])
    assert got.body == data
    assert await api.blob_visible(target, digest)

    fresh = random_bytes(10_000, seed=21)
    fresh_digest = sha256(fresh)
    r = await api.request(
        "POST", f"/v2/{target}/blobs/uploads/?mount={fresh_digest}&from={source}", data=b""
    )
    assert r.status == 202, r
    location = r.headers.get("Location")
    assert location
    assert not await api.blob_visible(target, fresh_digest)
    r = await api.request(
        "PUT", with_digest(location, fresh_digest), data=fresh, headers={"Content-Type": OCTET}
    )
    assert r.status == 201, r
    assert await api.blob_visible(target, fresh_digest)
    assert not await api.blob_visible(source, fresh_digest)


async def test_concurrent_uploads_of_the_same_blob(api, registry, unique_repo):
    """Two clients push the same 2 MiB blob at the same time, chunk by chunk: both get
    201, and exactly one copy of it exists in the storage tree, at its canonical path."""
    repo_a, repo_b = unique_repo("a"), unique_repo("b")
    data = random_bytes(2 * 1024 * 1024, seed=22)
    digest = sha256(data)
    results = await asyncio.gather(
        api.chunked_push(repo_a, data, 256 * 1024),
        api.chunked_push(repo_b, data, 256 * 1024),
    )
    for r in results:
        assert r.status == 201, r
        assert r.headers.get("Docker-Content-Digest") == digest
    for repo in (repo_a, repo_b):
        got = await api.request("GET", f"/v2/{repo}/blobs/{digest}")
        assert got.body == data
    assert registry.files_holding(data) == [registry.blob_file(digest)]


async def test_a_blob_a_manifest_uses_is_not_deleted(api, registry, unique_repo):
    """DELETE of a blob a manifest of the repository needs: 403 DENIED and the blob stays
    (GC would otherwise remove the bytes of a manifest that still exists)."""
    repo = unique_repo()
    image = build_image(31, layers=1, files_per_layer=1, file_size=1024)
    registry.push_image(repo, image, "v1")
    layer = image.blobs[-1].digest
    api.error(await api.request("DELETE", f"/v2/{repo}/blobs/{layer}"), 403, "DENIED")
    assert await api.blob_visible(repo, layer)
    assert (await api.request("DELETE", f"/v2/{repo}/manifests/{image.digest}")).status == 202
    assert (await api.request("DELETE", f"/v2/{repo}/blobs/{layer}")).status == 202


async def test_delete_blob(api, unique_repo):
    """DELETE a blob: 202; then HEAD is 404, GET is 404 BLOB_UNKNOWN, DELETE again 404."""
    repo = unique_repo()
    data = random_bytes(4000, seed=23)
    digest = await api.push_blob(repo, data)
    r = await api.request("DELETE", f"/v2/{repo}/blobs/{digest}")
    assert r.status == 202, r
    assert not await api.blob_visible(repo, digest)
    api.error(await api.request("GET", f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    api.error(await api.request("DELETE", f"/v2/{repo}/blobs/{digest}"), 404, "BLOB_UNKNOWN")


async def test_delete_manifest_by_tag_and_by_digest(api, unique_repo):
    """DELETE by tag (202) removes only that tag; DELETE by digest (202) removes the
    manifest and every tag naming it; a second DELETE is 404 MANIFEST_UNKNOWN."""
    repo = unique_repo()
    image = await api.push_image(repo, "a", seed=24)
    r = await api.put_manifest(repo, "b", image.manifest)
    assert r.status == 201, r
    assert await api.tags(repo) == ["a", "b"]

    r = await api.request("DELETE", f"/v2/{repo}/manifests/a")
    assert r.status == 202, r
    api.error(await api.get_manifest(repo, "a"), 404, "MANIFEST_UNKNOWN")
    assert (await api.get_manifest(repo, "b")).status == 200
    assert (await api.get_manifest(repo, image.digest)).status == 200
    assert await api.tags(repo) == ["b"]

    r = await api.request("DELETE", f"/v2/{repo}/manifests/{image.digest}")
    assert r.status == 202, r
    api.error(await api.get_manifest(repo, image.digest), 404, "MANIFEST_UNKNOWN")
    api.error(await api.get_manifest(repo, "b"), 404, "MANIFEST_UNKNOWN")
    api.error(
        await api.request("DELETE", f"/v2/{repo}/manifests/{image.digest}"),
        404,
        "MANIFEST_UNKNOWN",
    )
    api.error(await api.request("DELETE", f"/v2/{repo}/manifests/a"), 404, "MANIFEST_UNKNOWN")


# --- listing: tags and catalog -------------------------------------------------------


def _next_link(resp: Resp) -> str | None:
    """The URL of a `Link: <url>; rel="next"` header, or None."""
    link = resp.headers.get("Link")
    if link is None:
        return None
    match = re.fullmatch(r'\s*<([^>]+)>\s*;\s*rel="?next"?\s*', link)
    assert match, f'Link header {link!r} is not `<url>; rel="next"`'
    return match.group(1)


async def test_tag_list_pagination(api, unique_repo):
    """25 tags walked with n=10 by following Link: pages of 10, 10 and 5, Link on the
    first two only, lexical order; `last` alone; n=0 is an empty list without Link."""
    repo = unique_repo()
    image = await api.push_image(repo, "t00", seed=25)
    tags = [f"t{i:02d}" for i in range(25)]
    for tag in tags[1:]:
        r = await api.put_manifest(repo, tag, image.manifest)
        assert r.status == 201, r

    everything = await api.request("GET", f"/v2/{repo}/tags/list")
    assert everything.status == 200
    assert everything.headers.get("Content-Type", "").startswith("application/json")
    assert everything.json() == {"name": repo, "tags": tags}
    assert everything.headers.get("Link") is None

    pages: list[list[str]] = []
    links: list[str | None] = []
    url: str | None = f"/v2/{repo}/tags/list?n=10"
    while url is not None:
        r = await api.request("GET", url)
        assert r.status == 200, r
        assert r.json()["name"] == repo
        pages.append(r.json()["tags"])
        url = _next_link(r)
        links.append(url)
        assert len(pages) <= 3, f"more pages than expected: {pages}"
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [tag for page in pages for tag in page] == tags
    assert links[2] is None
    for link, page in zip(links[:2], pages[:2], strict=True):
        assert link is not None
        query = parse_qs(urlsplit(link).query)
        assert query.get("n") == ["10"], link
        assert query.get("last") == [page[-1]], link

    r = await api.request("GET", f"/v2/{repo}/tags/list?last=t09")
    assert r.status == 200
    assert r.json()["tags"] == tags[10:]
    r = await api.request("GET", f"/v2/{repo}/tags/list?n=100")
    assert r.json()["tags"] == tags
    assert r.headers.get("Link") is None
    r = await api.request("GET", f"/v2/{repo}/tags/list?n=0")
    assert r.status == 200, r
    assert r.json()["tags"] == []
    assert r.headers.get("Link") is None


async def test_tag_list_of_unknown_repository(api, unique_repo):
    """Tags of a repository that never existed: 404 NAME_UNKNOWN."""
    r = await api.request("GET", f"/v2/{unique_repo('never')}/tags/list")
    api.error(r, 404, "NAME_UNKNOWN")


async def test_catalog_pagination(api, unique_repo):
    """/v2/_catalog lists repositories in lexical order; walking it with n=2 through
    the Link headers gives the same list, in pages of at most 2."""
    repos = sorted(unique_repo(f"cat{i}") for i in range(3))
    for i, repo in enumerate(repos):
        await api.push_image(repo, "v1", seed=30 + i)

    full = await api.request("GET", "/v2/_catalog")
    assert full.status == 200
    everything = full.json()["repositories"]
    assert everything == sorted(everything)
    assert set(repos) <= set(everything)

    walked: list[str] = []
    url: str | None = "/v2/_catalog?n=2"
    while url is not None:
        r = await api.request("GET", url)
        assert r.status == 200, r
        page = r.json()["repositories"]
        assert 0 < len(page) <= 2, page
        walked.extend(page)
        url = _next_link(r)
        if url is not None:
            assert parse_qs(urlsplit(url).query).get("last") == [page[-1]], url
        assert len(walked) <= len(everything) + 2, "pagination does not end"
    assert walked == everything

    r = await api.request("GET", f"/v2/_catalog?n=1&last={repos[0]}")
    assert r.status == 200
    assert r.json()["repositories"] == [everything[everything.index(repos[0]) + 1]]


def test_blob_lost_from_storage_is_not_served(start_registry, unique_repo):
    """A blob whose file vanished from the storage underneath the registry, after a pull
    told the gateway where it is: 404 BLOB_UNKNOWN, never 200 with other bytes."""
    registry = start_registry()
    repo = unique_repo()
    data = random_bytes(1024 * 1024, seed=23)
    digest = registry.push_blob(repo, data)
    url = f"/v2/{repo}/blobs/{digest}"
    assert registry.request("GET", url).body == data
    hexdigest = digest.removeprefix("sha256:")
    blobs = registry.data_dir / "storage" / "blobs" / "sha256"
    (blobs / hexdigest[:2] / hexdigest / "data").unlink()
    lost = registry.request("GET", url)
    assert lost.status == 404, lost.status
    assert lost.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_manifest_over_a_blob_lost_from_storage_is_refused(start_registry, unique_repo):
    """A manifest PUT again after one of its layers' files vanished underneath: 400
    MANIFEST_BLOB_UNKNOWN naming the layer, and no tag, although the gateway had seen
    that layer stored when the first PUT was accepted."""
    registry = start_registry()
    repo = unique_repo()
    image = build_image(24, layers=2, files_per_layer=1, file_size=1024)
    registry.push_image(repo, image, "v1")
    layer = image.layers[1].digest
    hexdigest = layer.removeprefix("sha256:")
    blobs = registry.data_dir / "storage" / "blobs" / "sha256"
    (blobs / hexdigest[:2] / hexdigest / "data").unlink()
    r = registry.request(
        "PUT",
        f"/v2/{repo}/manifests/v2",
        body=image.manifest.data,
        headers={"Content-Type": image.manifest.media_type},
    )
    assert r.status == 400, (r.status, r.body)
    error = r.json()["errors"][0]
    assert error["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert layer in error["message"]
    tags = registry.request("GET", f"/v2/{repo}/tags/list").json()["tags"]
    assert tags == ["v1"]
