"""The supervisor of `artifact-store serve`, on instances of their own: its children are
forked from it and named for their service, none outlives it, however it ends, and it
holds the API's port itself."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.conftest import SERVICES, _alive, artifact_store_executable

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


def test_a_request_made_while_the_gateway_restarts_waits_for_the_new_one(start_registry):
    """The supervisor holds the listening socket: with the gateway dead, a connection is
    queued rather than refused, and the restarted gateway answers it."""
    reg = start_registry()
    killed = reg.pid("gateway")
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + GONE_TIMEOUT
    while _alive(killed) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(killed)
    # Sent while no gateway runs: the supervisor restarts it only after a 0.5 s backoff.
    answer = reg.request("GET", "/v2/", timeout=GONE_TIMEOUT)
    assert answer.status == 200, answer.body
    assert reg.pid("gateway") != killed
    log = reg.log_tail(200)
    assert "gateway (pid" in log and "restart 1" in log


def test_serve_on_a_port_in_use_fails_at_once_naming_it(start_registry, tmp_path):
    """A second mesh on the same port stops before it starts anything, and the first
    goes on serving."""
    reg = start_registry()
    env = {**reg.process_env(), "ARTS_DATA_DIR": str(tmp_path / "second")}
    second = subprocess.run(
        [artifact_store_executable(), "serve"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=GONE_TIMEOUT,
    )
    assert second.returncode == 1
    assert f"cannot listen at {reg.host}: Address already in use" in second.stderr
    assert reg.request("GET", "/v2/").status == 200
