"""A blob service killed (SIGKILL) in the middle of a push, on an instance of its own.

The supervisor must restart blob_svc; the client then does what a real client does —
asks the upload's status and resumes from its `Range`, or starts over if the session is
gone — and the blob ends complete with the right digest. At no moment may a partial
blob be visible: not through the API, and not as a canonical file in the storage tree
(every `blobs/sha256/<2>/<hex>/data` must hash to `<hex>`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

CHUNK = 4 * 1024 * 1024
SIZE = 64 * 1024 * 1024
CHUNKS_BEFORE_CRASH = 8
RESTART_TIMEOUT = 20.0


class Watcher(threading.Thread):
    """Watches the whole test for a partial blob becoming visible.

    In a loop: every canonical file (`blobs/<alg>/<2>/<hex>/data`) that is new or has
    changed (size, mtime) is hashed and must hash to its path; and until the closing PUT
    is sent, HEAD of the blob being pushed must never answer 200.
    """

    def __init__(self, reg, repo: str, digest: str) -> None:
        super().__init__(daemon=True)
        self.reg = reg
        self.head_path = f"/v2/{repo}/blobs/{digest}"
        self.closing = threading.Event()
        self.done = threading.Event()
        self.violations: list[str] = []
        self.scans = 0
        self.heads = 0
        self._seen: dict[Path, tuple[int, int]] = {}

    def run(self) -> None:
        while not self.done.is_set():
            self._scan()
            if not self.closing.is_set():
                with contextlib.suppress(OSError):
                    status = self.reg.request("HEAD", self.head_path, timeout=5).status
                    self.heads += 1
                    if status == 200 and not self.closing.is_set():
                        self.violations.append("HEAD answered 200 before the upload closed")
            time.sleep(0.01)

    def _scan(self) -> None:
        self.scans += 1
        root = self.reg.storage_dir / "blobs"
        for data in root.glob("*/*/*/data"):
            try:
                st = data.stat()
            except FileNotFoundError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            if self._seen.get(data) == key:
                continue
            self._seen[data] = key
            h = hashlib.new(data.parent.parent.parent.name)
            with contextlib.suppress(FileNotFoundError), open(data, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                if h.hexdigest() != data.parent.name:
                    self.violations.append(f"{data} ({st.st_size} bytes) hashes to {h.hexdigest()}")


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def _range_end(value: str | None) -> int:
    assert value is not None, "no Range header"
    match = re.fullmatch(r"0-(\d+)", value)
    assert match, f"Range {value!r} is not `0-<last>`"
    return int(match.group(1))


def _patch(reg, location: str, data: bytes, start: int):
    return reg.request(
        "PATCH",
        location,
        body=data,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(data) - 1}",
        },
        timeout=60,
    )


def _patch_killing_midway(reg, location: str, data: bytes, start: int, victim: int) -> int | None:
    """Send a PATCH of `data`, SIGKILL `victim` after half its body, send the rest.

    Returns the status of the answer, or None if the connection ended without one.
    """
    target = urlsplit(urljoin(reg.url + "/", location))
    path = target.path + (f"?{target.query}" if target.query else "")
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: {reg.host}\r\nConnection: close\r\n"
        f"Authorization: {reg.admin_authorization}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {len(data)}\r\nContent-Range: {start}-{start + len(data) - 1}\r\n\r\n"
    )
    half = len(data) // 2
    with socket.create_connection(("127.0.0.1", reg.port), timeout=30) as sock:
        sock.sendall(head.encode() + data[:half])
        time.sleep(0.2)  # let the gateway stream the first half on to blob_svc
        os.kill(victim, signal.SIGKILL)
        answer = b""
        with contextlib.suppress(OSError):
            sock.sendall(data[half:])
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                answer += chunk
    if not answer:
        return None
    return int(answer.split(b" ", 2)[1])


def _wait_for_restart(reg, old_pid: int, probe_repo: str, probe_digest: str, probe: bytes):
    """Wait until the supervisor has a new blob_svc and a blob read through it works."""
    deadline = time.monotonic() + RESTART_TIMEOUT
    new_pid = None
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = reg.pid("blob")
            if pid != old_pid:
                new_pid = pid
                break
        time.sleep(0.05)
    assert new_pid is not None, (
        f"blob_svc was not restarted within {RESTART_TIMEOUT:.0f} s\n{reg.log_tail()}"
    )
    last = None
    while time.monotonic() < deadline:
        try:
            r = reg.request("GET", f"/v2/{probe_repo}/blobs/{probe_digest}", timeout=5)
            if r.status == 200 and r.body == probe:
                return new_pid
            last = f"HTTP {r.status} {r.body[:200]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.1)
    raise AssertionError(
        f"blob_svc (pid {new_pid}) did not serve blobs again within {RESTART_TIMEOUT:.0f} s "
        f"(last: {last})\n{reg.log_tail()}"
    )


def test_blob_service_killed_mid_push(start_registry):
    """Kill -9 blob_svc during a chunked 64 MiB push (4 MiB PATCHes); after the
    supervisor restarts it, resume (or restart) the upload and finish it: the blob is
    whole, its digest right, and no partial blob was ever visible."""
    reg = start_registry()
    repo = "crash/blob"
    data = random.Random(7).randbytes(SIZE)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    probe = b"a small blob to see blob_svc serve again"
    probe_digest = reg.push_blob(repo, probe)
    others = {s: reg.pid(s) for s in ("gateway", "metadata", "scan", "gc")}
    watcher = Watcher(reg, repo, digest)
    watcher.start()
    try:
        r = reg.request("POST", f"/v2/{repo}/blobs/uploads/", body=b"")
        assert r.status == 202, r
        location = r.header("Location")
        assert location
        for n in range(CHUNKS_BEFORE_CRASH):
            r = _patch(reg, location, data[n * CHUNK : (n + 1) * CHUNK], n * CHUNK)
            assert r.status == 202, f"chunk {n}: {r.status} {r.body[:300]!r}"
            location = r.header("Location") or location
        acknowledged = CHUNKS_BEFORE_CRASH * CHUNK
        assert _range_end(r.header("Range")) == acknowledged - 1

        victim = reg.pid("blob")
        status = _patch_killing_midway(
            reg, location, data[acknowledged : acknowledged + CHUNK], acknowledged, victim
        )
        if status is not None and 200 <= status < 300:
            acknowledged += CHUNK  # the gateway held the chunk and wrote it after all
        assert reg.request("HEAD", f"/v2/{repo}/blobs/{digest}").status in (404, 503)
        assert not reg.blob_file(digest).exists()
        assert reg.corrupt_canonical_blobs() == []

        _wait_for_restart(reg, victim, repo, probe_digest, probe)
        assert {s: reg.pid(s) for s in others} == others, "a service other than blob_svc restarted"
        assert reg.request("HEAD", f"/v2/{repo}/blobs/{digest}").status == 404

        # What a client does now: ask the upload where it stands.
        r = reg.request("GET", location)
        if r.status == 204:
            kept = _range_end(r.header("Range")) + 1
            assert acknowledged <= kept <= acknowledged + CHUNK, (
                f"after the crash the upload holds {kept} bytes; {acknowledged} were acknowledged"
            )
            location = r.header("Location") or location
            start = kept
        else:
            r.expect_error(404, "BLOB_UPLOAD_UNKNOWN")
            r = reg.request("POST", f"/v2/{repo}/blobs/uploads/", body=b"")
            assert r.status == 202, r
            location = r.header("Location") or ""
            start = 0
        while start < SIZE:
            end = min(start + CHUNK, SIZE)
            r = _patch(reg, location, data[start:end], start)
            assert r.status == 202, f"resumed chunk at {start}: {r.status} {r.body[:300]!r}"
            location = r.header("Location") or location
            start = end
        watcher.closing.set()
        r = reg.request("PUT", _with_digest(location, digest), body=b"", timeout=60)
        assert r.status == 201, f"closing PUT: {r.status} {r.body[:300]!r}"
        assert r.header("Docker-Content-Digest") == digest

        got = reg.request("GET", f"/v2/{repo}/blobs/{digest}", timeout=60)
        assert got.status == 200
        assert len(got.body) == SIZE
        assert hashlib.sha256(got.body).hexdigest() == digest.removeprefix("sha256:")
        assert reg.blob_file(digest).stat().st_size == SIZE
        assert reg.corrupt_canonical_blobs() == []
    finally:
        watcher.done.set()
        watcher.join(10)
    assert watcher.violations == []
    assert watcher.scans > 20 and watcher.heads > 20, (watcher.scans, watcher.heads)
