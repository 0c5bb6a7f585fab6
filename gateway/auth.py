"""Authentication and authorisation at the edge.

Every request names what it needs in the route table (`gateway/routes.py`): nothing
(`PUBLIC`), any caller with valid credentials or an anonymous token (`SIGNED_IN`), or an
action on the repository in its path. Credentials are a Bearer token this gateway issued
(verified here: signature, expiry, audience, issuer, scope) or Basic credentials (checked by
the IAM service). The decision itself is always the IAM service's (`Authorize`), cached
here briefly and dropped whenever the IAM policy version moves, so a revoked binding or a
deleted key stops working at once; a token's own scope only says what the client asked for.

Answers, as the Docker token flow expects them:
- no credentials and the action is not public: 401 with a Bearer challenge naming the scope;
- credentials that are not valid: 401 with the challenge (and `error="invalid_token"`);
- a token lacking a scope the principal does have: 401 with `error="insufficient_scope"`,
  so the client fetches a token for it;
- a principal without the right: 403 DENIED — whether or not the repository exists.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import grpc
from aiohttp import hdrs, web

from artifactstore import access
from artifactstore.errors import Reason, RegistryError
from artifactstore.iam.v1 import iam_pb2
from artifactstore.names import check_name
from artifactstore.rpc import call
from gateway.errors import EdgeError
from gateway.tokens import TokenIssuer

if TYPE_CHECKING:
    from artifactstore.iam.v1.iam_pb2_grpc import IamServiceAsyncStub

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

PUBLIC = "public"
SIGNED_IN = "signed-in"
CATALOG = "registry:catalog"
# Far above any real credential (a service-account key file is about 3 KiB in base64).
MAX_AUTHORIZATION_BYTES = 16 * 1024
DECISION_TTL_SECONDS = 5.0
CREDENTIAL_TTL_SECONDS = 60.0
MAX_CACHE_ENTRIES = 50_000


@dataclass(frozen=True)
class Identity:
    """Who is calling: a principal ("allUsers" when anonymous), the service-account key it
    used, and — for a Bearer token — what the token grants (None for Basic credentials)."""

    principal: str
    key_id: str = ""
    token_access: dict[str, frozenset[str]] | None = None

    @property
    def anonymous(self) -> bool:
        return self.principal == access.ALL_USERS


ANONYMOUS = Identity(access.ALL_USERS)


def parse_basic(header: str) -> tuple[str, str]:
    """The (username, password) of a Basic Authorization header; UNAUTHORIZED if malformed."""
    try:
        decoded = base64.b64decode(header, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise RegistryError(Reason.UNAUTHORIZED, "malformed Basic credentials") from None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise RegistryError(Reason.UNAUTHORIZED, "malformed Basic credentials")
    return username, password


class TtlCache(Generic[K, V]):
    """A bounded map whose entries expire; emptied whole when the IAM policy changes."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        if len(self._entries) >= MAX_CACHE_ENTRIES:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + (self._ttl if ttl is None else ttl), value)

    def clear(self) -> None:
        self._entries.clear()


class Gatekeeper:
    """The gateway's view of IAM: who a request is and what it may do, with caches."""

    def __init__(self, iam: IamServiceAsyncStub, issuer: TokenIssuer, realm: str) -> None:
        self.iam = iam
        self.issuer = issuer
        self._realm = realm
        self._decisions: TtlCache[tuple[str, str, str], frozenset[str]] = TtlCache(
            DECISION_TTL_SECONDS
        )
        self._credentials: TtlCache[bytes, Identity] = TtlCache(CREDENTIAL_TTL_SECONDS)
        self._tokens: TtlCache[str, Identity] = TtlCache(CREDENTIAL_TTL_SECONDS)

    def forget(self) -> None:
        """Drop every cached decision and credential (the IAM policy changed)."""
        self._decisions.clear()
        self._credentials.clear()
        self._tokens.clear()

    async def watch_policy(self) -> None:
        """Forget everything whenever the IAM policy version moves; reconnect when the
        stream breaks (forgetting too, since changes may have been missed)."""
        known: int | None = None
        while True:
            try:
                async for message in self.iam.WatchPolicy(iam_pb2.WatchPolicyRequest()):
                    if message.version != known:
                        known = message.version
                        self.forget()
            except grpc.aio.AioRpcError as err:
                log.debug("policy watch interrupted: %s", err.code())
            self.forget()
            known = None
            await asyncio.sleep(1.0)

    # -- who ------------------------------------------------------------------------

    async def login(self, username: str, password: str, source: str) -> Identity:
        """Check a username and password (or a key file) with IAM; successful checks are
        cached briefly (scrypt costs tens of milliseconds), failures never are."""
        fingerprint = hashlib.sha256(f"{username}\0{password}".encode()).digest()
        cached = self._credentials.get(fingerprint)
        if cached is not None:
            return cached
        reply = await call(
            self.iam.Authenticate(
                iam_pb2.AuthenticateRequest(username=username, password=password, source=source)
            )
        )
        identity = Identity(reply.principal, reply.key_id)
        self._credentials.put(fingerprint, identity)
        return identity

    async def identify(self, request: web.Request) -> Identity | None:
        """The caller's identity from its Authorization header; None when it sent none.
        UNAUTHORIZED for credentials that are malformed, oversized or not valid."""
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is None:
            return None
        if len(header) > MAX_AUTHORIZATION_BYTES:
            raise RegistryError(Reason.UNAUTHORIZED, "Authorization header too large")
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            cached = self._tokens.get(value)
            if cached is not None:
                return cached
            claims = self.issuer.verify(value)
            identity = Identity(claims.principal, claims.key_id, claims.access)
            self._tokens.put(
                value, identity, min(CREDENTIAL_TTL_SECONDS, claims.expires_at - time.time())
            )
            return identity
        if scheme.lower() == "basic" and value:
            username, password = parse_basic(value)
            return await self.login(username, password, request.remote or "")
        raise RegistryError(Reason.UNAUTHORIZED, "unsupported Authorization scheme")

    # -- what -----------------------------------------------------------------------

    async def allowed(self, identity: Identity, repository: str) -> frozenset[str]:
        """Every action `identity` may do on `repository`, by IAM's decision."""
        key = (identity.principal, identity.key_id, repository)
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        reply = await call(
            self.iam.Authorize(
                iam_pb2.AuthorizeRequest(
                    principal=identity.principal,
                    repository=repository,
                    actions=access.ACTIONS,
                    key_id=identity.key_id,
                )
            )
        )
        granted = frozenset(reply.granted)
        self._decisions.put(key, granted)
        return granted

    def challenge(
        self, request: web.Request, message: str, scope: str = "", error: str = ""
    ) -> EdgeError:
        """A 401 whose WWW-Authenticate tells the client where to get a token for `scope`."""
        realm = self._realm or f"{request.scheme}://{request.host}/v2/token"
        parts = [f'realm="{realm}"', f'service="{self.issuer.service}"']
        if scope:
            parts.append(f'scope="{scope}"')
        if error:
            parts.append(f'error="{error}"')
        return EdgeError(
            Reason.UNAUTHORIZED,
            message,
            headers={hdrs.WWW_AUTHENTICATE: "Bearer " + ",".join(parts)},
        )


def _scope(repository: str, action: str) -> str:
    # Docker clients ask pushes as "pull,push" (a push reads blobs too) and deletes as "*".
    actions = {access.PUSH: "pull,push", access.DELETE: "delete", access.MANAGE: "*"}
    return f"repository:{repository}:{actions.get(action, action)}"


IDENTITY = web.RequestKey("identity", Identity)
GATEKEEPER = web.AppKey("gatekeeper", Gatekeeper)


def identity(request: web.Request) -> Identity:
    """Who the request is from (set by the middleware before any handler runs)."""
    return request[IDENTITY]


def gatekeeper(request: web.Request) -> Gatekeeper:
    """The application's Gatekeeper."""
    return request.app[GATEKEEPER]


async def authorize(request: web.Request, requirement: str, repository: str | None) -> Identity:
    """Check that the request may do what its route needs; return who it is from."""
    keeper = gatekeeper(request)
    try:
        who = await keeper.identify(request)
    except RegistryError as err:
        if err.reason != Reason.UNAUTHORIZED:
            raise
        scope = _scope(repository, requirement) if repository else ""
        raise keeper.challenge(request, err.message, scope, "invalid_token") from None
    if requirement == SIGNED_IN:
        if who is None:
            scope = f"{CATALOG}:*" if request.match_info.route.name == "catalog" else ""
            raise keeper.challenge(request, "authentication required", scope)
        return who
    assert repository is not None
    check_name(repository)
    who = who or ANONYMOUS
    granted = await keeper.allowed(who, repository)
    if requirement not in granted:
        if who.anonymous:
            # Signing in may help, so the client hears where to do it.
            scope = _scope(repository, requirement)
            raise keeper.challenge(request, "authentication required", scope)
        raise RegistryError(
            Reason.DENIED, f"{requirement} on {repository} is not allowed", name=repository
        )
    if who.token_access is not None:
        asked = who.token_access.get(repository, frozenset())
        if requirement not in asked and "*" not in asked:
            raise keeper.challenge(
                request,
                f"the token does not grant {requirement} on {repository}",
                _scope(repository, requirement),
                "insufficient_scope",
            )
    return who


def auth_middleware(
    requirements: dict[tuple[str, str], str],
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware enforcing `requirements`: (route name, method) → PUBLIC, SIGNED_IN or an
    action on the path's repository. HEAD needs what GET needs."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route.name
        method = hdrs.METH_GET if request.method == hdrs.METH_HEAD else request.method
        requirement = requirements.get((route or "", method))
        if requirement is None:
            # Unknown routes and methods are answered by aiohttp (404/405), with no data.
            return await handler(request)
        if requirement != PUBLIC:
            name = request.match_info.get("name")
            request[IDENTITY] = await authorize(request, requirement, name)
        return await handler(request)

    return middleware
