"""IAM as transactional functions: organizations, projects, users, service accounts and
their keys, role bindings, decisions, and the audit log.

Every change is one transaction that also bumps the policy version and appends its audit
entry, so a decision cache keyed on the version can never serve a decision older than a
change it has heard of, and no change goes unaudited.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from artifactstore import access
from artifactstore.access import Role
from artifactstore.errors import Reason, RegistryError
from artifactstore.names import check_name
from metadata_svc.keys import IamKeyspace, decode_int
from metadata_svc.kv import Database, Transaction

T = TypeVar("T")

# scrypt parameters (RFC 7914's interactive setting): ~16 MiB and tens of ms per check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# Authentication failures tolerated per principal within the window before refusing.
MAX_FAILURES = 5
FAILURE_WINDOW_SECONDS = 60.0
SERVICE_ACCOUNT_DOMAIN = "iam.artifact-store"

_ORG_OR_PROJECT = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_USER = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._@-]{0,63}$")
_SERVICE_ACCOUNT = re.compile(r"^[a-z][a-z0-9-]{0,62}[a-z0-9]$")


def hash_password(password: str) -> str:
    """A salted scrypt hash of `password`, self-describing so parameters can change."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a hash made by hash_password (constant-time compare)."""
    try:
        _, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


def _public_key_der(pem: str, *, private: bool) -> bytes:
    """SubjectPublicKeyInfo DER of a PEM key (the public half of a private one)."""
    try:
        if private:
            key = serialization.load_pem_private_key(pem.encode(), password=None)
            public = key.public_key()
        else:
            public = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise RegistryError(Reason.UNAUTHORIZED, f"unusable key: {err}") from None
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _unauthorized() -> RegistryError:
    # One message for every failure, so answers do not tell which principals exist.
    return RegistryError(Reason.UNAUTHORIZED, "invalid credentials")


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.match(value):
        raise RegistryError(Reason.NAME_INVALID, f"invalid {what} {value[:100]!r}")
    return value


@dataclass(frozen=True)
class Binding:
    """A role bound to a principal at a scope."""

    kind: str
    name: str
    principal: str
    role: str


@dataclass(frozen=True)
class AuditEntry:
    """Who did what, to what, when and from where."""

    at: float
    principal: str
    source: str
    action: str
    target: str
    detail: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Caller:
    """Who makes an administrative call: the principal and where the call came from."""

    principal: str
    source: str = ""


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class IamStore:
    """The IAM data and decisions of metadata_svc."""

    def __init__(self, db: Database, directory: str, default_organization: str) -> None:
        self._db = db
        self._keys = IamKeyspace(db.directory(directory))
        self.default_organization = default_organization
        self._version_changed = asyncio.Event()

    # -- plumbing ---------------------------------------------------------------------

    async def _change(
        self,
        caller: Caller,
        action: str,
        target: str,
        fn: Callable[[Transaction], T],
        **detail: str,
    ) -> T:
        """Run an IAM change with its policy-version bump and audit entry, atomically."""
        keys = self._keys

        def wrapped(tr: Transaction) -> T:
            if not caller.principal.startswith(access.OPERATOR_PREFIX):
                self._require_manage(tr, caller.principal, target)
            result = fn(tr)
            tr.add(keys.policy_version(), 1)
            self._audit(
                tr, AuditEntry(time.time(), caller.principal, caller.source, action, target, detail)
            )
            return result

        result = await self._db.run(wrapped)
        self._version_changed.set()
        return result

    def _audit(self, tr: Transaction, entry: AuditEntry) -> None:
        nonce = uuid.uuid4().hex[:8]
        tr.set(self._keys.audit(int(entry.at * 1e9), nonce), _json(asdict(entry)))

    def _require_manage(self, tr: Transaction, principal: str, target: str) -> None:
        """Callers other than operators need owner where they change something."""
        kind, _, name = target.partition(":")
        if self._role_at(tr, principal, kind, name) < Role.OWNER:
            raise RegistryError(Reason.DENIED, f"{principal} may not manage {target}")

    async def policy_version(self) -> int:
        """The current policy version."""
        key = self._keys.policy_version()
        return decode_int(await self._db.read(lambda tr: tr.get(key)))

    async def wait_for_change(self, known: int, poll_seconds: float = 1.0) -> int:
        """Return the policy version once it differs from `known`. Changes made here wake
        the waiter at once; changes made by other replicas are found by polling."""
        while True:
            version = await self.policy_version()
            if version != known:
                return version
            self._version_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._version_changed.wait(), poll_seconds)

    # -- decisions --------------------------------------------------------------------

    def _binding_role(self, tr: Transaction, kind: str, name: str, principal: str) -> Role | None:
        raw = tr.get(self._keys.binding(kind, name, principal))
        return Role.parse(raw.decode(), kind) if raw else None

    def _principal_active(self, tr: Transaction, principal: str, key_id: str = "") -> bool:
        keys = self._keys
        if principal == access.ALL_USERS:
            return True
        if principal.startswith(access.USER_PREFIX):
            raw = tr.get(keys.user(principal.removeprefix(access.USER_PREFIX)))
            return raw is not None and not json.loads(raw)["disabled"]
        if principal.startswith(access.SERVICE_ACCOUNT_PREFIX):
            email = principal.removeprefix(access.SERVICE_ACCOUNT_PREFIX)
            raw = tr.get(keys.service_account(email))
            if raw is None or json.loads(raw)["disabled"]:
                return False
            if key_id:
                key = tr.get(keys.key(key_id))
                return key is not None and not json.loads(key)["disabled"]
            return True
        return False

    def _scopes_of(
        self, tr: Transaction, kind: str, name: str
    ) -> tuple[list[tuple[str, str]], bool]:
        """The scopes from the root down to (kind, name), and whether they all exist."""
        scopes = [("root", "")]
        if kind == "root":
            return scopes, True
        if kind == "organization":
            return [*scopes, ("organization", name)], tr.get(
                self._keys.organization(name)
            ) is not None
        project = access.project_of(name) if kind == "repository" else name
        raw = tr.get(self._keys.project(project))
        org = json.loads(raw)["organization"] if raw else self.default_organization
        scopes += [("organization", org), ("project", project)]
        if kind == "repository":
            scopes.append(("repository", name))
        return scopes, raw is not None

    def _role_at(self, tr: Transaction, principal: str, kind: str, name: str) -> Role | int:
        """The strongest role `principal` (or allUsers) has at a scope, inherited from
        above; 0 for none."""
        if not self._principal_active(tr, principal):
            return 0
        scopes, _ = self._scopes_of(tr, kind, name)
        principals = {principal, access.ALL_USERS}
        best: Role | int = 0
        for scope_kind, scope_name in scopes:
            for p in principals:
                role = self._binding_role(tr, scope_kind, scope_name, p)
                if role is not None and role > best:
                    best = role
        return best

    async def authorize(
        self, principal: str, repository: str, actions: list[str], key_id: str = ""
    ) -> tuple[list[str], int]:
        """Of `actions` on `repository`, those `principal` may do, and the policy version.

        A repository of a project that does not exist yet is judged from the root and
        the default organization; pushing there (which creates the project) is for
        owners of those only. The answer never depends on whether the repository exists.
        """
        check_name(repository)
        keys = self._keys

        def fn(tr: Transaction) -> tuple[list[str], int]:
            version = decode_int(tr.get(keys.policy_version()))
            if not self._principal_active(tr, principal, key_id):
                return [], version
            _, project_exists = self._scopes_of(tr, "repository", repository)
            role = self._role_at(tr, principal, "repository", repository)
            allowed = set(Role(role).actions) if role else set()
            if not project_exists and role < Role.OWNER:
                allowed.discard(access.PUSH)
            return [a for a in actions if a in allowed], version

        return await self._db.read(fn)

    async def check_principal(self, principal: str, key_id: str) -> bool:
        """Whether the principal (and its key, when given) exists and is enabled."""
        return await self._db.read(lambda tr: self._principal_active(tr, principal, key_id))

    def ensure_project(self, tr: Transaction, project: str) -> None:
        """Inside a registry transaction: create `project` in the default organization if
        it does not exist (a first push into it, already authorised as owner)."""
        key = self._keys.project(project)
        if tr.get(key) is None:
            org = self.default_organization
            tr.set(key, _json({"organization": org, "created_at": time.time()}))
            tr.set(self._keys.project_of_organization(org, project), b"")
            tr.add(self._keys.policy_version(), 1)

    # -- authentication ---------------------------------------------------------------

    async def authenticate(self, username: str, password: str, source: str) -> tuple[str, str]:
        """Check a password or a service-account key; return (principal, key id).

        Raises UNAUTHORIZED for any failure and TOOMANYREQUESTS while a principal has
        failed too often recently; failures are counted per principal in the store, so
        every replica sees them.
        """
        if username in access.JSON_KEY_USERS:
            return await self._authenticate_key(username, password, source)
        if not _USER.match(username):
            raise _unauthorized()
        key = self._keys.user(username)
        principal = access.USER_PREFIX + username
        await self._check_failures(principal)
        raw = await self._db.run(lambda tr: tr.get(key))
        record = json.loads(raw) if raw else None
        # Hash even for unknown users, so timing does not reveal which names exist.
        stored = record["password_hash"] if record else _DUMMY_HASH
        ok = await asyncio.to_thread(verify_password, password, stored)
        if not ok or record is None or record["disabled"]:
            await self._record_failure(principal, source)
            raise _unauthorized()
        await self._clear_failures(principal)
        return principal, ""

    async def _authenticate_key(self, username: str, password: str, source: str) -> tuple[str, str]:
        text = password
        if username == "_json_key_base64":
            try:
                text = base64.b64decode(password, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise _unauthorized() from None
        try:
            keyfile = json.loads(text)
            key_id = str(keyfile["private_key_id"])
            email = str(keyfile["client_email"])
            private_pem = str(keyfile["private_key"])
        except (ValueError, KeyError, TypeError):
            raise _unauthorized() from None
        principal = access.SERVICE_ACCOUNT_PREFIX + email
        await self._check_failures(principal)
        keys = self._keys

        def fn(tr: Transaction) -> dict[str, Any] | None:
            raw = tr.get(keys.key(key_id)) if len(key_id) <= 100 else None
            if raw is None or not self._principal_active(tr, principal, key_id):
                return None
            record: dict[str, Any] = json.loads(raw)
            return record if record["service_account"] == email else None

        record = await self._db.run(fn)
        try:
            proven = record is not None and hmac.compare_digest(
                _public_key_der(private_pem, private=True),
                _public_key_der(record["public_key_pem"], private=False),
            )
        except RegistryError:
            proven = False
        if not proven:
            await self._record_failure(principal, source)
            raise _unauthorized()
        await self._clear_failures(principal)
        return principal, key_id

    async def _check_failures(self, principal: str) -> None:
        key = self._keys.auth_failures(principal)
        raw = await self._db.run(lambda tr: tr.get(key))
        if raw:
            window = json.loads(raw)
            if (
                window["count"] >= MAX_FAILURES
                and time.time() - window["since"] < FAILURE_WINDOW_SECONDS
            ):
                raise RegistryError(
                    Reason.TOOMANYREQUESTS,
                    "too many failed sign-ins; try again later",
                    retry_after=str(
                        int(FAILURE_WINDOW_SECONDS - (time.time() - window["since"])) + 1
                    ),
                )

    async def _record_failure(self, principal: str, source: str) -> None:
        key = self._keys.auth_failures(principal)

        def fn(tr: Transaction) -> None:
            raw = tr.get(key)
            now = time.time()
            window = json.loads(raw) if raw else None
            if window is None or now - window["since"] >= FAILURE_WINDOW_SECONDS:
                window = {"count": 0, "since": now}
            window["count"] += 1
            tr.set(key, _json(window))
            if window["count"] == MAX_FAILURES:
                self._audit(tr, AuditEntry(now, principal, source, "auth.locked", principal))

        await self._db.run(fn)

    async def _clear_failures(self, principal: str) -> None:
        key = self._keys.auth_failures(principal)

        def fn(tr: Transaction) -> None:
            if tr.get(key) is not None:
                tr.clear(key)

        await self._db.run(fn)

    # -- organizations and projects ---------------------------------------------------

    async def create_organization(self, caller: Caller, name: str) -> dict[str, Any]:
        """Create an organization (ALREADY_EXISTS-like DENIED if it exists)."""
        _check(_ORG_OR_PROJECT, name, "organization name")
        record = {"name": name, "created_at": time.time()}
        key = self._keys.organization(name)

        def fn(tr: Transaction) -> dict[str, Any]:
            if tr.get(key) is not None:
                raise _exists(f"organization {name}")
            tr.set(key, _json(record))
            return record

        return await self._change(caller, "iam.organization.create", "root:", fn, name=name)

    async def list_organizations(self) -> list[dict[str, Any]]:
        """Every organization."""
        space = self._keys.organizations()
        rows = await self._db.run(lambda tr: tr.get_range_startswith(space.key()))
        return [json.loads(v) for _, v in rows]

    async def delete_organization(self, caller: Caller, name: str) -> bool:
        """Delete an organization that has no projects; its bindings go with it."""
        keys = self._keys

        def fn(tr: Transaction) -> bool:
            if tr.get(keys.organization(name)) is None:
                return False
            if tr.get_range_startswith(keys.projects_of_organization(name).key(), limit=1):
                raise RegistryError(Reason.DENIED, f"organization {name} still has projects")
            self._clear_bindings_at(tr, "organization", name)
            tr.clear(keys.organization(name))
            return True

        return await self._change(caller, "iam.organization.delete", f"organization:{name}", fn)

    async def create_project(self, caller: Caller, org: str, name: str) -> dict[str, Any]:
        """Create a project in an organization (the default one when `org` is empty);
        project names are unique registry-wide."""
        _check(_ORG_OR_PROJECT, name, "project name")
        org = org or self.default_organization
        keys = self._keys
        record = {"name": name, "organization": org, "created_at": time.time()}

        def fn(tr: Transaction) -> dict[str, Any]:
            if tr.get(keys.organization(org)) is None:
                raise RegistryError(Reason.NAME_UNKNOWN, f"organization {org!r} is not known")
            if tr.get(keys.project(name)) is not None:
                raise _exists(f"project {name}")
            tr.set(keys.project(name), _json(record))
            tr.set(keys.project_of_organization(org, name), b"")
            return record

        return await self._change(
            caller, "iam.project.create", f"organization:{org}", fn, name=name
        )

    async def list_projects(self, org: str) -> list[dict[str, Any]]:
        """Projects of one organization, or of all when `org` is empty."""
        keys = self._keys

        def fn(tr: Transaction) -> list[dict[str, Any]]:
            rows = tr.get_range_startswith(keys.projects().key())
            found = [{"name": keys.projects().unpack(k)[0], **json.loads(v)} for k, v in rows]
            return [p for p in found if not org or p["organization"] == org]

        return await self._db.run(fn)

    async def delete_project(
        self, caller: Caller, name: str, has_repositories: Callable[[Transaction], bool]
    ) -> bool:
        """Delete a project with no repositories, its service accounts and bindings."""
        keys = self._keys

        def fn(tr: Transaction) -> bool:
            raw = tr.get(keys.project(name))
            if raw is None:
                return False
            if has_repositories(tr):
                raise RegistryError(Reason.DENIED, f"project {name} still has repositories")
            space = keys.service_accounts_of_project(name)
            for k, _ in tr.get_range_startswith(space.key()):
                self._delete_service_account(tr, space.unpack(k)[0])
            self._clear_bindings_at(tr, "project", name)
            tr.clear(keys.project_of_organization(json.loads(raw)["organization"], name))
            tr.clear(keys.project(name))
            return True

        return await self._change(caller, "iam.project.delete", f"project:{name}", fn)

    # -- users ------------------------------------------------------------------------

    async def create_user(self, caller: Caller, name: str, password: str) -> dict[str, Any]:
        """Create a user with a password (stored only as a scrypt hash)."""
        _check(_USER, name, "user name")
        if len(password) < 8:
            raise RegistryError(Reason.DENIED, "passwords need at least 8 characters")
        password_hash = await asyncio.to_thread(hash_password, password)
        key = self._keys.user(name)
        record = {
            "name": name,
            "password_hash": password_hash,
            "disabled": False,
            "created_at": time.time(),
        }

        def fn(tr: Transaction) -> dict[str, Any]:
            if tr.get(key) is not None:
                raise _exists(f"user {name}")
            tr.set(key, _json(record))
            return record

        return await self._change(caller, "iam.user.create", "root:", fn, name=name)

    async def list_users(self) -> list[dict[str, Any]]:
        """Every user (without password hashes)."""
        space = self._keys.users()
        rows = await self._db.run(lambda tr: tr.get_range_startswith(space.key()))
        return [
            {k: v for k, v in json.loads(raw).items() if k != "password_hash"} for _, raw in rows
        ]

    async def update_user(
        self, caller: Caller, name: str, password: str | None, disabled: bool | None
    ) -> dict[str, Any]:
        """Change a user's password or disabled flag."""
        if password is not None and len(password) < 8:
            raise RegistryError(Reason.DENIED, "passwords need at least 8 characters")
        password_hash = (
            await asyncio.to_thread(hash_password, password) if password is not None else None
        )
        key = self._keys.user(name)

        def fn(tr: Transaction) -> dict[str, Any]:
            raw = tr.get(key)
            if raw is None:
                raise RegistryError(Reason.NAME_UNKNOWN, f"user {name!r} is not known")
            record: dict[str, Any] = json.loads(raw)
            if password_hash is not None:
                record["password_hash"] = password_hash
            if disabled is not None:
                record["disabled"] = disabled
            tr.set(key, _json(record))
            return record

        return await self._change(caller, "iam.user.update", "root:", fn, name=name)

    async def delete_user(self, caller: Caller, name: str) -> bool:
        """Delete a user and every binding of theirs."""
        keys = self._keys

        def fn(tr: Transaction) -> bool:
            if tr.get(keys.user(name)) is None:
                return False
            self._clear_bindings_of(tr, access.USER_PREFIX + name)
            tr.clear(keys.user(name))
            return True

        return await self._change(caller, "iam.user.delete", "root:", fn, name=name)

    # -- service accounts and keys ----------------------------------------------------

    async def create_service_account(
        self, caller: Caller, project: str, name: str
    ) -> dict[str, Any]:
        """Create a service account in a project; its email is `<name>@<project>.<domain>`."""
        _check(_SERVICE_ACCOUNT, name, "service account name")
        email = f"{name}@{project}.{SERVICE_ACCOUNT_DOMAIN}"
        keys = self._keys
        record = {
            "email": email,
            "project": project,
            "name": name,
            "disabled": False,
            "created_at": time.time(),
        }

        def fn(tr: Transaction) -> dict[str, Any]:
            if tr.get(keys.project(project)) is None:
                raise RegistryError(Reason.NAME_UNKNOWN, f"project {project!r} is not known")
            if tr.get(keys.service_account(email)) is not None:
                raise _exists(f"service account {email}")
            tr.set(keys.service_account(email), _json(record))
            tr.set(keys.service_account_of_project(project, email), b"")
            return record

        return await self._change(
            caller, "iam.service_account.create", f"project:{project}", fn, email=email
        )

    async def list_service_accounts(self, project: str) -> list[dict[str, Any]]:
        """The service accounts of a project."""
        keys = self._keys

        def fn(tr: Transaction) -> list[dict[str, Any]]:
            space = keys.service_accounts_of_project(project)
            emails = [space.unpack(k)[0] for k, _ in tr.get_range_startswith(space.key())]
            return [json.loads(raw) for e in emails if (raw := tr.get(keys.service_account(e)))]

        return await self._db.run(fn)

    def _service_account(self, tr: Transaction, email: str) -> dict[str, Any]:
        raw = tr.get(self._keys.service_account(email))
        if raw is None:
            raise RegistryError(Reason.NAME_UNKNOWN, f"service account {email!r} is not known")
        record: dict[str, Any] = json.loads(raw)
        return record

    def _delete_service_account(self, tr: Transaction, email: str) -> None:
        keys = self._keys
        record = self._service_account(tr, email)
        space = keys.keys_of_service_account(email)
        for k, _ in tr.get_range_startswith(space.key()):
            tr.clear(keys.key(space.unpack(k)[0]))
        tr.clear_range_startswith(space.key())
        self._clear_bindings_of(tr, access.SERVICE_ACCOUNT_PREFIX + email)
        tr.clear(keys.service_account_of_project(record["project"], email))
        tr.clear(keys.service_account(email))

    async def delete_service_account(self, caller: Caller, email: str) -> bool:
        """Delete a service account, its keys and its bindings."""
        keys = self._keys
        project = email.partition("@")[2].removesuffix("." + SERVICE_ACCOUNT_DOMAIN)

        def fn(tr: Transaction) -> bool:
            if tr.get(keys.service_account(email)) is None:
                return False
            self._delete_service_account(tr, email)
            return True

        return await self._change(
            caller, "iam.service_account.delete", f"project:{project}", fn, email=email
        )

    async def create_key(self, caller: Caller, email: str, public_key_pem: str) -> dict[str, Any]:
        """Register the public half of a key pair for a service account."""
        _public_key_der(public_key_pem, private=False)
        keys = self._keys
        key_id = secrets.token_hex(20)
        project = email.partition("@")[2].removesuffix("." + SERVICE_ACCOUNT_DOMAIN)
        record = {
            "key_id": key_id,
            "service_account": email,
            "public_key_pem": public_key_pem,
            "disabled": False,
            "created_at": time.time(),
        }

        def fn(tr: Transaction) -> dict[str, Any]:
            self._service_account(tr, email)
            tr.set(keys.key(key_id), _json(record))
            tr.set(keys.key_of_service_account(email, key_id), b"")
            return record

        return await self._change(caller, "iam.key.create", f"project:{project}", fn, key_id=key_id)

    async def list_keys(self, email: str) -> list[dict[str, Any]]:
        """The keys of a service account."""
        keys = self._keys

        def fn(tr: Transaction) -> list[dict[str, Any]]:
            space = keys.keys_of_service_account(email)
            ids = [space.unpack(k)[0] for k, _ in tr.get_range_startswith(space.key())]
            return [json.loads(raw) for i in ids if (raw := tr.get(keys.key(i)))]

        return await self._db.run(fn)

    def _key_project(self, tr: Transaction, key_id: str) -> tuple[dict[str, Any], str]:
        raw = tr.get(self._keys.key(key_id))
        if raw is None:
            raise RegistryError(Reason.NAME_UNKNOWN, f"key {key_id[:100]!r} is not known")
        record: dict[str, Any] = json.loads(raw)
        return record, self._service_account(tr, record["service_account"])["project"]

    async def update_key(self, caller: Caller, key_id: str, disabled: bool) -> dict[str, Any]:
        """Disable or enable a key."""
        _, project = await self._db.run(lambda tr: self._key_project(tr, key_id))

        def fn(tr: Transaction) -> dict[str, Any]:
            current, _ = self._key_project(tr, key_id)
            current["disabled"] = disabled
            tr.set(self._keys.key(key_id), _json(current))
            return current

        return await self._change(
            caller,
            "iam.key.update",
            f"project:{project}",
            fn,
            key_id=key_id,
            disabled=str(disabled),
        )

    async def delete_key(self, caller: Caller, key_id: str) -> bool:
        """Delete a key; it stops working at once."""
        keys = self._keys
        raw = await self._db.run(lambda tr: tr.get(keys.key(key_id)))
        if raw is None:
            return False
        email = json.loads(raw)["service_account"]
        project = email.partition("@")[2].removesuffix("." + SERVICE_ACCOUNT_DOMAIN)

        def fn(tr: Transaction) -> bool:
            if tr.get(keys.key(key_id)) is None:
                return False
            tr.clear(keys.key(key_id))
            tr.clear(keys.key_of_service_account(email, key_id))
            return True

        return await self._change(caller, "iam.key.delete", f"project:{project}", fn, key_id=key_id)

    # -- bindings ---------------------------------------------------------------------

    def _check_scope(self, tr: Transaction, kind: str, name: str) -> None:
        keys = self._keys
        if kind == "root":
            if name:
                raise RegistryError(Reason.NAME_INVALID, "the root scope has no name")
        elif kind == "organization":
            if tr.get(keys.organization(name)) is None:
                raise RegistryError(Reason.NAME_UNKNOWN, f"organization {name!r} is not known")
        elif kind == "project":
            if tr.get(keys.project(name)) is None:
                raise RegistryError(Reason.NAME_UNKNOWN, f"project {name!r} is not known")
        elif kind == "repository":
            check_name(name)
        else:
            raise RegistryError(Reason.NAME_INVALID, f"unknown scope kind {kind!r}")

    async def grant(self, caller: Caller, binding: Binding) -> Binding:
        """Bind a role to a principal at a scope, replacing the role it had there."""
        try:
            Role.parse(binding.role, binding.kind)
        except ValueError as err:
            raise RegistryError(Reason.NAME_INVALID, str(err)) from None
        keys = self._keys

        def fn(tr: Transaction) -> Binding:
            self._check_scope(tr, binding.kind, binding.name)
            if binding.principal != access.ALL_USERS and not self._principal_active(
                tr, binding.principal
            ):
                raise RegistryError(
                    Reason.NAME_UNKNOWN, f"principal {binding.principal!r} is not known"
                )
            tr.set(
                keys.binding(binding.kind, binding.name, binding.principal), binding.role.encode()
            )
            tr.set(
                keys.binding_of_principal(binding.principal, binding.kind, binding.name),
                binding.role.encode(),
            )
            return binding

        target = f"{binding.kind}:{binding.name}"
        return await self._change(
            caller, "iam.grant", target, fn, principal=binding.principal, role=binding.role
        )

    async def revoke(self, caller: Caller, kind: str, name: str, principal: str) -> bool:
        """Remove a principal's binding at a scope."""
        keys = self._keys

        def fn(tr: Transaction) -> bool:
            if tr.get(keys.binding(kind, name, principal)) is None:
                return False
            tr.clear(keys.binding(kind, name, principal))
            tr.clear(keys.binding_of_principal(principal, kind, name))
            return True

        return await self._change(caller, "iam.revoke", f"{kind}:{name}", fn, principal=principal)

    async def list_bindings(self, kind: str, name: str, principal: str) -> list[Binding]:
        """Bindings at a scope (kind set), of a principal (principal set), or both."""
        keys = self._keys

        def fn(tr: Transaction) -> list[Binding]:
            if principal:
                space = keys.bindings_of_principal(principal)
                rows = [(*space.unpack(k), v) for k, v in tr.get_range_startswith(space.key())]
                found = [Binding(k, n, principal, v.decode()) for k, n, v in rows]
                return [b for b in found if not kind or (b.kind, b.name) == (kind, name)]
            space = keys.bindings(kind, name)
            return [
                Binding(kind, name, space.unpack(k)[0], v.decode())
                for k, v in tr.get_range_startswith(space.key())
            ]

        return await self._db.run(fn)

    def _clear_bindings_at(self, tr: Transaction, kind: str, name: str) -> None:
        space = self._keys.bindings(kind, name)
        for k, _ in tr.get_range_startswith(space.key()):
            tr.clear(self._keys.binding_of_principal(space.unpack(k)[0], kind, name))
        tr.clear_range_startswith(space.key())

    def _clear_bindings_of(self, tr: Transaction, principal: str) -> None:
        space = self._keys.bindings_of_principal(principal)
        for k, _ in tr.get_range_startswith(space.key()):
            kind, name = space.unpack(k)
            tr.clear(self._keys.binding(kind, name, principal))
        tr.clear_range_startswith(space.key())

    # -- audit ------------------------------------------------------------------------

    async def record_audit(self, entry: AuditEntry) -> AuditEntry:
        """Append an entry to the audit log."""

        def fn(tr: Transaction) -> None:
            self._audit(tr, entry)

        await self._db.run(fn)
        return entry

    async def list_audit(self, limit: int, before: float) -> list[AuditEntry]:
        """Audit entries, newest first, older than `before` when it is set."""
        space = self._keys.audits()
        end = space.pack((int(before * 1e9),)) if before else space.range().stop

        def fn(tr: Transaction) -> list[tuple[bytes, bytes]]:
            return tr.get_range(
                space.range().start, end, limit=min(limit or 100, 1000), reverse=True
            )

        return [AuditEntry(**json.loads(v)) for _, v in await self._db.run(fn)]

    # -- bootstrap --------------------------------------------------------------------

    async def bootstrap(self, admin_user: str, admin_password: str | None) -> str | None:
        """On an empty store: create the default organization and the initial admin,
        owner at the root. Returns the generated password when none was given, so the
        caller can print it once; None when the store was already set up."""
        password = admin_password or secrets.token_urlsafe(18)
        password_hash = await asyncio.to_thread(hash_password, password)
        keys = self._keys
        org = self.default_organization
        operator = Caller(access.OPERATOR_PREFIX + "bootstrap")

        def fn(tr: Transaction) -> bool:
            if tr.get(keys.bootstrap()) is not None:
                return False
            now = time.time()
            if tr.get(keys.organization(org)) is None:
                tr.set(keys.organization(org), _json({"name": org, "created_at": now}))
            record = {
                "name": admin_user,
                "password_hash": password_hash,
                "disabled": False,
                "created_at": now,
            }
            tr.set(keys.user(admin_user), _json(record))
            principal = access.USER_PREFIX + admin_user
            tr.set(keys.binding("root", "", principal), b"owner")
            tr.set(keys.binding_of_principal(principal, "root", ""), b"owner")
            tr.set(keys.bootstrap(), _json({"at": now, "admin": admin_user}))
            return True

        done = await self._change(operator, "iam.bootstrap", "root:", fn, admin=admin_user)
        if not done:
            return None
        return None if admin_password else password


def _exists(what: str) -> RegistryError:
    return RegistryError(Reason.ALREADY_EXISTS, f"{what} already exists")


# A valid hash of a random password, checked against for unknown users (see authenticate).
_DUMMY_HASH = hash_password(secrets.token_hex(16))
