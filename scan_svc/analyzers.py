"""The two analyzers behind one interface: given one platform image of the registry, its
findings and package inventory.

* `OfflineAnalyzer`, the built-in one: pulls the layers through the gateway one at a time
  into the scratch space (each removed once unpacked, so the disk holds one compressed
  layer plus the few files the inventory needs), unpacks and inventories them and matches
  the shared OSV database (`scan_svc.analysis`). Entries that try to leave the root (`..`,
  absolute names, escaping links) are not extracted by the unpacker; here they also fail
  the scan, because an image carrying them was made to attack whoever unpacks it.
* `TrivyAnalyzer`, used when ARTS_TRIVY_PATH resolves to an executable: runs
  `trivy image --format json --image-src remote` on `host/repo@digest`, so Trivy pulls
  from the registry (never a local Docker) with the worker's credentials in its
  environment (in client mode against a Trivy server when ARTS_TRIVY_SERVER is set), and
  converts the report (`scan_svc.analysis.trivy`).

Both raise AnalysisError when the image itself is at fault (the scan ends in error), and
PullError, AnalyzerFailed or OSError when the failure may pass (the task is retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from artifactstore.manifests import Descriptor
from scan_svc.analysis import (
    ANALYZER_NAME,
    AnalysisError,
    Finding,
    Layer,
    Limits,
    Options,
    OSInfo,
    Package,
    Skipped,
    analyze,
    analyzer_version,
)
from scan_svc.analysis.trivy import image_command, parse_report
from scan_svc.registry import Credentials, RegistryClient
from scan_svc.vulndb import DatabaseCache

T = TypeVar("T")

# Skip reasons of the unpacker that mean an entry tried to leave the image's root.
_UNSAFE = ("absolute path", "'..' component", "outside the root")
# A Trivy report is JSON on stdout; this bounds what is kept of it.
MAX_TRIVY_OUTPUT_BYTES = 512 << 20


class AnalyzerFailed(Exception):
    """The analyzer itself failed (Trivy exited non-zero or printed no report)."""


@dataclass(frozen=True)
class Target:
    """One platform image to analyse: its manifest's digest and layer descriptors."""

    repository: str
    digest: str
    platform: str
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageResult:
    """What an analyzer found in one image."""

    findings: tuple[Finding, ...]
    packages: tuple[Package, ...]
    os: OSInfo | None
    analyzer: str
    analyzer_version: str
    database_version: str


class Analyzer(Protocol):
    """Analyses platform images of the registry."""

    @property
    def name(self) -> str:
        """The analyzer's name, as reports and summaries carry it."""

    @property
    def version(self) -> str:
        """The analyzer's version, as reports and summaries carry it."""

    @property
    def database_version(self) -> str:
        """The version of the database results depend on ("" when unknown)."""

    async def analyze(self, target: Target, scratch: Path) -> ImageResult:
        """Analyse `target`, using only the empty folder `scratch` on disk."""


def unsafe_entries(skipped: tuple[Skipped, ...]) -> str | None:
    """A message naming the entries the unpacker refused for trying to leave the root, or
    None when there were none."""
    bad = [s for s in skipped if any(marker in s.reason for marker in _UNSAFE)]
    if not bad:
        return None
    first = bad[0]
    return (
        f"layer {first.layer}: {len(bad)} unsafe tar entr{'y' if len(bad) == 1 else 'ies'} "
        f"(first {first.name!r}: {first.reason})"
    )


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in a thread of its own that does not hold up the process's exit: an
    analysis cannot be interrupted, and a stopping worker leaves it behind rather than
    waiting for it (the scratch space is cleaned at the next start)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    def run() -> None:
        try:
            value = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=run, name="scan-analysis", daemon=True).start()
    return await future


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Everything until EOF, keeping at most `limit` bytes (the rest is read and dropped,
    so the writer never blocks)."""
    kept = bytearray()
    while chunk := await stream.read(1 << 16):
        kept += chunk[: max(0, limit - len(kept))]
    return bytes(kept)


class OfflineAnalyzer:
    """The built-in analyzer over the shared OSV database."""

    name = ANALYZER_NAME

    def __init__(self, client: RegistryClient, database: DatabaseCache, limits: Limits) -> None:
        self._client = client
        self._database = database
        self._limits = limits
        self.version = analyzer_version()

    @property
    def database_version(self) -> str:
        return self._database.pointer.version if self._database.pointer else ""

    async def analyze(self, target: Target, scratch: Path) -> ImageResult:
        """Pull and analyse `target` (see the module docstring). AnalysisError when no
        database was imported yet."""
        db = self._database.database
        if db is None:
            raise AnalysisError(
                "no vulnerability database: import one with `artifact-store scan db import`"
            )
        loop = asyncio.get_running_loop()
        blobs = scratch / "blobs"
        rootfs = scratch / "rootfs"
        blobs.mkdir()
        rootfs.mkdir()

        def layers() -> Iterator[Layer]:
            # Runs in the analysis thread: each layer is fetched (on the event loop) only
            # when the unpacker wants it, and the one before is deleted then.
            previous: Path | None = None
            for n, layer in enumerate(target.layers):
                path = blobs / f"{n}"
                download = self._client.download(
                    target.repository, str(layer.digest), layer.size, path
                )
                asyncio.run_coroutine_threadsafe(download, loop).result()
                if previous is not None:
                    previous.unlink()
                previous = path
                yield Layer(path, str(layer.digest))

        options = Options(limits=self._limits, scratch_parent=str(rootfs))
        report = await in_daemon_thread(lambda: analyze(layers(), db, options))
        unsafe = unsafe_entries(report.skipped)
        if unsafe is not None:
            raise AnalysisError(unsafe)
        return ImageResult(
            findings=report.findings,
            packages=report.packages,
            os=report.os,
            analyzer=report.analyzer,
            analyzer_version=report.analyzer_version,
            database_version=report.database_version,
        )


class TrivyAnalyzer:
    """Trivy, run as a registry client of the gateway."""

    name = "trivy"
    database_version = ""

    def __init__(
        self,
        executable: str,
        registry_host: str,
        credentials: Credentials,
        *,
        insecure: bool,
        server: str,
    ) -> None:
        self._executable = executable
        self._host = registry_host
        self._credentials = credentials
        self._insecure = insecure
        self._server = server
        self.version = ""

    async def analyze(self, target: Target, scratch: Path) -> ImageResult:
        """Run Trivy on `target`; AnalyzerFailed when it fails or prints no report."""
        command = image_command(
            f"{self._host}/{target.repository}@{target.digest}",
            trivy_path=self._executable,
            server=self._server,
            username=self._credentials.username,
            password=self._credentials.password,
            insecure=self._insecure,
            image_source="remote",
        )
        env = {**os.environ, **command.env}
        process = await asyncio.create_subprocess_exec(
            *command.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=scratch,
        )
        try:
            assert process.stdout is not None and process.stderr is not None
            out, err = await asyncio.gather(
                _read_capped(process.stdout, MAX_TRIVY_OUTPUT_BYTES),
                _read_capped(process.stderr, 64 << 10),
            )
            code = await process.wait()
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if code != 0:
            raise AnalyzerFailed(f"trivy exited with {code}: {err.decode(errors='replace')[-500:]}")
        try:
            report = parse_report(out)
        except AnalysisError as exc:
            raise AnalyzerFailed(str(exc)) from exc
        self.version = report.trivy_version
        return ImageResult(
            findings=report.findings,
            packages=report.packages,
            os=report.os,
            analyzer=self.name,
            analyzer_version=report.trivy_version,
            database_version="",
        )


def trivy_executable(path: str) -> str | None:
    """The executable ARTS_TRIVY_PATH names (a path, or a name looked up on PATH), or None
    when there is none: the built-in analyzer is used then."""
    if not path:
        return None
    return shutil.which(path)
