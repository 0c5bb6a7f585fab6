"""Vulnerability scanning with the blob storage root on object storage (the real Ceph
cluster `make test` starts): the vulnerability database imported into the bucket, an image
scanned on push, and its Parquet report read back from the bucket as a dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from artifactstore.storage import open_storage
from tests.e2e.conftest import Registry, free_port
from tests.e2e.scan_images import expected_findings, vulnerable_image
from tests.e2e.test_scan import COPY_STATUS, OSV, SCAN_ENV, keys, vulnerabilities, wait_scanned
from tests.objectstore import fresh_s3_url


@pytest.fixture
def registry_on_s3(tmp_path: Path) -> Iterator[Registry]:
    url = fresh_s3_url("scan")
    reg = Registry(
        tmp_path / "data",
        free_port(),
        tmp_path / "serve.log",
        env={**SCAN_ENV, "ARTS_STORAGE_URL": url},
    )
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()


def test_scan_with_reports_and_database_in_the_bucket(registry_on_s3: Registry) -> None:
    reg = registry_on_s3
    out = reg.cli("scan", "db", "import", str(OSV)).stdout
    assert "80 records" in out, out
    status = COPY_STATUS.read_bytes()
    reg.push_image("s3scan/app", vulnerable_image(status), "v1")
    summary = wait_scanned(reg, "s3scan/app", "v1")["summary"]
    assert summary["status"] == "succeeded", summary
    assert keys(vulnerabilities(reg, "s3scan/app", "v1")["findings"]) == expected_findings(status)

    storage = open_storage(reg.env["ARTS_STORAGE_URL"])
    table = ds.dataset(
        storage.path("scans"), filesystem=storage.filesystem, partitioning="hive"
    ).to_table()
    assert set(table["scan_id"].to_pylist()) == {summary["scan_id"]}
    assert set(table["repository"].to_pylist()) == {"s3scan/app"}
    assert table.num_rows == sum(summary["counts"].values())
    status_out = reg.cli("scan", "db", "status").stdout
    assert "records 80" in status_out and "loaded by this scan_svc: 2" in status_out
