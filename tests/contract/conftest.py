"""Contract tests start one real service process and talk to it over gRPC."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

StartService = Callable[[str], str]


def wait_serving(address: str, service: str, timeout: float = 15.0) -> None:
    """Block until `service` at `address` answers SERVING to a health check."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        # The typeshed stubs of grpcio-health-checking omit HealthStub's methods.
        stub: Any = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} at {address} did not become SERVING")
            time.sleep(0.05)


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[StartService]:
    """Start `artifact-store <name>` with a fresh data directory; return its address.

    Every process started is stopped with SIGTERM at teardown and must exit cleanly.
    """
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> str:
        data = tmp_path / "data"
        address = f"unix:{data / 'run' / f'{name}.sock'}"
        env = {**os.environ, "ARTS_DATA_DIR": str(data)}
        proc = subprocess.Popen([sys.executable, "-m", "artifactstore.cli", name], env=env)
        processes.append(proc)
        wait_serving(address, "")
        return address

    yield start
    for proc in processes:
        proc.send_signal(signal.SIGTERM)
    for proc in processes:
        assert proc.wait(timeout=15) == 0
