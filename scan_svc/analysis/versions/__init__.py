"""Version orderings, one per ecosystem, behind one function.

`compare(ecosystem, a, b)` returns a negative number, zero or a positive number like a
classic comparator. The ecosystem is an OSV ecosystem name, with or without its release
suffix (`Debian:12`, `Alpine:v3.19`, `PyPI`, `npm`, `Go`), or `SEMVER` for the ordering of
OSV `SEMVER` ranges. A version the ordering cannot parse raises InvalidVersionError; an
ecosystem without an ordering raises AnalysisError (callers check `supports` first).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import AnalysisError
from . import apk, dpkg, pep440, semantic

Comparator = Callable[[str, str], int]

_ORDERINGS: dict[str, Comparator] = {
    "Debian": dpkg.compare,
    "Ubuntu": dpkg.compare,
    "Alpine": apk.compare,
    "Wolfi": apk.compare,
    "Chainguard": apk.compare,
    "PyPI": pep440.compare,
    "npm": semantic.compare,
    "Go": semantic.compare_go,
    "SEMVER": semantic.compare,
}


def base_ecosystem(ecosystem: str) -> str:
    """`Debian:12` → `Debian`: the ecosystem without its release suffix."""
    return ecosystem.split(":", 1)[0]


def supports(ecosystem: str) -> bool:
    """True when `compare` has an ordering for this ecosystem."""
    return base_ecosystem(ecosystem) in _ORDERINGS


def comparator(ecosystem: str) -> Comparator:
    """The comparison function of an ecosystem; AnalysisError when there is none."""
    try:
        return _ORDERINGS[base_ecosystem(ecosystem)]
    except KeyError:
        raise AnalysisError(f"no version ordering for ecosystem {ecosystem!r}") from None


def compare(ecosystem: str, a: str, b: str) -> int:
    """Compare versions `a` and `b` of `ecosystem`: <0, 0 or >0.

    Raises InvalidVersionError when a version does not parse in that ecosystem and
    AnalysisError when the ecosystem has no ordering.
    """
    return comparator(ecosystem)(a, b)


__all__ = ["Comparator", "base_ecosystem", "comparator", "compare", "supports"]
