"""Alpine version ordering (the rules of apk-tools' `apk version -t`), written from the
grammar `digits{.digits}[letter]{_suffix[digits]}[~hexhash][-r<digits>]`.

A version is read as a sequence of tokens, each of one kind. Two versions are compared token
by token while both sides sit on the same kind:

* numbers compare numerically, except that a number after the first one whose text starts
  with `0` is compared as a string on both sides (so `1.02 < 1.1`, as apk does);
* the letter after the numbers compares by character;
* suffixes compare in the order `_alpha < _beta < _pre < _rc < (none) < _cvs < _svn < _git <
  _hg < _p`, their optional numbers numerically;
* the `~hash` compares as a string and the `-rN` revision numerically.

When the two sides reach different kinds of token (or one has ended), a side sitting on a
pre-release suffix (`_alpha` … `_rc`) is lower; otherwise the side whose token kind comes
earlier in `number < letter < suffix < suffix number < ~hash < -r revision < end` is higher —
so `1.2 < 1.2.1`, `1.2.3 < 1.2.3-r0` and `1.2.3_p1 > 1.2.3-r1`.

A string that breaks the grammar is compared as apk compares it: token by token up to the
first token that does not parse, and from there as a plain string comparison of the two whole
versions (so `23_foo > 4_beta` is decided by `23 > 4`, while `1.0 < 1.0bc` falls back to the
string order).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator

# Pre-release suffixes are negative: they sort below "no suffix" (0).
_SUFFIXES = {
    "alpha": -4,
    "beta": -3,
    "pre": -2,
    "rc": -1,
    "cvs": 1,
    "svn": 2,
    "git": 3,
    "hg": 4,
    "p": 5,
}
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9a-f]+")
_SUFFIX = re.compile(r"_([a-z]+)")


class Kind(enum.IntEnum):
    """Token kinds in the order that decides a comparison between different kinds: a lower
    kind is a longer, hence higher, version (see the module docstring)."""

    NUMBER = 0
    LETTER = 1
    SUFFIX = 2
    SUFFIX_NUMBER = 3
    HASH = 4
    REVISION = 5
    END = 6
    INVALID = 7


Token = tuple[Kind, str]


def _tokens(version: str) -> Iterator[Token]:
    """Yield the tokens of `version`; an INVALID token ends the stream where the grammar
    breaks, an END token where the version ends properly."""
    pos = 0
    m = _DIGITS.match(version, pos)
    if m is None:
        yield Kind.INVALID, ""
        return
    yield Kind.NUMBER, m.group()
    pos = m.end()
    # More numbers, each after a dot.
    while version.startswith(".", pos):
        m = _DIGITS.match(version, pos + 1)
        if m is None:
            yield Kind.INVALID, ""
            return
        yield Kind.NUMBER, m.group()
        pos = m.end()
    # One optional letter, which must not be followed by another letter or a digit.
    if pos < len(version) and "a" <= version[pos] <= "z":
        yield Kind.LETTER, version[pos]
        pos += 1
    # Suffixes, each optionally numbered.
    while version.startswith("_", pos):
        m = _SUFFIX.match(version, pos)
        if m is None or m.group(1) not in _SUFFIXES:
            yield Kind.INVALID, ""
            return
        yield Kind.SUFFIX, m.group(1)
        pos = m.end()
        m = _DIGITS.match(version, pos)
        if m is not None:
            yield Kind.SUFFIX_NUMBER, m.group()
            pos = m.end()
    if version.startswith("~", pos):
        m = _HEX.match(version, pos + 1)
        if m is None:
            yield Kind.INVALID, ""
            return
        yield Kind.HASH, m.group()
        pos = m.end()
    if version.startswith("-r", pos):
        m = _DIGITS.match(version, pos + 2)
        if m is None:
            yield Kind.INVALID, ""
            return
        yield Kind.REVISION, m.group()
        pos = m.end()
    yield (Kind.END, "") if pos == len(version) else (Kind.INVALID, "")


def is_valid(version: str) -> bool:
    """True when `version` follows apk's version grammar completely."""
    return all(kind is not Kind.INVALID for kind, _ in _tokens(version))


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def _string_compare(a: str, b: str) -> int:
    return _sign((a > b) - (a < b))


def _compare_values(kind: Kind, a: str, b: str, first_number: bool) -> int:
    """Compare two tokens of the same kind."""
    if kind is Kind.NUMBER:
        # A later component with a leading zero is a string ("1.02" < "1.1"): apk's rule.
        if not first_number and (a.startswith("0") or b.startswith("0")):
            return _string_compare(a, b)
        return _sign(int(a) - int(b))
    if kind in (Kind.SUFFIX_NUMBER, Kind.REVISION):
        return _sign(int(a) - int(b))
    if kind is Kind.SUFFIX:
        return _sign(_SUFFIXES[a] - _SUFFIXES[b])
    return _string_compare(a, b)


def compare(a: str, b: str) -> int:
    """Order two Alpine package versions: -1 when a < b, 0 when equal, 1 when a > b.

    Never raises: strings outside the grammar fall back to a string comparison from the
    first token that does not parse, like apk itself.
    """
    tokens_a, tokens_b = _tokens(a), _tokens(b)
    first = True
    while True:
        kind_a, value_a = next(tokens_a)
        kind_b, value_b = next(tokens_b)
        if Kind.INVALID in (kind_a, kind_b):
            return _string_compare(a, b)
        if kind_a is not kind_b:
            break
        if kind_a is Kind.END:
            return 0
        result = _compare_values(kind_a, value_a, value_b, first)
        if result:
            return result
        first = False
    # Different kinds: a pre-release suffix loses, otherwise the longer version wins.
    if kind_a is Kind.SUFFIX and _SUFFIXES[value_a] < 0:
        return -1
    if kind_b is Kind.SUFFIX and _SUFFIXES[value_b] < 0:
        return 1
    return -1 if kind_a > kind_b else 1
