"""`artifact-store serve`: every service of the mesh as its own process, supervised.

The supervisor imports the libraries every service loads (`PRELOAD`) once and forks each
service from itself, so the services share those pages copy-on-write instead of each
keeping a copy of its own (the idle mesh's summed PSS: 317 MiB with a fresh interpreter
per service, 197 MiB forked). What a forked child cannot inherit safely the supervisor
never starts: no event loop, no gRPC channel or server, no tracer provider; its one other
thread serves its metrics from a registry no child uses. A forked child returns from
`Supervisor.run` with the name of its service and runs it as `artifact-store <service>`
would (`cli.run_service`), exiting as any Python process does.

Children are started backends first (metadata, blob, scan, gc) and the gateway last; a
child that dies is restarted with exponential backoff and the restart is logged (one that
exits with status 0 on its own has finished, as a worker configured off does, and stays
stopped). On SIGTERM or SIGINT every child gets SIGTERM (the gateway first, so it stops taking
requests before the services behind it go), then SIGKILL after a grace period. A child
whose supervisor dies gets SIGTERM from the kernel (PR_SET_PDEATHSIG) rather than living on.
Each child's PID is written to `<data dir>/run/<service>.pid` for operators and tests.
The API's port is bound here, before anything else, and handed to each gateway started
(artifactstore.listening): no service's ephemeral bind can take it, and a connection made
while the gateway restarts waits for the new one.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import setproctitle
from prometheus_client import CollectorRegistry, Counter

from artifactstore import listening, metrics
from artifactstore.config import Settings

log = logging.getLogger("artifactstore.supervisor")

# Start order: the services the gateway calls come up first.
SERVICES = ("metadata", "blob", "scan", "gc", "gateway")
# Metrics ports are handed out in this order from ARTS_METRICS_PORT_BASE.
METRICS_ORDER = ("gateway", "metadata", "blob", "scan", "gc", "supervisor")
STOP_GRACE_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 30.0
# A child that stayed up this long is considered healthy again: its backoff resets.
HEALTHY_AFTER_SECONDS = 60.0

# Imported before the first fork, to be shared by every child: the third-party libraries
# and the generated gRPC code the services load, and the project's modules they all use.
# Only modules that start no thread and open nothing at import belong here, and none that
# defines metrics (those would show at every process's /metrics); a module left out is
# merely loaded by the child that needs it.
PRELOAD = (
    "aiohttp.web",
    "cryptography.hazmat.primitives.asymmetric.ec",
    "cryptography.hazmat.primitives.asymmetric.rsa",
    "cryptography.hazmat.primitives.serialization",
    "grpc",
    "grpc_health.v1.health",
    "grpc_reflection.v1alpha.reflection",
    "grpc_status.rpc_status",
    "jwt",
    "opentelemetry.exporter.otlp.proto.common.trace_encoder",
    "opentelemetry.sdk.trace.export",
    "pyarrow.compute",
    "pyarrow.fs",
    "pyarrow.parquet",
    "sqlite3",
    "uvloop",
    "yaml",
    "zstandard",
    "artifactstore.blob.v1.blob_pb2_grpc",
    "artifactstore.gc.v1.gc_pb2_grpc",
    "artifactstore.iam.v1.iam_pb2_grpc",
    "artifactstore.metadata.v1.gc_pb2_grpc",
    "artifactstore.metadata.v1.metadata_pb2_grpc",
    "artifactstore.metadata.v1.scans_pb2_grpc",
    "artifactstore.scan.v1.scan_pb2_grpc",
    "artifactstore.rpc",
    "artifactstore.storage",
    "artifactstore.telemetry",
)

# Blocked in the supervisor and taken with sigtimedwait: no handler runs between a fork
# and the child's first instruction, and the children unblock them as they start.
_SIGNALS = frozenset({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT})
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})

# Linux's prctl(2) and glibc's mallopt(3) options: the standard library wraps neither.
_PR_SET_PDEATHSIG = 1
_M_ARENA_MAX = -8
# glibc gives each thread that allocates an arena of its own (up to 8 per core); the
# services' thread pools would each keep megabytes of them resident. Two arenas cost no
# measurable speed here. An operator's MALLOC_ARENA_MAX wins (glibc read it at start).
_ARENAS = 2
_LIBC = ctypes.CDLL(None, use_errno=True)

# The supervisor's own metrics: a registry of its own, which no forked child serves.
REGISTRY = CollectorRegistry(auto_describe=True)
RESTARTS = Counter(
    "artifactstore_service_restarts",
    "Times the supervisor restarted a service that had exited.",
    ["service"],
    registry=REGISTRY,
)


@dataclass
class Child:
    """One supervised service process."""

    service: str
    pid_file: Path
    # Variables this child's environment sets besides the supervisor's.
    env: dict[str, str]
    pid: int | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = field(default=0.5)
    # When a child that died is to be started again (monotonic), if it is.
    restart_at: float | None = None


def metrics_address(settings: Settings, process: str) -> str:
    """Where a process of the mesh serves metrics: with ARTS_METRICS_PORT_BASE set, the
    base plus its place in (gateway, metadata, blob, scan, gc, supervisor) — fixed ports
    for a Prometheus configuration; otherwise ARTS_METRICS_ADDRESS."""
    if settings.metrics_port_base is None:
        return settings.metrics_address
    host = settings.metrics_address.rpartition(":")[0] or "127.0.0.1"
    return f"{host}:{settings.metrics_port_base + METRICS_ORDER.index(process)}"


class Supervisor:
    """Runs the mesh until told to stop."""

    def __init__(self, settings: Settings) -> None:
        run_dir = settings.data_dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        self._children = [
            Child(s, run_dir / f"{s}.pid", {"ARTS_METRICS_ADDRESS": metrics_address(settings, s)})
            for s in SERVICES
        ]
        self._settings = settings
        self._pid = os.getpid()
        self._mask: set[int | signal.Signals] = set()
        self._metrics: WSGIServer | None = None
        # The API's listening sockets, bound before any other (see artifactstore.listening).
        self._api: list[socket.socket] = []
        self._stopping = False

    def run(self) -> str | None:
        """Start every child, restart those that die, stop them all on SIGTERM or SIGINT;
        None once the mesh is down. In a forked child: the service that process is to run."""
        if "MALLOC_ARENA_MAX" not in os.environ:
            _LIBC.mallopt(_M_ARENA_MAX, _ARENAS)
        try:
            self._api = listening.bind(self._settings.address)
        except OSError as err:
            raise SystemExit(f"artifact-store serve: {err}") from None
        for child in self._children:
            if child.service == "gateway":
                child.env.update(listening.handed_over(self._api))
        self._metrics = metrics.serve_metrics(
            self._settings, "supervisor", metrics_address(self._settings, "supervisor"), REGISTRY
        )
        for module in PRELOAD:
            importlib.import_module(module)
        # Objects that exist now are left alone by the children's collectors, which would
        # otherwise write to (and so copy) every page holding them.
        gc.collect()
        gc.freeze()
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        for child in self._children:
            if self._start(child):
                return child.service
        while True:
            pending = [c.restart_at for c in self._children if c.restart_at is not None]
            timeout = max(0.0, min(pending) - time.monotonic()) if pending else None
            received = (
                signal.sigwaitinfo(_SIGNALS)
                if timeout is None
                else signal.sigtimedwait(_SIGNALS, timeout)
            )
            if received is not None and received.si_signo in _STOP_SIGNALS:
                break
            self._reap()
            now = time.monotonic()
            due = [c for c in self._children if c.restart_at is not None and c.restart_at <= now]
            for child in due:
                if self._start(child):
                    return child.service
        self._stop_all()
        return None

    def _start(self, child: Child) -> bool:
        """Fork `child`'s process and record its PID; True in that process."""
        pid = os.fork()
        if pid == 0:
            self._become(child)
            return True
        child.pid = pid
        child.started_at = time.monotonic()
        child.restart_at = None
        child.pid_file.write_text(f"{pid}\n")
        log.info("started %s (pid %d)", child.service, pid)
        return False

    def _become(self, child: Child) -> None:
        """Turn a just-forked process into `child`: nothing of the supervisor's stays."""
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != self._pid:  # the supervisor died before prctl took effect
            os._exit(1)
        if self._metrics is not None:
            self._metrics.socket.close()
        if child.service == "gateway":
            # The gateway takes the descriptors over (LISTEN_FDS); these objects must not
            # close them when the supervisor's state is dropped.
            for sock in self._api:
                sock.detach()
        else:
            listening.close(self._api)
        os.environ.update(child.env)
        setproctitle.setproctitle(f"artifact-store {child.service}")
        signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)

    def _reap(self) -> None:
        """Collect every child that has exited; schedule the restart of those that failed."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = next((c for c in self._children if c.pid == pid), None)
            if child is not None:
                self._exited(child, os.waitstatus_to_exitcode(status))

    def _exited(self, child: Child, code: int) -> None:
        pid, child.pid = child.pid, None
        if self._stopping:
            child.pid_file.unlink(missing_ok=True)
            return
        if code == 0:
            log.info("%s (pid %d) finished; not restarted", child.service, pid)
            return
        if time.monotonic() - child.started_at > HEALTHY_AFTER_SECONDS:
            child.backoff = 0.5
        child.restarts += 1
        RESTARTS.labels(child.service).inc()
        log.error(
            "%s (pid %d) exited with %d; restart %d in %.1f s",
            child.service,
            pid,
            code,
            child.restarts,
            child.backoff,
        )
        child.restart_at = time.monotonic() + child.backoff
        child.backoff = min(child.backoff * 2, MAX_BACKOFF_SECONDS)

    def _stop_all(self) -> None:
        log.info("stopping the mesh")
        self._stopping = True
        # From here a connection is refused once the gateway has closed its copies, rather
        # than left waiting in a backlog no process will accept from.
        listening.close(self._api)
        gateway = [c for c in self._children if c.service == "gateway"]
        # The gateway goes first and alone, so no request meets a stopped backend.
        self._stop(gateway)
        self._stop([c for c in reversed(self._children) if c.service != "gateway"])

    def _stop(self, children: list[Child]) -> None:
        """SIGTERM `children`, wait for them, SIGKILL those still running after the grace."""
        for child in children:
            if child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        if self._wait(children, STOP_GRACE_SECONDS):
            return
        for child in children:
            if child.pid is not None:
                log.error(
                    "%s did not stop in %.0f s; killing it", child.service, STOP_GRACE_SECONDS
                )
                os.kill(child.pid, signal.SIGKILL)
        self._wait(children, None)

    def _wait(self, children: list[Child], seconds: float | None) -> bool:
        """Reap until every one of `children` has exited (True) or `seconds` have passed."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while any(c.pid is not None for c in children):
            if deadline is None:
                signal.sigwaitinfo({signal.SIGCHLD})
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                signal.sigtimedwait({signal.SIGCHLD}, left)
            self._reap()
        return True
