"""Debian version ordering (Debian Policy 5.6.12, the algorithm of `dpkg --compare-versions`).

A version is `[epoch:]upstream[-revision]`. The epoch compares numerically first; then the
upstream version and then the revision, each with the dpkg string comparison: alternate runs
of non-digits (compared character by character with the weights below) and digits (compared
as integers). A missing revision is the same as `0` — `1.0 == 1.0-0` — because dpkg compares
the absent revision as an empty string, which orders like a zero digit run.
"""

from __future__ import annotations

from ..errors import InvalidVersionError

_DIGITS = frozenset("0123456789")


def _weight(char: str) -> int:
    """The order of one character in a non-digit run: `~` sorts before everything, even the
    end of the run (weight 0 is the end); letters sort before all other characters."""
    if char == "~":
        return -1
    if char.isascii() and char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    """Compare an upstream version or a revision by dpkg's rules; returns -1, 0 or 1."""
    i = j = 0
    while i < len(a) or j < len(b):
        # The non-digit run: compare character weights, the end of a run weighs 0.
        while (i < len(a) and a[i] not in _DIGITS) or (j < len(b) and b[j] not in _DIGITS):
            wa = _weight(a[i]) if i < len(a) and a[i] not in _DIGITS else 0
            wb = _weight(b[j]) if j < len(b) and b[j] not in _DIGITS else 0
            if wa != wb:
                return -1 if wa < wb else 1
            i += 1
            j += 1
        # The digit run: leading zeros are insignificant, an empty run is zero.
        start_a, start_b = i, j
        while i < len(a) and a[i] in _DIGITS:
            i += 1
        while j < len(b) and b[j] in _DIGITS:
            j += 1
        na = int(a[start_a:i] or "0")
        nb = int(b[start_b:j] or "0")
        if na != nb:
            return -1 if na < nb else 1
    return 0


def parse(version: str) -> tuple[int, str, str]:
    """Split a Debian version into (epoch, upstream, revision).

    Raises InvalidVersionError for an empty version, a non-numeric epoch or an empty upstream
    part; other oddities (characters Policy forbids) are compared as dpkg would compare them.
    """
    text = version.strip()
    epoch = 0
    if ":" in text:
        head, text = text.split(":", 1)
        if not (head.isascii() and head.isdigit()):
            raise InvalidVersionError(f"dpkg version {version!r}: epoch is not a number")
        epoch = int(head)
    upstream, sep, revision = text.rpartition("-")
    if not sep:
        upstream, revision = text, ""
    if not upstream:
        # dpkg only warns about an upstream that does not start with a digit, but it
        # refuses an empty one.
        raise InvalidVersionError(f"dpkg version {version!r}: empty upstream version")
    return epoch, upstream, revision


def compare(a: str, b: str) -> int:
    """Order two Debian versions: negative when a < b, 0 when equal, positive when a > b.

    Raises InvalidVersionError when either side cannot be parsed (see `parse`).
    """
    epoch_a, up_a, rev_a = parse(a)
    epoch_b, up_b, rev_b = parse(b)
    if epoch_a != epoch_b:
        return -1 if epoch_a < epoch_b else 1
    return _compare_part(up_a, up_b) or _compare_part(rev_a, rev_b)
