"""The two registries under test, started side by side on loopback, and their storage.

- `Distribution`: CNCF Distribution (Debian's `docker-registry`), as its users run it —
  one process, filesystem (or S3) storage, deletes enabled, log level warn with the
  access log it keeps writing at that level going to a file, no authentication.
- `ArtifactStore`: `artifact-store serve` with embedded defaults — the supervisor and
  one process per service, its own data directory, access control on (an administrator
  whose password the bench sets).

`Storage` is where both keep blobs: directories of their own, or one bucket each on an
S3 endpoint (`S3Endpoint`), given in the environment or started for the run with
`scripts/ceph`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pyarrow import fs as pafs

from bench import BenchError
from bench.system import descendants

READY_SECONDS = 30.0
STOP_SECONDS = 15.0
# Starts on a fresh port after another server took the one chosen (see Server.start).
PORT_ATTEMPTS = 3
API_VERSION = "Docker-Distribution-API-Version"
ADMIN_USER = "admin"
# The services of `artifact-store serve`; each child's PID is in <data dir>/run/<name>.pid.
MESH_SERVICES = ("gateway", "metadata", "blob", "scan", "gc")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class S3Endpoint:
    """An S3 service (Ceph RGW, MinIO, AWS) and the credentials to use it."""

    endpoint: str  # http://host:port
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    @property
    def hostport(self) -> str:
        """`host:port` of the endpoint."""
        return self.endpoint.split("://", 1)[1].rstrip("/")

    @classmethod
    def from_env(cls, env: dict[str, str]) -> S3Endpoint | None:
        """The endpoint named by `S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
        (and `AWS_REGION`), the variables `scripts/ceph up` prints; None when unset."""
        if not env.get("S3_ENDPOINT") or not env.get("AWS_ACCESS_KEY_ID"):
            return None
        return cls(
            endpoint=env["S3_ENDPOINT"],
            access_key=env["AWS_ACCESS_KEY_ID"],
            secret_key=env.get("AWS_SECRET_ACCESS_KEY", ""),
            region=env.get("AWS_REGION", "us-east-1"),
        )

    def create_bucket(self, bucket: str) -> None:
        """Create `bucket` (if it does not exist yet)."""
        s3 = pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.hostport,
            scheme=self.endpoint.split("://", 1)[0],
            region=self.region,
            allow_bucket_creation=True,
        )
        s3.create_dir(bucket)


class CephGateway:
    """A throw-away Ceph RADOS Gateway for one run (`scripts/ceph up` / `down`)."""

    def __init__(self, data_dir: Path) -> None:
        self._script = Path(__file__).resolve().parent.parent / "scripts" / "ceph"
        self._data_dir = data_dir

    def start(self) -> S3Endpoint:
        """Start the cluster; its endpoint (from the `export` lines it prints)."""
        out = subprocess.run(
            [str(self._script), "up", str(self._data_dir)],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if out.returncode != 0:
            raise BenchError(f"scripts/ceph up failed:\n{out.stderr[-2000:]}")
        exported: dict[str, str] = {}
        for line in out.stdout.splitlines():
            name, sep, value = line.removeprefix("export ").partition("=")
            if sep:
                exported[name.strip()] = value.strip().strip("'\"")
        endpoint = S3Endpoint.from_env(exported)
        if endpoint is None:
            raise BenchError(f"scripts/ceph up printed no endpoint:\n{out.stdout}")
        return endpoint

    def stop(self) -> None:
        """Stop exactly what `start` started."""
        subprocess.run(
            [str(self._script), "down", str(self._data_dir)], capture_output=True, check=False
        )


@dataclass(frozen=True)
class Storage:
    """Where the registries keep blobs: local directories, or one bucket each on `s3`."""

    s3: S3Endpoint | None = None

    @property
    def kind(self) -> str:
        """`file` or `s3`."""
        return "s3" if self.s3 else "file"


class Server(ABC):
    """A registry process (tree) on a free loopback port."""

    # Short name used in the report and JSON (`distribution`, `artifact-store`).
    key: str

    def __init__(self, work_dir: Path, storage: Storage) -> None:
        self.work_dir = work_dir
        self.storage = storage
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = work_dir / "server.log"

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>`: the registry as clients name it."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://{self.host}"

    @property
    def credentials(self) -> tuple[str, str] | None:
        """The (user, password) clients log in with; None when the server has no auth."""
        return None

    @abstractmethod
    def command(self) -> tuple[list[str], dict[str, str]]:
        """The command line and environment that start the server."""

    @abstractmethod
    def processes(self) -> dict[str, int]:
        """The server's processes by name (for CPU accounting and profiling)."""

    def tree(self) -> list[int]:
        """Every process of the server right now (for memory accounting)."""
        return descendants(self.process.pid) if self.process else []

    def start(self) -> None:
        """Start the server and wait until `GET /v2/` answers 200 (with credentials), on a
        new port when another server took the one chosen: it was free when chosen, and
        another process's ephemeral bind (a metrics listener, which answers any GET) may
        take it before the server binds it."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(PORT_ATTEMPTS):
            if self._started():
                return
            self.stop()
            self.port = free_port()
        raise BenchError(f"{self.key}: another server took each of {PORT_ATTEMPTS} ports chosen")

    def _started(self) -> bool:
        """One start: True once ready, False when something else answers on the port."""
        argv, env = self.command()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                env=env,
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_SECONDS
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.key} exited with {self.process.returncode}:\n{self.tail()}"
                )
            request = urllib.request.Request(f"{self.url}/v2/")
            if self.credentials:
                request.add_header("Authorization", basic_authorization(*self.credentials))
            try:
                with urllib.request.urlopen(request, timeout=2) as answer:
                    if answer.headers.get(API_VERSION) != "registry/2.0":
                        return False
                    if answer.status == 200:
                        return True
            except urllib.error.HTTPError as err:
                if err.headers.get(API_VERSION) != "registry/2.0":
                    return False
                last = f"HTTP {err.code}"
            except OSError as err:
                last = repr(err)
            time.sleep(0.1)
        self.stop()
        raise BenchError(f"{self.key} not ready in {READY_SECONDS:.0f} s ({last}):\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM the server and wait; SIGKILL it and its processes if it lingers."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        children = self.tree()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            for pid in reversed(children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()

    def tail(self, lines: int = 40) -> str:
        """The end of the server's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def basic_authorization(user: str, password: str) -> str:
    """An `Authorization` header value with Basic credentials."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Distribution(Server):
    """CNCF Distribution: `docker-registry serve config.yml`."""

    key = "distribution"

    def config(self) -> dict[str, Any]:
        """The registry's configuration (written as YAML)."""
        storage: dict[str, Any] = {"delete": {"enabled": True}}
        s3 = self.storage.s3
        if s3 is None:
            storage["filesystem"] = {"rootdirectory": str(self.work_dir / "storage")}
        else:
            storage["s3"] = {
                "accesskey": s3.access_key,
                "secretkey": s3.secret_key,
                "region": s3.region,
                "regionendpoint": s3.endpoint,
                "bucket": self.key,
                "secure": s3.endpoint.startswith("https"),
                "v4auth": True,
            }
        return {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": storage,
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }

    def command(self) -> tuple[list[str], dict[str, str]]:
        """`docker-registry serve <work dir>/config.yml`."""
        binary = shutil.which("docker-registry")
        if binary is None:
            raise BenchError(
                "docker-registry is not installed: apt-get install docker-registry "
                "(`make bench` does this)"
            )
        if self.storage.s3 is not None:
            self.storage.s3.create_bucket(self.key)
        path = self.work_dir / "config.yml"
        path.write_text(yaml.safe_dump(self.config()))
        return [binary, "serve", str(path)], {"PATH": os.environ.get("PATH", "/usr/bin")}

    def processes(self) -> dict[str, int]:
        """The one registry process."""
        return {"registry": self.process.pid} if self.process else {}

    def version(self) -> str:
        """`docker-registry --version`'s version field."""
        out = subprocess.run(
            ["docker-registry", "--version"], capture_output=True, text=True, check=False
        )
        return out.stdout.split()[-1] if out.stdout.split() else "unknown"


class ArtifactStore(Server):
    """Artifact Store: `artifact-store serve` with embedded defaults."""

    key = "artifact-store"

    def __init__(self, work_dir: Path, storage: Storage) -> None:
        super().__init__(work_dir, storage)
        self.password = secrets.token_urlsafe(18)
        self.data_dir = work_dir / "data"

    @property
    def credentials(self) -> tuple[str, str]:
        """The administrator's (user, password)."""
        return ADMIN_USER, self.password

    def command(self) -> tuple[list[str], dict[str, str]]:
        """`artifact-store serve` with its data directory, address and admin password."""
        beside = Path(sys.executable).parent / "artifact-store"
        binary = str(beside) if beside.exists() else shutil.which("artifact-store")
        if binary is None:
            raise BenchError("artifact-store is not installed: pip install -e . in the venv")
        env = {
            **os.environ,
            "ARTS_DATA_DIR": str(self.data_dir),
            "ARTIFACT_STORE_ADDRESS": self.host,
            "ARTS_ADMIN_USER": ADMIN_USER,
            "ARTS_ADMIN_PASSWORD": self.password,
            "PYTHONUNBUFFERED": "1",
        }
        s3 = self.storage.s3
        if s3 is not None:
            s3.create_bucket(self.key)
            scheme = s3.endpoint.split("://", 1)[0]
            env["AWS_ACCESS_KEY_ID"] = s3.access_key
            env["AWS_SECRET_ACCESS_KEY"] = s3.secret_key
            env["ARTS_STORAGE_URL"] = (
                f"s3://{self.key}?endpoint_override={s3.hostport}&scheme={scheme}"
                f"&region={s3.region}"
            )
        return [binary, "serve"], env

    def service_pid(self, service: str) -> int | None:
        """The PID of a service of the mesh, from its PID file (None if not running)."""
        try:
            return int((self.data_dir / "run" / f"{service}.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def processes(self) -> dict[str, int]:
        """The supervisor and every service, by name."""
        found = {"supervisor": self.process.pid} if self.process else {}
        for service in MESH_SERVICES:
            pid = self.service_pid(service)
            if pid is not None:
                found[service] = pid
        return found
