"""Deletes made through the edge go to the IAM audit log: who, what, when, from where."""

from __future__ import annotations

import logging
import time

import grpc
from aiohttp import web

from artifactstore.errors import RegistryError
from artifactstore.iam.v1 import iam_pb2
from artifactstore.rpc import call
from gateway.auth import identity
from gateway.keys import clients

log = logging.getLogger(__name__)


async def record(request: web.Request, action: str, repository: str, **detail: str) -> None:
    """Append an audit entry for `action` on `repository` by the request's caller. The
    change already happened, so a failure to record it is logged, not returned."""
    entry = iam_pb2.AuditEntry(
        at=time.time(),
        principal=identity(request).principal,
        source=request.remote or "",
        action=action,
        target=f"repository:{repository}",
        detail=detail,
    )
    try:
        await call(clients(request).iam.RecordAudit(entry))
    except (RegistryError, grpc.aio.AioRpcError) as err:
        log.error("audit entry %s on %s not recorded: %s", action, repository, err)
