"""Access control through the real HTTP edge (issue 3, DESIGN.md "Access control").

Everything here runs against the session's registry, whose initial administrator owns the
root scope. Principals and bindings are made two ways: the `artifact-store iam` commands
(what an operator does; used for the user, service-account, key and grant flows) and,
where many are needed quickly (the role matrix), the IamService gRPC API on the mesh's
unix socket, called as an operator.

What is checked, each time with the exact status, OCI error code and challenge:
- the role x scope x action matrix (viewer/editor/owner and their artifact_store_ forms,
  bound at the root, an organization, a project or a repository), on repositories inside
  and outside the bound scope, and on repositories and projects that do not exist;
- real clients: podman login/push/pull as a project editor, skopeo with a service-account
  JSON key, a viewer's refused push, anonymous pulls of private and public projects;
- bad credentials of every kind (tampered, expired, wrong-audience, wrong-scope, unsigned
  and foreign-key tokens; deleted, disabled and mismatched keys; wrong passwords and the
  per-principal rate limit; oversized and malformed Authorization headers), each refused
  with nothing changed in the store;
- the token endpoint (docker login's offline token, the OAuth2 form, refresh tokens),
  the catalog's filtering, the cross-repository mount fallback, and the audit log.

The gateway caches decisions and drops them when the IAM policy version moves (a watch
stream); a change is therefore seen "at once", within `POLICY_GRACE` seconds at worst.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from artifactstore.iam.v1 import iam_pb2 as pb
from artifactstore.iam.v1 import iam_pb2_grpc
from tests.e2e.conftest import (
    ADMIN_USER,
    Auth,
    Registry,
    Response,
    Tool,
    basic_auth,
    check_oci_error,
)
from tests.e2e.images import (
    OCI_MANIFEST,
    Blob,
    Image,
    build_image,
    canonical_json,
    read_layout,
    sha256,
    write_layout,
)

SERVICE = "artifact-store"
SA_DOMAIN = "iam.artifact-store"
DEFAULT_ORGANIZATION = "default"
ACCEPT = {"Accept": OCI_MANIFEST}
OCTET = {"Content-Type": "application/octet-stream"}
# How long a change may take to reach the gateway's caches ("at once": ~1 s at worst).
POLICY_GRACE = 2.0
ABSENT = frozenset({"NAME_UNKNOWN", "MANIFEST_UNKNOWN"})
CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def uid() -> str:
    """A short random id for names no other test uses."""
    return uuid.uuid4().hex[:8]


def small_image(seed: int) -> Image:
    """A one-layer OCI image of a few KiB."""
    return build_image(seed, layers=1, files_per_layer=1, file_size=512)


def variant(image: Image, **annotations: str) -> Blob:
    """Another manifest over the same config and layers (different annotations)."""
    doc = json.loads(image.manifest.data)
    doc["annotations"] = {**doc.get("annotations", {}), **annotations}
    return Blob(OCI_MANIFEST, canonical_json(doc))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, read without checking anything."""
    claims: dict[str, Any] = json.loads(b64url_decode(token.split(".")[1]))
    return claims


def token_access(token: str) -> dict[str, set[str]]:
    """A token's `access` claim as repository name → actions."""
    return {
        f"{g['name']}" if g["type"] == "repository" else f"{g['type']}:{g['name']}": set(
            g["actions"]
        )
        for g in token_claims(token).get("access") or []
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def challenge(r: Response) -> dict[str, str]:
    """The parameters of a 401's `WWW-Authenticate: Bearer …` challenge."""
    header = r.header("WWW-Authenticate")
    assert header, f"HTTP {r.status} without a WWW-Authenticate challenge: {r.body[:300]!r}"
    scheme, _, rest = header.partition(" ")
    assert scheme == "Bearer", f"challenge scheme {scheme!r}, not Bearer: {header}"
    return dict(CHALLENGE_PARAM.findall(rest))


def expect_challenge(
    registry: Registry,
    r: Response,
    scope: str | None = None,
    error: str | None = None,
    *,
    head: bool = False,
) -> dict[str, str]:
    """Assert a 401 UNAUTHORIZED with the registry's Bearer challenge (realm, service, and
    the scope / error given). HEAD answers have no body to check."""
    if head:
        assert r.status == 401, f"expected HTTP 401, got {r.status}"
    else:
        r.expect_error(401, "UNAUTHORIZED")
    params = challenge(r)
    assert params.get("realm") == f"{registry.url}/v2/token", params
    assert params.get("service") == SERVICE, params
    if scope is not None:
        assert params.get("scope") == scope, params
    if error is not None:
        assert params.get("error") == error, params
    return params


def eventually(
    attempt: Callable[[], Response], done: Callable[[Response], bool], timeout: float = POLICY_GRACE
) -> Response:
    """Repeat `attempt` until `done` holds for its answer or `timeout` passes; the last
    answer (for the caller's assertions)."""
    deadline = time.monotonic() + timeout
    while True:
        r = attempt()
        if done(r) or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def catalog(registry: Registry, auth: Auth, extra: dict[str, str] | None = None) -> list[str]:
    """Every name `GET /v2/_catalog` lists for the caller, following its Link pages."""
    names: list[str] = []
    url = "/v2/_catalog?n=200"
    for _ in range(1000):
        r = registry.request("GET", url, auth=auth, headers=extra)
        assert r.status == 200, f"GET {url}: {r.status} {r.body[:300]!r}"
        names += r.json().get("repositories") or []
        link = r.header("Link")
        if not link:
            return names
        match = re.match(r"<([^>]+)>", link)
        assert match, f"malformed Link {link!r}"
        url = urljoin(registry.url + "/", match.group(1))
    raise AssertionError("the catalog never ends")


# --- principals ------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    password: str

    @property
    def auth(self) -> tuple[str, str]:
        return self.name, self.password

    @property
    def principal(self) -> str:
        return f"user:{self.name}"


def parse_scope(text: str) -> pb.Scope:
    """`root`, `organization:NAME`, `project:NAME` or `repository:NAME` as a proto Scope."""
    kind, _, name = text.partition(":")
    return pb.Scope(kind=kind, name=name)


class Iam:
    """IamService over the mesh's unix socket, called as an operator (as the CLI does)."""

    def __init__(self, registry: Registry) -> None:
        self.channel = grpc.insecure_channel(f"unix:{registry.socket_dir / 'metadata.sock'}")
        self.stub = iam_pb2_grpc.IamServiceStub(self.channel)
        self.caller = pb.Caller(principal="operator:e2e-tests", source="e2e")

    def close(self) -> None:
        self.channel.close()

    def organization(self, name: str) -> str:
        self.stub.CreateOrganization(
            pb.CreateOrganizationRequest(caller=self.caller, name=name), timeout=30
        )
        return name

    def project(self, name: str, organization: str = "") -> str:
        self.stub.CreateProject(
            pb.CreateProjectRequest(caller=self.caller, organization=organization, name=name),
            timeout=30,
        )
        return name

    def projects(self) -> dict[str, str]:
        """Every project → its organization."""
        reply = self.stub.ListProjects(pb.ListProjectsRequest(caller=self.caller), timeout=30)
        return {p.name: p.organization for p in reply.projects}

    def user(self, prefix: str) -> User:
        user = User(f"{prefix}-{uid()}", secrets.token_urlsafe(12))
        self.stub.CreateUser(
            pb.CreateUserRequest(caller=self.caller, name=user.name, password=user.password),
            timeout=30,
        )
        return user

    def grant(self, scope: str, principal: str, role: str) -> None:
        binding = pb.Binding(scope=parse_scope(scope), principal=principal, role=role)
        self.stub.Grant(pb.GrantRequest(caller=self.caller, binding=binding), timeout=30)

    def service_account(self, project: str, name: str) -> str:
        """A service account in `project`; its email."""
        reply = self.stub.CreateServiceAccount(
            pb.CreateServiceAccountRequest(caller=self.caller, project=project, name=name),
            timeout=30,
        )
        return reply.email

    def bindings(self, principal: str) -> list[tuple[str, str, str]]:
        """A principal's bindings as (scope kind, scope name, role)."""
        reply = self.stub.ListBindings(
            pb.ListBindingsRequest(caller=self.caller, principal=principal), timeout=30
        )
        return [(b.scope.kind, b.scope.name, b.role) for b in reply.bindings]

    def revoke(self, scope: str, principal: str) -> None:
        self.stub.Revoke(
            pb.RevokeRequest(caller=self.caller, scope=parse_scope(scope), principal=principal),
            timeout=30,
        )


@pytest.fixture(scope="module")
def iam(registry: Registry) -> Iterator[Iam]:
    client = Iam(registry)
    try:
        yield client
    finally:
        client.close()


def cli_user(registry: Registry, prefix: str) -> User:
    """A user made with `artifact-store iam user create NAME --password-stdin`."""
    user = User(f"{prefix}-{uid()}", secrets.token_urlsafe(12))
    registry.iam("user", "create", user.name, "--password-stdin", input=user.password + "\n")
    return user


def cli_grant(registry: Registry, scope: str, principal: str, role: str) -> None:
    registry.iam("grant", "--scope", scope, "--principal", principal, "--role", role)


@dataclass
class ServiceAccount:
    email: str
    key_id: str
    key_file: Path

    @property
    def principal(self) -> str:
        return f"serviceAccount:{self.email}"

    @property
    def key_text(self) -> str:
        return self.key_file.read_text()

    @property
    def auth(self) -> tuple[str, str]:
        """Basic credentials as docker/podman/skopeo send a key file: `_json_key`."""
        return "_json_key", self.key_text


def cli_service_account(
    registry: Registry, project: str, name: str, directory: Path, role: str = "editor"
) -> ServiceAccount:
    """`iam sa create`, `iam key create --output`, `iam grant` ROLE on the project."""
    email = registry.iam("sa", "create", "--project", project, name).strip()
    assert email == f"{name}@{project}.{SA_DOMAIN}", email
    key_file = directory / f"{name}-key.json"
    key_id = registry.iam("key", "create", email, "--output", str(key_file)).strip()
    cli_grant(registry, f"project:{project}", f"serviceAccount:{email}", role)
    return ServiceAccount(email, key_id, key_file)


def service_account_with_key(
    registry: Registry, iam: Iam, project: str, name: str, directory: Path, role: str = "editor"
) -> ServiceAccount:
    """A service account and its binding made over gRPC (quick), its key with the CLI
    (`iam key create`, which generates the key pair and writes the key file)."""
    email = iam.service_account(project, name)
    iam.grant(f"project:{project}", f"serviceAccount:{email}", role)
    key_file = directory / f"{name}-key.json"
    key_id = registry.iam("key", "create", email, "--output", str(key_file)).strip()
    return ServiceAccount(email, key_id, key_file)


def cli_new_key(registry: Registry, sa: ServiceAccount, path: Path) -> ServiceAccount:
    """Another key of the same service account (`iam key create`)."""
    key_id = registry.iam("key", "create", sa.email, "--output", str(path)).strip()
    return ServiceAccount(sa.email, key_id, path)


# --- tokens ----------------------------------------------------------------------------


def get_token(
    registry: Registry, auth: Auth, *scopes: str, offline: bool = False
) -> dict[str, Any]:
    """`GET /v2/token?service=…&scope=…` (as docker does); the JSON answer."""
    query = [("service", SERVICE), *(("scope", s) for s in scopes)]
    if offline:
        query += [("offline_token", "true"), ("client_id", "docker")]
    r = registry.request("GET", "/v2/token?" + urlencode(query), auth=auth)
    assert r.status == 200, f"GET /v2/token: {r.status} {r.body[:300]!r}"
    body: dict[str, Any] = r.json()
    return body


def post_token(registry: Registry, form: dict[str, str]) -> Response:
    """`POST /v2/token` with an OAuth2 form (as podman and containerd do)."""
    return registry.request(
        "POST",
        "/v2/token",
        body=urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=None,
    )


def signing_key(registry: Registry) -> ec.EllipticCurvePrivateKey:
    """The gateway's token signing key, from its key file."""
    key = serialization.load_pem_private_key(registry.token_key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey), type(key)
    return key


def claims_for(principal: str, access: dict[str, list[str]], **override: Any) -> dict[str, Any]:
    """Claims of an access token as the gateway writes them, with `override` applied."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": SERVICE,
        "sub": principal,
        "aud": SERVICE,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "key": "",
        "access": [
            {"type": "repository", "name": name, "actions": actions}
            for name, actions in access.items()
        ],
    }
    claims.update(override)
    return {k: v for k, v in claims.items() if v is not None}


def forge(claims: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> str:
    return jwt.encode(claims, key, algorithm="ES256")


def unsigned(claims: dict[str, Any], signature: str = "") -> str:
    """A JWT with `alg: none` (and the given signature part, empty by default)."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


# --- checking many answers at once -----------------------------------------------------


@dataclass
class Expect:
    """Collects every mismatch of a long series of requests, so one failure report shows
    them all (request, expected, got)."""

    context: str
    problems: list[str] = field(default_factory=list)

    def status(
        self,
        what: str,
        r: Response,
        status: int,
        code: str | frozenset[str] | None = None,
    ) -> bool:
        if r.status != status:
            self.problems.append(
                f"{what}: expected {status} {code or ''}, got {r.status} {r.body[:200]!r}"
            )
            return False
        if status >= 400 and r.body:
            try:
                check_oci_error(r.status, r.body, status, code)
            except AssertionError as err:
                self.problems.append(f"{what}: {err}")
                return False
        return True

    def true(self, condition: bool, what: str) -> None:
        if not condition:
            self.problems.append(what)

    def done(self) -> None:
        assert not self.problems, f"{self.context}:\n" + "\n".join(self.problems)


# --- (a) the role x scope x action matrix ----------------------------------------------


@dataclass
class World:
    """Two organizations, three projects, four repositories (each holding image `v1`)."""

    org_a: str
    org_b: str
    p1: str
    p2: str
    p3: str
    images: dict[str, Image]

    @property
    def r1(self) -> str:
        return f"{self.p1}/app"

    @property
    def repos(self) -> list[str]:
        return list(self.images)

    def organization_of(self, project: str) -> str | None:
        return {self.p1: self.org_a, self.p2: self.org_a, self.p3: self.org_b}.get(project)

    def scope(self, kind: str) -> str:
        return {
            "root": "root",
            "organization": f"organization:{self.org_a}",
            "project": f"project:{self.p1}",
            "repository": f"repository:{self.r1}",
        }[kind]

    def covers(self, kind: str, repository: str) -> bool:
        """Whether a binding at `kind` (root, org A, project p1, repository p1/app)
        reaches `repository` (which need not exist)."""
        project = repository.split("/", 1)[0]
        return {
            "root": True,
            "organization": self.organization_of(project) == self.org_a,
            "project": project == self.p1,
            "repository": repository == self.r1,
        }[kind]


@pytest.fixture(scope="module")
def world(registry: Registry, iam: Iam) -> World:
    n = uid()
    org_a, org_b = iam.organization(f"mx{n}a"), iam.organization(f"mx{n}b")
    p1, p2, p3 = (
        iam.project(f"mx{n}p1", org_a),
        iam.project(f"mx{n}p2", org_a),
        iam.project(f"mx{n}p3", org_b),
    )
    images = {}
    for seed, repo in enumerate([f"{p1}/app", f"{p1}/other", f"{p2}/app", f"{p3}/app"]):
        images[repo] = small_image(9000 + seed)
        registry.push_image(repo, images[repo], "v1")
    return World(org_a, org_b, p1, p2, p3, images)


ROLES = ["viewer", "editor", "owner"]
STORE_ROLES = [f"artifact_store_{r}" for r in ROLES]
MATRIX = [
    *(("root", r) for r in ROLES + STORE_ROLES),
    *(("organization", r) for r in ROLES + STORE_ROLES),
    *(("project", r) for r in ROLES + STORE_ROLES),
    *(("repository", r) for r in ROLES),
]


def rights_of(role: str) -> set[str]:
    level = role.removeprefix("artifact_store_")
    return {"viewer": {"pull"}, "editor": {"pull", "push"}, "owner": {"pull", "push", "delete"}}[
        level
    ]


@pytest.mark.parametrize(("kind", "role"), MATRIX, ids=[f"{k}-{r}" for k, r in MATRIX])
def test_role_matrix(registry: Registry, iam: Iam, world: World, kind: str, role: str):
    """A fresh user with `role` bound at `kind` scope (organization A, project p1 or
    repository p1/app, or the root) pulls (manifest GET/HEAD, blob GET, tag list), pushes
    (blob upload, manifest PUT moving a tag) and deletes (manifest DELETE) on a repository
    inside and outside the scope: allowed actions succeed, every other one is 403 DENIED
    and changes nothing. Repositories and projects that do not exist answer a caller
    without access exactly like forbidden ones (403 DENIED); a push into a project that
    does not exist is for an owner at the root only here (organization A is not the
    default organization). The token endpoint grants exactly the same actions."""
    user = iam.user("mx")
    iam.grant(world.scope(kind), user.principal, role)
    rights = rights_of(role)
    e = Expect(f"{role} bound at {world.scope(kind)} for {user.name}")

    token = get_token(
        registry, user.auth, *(f"repository:{repo}:pull,push,delete" for repo in world.repos)
    )["token"]
    granted = token_access(token)
    for repo in world.repos:
        wanted = rights if world.covers(kind, repo) else set()
        e.true(
            granted.get(repo, set()) == wanted,
            f"token for {repo}: actions {sorted(granted.get(repo, set()))}, "
            f"expected {sorted(wanted)}",
        )

    for repo in world.repos:
        image = world.images[repo]
        inside = world.covers(kind, repo)
        can = rights if inside else set()
        tag = f"mv-{user.name}"
        # Pull.
        r = registry.request("GET", f"/v2/{repo}/manifests/v1", headers=ACCEPT, auth=user.auth)
        if "pull" in can:
            if e.status(f"GET {repo} manifest", r, 200):
                e.true(r.body == image.manifest.data, f"GET {repo} manifest: other bytes")
        else:
            e.status(f"GET {repo} manifest", r, 403, "DENIED")
        r = registry.request("HEAD", f"/v2/{repo}/manifests/v1", headers=ACCEPT, auth=user.auth)
        e.status(f"HEAD {repo} manifest", r, 200 if "pull" in can else 403)
        r = registry.request("GET", f"/v2/{repo}/blobs/{image.config.digest}", auth=user.auth)
        if "pull" in can:
            if e.status(f"GET {repo} blob", r, 200):
                e.true(r.body == image.config.data, f"GET {repo} blob: other bytes")
        else:
            e.status(f"GET {repo} blob", r, 403, "DENIED")
        r = registry.request("GET", f"/v2/{repo}/tags/list", auth=user.auth)
        if "pull" in can:
            if e.status(f"GET {repo} tags", r, 200):
                e.true("v1" in (r.json().get("tags") or []), f"GET {repo} tags: no v1")
        else:
            e.status(f"GET {repo} tags", r, 403, "DENIED")

        # Push: a blob upload, and a manifest PUT that moves an existing tag.
        data = f"matrix blob of {user.name} in {repo}".encode()
        digest = sha256(data)
        r = registry.request("POST", f"/v2/{repo}/blobs/uploads/", auth=user.auth)
        if "push" in can:
            if e.status(f"POST {repo} upload", r, 202):
                location = r.header("Location") or ""
                sep = "&" if "?" in location else "?"
                r = registry.request(
                    "PUT", f"{location}{sep}digest={digest}", data, OCTET, auth=user.auth
                )
                e.status(f"PUT {repo} upload", r, 201)
        else:
            e.status(f"POST {repo} upload", r, 403, "DENIED")
            r = registry.request(
                "POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data, OCTET, auth=user.auth
            )
            e.status(f"POST {repo} monolithic upload", r, 403, "DENIED")
        r = registry.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        e.status(f"admin HEAD {repo} blob after the push", r, 200 if "push" in can else 404)

        registry.put_manifest(repo, tag, image.manifest)
        moved = variant(image, **{"e2e.pushed-by": user.name})
        r = registry.request(
            "PUT",
            f"/v2/{repo}/manifests/{tag}",
            moved.data,
            {"Content-Type": OCI_MANIFEST},
            auth=user.auth,
        )
        if "push" in can:
            e.status(f"PUT {repo} manifest (tag move)", r, 201)
        else:
            e.status(f"PUT {repo} manifest (tag move)", r, 403, "DENIED")
        r = registry.request("HEAD", f"/v2/{repo}/manifests/{tag}", headers=ACCEPT)
        want = moved.digest if "push" in can else image.digest
        e.true(
            r.header("Docker-Content-Digest") == want,
            f"{repo}:{tag} names {r.header('Docker-Content-Digest')} after the PUT, not {want}",
        )

        # Delete: a manifest the admin put there for this purpose.
        victim = variant(image, **{"e2e.victim": f"{user.name} {repo}"})
        registry.put_manifest(repo, victim.digest, victim)
        r = registry.request("DELETE", f"/v2/{repo}/manifests/{victim.digest}", auth=user.auth)
        if "delete" in can:
            e.status(f"DELETE {repo} manifest", r, 202)
        else:
            e.status(f"DELETE {repo} manifest", r, 403, "DENIED")
        r = registry.request("GET", f"/v2/{repo}/manifests/{victim.digest}", headers=ACCEPT)
        if "delete" in can:
            e.status(f"admin GET {repo} deleted manifest", r, 404, "MANIFEST_UNKNOWN")
        else:
            e.status(f"admin GET {repo} manifest after the refused DELETE", r, 200)

    # Repositories that do not exist, in each project: absent where the user may pull,
    # else exactly what an existing forbidden repository answers.
    for project in (world.p1, world.p2, world.p3):
        ghost = f"{project}/ghost-{uid()}"
        r = registry.request("GET", f"/v2/{ghost}/manifests/v1", headers=ACCEPT, auth=user.auth)
        if world.covers(kind, ghost):
            e.status(f"GET {ghost} manifest (no such repository)", r, 404, ABSENT)
        else:
            e.status(f"GET {ghost} manifest (no such repository)", r, 403, "DENIED")
            r = registry.request("POST", f"/v2/{ghost}/blobs/uploads/", auth=user.auth)
            e.status(f"POST {ghost} upload (no such repository)", r, 403, "DENIED")

    # A project that does not exist: pushing there creates it, for a root owner only.
    fresh = f"mxnew{uid()}/app"
    r = registry.request("GET", f"/v2/{fresh}/manifests/v1", headers=ACCEPT, auth=user.auth)
    if kind == "root":
        e.status(f"GET {fresh} manifest (no such project)", r, 404, ABSENT)
    else:
        e.status(f"GET {fresh} manifest (no such project)", r, 403, "DENIED")
    r = registry.request("POST", f"/v2/{fresh}/blobs/uploads/", auth=user.auth)
    if kind == "root" and "delete" in rights:
        if e.status(f"POST {fresh} upload (no such project, root owner)", r, 202):
            registry.request("DELETE", r.header("Location") or "", auth=user.auth)
    else:
        e.status(f"POST {fresh} upload (no such project)", r, 403, "DENIED")
    e.done()


def test_push_into_a_project_that_does_not_exist(registry: Registry, iam: Iam):
    """A push into a project that does not exist creates it in the default organization
    when the pusher owns that organization; an editor of it and the owner of another
    organization get 403 DENIED, and no project appears. Once the project exists, the
    default organization's editor may push into it."""
    owner, editor, stranger = iam.user("dorg-owner"), iam.user("dorg-editor"), iam.user("oorg")
    iam.grant(f"organization:{DEFAULT_ORGANIZATION}", owner.principal, "artifact_store_owner")
    iam.grant(f"organization:{DEFAULT_ORGANIZATION}", editor.principal, "artifact_store_editor")
    other_org = iam.organization(f"other{uid()}")
    iam.grant(f"organization:{other_org}", stranger.principal, "owner")
    project = f"created{uid()}"
    repo = f"{project}/app"
    image = small_image(9100)

    for who in (editor, stranger):
        r = registry.request("POST", f"/v2/{repo}/blobs/uploads/", auth=who.auth)
        r.expect_error(403, "DENIED")
        r = registry.request(
            "PUT",
            f"/v2/{repo}/manifests/v1",
            image.manifest.data,
            {"Content-Type": OCI_MANIFEST},
            auth=who.auth,
        )
        r.expect_error(403, "DENIED")
    assert project not in iam.projects()

    registry.push_image(repo, image, "v1", auth=owner.auth)
    assert iam.projects().get(project) == DEFAULT_ORGANIZATION
    got = registry.request("GET", f"/v2/{repo}/manifests/v1", headers=ACCEPT, auth=owner.auth)
    assert got.status == 200 and got.body == image.manifest.data

    second = small_image(9101)
    r = eventually(
        lambda: registry.request("POST", f"/v2/{project}/more/blobs/uploads/", auth=editor.auth),
        lambda r: r.status == 202,
    )
    assert r.status == 202, f"the default organization's editor cannot push: {r.status} {r.body!r}"
    registry.push_image(f"{project}/more", second, "v1", auth=editor.auth)
    r = registry.request("POST", f"/v2/{project}/more/blobs/uploads/", auth=stranger.auth)
    r.expect_error(403, "DENIED")


def test_blob_delete_needs_owner(registry: Registry, iam: Iam, world: World):
    """Blob DELETE is an owner's: an editor of the repository gets 403 DENIED and the
    blob stays; its owner deletes it (202)."""
    repo = f"{world.p2}/blobs-{uid()}"
    editor, owner = iam.user("bdel-editor"), iam.user("bdel-owner")
    iam.grant(f"repository:{repo}", editor.principal, "editor")
    iam.grant(f"repository:{repo}", owner.principal, "owner")
    digest = registry.push_blob(repo, b"a blob to delete", auth=editor.auth)
    r = registry.request("DELETE", f"/v2/{repo}/blobs/{digest}", auth=editor.auth)
    r.expect_error(403, "DENIED")
    assert registry.request("HEAD", f"/v2/{repo}/blobs/{digest}").status == 200
    r = registry.request("DELETE", f"/v2/{repo}/blobs/{digest}", auth=owner.auth)
    assert r.status == 202, r
    assert registry.request("HEAD", f"/v2/{repo}/blobs/{digest}").status == 404


def test_roles_that_cannot_be_bound(registry: Registry, iam: Iam, world: World):
    """`artifact_store_*` roles mean "on every repository beneath", so binding one on a
    repository is refused, as is a role that does not exist; the CLI fails, no binding
    appears and the user still has no access."""
    user = iam.user("badrole")
    for scope, role in (
        (f"repository:{world.r1}", "artifact_store_viewer"),
        (f"project:{world.p1}", "admin"),
    ):
        refused = registry.cli(
            "iam", "grant", "--scope", scope, "--principal", user.principal, "--role", role,
            check=False,
        )  # fmt: skip
        assert refused.returncode != 0, f"{role} bound at {scope}: {refused.stdout}"
    assert iam.bindings(user.principal) == []
    r = registry.request("GET", f"/v2/{world.r1}/manifests/v1", headers=ACCEPT, auth=user.auth)
    r.expect_error(403, "DENIED")


def test_revoke_disable_and_password_change_take_effect_at_once(
    registry: Registry, iam: Iam, world: World
):
    """With the CLI: a user's binding revoked, the user disabled, re-enabled, their
    password changed — each seen by the gateway at once (its caches follow the policy
    version), with 403 DENIED for a user without the right and 401 UNAUTHORIZED for
    credentials that no longer hold."""
    repo = world.r1
    path = f"/v2/{repo}/manifests/v1"
    user = iam.user("life")
    iam.grant(f"project:{world.p1}", user.principal, "viewer")
    r = registry.request("GET", path, headers=ACCEPT, auth=user.auth)
    assert r.status == 200, r

    registry.iam("revoke", "--scope", f"project:{world.p1}", "--principal", user.principal)
    r = eventually(
        lambda: registry.request("GET", path, headers=ACCEPT, auth=user.auth),
        lambda r: r.status != 200,
    )
    r.expect_error(403, "DENIED")

    cli_grant(registry, f"repository:{repo}", user.principal, "viewer")
    r = eventually(
        lambda: registry.request("GET", path, headers=ACCEPT, auth=user.auth),
        lambda r: r.status == 200,
    )
    assert r.status == 200, r

    registry.iam("user", "disable", user.name)
    r = eventually(
        lambda: registry.request("GET", path, headers=ACCEPT, auth=user.auth),
        lambda r: r.status != 200,
    )
    expect_challenge(registry, r)
    registry.iam("user", "enable", user.name)
    r = eventually(
        lambda: registry.request("GET", path, headers=ACCEPT, auth=user.auth),
        lambda r: r.status == 200,
    )
    assert r.status == 200, r

    new_password = secrets.token_urlsafe(12)
    registry.iam("user", "passwd", user.name, "--password-stdin", input=new_password + "\n")
    r = eventually(
        lambda: registry.request("GET", path, headers=ACCEPT, auth=user.auth),
        lambda r: r.status != 200,
    )
    expect_challenge(registry, r)
    r = registry.request("GET", path, headers=ACCEPT, auth=(user.name, new_password))
    assert r.status == 200, r


# --- (b) real clients --------------------------------------------------------------------


def _inspect(podman: Tool, ref: str) -> dict[str, Any]:
    docs = json.loads(podman.run("image", "inspect", ref))
    assert len(docs) == 1, docs
    doc: dict[str, Any] = docs[0]
    return doc


def test_podman_login_push_pull_as_project_editor(
    registry: Registry, podman: Tool, client_config, tmp_path: Path
):
    """With the CLI: a project, a user, editor on the project. `podman login` (a wrong
    password first, refused), push, remove, pull back: the same image. A push into
    another project fails (403) and leaves nothing there."""
    project = f"podp{uid()}"
    other = f"podx{uid()}"
    registry.iam("project", "create", project)
    registry.iam("project", "create", other)
    user = cli_user(registry, "alice")
    cli_grant(registry, f"project:{project}", user.principal, "editor")
    auth = ["--authfile", str(client_config.auth_file)]

    refused = podman.result(
        "login", "--tls-verify=false", *auth, "-u", user.name, "--password-stdin",
        registry.host, input="not-the-password",
    )  # fmt: skip
    assert refused.returncode != 0, refused.stdout
    out = podman.run(
        "login", "--tls-verify=false", *auth, "-u", user.name, "--password-stdin",
        registry.host, input=user.password,
    )  # fmt: skip
    assert "Login Succeeded" in out, out
    assert registry.host in json.loads(client_config.auth_file.read_text())["auths"]

    image = build_image(seed=5150, layers=2)
    src = write_layout(tmp_path / "src", image, tag="v1")
    image_id = podman.run("pull", "-q", f"oci:{src}:v1").strip()
    remote = f"{registry.host}/{project}/app:v1"
    podman.run("tag", image_id, remote)
    digest_file = tmp_path / "pushed.digest"
    podman.run("push", "--tls-verify=false", *auth, "--digestfile", str(digest_file), remote)
    pushed = digest_file.read_text().strip()
    head = registry.request(
        "HEAD", f"/v2/{project}/app/manifests/v1", headers={"Accept": OCI_MANIFEST}
    )
    assert head.status == 200 and head.header("Docker-Content-Digest") == pushed

    elsewhere = f"{registry.host}/{other}/app:v1"
    podman.run("tag", image_id, elsewhere)
    denied = podman.result("push", "--tls-verify=false", *auth, elsewhere)
    assert denied.returncode != 0, denied.stdout
    # A HEAD has no body, so podman reports the status: "403 (Forbidden)".
    assert re.search(r"denied|403", denied.stderr, re.I), denied.stderr
    r = registry.request("GET", f"/v2/{other}/app/manifests/v1", headers=ACCEPT)
    r.expect_error(404, ABSENT)
    registry.request("POST", f"/v2/{other}/app/blobs/uploads/", auth=user.auth).expect_error(
        403, "DENIED"
    )

    podman.run("rmi", "--force", image_id)
    assert podman.result("image", "exists", image_id).returncode == 1
    podman.run("pull", "-q", "--tls-verify=false", *auth, remote)
    pulled = _inspect(podman, remote)
    assert pulled["Id"] == image_id
    assert pulled["Digest"] == pushed
    assert pulled["RootFS"]["Layers"] == list(image.diff_ids)


def test_skopeo_with_a_service_account_json_key(
    registry: Registry, skopeo: Tool, client_config, tmp_path: Path
):
    """With the CLI: a service account in a project, a JSON key file for it, editor on the
    project. skopeo pushes and pulls with `--creds _json_key:<key file>`, byte for byte;
    `_json_key_base64` works too; the key file holds what the issue lists; the service
    account, an editor, may not delete (403 DENIED)."""
    project = f"skp{uid()}"
    registry.iam("project", "create", project)
    sa = cli_service_account(registry, project, "ci", tmp_path)
    key = json.loads(sa.key_text)
    assert key["type"] == "service_account"
    assert key["project_id"] == project
    assert key["private_key_id"] == sa.key_id
    assert key["client_email"] == sa.email
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert sa.key_file.stat().st_mode & 0o077 == 0, "the key file is readable by others"

    creds = f"_json_key:{sa.key_text}"
    image = build_image(seed=5250, layers=2)
    src = write_layout(tmp_path / "src", image, tag="v1")
    remote = f"docker://{registry.host}/{project}/app:v1"
    skopeo.run(
        "copy", "--preserve-digests", "--dest-tls-verify=false", "--dest-creds", creds,
        f"oci:{src}:v1", remote,
    )  # fmt: skip
    raw = skopeo.run("inspect", "--raw", "--tls-verify=false", "--creds", creds, remote)
    assert raw.encode().rstrip(b"\n") == image.manifest.data
    out = tmp_path / "out"
    skopeo.run(
        "copy", "--preserve-digests", "--src-tls-verify=false", "--src-creds", creds,
        remote, f"oci:{out}:v1",
    )  # fmt: skip
    pulled = read_layout(out)
    assert pulled.ref("v1")["digest"] == image.digest
    for blob in image.blobs:
        assert pulled.blobs.get(blob.digest) == blob.data

    path = f"/v2/{project}/app/manifests/v1"
    as_b64 = ("_json_key_base64", base64.b64encode(sa.key_file.read_bytes()).decode())
    r = registry.request("GET", path, headers=ACCEPT, auth=as_b64)
    assert r.status == 200 and r.body == image.manifest.data, r
    r = registry.request("DELETE", f"/v2/{project}/app/manifests/{image.digest}", auth=sa.auth)
    r.expect_error(403, "DENIED")
    assert registry.request("HEAD", path, headers=ACCEPT).status == 200


def test_viewer_push_is_denied(registry: Registry, skopeo: Tool, client_config, tmp_path: Path):
    """A viewer of a project pulls with skopeo but cannot push: skopeo fails with
    `denied`, the same requests over HTTP are 403 DENIED, and nothing of the image lands."""
    project = f"vwp{uid()}"
    registry.iam("project", "create", project)
    repo = f"{project}/app"
    existing = small_image(5300)
    registry.push_image(repo, existing, "v1")
    viewer = cli_user(registry, "viewer")
    cli_grant(registry, f"project:{project}", viewer.principal, "viewer")
    creds = f"{viewer.name}:{viewer.password}"

    raw = skopeo.run(
        "inspect", "--raw", "--tls-verify=false", "--creds", creds,
        f"docker://{registry.host}/{repo}:v1",
    )  # fmt: skip
    assert raw.encode().rstrip(b"\n") == existing.manifest.data

    image = build_image(seed=5301, layers=2)
    src = write_layout(tmp_path / "src", image, tag="v2")
    refused = skopeo.result(
        "copy", "--preserve-digests", "--dest-tls-verify=false", "--dest-creds", creds,
        f"oci:{src}:v2", f"docker://{registry.host}/{repo}:v2",
    )  # fmt: skip
    assert refused.returncode != 0, refused.stdout
    assert "denied" in refused.stderr.lower(), refused.stderr

    registry.request("POST", f"/v2/{repo}/blobs/uploads/", auth=viewer.auth).expect_error(
        403, "DENIED"
    )
    r = registry.request(
        "PUT",
        f"/v2/{repo}/manifests/v2",
        image.manifest.data,
        {"Content-Type": OCI_MANIFEST},
        auth=viewer.auth,
    )
    r.expect_error(403, "DENIED")
    r = registry.request("GET", f"/v2/{repo}/manifests/v2", headers=ACCEPT)
    r.expect_error(404, "MANIFEST_UNKNOWN")
    for blob in image.blobs:
        assert registry.request("HEAD", f"/v2/{repo}/blobs/{blob.digest}").status == 404


def test_anonymous_pull_of_a_private_repository(
    registry: Registry, skopeo: Tool, client_config, world: World
):
    """Without credentials every endpoint of a private repository is 401 UNAUTHORIZED
    with a Bearer challenge naming the token realm, the service and the scope the request
    needs — the same for a repository or project that does not exist. An anonymous token
    grants nothing, so it meets the same challenge; skopeo without credentials fails."""
    repo = world.r1
    image = world.images[repo]
    pull = f"repository:{repo}:pull"
    r = registry.request("GET", "/v2/", auth=None)
    assert "scope" not in expect_challenge(registry, r)
    for method, path in (
        ("GET", f"/v2/{repo}/manifests/v1"),
        ("GET", f"/v2/{repo}/blobs/{image.config.digest}"),
        ("GET", f"/v2/{repo}/tags/list"),
        ("GET", f"/v2/{repo}/referrers/{image.digest}"),
    ):
        expect_challenge(registry, registry.request(method, path, auth=None), pull)
    r = registry.request("HEAD", f"/v2/{repo}/manifests/v1", auth=None)
    expect_challenge(registry, r, pull, head=True)
    r = registry.request("POST", f"/v2/{repo}/blobs/uploads/", auth=None)
    expect_challenge(registry, r, f"repository:{repo}:pull,push")
    r = registry.request(
        "PUT",
        f"/v2/{repo}/manifests/anon",
        image.manifest.data,
        {"Content-Type": OCI_MANIFEST},
        auth=None,
    )
    expect_challenge(registry, r, f"repository:{repo}:pull,push")
    r = registry.request("DELETE", f"/v2/{repo}/manifests/{image.digest}", auth=None)
    params = expect_challenge(registry, r)
    assert params.get("scope", "").startswith(f"repository:{repo}:"), params
    assert registry.request("HEAD", f"/v2/{repo}/manifests/v1", headers=ACCEPT).status == 200
    r = registry.request("GET", f"/v2/{repo}/manifests/anon", headers=ACCEPT)
    r.expect_error(404, "MANIFEST_UNKNOWN")

    for missing in (f"{world.p1}/nothing-{uid()}", f"noproject{uid()}/app"):
        r = registry.request("GET", f"/v2/{missing}/manifests/v1", auth=None)
        expect_challenge(registry, r, f"repository:{missing}:pull")

    answer = get_token(registry, None, f"repository:{repo}:pull,push", offline=True)
    assert "refresh_token" not in answer, "an anonymous caller got a refresh token"
    claims = token_claims(answer["token"])
    assert claims["sub"] == "allUsers"
    assert token_access(answer["token"]).get(repo, set()) == set()
    r = registry.request("GET", f"/v2/{repo}/manifests/v1", headers=bearer(answer["token"]))
    expect_challenge(registry, r, pull)

    refused = skopeo.result(
        "inspect", "--raw", "--tls-verify=false", "--authfile", str(client_config.auth_file),
        f"docker://{registry.host}/{repo}:v1",
    )  # fmt: skip
    assert refused.returncode != 0, refused.stdout
    assert re.search(r"unauthorized|authentication required", refused.stderr, re.I), refused.stderr


def test_all_users_viewer_makes_a_project_public(
    registry: Registry, skopeo: Tool, client_config, tmp_path: Path
):
    """`iam grant --principal allUsers --role viewer` on a project: anonymous pulls work
    at once (raw HTTP, and skopeo with no credentials at all); anonymous pushes and
    deletes still get the 401 challenge; other projects stay private; a revoke makes the
    project private again at once."""
    project = f"pub{uid()}"
    private = f"priv{uid()}"
    registry.iam("project", "create", project)
    registry.iam("project", "create", private)
    repo = f"{project}/app"
    image = build_image(seed=5400, layers=2)
    registry.push_image(repo, image, "v1")
    registry.push_image(f"{private}/app", small_image(5401), "v1")
    path = f"/v2/{repo}/manifests/v1"
    expect_challenge(registry, registry.request("GET", path, headers=ACCEPT, auth=None))

    cli_grant(registry, f"project:{project}", "allUsers", "viewer")
    try:
        r = eventually(
            lambda: registry.request("GET", path, headers=ACCEPT, auth=None),
            lambda r: r.status == 200,
        )
        assert r.status == 200 and r.body == image.manifest.data, r
        r = registry.request("GET", f"/v2/{repo}/blobs/{image.layers[0].digest}", auth=None)
        assert r.status == 200 and r.body == image.layers[0].data
        r = registry.request("GET", f"/v2/{repo}/tags/list", auth=None)
        assert r.status == 200 and r.json()["tags"] == ["v1"]
        r = registry.request("POST", f"/v2/{repo}/blobs/uploads/", auth=None)
        expect_challenge(registry, r, f"repository:{repo}:pull,push")
        r = registry.request("DELETE", f"/v2/{repo}/manifests/{image.digest}", auth=None)
        expect_challenge(registry, r)
        r = registry.request("GET", f"/v2/{private}/app/manifests/v1", auth=None)
        expect_challenge(registry, r, f"repository:{private}/app:pull")
        answer = get_token(registry, None, f"repository:{repo}:pull,push")
        assert token_access(answer["token"]).get(repo) == {"pull"}

        # skopeo with an empty auth file and no --creds: the anonymous token flow.
        out = tmp_path / "out"
        skopeo.run(
            "copy", "--preserve-digests", "--src-tls-verify=false", "--authfile",
            str(client_config.auth_file), f"docker://{registry.host}/{repo}:v1", f"oci:{out}:v1",
        )  # fmt: skip
        pulled = read_layout(out)
        assert pulled.ref("v1")["digest"] == image.digest
        for blob in image.blobs:
            assert pulled.blobs.get(blob.digest) == blob.data
    finally:
        # Public projects would show in every later catalog: make it private again.
        registry.iam("revoke", "--scope", f"project:{project}", "--principal", "allUsers")
    r = eventually(
        lambda: registry.request("GET", path, headers=ACCEPT, auth=None),
        lambda r: r.status != 200,
    )
    expect_challenge(registry, r, f"repository:{repo}:pull")


# --- (c) bad credentials -----------------------------------------------------------------


@dataclass
class TokenWorld:
    project: str
    repo: str
    image: Image
    editor: User
    viewer: User


@pytest.fixture(scope="module")
def tokens(registry: Registry, iam: Iam) -> TokenWorld:
    project = iam.project(f"tok{uid()}")
    repo = f"{project}/app"
    image = small_image(9200)
    registry.push_image(repo, image, "v1")
    editor, viewer = iam.user("tok-editor"), iam.user("tok-viewer")
    iam.grant(f"project:{project}", editor.principal, "editor")
    iam.grant(f"project:{project}", viewer.principal, "viewer")
    return TokenWorld(project, repo, image, editor, viewer)


def attempt_changes(
    registry: Registry, repo: str, headers: dict[str, str], count: int = 4
) -> list[Response]:
    """Try to change `repo` with `headers` (credentials): an upload session, a monolithic
    upload, a manifest PUT and a manifest DELETE — the first `count` of those (each
    refused sign-in counts towards the principal's rate limit). The answers, in order."""
    data = f"{headers} {repo}".encode()[:200]
    tagged = small_image(9300)
    attempts: list[Callable[[], Response]] = [
        lambda: registry.request("POST", f"/v2/{repo}/blobs/uploads/", headers=headers),
        lambda: registry.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/?digest={sha256(data)}",
            data,
            {**OCTET, **headers},
        ),
        lambda: registry.request(
            "PUT",
            f"/v2/{repo}/manifests/intruder",
            tagged.manifest.data,
            {"Content-Type": OCI_MANIFEST, **headers},
        ),
        lambda: registry.request(
            "DELETE", f"/v2/{repo}/manifests/v1", headers={**ACCEPT, **headers}
        ),
    ]
    return [attempt() for attempt in attempts[:count]]


def assert_unchanged(registry: Registry, world: TokenWorld) -> None:
    """The repository still holds exactly `v1`, its manifest and its blobs."""
    r = registry.request("GET", f"/v2/{world.repo}/tags/list")
    assert r.status == 200 and r.json()["tags"] == ["v1"], r.body
    r = registry.request("GET", f"/v2/{world.repo}/manifests/v1", headers=ACCEPT)
    assert r.status == 200 and r.body == world.image.manifest.data
    intruder = small_image(9300)
    for blob in intruder.blobs:
        assert registry.request("HEAD", f"/v2/{world.repo}/blobs/{blob.digest}").status == 404


def test_tampered_tokens(registry: Registry, tokens: TokenWorld):
    """A real token with one signature byte flipped, one payload byte flipped, or its
    payload rewritten (subject changed to the administrator, actions widened) under the
    original signature: 401 UNAUTHORIZED with an `invalid_token` challenge for reads and
    for every kind of change, and the repository is unchanged."""
    token = get_token(registry, tokens.editor.auth, f"repository:{tokens.repo}:pull,push")["token"]
    path = f"/v2/{tokens.repo}/manifests/v1"
    assert registry.request("GET", path, headers={**ACCEPT, **bearer(token)}).status == 200

    header, payload, signature = token.split(".")
    sig = bytearray(b64url_decode(signature))
    sig[len(sig) // 2] ^= 0x01
    raw = bytearray(b64url_decode(payload))
    at = raw.index(b'"jti":"') + len(b'"jti":"')
    raw[at] ^= 0x01
    claims = token_claims(token)
    escalated = {
        **claims,
        "sub": f"user:{ADMIN_USER}",
        "access": [
            {"type": "repository", "name": tokens.repo, "actions": ["pull", "push", "delete"]}
        ],
    }
    tampered = {
        "signature byte flipped": f"{header}.{payload}.{b64url(bytes(sig))}",
        "payload byte flipped": f"{header}.{b64url(bytes(raw))}.{signature}",
        "payload rewritten": f"{header}.{b64url(json.dumps(escalated).encode())}.{signature}",
        "signature dropped": f"{header}.{payload}.",
    }
    for what, bad in tampered.items():
        r = registry.request("GET", path, headers={**ACCEPT, **bearer(bad)})
        try:
            expect_challenge(registry, r, error="invalid_token")
            for answer in attempt_changes(registry, tokens.repo, bearer(bad)):
                expect_challenge(registry, answer, error="invalid_token")
        except AssertionError as err:
            raise AssertionError(f"token with {what}: {err}") from None
    assert_unchanged(registry, tokens)


def test_expired_not_yet_valid_and_wrong_audience_tokens(registry: Registry, tokens: TokenWorld):
    """Tokens signed with the gateway's own key (read from its key file) but expired,
    not valid yet, for another audience or issuer, or without an expiry: 401
    UNAUTHORIZED with an `invalid_token` challenge, and nothing changes. The same claims
    with correct times and audience work, so it is the claim that is refused."""
    key = signing_key(registry)
    principal = tokens.editor.principal
    access = {tokens.repo: ["pull", "push"]}
    now = int(time.time())
    path = f"/v2/{tokens.repo}/manifests/v1"
    good = forge(claims_for(principal, access), key)
    r = registry.request("GET", path, headers={**ACCEPT, **bearer(good)})
    assert r.status == 200, f"a correctly forged token does not work: {r.status} {r.body!r}"

    bad = {
        "expired": claims_for(principal, access, iat=now - 900, nbf=now - 900, exp=now - 300),
        "not yet valid": claims_for(principal, access, nbf=now + 600, exp=now + 900),
        "wrong audience": claims_for(principal, access, aud="another-registry"),
        "wrong issuer": claims_for(principal, access, iss="someone-else"),
        "no expiry": claims_for(principal, access, exp=None),
    }
    for what, claims in bad.items():
        token = forge(claims, key)
        try:
            r = registry.request("GET", path, headers={**ACCEPT, **bearer(token)})
            expect_challenge(registry, r, error="invalid_token")
            for answer in attempt_changes(registry, tokens.repo, bearer(token)):
                expect_challenge(registry, answer, error="invalid_token")
        except AssertionError as err:
            raise AssertionError(f"{what} token: {err}") from None
    assert_unchanged(registry, tokens)


def test_tokens_lacking_the_scope(registry: Registry, tokens: TokenWorld):
    """A token that lacks the scope a request needs: 401 with `error="insufficient_scope"`
    and the needed scope when the principal has the right (so the client fetches a new
    token), 403 DENIED when it does not. A token's own claims never grant what IAM does
    not: a viewer's forged push/delete token is 403 DENIED. The token endpoint gives a
    viewer asking pull,push only pull."""
    repo = tokens.repo
    editor_pull = get_token(registry, tokens.editor.auth, f"repository:{repo}:pull")["token"]
    assert token_access(editor_pull)[repo] == {"pull"}
    r = registry.request(
        "GET", f"/v2/{repo}/manifests/v1", headers={**ACCEPT, **bearer(editor_pull)}
    )
    assert r.status == 200, r
    *pushes, delete = attempt_changes(registry, repo, bearer(editor_pull))
    for answer in pushes:
        expect_challenge(registry, answer, f"repository:{repo}:pull,push", "insufficient_scope")
    delete.expect_error(403, "DENIED")  # an editor may not delete, whatever the token

    elsewhere = get_token(registry, tokens.editor.auth, f"repository:{tokens.project}/x:pull")
    r = registry.request(
        "GET", f"/v2/{repo}/manifests/v1", headers={**ACCEPT, **bearer(elsewhere["token"])}
    )
    expect_challenge(registry, r, f"repository:{repo}:pull", "insufficient_scope")

    asked = get_token(registry, tokens.viewer.auth, f"repository:{repo}:pull,push")["token"]
    assert token_access(asked)[repo] == {"pull"}, token_access(asked)
    for answer in attempt_changes(registry, repo, bearer(asked)):
        answer.expect_error(403, "DENIED")

    forged = forge(
        claims_for(tokens.viewer.principal, {repo: ["pull", "push", "delete", "*"]}),
        signing_key(registry),
    )
    for answer in attempt_changes(registry, repo, bearer(forged)):
        answer.expect_error(403, "DENIED")
    assert_unchanged(registry, tokens)


def test_unsigned_and_foreign_key_tokens(registry: Registry, tokens: TokenWorld):
    """`alg: none` (with no signature, and with a real signature kept), a token signed by
    another P-256 key, and an HS256 token keyed with the gateway's public key (the
    algorithm-confusion trick): 401 UNAUTHORIZED, nothing changes. A control token with
    the same claims and the real key works."""
    key = signing_key(registry)
    claims = claims_for(tokens.editor.principal, {tokens.repo: ["pull", "push"]})
    path = f"/v2/{tokens.repo}/manifests/v1"
    real = forge(claims, key)
    assert registry.request("GET", path, headers={**ACCEPT, **bearer(real)}).status == 200

    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    hs_body = b64url(json.dumps(claims).encode())
    hs_sig = hmac.new(public_pem, f"{hs_header}.{hs_body}".encode(), hashlib.sha256).digest()
    bad = {
        "alg none": unsigned(claims),
        "alg none with a real signature": unsigned(claims, real.split(".")[2]),
        "another key": forge(claims, ec.generate_private_key(ec.SECP256R1())),
        "HS256 with the public key": f"{hs_header}.{hs_body}.{b64url(hs_sig)}",
    }
    for what, token in bad.items():
        try:
            r = registry.request("GET", path, headers={**ACCEPT, **bearer(token)})
            expect_challenge(registry, r, error="invalid_token")
            for answer in attempt_changes(registry, tokens.repo, bearer(token)):
                expect_challenge(registry, answer, error="invalid_token")
        except AssertionError as err:
            raise AssertionError(f"token with {what}: {err}") from None
    assert_unchanged(registry, tokens)


def _basic(auth: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": basic_auth(*auth)}


def test_key_file_with_another_private_key(
    registry: Registry, iam: Iam, tmp_path: Path, tokens: TokenWorld
):
    """A key file whose private key is not the one registered for its key id (same id and
    email, another key pair) authenticates nobody: 401 UNAUTHORIZED on the API and at the
    token endpoint, and nothing changes; the genuine file works."""
    sa = service_account_with_key(registry, iam, tokens.project, f"swap-{uid()}", tmp_path)
    path = f"/v2/{tokens.repo}/manifests/v1"
    assert registry.request("GET", path, headers=ACCEPT, auth=sa.auth).status == 200

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    swapped = json.dumps({**json.loads(sa.key_text), "private_key": pem})
    creds = ("_json_key", swapped)
    expect_challenge(registry, registry.request("GET", path, headers=ACCEPT, auth=creds))
    r = registry.request(
        "GET", f"/v2/token?service={SERVICE}&scope=repository:{tokens.repo}:pull", auth=creds
    )
    r.expect_error(401, "UNAUTHORIZED")
    for answer in attempt_changes(registry, tokens.repo, _basic(creds), count=2):
        expect_challenge(registry, answer)
    assert_unchanged(registry, tokens)


def test_deleted_and_unknown_service_account_keys(
    registry: Registry, iam: Iam, tmp_path: Path, tokens: TokenWorld
):
    """`iam key delete`: the key file stops working at once (401 UNAUTHORIZED), and so
    does a token issued for that key before (refused: the key is gone); the account's
    other key keeps working. A key file naming a key id that never existed is 401 too."""
    sa = service_account_with_key(registry, iam, tokens.project, f"del-{uid()}", tmp_path)
    doomed = cli_new_key(registry, sa, tmp_path / "doomed.json")
    path = f"/v2/{tokens.repo}/manifests/v1"
    for key in (sa, doomed):
        assert registry.request("GET", path, headers=ACCEPT, auth=key.auth).status == 200
    token = get_token(registry, doomed.auth, f"repository:{tokens.repo}:pull")["token"]
    assert token_claims(token)["key"] == doomed.key_id
    assert registry.request("GET", path, headers={**ACCEPT, **bearer(token)}).status == 200

    registry.iam("key", "delete", doomed.key_id)
    r = eventually(
        lambda: registry.request("GET", path, headers=ACCEPT, auth=doomed.auth),
        lambda r: r.status != 200,
    )
    expect_challenge(registry, r)
    r = eventually(
        lambda: registry.request("GET", path, headers={**ACCEPT, **bearer(token)}),
        lambda r: r.status != 200,
    )
    # The token is a valid one for a principal whose key is gone: refused either as
    # credentials that no longer hold (401) or as a caller without rights (403).
    assert r.status in (401, 403), f"a deleted key's token still works: {r.status} {r.body!r}"
    r.expect_error(r.status, "UNAUTHORIZED" if r.status == 401 else "DENIED")
    assert registry.request("GET", path, headers=ACCEPT, auth=sa.auth).status == 200

    unknown = json.dumps({**json.loads(sa.key_text), "private_key_id": secrets.token_hex(20)})
    r = registry.request("GET", path, headers=ACCEPT, auth=("_json_key", unknown))
    expect_challenge(registry, r)
    for answer in attempt_changes(registry, tokens.repo, _basic(doomed.auth), count=2):
        expect_challenge(registry, answer)
    assert_unchanged(registry, tokens)


def test_disabled_service_account_key(
    registry: Registry, iam: Iam, tmp_path: Path, tokens: TokenWorld
):
    """`iam key disable`: the key stops working at once (401 UNAUTHORIZED, nothing
    changes), and so does a token issued for it before; `iam key enable` brings the key
    back."""
    sa = service_account_with_key(registry, iam, tokens.project, f"dis-{uid()}", tmp_path)
    path = f"/v2/{tokens.repo}/manifests/v1"
    assert registry.request("GET", path, headers=ACCEPT, auth=sa.auth).status == 200
    token = get_token(registry, sa.auth, f"repository:{tokens.repo}:pull")["token"]
    registry.iam("key", "disable", sa.key_id)
    r = eventually(
        lambda: registry.request("GET", path, headers=ACCEPT, auth=sa.auth),
        lambda r: r.status != 200,
    )
    expect_challenge(registry, r)
    r = eventually(
        lambda: registry.request("GET", path, headers={**ACCEPT, **bearer(token)}),
        lambda r: r.status != 200,
    )
    # As for a deleted key: refused as stale credentials (401) or as no rights (403).
    assert r.status in (401, 403), f"a disabled key's token still works: {r.status} {r.body!r}"
    r.expect_error(r.status, "UNAUTHORIZED" if r.status == 401 else "DENIED")
    for answer in attempt_changes(registry, tokens.repo, _basic(sa.auth), count=2):
        expect_challenge(registry, answer)
    assert_unchanged(registry, tokens)
    registry.iam("key", "enable", sa.key_id)
    r = eventually(
        lambda: registry.request("GET", path, headers=ACCEPT, auth=sa.auth),
        lambda r: r.status == 200,
    )
    assert r.status == 200, r


def test_wrong_passwords_are_rate_limited_per_principal(
    registry: Registry, iam: Iam, tokens: TokenWorld
):
    """Five wrong passwords for one user within a minute: each 401 UNAUTHORIZED; then
    that user is refused with 429 TOOMANYREQUESTS — even with the right password, on the
    API and at the token endpoint — while another user signs in normally and a wrong
    password of theirs is still a plain 401. Nothing is uploaded by any of it."""
    target, bystander = iam.user("rl"), iam.user("rl-other")
    iam.grant(f"project:{tokens.project}", target.principal, "editor")
    iam.grant(f"project:{tokens.project}", bystander.principal, "editor")
    wrong = (target.name, "not-" + target.password)
    upload = f"/v2/{tokens.repo}/blobs/uploads/"
    for n in range(5):
        r = registry.request("POST", upload, auth=wrong)
        try:
            expect_challenge(registry, r)
        except AssertionError as err:
            raise AssertionError(f"wrong password #{n + 1}: {err}") from None
    registry.request("POST", upload, auth=wrong).expect_error(429, "TOOMANYREQUESTS")
    registry.request("POST", upload, auth=target.auth).expect_error(429, "TOOMANYREQUESTS")
    r = registry.request(
        "GET", f"/v2/token?service={SERVICE}&scope=repository:{tokens.repo}:pull", auth=target.auth
    )
    r.expect_error(429, "TOOMANYREQUESTS")

    r = registry.request(
        "GET", f"/v2/{tokens.repo}/manifests/v1", headers=ACCEPT, auth=bystander.auth
    )
    assert r.status == 200, f"another user is affected by the rate limit: {r.status} {r.body!r}"
    r = registry.request("GET", "/v2/", auth=(bystander.name, "wrong-password"))
    expect_challenge(registry, r)
    assert_unchanged(registry, tokens)


OVERSIZED = 20 * 1024


@pytest.mark.parametrize("scheme", ["Basic", "Bearer"])
def test_oversized_authorization_header(registry: Registry, tokens: TokenWorld, scheme: str):
    """An Authorization header of 20 KiB (over the 16 KiB limit) is 401 UNAUTHORIZED with
    the spec's JSON error body, for reads and changes alike, and nothing changes."""
    if scheme == "Basic":
        value = basic_auth(tokens.editor.name, "p" * OVERSIZED)
    else:
        value = "Bearer " + "A" * OVERSIZED
    assert len(value) > OVERSIZED
    headers = {"Authorization": value}
    r = registry.request("GET", f"/v2/{tokens.repo}/manifests/v1", headers={**ACCEPT, **headers})
    expect_challenge(registry, r)
    for answer in attempt_changes(registry, tokens.repo, headers):
        expect_challenge(registry, answer)
    assert_unchanged(registry, tokens)


MALFORMED = {
    "bad-base64": "Basic %%%not*base64%%%",
    "no-colon": "Basic " + base64.b64encode(b"justausername").decode(),
    "empty-username": "Basic " + base64.b64encode(b":password").decode(),
    "not-utf8": "Basic " + base64.b64encode(b"\xff\xfe:\xff\xfe").decode(),
    "basic-without-credentials": "Basic",
    "unknown-scheme": 'Digest username="admin", realm="x", nonce="y", response="z"',
    "bearer-not-a-jwt": "Bearer not-a-jwt",
    "bearer-without-token": "Bearer",
}


@pytest.mark.parametrize("value", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_authorization_header(registry: Registry, tokens: TokenWorld, value: str):
    """Authorization headers that are not credentials at all: 401 UNAUTHORIZED with the
    Bearer challenge, on the base endpoint, a read and every kind of change; nothing
    changes."""
    headers = {"Authorization": value}
    expect_challenge(registry, registry.request("GET", "/v2/", headers=headers))
    r = registry.request("GET", f"/v2/{tokens.repo}/manifests/v1", headers={**ACCEPT, **headers})
    expect_challenge(registry, r)
    for answer in attempt_changes(registry, tokens.repo, headers):
        expect_challenge(registry, answer)
    assert_unchanged(registry, tokens)


def test_wrong_credentials(registry: Registry, iam: Iam, tokens: TokenWorld):
    """A wrong password and an unknown user: 401 UNAUTHORIZED with the challenge, on the
    API and at the token endpoint, the same answer for both (no hint which users exist)."""
    user = iam.user("wrong")
    path = f"/v2/{tokens.repo}/manifests/v1"
    answers = []
    for creds in ((user.name, "not-the-password"), (f"nobody-{uid()}", "whatever-password")):
        r = registry.request("GET", path, headers=ACCEPT, auth=creds)
        expect_challenge(registry, r)
        answers.append(r.json())
        r = registry.request("GET", f"/v2/token?service={SERVICE}", auth=creds)
        r.expect_error(401, "UNAUTHORIZED")
    assert answers[0] == answers[1], answers


# --- (d) the token endpoint --------------------------------------------------------------


def _rfc3339(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (`issued_at`)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_docker_login_offline_token_and_refresh(registry: Registry, iam: Iam, tokens: TokenWorld):
    """What `docker login` does: GET /v2/token with Basic credentials, `offline_token=true`
    and no scope → `token` = `access_token`, `expires_in`, `issued_at` and a
    `refresh_token`; the token's claims are the spec's. The refresh token, exchanged with
    the OAuth2 form for a pull,push scope, gives a token that pushes. A refresh token is
    not an access token, nor the other way round."""
    user = iam.user("dlogin")
    iam.grant(f"project:{tokens.project}", user.principal, "editor")
    answer = get_token(registry, user.auth, offline=True)
    assert {"token", "access_token", "expires_in", "issued_at", "refresh_token"} <= set(answer)
    assert answer["token"] == answer["access_token"]
    claims = token_claims(answer["token"])
    assert claims["iss"] == SERVICE and claims["aud"] == SERVICE
    assert claims["sub"] == user.principal
    assert claims["exp"] - claims["iat"] == answer["expires_in"] > 0
    assert abs(_rfc3339(answer["issued_at"]) - claims["iat"]) < 2
    assert not claims.get("access")
    header = json.loads(b64url_decode(answer["token"].split(".")[0]))
    assert header["alg"] == "ES256"
    r = registry.request("GET", "/v2/", headers=bearer(answer["token"]))
    assert r.status == 200, r

    repo = f"{tokens.project}/refreshed-{uid()}"
    r = post_token(
        registry,
        {
            "grant_type": "refresh_token",
            "refresh_token": answer["refresh_token"],
            "service": SERVICE,
            "scope": f"repository:{repo}:pull,push",
            "client_id": "docker",
        },
    )
    assert r.status == 200, r
    refreshed = r.json()
    assert {"access_token", "scope", "expires_in", "issued_at"} <= set(refreshed)
    assert refreshed["scope"] == f"repository:{repo}:pull,push"
    assert token_access(refreshed["access_token"])[repo] == {"pull", "push"}
    image = small_image(9400)
    for blob in image.blobs:
        r = registry.request(
            "POST", f"/v2/{repo}/blobs/uploads/", headers=bearer(refreshed["access_token"])
        )
        assert r.status == 202, r
        location = r.header("Location") or ""
        sep = "&" if "?" in location else "?"
        r = registry.request(
            "PUT",
            f"{location}{sep}digest={blob.digest}",
            blob.data,
            {**OCTET, **bearer(refreshed["access_token"])},
        )
        assert r.status == 201, r
    r = registry.request(
        "PUT",
        f"/v2/{repo}/manifests/v1",
        image.manifest.data,
        {"Content-Type": OCI_MANIFEST, **bearer(refreshed["access_token"])},
    )
    assert r.status == 201, r

    r = registry.request("GET", "/v2/", headers=bearer(answer["refresh_token"]))
    expect_challenge(registry, r)
    r = post_token(
        registry,
        {"grant_type": "refresh_token", "refresh_token": answer["token"], "service": SERVICE},
    )
    r.expect_error(401, "UNAUTHORIZED")


def test_oauth2_password_grant(registry: Registry, iam: Iam, tokens: TokenWorld, world: World):
    """POST /v2/token, `grant_type=password`: a token for the space-separated scopes,
    holding only what is allowed (the `scope` field says which); `access_type=offline`
    adds a refresh token, which a refresh grant exchanges. Wrong password: 401."""
    user = iam.user("oauth")
    iam.grant(f"project:{tokens.project}", user.principal, "viewer")
    scopes = f"repository:{tokens.repo}:pull,push repository:{world.r1}:pull"
    form = {
        "grant_type": "password",
        "username": user.name,
        "password": user.password,
        "service": SERVICE,
        "scope": scopes,
        "client_id": "podman",
    }
    r = post_token(registry, form)
    assert r.status == 200, r
    answer = r.json()
    assert "refresh_token" not in answer
    assert answer["scope"] == f"repository:{tokens.repo}:pull", answer["scope"]
    access = token_access(answer["access_token"])
    assert access[tokens.repo] == {"pull"}
    assert access.get(world.r1, set()) == set()
    r = registry.request(
        "GET",
        f"/v2/{tokens.repo}/manifests/v1",
        headers={**ACCEPT, **bearer(answer["access_token"])},
    )
    assert r.status == 200, r

    r = post_token(registry, {**form, "access_type": "offline"})
    assert r.status == 200, r
    refresh = r.json()["refresh_token"]
    r = post_token(
        registry,
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "service": SERVICE,
            "scope": f"repository:{tokens.repo}:pull",
        },
    )
    assert r.status == 200, r
    assert token_access(r.json()["access_token"])[tokens.repo] == {"pull"}

    r = post_token(registry, {**form, "password": "not-the-password"})
    r.expect_error(401, "UNAUTHORIZED")


def test_refresh_token_of_a_deleted_user_is_refused(
    registry: Registry, iam: Iam, tokens: TokenWorld
):
    """A refresh token outlives nothing: after `iam user delete`, exchanging the user's
    refresh token is 401 UNAUTHORIZED (and so after `iam user disable`)."""
    gone, disabled = iam.user("gone"), iam.user("frozen")
    refresh = {}
    for user in (gone, disabled):
        iam.grant(f"project:{tokens.project}", user.principal, "viewer")
        refresh[user.name] = get_token(registry, user.auth, offline=True)["refresh_token"]
    form = {
        "grant_type": "refresh_token",
        "service": SERVICE,
        "scope": f"repository:{tokens.repo}:pull",
    }
    r = post_token(registry, {**form, "refresh_token": refresh[gone.name]})
    assert r.status == 200, r

    registry.iam("user", "delete", gone.name)
    registry.iam("user", "disable", disabled.name)
    for user in (gone, disabled):
        r = post_token(registry, {**form, "refresh_token": refresh[user.name]})
        try:
            r.expect_error(401, "UNAUTHORIZED")
        except AssertionError as err:
            raise AssertionError(f"refresh token of {user.name}: {err}") from None


# --- (e) catalog and mounts ---------------------------------------------------------------


def test_catalog_lists_only_what_the_caller_may_pull(registry: Registry, iam: Iam, world: World):
    """GET /v2/_catalog (every page) lists exactly the repositories the caller may pull:
    all for the administrator; a project's for its viewer plus one repository bound
    directly; nothing for a user without bindings. A catalog token works the same way;
    an anonymous caller meets the challenge for `registry:catalog:*`."""
    viewer, nobody = iam.user("cat"), iam.user("cat-none")
    iam.grant(f"project:{world.p1}", viewer.principal, "viewer")
    iam.grant(f"repository:{world.p3}/app", viewer.principal, "viewer")
    expected = sorted([f"{world.p1}/app", f"{world.p1}/other", f"{world.p3}/app"])

    everything = catalog(registry, registry.admin)
    assert set(world.repos) <= set(everything)
    assert sorted(catalog(registry, viewer.auth)) == expected
    assert catalog(registry, nobody.auth) == []

    token = get_token(registry, viewer.auth, "registry:catalog:*")["token"]
    assert "registry:catalog" in token_access(token)
    assert sorted(catalog(registry, None, bearer(token))) == expected

    r = registry.request("GET", "/v2/_catalog", auth=None)
    expect_challenge(registry, r, "registry:catalog:*")


def test_mount_without_access_to_the_source_falls_back_to_an_upload(
    registry: Registry, iam: Iam, world: World
):
    """A cross-repository mount from a repository the caller may not pull answers 202
    with an upload session — exactly as for a source that does not exist — and links
    nothing; the session works as a normal upload. With pull on the source, the same
    mount is 201."""
    user = iam.user("mount")
    target = f"{world.p2}/mounted-{uid()}"
    iam.grant(f"repository:{target}", user.principal, "editor")
    source = f"{world.p3}/app"
    blob = world.images[source].layers[0]
    assert registry.request("HEAD", f"/v2/{target}/blobs/{blob.digest}").status == 404

    for origin in (source, f"{world.p3}/ghost-{uid()}"):
        r = registry.request(
            "POST",
            f"/v2/{target}/blobs/uploads/?mount={blob.digest}&from={origin}",
            auth=user.auth,
        )
        assert r.status == 202, f"mount from {origin}: {r.status} {r.body!r}"
        assert r.header("Location"), "no upload session"
        assert registry.request("HEAD", f"/v2/{target}/blobs/{blob.digest}").status == 404
    location = r.header("Location") or ""
    sep = "&" if "?" in location else "?"
    r = registry.request(
        "PUT", f"{location}{sep}digest={blob.digest}", blob.data, OCTET, auth=user.auth
    )
    assert r.status == 201, r
    other = world.images[source].config
    iam.grant(f"repository:{source}", user.principal, "viewer")
    r = eventually(
        lambda: registry.request(
            "POST",
            f"/v2/{target}/blobs/uploads/?mount={other.digest}&from={source}",
            auth=user.auth,
        ),
        lambda r: r.status == 201,
    )
    assert r.status == 201, f"mount with pull on the source: {r.status} {r.body!r}"
    r = registry.request("GET", f"/v2/{target}/blobs/{other.digest}")
    assert r.status == 200 and r.body == other.data


# --- (f) audit log and the CLI's lists ----------------------------------------------------


def test_audit_log_records_iam_changes_and_deletes(registry: Registry, tmp_path: Path):
    """`artifact-store audit --json` lists, newest first, the IAM changes made with the
    CLI (who: the operator; from: the CLI) and a manifest delete made over HTTP (who: the
    user; from: their address), each with its target."""
    project = f"aud{uid()}"
    registry.iam("project", "create", project)
    user = cli_user(registry, "auditor")
    cli_grant(registry, f"project:{project}", user.principal, "owner")
    repo = f"{project}/app"
    image = small_image(9500)
    registry.push_image(repo, image, "v1", auth=user.auth)
    r = registry.request("DELETE", f"/v2/{repo}/manifests/{image.digest}", auth=user.auth)
    assert r.status == 202, r
    registry.iam("revoke", "--scope", f"project:{project}", "--principal", user.principal)

    out = registry.cli("audit", "--json", "--limit", "100").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert entries, out
    times = [e["at"] for e in entries]
    assert times == sorted(times, reverse=True), "the audit log is not newest first"

    def find(action: str, target: str) -> tuple[int, dict[str, Any]]:
        for i, entry in enumerate(entries):
            if entry.get("action") == action and entry.get("target") == target:
                return i, entry
        raise AssertionError(f"no {action} on {target} in the audit log:\n{out}")

    _, created = find("iam.project.create", f"organization:{DEFAULT_ORGANIZATION}")
    user_at, user_entry = find("iam.user.create", "root:")
    grant_at, grant = find("iam.grant", f"project:{project}")
    delete_at, delete = find("manifest.delete", f"repository:{repo}")
    revoke_at, revoke = find("iam.revoke", f"project:{project}")
    assert revoke_at < delete_at < grant_at < user_at
    assert user_entry["detail"]["name"] == user.name
    assert grant["detail"] == {"principal": user.principal, "role": "owner"}
    assert revoke["detail"]["principal"] == user.principal
    for entry in (created, user_entry, grant, revoke):
        assert entry["principal"].startswith("operator:"), entry
        assert entry["source"], entry
    assert delete["principal"] == user.principal
    assert delete["source"] == "127.0.0.1"
    assert delete["detail"]["digest"] == image.digest


def test_iam_cli_lists_as_json_lines(registry: Registry, iam: Iam, tmp_path: Path):
    """`--json` on the list commands (as documented: `iam user list --json`, …) prints one
    JSON object a line holding what was made (a key list holds the public key only)."""
    org = f"cliorg{uid()}"
    project = f"clip{uid()}"
    iam.organization(org)
    iam.project(project, org)
    user = iam.user("lister")
    sa = service_account_with_key(registry, iam, project, "lister", tmp_path, role="viewer")
    iam.grant(f"project:{project}", user.principal, "artifact_store_editor")

    assert org in {o["name"] for o in registry.iam_json("org", "list")}
    projects = {p["name"]: p for p in registry.iam_json("project", "list", "--org", org)}
    assert list(projects) == [project] and projects[project]["organization"] == org
    assert user.name in {u["name"] for u in registry.iam_json("user", "list")}
    assert [s["email"] for s in registry.iam_json("sa", "list", "--project", project)] == [sa.email]
    keys = registry.iam_json("key", "list", sa.email)
    assert [k["key_id"] for k in keys] == [sa.key_id]
    assert "PRIVATE" not in json.dumps(keys)
    bindings = registry.iam_json("bindings", "--scope", f"project:{project}")
    assert {(b["principal"], b["role"]) for b in bindings} == {
        (user.principal, "artifact_store_editor"),
        (sa.principal, "viewer"),
    }
