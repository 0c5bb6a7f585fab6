"""The offline image analyzer: unpack layers, inventory packages, match OSV advisories.

Pure library code (no gRPC, no registry access). The scan worker calls `analyze` with the
image's layer blobs and an `OsvDatabase`, and stores the `Report`'s findings as Parquet.
Every failure is an `AnalysisError` whose message names the input at fault.
"""

from .analyze import ANALYZER_NAME, Options, Report, analyze, analyzer_version
from .errors import AnalysisError, InvalidVersionError
from .inventory import Inventory, OSInfo, Package
from .match import SEVERITIES, Finding, count_by_severity
from .osvdb import Match, OsvDatabase, Source
from .unpack import Layer, Limits, RootFS, Skipped

__all__ = [
    "ANALYZER_NAME",
    "SEVERITIES",
    "AnalysisError",
    "Finding",
    "InvalidVersionError",
    "Inventory",
    "Layer",
    "Limits",
    "Match",
    "OSInfo",
    "Options",
    "OsvDatabase",
    "Package",
    "Report",
    "RootFS",
    "Skipped",
    "Source",
    "analyze",
    "analyzer_version",
    "count_by_severity",
]
