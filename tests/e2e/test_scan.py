"""Vulnerability scanning end to end: real `artifact-store serve` instances, images pushed
with skopeo and raw HTTP, advisories imported with `artifact-store scan db import`, results
read over the HTTP API, the CLI and straight from the Parquet reports with pyarrow.

The built-in analyzer is what runs here (ARTS_TRIVY_PATH is set empty, so a Trivy that a
CI machine may have never changes the results; Trivy itself cannot run on these machines,
and its adapter is tested on real Trivy reports in tests/unit/scan/test_trivy.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from tests.e2e.conftest import Registry, Tool, free_port
from tests.e2e.images import Image, write_layout
from tests.e2e.scan_images import (
    STATUS_PATH,
    artifact,
    attestation_of,
    corrupt_status_layer,
    escaping_layer,
    expected_findings,
    gzip_bomb,
    image_of,
    index_of,
    not_a_tar,
    python_layer,
    vulnerable_image,
)
from tests.unit.scan.layers import DATA

OSV = DATA / "osv"
COPY_STATUS = DATA / "host" / "dpkg-status"
HOST_STATUS = Path("/var/lib/dpkg/status")
# The collection machine's dpkg database (fixed results) and, where this machine has one,
# its own (results computed from it the same independent way).
STATUSES = {"collected": COPY_STATUS} | (
    {"this-machine": HOST_STATUS} if HOST_STATUS.exists() else {}
)
MAX_UNPACKED = 1 << 30
SCAN_ENV = {
    "ARTS_TRIVY_PATH": "",
    "ARTS_SCAN_POLL_SECS": "0.1",
    "ARTS_SCAN_LEASE_SECS": "3",
    "ARTS_SCAN_RETRY_SECS": "0.2",
    "ARTS_SCAN_MAX_UNPACKED_BYTES": str(MAX_UNPACKED),
    "OTEL_BSP_SCHEDULE_DELAY": "200",
}
FINDING_COLUMNS = [
    "scan_id",
    "repository",
    "manifest_digest",
    "platform",
    "platform_digest",
    "vulnerability_id",
    "aliases",
    "package_name",
    "source_package",
    "ecosystem",
    "installed_version",
    "fixed_version",
    "status",
    "severity",
    "severity_source",
    "cvss_score",
    "title",
    "layer_digest",
    "file_path",
    "analyzer",
    "analyzer_version",
    "database_version",
    "scanned_at",
    "date",
]


@pytest.fixture(scope="module")
def scanning(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry of this module's own, with the collection's advisories imported, short
    leases and backoff, a 1 GiB unpack limit, and spans written to a file."""
    base = tmp_path_factory.mktemp("scanning")
    env = {**SCAN_ENV, "ARTS_TRACES_FILE": str(base / "traces.jsonl")}
    reg = Registry(base / "data", free_port(), base / "serve.log", env=env)
    try:
        reg.start()
        out = reg.cli("scan", "db", "import", str(OSV)).stdout
        assert "80 records" in out, out
        yield reg
    finally:
        reg.stop()


def vulnerabilities(reg: Registry, repo: str, reference: str, query: str = "") -> dict[str, Any]:
    r = reg.request(
        "GET", f"/api/v1/repositories/{repo}/manifests/{reference}/vulnerabilities{query}"
    )
    assert r.status == 200, r.body
    return dict(r.json())


def wait_scanned(
    reg: Registry, repo: str, reference: str, *, timeout: float = 60.0, after: str = ""
) -> dict[str, Any]:
    """Poll the API until the manifest has a scan result (other than the scan `after`)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = vulnerabilities(reg, repo, reference)
        summary = doc["summary"]
        if summary["status"] != "not_scanned" and summary["scan_id"] != after:
            return doc
        assert time.monotonic() < deadline, (
            f"no scan of {repo}@{reference}: {summary}\n{reg.log_tail()}"
        )
        time.sleep(0.1)


def keys(findings: list[dict[str, Any]]) -> set[tuple[str, str, str, str, str]]:
    return {
        (
            f["vulnerability_id"],
            f["package"],
            f["file_path"],
            f["installed_version"],
            f["fixed_version"],
        )
        for f in findings
    }


def skopeo_push(
    reg: Registry, skopeo: Tool, client_config: Any, image: Image, ref: str, tmp: Path
) -> None:
    user, password = reg.admin
    auth = str(client_config.auth_file)
    skopeo.run(
        "login",
        "--tls-verify=false",
        "--authfile",
        auth,
        "-u",
        user,
        "--password-stdin",
        reg.host,
        input=password,
    )
    layout = write_layout(tmp / "layout", image, "v1")
    skopeo.run(
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-authfile",
        auth,
        f"oci:{layout}:v1",
        f"docker://{reg.host}/{ref}",
    )


def spans(path: Path) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text().splitlines() if path.exists() else []:
        for resource in json.loads(line)["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                found += scope["spans"]
    return found


@pytest.mark.parametrize("source", sorted(STATUSES))
def test_scan_on_push_finds_exactly_what_the_data_implies(
    scanning: Registry, skopeo: Tool, client_config: Any, tmp_path: Path, source: str
) -> None:
    reg = scanning
    status = STATUSES[source].read_bytes()
    image = vulnerable_image(status)
    repo = f"vuln/{source}"
    pushed = time.monotonic()
    skopeo_push(reg, skopeo, client_config, image, f"{repo}:v1", tmp_path)
    doc = wait_scanned(reg, repo, "v1")
    took = time.monotonic() - pushed
    summary = doc["summary"]
    assert summary["status"] == "succeeded", summary
    # Seconds, not minutes, even on a busy machine (about one on an idle one).
    assert took < 20, f"the scan took {took:.1f} s"
    assert (summary["analyzer"], summary["attempt"]) == ("artifactstore-offline", 1)
    assert doc["digest"] == image.digest

    expected = expected_findings(status)
    assert keys(doc["findings"]) == expected
    assert doc["total"] == len(expected) == sum(summary["counts"].values())
    by_severity = Counter(f["severity"].lower() for f in doc["findings"])
    assert summary["counts"] == {s: by_severity.get(s, 0) for s in summary["counts"]}
    assert summary["grouped"] == {
        "Critical": by_severity["critical"],
        "Medium/High": by_severity["high"] + by_severity["medium"],
        "Low/Unknown": by_severity["low"] + by_severity["unknown"],
    }
    # Filtering by severity.
    high = vulnerabilities(reg, repo, "v1", "?severity=HIGH,critical")
    severe = [f for f in doc["findings"] if f["severity"] in ("HIGH", "CRITICAL")]
    assert severe and keys(high["findings"]) == keys(severe)
    assert high["total"] == by_severity["high"] + by_severity["critical"]
    bad = reg.request(
        "GET", f"/api/v1/repositories/{repo}/manifests/v1/vulnerabilities?severity=SEVERE"
    )
    bad.expect_error(400, "UNSUPPORTED")

    # The report, read back with pyarrow as every report at once.
    storage = reg.storage_dir
    assert summary["report_path"].startswith(f"scans/repository={repo.replace('/', '%2F')}/date=")
    table = ds.dataset(storage / "scans", partitioning="hive").to_table(
        filter=ds.field("scan_id") == summary["scan_id"]
    )
    assert table.schema.names == FINDING_COLUMNS
    rows = table.to_pylist()
    assert {
        (r["repository"], r["manifest_digest"], r["platform"], r["platform_digest"]) for r in rows
    } == {(repo, image.digest, "linux/amd64", image.digest)}
    assert {
        (
            r["vulnerability_id"],
            r["package_name"],
            r["file_path"],
            r["installed_version"],
            r["fixed_version"],
        )
        for r in rows
    } == expected
    assert {r["database_version"] for r in rows} == {summary["database_version"]}
    packages = ds.dataset(storage / "scan-packages", partitioning="hive").to_table(
        filter=ds.field("scan_id") == summary["scan_id"]
    )
    installed = status.decode().count("Status: install ok installed")
    assert Counter(packages["type"].to_pylist()) == {"dpkg": installed, "python": 71}
    assert {(p["os_family"], p["os_version"]) for p in packages.to_pylist()} == {("debian", "12")}

    # The CLI's table.
    out = reg.cli("scan", "report", f"{repo}:v1").stdout
    grouped = summary["grouped"]
    assert f"Critical: {grouped['Critical']}  Medium/High: {grouped['Medium/High']}" in out, out
    assert "PYSEC-2023-221" in out and STATUS_PATH in out


def test_scan_span_links_to_the_push(scanning: Registry) -> None:
    """The push's trace leads to its scan: the worker's span links to the context the
    manifest PUT queued the task with."""
    reg = scanning
    image = image_of([python_layer()])
    reg.push_image("trace/app", image, "v1")
    summary = wait_scanned(reg, "trace/app", "v1")["summary"]
    traces = Path(reg.env["ARTS_TRACES_FILE"])
    deadline = time.monotonic() + 30
    while True:
        found = spans(traces)
        puts = [
            s
            for s in found
            if s["name"] == "PUT /v2/{name}/manifests/{reference}"
            and any(
                a["key"] == "artifactstore.repository"
                and a["value"].get("stringValue") == "trace/app"
                for a in s.get("attributes", [])
            )
        ]
        scans = [
            s
            for s in found
            if s["name"] == "scan"
            and any(
                a["key"] == "artifactstore.digest" and a["value"].get("stringValue") == image.digest
                for a in s.get("attributes", [])
            )
        ]
        if puts and scans:
            break
        assert time.monotonic() < deadline, "the push or scan span was not exported"
        time.sleep(0.2)
    (put,) = puts
    linked = {link["traceId"] for s in scans for link in s.get("links", [])}
    assert put["traceId"] in linked
    assert all(s["traceId"] != put["traceId"] for s in scans)  # its own trace, linked
    assert summary["status"] == "succeeded"


def test_index_is_scanned_per_platform(scanning: Registry) -> None:
    reg = scanning
    amd64 = vulnerable_image(COPY_STATUS.read_bytes())
    arm64 = image_of([python_layer()], architecture="arm64")
    # BuildKit's attestation manifests are not images: skipped, not failed.
    index = index_of([amd64, arm64, attestation_of(amd64)])
    reg.push_image("multi/app", index, "v1")
    doc = wait_scanned(reg, "multi/app", "v1")
    summary = doc["summary"]
    assert summary["status"] == "succeeded", summary
    platforms = {p["platform"]: p for p in summary["platforms"]}
    assert set(platforms) == {"linux/amd64", "linux/arm64"}
    assert {p["digest"] for p in platforms.values()} == {amd64.digest, arm64.digest}
    for severity, total in summary["counts"].items():
        assert total == sum(p["counts"][severity] for p in platforms.values())
    # Each platform image carries its own statistics too.
    for image in (amd64, arm64):
        own = wait_scanned(reg, "multi/app", image.digest)["summary"]
        platform = platforms[f"linux/{image.platform['architecture']}"]
        assert (own["status"], own["counts"]) == ("succeeded", platform["counts"])
    expected = expected_findings(COPY_STATUS.read_bytes())
    by_platform = {p: keys([f for f in doc["findings"] if f["platform"] == p]) for p in platforms}
    assert by_platform["linux/amd64"] == expected
    assert by_platform["linux/arm64"] == {k for k in expected if k[2] != STATUS_PATH}
    rows = ds.dataset(reg.storage_dir / "scans", partitioning="hive").to_table(
        filter=ds.field("scan_id") == summary["scan_id"]
    )
    assert set(rows["manifest_digest"].to_pylist()) == {index.digest}
    assert set(rows["platform_digest"].to_pylist()) == {amd64.digest, arm64.digest}


BAD_INPUT = {
    "not-a-tar": (lambda target: not_a_tar(), "not a tar archive"),
    "gzip-bomb": (lambda target: gzip_bomb(MAX_UNPACKED + (256 << 20)), "exceeds the limit"),
    "dotdot": (lambda target: escaping_layer("dotdot", target), "'..' component"),
    "absolute": (lambda target: escaping_layer("absolute", target), "absolute path"),
    "symlink": (lambda target: escaping_layer("symlink", target), "outside the root"),
    "corrupt-dpkg-status": (lambda target: corrupt_status_layer(), "line 5"),
}


def test_artifacts_are_unsupported_not_failed(scanning: Registry) -> None:
    reg = scanning
    reg.push_image("odd/notes", artifact(), "v1")
    summary = wait_scanned(reg, "odd/notes", "v1")["summary"]
    assert summary["status"] == "unsupported", summary
    assert "application/vnd.example.notes" in summary["message"]
    assert summary["report_path"] == ""


def test_bad_input_ends_in_error_and_the_worker_carries_on(
    scanning: Registry, tmp_path: Path
) -> None:
    reg = scanning
    worker = reg.pid("scan")
    targets = {}
    for n, (case, (layer, _)) in enumerate(BAD_INPUT.items()):
        target = tmp_path / f"escape-{case}" / "escaped.txt"
        targets[case] = target
        image = image_of([layer(str(target))], architecture=f"bad{n}")
        reg.push_image(f"bad/{case}", image, "v1")
    for case, (_, message) in BAD_INPUT.items():
        summary = wait_scanned(reg, f"bad/{case}", "v1")["summary"]
        assert summary["status"] == "error", (case, summary)
        assert message in summary["message"], (case, summary["message"])
        assert summary["report_path"] == "" and summary["attempt"] == 1
        assert not targets[case].exists() and not targets[case].parent.exists(), case
    # Nothing was written anywhere but the scratch space, which is empty again.
    for path in (Path("/") / "tmp" / "escaped.txt", reg.data_dir / "escaped.txt"):
        assert not path.exists(), path
    scratch = reg.data_dir / "scan-scratch" / str(worker)
    assert list(scratch.iterdir()) == []
    # The same worker goes on scanning.
    good = image_of([python_layer()])
    reg.push_image("bad/good-after", good, "v1")
    assert wait_scanned(reg, "bad/good-after", "v1")["summary"]["status"] == "succeeded"
    assert reg.pid("scan") == worker


def test_a_blob_that_does_not_match_its_digest_is_retried_then_parked(scanning: Registry) -> None:
    reg = scanning
    image = image_of([python_layer()])
    layer = image.layers[0]
    # The layer's canonical file rots on disk after its upload and before the manifest
    # that queues the scan: the worker must notice while streaming it, not trust it.
    for blob in image.blobs:
        reg.push_blob("rot/app", blob.data, blob.digest)
    reg.blob_file(layer.digest).write_bytes(bytes(len(layer.data)))
    reg.put_manifest("rot/app", "v1", image.manifest)
    summary = wait_scanned(reg, "rot/app", "v1")["summary"]
    assert summary["status"] == "error"
    assert "gave up after 5 attempts" in summary["message"], summary
    assert "hash to something else" in summary["message"]
    parked = reg.cli("scan", "parked", "--json").stdout
    entries = [json.loads(line) for line in parked.splitlines()]
    (entry,) = [e for e in entries if e["repository"] == "rot/app"]
    assert entry["attempts"] == 5 and "hash to something else" in entry["error"]
    # The bytes are good again: a requested scan succeeds.
    reg.blob_file(layer.digest).write_bytes(layer.data)
    r = reg.request("POST", "/api/v1/repositories/rot/app/manifests/v1/scan")
    assert r.status == 202, r.body
    assert (
        r.header("Location")
        == f"/api/v1/repositories/rot/app/manifests/{image.digest}/vulnerabilities"
    )
    doc = wait_scanned(reg, "rot/app", "v1", after=summary["scan_id"])
    assert doc["summary"]["status"] == "succeeded"


def test_worker_killed_mid_scan_completes_the_task_once(scanning: Registry) -> None:
    reg = scanning
    # About two seconds of decompression: long enough to be killed in the middle.
    slow = image_of([gzip_bomb(768 << 20)])
    reg.push_image("slow/app", slow, "v1")
    first = reg.pid("scan")
    scratch = reg.data_dir / "scan-scratch" / str(first)
    deadline = time.monotonic() + 60
    while not list(scratch.glob("*/0/rootfs/arts-scan-*")):
        assert time.monotonic() < deadline, "the scan did not start"
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(first, signal.SIGKILL)
    # scan_svc answers the endpoint: wait for the supervisor to have it back (on a busy
    # machine its restart can outlast the gateway's 10 s wait for a service).
    deadline = time.monotonic() + 60
    while (
        r := reg.request("GET", "/api/v1/repositories/slow/app/manifests/v1/vulnerabilities")
    ).status == 503:
        assert time.monotonic() < deadline, "scan_svc did not come back"
        time.sleep(0.2)
    assert r.status == 200, r.body
    assert r.json()["summary"]["status"] == "not_scanned"
    doc = wait_scanned(reg, "slow/app", "v1")
    summary = doc["summary"]
    # Leased again after the lease ran out (a second attempt, or later ones on a machine
    # so busy that a lease lapsed), and completed by one of them only.
    assert summary["status"] == "succeeded" and summary["attempt"] >= 2
    assert reg.pid("scan") != first
    assert not scratch.exists(), "the killed worker's scratch space was cleaned up"
    time.sleep(1.0)
    again = vulnerabilities(reg, "slow/app", "v1")["summary"]
    assert again["scan_id"] == summary["scan_id"] and not again["queued"]
    reports = list((reg.storage_dir / "scans").glob("repository=slow%2Fapp/*/*.parquet"))
    assert [p.stem for p in reports] == [summary["scan_id"]]


def test_rescan_replaces_statistics_keeps_reports_and_policy_refuses_pulls(
    start_registry: Callable[..., Registry],
) -> None:
    reg = start_registry(**SCAN_ENV, ARTS_SCAN_RESCHEDULE_SECS="2")
    reg.cli("scan", "db", "import", str(OSV / "pypi"))
    image = vulnerable_image(COPY_STATUS.read_bytes())
    reg.push_image("policy/app", image, "v1")
    first = wait_scanned(reg, "policy/app", "v1")["summary"]
    expected = expected_findings(COPY_STATUS.read_bytes())
    pypi = {k for k in expected if k[2] != STATUS_PATH}
    assert first["status"] == "succeeded"
    assert keys(vulnerabilities(reg, "policy/app", "v1")["findings"]) == pypi

    out = reg.cli("scan", "policy", "set", "--project", "policy", "--block-severity", "high").stdout
    assert "HIGH or higher" in out
    refused = reg.request(
        "GET", "/v2/policy/app/manifests/v1", headers={"Accept": image.manifest.media_type}
    )
    (error,) = refused.expect_error(403, "DENIED")
    assert f"{first['counts']['high']} high" in error["message"], error
    assert reg.request("HEAD", "/v2/policy/app/manifests/v1").status == 200
    # Another project's images are not concerned.
    reg.push_image("other/app", image, "v1")
    assert reg.request("GET", "/v2/other/app/manifests/v1").status == 200

    # New advisories reach the old image at the next rescan, although pulls of it are
    # refused (the scanner is exempt); the older report stays.
    reg.cli("scan", "db", "import", str(OSV / "debian"))
    second = wait_scanned(reg, "policy/app", "v1", after=first["scan_id"])["summary"]
    deadline = time.monotonic() + 60
    while second["database_version"] == first["database_version"]:
        assert time.monotonic() < deadline, second
        second = wait_scanned(reg, "policy/app", "v1", after=second["scan_id"])["summary"]
    assert keys(vulnerabilities(reg, "policy/app", "v1")["findings"]) == expected
    assert sum(second["counts"].values()) == len(expected) > sum(first["counts"].values())
    scan_ids = set(
        ds.dataset(reg.storage_dir / "scans", partitioning="hive")
        .to_table(filter=ds.field("repository") == "policy/app")["scan_id"]
        .to_pylist()
    )
    assert {first["scan_id"], second["scan_id"]} <= scan_ids

    reg.cli("scan", "policy", "clear", "--project", "policy")
    assert reg.request("GET", "/v2/policy/app/manifests/v1").status == 200
