"""The one exception type of the analysis library."""

from __future__ import annotations


class AnalysisError(Exception):
    """Anything that stops an analysis: a layer that is not a tar, a limit exceeded, a corrupt
    package database, an unreadable vulnerability database. The message says which input and
    what was wrong, so a scan worker can store it as the scan's failure reason verbatim."""


class InvalidVersionError(AnalysisError, ValueError):
    """A version string that the ecosystem's ordering cannot parse. Range evaluation treats
    it as "cannot decide" and skips the comparison rather than failing the scan."""
