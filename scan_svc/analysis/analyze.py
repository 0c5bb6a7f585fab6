"""The one entry point a scan worker calls: layers + database → report."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata

from .inventory import OSInfo, Package, collect, select
from .match import Finding, count_by_severity, match
from .osvdb import OsvDatabase
from .unpack import Layer, Limits, Skipped, unpack

ANALYZER_NAME = "artifactstore-offline"


def analyzer_version() -> str:
    """The installed version of this project (the analyzer's version in reports)."""
    try:
        return metadata.version("artifact-store")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class Options:
    """How to analyse.

    `comprehensive` keeps language packages owned by OS packages (Trivy's
    `--detection-priority comprehensive`); the default drops them. `scratch_parent` is the
    folder the temporary root filesystem is made in (the system's temp folder when None).
    """

    comprehensive: bool = False
    limits: Limits = field(default_factory=Limits)
    scratch_parent: str | None = None


@dataclass(frozen=True)
class Report:
    """The result of one analysis."""

    os: OSInfo | None
    packages: tuple[Package, ...]
    findings: tuple[Finding, ...]
    counts: dict[str, int]
    analyzer: str
    analyzer_version: str
    database_version: str
    layers: tuple[str, ...]
    skipped: tuple[Skipped, ...]


def analyze(layers: Iterable[Layer], db: OsvDatabase, options: Options | None = None) -> Report:
    """Unpack `layers` (in order, bottom first) into a temporary root, inventory it, match it
    against `db`, and return the report. The temporary root is removed before returning.

    Raises AnalysisError for unreadable layers, exceeded limits and corrupt package
    databases (the message says which layer or file).
    """
    opts = options or Options()
    with tempfile.TemporaryDirectory(prefix="arts-scan-", dir=opts.scratch_parent) as scratch:
        fs = unpack(layers, scratch, select, opts.limits)
        inventory = collect(fs, include_os_owned=opts.comprehensive)
    findings = tuple(match(inventory, db))
    return Report(
        os=inventory.os,
        packages=inventory.packages,
        findings=findings,
        counts=count_by_severity(findings),
        analyzer=ANALYZER_NAME,
        analyzer_version=analyzer_version(),
        database_version=db.version,
        layers=tuple(fs.layers),
        skipped=tuple(fs.skipped),
    )
