"""Telemetry set-up for one process: its service.name, W3C trace context propagation and
the exporter the standard OTEL_* variables choose.

`OTEL_TRACES_EXPORTER` picks `otlp` (protocol from `OTEL_EXPORTER_OTLP_PROTOCOL`:
`grpc` or `http/protobuf`), `console` or `none`; unset means nothing is exported.
`ARTS_TRACES_FILE` appends every exported batch to a file as one OTLP JSON line, for use
with no backend at hand. Sampler, resource attributes and endpoints come from the SDK's own
OTEL_* handling.

A process that exports nothing (and names no OTEL_TRACES_SAMPLER) records only the spans
whose caller sampled them: the rest stay non-recording, still with trace and span ids, so
context flows between processes and log lines name their trace. Recording spans nobody
reads cost about a fifth of the CPU of a manifest GET.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import json_format
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import Link

log = logging.getLogger(__name__)

# The sampler of a process that exports nothing: new traces are not recorded.
_CALLERS_ONLY = ParentBased(root=ALWAYS_OFF)


class OtlpJsonFileExporter(SpanExporter):
    """Appends each batch as one line of OTLP JSON (an ExportTraceServiceRequest), the
    form the OpenTelemetry Collector's file exporter writes."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the batch; ids are hex strings as OTLP JSON requires, not base64."""
        message = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
        _hex_ids(message)
        line = json.dumps(message, separators=(",", ":")) + "\n"
        with self._lock, open(self._path, "a", encoding="utf-8") as f:
            f.write(line)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: the file is opened per batch."""


def _hex_ids(node: Any) -> None:
    """Rewrite protobuf-JSON's base64 trace and span ids into OTLP JSON's hex form."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"traceId", "spanId", "parentSpanId"} and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in filter(None, (n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "").split(","))):
        if name == "none":
            continue
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = env.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            )
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter as GrpcExporter,
                )

                exporters.append(GrpcExporter())
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter as HttpExporter,
                )

                exporters.append(HttpExporter())
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored", name)
    if path := env.get("ARTS_TRACES_FILE"):
        exporters.append(OtlpJsonFileExporter(path))
    return exporters


# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message, the fields given
    with `extra=`, and the current trace and span ids, so a log line leads to its trace.
    (A dozen lines of our own rather than another dependency.)"""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        context = trace.get_current_span().get_span_context()
        if context.is_valid and "trace_id" not in entry:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(service_name: str, *, debug: bool) -> None:
    """Log to stderr: JSON lines when it is not a terminal, readable text when it is;
    debug level when `debug` (DEBUG=true)."""
    handler = logging.StreamHandler()
    if sys.stderr.isatty():
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {service_name} %(name)s: %(message)s")
        )
    else:
        formatter = JsonFormatter(service_name)
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def current_context() -> dict[str, str]:
    """The current W3C trace context as a carrier, for work queued to run elsewhere."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def links_to(carrier: dict[str, str]) -> list[Link]:
    """A link to the span whose context `carrier` holds (none when it holds none), so
    queued work's own trace leads back to whatever queued it."""
    carried = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    return [Link(carried)] if carried.is_valid else []


def tracer_provider(service_name: str, env: Mapping[str, str]) -> TracerProvider:
    """The tracer provider the OTEL_* variables in `env` describe (the SDK reads
    OTEL_TRACES_SAMPLER from the process environment itself)."""
    exporters = _exporters(env)
    # Spans a caller sampled are still recorded, so that its trace stays whole through a
    # process that exports nothing to the services behind it that do.
    sampler = None if exporters or "OTEL_TRACES_SAMPLER" in env else _CALLERS_ONLY
    provider = TracerProvider(
        sampler=sampler, resource=Resource.create({"service.name": service_name})
    )
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def setup(service_name: str, *, debug: bool = False) -> TracerProvider:
    """Configure logging and the global tracer provider for this process."""
    setup_logging(service_name, debug=debug)
    provider = tracer_provider(service_name, os.environ)
    trace.set_tracer_provider(provider)
    return provider
