"""tests/s3: object-storage tests against the Ceph cluster `make test` starts."""

from __future__ import annotations

import os

# Minutes long: run only when asked for (`make test-big-blob`).
collect_ignore = [] if os.environ.get("ARTS_TEST_BIG_BLOB_GIB") else ["test_big_blob.py"]
