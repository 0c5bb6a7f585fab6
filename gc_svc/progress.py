"""What a GC cycle has done so far, per category, and what this process has reclaimed
since it started: the numbers GetStatus and `artifact-store gc status` show."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import Counter

from artifactstore import metrics
from artifactstore.gc.v1 import gc_pb2 as pb

ORPHANED_BLOBS = "orphaned_blobs"
DELETED_REPOSITORIES = "deleted_repositories"
ABANDONED_UPLOADS = "abandoned_uploads"
EXPIRED_UPLOADS = "expired_uploads"
UNTAGGED_MANIFESTS = "untagged_manifests"
# The order of the GC table in DESIGN.md, then the optional category.
CATEGORIES = (
    ORPHANED_BLOBS,
    DELETED_REPOSITORIES,
    ABANDONED_UPLOADS,
    EXPIRED_UPLOADS,
    UNTAGGED_MANIFESTS,
)

MARK = "mark"
SWEEP = "sweep"
UPLOADS = "uploads"
QUEUES = "queues"
DONE = "done"


@dataclass
class Counts:
    """One category's counts (see CategoryStats in gc.proto)."""

    marked: int = 0
    swept: int = 0
    reclaimed: int = 0
    reclaimed_bytes: int = 0

    def add(self, marked: int = 0, swept: int = 0, reclaimed: int = 0, size: int = 0) -> None:
        """Add to the counts."""
        self.marked += marked
        self.swept += swept
        self.reclaimed += reclaimed
        self.reclaimed_bytes += size


def _table() -> dict[str, Counts]:
    return {category: Counts() for category in CATEGORIES}


def stats(table: dict[str, Counts]) -> list[pb.CategoryStats]:
    """`table` as CategoryStats messages, in CATEGORIES order."""
    return [
        pb.CategoryStats(
            category=name,
            marked=c.marked,
            swept=c.swept,
            reclaimed=c.reclaimed,
            reclaimed_bytes=c.reclaimed_bytes,
        )
        for name, c in table.items()
    ]


@dataclass
class Cycle:
    """One cycle's progress; its counts grow while it runs."""

    dry_run: bool
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0
    phase: str = MARK
    error: str = ""
    counts: dict[str, Counts] = field(default_factory=_table)

    def __getitem__(self, category: str) -> Counts:
        return self.counts[category]

    def finish(self, error: str = "") -> None:
        """The cycle ended (with `error` when it stopped early)."""
        self.phase = DONE
        self.error = error
        self.finished_at = time.time()

    def message(self) -> pb.Cycle:
        """The cycle as a Cycle message."""
        return pb.Cycle(
            dry_run=self.dry_run,
            phase=self.phase,
            started_at=self.started_at,
            finished_at=self.finished_at,
            categories=stats(self.counts),
            error=self.error,
        )


RECLAIMED = Counter(
    "artifactstore_gc_reclaimed",
    "Items this process's GC removed, by category (orphaned blobs, deleted repositories, "
    "abandoned and expired uploads).",
    ["category"],
    registry=metrics.REGISTRY,
)
RECLAIMED_BYTES = Counter(
    "artifactstore_gc_reclaimed_bytes",
    "Bytes of storage this process's GC freed, by category.",
    ["category"],
    registry=metrics.REGISTRY,
)


@dataclass
class Progress:
    """This process's cycles and its totals since it started."""

    current: Cycle | None = None
    last: Cycle | None = None
    cycles: int = 0
    totals: dict[str, Counts] = field(default_factory=_table)

    def start(self, dry_run: bool) -> Cycle:
        """Begin a cycle and make it the current one."""
        self.current = Cycle(dry_run)
        return self.current

    def end(self, cycle: Cycle, error: str = "") -> None:
        """End `cycle` (the current one)."""
        cycle.finish(error)
        self.last = cycle
        self.current = None
        self.cycles += 1

    def record(
        self,
        category: str,
        cycle: Cycle | None = None,
        *,
        marked: int = 0,
        swept: int = 0,
        reclaimed: int = 0,
        size: int = 0,
    ) -> None:
        """Count work of `category` in `cycle`, or (for a queue task, `cycle` None) in the
        running cycle unless that is a dry run; and, unless `cycle` is a dry run, what was
        swept and reclaimed in the totals."""
        if cycle is None and self.current is not None and not self.current.dry_run:
            cycle = self.current
        if cycle is not None:
            cycle[category].add(marked, swept, reclaimed, size)
        if cycle is None or not cycle.dry_run:
            self.totals[category].add(swept=swept, reclaimed=reclaimed, size=size)
            RECLAIMED.labels(category).inc(reclaimed)
            RECLAIMED_BYTES.labels(category).inc(size)
