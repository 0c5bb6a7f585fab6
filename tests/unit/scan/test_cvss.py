"""The CVSS v3 base score formula against scores published with the vectors."""

from __future__ import annotations

import json

import pytest

from scan_svc.analysis import AnalysisError
from scan_svc.analysis.cvss import base_score, severity_of_score

from .layers import DATA


def test_scores_match_the_scores_trivy_reports_carry() -> None:
    pairs = set()
    for path in (DATA / "trivy").glob("*.json"):
        for result in json.loads(path.read_text()).get("Results", []):
            for vuln in result.get("Vulnerabilities", []):
                for cvss in vuln.get("CVSS", {}).values():
                    if "V3Vector" in cvss:
                        pairs.add((cvss["V3Vector"], cvss["V3Score"]))
    assert len(pairs) >= 8  # both 3.0 and 3.1 vectors, unchanged and changed scope
    for vector, score in pairs:
        assert base_score(vector) == score, vector


@pytest.mark.parametrize(
    ("vector", "score"),
    [
        # NVD's published scores for these vectors.
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H", 7.5),  # PYSEC-2023-221 and others
        ("CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:U/C:H/I:L/A:L", 6.4),  # CVE-2024-6531
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
        ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:N/I:L/A:N", 3.3),
        ("CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:N", 8.1),
        ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0.0),  # no impact
        # Stored XSS by an administrator; temporal metrics do not change the base score.
        ("CVSS:3.1/AV:N/AC:L/PR:H/UI:R/S:C/C:L/I:L/A:N/E:P/RL:O", 4.8),
    ],
)
def test_known_scores(vector: str, score: float) -> None:
    assert base_score(vector) == score


@pytest.mark.parametrize(
    "vector",
    [
        "AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
        "CVSS:3.1/AV:N/AC:L",
        "CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
        "CVSS:2.0/AV:N",
    ],
)
def test_malformed_vectors(vector: str) -> None:
    with pytest.raises(AnalysisError):
        base_score(vector)


def test_ratings() -> None:
    assert [severity_of_score(s) for s in (10.0, 9.0, 8.9, 7.0, 6.9, 4.0, 3.9, 0.1, 0.0)] == [
        "CRITICAL",
        "CRITICAL",
        "HIGH",
        "HIGH",
        "MEDIUM",
        "MEDIUM",
        "LOW",
        "LOW",
        "LOW",
    ]
