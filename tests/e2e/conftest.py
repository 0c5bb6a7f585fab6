"""The mesh under test and the real clients that drive it.

One `artifact-store serve` runs for the whole session (`registry`): its own data
directory, a free loopback port, configuration through the environment only. Tests use
repository names of their own (`unique_repo`) so they never see each other's content.

Every instance has access control on: its initial administrator (`ADMIN_USER`, owner at
the root scope) gets a random password through `ARTS_ADMIN_PASSWORD`, and the
`Registry` helpers send it as Basic credentials unless told otherwise (`auth=None` for
an anonymous request, `auth=(user, password)` for someone else). `Registry.cli` runs the
`artifact-store` administration commands against the instance.
`start_registry` starts further, separate instances (the crash test kills services of
its own instance, not the shared one).

With ARTS_TEST_E2E_STORAGE=s3, every instance keeps its blobs on a fresh prefix of the
Ceph bucket that `make test` starts (tests/objectstore.py) instead of its data directory:
`make test` runs the real-client tests and GC's race test so, a second time.
`Registry.storage_url`, `stored_blobs` and `corrupt_canonical_blobs` work on either
storage; the helpers that hand out local paths (`storage_dir`, `blob_file`,
`files_holding`) on local storage only.

skopeo and podman run with every machine-wide configuration replaced by files in a
temporary directory (auth file, registries.conf, signature policy, podman storage), so
nothing on this machine leaks into the tests. A missing binary fails the test: these
tests are the proof that real clients work, so they never skip.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import pyarrow.fs as pafs
import pytest

from artifactstore.storage import open_storage
from tests.e2e.images import Blob, Image, ImageIndex
from tests.objectstore import fresh_s3_url

SERVICES = ("gateway", "metadata", "blob", "scan", "gc")
READY_TIMEOUT = 30.0
# Starts on a fresh port after another server took the one chosen (see PortTaken).
PORT_ATTEMPTS = 3
STOP_TIMEOUT = 15.0
CLIENT_TIMEOUT = 60.0


# The error codes the OCI Distribution Specification v1.1 allows ("The `code` field MUST
# be one of the following"), and the two legacy Docker codes it says clients MAY meet.
SPEC_ERROR_CODES = frozenset(
    {
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
)
LEGACY_ERROR_CODES = frozenset({"TAG_INVALID", "MANIFEST_UNVERIFIED"})

# The initial administrator every instance creates on its first start.
ADMIN_USER = "admin"

# Where instances keep blobs: "file" (their data directory) or "s3" (the test bucket).
E2E_STORAGE = os.environ.get("ARTS_TEST_E2E_STORAGE", "file")


def _object_storage_url() -> str | None:
    """A fresh prefix of the test bucket when the suite runs on object storage."""
    return fresh_s3_url("e2e") if E2E_STORAGE == "s3" else None


class AuthDefault(enum.Enum):
    """The default of `auth=` arguments: the instance's administrator."""

    ADMIN = "admin"


ADMIN = AuthDefault.ADMIN
# Who a request is from: the administrator, nobody (None), or (username, password).
Auth = tuple[str, str] | None | Literal[AuthDefault.ADMIN]


def basic_auth(username: str, password: str) -> str:
    """An `Authorization` header value with Basic credentials."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def check_oci_error(
    status: int,
    body: bytes,
    expected_status: int,
    code: str | frozenset[str] | None = None,
) -> list[dict[str, Any]]:
    """Assert an error response: its status, the spec's JSON body shape, its code(s).

    The body must be `{"errors": [{"code": …, "message": …, "detail": …}, …]}` with at
    least one error, every code one the specification allows. With `code`, every error
    must carry that code (or one of a set of codes). Returns the errors.
    """
    shown = body[:600].decode(errors="replace")
    assert status == expected_status, f"expected HTTP {expected_status}, got {status}: {shown}"
    try:
        doc = json.loads(body)
    except ValueError:
        raise AssertionError(f"HTTP {status} error body is not JSON: {shown!r}") from None
    assert isinstance(doc, dict), f"error body is not an object: {shown}"
    errors = doc.get("errors")
    assert isinstance(errors, list) and errors, f"error body has no `errors` list: {shown}"
    for err in errors:
        assert isinstance(err, dict), f"error entry is not an object: {err!r}"
        assert isinstance(err.get("code"), str), f"error entry without a code: {err!r}"
        assert re.fullmatch(r"[A-Z_]+", err["code"]), f"malformed code {err['code']!r}"
        assert err["code"] in SPEC_ERROR_CODES | LEGACY_ERROR_CODES, (
            f"code {err['code']!r} is not one the OCI Distribution Spec allows: {shown}"
        )
        if "message" in err:
            assert isinstance(err["message"], str), f"message is not a string: {err!r}"
    if code is not None:
        wanted = {code} if isinstance(code, str) else set(code)
        got = [e["code"] for e in errors]
        assert set(got) <= wanted, f"expected error code {sorted(wanted)}, got {got}: {shown}"
    return errors


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def artifact_store_executable() -> str:
    """The `artifact-store` console script of this virtualenv (or of PATH)."""
    beside = Path(sys.executable).parent / "artifact-store"
    if beside.exists():
        return str(beside)
    found = shutil.which("artifact-store")
    if found is None:
        pytest.fail(
            "the `artifact-store` command is not installed: run `pip install -e '.[dev]'` "
            "in the virtualenv",
            pytrace=False,
        )
    return found


class PortTaken(Exception):
    """Something other than the gateway answers on the registry's port: it was free when
    chosen, and an ephemeral bind (a service's metrics listener, which answers any GET)
    took it before the gateway could."""


@dataclass
class Response:
    """One HTTP exchange's outcome, read whole."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """A response header (case-insensitive), or None."""
        return self.headers.get(name)

    def expect_error(
        self, status: int, code: str | frozenset[str] | None = None
    ) -> list[dict[str, Any]]:
        """Assert this is an OCI error response (see `check_oci_error`)."""
        return check_oci_error(self.status, self.body, status, code)


@dataclass
class Registry:
    """A running `artifact-store serve` and a small synchronous HTTP client for it."""

    data_dir: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # Extra environment for the mesh (e.g. telemetry settings).
    env: dict[str, str] = field(default_factory=dict)
    # The initial administrator's password, set through ARTS_ADMIN_PASSWORD.
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    # Blob storage on the test bucket (ARTS_TEST_E2E_STORAGE=s3); None: the data directory.
    object_storage_url: str | None = field(default_factory=_object_storage_url)

    @property
    def admin(self) -> tuple[str, str]:
        """The administrator's (username, password)."""
        return ADMIN_USER, self.admin_password

    @property
    def admin_authorization(self) -> str:
        """The administrator's `Authorization` header value (Basic)."""
        return basic_auth(*self.admin)

    def authorization(self, auth: Auth) -> str | None:
        """The `Authorization` header value for `auth` (None: send none)."""
        if auth is ADMIN:
            return self.admin_authorization
        if auth is None:
            return None
        return basic_auth(*auth)

    @property
    def socket_dir(self) -> Path:
        """Where the mesh's unix sockets are (`metadata.sock`, …)."""
        return self.data_dir / "run"

    @property
    def token_key_file(self) -> Path:
        """The PEM key (EC P-256) the gateway signs its tokens with."""
        return self.data_dir / "keys" / "token-signing.pem"

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>`: the registry host as clients name it."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL, `http://127.0.0.1:<port>`."""
        return f"http://{self.host}"

    @property
    def storage_dir(self) -> Path:
        """The blob storage root (`blobs/`, `uploads/`)."""
        return self.data_dir / "storage"

    def blob_file(self, digest: str) -> Path:
        """Where the canonical copy of blob `digest` lives in the storage tree."""
        algorithm, _, hex_ = digest.partition(":")
        return self.storage_dir / "blobs" / algorithm / hex_[:2] / hex_ / "data"

    def files_holding(self, data: bytes) -> list[Path]:
        """Every file under the storage root whose content is exactly `data`."""
        size = len(data)
        found = []
        for path in self.storage_dir.rglob("*"):
            if path.is_file() and path.stat().st_size == size and path.read_bytes() == data:
                found.append(path)
        return found

    @property
    def storage_url(self) -> str:
        """The instance's ARTS_STORAGE_URL."""
        return (
            self.env.get("ARTS_STORAGE_URL") or self.object_storage_url or self.storage_dir.as_uri()
        )

    def _canonical_blobs(self) -> tuple[pafs.FileSystem, dict[str, str]]:
        """The storage's filesystem and every canonical blob in it: digest → path."""
        storage = open_storage(self.storage_url)
        selector = pafs.FileSelector(storage.path("blobs"), recursive=True, allow_not_found=True)
        found = {}
        for info in storage.filesystem.get_file_info(selector):
            parts = info.path[len(storage.root) :].strip("/").split("/")
            if info.type == pafs.FileType.File and len(parts) == 5 and parts[4] == "data":
                found[f"{parts[1]}:{parts[3]}"] = info.path
        return storage.filesystem, found

    def stored_blobs(self) -> set[str]:
        """The digests of every canonical blob in blob storage (local or object)."""
        return set(self._canonical_blobs()[1])

    def corrupt_canonical_blobs(self) -> list[str]:
        """Canonical blobs whose bytes do not hash to the digest their path names."""
        bad: list[str] = []
        filesystem, blobs = self._canonical_blobs()
        for digest, path in blobs.items():
            algorithm, _, expected = digest.partition(":")
            h = hashlib.new(algorithm)
            with filesystem.open_input_stream(path) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            if h.hexdigest() != expected:
                bad.append(f"{path}: content hashes to {algorithm}:{h.hexdigest()}")
        return bad

    def pid_file(self, service: str) -> Path:
        """Where the supervisor records the PID of `service` (gateway, metadata, …)."""
        assert service in SERVICES, service
        return self.data_dir / "run" / f"{service}.pid"

    def pid(self, service: str) -> int:
        """The PID of the running `service` child, from its PID file."""
        return int(self.pid_file(service).read_text().strip())

    def log_tail(self, lines: int = 60) -> str:
        """The end of the instance's combined output, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- lifecycle -----------------------------------------------------------------

    def process_env(self) -> dict[str, str]:
        """The environment the mesh runs with (and the administration commands too)."""
        return {
            **os.environ,
            "ARTS_DATA_DIR": str(self.data_dir),
            "ARTIFACT_STORE_ADDRESS": self.host,
            "ARTS_ADMIN_USER": ADMIN_USER,
            "ARTS_ADMIN_PASSWORD": self.admin_password,
            "PYTHONUNBUFFERED": "1",
            **({"ARTS_STORAGE_URL": self.object_storage_url} if self.object_storage_url else {}),
            **self.env,
        }

    def start(self) -> None:
        """Start `artifact-store serve` and wait until GET /v2/ answers 200 (as admin),
        on a new port if another server took the one chosen."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(PORT_ATTEMPTS):
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [artifact_store_executable(), "serve"],
                    env=self.process_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                self.wait_ready(READY_TIMEOUT)
                return
            except PortTaken:
                self._abandon()
                self.port = free_port()
        pytest.fail(f"another server took each of {PORT_ATTEMPTS} ports chosen", pytrace=False)

    def _abandon(self) -> None:
        """Stop a mesh that has only just started (so may not handle SIGTERM yet): every
        process of the session it was started in."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def wait_ready(self, timeout: float) -> None:
        """Poll GET /v2/ until it answers 200; fail with the log if it never does, and
        raise PortTaken when another server answers."""
        deadline = time.monotonic() + timeout
        last: str = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(
                    f"artifact-store serve exited with {self.process.returncode} "
                    f"before it was ready:\n{self.log_tail()}",
                    pytrace=False,
                )
            try:
                r = self.request("GET", "/v2/", timeout=2)
                if r.header("Docker-Distribution-API-Version") != "registry/2.0":
                    raise PortTaken(f"{self.host} answered HTTP {r.status}: {r.body[:100]!r}")
                if r.status == 200:
                    return
                last = f"HTTP {r.status}: {r.body[:200]!r}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.1)
        pytest.fail(
            f"GET {self.url}/v2/ did not answer 200 within {timeout:.0f} s (last: {last})\n"
            f"{self.log_tail()}",
            pytrace=False,
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the supervisor and wait; fail if the mesh is not down in `timeout`.

        On failure every process this instance started (supervisor and the children in
        its PID files) is killed by PID before the test is failed, so nothing lingers.
        """
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        children = self._child_pids()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            for pid in children.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pytest.fail(
                f"artifact-store serve did not stop within {timeout:.0f} s of SIGTERM\n"
                f"{self.log_tail()}",
                pytrace=False,
            )
        leftovers = {s: p for s, p in children.items() if _alive(p)}
        for pid in leftovers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"children still running after the supervisor stopped: {leftovers}"
        assert proc.returncode == 0, (
            f"artifact-store serve exited with {proc.returncode} on SIGTERM\n{self.log_tail()}"
        )

    def _child_pids(self) -> dict[str, int]:
        pids = {}
        for service in SERVICES:
            with contextlib.suppress(FileNotFoundError, ValueError):
                pids[service] = self.pid(service)
        return pids

    # --- administration --------------------------------------------------------------

    def cli(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `artifact-store ARGS…` with this instance's environment (which reaches the
        mesh through the unix sockets under its data directory). With `check`, fail the
        test on a non-zero exit, showing what the command said."""
        cmd = [artifact_store_executable(), *args]
        proc = subprocess.run(
            cmd,
            env=self.process_env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"artifact-store {' '.join(args)}\nexited with {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}",
                pytrace=False,
            )
        return proc

    def iam(self, *args: str, input: str | None = None) -> str:
        """`artifact-store iam ARGS…`; its stdout (the test fails if the command does)."""
        return self.cli("iam", *args, input=input).stdout

    def iam_json(self, *args: str) -> list[dict[str, Any]]:
        """`artifact-store iam ARGS… --json`: its JSON lines, parsed."""
        out = self.iam(*args, "--json")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    # --- HTTP ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        auth: Auth = ADMIN,
    ) -> Response:
        """One HTTP request to the registry (`path` may also be an absolute URL of it).

        Sent as the administrator unless `auth` says otherwise (None: no credentials;
        `(user, password)`: Basic credentials of someone else); an `Authorization` in
        `headers` is sent as it is instead.
        """
        target = urlsplit(urljoin(self.url + "/", path))
        assert target.netloc == self.host, f"{path} is not on {self.host}"
        sent = dict(headers or {})
        authorization = self.authorization(auth)
        if authorization and not any(k.lower() == "authorization" for k in sent):
            sent["Authorization"] = authorization
        conn = http.client.HTTPConnection(self.host, timeout=timeout)
        try:
            request_path = target.path + (f"?{target.query}" if target.query else "")
            conn.request(method, request_path, body=body, headers=sent)
            resp = conn.getresponse()
            return Response(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def push_blob(
        self, repo: str, data: bytes, digest: str | None = None, auth: Auth = ADMIN
    ) -> str:
        """Upload `data` to `repo` with POST then PUT; return its digest."""
        digest = digest or Blob("application/octet-stream", data).digest
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/", auth=auth)
        assert r.status == 202, f"POST upload: {r.status} {r.body!r}"
        location = r.header("Location")
        assert location, "POST upload answered no Location"
        sep = "&" if "?" in location else "?"
        r = self.request(
            "PUT",
            f"{location}{sep}digest={digest}",
            body=data,
            headers={"Content-Type": "application/octet-stream"},
            auth=auth,
        )
        assert r.status == 201, f"PUT upload of {digest}: {r.status} {r.body!r}"
        return digest

    def put_manifest(
        self, repo: str, reference: str, manifest: Blob, auth: Auth = ADMIN
    ) -> Response:
        """PUT a manifest under `reference` (tag or digest); assert 201."""
        r = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            body=manifest.data,
            headers={"Content-Type": manifest.media_type},
            auth=auth,
        )
        assert r.status == 201, f"PUT manifest {repo}:{reference}: {r.status} {r.body!r}"
        assert r.header("Docker-Content-Digest") == manifest.digest
        return r

    def push_image(
        self, repo: str, content: Image | ImageIndex, tag: str, auth: Auth = ADMIN
    ) -> str:
        """Push every blob and manifest of `content` over raw HTTP; return its digest."""
        images = content.images if isinstance(content, ImageIndex) else (content,)
        for img in images:
            for blob in img.blobs:
                self.push_blob(repo, blob.data, blob.digest, auth=auth)
            if isinstance(content, ImageIndex):
                self.put_manifest(repo, img.digest, img.manifest, auth=auth)
        self.put_manifest(repo, tag, content.manifest, auth=auth)
        return content.digest


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of someone else still "exists"; treat it as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """The one `artifact-store serve` of the session, ready to answer (as its admin)."""
    base = tmp_path_factory.mktemp("registry")
    reg = Registry(data_dir=base / "data", port=free_port(), log_path=base / "serve.log")
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def start_registry(tmp_path: Path) -> Iterator[Callable[..., Registry]]:
    """Start a separate `artifact-store serve` (own data dir and port, extra environment
    as keyword arguments); stopped after."""
    started: list[Registry] = []

    def start(**env: str) -> Registry:
        base = tmp_path / f"registry{len(started)}"
        reg = Registry(
            data_dir=base / "data", port=free_port(), log_path=base / "serve.log", env=env
        )
        base.mkdir(parents=True)
        started.append(reg)
        reg.start()
        return reg

    try:
        yield start
    finally:
        for reg in started:
            reg.stop()


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Make repository names no other test uses: `unique_repo("x")` → `e2e/<test>-x-<id>`."""

    def make(suffix: str = "repo") -> str:
        test = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())
        test = "-".join(filter(None, test.split("-")))[:40]
        return f"e2e/{test}-{suffix}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def oci_error() -> Callable[..., list[dict[str, Any]]]:
    """`check_oci_error`, for tests that make their own HTTP requests."""
    return check_oci_error


# --- real clients --------------------------------------------------------------------


def _require_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"`{name}` is not installed on this machine; the end-to-end tests need it "
            f"(apt-get install -y --no-install-recommends {name}; `make test` does this)",
            pytrace=False,
        )
    return found


@dataclass
class ClientConfig:
    """Configuration files that replace the machine's for skopeo and podman."""

    root: Path

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.auth_file.write_text('{"auths": {}}\n')
        self.registries_conf.write_text("unqualified-search-registries = []\n")
        self.policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')

    @property
    def auth_file(self) -> Path:
        """The test's auth file: empty at first, so no credentials of this machine are
        used; `podman login` / `skopeo login --authfile` write into it."""
        return self.root / "auth.json"

    @property
    def registries_conf(self) -> Path:
        """A registries.conf with no search registries, mirrors or blocks."""
        return self.root / "registries.conf"

    @property
    def policy(self) -> Path:
        """A signature policy that accepts anything (the registry stores no signatures)."""
        return self.root / "policy.json"

    def env(self) -> dict[str, str]:
        """The process environment the clients run with."""
        return {
            **os.environ,
            "REGISTRY_AUTH_FILE": str(self.auth_file),
            "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
            "TMPDIR": str(self.root),
        }


@dataclass
class Tool:
    """A command-line client run with a fixed prefix of arguments and environment."""

    prefix: list[str]
    env: dict[str, str]

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = CLIENT_TIMEOUT,
        input: str | None = None,
    ) -> str:
        """Run the tool (`input` on its stdin); return stdout. With `check`, fail the test
        on a non-zero exit."""
        cmd = [*self.prefix, *args]
        proc = subprocess.run(
            cmd,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)}\nexited with {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}",
                pytrace=False,
            )
        return proc.stdout

    def result(
        self, *args: str, timeout: float = CLIENT_TIMEOUT, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the tool and return the completed process, whatever its exit code."""
        return subprocess.run(
            [*self.prefix, *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture
def client_config(tmp_path: Path) -> ClientConfig:
    """Per-test client configuration files in the test's temporary directory."""
    return ClientConfig(tmp_path / "client-config")


@pytest.fixture
def skopeo(client_config: ClientConfig) -> Tool:
    """skopeo with this test's policy and registries.conf (per-command flags add the rest:
    `--authfile`, `--src-tls-verify=false`/`--dest-tls-verify=false`)."""
    binary = _require_binary("skopeo")
    return Tool(
        prefix=[
            binary,
            "--policy",
            str(client_config.policy),
            "--registries-conf",
            str(client_config.registries_conf),
            "--tmpdir",
            str(client_config.root),
        ],
        env=client_config.env(),
    )


@pytest.fixture
def podman(client_config: ClientConfig, tmp_path: Path) -> Iterator[Tool]:
    """podman as root with its whole storage inside this test's temporary directory.

    podman refuses a runroot longer than 50 characters, so the runroot is a short
    temporary directory of its own, removed after the test.
    """
    binary = _require_binary("podman")
    root = tmp_path / "podman"
    runroot = Path(tempfile.mkdtemp(prefix="e2e-podman-"))
    storage_conf = client_config.root / "storage.conf"
    storage_conf.write_text(
        f'[storage]\ndriver = "vfs"\nrunroot = "{runroot}"\ngraphroot = "{root / "root"}"\n'
    )
    containers_conf = client_config.root / "containers.conf"
    containers_conf.write_text("")
    env = {
        **client_config.env(),
        "CONTAINERS_STORAGE_CONF": str(storage_conf),
        "CONTAINERS_CONF": str(containers_conf),
    }
    try:
        yield Tool(
            prefix=[
                binary,
                "--root",
                str(root / "root"),
                "--runroot",
                str(runroot),
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--tmpdir",
                str(root / "tmp"),
            ],
            env=env,
        )
    finally:
        shutil.rmtree(runroot, ignore_errors=True)
