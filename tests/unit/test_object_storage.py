"""Pure parts of the object-storage support: reading s3:// URLs (the endpoint rule), the
plan that joins a session's parts into one multipart upload, and which failures are
retried."""

from __future__ import annotations

import botocore.exceptions
import pyarrow.fs as pafs
import pytest

from artifactstore.errors import Reason, RegistryError
from artifactstore.storage import StorageOptions, parse_s3_url
from blob_svc import paths
from blob_svc.objects import (
    COPY_PART_BYTES,
    MIN_PART_BYTES,
    Copy,
    SessionPart,
    Upload,
    plan_assembly,
    session_parts,
    transient,
)

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def no_region_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")


def test_endpoint_from_the_url_wins() -> None:
    options = StorageOptions(dfs_endpoint="http://dfs:9182", aws_endpoint="https://aws.example")
    location = parse_s3_url(
        "s3://bucket/some/prefix/?endpoint_override=127.0.0.1:7480&scheme=http&region=eu-west-1",
        options,
    )
    assert location.bucket == "bucket"
    assert location.prefix == "some/prefix"
    assert location.root == "bucket/some/prefix"
    assert location.endpoint_url == "http://127.0.0.1:7480"
    assert location.region == "eu-west-1"
    assert not location.allow_bucket_creation


def test_endpoint_override_defaults_to_https() -> None:
    location = parse_s3_url("s3://b/p?endpoint_override=minio.example:9000", StorageOptions())
    assert location.endpoint_url == "https://minio.example:9000"


def test_aws_endpoint_variable_comes_before_the_dfs() -> None:
    options = StorageOptions(dfs_endpoint="http://dfs:9182", aws_endpoint="https://s3.example/")
    assert parse_s3_url("s3://b/p", options).endpoint_url == "https://s3.example"


def test_without_endpoint_the_dfs_is_the_endpoint() -> None:
    options = StorageOptions(dfs_endpoint="http://ares.internal:9182")
    location = parse_s3_url("s3://blobs", options)
    assert location.endpoint_url == "http://ares.internal:9182"
    assert (location.bucket, location.prefix, location.root) == ("blobs", "", "blobs")
    assert location.region == "us-east-1"


def test_empty_dfs_address_means_aws_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    location = parse_s3_url("s3://b/p?allow_bucket_creation=true", StorageOptions(dfs_endpoint=""))
    assert location.endpoint_url is None
    assert location.region == "ap-south-1"
    assert location.allow_bucket_creation


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:///prefix",
        "gs://b/p",
        "s3://key:secret@b/p",
        "s3://b/p?endpoint=x",
        "file:///x",
    ],
)
def test_malformed_s3_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_url(url, StorageOptions())


def parts(*sizes: int) -> list[SessionPart]:
    found, offset = [], 0
    for size in sizes:
        found.append(SessionPart(f"b/uploads/u/parts/{offset:020d}", offset, size))
        offset += size
    return found


def covered(plan: list[Copy | Upload]) -> list[tuple[str, int, int]]:
    ranges: list[tuple[str, int, int]] = []
    for piece in plan:
        for r in piece.ranges if isinstance(piece, Upload) else (piece,):
            ranges.append((r.path, r.start, r.end))
    return ranges


def piece_size(piece: Copy | Upload) -> int:
    ranges = piece.ranges if isinstance(piece, Upload) else (piece,)
    return sum(r.end - r.start for r in ranges)


@pytest.mark.parametrize(
    "sizes",
    [
        (),
        (0,),
        (1,),
        (MIN_PART_BYTES,),
        (16 * MiB,) * 5 + (3,),
        (1, 2, 3) * 1000,
        (MiB,) * 20 + (16 * MiB,) + (7,) + (16 * MiB,),
        (MIN_PART_BYTES - 1, MIN_PART_BYTES + 1, 1, MIN_PART_BYTES),
        (COPY_PART_BYTES + MIN_PART_BYTES - 1,),
        (3 * COPY_PART_BYTES + 1,),
        (6 * 1024 * MiB,),
    ],
)
def test_assembly_plan_covers_every_byte_in_order_with_parts_s3_accepts(
    sizes: tuple[int, ...],
) -> None:
    session = parts(*sizes)
    plan = plan_assembly(session)
    # Every byte once, in order.
    expected = [(p.path, 0, p.size) for p in session if p.size]
    merged: list[tuple[str, int, int]] = []
    for path, start, end in covered(plan):
        if merged and merged[-1][0] == path and merged[-1][2] == start:
            merged[-1] = (path, merged[-1][1], end)
        else:
            merged.append((path, start, end))
    assert merged == expected
    # S3: every part but the last at least 5 MiB, none above 5 GiB, at most 10,000.
    assert all(piece_size(piece) >= MIN_PART_BYTES for piece in plan[:-1])
    assert all(0 < piece_size(piece) <= 5 * 1024 * MiB for piece in plan)
    assert len(plan) <= 10_000


def test_large_parts_are_copied_and_small_ones_uploaded_together() -> None:
    plan = plan_assembly(parts(16 * MiB, MiB, MiB, 16 * MiB))
    assert [type(piece).__name__ for piece in plan] == ["Copy", "Upload", "Copy"]
    assert piece_size(plan[1]) == 8 * MiB  # the two small parts and 6 MiB of the third
    six_gib = plan_assembly(parts(6 * 1024 * MiB))
    assert all(isinstance(piece, Copy) for piece in six_gib)
    assert len(six_gib) == 6


def info(path: str, size: int) -> pafs.FileInfo:
    return pafs.FileInfo(path, pafs.FileType.File, size=size)


def test_session_parts_in_order_and_contiguous() -> None:
    root = "bucket/prefix"
    listing = [
        info(paths.upload_part(root, "u", 10), 5),
        info(paths.upload_started_at(root, "u"), 20),
        info(paths.upload_part(root, "u", 0), 10),
        info(paths.upload_part(root, "u", 15), 1),
    ]
    assert [(p.offset, p.size) for p in session_parts(listing, "u")] == [(0, 10), (10, 5), (15, 1)]
    with pytest.raises(RegistryError) as caught:
        session_parts(listing[:2], "u")
    assert caught.value.reason == Reason.BLOB_UPLOAD_INVALID


def test_part_names_are_offsets() -> None:
    name = paths.upload_part("r", "u", 1234).rsplit("/", 1)[1]
    assert paths.part_offset(name) == 1234
    for other in ("startedat", "data", "12", "0" * 19 + "x", "\u0660" * 20):
        assert paths.part_offset(other) is None


def client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


def test_which_failures_are_retried() -> None:
    assert transient(client_error(503, "ServiceUnavailable"))
    assert transient(client_error(500, "InternalError"))
    assert transient(client_error(400, "RequestTimeout"))
    assert transient(client_error(503, "SlowDown"))
    assert not transient(client_error(403, "AccessDenied"))
    assert not transient(client_error(404, "NoSuchKey"))
    assert transient(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"))
    assert transient(botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"))
    assert transient(OSError("AWS Error NETWORK_CONNECTION during PutObject operation"))
    assert not transient(OSError("AWS Error ACCESS_DENIED during PutObject operation"))
    assert not transient(FileNotFoundError("gone"))
    assert not transient(ValueError("a bug"))
