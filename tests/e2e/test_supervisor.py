"""The supervisor of `artifact-store serve`, on instances of their own: its children are
forked from it and named for their service, and none outlives it, however it ends."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.e2e.conftest import SERVICES, _alive

GONE_TIMEOUT = 15.0


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_children_are_forked_from_the_supervisor_and_named(start_registry):
    reg = start_registry()
    assert reg.process is not None
    for service in SERVICES:
        pid = reg.pid(service)
        assert _parent(pid) == reg.process.pid, service
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ")
        assert cmdline.decode() == f"artifact-store {service}"
    assert reg.request("GET", "/v2/").status == 200


def test_children_stop_when_the_supervisor_is_killed(start_registry):
    """SIGKILL leaves the supervisor no chance to stop its children: the kernel must."""
    reg = start_registry()
    assert reg.process is not None
    children = {service: reg.pid(service) for service in SERVICES}
    reg.process.send_signal(signal.SIGKILL)
    reg.process.wait()
    deadline = time.monotonic() + GONE_TIMEOUT
    while time.monotonic() < deadline and any(_alive(p) for p in children.values()):
        time.sleep(0.1)
    alive = {s: p for s, p in children.items() if _alive(p)}
    assert not alive, f"children outlived their supervisor: {alive}\n{reg.log_tail()}"
