"""Pure parts of vulnerability scanning: the shared rules (severities, groups, the pull
policy's decision, the scanner's identity), the CLI's image references, the registry
client's challenge parsing, the worker's default registry host, and the Parquet reports —
written from each real Trivy report and read back as one dataset."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from artifactstore.config import Settings
from artifactstore.errors import Reason, RegistryError
from artifactstore.scan_cli import split_reference
from artifactstore.scanning import (
    grouped,
    is_scanner,
    parse_severities,
    pull_denial,
)
from scan_svc import reports
from scan_svc.analysis.trivy import parse_report
from scan_svc.registry import parse_challenge
from scan_svc.storage import Storage

TRIVY = sorted((Path(__file__).parent.parent / "data" / "vulndata" / "trivy").glob("*.json"))


def test_severities_parse_case_insensitively_from_comma_lists() -> None:
    assert parse_severities(["high,Critical", " low ", ""]) == {"HIGH", "CRITICAL", "LOW"}
    assert parse_severities([]) == frozenset()
    with pytest.raises(RegistryError) as caught:
        parse_severities(["HIGH,SEVERE"])
    assert caught.value.reason == Reason.SEVERITY_INVALID


def test_groups_add_up_as_the_product_shows_them() -> None:
    counts = {"CRITICAL": 1, "HIGH": 2, "MEDIUM": 3, "LOW": 4, "UNKNOWN": 5}
    assert grouped(counts) == {"Critical": 1, "Medium/High": 5, "Low/Unknown": 9}
    assert grouped({}) == {"Critical": 0, "Medium/High": 0, "Low/Unknown": 0}


@pytest.mark.parametrize(
    ("block", "counts", "named"),
    [
        ("", {"CRITICAL": 3}, None),
        ("CRITICAL", {"HIGH": 9, "LOW": 1}, None),
        ("HIGH", {"HIGH": 2, "CRITICAL": 1, "LOW": 7}, "1 critical, 2 high"),
        ("LOW", {"LOW": 1}, "1 low"),
        ("LOW", {"UNKNOWN": 4}, None),
        ("UNKNOWN", {"UNKNOWN": 4}, "4 unknown"),
        ("HIGH", {}, None),
    ],
)
def test_pull_denial(block: str, counts: dict[str, int], named: str | None) -> None:
    message = pull_denial("team", block, counts)
    if named is None:
        assert message is None
    else:
        assert message is not None and message.endswith(f"this one has {named}")
        assert f"project team refuses images with {block} or higher" in message


def test_the_scanner_is_recognised_by_account_and_project() -> None:
    assert is_scanner("serviceAccount:scanner@artifact-store.iam.artifact-store")
    assert is_scanner("serviceAccount:scanner@artifact-store.iam.example.org")
    assert not is_scanner("serviceAccount:scanner@artifact-store-evil.iam.artifact-store")
    assert not is_scanner("serviceAccount:scanner2@artifact-store.iam.artifact-store")
    assert not is_scanner("user:scanner")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("team/app@sha256:" + "a" * 64, ("team/app", "sha256:" + "a" * 64)),
        ("team/app@v1", ("team/app", "v1")),
        ("team/app:v1", ("team/app", "v1")),
        ("team/app", ("team/app", "latest")),
    ],
)
def test_cli_image_references(text: str, expected: tuple[str, str]) -> None:
    assert split_reference(text) == expected


def test_bearer_challenges() -> None:
    header = (
        'Bearer realm="http://127.0.0.1:7111/v2/token",service="artifact-store",'
        'scope="repository:a/b:pull",error="insufficient_scope"'
    )
    assert parse_challenge(header) == {
        "realm": "http://127.0.0.1:7111/v2/token",
        "service": "artifact-store",
        "scope": "repository:a/b:pull",
        "error": "insufficient_scope",
    }
    assert parse_challenge('Basic realm="x"') == {}


@pytest.mark.parametrize(
    ("env", "host"),
    [
        ({}, "localhost:7111"),
        ({"ARTIFACT_STORE_ADDRESS": "127.0.0.1:5000"}, "127.0.0.1:5000"),
        ({"ARTIFACT_STORE_ADDRESS": "[::]:5000"}, "localhost:5000"),
        ({"ARTIFACT_STORE_ADDRESS": "[::1]:5000"}, "[::1]:5000"),
        ({"ARTS_REGISTRY_HOST": "https://registry.example.org"}, "https://registry.example.org"),
    ],
)
def test_the_worker_pulls_through_the_local_gateway_by_default(
    env: dict[str, str], host: str
) -> None:
    assert Settings.from_env(env).registry_host == host


def test_fdb_directory_follows_the_registry_directory() -> None:
    assert Settings.from_env({}).fdb_directory == "registry"
    assert Settings.from_env({"ARTIFACT_STORE_DIRECTORY": "prod"}).fdb_directory == "prod"
    assert Settings.from_env({"FDB_DIRECTORY": "x"}).fdb_directory == "x"


@pytest.mark.parametrize("path", TRIVY, ids=[p.stem for p in TRIVY])
def test_trivy_reports_become_the_same_rows_and_counts(path: Path, tmp_path: Path) -> None:
    """Each real Trivy report, through the adapter, written as a scan's report and read
    back with the dataset reader: one row per vulnerability and per package it lists."""
    doc = json.loads(path.read_text())
    report = parse_report(doc)
    listed = [v for r in doc.get("Results") or [] for v in r.get("Vulnerabilities") or []]
    packages = [p for r in doc.get("Results") or [] for p in r.get("Packages") or []]
    storage = Storage.open(str(tmp_path / "storage"))
    stamp = reports.Stamp(
        scan_id="s1",
        repository="team/app",
        manifest_digest="sha256:" + "1" * 64,
        analyzer="trivy",
        analyzer_version=report.trivy_version,
        database_version="",
        scanned_at=dt.datetime(2026, 11, 27, 23, 59, tzinfo=dt.UTC),
    )
    digest = "sha256:" + "2" * 64
    paths = reports.write(
        storage,
        stamp,
        [reports.findings_table(report.findings, "linux/amd64", digest)],
        [reports.packages_table(report.packages, report.os, "linux/amd64", digest)],
    )
    assert paths.findings == "scans/repository=team%2Fapp/date=2026-11-27/s1.parquet"
    rows = ds.dataset(tmp_path / "storage" / "scans", partitioning="hive").to_table().to_pylist()
    assert len(rows) == len(listed)
    assert Counter(r["severity"] for r in rows) == Counter(
        v.get("Severity") or "UNKNOWN" for v in listed
    )
    assert Counter(r["severity"] for r in rows) == +Counter(report.counts)
    assert sorted(
        (r["vulnerability_id"], r["package_name"], r["installed_version"]) for r in rows
    ) == sorted((v["VulnerabilityID"], v["PkgName"], v["InstalledVersion"]) for v in listed)
    assert {(r["repository"], r["date"], r["scan_id"], r["analyzer"]) for r in rows} <= {
        ("team/app", "2026-11-27", "s1", "trivy")
    }
    inventory = ds.dataset(tmp_path / "storage" / "scan-packages", partitioning="hive").to_table()
    assert inventory.num_rows == len(packages)
    # Read back as the service reads one scan's rows of one platform.
    assert reports.read(storage, paths.findings, "s1", digest).num_rows == len(listed)
    assert reports.read(storage, paths.findings, "s2", digest).num_rows == 0
