"""Observability of the running mesh: traces exported over OTLP to a real receiver, and
Prometheus metrics of every process that count exactly the requests made."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Registry, Tool
from tests.e2e.images import build_image, write_layout

SERVER = 2  # OTLP SpanKind


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver, built from the official OpenTelemetry protos, that
    keeps every span it is sent as (service name, span)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                self.spans.extend((attrs["service.name"], s) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(0)


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_skopeo_push_is_one_trace_at_an_otlp_receiver(
    receiver: tuple[Receiver, int],
    start_registry: Callable[..., Registry],
    skopeo: Tool,
    tmp_path: Path,
) -> None:
    sink, port = receiver
    reg = start_registry(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    layout = write_layout(tmp_path / "image", build_image(11, layers=2), "v1")
    user, password = reg.admin
    skopeo.run(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"{user}:{password}",
        f"oci:{layout}:v1",
        f"docker://{reg.host}/otlp/app:v1",
    )

    def manifest_put() -> list[Span]:
        return [
            s
            for svc, s in sink.spans
            if svc == "gateway" and s.name == "PUT /v2/{name}/manifests/{reference}"
        ]

    wait_for(lambda: bool(manifest_put()))
    (put,) = manifest_put()

    def in_trace() -> list[tuple[str, Span]]:
        return [(svc, s) for svc, s in sink.spans if s.trace_id == put.trace_id]

    wait_for(lambda: {"metadata_svc", "blob_svc"} <= {svc for svc, _ in in_trace()})
    spans = in_trace()
    by_id = {s.span_id: (svc, s) for svc, s in spans}
    assert not put.parent_span_id and put.kind == SERVER
    for svc, span in spans:
        # Every span of the trace hangs, through its parents, from the gateway's.
        chain = span
        while chain.parent_span_id:
            chain = by_id[chain.parent_span_id][1]
        assert chain.span_id == put.span_id, (svc, span.name)
    server_spans = {(svc, s.name) for svc, s in spans if s.kind == SERVER}
    assert (
        "metadata_svc",
        "/artifactstore.metadata.v1.MetadataService/PutManifest",
    ) in server_spans
    assert any(s.name == "kv.transaction" for svc, s in spans if svc == "metadata_svc")
    # Uploads in the same push reach blob_svc in traces of their own.
    commits = [s for svc, s in sink.spans if svc == "blob_svc" and s.name.endswith("CommitUpload")]
    assert commits
    # Stopped while the receiver still listens, so the exporters' last flush lands.
    reg.stop()


def _families(address: str) -> list[Metric]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return list(text_string_to_metric_families(response.read().decode()))


def _samples(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in _families(address)
        for sample in family.samples
    }


def _metrics_address(reg: Registry, service: str) -> str:
    return (reg.data_dir / "run" / f"{service}.metrics").read_text().strip()


def test_metrics_count_exactly_the_requests_made(start_registry: Callable[..., Registry]) -> None:
    # No scan on push: the scanner's own pulls would be counted too.
    registry = start_registry(ARTS_SCAN_ON_PUSH="false")
    repo = "metrics/app"
    image = build_image(12, layers=1)
    registry.push_image(repo, image, "v1")
    gateway = _metrics_address(registry, "gateway")
    metadata = _metrics_address(registry, "metadata")
    route = "/v2/{name}/manifests/{reference}"
    get = (
        "artifactstore_http_requests_total",
        (("method", "GET"), ("route", route), ("status", "200")),
    )
    sent = ("artifactstore_http_sent_bytes_total", (("route", route),))
    rpc = (
        "artifactstore_rpc_server_handled_total",
        (
            ("code", "OK"),
            ("method", "GetManifest"),
            ("service", "artifactstore.metadata.v1.MetadataService"),
        ),
    )
    before_gw, before_md = _samples(gateway), _samples(metadata)
    for _ in range(5):
        r = registry.request(
            "GET", f"/v2/{repo}/manifests/v1", headers={"Accept": image.manifest.media_type}
        )
        assert r.status == 200
    missing = registry.request("GET", f"/v2/{repo}/manifests/nope")
    assert missing.status == 404
    after_gw, after_md = _samples(gateway), _samples(metadata)
    assert after_gw[get] - before_gw.get(get, 0) == 5
    expected_bytes = 5 * len(image.manifest.data) + len(missing.body)
    assert after_gw[sent] - before_gw.get(sent, 0) == expected_bytes
    not_found = (
        "artifactstore_http_requests_total",
        (("method", "GET"), ("route", route), ("status", "404")),
    )
    assert after_gw[not_found] - before_gw.get(not_found, 0) == 1
    # Each GET is answered once: by metadata_svc, or from the gateway's manifest cache
    # (the first cannot be, the cache was empty).
    hits = ("artifactstore_manifest_cache_lookups_total", (("read", "manifest"), ("result", "hit")))
    answered = after_md[rpc] - before_md.get(rpc, 0)
    assert answered >= 1
    assert answered + after_gw.get(hits, 0) - before_gw.get(hits, 0) == 5
    # Histograms count the same requests.
    duration = (
        "artifactstore_http_request_duration_seconds_count",
        (("method", "GET"), ("route", route)),
    )
    assert after_gw[duration] - before_gw.get(duration, 0) == 6

    # A blob the gateway sends from its file (and a range of it) counts its bytes too.
    layer = image.layers[0]
    blob_sent = ("artifactstore_http_sent_bytes_total", (("route", "/v2/{name}/blobs/{digest}"),))
    before = _samples(gateway).get(blob_sent, 0)
    assert registry.request("GET", f"/v2/{repo}/blobs/{layer.digest}").body == layer.data
    ranged = registry.request(
        "GET", f"/v2/{repo}/blobs/{layer.digest}", headers={"Range": "bytes=10-19"}
    )
    assert ranged.status == 206 and ranged.body == layer.data[10:20]
    assert _samples(gateway)[blob_sent] - before == len(layer.data) + 10


def test_every_process_serves_metrics_and_health(registry: Registry) -> None:
    for service in ("gateway", "metadata", "blob", "scan", "gc"):
        names = {f.name for f in _families(_metrics_address(registry, service))}
        assert "artifactstore_rpc_server_handled" in names, (service, names)
    supervisor = {f.name for f in _families(_metrics_address(registry, "supervisor"))}
    assert "artifactstore_service_restarts" in supervisor
    assert registry.request("GET", "/healthz", auth=None).status == 200
    ready = registry.request("GET", "/readyz", auth=None)
    assert ready.status == 200
    assert ready.json()["services"] == {"metadata": "serving", "blob": "serving", "iam": "serving"}
