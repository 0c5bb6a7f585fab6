"""The ScanService servicer: scan results and requests, answered from metadata_svc (the
summaries, the queue) and blob storage (the reports)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import grpc
import pyarrow as pa
from opentelemetry import propagate

import artifactstore
from artifactstore import rpc
from artifactstore.errors import Reason, RegistryError
from artifactstore.metadata.v1 import metadata_pb2 as md
from artifactstore.metadata.v1 import scans_pb2 as sc
from artifactstore.names import check_name
from artifactstore.scan.v1 import scan_pb2 as pb
from artifactstore.scan.v1 import scan_pb2_grpc
from artifactstore.scanning import SEVERITIES, dedup_key, parse_severities
from scan_svc import reports, vulndb
from scan_svc.storage import Storage
from scan_svc.vulndb import DatabaseCache
from scan_svc.worker import WorkerStatus

if TYPE_CHECKING:
    from artifactstore.metadata.v1.metadata_pb2_grpc import MetadataServiceAsyncStub
    from artifactstore.metadata.v1.scans_pb2_grpc import ScanMetadataServiceAsyncStub

Context = grpc.aio.ServicerContext

MAX_FINDINGS = 10_000
_RANK = {s: n for n, s in enumerate(SEVERITIES)}


def _finding(row: dict[str, Any]) -> pb.Finding:
    finding = pb.Finding(
        vulnerability_id=row["vulnerability_id"],
        aliases=row["aliases"] or [],
        package_name=row["package_name"],
        ecosystem=row["ecosystem"],
        installed_version=row["installed_version"],
        fixed_version=row["fixed_version"],
        severity=row["severity"],
        title=row["title"],
        layer_digest=row["layer_digest"],
        file_path=row["file_path"],
        platform=row["platform"],
        platform_digest=row["platform_digest"],
        status=row["status"],
        source_package=row["source_package"],
    )
    if row["cvss_score"] is not None:
        finding.cvss_score = row["cvss_score"]
    return finding


def _sort_key(row: dict[str, Any]) -> tuple[int, str, str, str, str]:
    return (
        _RANK.get(row["severity"], len(SEVERITIES)),
        row["package_name"],
        row["vulnerability_id"],
        row["platform"],
        row["file_path"],
    )


class ScanServicer(scan_pb2_grpc.ScanServiceServicer):
    """Answers ScanService calls."""

    def __init__(
        self,
        metadata: MetadataServiceAsyncStub,
        scans: ScanMetadataServiceAsyncStub,
        storage: Storage,
        database: DatabaseCache,
        status: WorkerStatus,
        queue: str,
    ) -> None:
        self._metadata = metadata
        self._scans = scans
        self._storage = storage
        self._database = database
        self._status = status
        self._queue = queue

    async def _digest(self, repository: str, reference: str) -> str:
        check_name(repository)
        manifest = await rpc.call(
            self._metadata.GetManifest(
                md.GetManifestRequest(repository=repository, reference=reference)
            )
        )
        return manifest.digest

    async def _summary(self, repository: str, digest: str) -> sc.ScanSummary:
        return await rpc.call(
            self._scans.GetScan(
                sc.GetScanRequest(repository=repository, digest=digest, queue=self._queue)
            )
        )

    async def GetServiceInfo(
        self, request: pb.GetServiceInfoRequest, context: Context
    ) -> pb.ServiceInfo:
        """This instance's version and its worker's state."""
        pointer = self._database.pointer
        return pb.ServiceInfo(
            version=artifactstore.__version__,
            enabled=self._status.enabled,
            analyzer=self._status.analyzer,
            queue=self._queue,
            database_version=pointer.version if pointer else "",
            reason=self._status.reason,
            principal=self._status.principal,
        )

    async def RequestScan(
        self, request: pb.RequestScanRequest, context: Context
    ) -> pb.RequestScanResponse:
        """Queue a scan of the manifest (deduplicated per manifest)."""
        digest = await self._digest(request.repository, request.reference)
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        task = await rpc.call(
            self._metadata.Enqueue(
                md.EnqueueRequest(
                    queue=self._queue,
                    payload=json.dumps({"repository": request.repository, "digest": digest}),
                    dedup_key=dedup_key(request.repository, digest),
                    trace_context=carrier,
                )
            )
        )
        return pb.RequestScanResponse(digest=digest, task=task)

    async def GetScanSummary(
        self, request: pb.GetScanSummaryRequest, context: Context
    ) -> sc.ScanSummary:
        """The manifest's latest summary, `queued` set when a scan of it is pending."""
        digest = await self._digest(request.repository, request.reference)
        return await self._summary(request.repository, digest)

    async def ListFindings(
        self, request: pb.ListFindingsRequest, context: Context
    ) -> pb.ListFindingsResponse:
        """The latest scan's summary and findings, filtered, sorted and paged."""
        severities = parse_severities(request.severities)
        if request.limit < 0 or request.offset < 0:
            raise RegistryError(Reason.PAGINATION_INVALID, "limit and offset must not be negative")
        digest = await self._digest(request.repository, request.reference)
        summary = await self._summary(request.repository, digest)
        rows: list[dict[str, Any]] = []
        if summary.report_path:
            try:
                table = await asyncio.to_thread(
                    reports.read, self._storage, summary.report_path, summary.scan_id, digest
                )
            except (OSError, pa.ArrowException) as exc:
                raise RegistryError(
                    Reason.UNAVAILABLE, f"the scan report cannot be read now: {exc}"
                ) from exc
            rows = [r for r in table.to_pylist() if not severities or r["severity"] in severities]
        rows.sort(key=_sort_key)
        limit = min(request.limit or MAX_FINDINGS, MAX_FINDINGS)
        page = rows[request.offset : request.offset + limit]
        return pb.ListFindingsResponse(
            digest=digest, summary=summary, findings=[_finding(r) for r in page], total=len(rows)
        )

    async def GetDatabaseStatus(
        self, request: pb.GetDatabaseStatusRequest, context: Context
    ) -> pb.DatabaseStatus:
        """The shared database's pointer and sources, and what this replica loaded."""
        pointer = await asyncio.to_thread(vulndb.current, self._storage)
        loaded = self._database.pointer.version if self._database.pointer else ""
        if pointer is None:
            return pb.DatabaseStatus(present=False, loaded_version=loaded)
        try:
            sources = await asyncio.to_thread(vulndb.sources, self._storage, pointer)
        except (OSError, pa.ArrowException) as exc:
            raise RegistryError(
                Reason.UNAVAILABLE, f"the vulnerability database cannot be read now: {exc}"
            ) from exc
        return pb.DatabaseStatus(
            present=True,
            version=pointer.version,
            location=pointer.location,
            records=pointer.records,
            sources=[
                pb.DatabaseSource(
                    path=s["path"],
                    kind=s["kind"],
                    records=s["records"],
                    withdrawn=s["withdrawn"],
                    sha256=s["sha256"],
                    imported_at=s["imported_at"].timestamp(),
                )
                for s in sources
            ],
            loaded_version=loaded,
        )

    async def ListParkedScans(
        self, request: pb.ListParkedScansRequest, context: Context
    ) -> pb.ListParkedScansResponse:
        """Parked scan tasks with their last errors."""
        reply = await rpc.call(
            self._metadata.ListParkedTasks(
                md.ListParkedTasksRequest(queue=self._queue, limit=request.limit)
            )
        )
        return pb.ListParkedScansResponse(tasks=reply.tasks)
