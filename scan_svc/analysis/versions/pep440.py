"""PyPI version ordering (PEP 440) with `packaging`.

`packaging` >= 22 rejects the legacy, non-PEP 440 versions that old OSV records still list
(`0.5.2dev_r42`); those raise InvalidVersionError here and range evaluation skips that one
comparison instead of guessing an order (osv.dev falls back to `packaging-legacy`; a version
that PEP 440 cannot order is not one this scanner claims to know about).
"""

from __future__ import annotations

from functools import lru_cache

from packaging.version import InvalidVersion, Version

from ..errors import InvalidVersionError


@lru_cache(maxsize=65536)
def parse(version: str) -> Version:
    """Parse a PEP 440 version (normalised: `1.0RC1 == 1.0rc1`, a leading `v` allowed)."""
    try:
        return Version(version)
    except InvalidVersion as exc:
        raise InvalidVersionError(f"not a PEP 440 version: {version!r}") from exc


def compare(a: str, b: str) -> int:
    """Order two PEP 440 versions: -1, 0 or 1. Raises InvalidVersionError."""
    va, vb = parse(a), parse(b)
    return (va > vb) - (va < vb)
