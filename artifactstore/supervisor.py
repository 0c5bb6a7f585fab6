"""`artifact-store serve`: every service of the mesh as its own process, supervised.

Children are started backends first (metadata, blob, scan, gc) and the gateway last; a
child that dies is restarted with exponential backoff and the restart is logged (one that
exits with status 0 on its own has finished, as a worker configured off does, and stays
stopped). On SIGTERM or SIGINT every child gets SIGTERM (the gateway first, so it stops taking
requests before the services behind it go), then SIGKILL after a grace period.
Each child's PID is written to `<data dir>/run/<service>.pid` for operators and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import Counter

from artifactstore import metrics
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


RESTARTS = Counter(
    "artifactstore_service_restarts",
    "Times the supervisor restarted a service that had exited.",
    ["service"],
    registry=metrics.REGISTRY,
)


@dataclass
class Child:
    """One supervised service process."""

    service: str
    pid_file: Path
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = field(default=0.5)

    async def start(self) -> None:
        """Start the service process and record its PID."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "artifactstore.cli", self.service, env=self.env
        )
        self.started_at = time.monotonic()
        self.pid_file.write_text(f"{self.process.pid}\n")
        log.info("started %s (pid %d)", self.service, self.process.pid)


def metrics_address(settings: Settings, process: str) -> str:
    """Where a process of the mesh serves metrics: with ARTS_METRICS_PORT_BASE set, the
    base plus its place in (gateway, metadata, blob, scan, gc, supervisor) — fixed ports
    for a Prometheus configuration; otherwise ARTS_METRICS_ADDRESS."""
    if settings.metrics_port_base is None:
        return settings.metrics_address
    host = settings.metrics_address.rpartition(":")[0] or "127.0.0.1"
    return f"{host}:{settings.metrics_port_base + METRICS_ORDER.index(process)}"


def _child_env(settings: Settings, service: str) -> dict[str, str]:
    return {
        # glibc gives each thread that allocates an arena of its own (up to 8 per core);
        # the services' thread pools would each keep megabytes of them resident. Two
        # arenas cost no measurable speed here. An operator's own setting wins.
        "MALLOC_ARENA_MAX": "2",
        **os.environ,
        "ARTS_METRICS_ADDRESS": metrics_address(settings, service),
    }


class Supervisor:
    """Runs the mesh until told to stop."""

    def __init__(self, settings: Settings) -> None:
        run_dir = settings.data_dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        self._children = [Child(s, run_dir / f"{s}.pid", _child_env(settings, s)) for s in SERVICES]
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Start every child, restart those that die, stop them all on a signal."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        for child in self._children:
            await child.start()
        watchers = [asyncio.create_task(self._watch(c)) for c in self._children]
        await self._stopping.wait()
        for task in watchers:
            task.cancel()
        await self._stop_all()

    async def _watch(self, child: Child) -> None:
        while True:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping.is_set():
                return
            if code == 0:
                log.info("%s (pid %d) finished; not restarted", child.service, child.process.pid)
                return
            if time.monotonic() - child.started_at > HEALTHY_AFTER_SECONDS:
                child.backoff = 0.5
            child.restarts += 1
            RESTARTS.labels(child.service).inc()
            log.error(
                "%s (pid %d) exited with %d; restart %d in %.1f s",
                child.service,
                child.process.pid,
                code,
                child.restarts,
                child.backoff,
            )
            await asyncio.sleep(child.backoff)
            child.backoff = min(child.backoff * 2, MAX_BACKOFF_SECONDS)
            if self._stopping.is_set():
                return
            await child.start()

    async def _stop_all(self) -> None:
        log.info("stopping the mesh")
        for child in reversed(self._children):
            if child.process and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
                # The gateway goes first and alone, so no request meets a stopped backend.
                if child.service == "gateway":
                    await self._wait(child)
        for child in self._children:
            await self._wait(child)
            child.pid_file.unlink(missing_ok=True)

    async def _wait(self, child: Child) -> None:
        if child.process is None or child.process.returncode is not None:
            return
        try:
            await asyncio.wait_for(child.process.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            log.error("%s did not stop in %.0f s; killing it", child.service, STOP_GRACE_SECONDS)
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()
