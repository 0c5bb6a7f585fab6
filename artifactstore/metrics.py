"""Prometheus metrics: one registry per process, served over HTTP at the process's
metrics address, and the metrics every service shares (gRPC calls served).

Each process listens at ARTS_METRICS_ADDRESS (host:port; port 0 picks a free one) and
writes the address it got to `<data dir>/run/<service>.metrics`, so operators and tests
find it; `artifact-store serve` gives its children fixed ports from ARTS_METRICS_PORT_BASE
when that is set (see the README for a Prometheus scrape configuration).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from artifactstore.config import Settings

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets from 1 ms to 60 s: registry calls span sub-millisecond manifest reads to
# multi-second blob commits.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

RPC_HANDLED = Counter(
    "artifactstore_rpc_server_handled",
    "gRPC calls this process served, by service, method and status code.",
    ["service", "method", "code"],
    registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "artifactstore_rpc_server_handling_seconds",
    "Time to serve a gRPC call (to the last message for streams).",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)


def serve_metrics(
    settings: Settings,
    service: str,
    address: str | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> WSGIServer:
    """Start this process's metrics listener at `address` (default ARTS_METRICS_ADDRESS),
    serving `registry` from a thread of its own; return the listening server."""
    host, _, port = (address or settings.metrics_address).rpartition(":")
    server, _ = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    bound = f"{host or '127.0.0.1'}:{server.server_port}"
    run = settings.data_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    _write_atomically(run / f"{service}.metrics", bound + "\n")
    log.info("metrics at http://%s/metrics", bound)
    return server


def _write_atomically(path: Path, text: str) -> None:
    # A name of this process's own: replicas of a service may share the run directory.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
