"""How costs grow with size (`python -m bench --scaling`), for each registry in turn:

- tags: manifest GET by tag and tag-list pages (`n=100`, the first and one in the
  middle) at 1 in flight, with 1,000 tags in a repository and again once it holds
  100,000 (the same manifest tagged 99,000 more times, 32 PUTs in flight);
- repositories: manifest GET and tag list of a repository while there is one, and again
  among 10,000 (each made by mounting the config and layer and PUTting the manifest),
  of that same repository and of 500 of them in turn;
- a 5 GiB blob pushed (one streamed PATCH, hashed on the way) and pulled (bytes hashed):
  the registry's peak RSS above its RSS before, against the same for 256 MiB.

Latencies should stay flat and memory should not grow with the blob. How long making
the tags and repositories took is reported beside them, and how long each registry took
to go quiet before the probes (up to `QUIET_SECONDS`: Artifact Store scans what was
pushed, in the background).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from bench import BenchError
from bench.client import (
    TokenAuth,
    get_manifest,
    mount_blob,
    pull_blob,
    push_blob,
    push_blob_stream,
    put_manifest,
    tag_page,
)
from bench.harness import Load, Meter, Target, load, settle
from bench.images import MIB, OCI_LAYER_GZIP, Blob, Pool, config_blob, manifest
from bench.servers import Server
from bench.system import MemorySampler

TAGS_BEFORE = 1_000
TAGS_AFTER = 100_000
REPOSITORIES = 10_000
SETUP_WORKERS = 32
TOKEN_BATCH = 100
PROBE_SECONDS = 2.0
PROBE_COUNT = 2_000
PROBE_REPOSITORIES = 500
BLOB_SIZES = (256 * MIB, 5 * 1024 * MIB)
STREAM_CHUNK = 8 * MIB
POOL_BYTES = 64 * MIB
# How long to let a registry finish background work (scans of what was pushed) before
# probing latency.
QUIET_SECONDS = 300.0


def _size(size: int) -> str:
    return f"{size // 1024**3} GiB" if size % 1024**3 == 0 else f"{size // MIB} MiB"


def _quiet(target: Target, what: str, seconds: dict[str, float]) -> dict[str, Any]:
    """How long the registry took to go quiet before the probes (at most `QUIET_SECONDS`:
    what it still did then, scanning the pushed images for instance, slowed them)."""
    return _figure(
        target,
        f"wait for quiet before probing, {what}",
        "s",
        small=round(seconds["small"], 1),
        large=round(seconds["large"], 1),
    )


def _figure(target: Target, measure: str, unit: str, **values: float) -> dict[str, Any]:
    return {"registry": target.key, "measure": measure, "unit": unit, **values}


async def _probe(op: Callable[[int], Awaitable[None]]) -> Load:
    """`op` one at a time for `PROBE_SECONDS` (after a few untimed calls)."""
    meter = Meter({})
    await load(op, workers=1, count=20, seconds=PROBE_SECONDS, meter=meter)
    return await load(op, workers=1, count=PROBE_COUNT, seconds=PROBE_SECONDS, meter=meter)


async def _image(target: Target, repo: str) -> tuple[Blob, list[str]]:
    """Push a small image's config and layer into `repo`; its manifest and their digests."""
    layer = Blob(OCI_LAYER_GZIP, b"scaling".ljust(4096))
    config = config_blob("scaling", [layer.digest])
    async with target.http(1) as http:
        await push_blob(http, repo, layer.data, layer.digest)
        await push_blob(http, repo, config.data, config.digest)
    return manifest(config, [layer.descriptor()], "scaling"), [config.digest, layer.digest]


async def tags(target: Target) -> list[dict[str, Any]]:
    """Manifest GET and tag pages with 1,000 and with 100,000 tags in one repository."""
    repo = "scale/tags"
    image, _ = await _image(target, repo)
    names = [f"t{i:06d}" for i in range(TAGS_AFTER)]
    figures: list[dict[str, Any]] = []
    probes: dict[str, dict[str, Load]] = {}
    quiet: dict[str, float] = {}
    async with target.http(SETUP_WORKERS) as http:

        async def tag(i: int) -> None:
            await put_manifest(http, repo, names[i], image.data, image.digest)

        async def get(_: int) -> None:
            await get_manifest(http, repo, names[0], image.data, image.digest)

        def page(last: str | None) -> Callable[[int], Awaitable[None]]:
            location = f"/v2/{repo}/tags/list?n=100" + (f"&last={last}" if last else "")

            async def op(_: int) -> None:
                got, _next = await tag_page(http, location, repo)
                if not got:
                    raise BenchError(f"GET {location}: no tags")

            return op

        for label, count in (("small", TAGS_BEFORE), ("large", TAGS_AFTER)):
            first = TAGS_BEFORE if label == "large" else 0
            started = time.perf_counter()
            done = await load(
                tag,
                workers=SETUP_WORKERS,
                count=count - first,
                seconds=3600,
                meter=Meter({}),
                first=first,
            )
            if label == "large":
                figures.append(
                    _figure(
                        target,
                        f"setup: {done.done:,} tag PUTs ({SETUP_WORKERS} in flight)",
                        "s",
                        large=round(time.perf_counter() - started, 1),
                        rate=round(done.rate),
                    )
                )
            quiet[label] = await settle([target.server], QUIET_SECONDS)
            middle = names[count // 2]
            probes[label] = {
                "manifest GET by tag": await _probe(get),
                "tag page n=100, first": await _probe(page(None)),
                "tag page n=100, middle": await _probe(page(middle)),
            }
    figures.append(_quiet(target, f"{TAGS_BEFORE:,} → {TAGS_AFTER:,} tags", quiet))
    for measure in probes["small"]:
        small, large = probes["small"][measure], probes["large"][measure]
        for q in (0.5, 0.99):
            figures.append(
                _figure(
                    target,
                    f"{measure} p{round(q * 100)}, {TAGS_BEFORE:,} → {TAGS_AFTER:,} tags",
                    "ms",
                    small=round(small.percentile_ms(q), 2),
                    large=round(large.percentile_ms(q), 2),
                )
            )
    return figures


async def repositories(target: Target) -> list[dict[str, Any]]:
    """Manifest GET and tag list of a repository while it is the only one, and among
    10,000: of that same repository, and of 500 repositories in turn (each one then
    needs its own access decision, which the gateway caches only briefly)."""
    names = [f"scale/r{i:05d}" for i in range(REPOSITORIES)]
    source = names[0]
    image, blobs = await _image(target, source)
    figures: list[dict[str, Any]] = []
    async with target.http(SETUP_WORKERS) as http:
        if isinstance(target.auth, TokenAuth):
            for i in range(0, REPOSITORIES, TOKEN_BATCH):
                await target.auth.prefetch(http, [source, *names[i : i + TOKEN_BATCH]])

        async def make(i: int) -> None:
            for digest in blobs:
                await mount_blob(http, names[i], digest, source)
            await put_manifest(http, names[i], "latest", image.data, image.digest)

        def probe_ops(sample: list[str]) -> dict[str, Callable[[int], Awaitable[None]]]:
            """Manifest GET and tag list, going through `sample`'s repositories in turn."""

            async def get(i: int) -> None:
                repo = sample[i % len(sample)]
                await get_manifest(http, repo, "latest", image.data, image.digest)

            async def tag_list(i: int) -> None:
                repo = sample[i % len(sample)]
                got, _next = await tag_page(http, f"/v2/{repo}/tags/list", repo)
                if got != ["latest"]:
                    raise BenchError(f"tags of {repo}: {got}")

            return {"manifest GET": get, "tag list": tag_list}

        await make(0)
        quiet = {"small": await settle([target.server], QUIET_SECONDS)}
        small = {m: await _probe(op) for m, op in probe_ops([source]).items()}
        started = time.perf_counter()
        done = await load(
            make,
            workers=SETUP_WORKERS,
            count=REPOSITORIES - 1,
            seconds=3600,
            meter=Meter({}),
            first=1,
        )
        figures.append(
            _figure(
                target,
                f"setup: {done.done:,} repositories (2 mounts + 1 manifest PUT each)",
                "s",
                large=round(time.perf_counter() - started, 1),
                rate=round(done.rate),
            )
        )
        quiet["large"] = await settle([target.server], QUIET_SECONDS)
        spread = names[:: max(1, REPOSITORIES // PROBE_REPOSITORIES)]
        large = {
            "the same one": {m: await _probe(op) for m, op in probe_ops([source]).items()},
            f"{len(spread)} of them in turn": {
                m: await _probe(op) for m, op in probe_ops(spread).items()
            },
        }
    figures.append(_quiet(target, f"1 → {REPOSITORIES:,} repositories", quiet))
    for how, probes in large.items():
        for measure in small:
            for q in (0.5, 0.99):
                figures.append(
                    _figure(
                        target,
                        f"{measure} p{round(q * 100)}, 1 → {REPOSITORIES:,} repositories, {how}",
                        "ms",
                        small=round(small[measure].percentile_ms(q), 2),
                        large=round(probes[measure].percentile_ms(q), 2),
                    )
                )
    return figures


async def big_blob(target: Target, sampler: MemorySampler, pool: Pool) -> list[dict[str, Any]]:
    """Peak RSS above the resting RSS while a 256 MiB and a 5 GiB blob are pushed and
    pulled, and the throughput each way."""
    repo = "scale/big"
    figures: list[dict[str, Any]] = []
    peaks: dict[str, dict[str, float]] = {"push": {}, "pull": {}}
    rates: dict[str, dict[str, float]] = {"push": {}, "pull": {}}
    async with target.http(1) as http:
        for size in BLOB_SIZES:
            label = "small" if size == BLOB_SIZES[0] else "large"

            async def chunks(size: int = size) -> AsyncIterator[bytes]:
                sent = 0
                n = 0
                while sent < size:
                    piece = min(STREAM_CHUNK, size - sent)
                    offset = (n * STREAM_CHUNK) % (len(pool.data) - STREAM_CHUNK)
                    yield pool.blob(piece, f"big/{size}/{n}", offset=offset)
                    sent += piece
                    n += 1

            resting = sampler.sample(target.key)
            sampler.reset(target.key)
            started = time.perf_counter()
            digest = await push_blob_stream(http, repo, chunks(), size)
            rates["push"][label] = size / MIB / (time.perf_counter() - started)
            peaks["push"][label] = (sampler.peak(target.key) - resting) / MIB
            resting = sampler.sample(target.key)
            sampler.reset(target.key)
            started = time.perf_counter()
            await pull_blob(http, repo, digest, size, verify=True)
            rates["pull"][label] = size / MIB / (time.perf_counter() - started)
            peaks["pull"][label] = (sampler.peak(target.key) - resting) / MIB
    sizes = " → ".join(_size(size) for size in BLOB_SIZES) + " blob"
    for way in ("push", "pull"):
        figures.append(
            _figure(
                target,
                f"{way}: peak RSS above resting, {sizes}",
                "MiB",
                small=round(peaks[way]["small"], 1),
                large=round(peaks[way]["large"], 1),
            )
        )
        figures.append(
            _figure(
                target,
                f"{way}: throughput (client hashing), {sizes}",
                "MiB/s",
                small=round(rates[way]["small"]),
                large=round(rates[way]["large"]),
            )
        )
    return figures


async def run(servers: list[Server], sampler: MemorySampler) -> list[dict[str, Any]]:
    """Every scaling measurement against each registry in turn; the figures."""
    pool = await asyncio.to_thread(Pool, POOL_BYTES, 5)
    figures: list[dict[str, Any]] = []
    for server in servers:
        target = Target.of(server)
        for step in (tags(target), repositories(target), big_blob(target, sampler, pool)):
            started = time.perf_counter()
            got = await step
            seconds = time.perf_counter() - started
            print(
                f"scaling · {target.key}: {got[0]['measure']} … ({seconds:.0f} s)", file=sys.stderr
            )
            figures += got
    return figures


def _cell(figure: dict[str, Any] | None) -> str:
    if figure is None:
        return "-"
    if "small" not in figure:
        rate = f" ({figure['rate']:,}/s)" if "rate" in figure else ""
        return f"{figure['large']:,}{rate}"
    small, large = figure["small"], figure["large"]
    return f"{small:,} → {large:,}"


def table(figures: list[dict[str, Any]]) -> str:
    """The scaling figures as a Markdown table, one row per measure."""
    measures: dict[str, dict[str, dict[str, Any]]] = {}
    for figure in figures:
        measures.setdefault(f"{figure['measure']} ({figure['unit']})", {})[figure["registry"]] = (
            figure
        )
    lines = [
        "| measure | Distribution | Artifact Store |",
        "|---|---:|---:|",
    ]
    for measure, by in measures.items():
        lines.append(
            f"| {measure} | {_cell(by.get('distribution'))} | {_cell(by.get('artifact-store'))} |"
        )
    return "\n".join(lines)
