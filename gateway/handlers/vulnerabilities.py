"""Vulnerability scan results of a manifest, over the registry's own API:

    GET  /api/v1/repositories/<name>/manifests/<reference>/vulnerabilities[?severity=…]
    POST /api/v1/repositories/<name>/manifests/<reference>/scan

Both need pull on the repository (the route table says so), answered by scan_svc. The
GET answers the latest scan's summary (status, counts per severity and in the product's
groups, time, analyzer, report location) and its findings, optionally only some severities
(`severity=HIGH,CRITICAL`, repeatable) and paged (`n`, `offset`). The POST queues a scan
and answers 202 with the task, deduplicated per manifest.
"""

from __future__ import annotations

import re

from aiohttp import hdrs, web

from artifactstore.errors import Reason, RegistryError
from artifactstore.rpc import call
from artifactstore.scan.v1 import scan_pb2 as pb
from artifactstore.scanning import finding_to_dict, summary_to_dict
from gateway.keys import clients
from gateway.params import reference, repository
from gateway.responses import json_response

_COUNT = re.compile(r"[0-9]{1,9}")


def _count(request: web.Request, name: str) -> int:
    text = request.query.get(name, "")
    if text and not _COUNT.fullmatch(text):
        raise RegistryError(Reason.PAGINATION_INVALID, f"invalid {name}={text[:40]!r}")
    return int(text or 0)


def _vulnerabilities_path(name: str, ref: str) -> str:
    return f"/api/v1/repositories/{name}/manifests/{ref}/vulnerabilities"


async def list_vulnerabilities(request: web.Request) -> web.Response:
    """`{"repository", "reference", "digest", "summary", "total", "findings": [...]}`;
    400 SEVERITY_INVALID (code UNSUPPORTED) for an unknown severity."""
    name, ref = repository(request), reference(request)
    reply = await call(
        clients(request).scan.ListFindings(
            pb.ListFindingsRequest(
                repository=name,
                reference=ref,
                severities=request.query.getall("severity", []),
                limit=_count(request, "n"),
                offset=_count(request, "offset"),
            )
        )
    )
    return json_response(
        {
            "repository": name,
            "reference": ref,
            "digest": reply.digest,
            "summary": summary_to_dict(reply.summary),
            "total": reply.total,
            "findings": [finding_to_dict(f) for f in reply.findings],
        }
    )


async def request_scan(request: web.Request) -> web.Response:
    """Queue a scan: 202 `{"digest", "task_id", "enqueued_at"}`, Location naming the
    results."""
    name, ref = repository(request), reference(request)
    reply = await call(
        clients(request).scan.RequestScan(pb.RequestScanRequest(repository=name, reference=ref))
    )
    response = json_response(
        {
            "digest": reply.digest,
            "task_id": reply.task.task_id,
            "enqueued_at": reply.task.enqueued_at,
        },
        status=202,
    )
    response.headers[hdrs.LOCATION] = _vulnerabilities_path(name, reply.digest)
    return response
