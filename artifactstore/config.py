"""Configuration, read once from the environment into a frozen object.

The variable names and defaults of the product specification are the interface (see the
README's table); variables added by this project use the ARTS_ prefix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def _bool(value: str) -> bool:
    """Parse a boolean setting the way operators write them."""
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _local_gateway(address: str) -> str:
    """The gateway listening at `address`, as a client on this host names it: a wildcard
    host (0.0.0.0, ::, none) becomes `localhost` (so the default is `localhost:7111`)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Settings:
    """Every setting of every service; each process reads the ones it needs."""

    address: str
    directory: str
    ares_client_address: str
    scan_on_push: bool
    scan_queue: str
    debug: bool
    data_dir: Path
    storage_url: str
    fdb_cluster_file: str | None
    metadata_address: str
    blob_address: str
    scan_address: str
    gc_address: str
    upload_chunk_bytes: int
    manifest_cache_bytes: int
    rpc_timeout_seconds: float
    metrics_address: str
    metrics_port_base: int | None
    metadata_directory: str
    iam_address: str
    admin_user: str
    admin_password: str | None
    default_organization: str
    token_key_file: Path
    token_service: str
    token_realm: str
    token_ttl_seconds: int
    refresh_token_ttl_seconds: int
    # Object storage (artifactstore.storage, blob_svc).
    aws_endpoint_url: str | None
    storage_timeout_seconds: float
    storage_retry_seconds: float
    storage_redirect: bool
    storage_redirect_seconds: int
    # The GC worker (gc_svc).
    gc_enabled: bool
    gc_repository_queue: str
    gc_canonical_queue: str
    gc_batch_size: int
    gc_pending_grace_seconds: float
    gc_interval_seconds: float
    # None keeps untagged manifests forever.
    gc_untagged_retention_seconds: float | None
    gc_upload_idle_seconds: float
    gc_upload_timeout_seconds: float
    gc_lease_seconds: float
    gc_poll_seconds: float
    # The scan worker (scan_svc).
    fdb_directory: str
    trivy_path: str
    trivy_server: str
    registry_host: str
    scan_batch_size: int
    scan_reschedule_seconds: float
    scan_lease_seconds: float
    scan_retry_seconds: float
    scan_poll_seconds: float
    scan_max_unpacked_bytes: int
    scan_scratch_dir: Path
    scan_key_file: Path

    @property
    def kv_path(self) -> Path:
        """The embedded KV store's file (used when no FoundationDB cluster is configured)."""
        return self.data_dir / "metadata" / "kv.sqlite3"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from `env` (default: the process environment)."""
        e = os.environ if env is None else env
        data_dir = Path(e.get("ARTS_DATA_DIR", "./data")).absolute()
        run = data_dir / "run"
        metadata_address = e.get("ARTS_METADATA_ADDRESS", f"unix:{run / 'metadata.sock'}")
        address = e.get("ARTIFACT_STORE_ADDRESS", "0.0.0.0:7111")
        return cls(
            address=address,
            directory=e.get("ARTIFACT_STORE_DIRECTORY", "registry"),
            ares_client_address=e.get("ARES_CLIENT_ADDRESS", "http://localhost:9182"),
            scan_on_push=_bool(e.get("ARTS_SCAN_ON_PUSH", "true")),
            scan_queue=e.get("ARTS_SCAN_QUEUE", "arts-scan"),
            debug=_bool(e.get("DEBUG", "false")),
            data_dir=data_dir,
            storage_url=e.get("ARTS_STORAGE_URL", (data_dir / "storage").as_uri()),
            fdb_cluster_file=e.get("FDB_CLUSTER_FILE") or None,
            metadata_address=metadata_address,
            blob_address=e.get("ARTS_BLOB_ADDRESS", f"unix:{run / 'blob.sock'}"),
            scan_address=e.get("ARTS_SCAN_ADDRESS", f"unix:{run / 'scan.sock'}"),
            gc_address=e.get("ARTS_GC_ADDRESS", f"unix:{run / 'gc.sock'}"),
            upload_chunk_bytes=int(e.get("ARTS_UPLOAD_CHUNK_BYTES", str(1024 * 1024))),
            manifest_cache_bytes=int(e.get("ARTS_MANIFEST_CACHE_BYTES", str(32 * 1024 * 1024))),
            rpc_timeout_seconds=float(e.get("ARTS_RPC_TIMEOUT_SECS", "10")),
            metrics_address=e.get("ARTS_METRICS_ADDRESS", "127.0.0.1:0"),
            metrics_port_base=int(e["ARTS_METRICS_PORT_BASE"])
            if e.get("ARTS_METRICS_PORT_BASE")
            else None,
            metadata_directory=e.get("ARTS_METADATA_DIRECTORY", "topaz"),
            iam_address=e.get("ARTS_IAM_ADDRESS", "") or metadata_address,
            admin_user=e.get("ARTS_ADMIN_USER", "admin"),
            admin_password=e.get("ARTS_ADMIN_PASSWORD") or None,
            default_organization=e.get("ARTS_DEFAULT_ORGANIZATION", "default"),
            token_key_file=Path(
                e.get("ARTS_TOKEN_KEY_FILE", str(data_dir / "keys" / "token-signing.pem"))
            ).absolute(),
            token_service=e.get("ARTS_TOKEN_SERVICE", "artifact-store"),
            token_realm=e.get("ARTS_TOKEN_REALM", ""),
            token_ttl_seconds=int(e.get("ARTS_TOKEN_TTL_SECS", "300")),
            refresh_token_ttl_seconds=int(e.get("ARTS_REFRESH_TOKEN_TTL_SECS", str(30 * 86400))),
            aws_endpoint_url=e.get("AWS_ENDPOINT_URL_S3") or e.get("AWS_ENDPOINT_URL") or None,
            storage_timeout_seconds=float(e.get("ARTS_STORAGE_TIMEOUT_SECS", "30")),
            storage_retry_seconds=float(e.get("ARTS_STORAGE_RETRY_SECS", "30")),
            storage_redirect=_bool(e.get("ARTS_STORAGE_REDIRECT", "false")),
            storage_redirect_seconds=int(e.get("ARTS_STORAGE_REDIRECT_EXPIRY_SECS", "60")),
            gc_enabled=_bool(e.get("ARTS_GC_ENABLED", "true")),
            gc_repository_queue=e.get("ARTS_GC_REPOSITORY_QUEUE", "arts-gc"),
            gc_canonical_queue=e.get("ARTS_GC_CANONICAL_QUEUE", "arts-gc-canonical"),
            gc_batch_size=int(e.get("ARTS_GC_BATCH_SIZE", "256")),
            gc_pending_grace_seconds=float(e.get("ARTS_GC_PENDING_GRACE_SECS", "86400")),
            gc_interval_seconds=float(e.get("ARTS_GC_INTERVAL_SECS", "3600")),
            gc_untagged_retention_seconds=float(e["ARTS_GC_UNTAGGED_RETENTION_SECS"])
            if e.get("ARTS_GC_UNTAGGED_RETENTION_SECS")
            else None,
            gc_upload_idle_seconds=float(e.get("ARTS_GC_UPLOAD_IDLE_SECS", "3600")),
            gc_upload_timeout_seconds=float(e.get("ARTS_GC_UPLOAD_TIMEOUT_SECS", "86400")),
            gc_lease_seconds=float(e.get("ARTS_GC_LEASE_SECS", "60")),
            gc_poll_seconds=float(e.get("ARTS_GC_POLL_SECS", "1")),
            fdb_directory=e.get("FDB_DIRECTORY") or e.get("ARTIFACT_STORE_DIRECTORY", "registry"),
            trivy_path=e.get("ARTS_TRIVY_PATH", "trivy"),
            trivy_server=e.get("ARTS_TRIVY_SERVER", ""),
            registry_host=e.get("ARTS_REGISTRY_HOST") or _local_gateway(address),
            scan_batch_size=int(e.get("ARTS_SCAN_BATCH_SIZE", "8")),
            scan_reschedule_seconds=float(e.get("ARTS_SCAN_RESCHEDULE_SECS", "3600")),
            scan_lease_seconds=float(e.get("ARTS_SCAN_LEASE_SECS", "300")),
            scan_retry_seconds=float(e.get("ARTS_SCAN_RETRY_SECS", "30")),
            scan_poll_seconds=float(e.get("ARTS_SCAN_POLL_SECS", "1")),
            scan_max_unpacked_bytes=int(e.get("ARTS_SCAN_MAX_UNPACKED_BYTES", str(32 << 30))),
            scan_scratch_dir=Path(
                e.get("ARTS_SCAN_SCRATCH_DIR", str(data_dir / "scan-scratch"))
            ).absolute(),
            scan_key_file=Path(
                e.get("ARTS_SCAN_KEY_FILE", str(data_dir / "keys" / "scanner.json"))
            ).absolute(),
        )
