"""`python -m bench`: start Distribution and Artifact Store side by side, run the
scenarios against each in alternation for several rounds, print the figures.

In every round each scenario runs against one registry, then the other; the order flips
every round (A B, B A, …) so neither always goes first. Scenario 10, peak memory, is
the largest summed PSS of each registry's processes during a round (the supervisor and
every child of `artifact-store serve`; the one `docker-registry` process), sampled by a
thread every 50 ms; its goal is the issue's absolute 300 MiB for the whole mesh. The
summed RSS, which counts the pages the forked services share once per process, is
printed beside it but is not a row.

The client (this process, aiohttp on uvloop) shares the machine's cores with the
servers; the CPU table shows how much of them it used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvloop

from bench import BenchError, scaling
from bench.harness import Context, Metric, Result, Skopeo, Target
from bench.images import MIB, Pool
from bench.profiling import Profiler
from bench.report import background_cores, collect, cpu_table, json_lines, table
from bench.scenarios import BIG_BLOB_BYTES, SCENARIOS, Scenario
from bench.servers import (
    ArtifactStore,
    CephGateway,
    Distribution,
    S3Endpoint,
    Server,
    Storage,
)
from bench.system import MemorySampler, machine

MEMORY_SCENARIO = 10
MEMORY_PSS = Metric(
    f"{MEMORY_SCENARIO}.pss",
    f"{MEMORY_SCENARIO} peak resident memory",
    "peak PSS",
    "MiB",
    False,
    ceiling=300,
)
# Other work on the machine above this many cores (median) makes the figures suspect.
BUSY_CORES = 0.2
# The pool blobs are cut from: the largest blob, and 8 layers of skopeo's image.
POOL_BYTES = BIG_BLOB_BYTES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    names = ", ".join(f"{s.number}={s.name}" for s in SCENARIOS)
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Artifact Store against CNCF Distribution, side by side on this machine.",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--scenarios",
        default="all",
        help=f"comma-separated numbers or names ({names}, {MEMORY_SCENARIO}=memory), "
        "'all' (default) or 'none'",
    )
    parser.add_argument("--json", type=Path, help="also write the JSON lines to this file")
    parser.add_argument(
        "--storage",
        choices=("file", "s3"),
        default="file",
        help="blob storage of both registries: local directories (default), or a bucket "
        "each on the S3 endpoint in S3_ENDPOINT/AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
        "else on a Ceph RADOS Gateway started for the run (scripts/ceph)",
    )
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="also measure how costs grow: 100,000 tags, 10,000 repositories, a 5 GiB blob",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy Artifact Store's services into this directory"
    )
    parser.add_argument("--work-dir", type=Path, help="where the servers keep data (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


def selected(spec: str) -> tuple[list[type[Scenario]], bool]:
    """The scenarios `--scenarios` names, and whether memory (10) is among them."""
    if spec == "all":
        return list(SCENARIOS), True
    if spec == "none":
        return [], False
    chosen: list[type[Scenario]] = []
    memory = False
    for word in (w.strip() for w in spec.split(",") if w.strip()):
        if word in {str(MEMORY_SCENARIO), "memory"}:
            memory = True
            continue
        match = [s for s in SCENARIOS if word in {str(s.number), s.name}]
        if not match:
            raise SystemExit(f"unknown scenario {word!r}")
        chosen += [s for s in match if s not in chosen]
    return sorted(chosen, key=lambda s: s.number), memory


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _shown(results: list[Result]) -> str:
    return ", ".join(f"{r.metric.name} {r.value:,.1f} {r.metric.unit}" for r in results)


@contextlib.asynccontextmanager
async def storage_for(options: argparse.Namespace, work: Path) -> AsyncIterator[Storage]:
    """Local directories, or an S3 endpoint (from the environment, or a Ceph RGW started
    for the run and stopped after)."""
    if options.storage == "file":
        yield Storage()
        return
    endpoint = S3Endpoint.from_env(dict(os.environ))
    if endpoint is not None:
        yield Storage(endpoint)
        return
    gateway = CephGateway(work / "ceph")
    _progress("starting a Ceph RADOS Gateway for the run …")
    endpoint = await asyncio.to_thread(gateway.start)
    try:
        yield Storage(endpoint)
    finally:
        await asyncio.to_thread(gateway.stop)


def _commit() -> str:
    out = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


async def run_rounds(
    options: argparse.Namespace,
    servers: list[Server],
    work: Path,
    sampler: MemorySampler,
    profiler: Profiler | None,
    restarts: Counter[str],
) -> list[tuple[str, Result]]:
    """Every selected scenario against both registries, round after round; processes
    found restarted after a scenario are counted in `restarts`."""
    chosen, memory = selected(options.scenarios)
    if not chosen and not memory:
        return []
    targets = [Target.of(server) for server in servers]
    pool = await asyncio.to_thread(Pool, POOL_BYTES)
    skopeo = Skopeo(work / "skopeo")
    instances = {t.key: [cls() for cls in chosen] for t in targets}
    records: list[tuple[str, Result]] = []
    for round_ in range(options.rounds):
        order = targets if round_ % 2 == 0 else targets[::-1]
        for target in targets:
            sampler.reset(target.key)
        for index in range(len(chosen)):
            for target in order:
                scenario = instances[target.key][index]
                ctx = Context(target, round_, pool, work / "scratch" / target.key, skopeo, servers)
                ctx.scratch.mkdir(parents=True, exist_ok=True)
                if not scenario.prepared:
                    started = time.perf_counter()
                    await scenario.setup(ctx)
                    scenario.prepared = True
                    setup_seconds = time.perf_counter() - started
                    if setup_seconds > 1:
                        _progress(f"  setup of {scenario.label} took {setup_seconds:.1f} s")
                recording: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
                if profiler is not None and isinstance(target.server, ArtifactStore):
                    recording = profiler.recording(
                        target.server, scenario.label, f"{scenario.number}-r{round_}"
                    )
                before = target.server.processes()
                async with recording:
                    results = await scenario.run(ctx)
                after = target.server.processes()
                for name, pid in before.items():
                    if after.get(name, pid) != pid:
                        restarts[f"{target.key} {name}"] += 1
                records += [(target.key, r) for r in results]
                _progress(
                    f"[{round_ + 1}/{options.rounds}] {scenario.label} · {target.key}: "
                    f"{_shown(results)}"
                )
        if memory:
            for target in targets:
                peak = sampler.peak(target.key) / MIB
                peak_pss = sampler.peak_pss(target.key) / MIB
                records.append((target.key, Result(MEMORY_PSS, peak_pss)))
                _progress(
                    f"[{round_ + 1}/{options.rounds}] peak RSS · {target.key}: {peak:.0f} MiB,"
                    f" peak PSS {peak_pss:.0f} MiB"
                )
    return records


async def main_async(options: argparse.Namespace) -> int:
    """Start both registries, run what the options ask for, report, stop everything."""
    base = options.work_dir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="arts-bench-", dir=base))
    sampler = MemorySampler()
    try:
        async with storage_for(options, work) as storage:
            distribution = Distribution(work / "distribution", storage)
            servers: list[Server] = [distribution, ArtifactStore(work / "artifact-store", storage)]
            try:
                for server in servers:
                    await asyncio.to_thread(server.start)
                    sampler.watch(server.key, server.tree)
                sampler.start()
                _progress(
                    f"work directory {work}; " + ", ".join(f"{s.key} at {s.url}" for s in servers)
                )
                profiler = Profiler(options.profile) if options.profile else None
                started = time.perf_counter()
                restarts: Counter[str] = Counter()
                records = await run_rounds(options, servers, work, sampler, profiler, restarts)
                scaled = await scaling.run(servers, sampler) if options.scaling else []
                run: dict[str, Any] = {
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "machine": machine(),
                    "rounds": options.rounds,
                    "storage": storage.kind,
                    "distribution": distribution.version(),
                    "artifact_store": _commit(),
                    "seconds": round(time.perf_counter() - started),
                    "profiled": bool(profiler),
                    "restarts": dict(restarts),
                }
            finally:
                for server in servers:
                    await asyncio.to_thread(server.stop)
    finally:
        sampler.stop()
        if not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows = collect(records)
    run["background_cores"] = round(background_cores(rows), 2)
    lines = json_lines(rows, run) + [json.dumps({"scaling": s}) for s in scaled]
    m = run["machine"]
    print(
        f"\nArtifact Store ({run['artifact_store']}) vs Distribution {run['distribution']}, "
        f"{run['date']}, {m['cpu']} x {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{run['storage']} storage, "
        + (f"{options.rounds} rounds, " if rows else "")
        + f"{run['seconds']} s"
        + (" — PROFILED, figures slowed by py-spy" if profiler else "")
    )
    if run["background_cores"] > BUSY_CORES:
        print(
            f"WARNING: other work on this machine used {run['background_cores']} cores "
            "(median) while figures were measured; they are slowed and noisy."
        )
    if restarts:
        shown = ", ".join(f"{name} x{n}" for name, n in restarts.items())
        print(f"WARNING: processes restarted while scenarios ran ({shown}); --keep keeps logs.")
    if rows:
        print("\n" + table(rows))
        print("\nCores busy while measured (median):\n\n" + cpu_table(rows))
    if scaled:
        print("\n" + scaling.table(scaled))
    if profiler is not None:
        print("\nWhere Artifact Store's samples fell (py-spy):\n\n" + profiler.summary())
    print("\n" + "\n".join(lines))
    if options.json:
        options.json.write_text("\n".join(lines) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench`."""
    options = parse_args(argv)
    try:
        return uvloop.run(main_async(options))
    except BenchError as err:
        print(f"\nBENCHMARK FAILED: {err}", file=sys.stderr)
        return 1
