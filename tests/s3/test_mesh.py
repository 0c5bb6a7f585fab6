"""The whole mesh (`artifact-store serve`) on object storage: the real Ceph cluster that
`make test` starts, with radosgw stopped and started under a push, a misbehaving store in
front of it, and blob GETs redirected to presigned URLs.

Each test starts its own instance (tests/e2e's `Registry`) on a fresh prefix of the test
bucket, with the retry budget the scenario needs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import Registry, Response, free_port
from tests.e2e.images import build_image, read_layout
from tests.objectstore import (
    endpoint_of,
    fresh_s3_url,
    s3_base_url,
    start_radosgw,
    stop_radosgw,
    with_endpoint,
)
from tests.s3.faults import Fault, ProxyThread

MiB = 1024 * 1024
REPO = "s3/mesh"


@pytest.fixture
def start_registry(tmp_path: Path) -> Iterator[Callable[..., Registry]]:
    """Start `artifact-store serve` with blobs on a fresh prefix of the test bucket (and
    more environment as keyword arguments); stopped after."""
    started: list[Registry] = []

    def start(**env: str) -> Registry:
        base = tmp_path / f"registry{len(started)}"
        base.mkdir()
        env.setdefault("ARTS_STORAGE_URL", fresh_s3_url("mesh"))
        reg = Registry(base / "data", free_port(), base / "serve.log", env=env)
        started.append(reg)
        reg.start()
        return reg

    try:
        yield start
    finally:
        for reg in started:
            reg.stop()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def start_session(reg: Registry) -> str:
    r = reg.request("POST", f"/v2/{REPO}/blobs/uploads/")
    assert r.status == 202, r.body
    location = r.header("Location")
    assert location
    return location


def patch(reg: Registry, location: str, body: bytes, first: int) -> Response:
    return reg.request(
        "PATCH",
        location,
        body=body,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{first}-{first + len(body) - 1}",
        },
        timeout=180,
    )


def finish_and_check(reg: Registry, location: str, data: bytes) -> None:
    """PUT the session's digest, then GET the blob back: the exact bytes."""
    digest = digest_of(data)
    r = reg.request("PUT", f"{location}?digest={digest}", timeout=180)
    assert r.status == 201, r.body
    r = reg.request("GET", f"/v2/{REPO}/blobs/{digest}", timeout=180)
    assert r.status == 200
    assert hashlib.sha256(r.body).hexdigest() == digest.split(":")[1]


def check_unavailable(r: Response) -> None:
    """A 503 with the spec's error body."""
    assert r.status == 503, (r.status, r.body[:300])
    errors = json.loads(r.body)["errors"]
    assert [e["code"] for e in errors] == ["UNAVAILABLE"]
    assert all(isinstance(e["message"], str) for e in errors)
    # Nothing about the store (endpoint, bucket, keys) reaches the client.
    assert endpoint_of(s3_base_url()).encode() not in r.body
    assert urlsplit(s3_base_url()).netloc.encode() not in r.body
    assert b"uploads/" not in r.body and b"blobs/" not in r.body


def test_push_rides_out_a_radosgw_restart(start_registry: Callable[..., Registry]) -> None:
    """radosgw stops in the middle of a PATCH and comes back a few seconds later:
    blob_svc's retries carry the write over the gap, the PATCH succeeds."""
    reg = start_registry(ARTS_STORAGE_RETRY_SECS="120")
    data = random.Random(1).randbytes(40 * MiB + 7)
    location = start_session(reg)
    restarted = threading.Event()

    def start_again() -> None:
        start_radosgw()
        restarted.set()

    def restart_later() -> None:
        stop_radosgw()
        threading.Timer(2.0, start_again).start()

    def body() -> Iterator[bytes]:
        for start in range(0, len(data), MiB):
            if start == 20 * MiB:
                restart_later()
            yield data[start : start + MiB]

    conn = http.client.HTTPConnection(reg.host, timeout=180)
    try:
        conn.request(
            "PATCH",
            location,
            body=body(),
            headers={
                "Authorization": reg.admin_authorization,
                "Content-Type": "application/octet-stream",
                "Content-Length": str(len(data)),
            },
        )
        reply = conn.getresponse()
        assert reply.status == 202, reply.read()
        assert reply.getheader("Range") == f"0-{len(data) - 1}"
    finally:
        conn.close()
    assert restarted.wait(60), "radosgw did not come back"
    finish_and_check(reg, location, data)
    # The outage did hit a write of the store, which retried it.
    assert "object storage call failed" in reg.log_path.read_text()


def test_client_resumes_after_a_long_outage(start_registry: Callable[..., Registry]) -> None:
    """radosgw stays down longer than the retry budget: the PATCH answers 503 with the
    error body and stores nothing of itself; once radosgw is back the client asks where
    the session ends, sends the rest, and the blob is whole."""
    reg = start_registry(ARTS_STORAGE_RETRY_SECS="2")
    rng = random.Random(2)
    first, second = rng.randbytes(20 * MiB), rng.randbytes(4 * MiB)
    location = start_session(reg)
    assert patch(reg, location, first, 0).status == 202
    stop_radosgw()
    try:
        check_unavailable(patch(reg, location, second, len(first)))
    finally:
        start_radosgw()
    status = reg.request("GET", location)
    assert status.status == 204
    assert status.header("Range") == f"0-{len(first) - 1}"
    assert patch(reg, location, second, len(first)).status == 202
    finish_and_check(reg, location, first + second)


def test_store_failures_are_503_and_no_blob_is_partial(
    start_registry: Callable[..., Registry],
) -> None:
    with ProxyThread(endpoint_of(s3_base_url())) as proxy:
        url = with_endpoint(fresh_s3_url("mesh"), proxy.endpoint)
        reg = start_registry(ARTS_STORAGE_URL=url, ARTS_STORAGE_RETRY_SECS="2")
        data = random.Random(3).randbytes(9 * MiB)
        digest = reg.push_blob(REPO, data)

        proxy.fail(Fault.ERROR)
        check_unavailable(reg.request("GET", f"/v2/{REPO}/blobs/{digest}"))
        # Opening a session needs metadata_svc alone; its first bytes need the store.
        opened = start_session(reg)
        check_unavailable(patch(reg, opened, b"first bytes", 0))
        # A HEAD answers from the repository's link alone.
        assert reg.request("HEAD", f"/v2/{REPO}/blobs/{digest}").status == 200

        # A monolithic push while every server-side copy of a commit fails: 503, and the
        # blob never appears.
        other = random.Random(4).randbytes(7 * MiB)
        proxy.heal()
        # The failed PATCH stored nothing: the session still starts at byte 0.
        assert patch(reg, opened, b"first bytes", 0).status == 202
        location = start_session(reg)
        proxy.fail(Fault.ERROR, match=rb"(?i)x-amz-copy-source:")
        r = reg.request("PUT", f"{location}?digest={digest_of(other)}", body=other, timeout=120)
        check_unavailable(r)
        proxy.heal()
        missing = reg.request("GET", f"/v2/{REPO}/blobs/{digest_of(other)}")
        assert missing.status == 404
        assert reg.request("GET", f"/v2/{REPO}/blobs/{digest}").body == data
        # The session kept the bytes: the client commits again.
        finish_and_check(reg, location, other)


def test_blob_gets_redirect_to_presigned_urls_after_access_checks(
    start_registry: Callable[..., Registry], tmp_path: Path
) -> None:
    reg = start_registry(ARTS_STORAGE_REDIRECT="true", ARTS_STORAGE_REDIRECT_EXPIRY_SECS="90")
    data = random.Random(5).randbytes(2 * MiB + 1)
    digest = reg.push_blob(REPO, data)

    r = reg.request("GET", f"/v2/{REPO}/blobs/{digest}")
    assert r.status == 307
    assert r.header("Docker-Content-Digest") == digest
    location = r.header("Location")
    assert location is not None
    target = urlsplit(location)
    assert target.netloc == endpoint_of(s3_base_url())
    assert "X-Amz-Expires=90" in target.query

    def fetch(headers: dict[str, str]) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(target.netloc, timeout=30)
        try:
            conn.request("GET", f"{target.path}?{target.query}", headers=headers)
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()

    # The URL needs no credentials; ranges go to the store too.
    assert fetch({}) == (200, data)
    assert fetch({"Range": "bytes=10-19"}) == (206, data[10:20])
    # Access is checked before any redirect: no credentials, no URL.
    anonymous = reg.request("GET", f"/v2/{REPO}/blobs/{digest}", auth=None)
    assert anonymous.status == 401
    assert anonymous.header("Location") is None
    unlinked = digest_of(b"not in this repository")
    assert reg.request("GET", f"/v2/{REPO}/blobs/{unlinked}").status == 404
    # HEAD is answered by the registry itself.
    head = reg.request("HEAD", f"/v2/{REPO}/blobs/{digest}")
    assert (head.status, head.header("Content-Length")) == (200, str(len(data)))

    # A real client follows the redirects for every layer and the config.
    image = build_image(seed=51, layers=2)
    reg.push_image(REPO, image, "redirected")
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is not installed (make test-deps installs it)"
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    out = tmp_path / "pulled"
    subprocess.run(
        [
            skopeo,
            "--policy",
            str(policy),
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            ":".join(reg.admin),
            f"docker://{reg.host}/{REPO}:redirected",
            f"oci:{out}:redirected",
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    pulled = read_layout(out)
    for blob in image.blobs:
        assert pulled.blobs[blob.digest] == blob.data
