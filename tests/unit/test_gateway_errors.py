"""The gateway's one table from reason to HTTP answer, and the middleware that writes it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from artifactstore.config import Settings
from artifactstore.errors import Reason, RegistryError
from gateway.app import create_app
from gateway.errors import ERRORS, EdgeError, error_middleware, registry_error_response
from gateway.handlers.blobs import requested_range

# The spec's error codes (code-1 … code-14) and the legacy Docker codes it names.
SPEC_CODES = {
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
}
LEGACY_CODES = {"TAG_INVALID"}

EXPECTED_STATUS = {
    Reason.BLOB_UNKNOWN: 404,
    Reason.BLOB_UPLOAD_INVALID: 400,
    Reason.BLOB_UPLOAD_UNKNOWN: 404,
    Reason.DIGEST_INVALID: 400,
    Reason.MANIFEST_BLOB_UNKNOWN: 400,
    Reason.MANIFEST_INVALID: 400,
    Reason.MANIFEST_UNKNOWN: 404,
    Reason.NAME_INVALID: 400,
    Reason.NAME_UNKNOWN: 404,
    Reason.SIZE_INVALID: 400,
    Reason.UNAUTHORIZED: 401,
    Reason.DENIED: 403,
    Reason.UNSUPPORTED: 405,
    Reason.TOOMANYREQUESTS: 429,
    Reason.TAG_INVALID: 400,
    Reason.MANIFEST_TOO_LARGE: 413,
    Reason.RANGE_INVALID: 416,
    Reason.PAGINATION_INVALID: 400,
    Reason.UNAVAILABLE: 503,
    Reason.ALREADY_EXISTS: 409,
    Reason.SEVERITY_INVALID: 400,
}


def test_every_reason_has_an_entry() -> None:
    assert set(ERRORS) == set(Reason)


@pytest.mark.parametrize("reason", list(Reason))
def test_status_is_the_specs(reason: Reason) -> None:
    assert ERRORS[reason].status == EXPECTED_STATUS[reason]


@pytest.mark.parametrize("reason", list(Reason))
def test_client_errors_use_only_codes_the_spec_names(reason: Reason) -> None:
    status, code = ERRORS[reason]
    if status < 500:
        assert code in SPEC_CODES | LEGACY_CODES
    assert code.replace("_", "").isalpha() and code.isupper()


def test_spec_codes_keep_their_own_name() -> None:
    for code in SPEC_CODES | LEGACY_CODES:
        assert ERRORS[Reason(code)].code == code


def _unavailable() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection refused"
    )


async def _registry_error(request: web.Request) -> web.Response:
    raise RegistryError(Reason.MANIFEST_UNKNOWN, "no such manifest", name="a/b")


async def _carried_error(request: web.Request) -> web.Response:
    status = RegistryError(Reason.BLOB_UPLOAD_UNKNOWN, "no such upload").to_status()
    raise grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        status.details,
    )


async def _service_down(request: web.Request) -> web.Response:
    raise _unavailable()


async def _bug(request: web.Request) -> web.Response:
    raise ZeroDivisionError("secret internals")


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/registry", _registry_error)
    app.router.add_get("/carried", _carried_error)
    app.router.add_get("/down", _service_down)
    app.router.add_get("/bug", _bug)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_registry_error_body(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/registry")
    assert response.status == 404
    assert response.content_type == "application/json"
    assert await response.json() == {
        "errors": [
            {"code": "MANIFEST_UNKNOWN", "message": "no such manifest", "detail": {"name": "a/b"}}
        ]
    }


async def test_error_carried_over_grpc(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/carried")
    assert response.status == 404
    assert (await response.json())["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


async def test_service_down_is_503(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/down")
    assert response.status == 503
    assert (await response.json())["errors"][0]["code"] == "UNAVAILABLE"


async def test_unexpected_error_is_generic_500(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/bug")
    assert response.status == 500
    body = await response.json()
    assert body["errors"][0]["code"] == "UNKNOWN"
    assert "secret" not in await response.text()


async def test_unknown_route_and_method(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/nowhere")
    assert response.status == 404
    assert response.content_type == "application/json"
    assert (await response.json())["errors"][0]["code"] == "UNSUPPORTED"
    response = await client.post("/registry")
    assert response.status == 405
    assert "GET" in response.headers["Allow"]
    assert (await response.json())["errors"][0]["code"] == "UNSUPPORTED"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    # No service listens at these sockets: every backend call fails with UNAVAILABLE
    # once it has waited out its (here short) deadline.
    settings = Settings.from_env({"ARTS_DATA_DIR": str(tmp_path), "ARTS_RPC_TIMEOUT_SECS": "0.5"})
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


async def test_version_check_challenges_an_anonymous_client(
    gateway: TestClient[web.Request, web.Application],
) -> None:
    response = await gateway.get("/v2/")
    assert response.status == 401
    assert response.headers["Content-Type"] == "application/json"
    assert (await response.json())["errors"][0]["code"] == "UNAUTHORIZED"
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="http://') and '/v2/token",service="' in challenge
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        # The IAM service is down: no decision, no answer but 503.
        ("GET", "/v2/library/alpine/tags/list", 503, "UNAVAILABLE"),
        ("GET", "/v2/Bad_Name/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/a/unknown", 404, "UNSUPPORTED"),
        ("GET", "/v2/_catalog", 401, "UNAUTHORIZED"),
    ],
)
async def test_gateway_errors_carry_the_version_header(
    gateway: TestClient[web.Request, web.Application],
    method: str,
    path: str,
    status: int,
    code: str,
) -> None:
    response = await gateway.request(method, path)
    assert response.status == status
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert (await response.json())["errors"][0]["code"] == code


async def test_head_error_has_no_body(gateway: TestClient[web.Request, web.Application]) -> None:
    response = await gateway.head("/v2/Bad_Name/manifests/latest")
    assert response.status == 400
    assert await response.read() == b""


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 9)),
        ("bytes=5-", (5, 99)),
        ("bytes=90-200", (90, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-500", (0, 99)),
        ("bytes=0-1,5-6", None),
        ("items=0-9", None),
        ("bytes=9-0", None),
    ],
)
def test_blob_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert requested_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-160", "bytes=-0"])
def test_unsatisfiable_range_is_416_with_the_size(header: str) -> None:
    with pytest.raises(EdgeError) as caught:
        requested_range(header, 100)
    response = registry_error_response(caught.value)
    assert response.status == 416
    assert response.headers["Content-Range"] == "bytes */100"
