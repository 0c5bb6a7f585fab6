"""The real object store the tests use: a Ceph RADOS Gateway that `make test` starts with
`scripts/ceph up` and names in the environment.

- ARTS_TEST_S3_URL: a storage URL of a bucket on it, e.g.
  `s3://arts-test/ci?endpoint_override=127.0.0.1:PORT&scheme=http&allow_bucket_creation=true`
  (credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
- ARTS_TEST_CEPH_DIR: the cluster's directory, for tests that stop and start radosgw.

Tests that need them fail (never skip) when they are missing: the object-storage support
is proven only by running against the real thing.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
CEPH_SCRIPT = ROOT / "scripts" / "ceph"


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: these tests need the Ceph cluster that `make test` starts "
            '(or run `eval "$(scripts/ceph up DIR)"` and set ARTS_TEST_S3_URL and '
            "ARTS_TEST_CEPH_DIR as the Makefile does)",
            pytrace=False,
        )
    return value


def s3_base_url() -> str:
    """ARTS_TEST_S3_URL (the test fails if it is not set)."""
    return _required("ARTS_TEST_S3_URL")


def fresh_s3_url(label: str) -> str:
    """A storage URL of an unused prefix `<base prefix>/<label>-<random>` of the test
    bucket."""
    base = urlsplit(s3_base_url())
    prefix = f"{base.path.rstrip('/')}/{label}-{uuid.uuid4().hex}"
    return urlunsplit(base._replace(path=prefix))


def with_endpoint(url: str, endpoint: str) -> str:
    """`url` with its endpoint_override replaced by `endpoint` (host:port)."""
    parts = urlsplit(url)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    query["endpoint_override"] = endpoint
    return urlunsplit(parts._replace(query=urlencode(query)))


def endpoint_of(url: str) -> str:
    """The host:port a storage URL's endpoint_override names."""
    return parse_qs(urlsplit(url).query)["endpoint_override"][-1]


def ceph_dir() -> Path:
    """ARTS_TEST_CEPH_DIR (the test fails if it is not set)."""
    return Path(_required("ARTS_TEST_CEPH_DIR"))


def stop_radosgw() -> None:
    """Stop the RADOS Gateway of the test cluster (by its PID); the OSD and monitor stay."""
    subprocess.run([str(CEPH_SCRIPT), "stop-rgw", str(ceph_dir())], check=True, timeout=60)


def start_radosgw() -> None:
    """Start the RADOS Gateway of the test cluster again, on the same port; returns once
    it answers."""
    subprocess.run(
        [str(CEPH_SCRIPT), "up", str(ceph_dir())],
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )
