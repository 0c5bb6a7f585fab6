"""The ScanMetadataService servicer, and the translation of scan records to and from their
proto messages (MetadataService's GetManifest uses it too)."""

from __future__ import annotations

import grpc

from artifactstore.errors import Reason, RegistryError
from artifactstore.metadata.v1 import scans_pb2 as pb
from artifactstore.metadata.v1 import scans_pb2_grpc
from artifactstore.scanning import SEVERITIES
from metadata_svc.scans import (
    ERROR,
    SUCCEEDED,
    UNSUPPORTED,
    PlatformScan,
    ScanPolicy,
    ScanStore,
    ScanSummary,
)

Context = grpc.aio.ServicerContext

_STATUS_TO_PB = {
    SUCCEEDED: pb.SCAN_STATUS_SUCCEEDED,
    ERROR: pb.SCAN_STATUS_ERROR,
    UNSUPPORTED: pb.SCAN_STATUS_UNSUPPORTED,
}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}


def counts_to_pb(counts: dict[str, int]) -> pb.SeverityCounts:
    """Counts keyed by severity as the proto message."""
    return pb.SeverityCounts(**{s.lower(): counts.get(s, 0) for s in SEVERITIES})


def counts_from_pb(message: pb.SeverityCounts) -> dict[str, int]:
    """The proto message as counts keyed by severity."""
    return {s: getattr(message, s.lower()) for s in SEVERITIES}


def summary_to_pb(summary: ScanSummary | None, repo: str, digest: str) -> pb.ScanSummary:
    """A summary as its message; a manifest never scanned (None) has status UNSPECIFIED."""
    if summary is None:
        return pb.ScanSummary(repository=repo, digest=digest, counts=counts_to_pb({}))
    return pb.ScanSummary(
        repository=summary.repository,
        digest=summary.digest,
        status=_STATUS_TO_PB[summary.status],
        counts=counts_to_pb(summary.counts),
        scanned_at=summary.scanned_at,
        scan_id=summary.scan_id,
        analyzer=summary.analyzer,
        analyzer_version=summary.analyzer_version,
        database_version=summary.database_version,
        report_path=summary.report_path,
        packages_path=summary.packages_path,
        message=summary.message,
        platforms=[
            pb.PlatformScan(
                platform=p.platform,
                digest=p.digest,
                status=_STATUS_TO_PB[p.status],
                counts=counts_to_pb(p.counts),
                message=p.message,
            )
            for p in summary.platforms
        ],
        attempt=summary.attempt,
    )


def _status(value: int) -> str:
    status = _STATUS_FROM_PB.get(value)  # type: ignore[call-overload]
    if status is None:
        raise RegistryError(Reason.MANIFEST_INVALID, "a scan result needs a status")
    return str(status)


def summary_from_pb(message: pb.ScanSummary) -> ScanSummary:
    """The message as a summary to record; MANIFEST_INVALID when it has no status."""
    return ScanSummary(
        repository=message.repository,
        digest=message.digest,
        status=_status(message.status),
        scanned_at=message.scanned_at,
        counts=counts_from_pb(message.counts),
        scan_id=message.scan_id,
        analyzer=message.analyzer,
        analyzer_version=message.analyzer_version,
        database_version=message.database_version,
        report_path=message.report_path,
        packages_path=message.packages_path,
        message=message.message,
        platforms=tuple(
            PlatformScan(
                platform=p.platform,
                digest=p.digest,
                status=_status(p.status),
                counts=counts_from_pb(p.counts),
                message=p.message,
            )
            for p in message.platforms
        ),
        attempt=message.attempt,
    )


def policy_to_pb(policy: ScanPolicy) -> pb.ScanPolicy:
    """A policy as its message."""
    return pb.ScanPolicy(
        project=policy.project,
        block_severity=policy.block_severity,
        updated_at=policy.updated_at,
        updated_by=policy.updated_by,
    )


class ScanMetadataServicer(scans_pb2_grpc.ScanMetadataServiceServicer):
    """Answers ScanMetadataService calls from the scan store."""

    def __init__(self, store: ScanStore, directory: str, metadata_directory: str) -> None:
        self._store = store
        self._info = pb.ScanMetadataInfo(directory=directory, metadata_directory=metadata_directory)

    async def GetScanMetadataInfo(
        self, request: pb.GetScanMetadataInfoRequest, context: Context
    ) -> pb.ScanMetadataInfo:
        return self._info

    async def RecordScan(self, request: pb.RecordScanRequest, context: Context) -> pb.ScanSummary:
        stored = await self._store.record(summary_from_pb(request.summary))
        return summary_to_pb(stored, stored.repository, stored.digest)

    async def GetScan(self, request: pb.GetScanRequest, context: Context) -> pb.ScanSummary:
        summary, queued = await self._store.get(request.repository, request.digest, request.queue)
        message = summary_to_pb(summary, request.repository, request.digest)
        message.queued = queued
        return message

    async def ListRescanCandidates(
        self, request: pb.ListRescanCandidatesRequest, context: Context
    ) -> pb.ListRescanCandidatesResponse:
        after = (
            (request.after_repository, request.after_digest) if request.after_repository else None
        )
        page = await self._store.rescan_candidates(request.scanned_before, after, request.limit)
        last = page.last or ("", "")
        return pb.ListRescanCandidatesResponse(
            candidates=[
                pb.RescanCandidate(
                    repository=c.repository, digest=c.digest, scanned_at=c.scanned_at
                )
                for c in page.candidates
            ],
            last_repository=last[0],
            last_digest=last[1],
            more=page.more,
        )

    async def ClaimScanJob(
        self, request: pb.ClaimScanJobRequest, context: Context
    ) -> pb.ClaimScanJobResponse:
        run = await self._store.claim_job(request.job, request.worker, request.interval_seconds)
        return pb.ClaimScanJobResponse(claimed=run.claimed, last_run_at=run.at, last_run_by=run.by)

    async def SetScanPolicy(
        self, request: pb.SetScanPolicyRequest, context: Context
    ) -> pb.ScanPolicy:
        policy = await self._store.set_policy(
            request.project, request.block_severity, request.updated_by
        )
        return policy_to_pb(policy)

    async def GetScanPolicy(
        self, request: pb.GetScanPolicyRequest, context: Context
    ) -> pb.ScanPolicy:
        return policy_to_pb(await self._store.get_policy(request.project))
