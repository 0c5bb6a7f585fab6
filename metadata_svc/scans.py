"""Scan results on manifests and the projects' scan policies, as transactional functions.

A manifest's latest scan summary lives beside its record (keys area 40, keyed like the
manifest), a project's policy in area 41, the last run of a periodic job in area 42. The
summary is written in one transaction that checks the manifest still exists, so a summary
never outlives its manifest (deleting the manifest clears it, inside the delete's own
transaction). `Scans` works inside a caller's transaction (GetManifest reads the policy with
the manifest); `ScanStore` runs each operation as a transaction of its own for the RPCs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from artifactstore import access
from artifactstore.digests import Digest
from artifactstore.errors import Reason, RegistryError
from artifactstore.names import check_name
from artifactstore.scanning import SEVERITIES, dedup_key, parse_severity
from metadata_svc.keys import Keyspace
from metadata_svc.kv import Database, Transaction

SUCCEEDED = "succeeded"
ERROR = "error"
UNSUPPORTED = "unsupported"
STATUSES = (SUCCEEDED, ERROR, UNSUPPORTED)

DEFAULT_WALK = 1000
MAX_WALK = 10_000
# Messages are for people; a runaway one must not approach the KV's value limit.
MAX_MESSAGE_CHARS = 4000


@dataclass(frozen=True)
class PlatformScan:
    """The part of an index's scan about one platform manifest."""

    platform: str
    digest: str
    status: str
    counts: dict[str, int] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class ScanSummary:
    """The latest scan of a manifest. `counts` maps each of SEVERITIES to a number."""

    repository: str
    digest: str
    status: str
    scanned_at: float
    counts: dict[str, int] = field(default_factory=dict)
    scan_id: str = ""
    analyzer: str = ""
    analyzer_version: str = ""
    database_version: str = ""
    report_path: str = ""
    packages_path: str = ""
    message: str = ""
    platforms: tuple[PlatformScan, ...] = ()
    attempt: int = 0

    @classmethod
    def from_json(cls, raw: bytes) -> ScanSummary:
        """A summary as `to_json` stored it."""
        doc: dict[str, Any] = json.loads(raw)
        doc["platforms"] = tuple(PlatformScan(**p) for p in doc.get("platforms", ()))
        return cls(**doc)

    def to_json(self) -> bytes:
        """The stored form (compact JSON)."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()


@dataclass(frozen=True)
class ScanPolicy:
    """A project's pull policy; `block_severity` "" means none."""

    project: str
    block_severity: str = ""
    updated_at: float = 0.0
    updated_by: str = ""


@dataclass(frozen=True)
class ScanView:
    """What GetManifest adds about scanning: the project's policy (None when it has none)
    and the manifest's summary (None when not asked for and not needed, or never
    scanned)."""

    policy: ScanPolicy | None
    summary: ScanSummary | None


@dataclass(frozen=True)
class RescanCandidate:
    """A manifest due for a scan; `scanned_at` 0 when never scanned."""

    repository: str
    digest: str
    scanned_at: float


@dataclass(frozen=True)
class RescanPage:
    """One step of the walk over every manifest."""

    candidates: list[RescanCandidate]
    last: tuple[str, str] | None
    more: bool


@dataclass(frozen=True)
class JobRun:
    """The last run of a periodic job, and whether the caller just claimed it."""

    claimed: bool
    at: float
    by: str


def check_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts with every severity present and none negative (SEVERITY_INVALID for keys
    that are not severities)."""
    checked = dict.fromkeys(SEVERITIES, 0)
    for key, value in counts.items():
        checked[parse_severity(key)] = max(0, int(value))
    return checked


def _check_project(project: str) -> str:
    if "/" in project:
        raise RegistryError(Reason.NAME_INVALID, f"invalid project name {project[:100]!r}")
    return check_name(project)


def _check_digest(text: str) -> str:
    return str(Digest.parse(text))


class Scans:
    """Scan operations inside a caller's transaction, over one registry keyspace."""

    def __init__(self, keys: Keyspace) -> None:
        self._keys = keys

    def summary(self, tr: Transaction, repo: str, digest: str) -> ScanSummary | None:
        """The latest summary of a manifest, or None."""
        raw = tr.get(self._keys.scan_summary(repo, digest))
        return ScanSummary.from_json(raw) if raw else None

    def policy(self, tr: Transaction, project: str) -> ScanPolicy | None:
        """A project's policy, or None."""
        raw = tr.get(self._keys.scan_policy(project))
        return ScanPolicy(**json.loads(raw)) if raw else None

    def view(self, tr: Transaction, repo: str, digest: str, *, with_summary: bool) -> ScanView:
        """The project's policy, and the manifest's summary when `with_summary` or when the
        policy blocks on findings (the edge then needs it)."""
        policy = self.policy(tr, access.project_of(repo))
        needed = with_summary or (policy is not None and bool(policy.block_severity))
        return ScanView(policy, self.summary(tr, repo, digest) if needed else None)

    def record(self, tr: Transaction, summary: ScanSummary) -> ScanSummary:
        """Store `summary` unless a newer one is stored; return what is stored.
        MANIFEST_UNKNOWN when the manifest does not exist."""
        keys = self._keys
        repo, digest = summary.repository, summary.digest
        if tr.get(keys.manifest(repo, digest)) is None:
            raise RegistryError(
                Reason.MANIFEST_UNKNOWN, f"manifest {digest} is not known", digest=digest
            )
        stored = self.summary(tr, repo, digest)
        if stored is not None and stored.scanned_at > summary.scanned_at:
            return stored
        tr.set(keys.scan_summary(repo, digest), summary.to_json())
        return summary

    def forget(self, tr: Transaction, repo: str, digest: str) -> None:
        """Remove a manifest's summary (the manifest is being deleted)."""
        tr.clear(self._keys.scan_summary(repo, digest))

    def rescan_candidates(
        self, tr: Transaction, scanned_before: float, after: tuple[str, str] | None, limit: int
    ) -> RescanPage:
        """Examine up to `limit` manifests after `after` in key order; answer those never
        scanned or last scanned before `scanned_before`, except children of an index and
        manifests found unsupported.

        Manifests and summaries share their key order (repository, digest), so one range
        read of each, merged, covers the page."""
        keys = self._keys
        manifests, summaries = keys.manifests(), keys.scan_summaries()
        begin = manifests.pack(after) + b"\x00" if after else manifests.range().start
        rows = tr.get_range(begin, manifests.range().stop, limit=limit + 1)
        more = len(rows) > limit
        names: list[tuple[str, str]] = [manifests.unpack(k) for k, _ in rows[:limit]]
        if not names:
            return RescanPage([], None, False)
        found = tr.get_range(
            summaries.pack(names[0]), summaries.pack(names[-1]) + b"\x00", limit=len(names)
        )
        scanned = {summaries.unpack(k): ScanSummary.from_json(v) for k, v in found}
        candidates = []
        for repo, digest in names:
            summary = scanned.get((repo, digest))
            if summary is not None and (
                summary.status == UNSUPPORTED or summary.scanned_at >= scanned_before
            ):
                continue
            parents = keys.parents_of_manifest(repo, digest)
            if tr.get_range_startswith(parents.key(), limit=1):
                continue
            candidates.append(RescanCandidate(repo, digest, summary.scanned_at if summary else 0))
        return RescanPage(candidates, names[-1], more)

    def claim_job(self, tr: Transaction, job: str, worker: str, interval: float) -> JobRun:
        """Claim `job`'s next run for `worker` if its last run began `interval` seconds ago
        or more (or never); record the claim."""
        key = self._keys.scan_schedule(job)
        raw = tr.get(key)
        last = json.loads(raw) if raw else None
        now = time.time()
        if last is not None and now - last["at"] < interval:
            return JobRun(False, last["at"], last["by"])
        tr.set(key, json.dumps({"at": now, "by": worker}).encode())
        return JobRun(True, now, worker)

    def set_policy(self, tr: Transaction, policy: ScanPolicy) -> ScanPolicy:
        """Store a project's policy; an empty block_severity removes it."""
        key = self._keys.scan_policy(policy.project)
        if policy.block_severity:
            tr.set(key, json.dumps(asdict(policy)).encode())
        else:
            tr.clear(key)
        return policy


class ScanStore:
    """The scan operations as transactions of their own, for ScanMetadataService."""

    def __init__(self, db: Database, scans: Scans, keys: Keyspace) -> None:
        self._db = db
        self._scans = scans
        self._keys = keys

    async def record(self, summary: ScanSummary) -> ScanSummary:
        """Record a scan (see Scans.record). NAME_INVALID / DIGEST_INVALID for a malformed
        repository or digest, SEVERITY_INVALID for counts keyed by anything else."""
        check_name(summary.repository)
        if summary.status not in STATUSES:
            raise RegistryError(Reason.MANIFEST_INVALID, f"unknown scan status {summary.status!r}")
        summary = replace(
            summary,
            digest=_check_digest(summary.digest),
            counts=check_counts(summary.counts),
            message=summary.message[:MAX_MESSAGE_CHARS],
            platforms=tuple(
                replace(
                    p,
                    digest=_check_digest(p.digest),
                    counts=check_counts(p.counts),
                    message=p.message[:MAX_MESSAGE_CHARS],
                )
                for p in summary.platforms
            ),
        )
        return await self._db.run(lambda tr: self._scans.record(tr, summary))

    async def get(self, repo: str, digest: str, queue: str) -> tuple[ScanSummary | None, bool]:
        """A manifest's latest summary (None if never scanned) and, with `queue`, whether a
        scan of it is pending in that queue."""
        check_name(repo)
        digest = _check_digest(digest)

        def fn(tr: Transaction) -> tuple[ScanSummary | None, bool]:
            queued = bool(queue) and (
                tr.get(self._keys.queue_dedup(queue, dedup_key(repo, digest))) is not None
            )
            return self._scans.summary(tr, repo, digest), queued

        return await self._db.run(fn)

    async def rescan_candidates(
        self, scanned_before: float, after: tuple[str, str] | None, limit: int
    ) -> RescanPage:
        """One page of the rescan walk (see Scans.rescan_candidates)."""
        if limit < 0:
            raise RegistryError(Reason.PAGINATION_INVALID, f"invalid page size {limit}")
        page = min(limit or DEFAULT_WALK, MAX_WALK)
        return await self._db.run(
            lambda tr: self._scans.rescan_candidates(tr, scanned_before, after, page)
        )

    async def claim_job(self, job: str, worker: str, interval: float) -> JobRun:
        """Claim a periodic job's run (see Scans.claim_job)."""
        if not job:
            raise RegistryError(Reason.NAME_INVALID, "a job needs a name")
        return await self._db.run(lambda tr: self._scans.claim_job(tr, job, worker, interval))

    async def set_policy(self, project: str, block_severity: str, by: str) -> ScanPolicy:
        """Set or (with "") clear a project's policy."""
        policy = ScanPolicy(
            project=_check_project(project),
            block_severity=parse_severity(block_severity) if block_severity else "",
            updated_at=time.time(),
            updated_by=by,
        )
        return await self._db.run(lambda tr: self._scans.set_policy(tr, policy))

    async def get_policy(self, project: str) -> ScanPolicy:
        """A project's policy (block_severity "" when it has none)."""
        project = _check_project(project)
        found = await self._db.run(lambda tr: self._scans.policy(tr, project))
        return found or ScanPolicy(project)
