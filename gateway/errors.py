"""Every failure becomes an HTTP response here, and only here.

Handlers raise `RegistryError` (or let one raised by metadata_svc or blob_svc pass); the
middleware looks its reason up in `ERRORS`, the one table from reason to HTTP status and
OCI code, and writes the spec's body `{"errors": [{"code", "message", "detail"}]}`.
aiohttp's own HTTP errors (unknown route, method not allowed), a service that is down and
any unexpected exception get the same body shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import grpc
from aiohttp import hdrs, web

from artifactstore.errors import Reason, RegistryError
from gateway.responses import json_response

log = logging.getLogger(__name__)


class HttpError(NamedTuple):
    """How one reason is answered: its HTTP status and the OCI error code in the body."""

    status: int
    code: str


# The spec says a 4xx JSON body's code "MUST be one of" its table (code-1 … code-14), so
# reasons the spec does not name answer with the nearest code it does name; the message
# tells the rest. Statuses are those the spec's endpoint table lists for each case.
ERRORS: dict[Reason, HttpError] = {
    Reason.BLOB_UNKNOWN: HttpError(404, "BLOB_UNKNOWN"),
    # Distribution answers 404, Quay 400. We answer 400: the session exists but this request
    # cannot proceed on it (a malformed session id, a body that ended early), which is a
    # client error; 404 stays reserved for BLOB_UPLOAD_UNKNOWN, so a client that reads only
    # the status restarts an upload exactly when its session is gone. 400 is also the
    # failure status the spec lists for end-4b and end-6.
    Reason.BLOB_UPLOAD_INVALID: HttpError(400, "BLOB_UPLOAD_INVALID"),
    Reason.BLOB_UPLOAD_UNKNOWN: HttpError(404, "BLOB_UPLOAD_UNKNOWN"),
    Reason.DIGEST_INVALID: HttpError(400, "DIGEST_INVALID"),
    Reason.MANIFEST_BLOB_UNKNOWN: HttpError(400, "MANIFEST_BLOB_UNKNOWN"),
    Reason.MANIFEST_INVALID: HttpError(400, "MANIFEST_INVALID"),
    Reason.MANIFEST_UNKNOWN: HttpError(404, "MANIFEST_UNKNOWN"),
    Reason.NAME_INVALID: HttpError(400, "NAME_INVALID"),
    Reason.NAME_UNKNOWN: HttpError(404, "NAME_UNKNOWN"),
    Reason.SIZE_INVALID: HttpError(400, "SIZE_INVALID"),
    Reason.UNAUTHORIZED: HttpError(401, "UNAUTHORIZED"),
    Reason.DENIED: HttpError(403, "DENIED"),
    # What a registry answers for an operation it does not offer (the spec: deletion
    # disabled → 400 or 405).
    Reason.UNSUPPORTED: HttpError(405, "UNSUPPORTED"),
    Reason.TOOMANYREQUESTS: HttpError(429, "TOOMANYREQUESTS"),
    # Not in the spec's table, but the spec names it among the legacy Docker codes a client
    # may meet.
    Reason.TAG_INVALID: HttpError(400, "TAG_INVALID"),
    # The spec: a manifest over the registry's limit SHOULD get 413 Payload Too Large.
    Reason.MANIFEST_TOO_LARGE: HttpError(413, "MANIFEST_INVALID"),
    # The spec: an out-of-order chunk MUST get 416; a blob range outside the blob gets 416
    # from RFC 9110.
    Reason.RANGE_INVALID: HttpError(416, "BLOB_UPLOAD_INVALID"),
    Reason.PAGINATION_INVALID: HttpError(400, "UNSUPPORTED"),
    # 5xx bodies are not bound to the spec's table.
    Reason.UNAVAILABLE: HttpError(503, "UNAVAILABLE"),
    # Administrative API only: creating what already exists.
    Reason.ALREADY_EXISTS: HttpError(409, "DENIED"),
    # Vulnerability API only: a severity filter that names no severity.
    Reason.SEVERITY_INVALID: HttpError(400, "UNSUPPORTED"),
}

# aiohttp's own errors (no route, method not allowed, …) by status; other 4xx → UNSUPPORTED.
_HTTP_CODES: dict[int, str] = {401: "UNAUTHORIZED", 403: "DENIED", 429: "TOOMANYREQUESTS"}

# gRPC statuses without an ErrorInfo that mean "a service is not answering now".
_UNAVAILABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class EdgeError(RegistryError):
    """A `RegistryError` whose response needs headers as well (a 416 gives the blob's size
    in Content-Range; a 401 will carry its challenge)."""

    def __init__(
        self, reason: Reason, message: str, *, headers: Mapping[str, str], **detail: str
    ) -> None:
        super().__init__(reason, message, **detail)
        self.headers = dict(headers)


def error_response(
    status: int,
    code: str,
    message: str,
    detail: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A response with the spec's error body holding one error."""
    error: dict[str, Any] = {"code": code, "message": message}
    if detail:
        error["detail"] = dict(detail)
    response = json_response({"errors": [error]}, status=status)
    if headers:
        response.headers.update(headers)
    return response


def registry_error_response(err: RegistryError) -> web.Response:
    """The response `ERRORS` assigns to `err`."""
    status, code = ERRORS[err.reason]
    if status >= 500:
        log.warning("%s: %s", err.reason, err.message)
    headers = err.headers if isinstance(err, EdgeError) else None
    return error_response(status, code, err.message, err.detail, headers)


def _http_exception_response(exc: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(exc.status, "UNSUPPORTED" if exc.status < 500 else "UNKNOWN")
    keep = {
        k: v for k, v in exc.headers.items() if k not in (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH)
    }
    return error_response(exc.status, code, exc.reason, headers=keep)


def _rpc_error_response(err: grpc.aio.AioRpcError) -> web.Response:
    carried = RegistryError.from_rpc_error(err)
    if carried is not None:
        return registry_error_response(carried)
    if err.code() in _UNAVAILABLE:
        log.warning("backend call failed: %s %s", err.code().name, err.details())
        return error_response(503, "UNAVAILABLE", "a backend service is unavailable, retry later")
    log.error("backend call failed: %s %s", err.code().name, err.details())
    return error_response(500, "UNKNOWN", "internal server error")


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer every failure of `handler` with the spec's error body.

    A response already under way (a blob cut off mid-stream) is the handler's to end; what
    arrives here has sent nothing yet.
    """
    try:
        return await handler(request)
    except RegistryError as err:
        return registry_error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_exception_response(exc)
    except grpc.aio.AioRpcError as err:
        return _rpc_error_response(err)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(500, "UNKNOWN", "internal server error")
