"""gateway.localfiles sends a blob's file from a thread: a request cancelled
meanwhile (the gateway's forced shutdown) must stop the thread at once, and the thread
must never use a descriptor number that the request closed and something else reuses
(it would send another file's bytes, or to another client). A real aiohttp server, a
real client socket that stops reading, real files."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import localfiles

SIZE = 16 * 1024 * 1024
SECRET = b"S"


def _socket_inode(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_a_cancelled_send_stops_and_uses_no_reused_descriptor(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(SIZE))
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET * SIZE)
    # The handler's task, its file's descriptor and its connection's socket descriptor.
    started: asyncio.Future[tuple[asyncio.Task[object], int, int]] = (
        asyncio.get_running_loop().create_future()
    )

    async def handler(request: web.Request) -> web.StreamResponse:
        fd = os.open(blob, os.O_RDONLY)
        try:
            response = web.StreamResponse()
            response.content_length = SIZE
            task = asyncio.current_task()
            assert task is not None and request.transport is not None
            started.set_result((task, fd, request.transport.get_extra_info("socket").fileno()))
            await localfiles.send(request, response, fd, 0, SIZE)
        finally:
            os.close(fd)
        return response

    app = web.Application()
    app.router.add_get("/blob", handler)
    loop = asyncio.get_running_loop()
    async with TestServer(app) as server:
        client = socket.socket()
        # A small window: the server's socket fills up at once and stays full.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        await loop.sock_connect(client, (server.host, server.port))
        await loop.sock_sendall(client, b"GET /blob HTTP/1.1\r\nHost: test\r\n\r\n")
        head = await loop.sock_recv(client, 4096)
        assert head.startswith(b"HTTP/1.1 200")
        task, fd, transport_fd = await started
        await asyncio.sleep(0.3)  # the thread is waiting for room in the socket
        # Every other descriptor of the connection's socket: the thread's.
        connection = _socket_inode(transport_fd)
        thread_sockets = [
            int(n)
            for n in os.listdir("/proc/self/fd")
            if int(n) != transport_fd and _open(int(n)) and _socket_inode(int(n)) == connection
        ]
        assert thread_sockets, "no send in progress"

        # Another file and another socket, to take whatever numbers the request closes
        # at once, as a busy gateway would.
        other_file = os.open(secret, os.O_RDONLY)
        mine, theirs = socket.socketpair()
        task.cancel()
        await asyncio.wait([task])
        reused = [number for number in (fd, *thread_sockets) if not _open(number)]
        for number in reused:
            os.dup2(other_file if number == fd else mine.fileno(), number)
        try:
            # The client reads on: whatever still comes is the blob's, and it ends soon.
            received = head.partition(b"\r\n\r\n")[2]
            async with asyncio.timeout(10):
                with contextlib.suppress(ConnectionResetError):
                    while chunk := await loop.sock_recv(client, 1024 * 1024):
                        received += chunk
            assert received == blob.read_bytes()[: len(received)]
            assert len(received) < SIZE
            await asyncio.sleep(0.3)
            theirs.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                assert not theirs.recv(1), "the thread sent to a reused descriptor"
        finally:
            for number in (*reused, other_file):
                os.close(number)
            for sock in (client, mine, theirs):
                sock.close()
