"""What every scenario runs on: the target registry as the client sees it, a meter of
wall time and CPU, the concurrent load runner, waiting for the machine to go quiet, and
skopeo with a configuration of its own.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench import BenchError
from bench.client import Auth, Http, TokenAuth
from bench.images import Pool
from bench.servers import Server
from bench.system import cpu_seconds, cpu_snapshot

# Waiting for quiet: at most this long, in windows of this length, until the servers
# together use less than this many cores. Long enough for Artifact Store to finish
# scanning the manifests a scenario pushed (scan on push), which must not run while
# Distribution is measured.
SETTLE_SECONDS = 120.0
SETTLE_WINDOW_SECONDS = 0.25
SETTLE_IDLE_CORES = 0.1


@dataclass(frozen=True)
class Metric:
    """One figure a scenario reports (one row of the table)."""

    id: str  # stable key, e.g. "5.get.c16.p99"
    scenario: str  # e.g. "5 manifest GET by tag"
    name: str  # e.g. "c=16 p99"
    unit: str  # "MiB/s", "req/s", "ms", "s", "MiB"
    higher_is_better: bool
    # An absolute goal in `unit` instead of the ratio: Artifact Store's median must stay
    # under it (the mesh's memory, which the issue bounds at 300 MiB rather than by
    # Distribution's single process).
    ceiling: float | None = None


@dataclass(frozen=True)
class Result:
    """A metric's value for one target in one round, with the cores each process kept
    busy meanwhile (`client` is the benchmark itself)."""

    metric: Metric
    value: float
    cpu: Mapping[str, float] = field(default_factory=dict)


@dataclass
class Target:
    """A registry under test, as the benchmark's client sees it."""

    server: Server
    auth: Auth

    @property
    def key(self) -> str:
        """`distribution` or `artifact-store`."""
        return self.server.key

    def http(self, concurrency: int) -> Http:
        """A new session with `concurrency` pooled connections."""
        return Http(self.server.url, self.auth, concurrency)

    @classmethod
    def of(cls, server: Server) -> Target:
        """The server with token auth when it has credentials, none otherwise."""
        creds = server.credentials
        return cls(server, TokenAuth(*creds) if creds else Auth())


class Meter:
    """Accumulates the wall time and the CPU time of the servers' processes (and of the
    client) over the timed sections run inside it (`with meter: …`)."""

    def __init__(self, processes: Mapping[str, int]) -> None:
        self._processes = dict(processes)
        self.elapsed = 0.0
        self._cpu: dict[str, float] = {}

    @contextmanager
    def timing(self) -> Iterator[None]:
        """Time what runs inside."""
        before = cpu_snapshot(self._processes)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.elapsed += time.perf_counter() - start
            after = cpu_snapshot(self._processes)
            for name, seconds in after.items():
                self._cpu[name] = self._cpu.get(name, 0.0) + seconds - before[name]

    def cores(self) -> dict[str, float]:
        """The cores each process kept busy, on average over the timed sections, and
        `other`: what the rest of the machine used meanwhile (work that is neither the
        client nor the server under test, which slows both)."""
        if self.elapsed <= 0:
            return {}
        cpu = dict(self._cpu)
        machine = cpu.pop("machine", 0.0)
        cpu["other"] = max(0.0, machine - sum(cpu.values()))
        return {name: round(seconds / self.elapsed, 2) for name, seconds in cpu.items()}


@dataclass(frozen=True)
class Load:
    """The outcome of a load: operations done, seconds taken, each one's latency."""

    done: int
    elapsed: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        """Operations per second."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """The q-quantile latency (nearest rank), in milliseconds."""
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000


async def load(
    op: Callable[[int], Awaitable[None]],
    *,
    workers: int,
    count: int,
    seconds: float,
    meter: Meter,
    first: int = 0,
) -> Load:
    """Run `op(i)` for i = first, first+1, … with `workers` in flight, until `count`
    operations are done or `seconds` have passed (whichever comes first), timed by
    `meter`. An operation that fails stops the load and raises."""
    latencies: list[float] = []
    position = first
    end = first + count
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal position
        clock = time.perf_counter
        while position < end and clock() < deadline:
            index = position
            position += 1
            started = clock()
            await op(index)
            latencies.append(clock() - started)

    with meter.timing():
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - start
    return Load(len(latencies), elapsed, latencies)


async def settle(servers: list[Server], at_most: float = SETTLE_SECONDS) -> float:
    """Flush written data to disk, then wait until the servers are quiet (background
    work of one run must not land in the next measurement), for `at_most` seconds; the
    seconds it took."""
    started = time.perf_counter()
    await asyncio.to_thread(os.sync)
    pids = [pid for server in servers for pid in server.processes().values()]
    deadline = started + at_most
    while time.perf_counter() < deadline:
        before = sum(cpu_seconds(pid) for pid in pids)
        await asyncio.sleep(SETTLE_WINDOW_SECONDS)
        busy = (sum(cpu_seconds(pid) for pid in pids) - before) / SETTLE_WINDOW_SECONDS
        if busy < SETTLE_IDLE_CORES:
            break
    else:
        print(f"  servers still busy after {at_most:.0f} s; measuring anyway", file=sys.stderr)
    return time.perf_counter() - started


class Skopeo:
    """skopeo with every machine-wide configuration replaced by files of its own
    (signature policy, registries.conf, an empty auth file, its temporary directory)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        (root / "registries.conf").write_text("unqualified-search-registries = []\n")
        (root / "auth.json").write_text('{"auths": {}}\n')
        (root / "tmp").mkdir(exist_ok=True)
        self._prefix = [
            "skopeo",
            "--policy",
            str(root / "policy.json"),
            "--registries-conf",
            str(root / "registries.conf"),
            "--tmpdir",
            str(root / "tmp"),
        ]
        self._env = {
            **os.environ,
            "REGISTRY_AUTH_FILE": str(root / "auth.json"),
            "TMPDIR": str(root / "tmp"),
        }

    async def copy(self, source: str, destination: str, *flags: str) -> None:
        """`skopeo copy FLAGS SOURCE DESTINATION`; BenchError if it fails."""
        process = await asyncio.create_subprocess_exec(
            *self._prefix,
            "copy",
            "--quiet",
            *flags,
            source,
            destination,
            env=self._env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
        if process.returncode != 0:
            raise BenchError(
                f"skopeo copy {source} {destination} exited with {process.returncode}:\n"
                f"{err.decode(errors='replace')[-2000:]}"
            )


@dataclass
class Context:
    """What a scenario run gets: its target, the round, the shared byte pool, a scratch
    directory, skopeo, and a way to wait for quiet before timing."""

    target: Target
    round: int
    pool: Pool
    scratch: Path
    skopeo: Skopeo
    servers: list[Server]

    def meter(self) -> Meter:
        """A meter over the target's processes."""
        return Meter(self.target.server.processes())

    async def settle(self) -> float:
        """Wait until both registries are quiet (see `settle`)."""
        return await settle(self.servers)
