"""The token endpoint of the Docker token flow: `GET /v2/token` (Docker's token
specification, Basic credentials or anonymous) and `POST /v2/token` (the OAuth2 form that
podman and containerd use: password and refresh_token grants).

A token holds only what was both asked for and allowed at the moment it was issued; the
gateway still asks IAM on every request, so a token never outlives a revoked right.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from multidict import MultiDictProxy

from artifactstore import access
from artifactstore.errors import Reason, RegistryError
from artifactstore.iam.v1 import iam_pb2
from artifactstore.names import check_name
from artifactstore.rpc import call
from gateway.auth import ANONYMOUS, CATALOG, Identity, gatekeeper
from gateway.keys import settings
from gateway.responses import json_response

# Form bodies are a few hundred bytes; a service-account key file as password is ~3 KiB.
MAX_FORM_BYTES = 64 * 1024


def _requested(scopes: list[str]) -> tuple[dict[str, set[str]], bool]:
    """Scopes (`repository:<name>:<actions>`, `registry:catalog:*`) as repository →
    actions asked for, and whether the catalog was asked for. NAME_INVALID for a malformed
    repository scope; scopes of other resource types are ignored (nothing is granted)."""
    repositories: dict[str, set[str]] = {}
    catalog = False
    for scope in (s for text in scopes for s in text.split()):
        resource, _, actions = scope.rpartition(":")
        kind, _, name = resource.partition(":")
        wanted = {a for a in actions.split(",") if a}
        if kind.split("(")[0] == "repository":
            check_name(name)
            if "*" in wanted:
                wanted |= set(access.ACTIONS)
            repositories.setdefault(name, set()).update(wanted)
        elif (kind, name) == ("registry", "catalog"):
            catalog = True
    return repositories, catalog


async def _grants(
    request: web.Request, who: Identity, scopes: list[str]
) -> tuple[dict[str, list[str]], bool]:
    keeper = gatekeeper(request)
    repositories, catalog = _requested(scopes)
    grants: dict[str, list[str]] = {}
    for name, wanted in repositories.items():
        allowed = await keeper.allowed(who, name)
        granted = [a for a in access.ACTIONS if a in wanted and a in allowed]
        if set(access.ACTIONS) <= set(granted):
            granted.append("*")
        grants[name] = granted
    return grants, catalog


def _check_service(request: web.Request, service: str | None) -> None:
    expected = gatekeeper(request).issuer.service
    if service and service != expected:
        raise RegistryError(Reason.DENIED, f"tokens are issued for service {expected!r} only")


def _issued(
    request: web.Request, who: Identity, grants: dict[str, list[str]], catalog: bool
) -> tuple[str, dict[str, object]]:
    keeper = gatekeeper(request)
    ttl = settings(request).token_ttl_seconds
    token, at = keeper.issuer.issue(who.principal, who.key_id, grants, ttl, catalog=catalog)
    issued_at = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    return token, {"expires_in": ttl, "issued_at": issued_at}


def _scope_text(grants: dict[str, list[str]], catalog: bool) -> str:
    scopes = [f"repository:{n}:{','.join(a)}" for n, a in grants.items() if a]
    return " ".join([*scopes, f"{CATALOG}:*"] if catalog else scopes)


async def get_token(request: web.Request) -> web.Response:
    """`GET /v2/token?service=&scope=…&offline_token=`: a token for what the caller (Basic
    credentials, or anonymous without them) may do of what it asks; with
    `offline_token=true` also a refresh token, as `docker login` asks."""
    query = request.query
    _check_service(request, query.get("service"))
    who = await gatekeeper(request).identify(request) or ANONYMOUS
    grants, catalog = await _grants(request, who, query.getall("scope", []))
    token, meta = _issued(request, who, grants, catalog)
    body: dict[str, object] = {"token": token, "access_token": token, **meta}
    if query.get("offline_token") == "true" and not who.anonymous:
        body["refresh_token"] = gatekeeper(request).issuer.issue_refresh(
            who.principal, who.key_id, settings(request).refresh_token_ttl_seconds
        )
    return json_response(body)


async def post_token(request: web.Request) -> web.Response:
    """`POST /v2/token` with an OAuth2 form: `grant_type=password` (username, password) or
    `grant_type=refresh_token` (refresh_token); `access_type=offline` asks for a refresh
    token with a password grant."""
    if (request.content_length or 0) > MAX_FORM_BYTES:
        raise RegistryError(Reason.DENIED, "token request too large")
    form = await request.post()
    _check_service(request, _field(form, "service"))
    keeper = gatekeeper(request)
    grant_type = _field(form, "grant_type")
    refresh = None
    if grant_type == "password":
        who = await keeper.login(
            _field(form, "username"), _field(form, "password"), request.remote or ""
        )
        if _field(form, "access_type") == "offline":
            refresh = keeper.issuer.issue_refresh(
                who.principal, who.key_id, settings(request).refresh_token_ttl_seconds
            )
    elif grant_type == "refresh_token":
        refresh = _field(form, "refresh_token")
        claims = keeper.issuer.verify(refresh, refresh=True)
        active = await call(
            keeper.iam.CheckPrincipal(
                iam_pb2.CheckPrincipalRequest(principal=claims.principal, key_id=claims.key_id)
            )
        )
        if not active.active:
            raise RegistryError(Reason.UNAUTHORIZED, "the refresh token's principal is gone")
        who = Identity(claims.principal, claims.key_id)
    else:
        raise RegistryError(Reason.UNSUPPORTED, f"unsupported grant_type {grant_type!r}")
    grants, catalog = await _grants(request, who, [_field(form, "scope")])
    token, meta = _issued(request, who, grants, catalog)
    body: dict[str, object] = {"access_token": token, "scope": _scope_text(grants, catalog), **meta}
    if refresh is not None:
        body["refresh_token"] = refresh
    return json_response(body)


def _field(form: MultiDictProxy[str | bytes | bytearray | web.FileField], name: str) -> str:
    """A text field of the form ("" when absent or a file)."""
    value = form.get(name, "")
    return value if isinstance(value, str) else ""
