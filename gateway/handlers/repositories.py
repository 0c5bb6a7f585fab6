"""Repositories as a whole: `DELETE /api/v1/repositories/<name>` (an owner's action)."""

from __future__ import annotations

from aiohttp import web

from artifactstore.metadata.v1 import gc_pb2 as gc
from artifactstore.rpc import call
from gateway import audit, params
from gateway.keys import clients, settings
from gateway.responses import json_response


async def delete_repository(request: web.Request) -> web.Response:
    """Delete the repository: its tags, manifests and references at once; its blob links
    and upload sessions through GC's repository queue, and its blobs then through the
    canonical queue, without the pending grace. 202 with `{"name", "status": "deleting",
    "task", "deleted_at"}` (again while the deletion is under way); NAME_UNKNOWN when there
    is no such repository."""
    name = params.repository(request)
    deleted = await call(
        clients(request).metadata_gc.DeleteRepository(
            gc.DeleteRepositoryRequest(repository=name, queue=settings(request).gc_repository_queue)
        )
    )
    await audit.record(request, "repository.delete", name, task=deleted.task_id)
    body = {
        "name": name,
        "status": "deleting",
        "task": deleted.task_id,
        "deleted_at": deleted.deleted_at,
    }
    return json_response(body, status=202)
