"""SemVer 2.0.0 ordering for npm and Go, with the normalisations those ecosystems need.

Go module versions carry a `v` (`v1.2.3`, pseudo-versions `v0.0.0-2022…-33da011f77ad`) that
OSV records strip; Go toolchain versions (`go1.19.8`, `go1.21`, `go1.21rc2`) are not SemVer
at all and are mapped the way OSV's Go `stdlib` records number them: `go1.21` is
`1.21.0`, `go1.21rc2` is `1.21.0-rc.2`. Anything else that is not SemVer (the vendor build
`go1.25-20250209-RC00`) raises InvalidVersionError, so it matches nothing.
"""

from __future__ import annotations

import re
from functools import lru_cache

import semver

from ..errors import InvalidVersionError

# go1.N, go1.N.P, go1.NrcK, go1.NbetaK (and the same without "go", as OSV writes them).
_GO_TOOLCHAIN = re.compile(r"^(?:go)?(\d+)\.(\d+)(?:\.(\d+))?(?:(rc|beta|alpha)(\d+))?$")


def normalize_go(version: str) -> str:
    """Map a Go toolchain or module version to SemVer text.

    `go1.19.8` → `1.19.8`, `go1.21` → `1.21.0`, `go1.21rc2` → `1.21.0-rc.2`, `v1.2.3` →
    `1.2.3`; a build-info suffix after a space (`go1.22.1 X:boringcrypto`) is dropped. Other
    strings are returned without their `v` and left for the SemVer parser to judge.
    """
    text = version.strip().split(" ", 1)[0]
    m = _GO_TOOLCHAIN.match(text)
    if m is not None and text.startswith("go"):
        major, minor, patch, pre, pre_number = m.groups()
        base = f"{major}.{minor}.{patch or 0}"
        return f"{base}-{pre}.{pre_number}" if pre else base
    if text.startswith("v"):
        return text[1:]
    return text


@lru_cache(maxsize=65536)
def parse(version: str) -> semver.Version:
    """Parse strict SemVer 2.0.0 text (a leading `v` is tolerated, as npm does)."""
    text = version.strip()
    if text.startswith(("v", "=")):
        text = text[1:]
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError) as exc:
        raise InvalidVersionError(f"not a SemVer version: {version!r}") from exc


def compare(a: str, b: str) -> int:
    """Order two SemVer versions (build metadata ignored): -1, 0 or 1."""
    return parse(a).compare(parse(b))


def compare_go(a: str, b: str) -> int:
    """Order two Go versions (toolchain or module) after `normalize_go`."""
    return compare(normalize_go(a), normalize_go(b))
