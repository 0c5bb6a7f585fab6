"""Which spans a process records: everything when it exports, only what its callers
sampled when it exports nothing; context flows either way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from artifactstore.telemetry import tracer_provider

CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736


def caller(flags: TraceFlags) -> Context:
    """The context a request arrives with from a caller whose span has `flags`."""
    parent = SpanContext(CALLER_TRACE, 0x00F067AA0BA902B7, is_remote=True, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(parent))


def tracer(provider: TracerProvider) -> trace.Tracer:
    return provider.get_tracer(__name__)


def test_without_an_exporter_new_traces_are_ids_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    provider = tracer_provider("svc", {})
    with tracer(provider).start_as_current_span("GET /v2/") as span:
        assert not span.is_recording()
        context = span.get_span_context()
        # Still a trace for log lines and for the calls this request makes.
        assert context.is_valid
        assert not context.trace_flags.sampled
        with tracer(provider).start_as_current_span("call") as child:
            assert child.get_span_context().trace_id == context.trace_id
            assert child.get_span_context().span_id != context.span_id


def test_without_an_exporter_a_callers_sampling_decision_carries_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    provider = tracer_provider("svc", {})
    sampled = tracer(provider).start_span("rpc", context=caller(TraceFlags(TraceFlags.SAMPLED)))
    assert sampled.is_recording()
    assert sampled.get_span_context().trace_flags.sampled
    assert sampled.get_span_context().trace_id == CALLER_TRACE
    unsampled = tracer(provider).start_span("rpc", context=caller(TraceFlags(TraceFlags.DEFAULT)))
    assert not unsampled.is_recording()
    assert unsampled.get_span_context().trace_id == CALLER_TRACE


def test_an_exporting_process_records_new_traces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    path = tmp_path / "traces.jsonl"
    provider = tracer_provider("svc", {"ARTS_TRACES_FILE": str(path)})
    with tracer(provider).start_as_current_span("GET /v2/") as span:
        assert span.is_recording()
        assert span.get_span_context().trace_flags.sampled
    provider.shutdown()
    [line] = path.read_text().splitlines()
    [resource] = json.loads(line)["resourceSpans"]
    [scope] = resource["scopeSpans"]
    assert [s["name"] for s in scope["spans"]] == ["GET /v2/"]


def test_a_named_sampler_wins_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    provider = tracer_provider("svc", {"OTEL_TRACES_SAMPLER": "always_on"})
    assert tracer(provider).start_span("GET /v2/").is_recording()
