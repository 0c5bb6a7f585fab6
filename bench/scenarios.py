"""The scenarios of issue 8, run alike against each registry.

Each scenario is bound to one target: `setup` (once, before its first round) pushes what
the scenario reads; `run` (every round) measures and returns its figures. Every run is
bounded in count and in time (the `*_COUNT` and `*_SECONDS` constants), and starts
timing only once the machine is quiet (`Context.settle`). Scenario 10, peak memory, is
sampled by the runner across each round (`bench.run`).
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from typing import ClassVar

from bench import BenchError
from bench.client import (
    Http,
    get_blob,
    get_manifest,
    get_range,
    head_blob,
    pull_blob,
    push_blob,
    push_blob_chunked,
    put_manifest,
    walk_tags,
)
from bench.harness import Context, Metric, Result, load
from bench.images import (
    MIB,
    OCI_LAYER_GZIP,
    Blob,
    check_layout,
    config_blob,
    manifest,
    sha256,
    write_layout,
)

BIG_BLOB_BYTES = 256 * MIB
BIG_PUSH_COUNT = 2
BIG_PUSH_SECONDS = 15.0
CHUNK_BYTES = 8 * MIB
PULL_COUNT = 8
PULL_SECONDS = 4.0
SMALL_BYTES = 4 * 1024
MANIFEST_PUT_WORKERS = 8
MANIFEST_PUT_COUNT = 3000
MANIFEST_PUT_SECONDS = 4.0
GET_LEVELS = (1, 16, 64)
GET_COUNT = 40_000
GET_SECONDS = 3.0
HEAD_WORKERS = 16
TAG_COUNT = 1000
TAG_PAGE = 100
TAG_WALK_COUNT = 500
TAG_WALK_SECONDS = 3.0
SMALL_BLOB_COUNT = 2000
SMALL_BLOB_WORKERS = 16
SMALL_BLOB_SECONDS = 12.0
IMAGE_LAYERS = 8
IMAGE_BYTES = 128 * MIB
SKOPEO_COPIES = 3
SETUP_WORKERS = 16
# Ranges checked on the pulled blob: its first byte, its second MiB, its last 1,000
# bytes, its last 10 bytes.
RANGES = ("bytes=0-0", "bytes=1048576-2097151", "bytes=-1000", f"bytes={BIG_BLOB_BYTES - 10}-")


@dataclass(frozen=True)
class SmallImage:
    """A config, one 4 KiB layer, and a manifest over them."""

    config: Blob
    layer: Blob
    manifest: Blob


async def _small_image(http: Http, repo: str, label: str) -> SmallImage:
    """Push a config and a 4 KiB layer into `repo`; them and a manifest over them."""
    layer = Blob(OCI_LAYER_GZIP, label.encode().ljust(SMALL_BYTES))
    config = config_blob(label, [layer.digest])
    await push_blob(http, repo, layer.data, layer.digest)
    await push_blob(http, repo, config.data, config.digest)
    return SmallImage(config, layer, manifest(config, [layer.descriptor()], label))


class Scenario:
    """One scenario against one target."""

    number: ClassVar[int]
    name: ClassVar[str]  # for --scenarios
    title: ClassVar[str]

    def __init__(self) -> None:
        self.prepared = False

    @property
    def label(self) -> str:
        """`<number> <title>`, as the report shows it."""
        return f"{self.number} {self.title}"

    def metric(self, id: str, name: str, unit: str, higher_is_better: bool) -> Metric:
        """A metric of this scenario (`id` is prefixed with the scenario number)."""
        return Metric(f"{self.number}.{id}", self.label, name, unit, higher_is_better)

    async def setup(self, ctx: Context) -> None:
        """Push what the scenario reads (once per target); nothing by default."""

    async def run(self, ctx: Context) -> list[Result]:
        """Measure one round; the figures."""
        raise NotImplementedError


class PushMonolithic(Scenario):
    """A 256 MiB blob pushed as POST + one PUT carrying all of it."""

    number, name, title = 1, "push", "blob push, monolithic 256 MiB"

    async def push(self, http: Http, repo: str, data: bytes, digest: str) -> None:
        """Push one blob the way this scenario measures."""
        await push_blob(http, repo, data, digest)

    async def run(self, ctx: Context) -> list[Result]:
        """Push up to `BIG_PUSH_COUNT` new blobs; MiB/s over the time spent pushing."""
        repo = f"bench/{self.name}"
        meter = ctx.meter()
        pushed = 0
        async with ctx.target.http(1) as http:
            for i in range(BIG_PUSH_COUNT):
                if meter.elapsed > BIG_PUSH_SECONDS:
                    break
                data = ctx.pool.blob(BIG_BLOB_BYTES, f"{self.name}/{ctx.round}/{i}")
                digest = await asyncio.to_thread(sha256, data)
                await ctx.settle()
                with meter.timing():
                    await self.push(http, repo, data, digest)
                pushed += len(data)
        value = pushed / MIB / meter.elapsed
        return [Result(self.metric("mibps", "throughput", "MiB/s", True), value, meter.cores())]


class PushChunked(PushMonolithic):
    """A 256 MiB blob pushed as POST, 8 MiB PATCHes with Content-Range, and a PUT."""

    number, name, title = 2, "chunked", "blob push, chunked 8 MiB PATCHes"

    async def push(self, http: Http, repo: str, data: bytes, digest: str) -> None:
        """Push one blob in `CHUNK_BYTES` chunks."""
        await push_blob_chunked(http, repo, data, digest, CHUNK_BYTES)


class Pull(Scenario):
    """A 256 MiB blob pulled, its bytes counted; Range requests checked."""

    number, name, title = 3, "pull", "blob pull 256 MiB"
    repo = "bench/pull"

    async def setup(self, ctx: Context) -> None:
        """Push the blob."""
        self.data = ctx.pool.blob(BIG_BLOB_BYTES, "pull")
        self.digest = await asyncio.to_thread(sha256, self.data)
        async with ctx.target.http(1) as http:
            await push_blob(http, self.repo, self.data, self.digest)

    async def run(self, ctx: Context) -> list[Result]:
        """Check one pull's digest and four ranges (untimed); then pull up to
        `PULL_COUNT` times counting bytes; MiB/s."""
        meter = ctx.meter()
        async with ctx.target.http(1) as http:
            await pull_blob(http, self.repo, self.digest, len(self.data), verify=True)
            for header in RANGES:
                await get_range(http, self.repo, self.digest, self.data, header)
            await ctx.settle()

            async def pull(_: int) -> None:
                await pull_blob(http, self.repo, self.digest, len(self.data), verify=False)

            done = await load(pull, workers=1, count=PULL_COUNT, seconds=PULL_SECONDS, meter=meter)
        value = done.done * len(self.data) / MIB / done.elapsed
        return [Result(self.metric("mibps", "throughput", "MiB/s", True), value, meter.cores())]


class ManifestPut(Scenario):
    """Small OCI manifests PUT under new tags, 8 in flight."""

    number, name, title = 4, "manifest-put", "manifest PUT, 8 concurrent"
    repo = "bench/manifest-put"

    async def setup(self, ctx: Context) -> None:
        """Push the config and layer the manifests refer to."""
        async with ctx.target.http(1) as http:
            self.image = await _small_image(http, self.repo, "put")

    async def run(self, ctx: Context) -> list[Result]:
        """PUT up to `MANIFEST_PUT_COUNT` distinct manifests; manifests/s."""
        bodies = [
            manifest(self.image.config, [self.image.layer.descriptor()], f"{ctx.round}/{i}")
            for i in range(MANIFEST_PUT_COUNT + MANIFEST_PUT_WORKERS)
        ]
        meter = ctx.meter()
        async with ctx.target.http(MANIFEST_PUT_WORKERS) as http:

            async def put(i: int) -> None:
                body = bodies[i]
                await put_manifest(http, self.repo, f"r{ctx.round}-{i}", body.data, body.digest)

            # The first requests open the connections; untimed.
            await asyncio.gather(*(put(i) for i in range(MANIFEST_PUT_WORKERS)))
            await ctx.settle()
            done = await load(
                put,
                workers=MANIFEST_PUT_WORKERS,
                count=MANIFEST_PUT_COUNT,
                seconds=MANIFEST_PUT_SECONDS,
                meter=meter,
                first=MANIFEST_PUT_WORKERS,
            )
        metric = self.metric("rate", "manifests/s", "manifests/s", True)
        return [Result(metric, done.rate, meter.cores())]


class ManifestGet(Scenario):
    """One manifest GET by tag at 1, 16 and 64 requests in flight."""

    number, name, title = 5, "manifest-get", "manifest GET by tag"
    repo = "bench/manifest-get"

    async def setup(self, ctx: Context) -> None:
        """Push a small image tagged `latest`."""
        async with ctx.target.http(1) as http:
            self.image = (await _small_image(http, self.repo, "get")).manifest
            await put_manifest(http, self.repo, "latest", self.image.data, self.image.digest)

    async def run(self, ctx: Context) -> list[Result]:
        """At each level: warm the connections, then GET for `GET_SECONDS`; req/s, p50
        and p99 latency."""
        results: list[Result] = []
        for workers in GET_LEVELS:
            meter = ctx.meter()
            async with ctx.target.http(workers) as http:

                async def get(_: int) -> None:
                    await get_manifest(
                        http, self.repo, "latest", self.image.data, self.image.digest
                    )

                await load(get, workers=workers, count=workers * 4, seconds=5, meter=ctx.meter())
                await ctx.settle()
                done = await load(
                    get, workers=workers, count=GET_COUNT, seconds=GET_SECONDS, meter=meter
                )
            cores = meter.cores()
            results += [
                Result(
                    self.metric(f"c{workers}.rate", f"c={workers} req/s", "req/s", True),
                    done.rate,
                    cores,
                ),
                Result(
                    self.metric(f"c{workers}.p50", f"c={workers} p50", "ms", False),
                    done.percentile_ms(0.50),
                    cores,
                ),
                Result(
                    self.metric(f"c{workers}.p99", f"c={workers} p99", "ms", False),
                    done.percentile_ms(0.99),
                    cores,
                ),
            ]
        return results


class BlobHead(Scenario):
    """HEAD of one blob, 16 in flight."""

    number, name, title = 6, "blob-head", "blob HEAD, 16 concurrent"
    repo = "bench/blob-head"

    async def setup(self, ctx: Context) -> None:
        """Push a 4 KiB blob."""
        self.blob = Blob("application/octet-stream", ctx.pool.blob(SMALL_BYTES, "head"))
        async with ctx.target.http(1) as http:
            await push_blob(http, self.repo, self.blob.data, self.blob.digest)

    async def run(self, ctx: Context) -> list[Result]:
        """HEAD for `GET_SECONDS`; req/s and p99."""
        meter = ctx.meter()
        size = len(self.blob.data)
        async with ctx.target.http(HEAD_WORKERS) as http:

            async def head(_: int) -> None:
                await head_blob(http, self.repo, self.blob.digest, size)

            await load(
                head, workers=HEAD_WORKERS, count=HEAD_WORKERS * 4, seconds=5, meter=ctx.meter()
            )
            await ctx.settle()
            done = await load(
                head, workers=HEAD_WORKERS, count=GET_COUNT, seconds=GET_SECONDS, meter=meter
            )
        cores = meter.cores()
        return [
            Result(self.metric("rate", "req/s", "req/s", True), done.rate, cores),
            Result(self.metric("p99", "p99", "ms", False), done.percentile_ms(0.99), cores),
        ]


class TagWalk(Scenario):
    """The tag list of a repository of 1,000 tags, walked page by page (`n=100`)."""

    number, name, title = 7, "tags", "tag list walk, n=100 over 1,000 tags"
    repo = "bench/tags"

    async def setup(self, ctx: Context) -> None:
        """Tag one manifest 1,000 times."""
        self.tags = [f"t{i:04d}" for i in range(TAG_COUNT)]
        async with ctx.target.http(SETUP_WORKERS) as http:
            image = (await _small_image(http, self.repo, "tags")).manifest

            async def tag(i: int) -> None:
                await put_manifest(http, self.repo, self.tags[i], image.data, image.digest)

            await load(tag, workers=SETUP_WORKERS, count=TAG_COUNT, seconds=600, meter=ctx.meter())

    async def run(self, ctx: Context) -> list[Result]:
        """Walk the whole list, one walk after another, for `TAG_WALK_SECONDS`; each walk
        must give exactly the 1,000 tags. Full walks/s."""
        meter = ctx.meter()
        async with ctx.target.http(1) as http:

            async def walk(_: int) -> None:
                got = await walk_tags(http, self.repo, TAG_PAGE)
                if sorted(got) != self.tags:
                    raise BenchError(f"tag walk of {self.repo}: {len(got)} tags, not the 1,000")

            await walk(0)
            await ctx.settle()
            done = await load(
                walk, workers=1, count=TAG_WALK_COUNT, seconds=TAG_WALK_SECONDS, meter=meter
            )
        return [Result(self.metric("rate", "walks/s", "walks/s", True), done.rate, meter.cores())]


class SmallBlobs(Scenario):
    """2,000 blobs of 4 KiB pushed (POST + PUT), then pulled, 16 in flight."""

    number, name, title = 8, "small-blobs", "2,000 blobs of 4 KiB, 16 concurrent"

    async def run(self, ctx: Context) -> list[Result]:
        """Push new blobs for up to `SMALL_BLOB_SECONDS`, then pull those pushed (each
        checked against its digest); blobs/s each way."""
        repo = f"bench/small-r{ctx.round}"
        blobs = [
            Blob(
                "application/octet-stream",
                ctx.pool.blob(SMALL_BYTES, f"small/{ctx.round}/{i}", offset=i * SMALL_BYTES),
            )
            for i in range(SMALL_BLOB_COUNT)
        ]
        push_meter, pull_meter = ctx.meter(), ctx.meter()
        async with ctx.target.http(SMALL_BLOB_WORKERS) as http:

            async def push(i: int) -> None:
                await push_blob(http, repo, blobs[i].data, blobs[i].digest)

            async def pull(i: int) -> None:
                await get_blob(http, repo, blobs[i].digest)

            await ctx.settle()
            pushed = await load(
                push,
                workers=SMALL_BLOB_WORKERS,
                count=SMALL_BLOB_COUNT,
                seconds=SMALL_BLOB_SECONDS,
                meter=push_meter,
            )
            await ctx.settle()
            pulled = await load(
                pull,
                workers=SMALL_BLOB_WORKERS,
                count=pushed.done,
                seconds=SMALL_BLOB_SECONDS,
                meter=pull_meter,
            )
        return [
            Result(
                self.metric("push", "push blobs/s", "blobs/s", True),
                pushed.rate,
                push_meter.cores(),
            ),
            Result(
                self.metric("pull", "pull blobs/s", "blobs/s", True),
                pulled.rate,
                pull_meter.cores(),
            ),
        ]


class SkopeoCopy(Scenario):
    """`skopeo copy` of an 8-layer, 128 MiB image from an OCI layout into the registry,
    and back out into a new layout, `SKOPEO_COPIES` times with a new image each time."""

    number, name, title = 9, "skopeo", "skopeo copy, 8 layers 128 MiB"

    async def run(self, ctx: Context) -> list[Result]:
        """Per copy: build a new image (untimed), copy it in, copy it out; the layout
        copied out must hold the same manifest and blobs. Mean seconds each way (one copy
        takes about a second, and single ones vary by a tenth between runs)."""
        server = ctx.target.server
        creds = server.credentials
        in_flags = ["--dest-tls-verify=false"]
        out_flags = ["--src-tls-verify=false"]
        if creds:
            in_flags.append(f"--dest-creds={creds[0]}:{creds[1]}")
            out_flags.append(f"--src-creds={creds[0]}:{creds[1]}")
        in_meter, out_meter = ctx.meter(), ctx.meter()
        for copy in range(SKOPEO_COPIES):
            base = ctx.scratch / f"skopeo-r{ctx.round}-{copy}"
            layout = await asyncio.to_thread(
                write_layout,
                base / "in",
                ctx.pool,
                f"{server.key}/{ctx.round}/{copy}",
                IMAGE_LAYERS,
                IMAGE_BYTES,
            )
            reference = f"docker://{server.host}/bench/skopeo-r{ctx.round}:c{copy}"
            try:
                await ctx.settle()
                with in_meter.timing():
                    await ctx.skopeo.copy(f"oci:{layout.path}:latest", reference, *in_flags)
                await ctx.settle()
                with out_meter.timing():
                    await ctx.skopeo.copy(reference, f"oci:{base / 'out'}:latest", *out_flags)
                await asyncio.to_thread(check_layout, base / "out", layout)
            finally:
                await asyncio.to_thread(shutil.rmtree, base, True)
        return [
            Result(
                self.metric("in", "copy in", "s", False),
                in_meter.elapsed / SKOPEO_COPIES,
                in_meter.cores(),
            ),
            Result(
                self.metric("out", "copy out", "s", False),
                out_meter.elapsed / SKOPEO_COPIES,
                out_meter.cores(),
            ),
        ]


SCENARIOS: tuple[type[Scenario], ...] = (
    PushMonolithic,
    PushChunked,
    Pull,
    ManifestPut,
    ManifestGet,
    BlobHead,
    TagWalk,
    SmallBlobs,
    SkopeoCopy,
)
