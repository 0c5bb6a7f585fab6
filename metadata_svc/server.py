"""Assembles metadata_svc's gRPC server around the one KV store of the mesh: registry
metadata (MetadataService), scan results and policies (ScanMetadataService) and IAM
(IamService) side by side."""

from __future__ import annotations

import asyncio
import json
import logging

from opentelemetry import propagate

from artifactstore import access, metrics, rpc, scanning
from artifactstore.config import Settings
from artifactstore.iam.v1 import iam_pb2, iam_pb2_grpc
from artifactstore.metadata.v1 import (
    gc_pb2,
    gc_pb2_grpc,
    metadata_pb2,
    metadata_pb2_grpc,
    scans_pb2,
    scans_pb2_grpc,
)
from metadata_svc.changes import ChangeFeed
from metadata_svc.gc import GcStore
from metadata_svc.gc_service import MetadataGcServicer
from metadata_svc.iam import IamStore
from metadata_svc.iam_service import IamServicer
from metadata_svc.kv import Transaction, open_database
from metadata_svc.observe import StoreCollector
from metadata_svc.queues import QueueStore
from metadata_svc.scans import ScanStore
from metadata_svc.scans_service import ScanMetadataServicer
from metadata_svc.service import MetadataServicer
from metadata_svc.store import ManifestRecord, MetadataStore

log = logging.getLogger(__name__)


async def main(settings: Settings) -> None:
    """Open the KV store, set up IAM on first start, and serve until SIGTERM or SIGINT."""
    db = open_database(cluster_file=settings.fdb_cluster_file, embedded_path=settings.kv_path)
    iam = IamStore(db, settings.metadata_directory, settings.default_organization)

    def new_repository(tr: Transaction, repository: str) -> None:
        iam.ensure_project(tr, access.project_of(repository))

    def new_manifest(tr: Transaction, repository: str, record: ManifestRecord) -> None:
        if not settings.scan_on_push:
            return
        context: dict[str, str] = {}
        propagate.inject(context)
        store.queues.enqueue(
            tr,
            settings.scan_queue,
            json.dumps({"repository": repository, "digest": record.digest}),
            dedup_key=scanning.dedup_key(repository, record.digest),
            trace_context=context,
        )

    store = MetadataStore(
        db,
        settings.directory,
        on_new_repository=new_repository,
        on_new_manifest=new_manifest,
        unused_upload_seconds=settings.gc_upload_idle_seconds,
    )
    generated = await iam.bootstrap(settings.admin_user, settings.admin_password)
    if generated is not None:
        # Printed once, on the first start of an empty store; it is not kept anywhere.
        log.warning(
            "initial administrator %r created with password %s", settings.admin_user, generated
        )
    # Readers may cache manifest reads only where this process sees every commit.
    changes = ChangeFeed(store.keys) if db.sole_writer else None
    db.observer = changes
    metrics.REGISTRY.register(StoreCollector(db, store.keys, store.queues))
    metadata = metadata_pb2.DESCRIPTOR.services_by_name["MetadataService"].full_name
    iam_name = iam_pb2.DESCRIPTOR.services_by_name["IamService"].full_name
    scans_name = scans_pb2.DESCRIPTOR.services_by_name["ScanMetadataService"].full_name
    servicers = [
        rpc.Servicer(
            metadata_pb2_grpc.add_MetadataServiceServicer_to_server,
            MetadataServicer(store, QueueStore(db, store.queues), changes),
            metadata,
        ),
        rpc.Servicer(
            gc_pb2_grpc.add_MetadataGcServiceServicer_to_server,
            MetadataGcServicer(GcStore(db, store, settings.directory)),
            gc_pb2.DESCRIPTOR.services_by_name["MetadataGcService"].full_name,
        ),
        rpc.Servicer(
            scans_pb2_grpc.add_ScanMetadataServiceServicer_to_server,
            ScanMetadataServicer(
                ScanStore(db, store.scans, store.keys),
                settings.directory,
                settings.metadata_directory,
            ),
            scans_name,
        ),
        rpc.Servicer(
            iam_pb2_grpc.add_IamServiceServicer_to_server,
            IamServicer(iam, store.has_repositories),
            iam_name,
        ),
    ]

    async def close() -> None:
        await asyncio.to_thread(db.close)

    await rpc.serve(servicers, settings.metadata_address, on_stop=close)
