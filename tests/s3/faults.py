"""A misbehaving object store: an HTTP/1.1 proxy on loopback in front of the real Ceph
RADOS Gateway that, when told, refuses connections, answers requests with an error
status, or stalls them, so tests see what blob_svc does when its store fails.

It understands just enough HTTP to do that per request: it reads each request's head,
then either forwards the request and its response (bodies by Content-Length or chunked,
`Expect: 100-continue` honoured) or answers with the fault. Signatures stay valid: the
bytes, Host header included, reach the gateway unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass


class Fault(enum.Enum):
    """What the proxy does to a request it is told to fail."""

    # Reset the connection before reading anything (a store that is down).
    REFUSE = "refuse"
    # Answer `503 Slow Down` (a store that is overloaded).
    ERROR = "error"
    # Read the request and never answer (a store that hangs).
    STALL = "stall"


@dataclass
class _Rule:
    fault: Fault
    # Only requests whose head this matches are failed.
    match: re.Pattern[bytes]
    # How many more requests to fail (None: until told otherwise).
    left: int | None


class FaultProxy:
    """An HTTP proxy from 127.0.0.1:`port` to `upstream` (host:port). Faults are set
    with `fail` and cleared with `heal`; `failed` counts the requests failed so far."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._rule: _Rule | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.failed = 0
        self.forwarded = 0

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        self._drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:<port>`."""
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def fail(self, fault: Fault, *, match: bytes = b"", times: int | None = None) -> None:
        """From now on, fail the requests whose head matches the regular expression
        `match` (e.g. rb"^PUT ") with `fault`, the next `times` of them (None: all); REFUSE
        fails connections, not requests. Open connections are dropped, so clients'
        pooled connections meet the fault too."""
        self._rule = _Rule(fault, re.compile(match), times)
        self._drop_connections()

    def heal(self) -> None:
        """Forward every request again."""
        self._rule = None

    def _drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    def _take(self, head: bytes | None) -> Fault | None:
        """The fault for a request with `head` (None: not read yet), counting it."""
        rule = self._rule
        if rule is None or (head is None) != (rule.fault is Fault.REFUSE):
            return None
        if head is not None and not rule.match.search(head):
            return None
        if rule.left is not None:
            if rule.left == 0:
                return None
            rule.left -= 1
        self.failed += 1
        return rule.fault

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._writers.add(client_w)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            if self._take(None) is Fault.REFUSE:
                client_w.transport.abort()
                return
            upstream_r, upstream_w = await asyncio.open_connection(*self._upstream)
            self._writers.add(upstream_w)
            while True:
                try:
                    head = await client_r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                fault = self._take(head)
                if fault is Fault.ERROR:
                    client_w.write(
                        b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    await client_w.drain()
                    return
                if fault is Fault.STALL:
                    await client_r.read()
                    return
                self.forwarded += 1
                upstream_w.write(head)
                await asyncio.gather(
                    _copy_body(client_r, upstream_w, _headers(head)),
                    _relay_response(upstream_r, client_w, head),
                )
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    found = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip().lower()] = value.strip()
    return found


async def _copy_body(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, headers: dict[str, str]
) -> None:
    """Copy a message body (Content-Length or chunked) from `source` to `sink`."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await source.readuntil(b"\r\n")
            sink.write(size_line)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                # Trailer fields, if any, then the empty line that ends the body.
                while (line := await source.readuntil(b"\r\n")) != b"\r\n":
                    sink.write(line)
                sink.write(line)
                break
            sink.write(await source.readexactly(size + 2))
            await sink.drain()
    else:
        left = int(headers.get("content-length", "0"))
        while left:
            data = await source.read(min(left, 1 << 20))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            sink.write(data)
            await sink.drain()
            left -= len(data)
    await sink.drain()


async def _relay_response(
    upstream: asyncio.StreamReader, client: asyncio.StreamWriter, request_head: bytes
) -> None:
    """Forward the response to one request (interim 1xx answers first)."""
    while True:
        head = await upstream.readuntil(b"\r\n\r\n")
        client.write(head)
        await client.drain()
        status = int(head.split(b" ", 2)[1])
        if status >= 200:
            break
    if request_head.startswith(b"HEAD ") or status in (204, 304):
        return
    await _copy_body(upstream, client, _headers(head))


class ProxyThread:
    """A FaultProxy on an event loop of its own, in a thread, for tests whose own code
    blocks (HTTP clients, subprocesses). Use as a context manager."""

    def __init__(self, upstream: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._proxy = FaultProxy(upstream)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._proxy.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._proxy.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:<port>` of the proxy."""
        return self._proxy.endpoint

    @property
    def failed(self) -> int:
        """Requests (or connections) failed so far."""
        return self._proxy.failed

    def fail(self, fault: Fault, *, match: bytes = b"", times: int | None = None) -> None:
        """`FaultProxy.fail`, on the proxy's loop."""
        self._run(lambda: self._proxy.fail(fault, match=match, times=times))

    def heal(self) -> None:
        """`FaultProxy.heal`, on the proxy's loop."""
        self._run(self._proxy.heal)

    def _run(self, action: Callable[[], None]) -> None:
        async def run() -> None:
            action()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)
