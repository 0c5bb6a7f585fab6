"""Opening the storage root that ARTS_STORAGE_URL names, for every service that uses it
(blob_svc's blobs and sessions, scan_svc's reports), as a `pyarrow.fs` filesystem.

Two kinds of URL:
- `file:///dir` (or a plain local path): a local directory or a mounted DFS.
- `s3://bucket/prefix`: any S3-compatible object store. Credentials and region come the
  standard AWS way (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE,
  ~/.aws/credentials and ~/.aws/config; AWS_REGION or AWS_DEFAULT_REGION), or from the
  URL's `region=` query. The endpoint is the first of:
    1. the URL's `endpoint_override=host:port` (with `scheme=http|https`, default https),
       as pyarrow's own S3 URLs write it;
    2. AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL (the AWS SDKs' standard variables);
    3. ARES_CLIENT_ADDRESS, the DFS endpoint (default http://localhost:9182), when the URL
       names no endpoint;
    4. AWS itself, when ARES_CLIENT_ADDRESS is set empty.
  `allow_bucket_creation=true` in the URL creates a missing bucket at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

from artifactstore.config import Settings

# The URL query parameters an s3:// URL may carry (the ones pyarrow's own S3 URLs use).
_S3_QUERY = frozenset({"endpoint_override", "scheme", "region", "allow_bucket_creation"})


@dataclass(frozen=True)
class StorageOptions:
    """What opening the storage needs besides its URL (from `Settings`)."""

    # ARES_CLIENT_ADDRESS: the endpoint of an s3:// URL that names none ("" for AWS).
    dfs_endpoint: str = "http://localhost:9182"
    # AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, when set.
    aws_endpoint: str | None = None
    # Seconds a request to the object store may go without progress before it fails.
    request_timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> StorageOptions:
        """The options of `settings`."""
        return cls(
            dfs_endpoint=settings.ares_client_address,
            aws_endpoint=settings.aws_endpoint_url,
            request_timeout_seconds=settings.storage_timeout_seconds,
            connect_timeout_seconds=min(5.0, settings.storage_timeout_seconds),
        )


@dataclass(frozen=True)
class S3Location:
    """Where an s3:// storage root is and how to reach it."""

    bucket: str
    # The key prefix of the root inside the bucket, without slashes at either end ("" for
    # the whole bucket).
    prefix: str
    # `scheme://host[:port]`, or None for AWS's own endpoint of `region`.
    endpoint_url: str | None
    region: str
    allow_bucket_creation: bool

    @property
    def root(self) -> str:
        """The root as a path on the pyarrow filesystem: `bucket[/prefix]`."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket


@dataclass(frozen=True)
class Storage:
    """An opened storage root: the filesystem, the root path on it, and, for object
    storage, its location (for the S3 operations pyarrow does not offer)."""

    filesystem: pafs.FileSystem
    root: str
    s3: S3Location | None

    def path(self, relative: str) -> str:
        """The filesystem path of `relative`, a '/'-separated path under the root."""
        return f"{self.root}/{relative}"


def parse_s3_url(url: str, options: StorageOptions) -> S3Location:
    """The location an `s3://bucket/prefix[?query]` URL names, with the endpoint and region
    rules of this module's docstring. ValueError for a malformed URL or unknown query."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    if "@" in parts.netloc:
        raise ValueError("credentials do not belong in the storage URL; use AWS_* variables")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = set(query) - _S3_QUERY
    if unknown:
        raise ValueError(f"unknown storage URL parameters {sorted(unknown)} in {url!r}")
    if "endpoint_override" in query:
        scheme = query.get("scheme", "https")
        endpoint: str | None = f"{scheme}://{query['endpoint_override']}"
    else:
        endpoint = options.aws_endpoint or options.dfs_endpoint or None
    region = (
        query.get("region")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or _profile_region()
        or "us-east-1"
    )
    return S3Location(
        bucket=parts.netloc,
        prefix=parts.path.strip("/"),
        endpoint_url=endpoint.rstrip("/") if endpoint else None,
        region=region,
        allow_bucket_creation=query.get("allow_bucket_creation", "").lower() in ("1", "true"),
    )


def _profile_region() -> str | None:
    """The region of the AWS config file's current profile, if it names one."""
    # Here, not at the top: botocore costs ~15 MiB in every process that opens storage.
    import botocore.session

    region = botocore.session.get_session().get_config_variable("region")
    return str(region) if region else None


def s3_filesystem(location: S3Location, options: StorageOptions) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem for `location`. Credentials are left to the AWS SDK's
    default chain (environment, config files, instance metadata)."""
    # pyarrow 26's AWS SDK sends checksums in a way Ceph RGW (and other non-AWS stores)
    # reject with HTTP 411 MissingContentLength; "when_required" is what they accept, and
    # AWS accepts it too. An operator's explicit choice is kept.
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    endpoint = urlsplit(location.endpoint_url) if location.endpoint_url else None
    return pafs.S3FileSystem(
        region=location.region,
        endpoint_override=endpoint.netloc if endpoint else None,
        scheme=endpoint.scheme if endpoint else "https",
        request_timeout=options.request_timeout_seconds,
        connect_timeout=options.connect_timeout_seconds,
        # A few quick retries inside the SDK; blob_svc retries with backoff beyond them.
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        allow_bucket_creation=location.allow_bucket_creation,
        # "Directories" are key prefixes: no marker objects are checked or made.
        check_directory_existence_before_creation=True,
    )


def open_storage(url: str, options: StorageOptions | None = None) -> Storage:
    """Open the storage root `url` (see the module docstring), creating the local directory
    or, when the URL allows it, the bucket. Blocks: call it at start-up.

    ValueError for a URL of another kind or malformed; OSError when the storage cannot be
    reached to create the root.
    """
    options = options or StorageOptions()
    if url.startswith("s3://"):
        location = parse_s3_url(url, options)
        filesystem = s3_filesystem(location, options)
        if location.allow_bucket_creation:
            filesystem.create_dir(location.bucket, recursive=False)
        return Storage(filesystem, location.root, location)
    if "://" in url and not url.startswith("file://"):
        raise ValueError(f"unsupported storage URL {url!r}: use file:// or s3://")
    local, root = pafs.FileSystem.from_uri(url if "://" in url else str(Path(url).absolute()))
    local.create_dir(root, recursive=True)
    return Storage(local, root.rstrip("/"), None)
