"""A multi-GiB blob through the whole mesh onto Ceph (Distribution's S3 users hit failures
above 5 GiB and 10 GiB): one streamed PATCH, the commit's multipart assembly, a full GET
and a ranged GET near the end, with the peak resident memory of the gateway and blob_svc
sampled throughout. The bytes are checked end to end by sha256.

Opt-in (minutes, not seconds): collected only when ARTS_TEST_BIG_BLOB_GIB is set;
`make test-big-blob` runs it with 6 GiB against a fresh Ceph cluster. Timings and memory
are printed.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.e2e.conftest import Registry
from tests.s3.test_mesh import REPO, start_registry, start_session

__all__ = ["start_registry"]

MiB = 1024 * 1024
# Peak resident memory allowed to each of the gateway and blob_svc, whatever the size.
RSS_LIMIT_BYTES = 512 * MiB


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Samples the resident memory of some processes every 0.2 s, keeping each peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.peaks = dict.fromkeys(pids, 0)
        self._pids = pids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for name, pid in self._pids.items():
                self.peaks[name] = max(self.peaks[name], rss(pid))


def chunks(total: int) -> Iterator[bytes]:
    """`total` bytes in 1 MiB chunks, each different (a counter on random bytes)."""
    base = os.urandom(MiB)
    for index in range(total // MiB):
        yield index.to_bytes(8, "big") + base[8:]


def test_multi_gib_blob_in_bounded_memory(start_registry: Callable[..., Registry]) -> None:
    size = int(float(os.environ["ARTS_TEST_BIG_BLOB_GIB"]) * 1024) * MiB
    reg = start_registry(ARTS_STORAGE_RETRY_SECS="120")
    location = start_session(reg)
    hasher = hashlib.sha256()
    tail = bytearray()

    def body() -> Iterator[bytes]:
        for chunk in chunks(size):
            hasher.update(chunk)
            yield chunk
        tail.extend(chunk[-100:])

    timings: dict[str, float] = {}
    pids = {"gateway": reg.pid("gateway"), "blob_svc": reg.pid("blob")}
    with PeakMemory(pids) as memory:
        started = time.monotonic()
        conn = http.client.HTTPConnection(reg.host, timeout=600)
        conn.request(
            "PATCH",
            location,
            body=body(),
            headers={
                "Authorization": reg.admin_authorization,
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
            },
        )
        reply = conn.getresponse()
        assert reply.status == 202, reply.read()
        conn.close()
        timings["PATCH"] = time.monotonic() - started

        digest = f"sha256:{hasher.hexdigest()}"
        started = time.monotonic()
        r = reg.request("PUT", f"{location}?digest={digest}", timeout=900)
        assert r.status == 201, r.body
        timings["commit"] = time.monotonic() - started

        started = time.monotonic()
        conn = http.client.HTTPConnection(reg.host, timeout=600)
        conn.request(
            "GET", f"/v2/{REPO}/blobs/{digest}", headers={"Authorization": reg.admin_authorization}
        )
        reply = conn.getresponse()
        assert reply.status == 200
        assert reply.getheader("Content-Length") == str(size)
        check = hashlib.sha256()
        while block := reply.read(8 * MiB):
            check.update(block)
        conn.close()
        assert check.hexdigest() == digest.split(":")[1]
        timings["GET"] = time.monotonic() - started

    last = reg.request(
        "GET", f"/v2/{REPO}/blobs/{digest}", headers={"Range": f"bytes={size - 100}-"}
    )
    assert (last.status, last.body) == (206, bytes(tail))

    gib = size / (1024 * MiB)
    print(
        f"\n{gib:.1f} GiB blob on Ceph: "
        + ", ".join(
            f"{step} {seconds:.0f} s ({size / MiB / seconds:.0f} MiB/s)"
            for step, seconds in timings.items()
        )
        + "; peak RSS "
        + ", ".join(f"{name} {peak / MiB:.0f} MiB" for name, peak in memory.peaks.items())
    )
    for name, peak in memory.peaks.items():
        assert peak < RSS_LIMIT_BYTES, f"{name} peaked at {peak / MiB:.0f} MiB"
