"""Bearer tokens of the Docker token flow: issued by the gateway's token endpoint and
verified by every gateway replica itself, with a signing key they share.

Access tokens carry the Docker token specification's claims (`iss`, `sub`, `aud`, `exp`,
`nbf`, `iat`, `jti`, `access`), plus `key` for a service account's key id. Refresh tokens
(for `docker login`'s offline tokens and OAuth2's refresh grant) carry `typ: refresh` and
no access. Both are ES256 JWTs (PyJWT over `cryptography`); verification accepts only that
algorithm, so `alg: none` and key-confusion tricks fail.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from artifactstore.errors import Reason, RegistryError

ALGORITHM = "ES256"
REFRESH = "refresh"
# Tolerated clock difference between gateway replicas.
LEEWAY_SECONDS = 10


@dataclass(frozen=True)
class Claims:
    """What a verified token says."""

    principal: str
    key_id: str
    # Repository name (or "registry:catalog") → actions granted; None for a refresh token.
    access: dict[str, frozenset[str]] | None
    expires_at: float


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The signing key at `path`, created (P-256, mode 0600) when absent.

    Replicas starting together may race to create it: the key is written to a temporary
    file and hard-linked into place, which fails if another replica got there first; then
    its key is used.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} does not hold an EC private key for {ALGORITHM}")
    return loaded


class TokenIssuer:
    """Issues and verifies the registry's tokens."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, service: str) -> None:
        self._key = key
        self._public = key.public_key()
        self.service = service

    def issue(
        self,
        principal: str,
        key_id: str,
        access: dict[str, list[str]],
        ttl: int,
        *,
        catalog: bool = False,
    ) -> tuple[str, float]:
        """An access token granting `access` (repository → actions); and its issue time."""
        now = time.time()
        grants: list[dict[str, Any]] = [
            {"type": "repository", "name": name, "actions": actions}
            for name, actions in access.items()
        ]
        if catalog:
            grants.append({"type": "registry", "name": "catalog", "actions": ["*"]})
        claims = self._base(principal, key_id, now, ttl) | {"access": grants}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM), now

    def issue_refresh(self, principal: str, key_id: str, ttl: int) -> str:
        """A refresh token for `principal`: no access of its own, exchanged for tokens."""
        claims = self._base(principal, key_id, time.time(), ttl) | {"typ": REFRESH}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def _base(self, principal: str, key_id: str, now: float, ttl: int) -> dict[str, Any]:
        return {
            "iss": self.service,
            "sub": principal,
            "aud": self.service,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now) + ttl,
            "jti": uuid.uuid4().hex,
            "key": key_id,
        }

    def verify(self, token: str, *, refresh: bool = False) -> Claims:
        """Check signature, algorithm, issuer, audience, times and kind; UNAUTHORIZED
        when any fails. `refresh` asks for a refresh token, else an access token."""
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=[ALGORITHM],
                audience=self.service,
                issuer=self.service,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "nbf", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as err:
            raise RegistryError(Reason.UNAUTHORIZED, f"invalid token: {err}") from None
        if (claims.get("typ") == REFRESH) != refresh:
            raise RegistryError(Reason.UNAUTHORIZED, "invalid token: wrong kind of token")
        access: dict[str, frozenset[str]] | None = None
        if not refresh:
            access = {}
            for grant in claims.get("access") or []:
                if not isinstance(grant, dict) or not isinstance(grant.get("actions"), list):
                    raise RegistryError(Reason.UNAUTHORIZED, "invalid token: malformed access")
                kind, name = grant.get("type"), grant.get("name")
                # Repositories by name; other resources as "type:name" ("registry:catalog").
                key = str(name) if kind == "repository" else f"{kind}:{name}"
                access[key] = frozenset(str(a) for a in grant["actions"])
        return Claims(
            principal=str(claims["sub"]),
            key_id=str(claims.get("key", "")),
            access=access,
            expires_at=float(claims["exp"]),
        )
