"""What the bench reads of the machine: process trees, resident memory and CPU time
from /proc, and a description of the machine for the report.

Memory is sampled by a thread (`MemorySampler`), not by the event loop, so a loop busy
driving a scenario cannot skip the moments of peak use.
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (children of all its threads, recursively);
    processes that exit meanwhile are left out."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    todo.extend(int(c) for c in (task / "children").read_text().split())
    return found


def rss_bytes(pid: int) -> int:
    """The resident set size of `pid` (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except (FileNotFoundError, ProcessLookupError):
        return 0


def pss_bytes(pid: int) -> int:
    """The proportional set size of `pid`: its resident pages, each shared one divided
    among the processes sharing it (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used so far (0 once it has exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # Fields after the command name, which may itself hold spaces and ')'.
            fields = f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, not idle or waiting on
    I/O) since boot."""
    with open("/proc/stat", "rb") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def cpu_snapshot(processes: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process, by `client` (this process and the
    children it has waited for, such as skopeo) and by the whole `machine`."""
    t = os.times()
    client = t.user + t.system + t.children_user + t.children_system
    snapshot = {"client": client, "machine": machine_busy_seconds()}
    snapshot.update({name: cpu_seconds(pid) for name, pid in processes.items()})
    return snapshot


class MemorySampler:
    """Samples the summed RSS and PSS of named process groups every `interval` seconds in
    a thread, and keeps each group's peaks since its last `reset`.

    RSS counts a shared library once in every process mapping it; PSS shares it out, so
    the PSS of a group of processes is what the group as a whole keeps resident."""

    def __init__(self, interval: float = 0.05) -> None:
        self._interval = interval
        self._groups: dict[str, Callable[[], list[int]]] = {}
        self._peaks: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, group: str, pids: Callable[[], list[int]]) -> None:
        """Sample `group`: the processes `pids()` lists at each sample."""
        with self._lock:
            self._groups[group] = pids
            self._peaks[group] = (0, 0)

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread (if it was started)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def sample(self, group: str) -> int:
        """The group's summed RSS right now, in bytes (it and the summed PSS also counted
        towards the peaks)."""
        with self._lock:
            pids = self._groups[group]
        members = pids()
        rss = sum(rss_bytes(pid) for pid in members)
        pss = sum(pss_bytes(pid) for pid in members)
        with self._lock:
            peak_rss, peak_pss = self._peaks[group]
            self._peaks[group] = (max(peak_rss, rss), max(peak_pss, pss))
        return rss

    def reset(self, group: str) -> None:
        """Forget the group's peaks; the next samples start new ones."""
        with self._lock:
            self._peaks[group] = (0, 0)
        self.sample(group)

    def peak(self, group: str) -> int:
        """The largest summed RSS of the group since its last reset, in bytes."""
        self.sample(group)
        with self._lock:
            return self._peaks[group][0]

    def peak_pss(self, group: str) -> int:
        """The largest summed PSS of the group since its last reset, in bytes."""
        self.sample(group)
        with self._lock:
            return self._peaks[group][1]

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                groups = list(self._groups)
            for group in groups:
                self.sample(group)


def machine() -> dict[str, object]:
    """The machine the figures were measured on: CPU model, cores, memory, kernel."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / (1024 * MIB), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
