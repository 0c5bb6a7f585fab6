"""Garbage collection, end to end, on instances of its own with short grace periods.

- Each kind of the GC table is collected after its trigger and grace, and nothing else:
  blobs shared with another repository and blobs of an untagged but indexed manifest
  survive, and blob storage ends holding exactly what the live manifests need.
- The race: clients push images that share layers and delete their tags in a loop while GC
  runs continuously with no grace; every manifest that exists pulls whole, every blob's
  digest verified, throughout and at the end.
- The crash: gc_svc killed (SIGKILL) in the middle of deleting blobs; the supervisor
  restarts it, the next cycle finishes the work, nothing referenced is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from artifactstore.blob.v1 import blob_pb2, blob_pb2_grpc
from artifactstore.gc.v1 import gc_pb2, gc_pb2_grpc
from artifactstore.iam.v1 import iam_pb2, iam_pb2_grpc
from tests.e2e.conftest import Registry, free_port
from tests.e2e.images import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Blob, canonical_json

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(name: str, size: int = 4096) -> Blob:
    """A layer of random bytes, the same for the same name."""
    return Blob(OCI_LAYER, random.Random(name).randbytes(size))


@dataclass(frozen=True)
class Img:
    """An OCI image built from bytes: its manifest and the blobs the manifest names."""

    manifest: Blob
    blobs: tuple[Blob, ...]

    @property
    def digest(self) -> str:
        return self.manifest.digest


def image(name: str, *layers: Blob) -> Img:
    config = Blob(
        OCI_CONFIG,
        canonical_json(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"name": name}},
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        ),
    )
    manifest = Blob(
        OCI_MANIFEST,
        canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [b.descriptor() for b in layers],
            }
        ),
    )
    return Img(manifest, (config, *layers))


def index(*children: Img) -> Blob:
    return Blob(
        OCI_INDEX,
        canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    c.manifest.descriptor(platform={"os": "linux", "architecture": f"a{n}"})
                    for n, c in enumerate(children)
                ],
            }
        ),
    )


def push(reg: Registry, repo: str, img: Img, reference: str) -> None:
    for blob in img.blobs:
        reg.push_blob(repo, blob.data, blob.digest)
    reg.put_manifest(repo, reference, img.manifest)


def ensure_blob(reg: Registry, repo: str, blob: Blob, mount_from: str = "") -> None:
    """Make `repo` link `blob`: already there, mounted from `mount_from`, or uploaded."""
    if reg.request("HEAD", f"/v2/{repo}/blobs/{blob.digest}").status == 200:
        return
    query = f"?mount={blob.digest}&from={mount_from}" if mount_from else ""
    r = reg.request("POST", f"/v2/{repo}/blobs/uploads/{query}")
    if r.status == 201:
        return
    assert r.status == 202, f"POST upload: {r.status} {r.body[:300]!r}"
    location = r.header("Location") or ""
    sep = "&" if "?" in location else "?"
    r = reg.request("PUT", f"{location}{sep}digest={blob.digest}", body=blob.data)
    assert r.status == 201, f"PUT upload {blob.digest}: {r.status} {r.body[:300]!r}"


def push_against_gc(
    reg: Registry,
    repo: str,
    img: Img,
    reference: str,
    mount_from: str = "",
    pool: ThreadPoolExecutor | None = None,
) -> int:
    """Push `img` while GC may sweep its blobs' links before the manifest names them:
    on MANIFEST_BLOB_UNKNOWN (what the registry answers then), upload again. Returns how
    often the manifest was refused."""
    for refused in range(20):
        if pool is None:
            for blob in img.blobs:
                ensure_blob(reg, repo, blob, mount_from)
        else:
            list(pool.map(lambda b: ensure_blob(reg, repo, b, mount_from), img.blobs))
        r = reg.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            body=img.manifest.data,
            headers={"Content-Type": img.manifest.media_type},
        )
        if r.status == 201:
            return refused
        r.expect_error(400, "MANIFEST_BLOB_UNKNOWN")
    raise AssertionError(f"{repo}:{reference} refused 20 times")


def pull_whole(reg: Registry, repo: str, reference: str) -> set[str] | None:
    """Pull a manifest and every blob it needs (children of an index too), checking every
    digest; return the blob digests, or None if the manifest does not exist."""
    r = reg.request("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT})
    if r.status == 404:
        return None
    assert r.status == 200, f"GET manifest {repo}:{reference}: {r.status} {r.body[:300]!r}"
    doc = json.loads(r.body)
    needed: set[str] = set()
    if "manifests" in doc:
        for child in doc["manifests"]:
            got = pull_whole(reg, repo, child["digest"])
            assert got is not None, f"{repo}@{child['digest']} of index {reference} is missing"
            needed |= got
        return needed
    for descriptor in [doc["config"], *doc["layers"]]:
        digest = descriptor["digest"]
        blob = reg.request("GET", f"/v2/{repo}/blobs/{digest}")
        assert blob.status == 200, (
            f"{repo}:{reference} exists but its blob {digest} answers {blob.status}"
        )
        assert sha256(blob.body) == digest, f"blob {digest} of {repo}:{reference} is corrupt"
        needed.add(digest)
    return needed


def stored_blobs(reg: Registry) -> set[str]:
    """The digests of every canonical blob in blob storage (local or object storage)."""
    return reg.stored_blobs()


def upload_dirs(reg: Registry) -> list[str]:
    root = reg.storage_dir / "uploads"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@contextlib.contextmanager
def gc_stub(reg: Registry) -> Iterator[Any]:
    with grpc.insecure_channel(f"unix:{reg.socket_dir / 'gc.sock'}") as channel:
        yield gc_pb2_grpc.GcServiceStub(channel)


OPERATOR = iam_pb2.Caller(principal="operator:test", source="test")


@contextlib.contextmanager
def iam_stub(reg: Registry) -> Iterator[Any]:
    with grpc.insecure_channel(f"unix:{reg.socket_dir / 'metadata.sock'}") as channel:
        yield iam_pb2_grpc.IamServiceStub(channel)


def run_cycle(reg: Registry, timeout: float = 60) -> dict[str, gc_pb2.CategoryStats]:
    """One full GC cycle through GcService.RunCycle; its counts by category."""
    with gc_stub(reg) as stub:
        cycle = stub.RunCycle(gc_pb2.RunCycleRequest(), timeout=timeout, wait_for_ready=True)
    assert not cycle.error, cycle.error
    return {c.category: c for c in cycle.categories}


def cli_json(reg: Registry, *args: str) -> dict[str, Any]:
    return json.loads(reg.cli(*args, "--json").stdout)


def by_category(cycle: dict[str, Any]) -> dict[str, dict[str, int]]:
    """A cycle printed as JSON: counts by category (int64 values print as strings)."""
    return {
        c["category"]: {k: int(v) for k, v in c.items() if k != "category"}
        for c in cycle["categories"]
    }


@dataclass
class Session:
    """An upload session driven over HTTP, kept active by `touch`."""

    reg: Registry
    repo: str
    location: str = ""
    size: int = 0

    def start(self, data: bytes = b"") -> Session:
        r = self.reg.request("POST", f"/v2/{self.repo}/blobs/uploads/")
        assert r.status == 202, r
        self.location = r.header("Location") or ""
        if data:
            self.touch(data)
        return self

    def touch(self, data: bytes = b"x") -> None:
        r = self.reg.request(
            "PATCH",
            self.location,
            body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert r.status == 202, f"PATCH {self.location}: {r.status} {r.body[:200]!r}"
        self.location = r.header("Location") or self.location
        self.size += len(data)

    def exists(self) -> bool:
        """Whether blob storage still holds the session (asking the API would count as
        activity)."""
        upload_id = self.location.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
        return (self.reg.storage_dir / "uploads" / upload_id).exists()


def commit_without_link(reg: Registry, data: bytes) -> str:
    """Store a canonical blob in blob_svc and link it nowhere (what a gateway that died
    between commit and link leaves)."""
    upload_id = uuid.uuid4().hex
    with grpc.insecure_channel(f"unix:{reg.socket_dir / 'blob.sock'}") as channel:
        blob = blob_pb2_grpc.BlobServiceStub(channel)
        blob.StartUpload(blob_pb2.StartUploadRequest(upload_id=upload_id))
        header = blob_pb2.UploadHeader(upload_id=upload_id)
        blob.WriteUpload(
            iter(
                [blob_pb2.WriteUploadRequest(header=header), blob_pb2.WriteUploadRequest(data=data)]
            )
        )
        blob.CommitUpload(blob_pb2.CommitUploadRequest(upload_id=upload_id, digest=sha256(data)))
    return sha256(data)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, reg: Registry) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s\n{reg.log_tail()}")
        time.sleep(0.05)


GRACE = 2.0
IDLE = 2.0
TIMEOUT = 3.0


def test_each_kind_is_collected_after_its_grace_and_nothing_else(start_registry):
    """Orphaned blobs (links no manifest names, bytes never linked) go after the pending
    grace, deleted repositories at once, abandoned uploads after the idle limit, expired
    ones after the timeout, lost upload directories too; a dry run changes nothing; what
    live manifests need (shared, indexed, untagged) stays, and nothing else does."""
    reg = start_registry(
        ARTS_GC_PENDING_GRACE_SECS=str(GRACE),
        ARTS_GC_UPLOAD_IDLE_SECS=str(IDLE),
        ARTS_GC_UPLOAD_TIMEOUT_SECS=str(TIMEOUT),
        ARTS_GC_INTERVAL_SECS="3600",
        ARTS_GC_POLL_SECS="0.1",
    )
    shared, kept = layer("shared"), layer("kept")
    a1 = image("a1", shared, kept)
    a2 = image("a2", kept, layer("a2 only"))
    b1 = image("b1", shared, layer("b1 only"))
    children = [image("c1", layer("c1 only")), image("c2", layer("c2 only"))]
    multi = index(*children)
    untagged = image("untagged", layer("untagged only"))
    d1 = image("d1", shared, layer("d1 only"))
    e1 = image("e1", layer("e1 only"))
    push(reg, "gc/a", a1, "v1")
    push(reg, "gc/a", a2, "v2")
    push(reg, "gc/b", b1, "v1")
    for child in children:
        push(reg, "gc/i", child, child.digest)
    reg.put_manifest("gc/i", "multi", multi)
    push(reg, "gc/i", untagged, untagged.digest)
    push(reg, "gc/d", d1, "v1")
    push(reg, "gc/e", e1, "v1")
    dangling = layer("linked, named by no manifest")
    reg.push_blob("gc/a", dangling.data, dangling.digest)
    unlinked = commit_without_link(reg, b"committed, never linked")
    # a2 goes: its blobs that a1 does not share become orphans.
    assert reg.request("DELETE", f"/v2/gc/a/manifests/{a2.digest}").status == 202
    orphans = {a2.blobs[0].digest, a2.blobs[2].digest, dangling.digest, unlinked}
    orphan_bytes = sum(len(b.data) for b in (a2.blobs[0], a2.blobs[2], dangling)) + len(
        b"committed, never linked"
    )

    # Deleted repositories: an owner's action, answered at once, blobs follow without grace.
    with iam_stub(reg) as iam:
        iam.CreateUser(
            iam_pb2.CreateUserRequest(caller=OPERATOR, name="bob", password="bobs password")
        )
        binding = iam_pb2.Binding(
            scope=iam_pb2.Scope(kind="project", name="gc"), principal="user:bob", role="editor"
        )
        iam.Grant(iam_pb2.GrantRequest(caller=OPERATOR, binding=binding))
    denied = reg.request("DELETE", "/api/v1/repositories/gc/d", auth=("bob", "bobs password"))
    denied.expect_error(403, "DENIED")
    assert reg.request("DELETE", "/api/v1/repositories/gc/d", auth=None).status == 401
    reg.request("DELETE", "/api/v1/repositories/gc/none").expect_error(404, "NAME_UNKNOWN")
    d_only = f"/v2/gc/d/blobs/{d1.blobs[2].digest}"
    assert reg.request("HEAD", d_only).status == 200  # and now in the gateway's cache
    deleted = reg.request("DELETE", "/api/v1/repositories/gc/d")
    assert deleted.status == 202, deleted
    assert deleted.json()["name"] == "gc/d" and deleted.json()["status"] == "deleting"
    reg.request("GET", "/v2/gc/d/tags/list").expect_error(404, "NAME_UNKNOWN")
    reg.request("GET", "/v2/gc/d/manifests/v1").expect_error(404, "NAME_UNKNOWN")
    # The repository is gone (or, once GC's purge has run, the link too).
    assert reg.request("HEAD", d_only).status == 404
    reg.request("GET", d_only).expect_error(404, frozenset({"NAME_UNKNOWN", "BLOB_UNKNOWN"}))
    assert "deleted" in reg.cli("repo", "delete", "gc/e").stdout
    gone_with_repositories = {d1.blobs[0].digest, d1.blobs[2].digest, *(b.digest for b in e1.blobs)}
    wait_for(
        lambda: not gone_with_repositories & stored_blobs(reg),
        10,
        "the deleted repositories' blobs going",
        reg,
    )
    assert shared.digest in stored_blobs(reg)
    reg.request("DELETE", "/api/v1/repositories/gc/d").expect_error(404, "NAME_UNKNOWN")
    with iam_stub(reg) as iam:
        audit = iam.ListAudit(iam_pb2.ListAuditRequest(caller=OPERATOR, limit=100))
    deletes = [e.target for e in audit.entries if e.action == "repository.delete"]
    assert sorted(deletes) == ["repository:gc/d", "repository:gc/e"]

    # Uploads: one abandoned now, and bytes metadata no longer knows, left long ago.
    abandoned = Session(reg, "gc/a").start(b"abandoned bytes")
    lost = reg.storage_dir / "uploads" / "0123456789abcdef"
    lost.mkdir(parents=True)
    (lost / "data").write_bytes(b"bytes of a session metadata forgot")
    old = time.time() - 3600
    os.utime(lost / "data", (old, old))
    os.utime(lost, (old, old))

    first = run_cycle(reg)
    assert first["orphaned_blobs"].marked == len(orphans)
    assert first["orphaned_blobs"].reclaimed == 0, "collected before its grace"
    assert orphans <= stored_blobs(reg)
    assert first["abandoned_uploads"].reclaimed == 1  # only what metadata forgot
    assert abandoned.exists()
    marked_at = time.monotonic()
    time.sleep(max(0.0, marked_at + GRACE + 0.2 - time.monotonic()))

    dry = by_category(cli_json(reg, "gc", "run", "--dry-run"))
    assert dry["orphaned_blobs"]["reclaimed"] == len(orphans)
    assert dry["orphaned_blobs"]["reclaimed_bytes"] == orphan_bytes
    assert dry["abandoned_uploads"]["reclaimed"] == 1
    assert orphans <= stored_blobs(reg) and abandoned.exists(), "a dry run changed something"

    expiring = Session(reg, "gc/b").start(b"busy")
    started = time.monotonic()
    second = run_cycle(reg)
    blobs = second["orphaned_blobs"]
    assert (blobs.swept, blobs.reclaimed, blobs.reclaimed_bytes) == (3, 4, orphan_bytes)
    assert not orphans & stored_blobs(reg)
    assert second["abandoned_uploads"].reclaimed == 1
    assert second["abandoned_uploads"].reclaimed_bytes == len(b"abandoned bytes")
    assert not abandoned.exists()
    assert second["expired_uploads"].reclaimed == 0
    while time.monotonic() < started + TIMEOUT + 0.2:
        expiring.touch()
        time.sleep(0.3)
    expiring.touch()
    third = run_cycle(reg)
    assert third["expired_uploads"].reclaimed == 1
    assert third["expired_uploads"].reclaimed_bytes == expiring.size
    assert third["abandoned_uploads"].reclaimed == 0
    assert not expiring.exists()
    assert upload_dirs(reg) == []

    # Nothing else went: storage holds exactly what the live manifests need.
    needed: set[str] = set()
    for repo, reference in [
        ("gc/a", "v1"),
        ("gc/b", "v1"),
        ("gc/i", "multi"),
        ("gc/i", untagged.digest),
    ]:
        got = pull_whole(reg, repo, reference)
        assert got is not None, f"{repo}:{reference} is gone"
        needed |= got
    assert stored_blobs(reg) == needed
    assert reg.corrupt_canonical_blobs() == []

    with gc_stub(reg) as stub:
        status = stub.GetStatus(gc_pb2.GetStatusRequest())
    totals = {c.category: c for c in status.totals}
    assert totals["deleted_repositories"].swept == 2
    assert totals["deleted_repositories"].reclaimed == len(gone_with_repositories)
    assert totals["orphaned_blobs"].reclaimed == len(orphans)
    assert status.cycles == 4
    text = reg.cli("gc", "status").stdout
    assert "totals since start (4 cycles)" in text and "deleted_repositories" in text


# --- the race and the crash share one instance: GC never pauses, and has no grace ------


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An instance whose GC runs a cycle every 0.3 s with no grace period, in small
    batches, with short leases (a killed worker's tasks come back within 2 s)."""
    base = tmp_path_factory.mktemp("gc-busy")
    reg = Registry(
        data_dir=base / "data",
        port=free_port(),
        log_path=base / "serve.log",
        env={
            "ARTS_GC_PENDING_GRACE_SECS": "0",
            "ARTS_GC_INTERVAL_SECS": "0.3",
            "ARTS_GC_POLL_SECS": "0.05",
            "ARTS_GC_BATCH_SIZE": "16",
            "ARTS_GC_LEASE_SECS": "2",
        },
    )
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()


@dataclass
class Violations:
    found: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, text: str) -> None:
        with self.lock:
            self.found.append(text)


class Pusher(threading.Thread):
    """A client pushing images that share layers with every other client's, pulling each
    back whole, then deleting its tag (and every other time the manifest too)."""

    def __init__(
        self,
        reg: Registry,
        repo: str,
        number: int,
        shared: list[Blob],
        stop: threading.Event,
        violations: Violations,
    ) -> None:
        super().__init__(daemon=True)
        self.reg, self.repo, self.number = reg, repo, number
        self.shared, self.stop, self.violations = shared, stop, violations
        self.pushed: list[str] = []
        self.refused = 0

    def run(self) -> None:
        rng = random.Random(self.number)
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                layers = [*rng.sample(self.shared, 2), layer(f"{self.number}-{n}", 1024)]
                img = image(f"{self.repo}-{self.number}-{n}", *layers)
                tag = f"c{self.number}-{n}"
                self.refused += push_against_gc(self.reg, self.repo, img, tag, "race/one")
                self.pushed.append(img.digest)
                if pull_whole(self.reg, self.repo, tag) is None:
                    self.violations.add(f"{self.repo}:{tag} vanished right after its push")
                assert self.reg.request("DELETE", f"/v2/{self.repo}/manifests/{tag}").status == 202
                if n % 2:
                    r = self.reg.request("DELETE", f"/v2/{self.repo}/manifests/{img.digest}")
                    assert r.status == 202, r
        except AssertionError as err:
            self.violations.add(f"client {self.number}: {err}")


def test_race_pushes_and_deletes_against_continuous_gc(busy: Registry) -> None:
    """Three clients, two repositories, layers shared by all: push (uploading or mounting
    what is missing, again when GC swept it first), pull back whole, delete; meanwhile GC
    collects with no grace. No existing manifest ever misses a blob."""
    reg = busy
    shared = [layer(f"race shared {i}", 8192) for i in range(4)]
    keeper = image("race keeper", *shared)
    # Its blobs in parallel: uploaded one by one on object storage, the first one's link
    # is swept (no grace) before the last one is there, every time.
    with ThreadPoolExecutor(len(keeper.blobs)) as pool:
        push_against_gc(reg, "race/one", keeper, "keep", pool=pool)
    stop = threading.Event()
    violations = Violations()
    clients = [
        Pusher(reg, repo, n, shared, stop, violations)
        for n, repo in enumerate(["race/one", "race/one", "race/two"])
    ]
    for client in clients:
        client.start()
    # At least 6 s, and until every client made 3 rounds (slower storage takes longer).
    deadline = time.monotonic() + 60
    time.sleep(6)
    while time.monotonic() < deadline and not all(len(c.pushed) >= 3 for c in clients):
        time.sleep(0.2)
    stop.set()
    for client in clients:
        client.join(60)
    assert not violations.found, "\n".join(violations.found)
    assert all(len(c.pushed) >= 3 for c in clients), [len(c.pushed) for c in clients]

    def existing() -> set[str]:
        needed = set(pull_whole(reg, "race/one", "keep") or ())
        for client in clients:
            for digest in client.pushed:
                needed |= pull_whole(reg, client.repo, digest) or set()
        return needed

    existing()
    run_cycle(reg)
    needed = existing()
    assert stored_blobs(reg) == needed
    assert reg.corrupt_canonical_blobs() == []


def test_gc_killed_mid_sweep_finishes_on_restart(busy: Registry) -> None:
    """SIGKILL gc_svc while it deletes 100 orphans: the supervisor restarts it, the next
    cycle finishes (tasks of the dead worker come back when their leases end), no
    deletion stays half-done, and what live manifests need is all there."""
    reg = busy
    keep = image("crash keeper", layer("crash shared"), layer("crash keeper only"))
    push_against_gc(reg, "crash/live", keep, "v1")
    # 100 blobs that manifests name, then none does: much work for GC at once. (Small
    # images, so that few uploads are swept before their manifest names them.)
    orphans = [layer(f"crash orphan {i}", 512) for i in range(100)]
    doomed = [image(f"crash doomed {n}", *orphans[n : n + 10]) for n in range(0, 100, 10)]
    with ThreadPoolExecutor(8) as pool:
        for n, img in enumerate(doomed):
            push_against_gc(reg, "crash/live", img, f"doomed{n}", pool=pool)
    victim = reg.pid("gc")
    for img in doomed:
        assert reg.request("DELETE", f"/v2/crash/live/manifests/{img.digest}").status == 202

    deadline = time.monotonic() + 30
    killed_at = -1
    while killed_at < 0 and time.monotonic() < deadline:
        on_disk = stored_blobs(reg)
        gone = sum(o.digest not in on_disk for o in orphans)
        if 10 <= gone <= len(orphans) - 30:
            os.kill(victim, signal.SIGKILL)
            killed_at = gone
        time.sleep(0.002)
    assert killed_at >= 0, "GC was never caught in the middle of deleting the orphans"

    wait_for(lambda: reg.pid("gc") != victim, 20, "the supervisor restarting gc_svc", reg)
    run_cycle(reg)
    assert not {b.digest for img in doomed for b in img.blobs} & stored_blobs(reg)
    needed = pull_whole(reg, "crash/live", "v1")
    assert needed is not None and needed <= stored_blobs(reg)
    assert reg.corrupt_canonical_blobs() == []
    with gc_stub(reg) as stub:
        queue = stub.GetStatus(gc_pb2.GetStatusRequest()).canonical_queue
    # No deletion is left half-done (a tombstone lives exactly as long as its task).
    assert (queue.pending, queue.parked) == (0, 0)
    # Digests GC deleted can be stored again, their bytes whole.
    push_against_gc(reg, "crash/live", doomed[0], "again")
    assert pull_whole(reg, "crash/live", "again") == {b.digest for b in doomed[0].blobs}
