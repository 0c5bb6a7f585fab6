"""The figures of a run, summarised: per metric and registry the median over the rounds
with their min-max, and the ratio Artifact Store / Distribution of the medians — a win is
a ratio of at least 1 where higher is better and at most 1 where lower is better.

`table` is Markdown (it goes into the README as it is); `json_lines` is one JSON object
per row after one describing the run; `cpu_table` shows where the cores went while each
figure was measured (median cores busy per process, and `other`: the rest of the
machine), the first place to look for why a row loses — and whether other work on the
machine slowed the run.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.harness import Metric, Result

BASELINE = "distribution"
CANDIDATE = "artifact-store"
TITLES = {BASELINE: "Distribution", CANDIDATE: "Artifact Store"}
# Processes shown in the CPU table, per registry.
CPU_COLUMNS = {
    BASELINE: ("registry", "client", "other"),
    CANDIDATE: ("gateway", "metadata", "blob", "scan", "client", "other"),
}


@dataclass
class Series:
    """One metric's values for one registry, round by round, with the CPU use."""

    values: list[float] = field(default_factory=list)
    cpu: list[Mapping[str, float]] = field(default_factory=list)

    @property
    def median(self) -> float:
        """The median value."""
        return statistics.median(self.values)

    def cores(self) -> dict[str, float]:
        """The median cores busy per process."""
        names = {name for sample in self.cpu for name in sample}
        return {
            name: round(statistics.median(s.get(name, 0.0) for s in self.cpu), 2)
            for name in sorted(names)
        }

    def summary(self) -> dict[str, Any]:
        """Median, min, max and every round's value (for JSON)."""
        return {
            "median": round(self.median, 3),
            "min": round(min(self.values), 3),
            "max": round(max(self.values), 3),
            "rounds": [round(v, 3) for v in self.values],
            "cores": self.cores(),
        }


@dataclass
class Row:
    """One metric across both registries."""

    metric: Metric
    series: dict[str, Series] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether both registries have values."""
        return all(self.series.get(k) and self.series[k].values for k in (BASELINE, CANDIDATE))

    @property
    def ratio(self) -> float:
        """Artifact Store's median over Distribution's."""
        base = self.series[BASELINE].median
        return self.series[CANDIDATE].median / base if base else float("inf")

    @property
    def wins(self) -> bool:
        """Whether Artifact Store meets the goal on this row."""
        if self.metric.ceiling is not None:
            return self.series[CANDIDATE].median < self.metric.ceiling
        return self.ratio >= 1 if self.metric.higher_is_better else self.ratio <= 1

    @property
    def goal(self) -> str:
        """The goal as the table states it: a ratio of 1 or the absolute ceiling."""
        if self.metric.ceiling is not None:
            return f"< {_number(self.metric.ceiling)} {self.metric.unit}"
        return "≥ 1x" if self.metric.higher_is_better else "≤ 1x"


def collect(records: Iterable[tuple[str, Result]]) -> list[Row]:
    """Rows in the order their metrics first appear, from (registry, result) pairs."""
    rows: dict[str, Row] = {}
    for target, result in records:
        row = rows.setdefault(result.metric.id, Row(result.metric))
        series = row.series.setdefault(target, Series())
        series.values.append(result.value)
        series.cpu.append(result.cpu)
    return list(rows.values())


def _number(value: float) -> str:
    if value != value:  # NaN: nothing was measured
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(series: Series | None) -> str:
    if series is None or not series.values:
        return "-"
    if len(series.values) == 1:
        return _number(series.median)
    low, high = min(series.values), max(series.values)
    return f"{_number(series.median)} ({_number(low)}-{_number(high)})"


def table(rows: list[Row]) -> str:
    """The figures as a Markdown table: median (min-max) per registry, ratio, verdict."""
    lines = [
        f"| scenario | metric | {TITLES[BASELINE]} | {TITLES[CANDIDATE]} | ratio | goal |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        m = row.metric
        arrow = "↑" if m.higher_is_better else "↓"
        ratio, verdict = ("-", "")
        if row.complete:
            ratio = f"{row.ratio:.2f}x"
            verdict = f"{row.goal}: " + ("win" if row.wins else "**lose**")
        lines.append(
            f"| {m.scenario} | {m.name} ({m.unit} {arrow}) | "
            f"{_cell(row.series.get(BASELINE))} | {_cell(row.series.get(CANDIDATE))} | "
            f"{ratio} | {verdict} |"
        )
    return "\n".join(lines)


def cpu_table(rows: list[Row]) -> str:
    """Median cores busy per process while each throughput or time figure was measured."""
    header = [f"{TITLES[t]} {p}" for t, procs in CPU_COLUMNS.items() for p in procs]
    lines = [
        "| scenario | metric | " + " | ".join(header) + " |",
        "|---|---|" + "---:|" * len(header),
    ]
    for row in rows:
        if row.metric.unit == "ms" or not row.complete:
            continue
        cells = []
        for target, procs in CPU_COLUMNS.items():
            cores = row.series[target].cores()
            cells += [f"{cores[p]:.2f}" if p in cores else "-" for p in procs]
        lines.append(f"| {row.metric.scenario} | {row.metric.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def background_cores(rows: list[Row]) -> float:
    """The median of the cores other work on the machine used while figures were
    measured (0 on a quiet machine)."""
    samples = [
        cpu["other"]
        for row in rows
        for series in row.series.values()
        for cpu in series.cpu
        if "other" in cpu
    ]
    return statistics.median(samples) if samples else 0.0


def json_lines(rows: list[Row], run: Mapping[str, Any]) -> list[str]:
    """The run's description, then one JSON object per row."""
    out = [json.dumps({"run": run})]
    for row in rows:
        m = row.metric
        doc: dict[str, Any] = {
            "metric": m.id,
            "scenario": m.scenario,
            "name": m.name,
            "unit": m.unit,
            "better": "higher" if m.higher_is_better else "lower",
        }
        for target, series in row.series.items():
            doc[target] = series.summary()
        if row.complete:
            doc["ratio"] = round(row.ratio, 3)
            doc["goal"] = row.goal
            doc["wins"] = row.wins
        out.append(json.dumps(doc))
    return out
