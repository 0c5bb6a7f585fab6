"""One trace per request across every hop: the mesh exports to an OTLP JSON file and a
push's manifest PUT and blob upload are followed from the gateway through metadata_svc
(and its KV transaction) and blob_svc, with correct parent links."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.conftest import Registry
from tests.e2e.images import build_image

# OTLP's SpanKind numbers.
SERVER, CLIENT = 2, 3


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, object]


def read_spans(path: Path) -> list[Span]:
    """Every span of an OTLP JSON lines file (one ExportTraceServiceRequest a line)."""
    spans = []
    for line in path.read_text().splitlines():
        for resource_spans in json.loads(line)["resourceSpans"]:
            attrs = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}
            service = attrs["service.name"]["stringValue"]
            for scope in resource_spans["scopeSpans"]:
                for s in scope["spans"]:
                    spans.append(
                        Span(
                            service=service,
                            name=s["name"],
                            trace_id=s["traceId"],
                            span_id=s["spanId"],
                            parent_id=s.get("parentSpanId", ""),
                            kind=s.get("kind", 0),
                            attributes={a["key"]: a["value"] for a in s.get("attributes", [])},
                        )
                    )
    return spans


def ancestors(span: Span, by_id: dict[str, Span]) -> list[Span]:
    chain = []
    while span.parent_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


def test_push_is_one_trace_across_processes(
    start_registry: Callable[..., Registry], tmp_path: Path
) -> None:
    traces = tmp_path / "traces.jsonl"
    reg = start_registry(ARTS_TRACES_FILE=str(traces))
    image = build_image(7, layers=2, files_per_layer=1, file_size=1024)
    reg.push_image("trace/app", image, "v1")
    garbled = reg.request("GET", "/v2/", headers={"traceparent": "00-not-a-trace-id-01"})
    assert garbled.status == 200
    reg.stop()  # flushes every process's exporter

    spans = read_spans(traces)
    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans), "span ids are unique"

    (put,) = [s for s in spans if s.name == "PUT /v2/{name}/manifests/{reference}"]
    assert (put.service, put.kind, put.parent_id) == ("gateway", SERVER, "")
    assert put.attributes["artifactstore.repository"] == {"stringValue": "trace/app"}
    in_trace = [s for s in spans if s.trace_id == put.trace_id]
    services = {s.service for s in in_trace}
    assert {"gateway", "metadata_svc"} <= services
    (server,) = [
        s for s in in_trace if s.name.endswith("MetadataService/PutManifest") and s.kind == SERVER
    ]
    assert server.service == "metadata_svc"
    chain = ancestors(server, by_id)
    assert chain[0].service == "gateway" and chain[-1] == put
    kv = [s for s in in_trace if s.name == "kv.transaction"]
    # Every KV transaction hangs under a metadata_svc server span (the manifest's own, or an
    # IAM decision the gateway asked for when its cache had expired), and one is the PUT's.
    assert all(
        any(a.service == "metadata_svc" and a.kind == SERVER for a in ancestors(s, by_id))
        for s in kv
    )
    assert any(server in ancestors(s, by_id) for s in kv)

    uploads = [s for s in spans if s.name == "PUT /v2/{name}/blobs/uploads/{upload_id}"]
    assert len(uploads) == len(image.blobs)
    for upload in uploads:
        commit = [
            s
            for s in spans
            if s.trace_id == upload.trace_id
            and s.name.endswith("BlobService/CommitUpload")
            and s.kind == SERVER
        ]
        assert [s.service for s in commit] == ["blob_svc"]
        assert ancestors(commit[0], by_id)[-1] == upload
        link = [
            s
            for s in spans
            if s.trace_id == upload.trace_id and s.name.endswith("LinkBlob") and s.kind == SERVER
        ]
        assert {s.service for s in link} == {"metadata_svc"}

    # A malformed traceparent is ignored: the request starts a trace of its own.
    roots = [s for s in spans if s.name == "GET /v2/" and s.parent_id == ""]
    assert roots
    assert not any(s.trace_id == "0" * 32 for s in spans)
