"""OSV range evaluation: is a version affected by one `affected[]` entry, and which fix is next.

The rules (OSV schema, "Evaluation"): the events of a range are put in version order;
walking them, `introduced` opens an affected span (`"0"` means from the beginning), `fixed`
closes it before the fixed version, `last_affected` closes it after that version, and `limit`
caps the whole range (`"*"` means no cap). Several introduced/fixed pairs describe several
release branches. A version listed in `versions` is affected whatever the ranges say.

ECOSYSTEM ranges use the ecosystem's ordering, SEMVER ranges SemVer (Go versions normalised).
A range whose versions the ordering cannot parse is skipped: "cannot decide" is not
evidence of being affected. Ranges of ecosystems without an ordering are skipped too; only
their `versions` list can match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cmp_to_key
from typing import Any

from . import versions
from .errors import InvalidVersionError
from .osv import Affected, Event, Range
from .versions import Comparator, semantic


@dataclass(frozen=True)
class Evaluation:
    """The verdict for one version against one affected entry."""

    affected: bool
    fixed_version: str = ""


def range_comparator(range_type: str, ecosystem: str) -> Comparator | None:
    """The ordering a range of `range_type` in `ecosystem` is evaluated with, if any."""
    if range_type == "SEMVER":
        return (
            semantic.compare_go
            if versions.base_ecosystem(ecosystem) == "Go"
            else (semantic.compare)
        )
    if versions.supports(ecosystem):
        return versions.comparator(ecosystem)
    return None


def _event_key(compare: Comparator) -> Callable[[Event], Any]:
    def order(a: Event, b: Event) -> int:
        # "0" is the beginning of time for introduced events; no other event can equal it.
        if a.value == "0" and a.kind == "introduced":
            return 0 if (b.value == "0" and b.kind == "introduced") else -1
        if b.value == "0" and b.kind == "introduced":
            return 1
        return compare(a.value, b.value)

    key: Callable[[Event], Any] = cmp_to_key(order)
    return key


def in_range(version: str, rng: Range, compare: Comparator) -> bool:
    """True when `version` falls in `rng` (see the module docstring); raises
    InvalidVersionError when a version involved does not parse."""
    # Parse the version itself first: "introduced 0" alone compares nothing, and a version
    # the ordering cannot read must not be "affected since the beginning".
    compare(version, version)
    events = sorted(rng.events, key=_event_key(compare))
    affected = False
    for event in events:
        if event.kind == "introduced":
            if event.value == "0" or compare(version, event.value) >= 0:
                affected = True
        elif event.kind == "fixed":
            if compare(version, event.value) >= 0:
                affected = False
        elif event.kind == "last_affected":
            if compare(version, event.value) > 0:
                affected = False
        elif event.kind == "limit" and event.value != "*" and compare(version, event.value) >= 0:
            return False
    return affected


def _listed(version: str, listed: tuple[str, ...], compare: Comparator | None) -> bool:
    if version in listed:
        return True
    if compare is None:
        return False
    for candidate in listed:
        try:
            if compare(version, candidate) == 0:
                return True
        except InvalidVersionError:
            # Legacy strings in old records' lists (`0.5.2dev_r42`) cannot equal a version
            # this ordering parses; skip them.
            continue
    return False


def next_fixed(version: str, entry: Affected) -> str:
    """The lowest `fixed` version of `entry` above `version` — the upgrade that leaves the
    affected span the version is in — or "" when there is none."""
    best = ""
    best_compare: Comparator | None = None
    for rng in entry.ranges:
        compare = range_comparator(rng.type, entry.ecosystem)
        if compare is None:
            continue
        for event in rng.events:
            if event.kind != "fixed":
                continue
            try:
                if compare(event.value, version) <= 0:
                    continue
                if not best or (best_compare is not None and compare(event.value, best) < 0):
                    best, best_compare = event.value, compare
            except InvalidVersionError:
                continue
    return best


def evaluate(version: str, entry: Affected) -> Evaluation:
    """Is `version` of the entry's package affected? Returns the verdict and the next fix.

    Never raises for unparseable versions: such comparisons are skipped (documented above).
    """
    hit = False
    for rng in entry.ranges:
        compare = range_comparator(rng.type, entry.ecosystem)
        if compare is None:
            continue
        try:
            if in_range(version, rng, compare):
                hit = True
                break
        except InvalidVersionError:
            continue
    if not hit and entry.versions:
        compare = range_comparator("ECOSYSTEM", entry.ecosystem)
        hit = _listed(version, entry.versions, compare)
    if not hit:
        return Evaluation(False)
    return Evaluation(True, next_fixed(version, entry))
