"""ScanMetadataService (metadata_svc) and ScanService (scan_svc) contracts: real processes,
every RPC, every error's status code and ErrorInfo reason.

The scan worker of the scan_svc process is pointed at a port nothing listens on: tasks it
leases fail to pull and back off, which leaves them pending for the queue assertions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from artifactstore import mediatypes as mt
from artifactstore import rpc
from artifactstore.digests import sha256_of
from artifactstore.errors import Reason, RegistryError
from artifactstore.metadata.v1 import metadata_pb2 as md
from artifactstore.metadata.v1 import metadata_pb2_grpc, scans_pb2_grpc
from artifactstore.metadata.v1 import scans_pb2 as sc
from artifactstore.scan.v1 import scan_pb2 as pb
from artifactstore.scan.v1 import scan_pb2_grpc
from tests.contract.conftest import StartService
from tests.e2e.conftest import free_port

if TYPE_CHECKING:
    from artifactstore.metadata.v1.metadata_pb2_grpc import MetadataServiceAsyncStub
    from artifactstore.metadata.v1.scans_pb2_grpc import ScanMetadataServiceAsyncStub
    from artifactstore.scan.v1.scan_pb2_grpc import ScanServiceAsyncStub

CONFIG = str(sha256_of(b"config"))
LAYER = str(sha256_of(b"layer"))


@dataclass
class Stubs:
    metadata: MetadataServiceAsyncStub
    scans: ScanMetadataServiceAsyncStub


@pytest.fixture
def quiet_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment of the processes started: no Trivy, and a registry host that refuses."""
    monkeypatch.setenv("ARTS_TRIVY_PATH", "")
    monkeypatch.setenv("ARTS_REGISTRY_HOST", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("ARTS_SCAN_POLL_SECS", "0.2")


@pytest.fixture
async def stubs(start_service: StartService, quiet_worker: None) -> AsyncIterator[Stubs]:
    address = start_service("metadata")
    async with rpc.channel(address) as channel:
        yield Stubs(
            metadata_pb2_grpc.MetadataServiceStub(channel),
            scans_pb2_grpc.ScanMetadataServiceStub(channel),
        )


@pytest.fixture
async def scan(stubs: Stubs, start_service: StartService) -> AsyncIterator[ScanServiceAsyncStub]:
    address = start_service("scan")
    async with rpc.channel(address) as channel:
        yield scan_pb2_grpc.ScanServiceStub(channel)


async def expect(reason: Reason, code: grpc.StatusCode, awaitable: Any) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        await rpc.call(awaitable)
    assert caught.value.reason == reason
    assert caught.value.grpc_code == code
    return caught.value


def image(layer: str = LAYER) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_IMAGE_CONFIG, "digest": CONFIG, "size": 6},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer,
                    "size": 5,
                }
            ],
        }
    ).encode()


async def put(stubs: Stubs, repo: str, reference: str, body: bytes) -> str:
    for blob in (CONFIG, *[layer["digest"] for layer in json.loads(body).get("layers", [])]):
        await rpc.call(
            stubs.metadata.LinkBlob(md.LinkBlobRequest(repository=repo, digest=blob, size=5))
        )
    reply = await rpc.call(
        stubs.metadata.PutManifest(
            md.PutManifestRequest(repository=repo, reference=reference, content=body)
        )
    )
    return reply.digest


def counts(**values: int) -> sc.SeverityCounts:
    return sc.SeverityCounts(**values)


def summary(repo: str, digest: str, at: float, **extra: Any) -> sc.ScanSummary:
    return sc.ScanSummary(
        repository=repo,
        digest=digest,
        status=extra.pop("status", sc.SCAN_STATUS_SUCCEEDED),
        counts=extra.pop("counts", counts(high=2, low=1)),
        scanned_at=at,
        scan_id=f"scan-{at}",
        analyzer="artifactstore-offline",
        **extra,
    )


def test_reflection_lists_both_services(start_service: StartService, quiet_worker: None) -> None:
    names: set[str] = set()
    for service in ("metadata", "scan"):
        with grpc.insecure_channel(start_service(service)) as channel:
            stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            for reply in stub.ServerReflectionInfo(iter([request])):
                names |= {s.name for s in reply.list_services_response.service}
    assert {
        "artifactstore.metadata.v1.ScanMetadataService",
        "artifactstore.scan.v1.ScanService",
    } <= names


async def test_record_and_read_back(stubs: Stubs) -> None:
    digest = await put(stubs, "p/app", "v1", image())
    never = await rpc.call(
        stubs.scans.GetScan(sc.GetScanRequest(repository="p/app", digest=digest))
    )
    assert never.status == sc.SCAN_STATUS_UNSPECIFIED and never.digest == digest
    now = time.time()
    stored = await rpc.call(
        stubs.scans.RecordScan(
            sc.RecordScanRequest(
                summary=summary("p/app", digest, now, report_path="scans/x.parquet", attempt=2)
            )
        )
    )
    assert (stored.status, stored.counts.high, stored.attempt) == (sc.SCAN_STATUS_SUCCEEDED, 2, 2)
    got = await rpc.call(stubs.scans.GetScan(sc.GetScanRequest(repository="p/app", digest=digest)))
    assert got == stored
    # An older result never replaces a newer one; a newer one does.
    older = summary("p/app", digest, now - 10, counts=counts(critical=9))
    assert await rpc.call(stubs.scans.RecordScan(sc.RecordScanRequest(summary=older))) == stored
    newer = summary("p/app", digest, now + 1, counts=counts())
    await rpc.call(stubs.scans.RecordScan(sc.RecordScanRequest(summary=newer)))
    got = await rpc.call(stubs.scans.GetScan(sc.GetScanRequest(repository="p/app", digest=digest)))
    assert got.scanned_at == now + 1 and got.counts.high == 0


async def test_summary_comes_with_the_manifest_and_goes_with_it(stubs: Stubs) -> None:
    digest = await put(stubs, "q/app", "v1", image())
    await rpc.call(
        stubs.scans.RecordScan(sc.RecordScanRequest(summary=summary("q/app", digest, time.time())))
    )
    plain = await rpc.call(
        stubs.metadata.GetManifest(md.GetManifestRequest(repository="q/app", reference="v1"))
    )
    assert not plain.HasField("vulnerabilities") and not plain.HasField("scan_policy")
    asked = await rpc.call(
        stubs.metadata.GetManifest(
            md.GetManifestRequest(repository="q/app", reference="v1", include_vulnerabilities=True)
        )
    )
    assert asked.vulnerabilities.counts.high == 2
    # The edge's question: no policy, so neither policy nor summary is read for it.
    policy_only = await rpc.call(
        stubs.metadata.GetManifest(
            md.GetManifestRequest(repository="q/app", reference="v1", include_scan_policy=True)
        )
    )
    assert not policy_only.HasField("scan_policy") and not policy_only.HasField("vulnerabilities")
    await rpc.call(
        stubs.scans.SetScanPolicy(sc.SetScanPolicyRequest(project="q", block_severity="high"))
    )
    blocked = await rpc.call(
        stubs.metadata.GetManifest(
            md.GetManifestRequest(repository="q/app", reference="v1", include_scan_policy=True)
        )
    )
    assert blocked.scan_policy.block_severity == "HIGH"
    assert blocked.vulnerabilities.counts.high == 2
    await rpc.call(
        stubs.metadata.DeleteManifest(
            md.DeleteManifestRequest(repository="q/app", reference=digest)
        )
    )
    await expect(
        Reason.MANIFEST_UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        stubs.scans.RecordScan(sc.RecordScanRequest(summary=summary("q/app", digest, time.time()))),
    )
    gone = await rpc.call(stubs.scans.GetScan(sc.GetScanRequest(repository="q/app", digest=digest)))
    assert gone.status == sc.SCAN_STATUS_UNSPECIFIED


async def test_record_errors(stubs: Stubs) -> None:
    digest = str(sha256_of(b"nothing"))
    bad = [
        (Reason.NAME_INVALID, summary("Bad Name", digest, 1.0)),
        (Reason.DIGEST_INVALID, summary("p/app", "sha256:nope", 1.0)),
        (Reason.MANIFEST_UNKNOWN, summary("p/app", digest, 1.0)),
        (Reason.MANIFEST_INVALID, summary("p/app", digest, 1.0, status=sc.SCAN_STATUS_UNSPECIFIED)),
    ]
    codes = {
        Reason.NAME_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
        Reason.DIGEST_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
        Reason.MANIFEST_UNKNOWN: grpc.StatusCode.NOT_FOUND,
        Reason.MANIFEST_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    }
    for reason, message in bad:
        await expect(
            reason, codes[reason], stubs.scans.RecordScan(sc.RecordScanRequest(summary=message))
        )
    await expect(
        Reason.DIGEST_INVALID,
        grpc.StatusCode.INVALID_ARGUMENT,
        stubs.scans.GetScan(sc.GetScanRequest(repository="p/app", digest="latest")),
    )


async def test_policies(stubs: Stubs) -> None:
    empty = await rpc.call(stubs.scans.GetScanPolicy(sc.GetScanPolicyRequest(project="p")))
    assert (empty.project, empty.block_severity) == ("p", "")
    set_ = await rpc.call(
        stubs.scans.SetScanPolicy(
            sc.SetScanPolicyRequest(project="p", block_severity="Critical", updated_by="me")
        )
    )
    assert (set_.block_severity, set_.updated_by) == ("CRITICAL", "me") and set_.updated_at
    got = await rpc.call(stubs.scans.GetScanPolicy(sc.GetScanPolicyRequest(project="p")))
    assert got == set_
    await rpc.call(stubs.scans.SetScanPolicy(sc.SetScanPolicyRequest(project="p")))
    cleared = await rpc.call(stubs.scans.GetScanPolicy(sc.GetScanPolicyRequest(project="p")))
    assert cleared.block_severity == ""
    await expect(
        Reason.SEVERITY_INVALID,
        grpc.StatusCode.INVALID_ARGUMENT,
        stubs.scans.SetScanPolicy(sc.SetScanPolicyRequest(project="p", block_severity="SEVERE")),
    )
    for project in ("p/app", "P"):
        await expect(
            Reason.NAME_INVALID,
            grpc.StatusCode.INVALID_ARGUMENT,
            stubs.scans.GetScanPolicy(sc.GetScanPolicyRequest(project=project)),
        )


async def test_claim_job_once_per_interval(stubs: Stubs) -> None:
    def claim(worker: str) -> Any:
        return stubs.scans.ClaimScanJob(
            sc.ClaimScanJobRequest(job="rescan", worker=worker, interval_seconds=0.5)
        )

    first, second = await asyncio.gather(rpc.call(claim("a")), rpc.call(claim("b")))
    assert sorted([first.claimed, second.claimed]) == [False, True]
    winner = "a" if first.claimed else "b"
    assert first.last_run_by == second.last_run_by == winner
    await asyncio.sleep(0.6)
    assert (await rpc.call(claim("c"))).claimed
    await expect(
        Reason.NAME_INVALID,
        grpc.StatusCode.INVALID_ARGUMENT,
        stubs.scans.ClaimScanJob(sc.ClaimScanJobRequest(worker="x", interval_seconds=1)),
    )


async def test_rescan_candidates(stubs: Stubs) -> None:
    now = time.time()
    fresh = await put(stubs, "r/a", "fresh", image(str(sha256_of(b"1"))))
    stale = await put(stubs, "r/a", "stale", image(str(sha256_of(b"2"))))
    never = await put(stubs, "r/b", "never", image(str(sha256_of(b"3"))))
    odd = await put(stubs, "r/b", "artifact", image(str(sha256_of(b"4"))))
    child = await put(stubs, "r/c", "child", image(str(sha256_of(b"5"))))
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": child, "size": 1}],
        }
    ).encode()
    parent = await put(stubs, "r/c", "index", index)
    for repo, digest, at, status in [
        ("r/a", fresh, now, sc.SCAN_STATUS_SUCCEEDED),
        ("r/a", stale, now - 100, sc.SCAN_STATUS_ERROR),
        ("r/b", odd, now - 100, sc.SCAN_STATUS_UNSUPPORTED),
    ]:
        await rpc.call(
            stubs.scans.RecordScan(
                sc.RecordScanRequest(summary=summary(repo, digest, at, status=status))
            )
        )
    found: list[tuple[str, str, float]] = []
    after = ("", "")
    pages = 0
    while True:
        page = await rpc.call(
            stubs.scans.ListRescanCandidates(
                sc.ListRescanCandidatesRequest(
                    scanned_before=now - 10,
                    after_repository=after[0],
                    after_digest=after[1],
                    limit=2,
                )
            )
        )
        pages += 1
        found += [(c.repository, c.digest, c.scanned_at) for c in page.candidates]
        if not page.more:
            break
        after = (page.last_repository, page.last_digest)
    assert pages == 3  # six manifests, two a page
    assert sorted(found) == sorted(
        [("r/a", stale, now - 100), ("r/b", never, 0.0), ("r/c", parent, 0.0)]
    )
    await expect(
        Reason.PAGINATION_INVALID,
        grpc.StatusCode.INVALID_ARGUMENT,
        stubs.scans.ListRescanCandidates(sc.ListRescanCandidatesRequest(limit=-1)),
    )


async def test_directories(stubs: Stubs) -> None:
    info = await rpc.call(stubs.scans.GetScanMetadataInfo(sc.GetScanMetadataInfoRequest()))
    assert (info.directory, info.metadata_directory) == ("registry", "topaz")


async def test_scan_service(stubs: Stubs, scan: ScanServiceAsyncStub) -> None:
    info = await rpc.call(scan.GetServiceInfo(pb.GetServiceInfoRequest()))
    deadline = time.monotonic() + 60
    while not info.enabled and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        info = await rpc.call(scan.GetServiceInfo(pb.GetServiceInfoRequest()))
    assert info.enabled, info.reason
    assert (info.analyzer, info.queue, info.database_version) == (
        "artifactstore-offline",
        "arts-scan",
        "",
    )
    assert info.principal.startswith("serviceAccount:scanner@artifact-store.")

    digest = await put(stubs, "s/app", "v1", image())
    # Pushing queued a scan already; asking again answers the same task.
    first = await rpc.call(
        scan.RequestScan(pb.RequestScanRequest(repository="s/app", reference="v1"))
    )
    again = await rpc.call(
        scan.RequestScan(pb.RequestScanRequest(repository="s/app", reference=digest))
    )
    assert first.digest == again.digest == digest
    assert first.task.task_id == again.task.task_id
    assert json.loads(first.task.payload) == {"repository": "s/app", "digest": digest}

    pending = await rpc.call(
        scan.GetScanSummary(pb.GetScanSummaryRequest(repository="s/app", reference="v1"))
    )
    assert (pending.status, pending.queued) == (sc.SCAN_STATUS_UNSPECIFIED, True)
    listed = await rpc.call(
        scan.ListFindings(
            pb.ListFindingsRequest(repository="s/app", reference="v1", severities=["high,critical"])
        )
    )
    assert (listed.digest, listed.total, list(listed.findings)) == (digest, 0, [])
    assert listed.summary.queued

    status = await rpc.call(scan.GetDatabaseStatus(pb.GetDatabaseStatusRequest()))
    assert not status.present and status.loaded_version == ""
    parked = await rpc.call(scan.ListParkedScans(pb.ListParkedScansRequest(limit=10)))
    assert list(parked.tasks) == []

    errors = [
        (
            Reason.NAME_INVALID,
            scan.RequestScan(pb.RequestScanRequest(repository="Bad", reference="v1")),
        ),
        (
            Reason.NAME_UNKNOWN,
            scan.RequestScan(pb.RequestScanRequest(repository="s/none", reference="v1")),
        ),
        (
            Reason.MANIFEST_UNKNOWN,
            scan.GetScanSummary(pb.GetScanSummaryRequest(repository="s/app", reference="v9")),
        ),
        (
            Reason.TAG_INVALID,
            scan.GetScanSummary(pb.GetScanSummaryRequest(repository="s/app", reference="-x")),
        ),
        (
            Reason.DIGEST_INVALID,
            scan.ListFindings(pb.ListFindingsRequest(repository="s/app", reference="sha256:x")),
        ),
        (
            Reason.SEVERITY_INVALID,
            scan.ListFindings(
                pb.ListFindingsRequest(repository="s/app", reference="v1", severities=["SEVERE"])
            ),
        ),
        (
            Reason.PAGINATION_INVALID,
            scan.ListFindings(pb.ListFindingsRequest(repository="s/app", reference="v1", limit=-1)),
        ),
    ]
    codes = {
        Reason.NAME_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
        Reason.NAME_UNKNOWN: grpc.StatusCode.NOT_FOUND,
        Reason.MANIFEST_UNKNOWN: grpc.StatusCode.NOT_FOUND,
        Reason.TAG_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
        Reason.DIGEST_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
        Reason.SEVERITY_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
        Reason.PAGINATION_INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    }
    for reason, awaitable in errors:
        await expect(reason, codes[reason], awaitable)
