"""CVSS v3.0 / v3.1 base scores from vector strings (FIRST's specification, section 7.1).

Only the base metric group is scored; temporal and environmental metrics in a vector are
accepted and ignored, as a base score ignores them.
"""

from __future__ import annotations

import math

from .errors import AnalysisError

_WEIGHTS: dict[str, dict[str, float]] = {
    "AV": {"N": 0.85, "A": 0.62, "L": 0.55, "P": 0.2},
    "AC": {"L": 0.77, "H": 0.44},
    "UI": {"N": 0.85, "R": 0.62},
    "C": {"H": 0.56, "L": 0.22, "N": 0.0},
    "I": {"H": 0.56, "L": 0.22, "N": 0.0},
    "A": {"H": 0.56, "L": 0.22, "N": 0.0},
}
# Privileges Required weighs more when the scope changes.
_PR = {"U": {"N": 0.85, "L": 0.62, "H": 0.27}, "C": {"N": 0.85, "L": 0.68, "H": 0.5}}
_BASE = ("AV", "AC", "PR", "UI", "S", "C", "I", "A")


def _roundup_31(value: float) -> float:
    """CVSS v3.1 Roundup: the smallest one-decimal number >= value, computed on integers so
    that floating-point noise (4.000000001) does not push a score up a tenth."""
    scaled = round(value * 100_000)
    if scaled % 10_000 == 0:
        return scaled / 100_000
    return (math.floor(scaled / 10_000) + 1) / 10.0


def _roundup_30(value: float) -> float:
    """CVSS v3.0 Roundup as the 3.0 specification defines it."""
    return math.ceil(value * 10) / 10


def parse_vector(vector: str) -> tuple[str, dict[str, str]]:
    """Split `CVSS:3.1/AV:N/…` into ("3.1", {"AV": "N", …}); AnalysisError when it is not a
    v3 vector or a base metric is missing or has an unknown value."""
    parts = vector.strip().split("/")
    if not parts or not parts[0].startswith("CVSS:3."):
        raise AnalysisError(f"not a CVSS v3 vector: {vector!r}")
    version = parts[0].removeprefix("CVSS:")
    metrics: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition(":")
        if not sep or key in metrics:
            raise AnalysisError(f"malformed CVSS vector {vector!r} at {part!r}")
        metrics[key] = value
    for key in _BASE:
        if key not in metrics:
            raise AnalysisError(f"CVSS vector {vector!r} lacks base metric {key}")
    if metrics["S"] not in _PR:
        raise AnalysisError(f"CVSS vector {vector!r}: unknown scope {metrics['S']!r}")
    for key, table in _WEIGHTS.items():
        if metrics[key] not in table:
            raise AnalysisError(f"CVSS vector {vector!r}: unknown value of {key}")
    if metrics["PR"] not in _PR["U"]:
        raise AnalysisError(f"CVSS vector {vector!r}: unknown value of PR")
    return version, metrics


def base_score(vector: str) -> float:
    """The base score (0.0 to 10.0, one decimal) of a CVSS v3.0 or v3.1 vector.

    Raises AnalysisError for anything that is not a complete v3 base vector.
    """
    version, m = parse_vector(vector)
    changed = m["S"] == "C"
    iss = 1 - (
        (1 - _WEIGHTS["C"][m["C"]]) * (1 - _WEIGHTS["I"][m["I"]]) * (1 - _WEIGHTS["A"][m["A"]])
    )
    # A changed scope weighs the impact non-linearly (specification 7.1).
    impact = 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15 if changed else 6.42 * iss
    exploitability = (
        8.22
        * _WEIGHTS["AV"][m["AV"]]
        * _WEIGHTS["AC"][m["AC"]]
        * _PR[m["S"]][m["PR"]]
        * _WEIGHTS["UI"][m["UI"]]
    )
    if impact <= 0:
        return 0.0
    roundup = _roundup_30 if version == "3.0" else _roundup_31
    total = (1.08 if changed else 1.0) * (impact + exploitability)
    return roundup(min(total, 10.0))


def severity_of_score(score: float) -> str:
    """The qualitative rating of a v3 score (CVSS v3.1 specification, section 5):
    9.0-10.0 CRITICAL, 7.0-8.9 HIGH, 4.0-6.9 MEDIUM, 0.1-3.9 LOW. A score of 0.0 ("None")
    is reported as LOW: the record says there is a vulnerability, and the scanner's scale has
    no "none"."""
    if score >= 9.0:
        return "CRITICAL"
    if score >= 7.0:
        return "HIGH"
    if score >= 4.0:
        return "MEDIUM"
    return "LOW"
