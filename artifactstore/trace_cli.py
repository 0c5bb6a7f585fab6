"""`artifact-store trace show <trace-id>` and `artifact-store trace slowest`: waterfalls of
traces read from the OTLP JSON file the mesh writes with ARTS_TRACES_FILE, for when no
tracing backend is at hand."""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# OTLP's span kinds and status codes, by number.
KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
ERROR = 2
BAR_WIDTH = 40


@dataclass(frozen=True)
class Span:
    """One span of an OTLP JSON export."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    attributes: dict[str, Any] = field(default_factory=dict)
    links: tuple[str, ...] = ()

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def status(self) -> str:
        http = self.attributes.get("http.response.status_code")
        if http is not None:
            return str(http)
        return "error" if self.status_code == ERROR else "ok"


def _value(v: dict[str, Any]) -> Any:
    # OTLP JSON wraps each attribute value in its type: {"stringValue": …}, {"intValue": …}.
    return next(iter(v.values()), None)


def read_spans(path: Path) -> list[Span]:
    """Every span of an OTLP JSON lines file (one ExportTraceServiceRequest per line)."""
    spans = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        for resource_spans in json.loads(line).get("resourceSpans", []):
            resource = {
                a["key"]: _value(a["value"]) for a in resource_spans["resource"]["attributes"]
            }
            service = str(resource.get("service.name", "?"))
            for scope in resource_spans.get("scopeSpans", []):
                for s in scope.get("spans", []):
                    spans.append(
                        Span(
                            service=service,
                            name=s["name"],
                            trace_id=s["traceId"],
                            span_id=s["spanId"],
                            parent_id=s.get("parentSpanId", ""),
                            kind=s.get("kind", 0),
                            start_ns=int(s["startTimeUnixNano"]),
                            end_ns=int(s["endTimeUnixNano"]),
                            status_code=s.get("status", {}).get("code", 0),
                            attributes={
                                a["key"]: _value(a["value"]) for a in s.get("attributes", [])
                            },
                            links=tuple(link["traceId"] for link in s.get("links", [])),
                        )
                    )
    return spans


def _tree(spans: list[Span]) -> Iterator[tuple[int, Span]]:
    """Spans depth-first from the roots, children by start time, with their depth."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        children[s.parent_id if s.parent_id in ids else ""].append(s)

    def walk(parent: str, depth: int) -> Iterator[tuple[int, Span]]:
        for s in sorted(children[parent], key=lambda x: x.start_ns):
            yield depth, s
            yield from walk(s.span_id, depth + 1)

    return walk("", 0)


def waterfall(spans: list[Span]) -> str:
    """A trace as text: one line per span with its offset, a bar, duration, service, name
    and status, indented under its parent."""
    start = min(s.start_ns for s in spans)
    total = max(s.end_ns for s in spans) - start or 1
    root = min(spans, key=lambda s: (s.parent_id != "", s.start_ns))
    lines = [f"trace {root.trace_id}  {root.name}  {total / 1e6:.1f} ms  {len(spans)} spans"]
    for depth, s in _tree(spans):
        left = round((s.start_ns - start) / total * BAR_WIDTH)
        width = max(1, round((s.end_ns - s.start_ns) / total * BAR_WIDTH))
        bar = (" " * left + "█" * width).ljust(BAR_WIDTH)[:BAR_WIDTH]
        offset = (s.start_ns - start) / 1e6
        lines.append(
            f"{offset:8.1f} ms |{bar}| {s.duration_ms:8.1f} ms  {s.service:<13} "
            f"{'  ' * depth}{s.name}  [{KINDS.get(s.kind, '-')} {s.status}]"
        )
        for linked in s.links:
            lines.append(
                f"{'':>14}{'':{BAR_WIDTH}}{'':>15}{'  ' * depth}  ↳ linked to trace {linked}"
            )
    return "\n".join(lines)


def slowest(spans: Iterable[Span], route: str, limit: int) -> list[Span]:
    """The slowest trace roots (spans without a parent), optionally of one route."""
    roots = [
        s
        for s in spans
        if not s.parent_id
        and (not route or route in (s.attributes.get("http.route"), s.name) or route in s.name)
    ]
    return sorted(roots, key=lambda s: s.duration_ms, reverse=True)[:limit]


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `trace show` and `trace slowest`."""
    trace = commands.add_parser(
        "trace", help="show traces from the OTLP JSON file (ARTS_TRACES_FILE)"
    )
    sub = trace.add_subparsers(dest="trace_command", required=True, metavar="COMMAND")
    show = sub.add_parser("show", help="the waterfall of one trace")
    show.add_argument("trace_id")
    top = sub.add_parser("slowest", help="the slowest traces, slowest first")
    top.add_argument("--route", default="", help="only requests of this route (template or name)")
    top.add_argument("--limit", type=int, default=10)
    for parser in (show, top):
        parser.add_argument(
            "--file", type=Path, default=None, help="OTLP JSON file (default: ARTS_TRACES_FILE)"
        )


def run(args: argparse.Namespace, default_file: str) -> int:
    """Run a `trace` command; the exit status."""
    path = args.file or (Path(default_file) if default_file else None)
    if path is None or not path.exists():
        print(
            "no trace file: set ARTS_TRACES_FILE (as the mesh had it) or pass --file",
            file=sys.stderr,
        )
        return 2
    spans = read_spans(path)
    if args.trace_command == "show":
        found = [s for s in spans if s.trace_id == args.trace_id.lower()]
        if not found:
            print(f"trace {args.trace_id} is not in {path}", file=sys.stderr)
            return 1
        print(waterfall(found))
        return 0
    for root in slowest(spans, args.route, args.limit):
        took = f"{root.duration_ms:10.1f} ms"
        print(f"{took}  {root.trace_id}  {root.service:<13} {root.name}  [{root.status}]")
    return 0
