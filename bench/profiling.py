"""py-spy on Artifact Store's services while scenarios run (`python -m bench --profile DIR`).

For every scenario run against Artifact Store, `py-spy record --format raw` samples the
gateway, metadata_svc and blob_svc (their PIDs from `<data dir>/run/<service>.pid`) into
`DIR/<scenario>-r<round>-<service>.txt` (collapsed stacks, one `frame;frame;… count` per
line, idle threads left out); `summary` then shows per scenario and service where the
samples fell: the frames with most samples of their own, and the project's frames that
the most samples passed through. Sampling slows the mesh a little (`--nonblocking`
avoids pausing it), so figures of a profiled run are not the ones to publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

from bench import BenchError
from bench.servers import ArtifactStore

SERVICES = ("gateway", "metadata", "blob")
SAMPLE_RATE = 200
TOP = 8
# Frames of the project (as py-spy names their files) and the outermost ones every
# sample passes through, which say nothing.
PROJECT = re.compile(r"\((gateway|metadata_svc|blob_svc|artifactstore)/")
_LINE = re.compile(r":\d+\)$")


def py_spy() -> str:
    """The py-spy executable (beside this Python, or on PATH)."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


class Profiler:
    """Records the services of one Artifact Store into `out_dir`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self._binary = py_spy()
        self._files: dict[str, list[Path]] = defaultdict(list)

    @contextlib.asynccontextmanager
    async def recording(
        self, server: ArtifactStore, scenario: str, tag: str
    ) -> AsyncIterator[None]:
        """Sample the services while the body runs; `scenario` groups the summary."""
        started: list[tuple[asyncio.subprocess.Process, Path]] = []
        for service in SERVICES:
            pid = server.service_pid(service)
            if pid is None:
                continue
            path = self.out_dir / f"{tag}-{service}.txt"
            process = await asyncio.create_subprocess_exec(
                self._binary,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                str(SAMPLE_RATE),
                "--nonblocking",
                "--output",
                str(path),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            started.append((process, path))
            self._files[f"{scenario} · {service}"].append(path)
        try:
            yield
        finally:
            for process, _ in started:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)
            for process, _ in started:
                await process.wait()

    def summary(self) -> str:
        """Per scenario and service: samples, top frames by own samples, top project
        frames by samples passing through them."""
        parts: list[str] = []
        for group, paths in self._files.items():
            own: Counter[str] = Counter()
            through: Counter[str] = Counter()
            total = 0
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    for line in path.read_text().splitlines():
                        stack, _, count_text = line.rpartition(" ")
                        if not stack or not count_text.isdigit():
                            continue
                        count = int(count_text)
                        frames = [_LINE.sub(")", f) for f in stack.split(";")]
                        total += count
                        own[frames[-1]] += count
                        for frame in set(frames):
                            if PROJECT.search(frame):
                                through[frame] += count
            if not total:
                continue
            parts.append(f"{group}: {total} samples")
            parts.append("  own samples:")
            parts += [f"    {n / total:5.1%}  {frame}" for frame, n in own.most_common(TOP)]
            parts.append("  project frames they passed through:")
            inner = [(f, n) for f, n in through.most_common() if n < 0.98 * total][:TOP]
            parts += [f"    {n / total:5.1%}  {frame}" for frame, n in inner]
        return "\n".join(parts)
