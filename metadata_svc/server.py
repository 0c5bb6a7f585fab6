"""Assembles metadata_svc's gRPC server around the one KV store of the mesh."""

from __future__ import annotations

import asyncio

from artifactstore import rpc
from artifactstore.config import Settings
from artifactstore.metadata.v1 import metadata_pb2, metadata_pb2_grpc
from metadata_svc.kv import open_database
from metadata_svc.service import MetadataServicer
from metadata_svc.store import MetadataStore


async def main(settings: Settings) -> None:
    """Open the KV store and serve MetadataService until SIGTERM or SIGINT."""
    db = open_database(cluster_file=settings.fdb_cluster_file, embedded_path=settings.kv_path)
    store = MetadataStore(db, settings.directory)
    name = metadata_pb2.DESCRIPTOR.services_by_name["MetadataService"].full_name
    servicer = rpc.Servicer(
        metadata_pb2_grpc.add_MetadataServiceServicer_to_server, MetadataServicer(store), name
    )

    async def close() -> None:
        await asyncio.to_thread(db.close)

    await rpc.serve([servicer], settings.metadata_address, on_stop=close)
