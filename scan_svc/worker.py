"""The scan worker: consumes the scan queue and reschedules old scans.

Each scan_svc process runs one worker. It leases up to ARTS_SCAN_BATCH_SIZE tasks (oldest
first) for ARTS_SCAN_LEASE_SECS, keeps the leases it still holds alive while it works
(extending each by the lease time every third of it), and ends every task one way:

* done: the image was analysed (or found not to be an image, or gone) and the result
  recorded; or it was already scanned after the task was queued. CompleteTask.
* the image is at fault (not a tar, a decompression bomb, unsafe entries, a corrupt
  package database): the summary records status `error` with the analyzer's message, and
  the task is done too, since trying again cannot help.
* anything else (the gateway or storage unreachable, a blob that does not match its
  digest, Trivy failing): RetryTask with exponential backoff from ARTS_SCAN_RETRY_SECS;
  on its last attempt the task is parked by the queue, and the summary records the error.

A worker that dies loses nothing: its leases run out and the tasks are leased again. A
worker whose lease was taken over (it stalled past the lease) stops that scan at once.
Each scan is one CONSUMER span linked to the trace that queued it (the push).

An index is scanned per platform image (attestation manifests and other artifacts
skipped); its summary adds its platforms' counts, and each platform image gets its own
summary too. A platform image already scanned with the same analyzer and database (its own
task usually runs first) is not analysed again: its report rows are copied.

Every ARTS_SCAN_RESCHEDULE_SECS one worker (whichever claims the "rescan" job first) walks
every manifest and queues those never scanned or last scanned longer ago.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc
import pyarrow as pa
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram

from artifactstore import mediatypes as mt
from artifactstore import metrics, rpc, telemetry
from artifactstore.config import Settings
from artifactstore.errors import Reason, RegistryError
from artifactstore.manifests import Descriptor, ParsedManifest, parse
from artifactstore.metadata.v1 import metadata_pb2 as md
from artifactstore.metadata.v1 import scans_pb2 as sc
from artifactstore.scanning import SEVERITIES, dedup_key
from scan_svc import reports
from scan_svc.analysis import AnalysisError, Limits, count_by_severity
from scan_svc.analyzers import (
    Analyzer,
    ImageResult,
    OfflineAnalyzer,
    Target,
    TrivyAnalyzer,
    trivy_executable,
)
from scan_svc.identity import JSON_KEY_USER, ScannerKey, ensure_identity
from scan_svc.registry import Credentials, ManifestGone, RegistryClient
from scan_svc.storage import Storage
from scan_svc.vulndb import DatabaseCache

if TYPE_CHECKING:
    from artifactstore.iam.v1.iam_pb2_grpc import IamServiceAsyncStub
    from artifactstore.metadata.v1.metadata_pb2_grpc import MetadataServiceAsyncStub
    from artifactstore.metadata.v1.scans_pb2_grpc import ScanMetadataServiceAsyncStub

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

SCANS = Counter(
    "artifactstore_scans",
    "Scan tasks this worker ended, by outcome: succeeded, error, unsupported (recorded on "
    "the manifest), skipped (scanned since queued, or gone), retried (handed back).",
    ["outcome"],
    registry=metrics.REGISTRY,
)
SCAN_SECONDS = Histogram(
    "artifactstore_scan_seconds",
    "Time to scan a manifest: pull, analysis, report, record.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
    registry=metrics.REGISTRY,
)
FINDINGS = Counter(
    "artifactstore_scan_findings",
    "Findings of the scans this worker recorded, by severity (an index counts its platforms).",
    ["severity"],
    registry=metrics.REGISTRY,
)
QUEUED_FOR_RESCAN = Counter(
    "artifactstore_scan_rescans_queued",
    "Manifests this worker queued again because their last scan was too old.",
    registry=metrics.REGISTRY,
)

RESCAN_JOB = "rescan"
MAX_RETRY_SECONDS = 3600.0
DOCKER_IMAGE_CONFIG = "application/vnd.docker.container.image.v1+json"
IMAGE_CONFIGS = frozenset({mt.OCI_IMAGE_CONFIG, DOCKER_IMAGE_CONFIG})


@dataclass
class WorkerStatus:
    """What the worker tells GetServiceInfo."""

    enabled: bool = False
    reason: str = "starting"
    analyzer: str = ""
    principal: str = ""


@dataclass
class PlatformOutcome:
    """The result for one platform image of a scan."""

    target: Target
    status: str
    message: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    findings: pa.Table | None = None
    packages: pa.Table | None = None
    result: ImageResult | None = None
    # True when the rows were copied from the image's own earlier scan.
    reused: bool = False


def _scan_id() -> str:
    """A new scan id: its UTC start time (so ids sort by time) and random bits."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(4)}"


def _platform(doc: Any) -> str:
    if not isinstance(doc, dict):
        return ""
    parts = [str(doc.get(k) or "") for k in ("os", "architecture", "variant")]
    return "/".join(p for p in parts if p)


def _is_image(parsed: ParsedManifest) -> bool:
    return (
        parsed.media_type in mt.IMAGE_MANIFESTS
        and not parsed.artifact_type
        and bool(parsed.blobs)
        and parsed.blobs[0].media_type in IMAGE_CONFIGS
    )


def _counts_pb(counts: dict[str, int]) -> sc.SeverityCounts:
    return sc.SeverityCounts(**{s.lower(): counts.get(s, 0) for s in SEVERITIES})


class Worker:
    """One process's consumer of the scan queue."""

    def __init__(
        self,
        settings: Settings,
        metadata: MetadataServiceAsyncStub,
        scans: ScanMetadataServiceAsyncStub,
        iam: IamServiceAsyncStub,
        storage: Storage,
        database: DatabaseCache,
        status: WorkerStatus,
    ) -> None:
        self._settings = settings
        self._metadata = metadata
        self._scans = scans
        self._iam = iam
        self._storage = storage
        self._database = database
        self.status = status
        self.worker_id = f"scan_svc@{socket.gethostname()}:{os.getpid()}"
        self._scratch = settings.scan_scratch_dir / str(os.getpid())
        self._key: ScannerKey | None = None
        self._analyzer: Analyzer | None = None
        self._client: RegistryClient | None = None
        # The task being worked on, so the heartbeat can stop it when its lease is lost.
        self._current: tuple[str, asyncio.Task[None]] | None = None
        self._lost: set[str] = set()

    # -- start --------------------------------------------------------------------------

    async def run(self) -> None:
        """Work until cancelled: set up (retrying while metadata_svc is not reachable),
        then consume the queue and run the rescan job side by side."""
        ready = await self._prepare()
        if not ready:
            return
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._setup_analyzer(session)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._consume())
                group.create_task(self._reschedule())

    async def _prepare(self) -> bool:
        """Check the KV directories and make sure of the identity; False when this worker
        must not work (it says why in its status)."""
        await asyncio.to_thread(self._clean_scratch)
        while True:
            try:
                info = await rpc.call(
                    self._scans.GetScanMetadataInfo(sc.GetScanMetadataInfoRequest())
                )
                mine = (self._settings.fdb_directory, self._settings.metadata_directory)
                theirs = (info.directory, info.metadata_directory)
                if mine != theirs:
                    reason = (
                        f"FDB_DIRECTORY/ARTS_METADATA_DIRECTORY are {mine}, but metadata_svc "
                        f"keeps {theirs}: this worker would scan another registry"
                    )
                    log.error("scan worker disabled: %s", reason)
                    self.status.reason = reason
                    return False
                self._key = await ensure_identity(self._iam, self._settings.scan_key_file)
            except (RegistryError, grpc.aio.AioRpcError, OSError) as exc:
                self.status.reason = f"waiting for metadata_svc and IAM: {exc}"
                log.warning("scan worker not ready: %s", exc)
                await asyncio.sleep(2.0)
                continue
            self.status.principal = self._key.principal
            return True

    def _clean_scratch(self) -> None:
        """Remove the scratch folders of worker processes that no longer run (a worker
        killed mid-scan leaves its files behind)."""
        root = self._settings.scan_scratch_dir
        root.mkdir(parents=True, exist_ok=True)
        for entry in root.iterdir():
            if entry.name.isdigit() and not _alive(int(entry.name)):
                shutil.rmtree(entry, ignore_errors=True)
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._scratch.mkdir()

    def _setup_analyzer(self, session: aiohttp.ClientSession) -> None:
        assert self._key is not None
        settings = self._settings
        host = settings.registry_host
        scheme, sep, bare = host.partition("://")
        base = host if sep else f"http://{host}"
        bare_host = bare if sep else host
        credentials = Credentials(JSON_KEY_USER, self._key.key_file_json)
        self._client = RegistryClient(session, base, credentials)
        trivy = trivy_executable(settings.trivy_path)
        if trivy is not None:
            self._analyzer = TrivyAnalyzer(
                trivy,
                bare_host,
                credentials,
                insecure=(scheme if sep else "http") == "http",
                server=settings.trivy_server,
            )
        else:
            limits = Limits(max_total_bytes=settings.scan_max_unpacked_bytes)
            self._analyzer = OfflineAnalyzer(self._client, self._database, limits)
        self.status.analyzer = self._analyzer.name
        self.status.enabled, self.status.reason = True, ""
        log.info(
            "scan worker %s consuming %s with %s, pulling from %s as %s",
            self.worker_id,
            settings.scan_queue,
            self._analyzer.name,
            base,
            self._key.principal,
        )

    # -- the queue ----------------------------------------------------------------------

    async def _consume(self) -> None:
        settings = self._settings
        while True:
            try:
                reply = await rpc.call(
                    self._metadata.LeaseTasks(
                        md.LeaseTasksRequest(
                            queue=settings.scan_queue,
                            worker=self.worker_id,
                            batch=settings.scan_batch_size,
                            lease_seconds=settings.scan_lease_seconds,
                        )
                    )
                )
            except (RegistryError, grpc.aio.AioRpcError) as exc:
                log.warning("leasing scan tasks failed: %s", exc)
                await asyncio.sleep(settings.scan_poll_seconds)
                continue
            if not reply.tasks:
                await asyncio.sleep(settings.scan_poll_seconds)
                continue
            try:
                await asyncio.to_thread(self._database.refresh)
            except OSError as exc:
                log.warning("cannot look for a new vulnerability database: %s", exc)
            held = {t.task_id: t for t in reply.tasks}
            heartbeat = asyncio.create_task(self._heartbeat(held))
            try:
                for task in reply.tasks:
                    if task.task_id in held:
                        await self._handle(task)
                        held.pop(task.task_id, None)
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat

    async def _heartbeat(self, held: dict[str, md.Task]) -> None:
        """Extend the leases still held, every third of the lease; a lease found lost is
        dropped, and its scan stopped if it is running."""
        settings = self._settings
        while True:
            await asyncio.sleep(settings.scan_lease_seconds / 3)
            for task in list(held.values()):
                try:
                    await rpc.call(
                        self._metadata.ExtendLease(
                            md.ExtendLeaseRequest(
                                queue=task.queue,
                                task_id=task.task_id,
                                lease_id=task.lease_id,
                                seconds=settings.scan_lease_seconds,
                            )
                        )
                    )
                except RegistryError as err:
                    if err.reason != Reason.DENIED:
                        log.warning("extending the lease of %s failed: %s", task.task_id, err)
                        continue
                    log.warning("lease of scan task %s lost", task.task_id)
                    held.pop(task.task_id, None)
                    self._lost.add(task.task_id)
                    if self._current is not None and self._current[0] == task.task_id:
                        self._current[1].cancel()
                except grpc.aio.AioRpcError as exc:
                    log.warning("extending the lease of %s failed: %s", task.task_id, exc)

    async def _handle(self, task: md.Task) -> None:
        current = asyncio.create_task(self._process(task))
        self._current = (task.task_id, current)
        try:
            await current
        except asyncio.CancelledError:
            if task.task_id not in self._lost:
                raise
            self._lost.discard(task.task_id)
        finally:
            self._current = None

    async def _process(self, task: md.Task) -> None:
        """Scan what `task` names and end the task (see the module docstring)."""
        try:
            payload = json.loads(task.payload)
            repo, digest = str(payload["repository"]), str(payload["digest"])
        except (ValueError, KeyError, TypeError) as exc:
            # Not a task this worker understands: handed back until the queue parks it.
            await self._retry(task, "?", "?", exc)
            return
        attributes: dict[str, str | int] = {
            "artifactstore.repository": repo,
            "artifactstore.digest": digest,
            "messaging.message.id": task.task_id,
            "artifactstore.scan.attempt": task.attempts,
        }
        with tracer.start_as_current_span(
            "scan",
            context=otel_context.Context(),
            kind=SpanKind.CONSUMER,
            links=telemetry.links_to(dict(task.trace_context)),
            attributes=attributes,
        ) as span:
            try:
                previous = await rpc.call(
                    self._scans.GetScan(sc.GetScanRequest(repository=repo, digest=digest))
                )
                if previous.status and previous.scanned_at >= task.enqueued_at:
                    outcome = "skipped"
                else:
                    with SCAN_SECONDS.time():
                        outcome = await self._scan(repo, digest, task)
                span.set_attribute("artifactstore.scan.outcome", outcome)
                await self._complete(task)
                SCANS.labels(outcome).inc()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, str(exc))
                await self._retry(task, repo, digest, exc)
                SCANS.labels("retried").inc()

    async def _complete(self, task: md.Task) -> None:
        try:
            await rpc.call(
                self._metadata.CompleteTask(
                    md.CompleteTaskRequest(
                        queue=task.queue, task_id=task.task_id, lease_id=task.lease_id
                    )
                )
            )
        except RegistryError as err:
            if err.reason != Reason.DENIED:
                raise
            log.warning("scan task %s finished after its lease was lost", task.task_id)

    async def _retry(self, task: md.Task, repo: str, digest: str, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        log.warning("scan of %s@%s failed (attempt %d): %s", repo, digest, task.attempts, message)
        delay = min(self._settings.scan_retry_seconds * 2 ** (task.attempts - 1), MAX_RETRY_SECONDS)
        try:
            if task.attempts >= task.max_attempts:
                await self._record_failure(task, repo, digest, message)
            await rpc.call(
                self._metadata.RetryTask(
                    md.RetryTaskRequest(
                        queue=task.queue,
                        task_id=task.task_id,
                        lease_id=task.lease_id,
                        error=message,
                        delay_seconds=delay,
                    )
                )
            )
        except (RegistryError, grpc.aio.AioRpcError) as err:
            # The lease runs out by itself and the task is leased again.
            log.warning("could not hand scan task %s back: %s", task.task_id, err)

    async def _record_failure(self, task: md.Task, repo: str, digest: str, message: str) -> None:
        summary = sc.ScanSummary(
            repository=repo,
            digest=digest,
            status=sc.SCAN_STATUS_ERROR,
            counts=_counts_pb({}),
            scanned_at=time.time(),
            scan_id=_scan_id(),
            message=f"gave up after {task.attempts} attempts: {message}",
            attempt=task.attempts,
        )
        with contextlib.suppress(RegistryError):
            await rpc.call(self._scans.RecordScan(sc.RecordScanRequest(summary=summary)))

    # -- one scan -----------------------------------------------------------------------

    async def _scan(self, repo: str, digest: str, task: md.Task) -> str:
        """Scan one manifest and record the result; return what happened, for the span."""
        assert self._client is not None
        scan_id = _scan_id()
        scratch = self._scratch / scan_id
        scratch.mkdir()
        try:
            try:
                body, media_type = await self._client.manifest(repo, digest)
            except ManifestGone:
                return "skipped"
            targets, reason, index = await self._targets(repo, digest, body, media_type)
            outcomes = []
            for n, target in enumerate(targets):
                reused = await self._reuse(target) if index else None
                if reused is None:
                    folder = scratch / str(n)
                    folder.mkdir()
                    reused = await self._analyze(target, folder)
                outcomes.append(reused)
            return await self._record(repo, digest, scan_id, task, index, reason, outcomes)
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def _targets(
        self, repo: str, digest: str, body: bytes, media_type: str
    ) -> tuple[list[Target], str, bool]:
        """The platform images to analyse (or none, and why), and whether the manifest is
        an index."""
        assert self._client is not None
        try:
            parsed = parse(body, media_type)
        except RegistryError as err:
            return [], f"not a manifest this registry understands: {err.message}", False
        if parsed.media_type in mt.INDEXES:
            targets = []
            entries = json.loads(body)["manifests"]
            for entry, descriptor in zip(entries, parsed.manifests, strict=True):
                platform = _platform(entry.get("platform"))
                # Attestations and signatures sit in indexes as "unknown/unknown".
                if descriptor.media_type not in mt.IMAGE_MANIFESTS or platform.startswith(
                    "unknown"
                ):
                    continue
                child_digest = str(descriptor.digest)
                try:
                    child_body, child_type = await self._client.manifest(repo, child_digest)
                    child = parse(child_body, child_type)
                except (ManifestGone, RegistryError):
                    continue  # deleted since the index was pushed, or not a manifest
                if _is_image(child):
                    targets.append(Target(repo, child_digest, platform, _layers(child)))
            return targets, "" if targets else "an index without container images", True
        if not _is_image(parsed):
            kind = parsed.artifact_type or parsed.media_type
            return [], f"not a container image ({kind})", False
        config = await self._client.json_blob(repo, str(parsed.blobs[0].digest))
        return [Target(repo, digest, _platform(config), _layers(parsed))], "", False

    async def _reuse(self, target: Target) -> PlatformOutcome | None:
        """The platform image's own latest result, when it is as good as a new one: the
        same analyzer and database, and a report to copy rows from."""
        assert self._analyzer is not None
        analyzer = self._analyzer
        if not analyzer.database_version:
            return None
        summary = await rpc.call(
            self._scans.GetScan(
                sc.GetScanRequest(repository=target.repository, digest=target.digest)
            )
        )
        if (
            summary.status != sc.SCAN_STATUS_SUCCEEDED
            or (summary.analyzer, summary.analyzer_version, summary.database_version)
            != (analyzer.name, analyzer.version, analyzer.database_version)
            or not summary.report_path
        ):
            return None
        try:
            findings, packages = await asyncio.to_thread(
                lambda: (
                    reports.read(
                        self._storage, summary.report_path, summary.scan_id, target.digest
                    ),
                    reports.read(
                        self._storage, summary.packages_path, summary.scan_id, target.digest
                    ),
                )
            )
        except (OSError, pa.ArrowException) as exc:
            log.warning("report of %s unreadable, analysing again: %s", target.digest, exc)
            return None
        counts = {s: getattr(summary.counts, s.lower()) for s in SEVERITIES}
        return PlatformOutcome(target, "succeeded", "", counts, findings, packages, reused=True)

    async def _analyze(self, target: Target, scratch: Path) -> PlatformOutcome:
        assert self._analyzer is not None
        with tracer.start_as_current_span(
            "scan.analyze",
            attributes={
                "artifactstore.platform": target.platform,
                "artifactstore.digest": target.digest,
            },
        ):
            try:
                result = await self._analyzer.analyze(target, scratch)
            except AnalysisError as exc:
                return PlatformOutcome(target, "error", str(exc))
        return PlatformOutcome(
            target,
            "succeeded",
            counts=count_by_severity(result.findings),
            findings=reports.findings_table(result.findings, target.platform, target.digest),
            packages=reports.packages_table(
                result.packages, result.os, target.platform, target.digest
            ),
            result=result,
        )

    async def _record(
        self,
        repo: str,
        digest: str,
        scan_id: str,
        task: md.Task,
        index: bool,
        reason: str,
        outcomes: list[PlatformOutcome],
    ) -> str:
        """Write the report of the successful platforms, record each freshly analysed
        platform image's summary (for an index) and the manifest's; return its status."""
        assert self._analyzer is not None
        analyzer = self._analyzer
        fresh = next((o.result for o in outcomes if o.result is not None), None)
        version = fresh.analyzer_version if fresh else analyzer.version
        database = fresh.database_version if fresh else analyzer.database_version
        scanned_at = time.time()
        good = [o for o in outcomes if o.status == "succeeded"]
        paths = None
        if good:
            stamp = reports.Stamp(
                scan_id,
                repo,
                digest,
                analyzer.name,
                version,
                database,
                dt.datetime.fromtimestamp(scanned_at, dt.UTC),
            )
            paths = await asyncio.to_thread(
                reports.write,
                self._storage,
                stamp,
                [o.findings for o in good if o.findings is not None],
                [o.packages for o in good if o.packages is not None],
            )

        def summary(
            manifest: str, status: sc.ScanStatus.ValueType, counts: dict[str, int], message: str
        ) -> sc.ScanSummary:
            return sc.ScanSummary(
                repository=repo,
                digest=manifest,
                status=status,
                counts=_counts_pb(counts),
                scanned_at=scanned_at,
                scan_id=scan_id,
                analyzer=analyzer.name,
                analyzer_version=version,
                database_version=database,
                report_path=paths.findings if paths and status == sc.SCAN_STATUS_SUCCEEDED else "",
                packages_path=paths.packages
                if paths and status == sc.SCAN_STATUS_SUCCEEDED
                else "",
                message=message,
                attempt=task.attempts,
            )

        errors = [o for o in outcomes if o.status == "error"]
        if not outcomes:
            status, message = sc.SCAN_STATUS_UNSUPPORTED, reason
        elif errors:
            status = sc.SCAN_STATUS_ERROR
            message = "; ".join(
                f"{o.target.platform}: {o.message}" if index else o.message for o in errors
            )
        else:
            status, message = sc.SCAN_STATUS_SUCCEEDED, ""
        total = {s: sum(o.counts.get(s, 0) for o in good) for s in SEVERITIES}
        for severity, count in total.items():
            FINDINGS.labels(severity).inc(count)
        result = summary(digest, status, total, message)
        if paths and status == sc.SCAN_STATUS_ERROR:
            # Some platforms of the index succeeded: their rows are in the report.
            result.report_path, result.packages_path = paths.findings, paths.packages
        if index:
            for o in outcomes:
                result.platforms.append(
                    sc.PlatformScan(
                        platform=o.target.platform,
                        digest=o.target.digest,
                        status=_STATUS[o.status],
                        counts=_counts_pb(o.counts),
                        message=o.message,
                    )
                )
                if not o.reused:
                    child = summary(o.target.digest, _STATUS[o.status], o.counts, o.message)
                    await self._record_summary(child)
        await self._record_summary(result)
        return sc.ScanStatus.Name(status).removeprefix("SCAN_STATUS_").lower()

    async def _record_summary(self, summary: sc.ScanSummary) -> None:
        try:
            await rpc.call(self._scans.RecordScan(sc.RecordScanRequest(summary=summary)))
        except RegistryError as err:
            if err.reason != Reason.MANIFEST_UNKNOWN:
                raise
            log.info("%s@%s was deleted while it was scanned", summary.repository, summary.digest)

    # -- rescans ------------------------------------------------------------------------

    async def _reschedule(self) -> None:
        """Claim the rescan job every so often; when granted, queue every manifest due."""
        interval = self._settings.scan_reschedule_seconds
        every = min(max(interval / 4, 0.5), 60.0)
        while True:
            try:
                claim = await rpc.call(
                    self._scans.ClaimScanJob(
                        sc.ClaimScanJobRequest(
                            job=RESCAN_JOB, worker=self.worker_id, interval_seconds=interval
                        )
                    )
                )
                if claim.claimed:
                    await self._rescan(time.time() - interval)
            except (RegistryError, grpc.aio.AioRpcError) as exc:
                log.warning("rescan job failed: %s", exc)
            except Exception:
                # A bug in one run must not end the job for the life of the process.
                log.exception("rescan job failed")
            await asyncio.sleep(every)

    async def _rescan(self, scanned_before: float) -> None:
        with tracer.start_as_current_span(
            "scan.reschedule", context=otel_context.Context()
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            queued = 0
            after = ("", "")
            while True:
                page = await rpc.call(
                    self._scans.ListRescanCandidates(
                        sc.ListRescanCandidatesRequest(
                            scanned_before=scanned_before,
                            after_repository=after[0],
                            after_digest=after[1],
                        )
                    )
                )
                for c in page.candidates:
                    await rpc.call(
                        self._metadata.Enqueue(
                            md.EnqueueRequest(
                                queue=self._settings.scan_queue,
                                payload=json.dumps(
                                    {"repository": c.repository, "digest": c.digest}
                                ),
                                dedup_key=dedup_key(c.repository, c.digest),
                                trace_context=carrier,
                            )
                        )
                    )
                    queued += 1
                    QUEUED_FOR_RESCAN.inc()
                if not page.more:
                    break
                after = (page.last_repository, page.last_digest)
            span.set_attribute("artifactstore.scan.queued", queued)
            if queued:
                log.info("rescan: queued %d manifests", queued)


_STATUS = {"succeeded": sc.SCAN_STATUS_SUCCEEDED, "error": sc.SCAN_STATUS_ERROR}


def _layers(parsed: ParsedManifest) -> tuple[Descriptor, ...]:
    """The layers to unpack: every layer but foreign ones the registry does not hold."""
    return tuple(b for b in parsed.blobs[1:] if not (b.media_type in mt.FOREIGN_LAYERS and b.urls))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
