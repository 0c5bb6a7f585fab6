"""The registry API's listening sockets, bound by whoever starts the gateway.

`artifact-store serve`'s supervisor binds them before it forks any service and hands
them to each gateway it starts (`LISTEN_FDS`, fork keeps the descriptors): so the port is
held from the start — a service's metrics listener, bound to port 0, cannot take it when
the API's port lies in the kernel's ephemeral range — and connections made while the
gateway restarts wait in the backlog instead of being refused. A gateway started on its
own (`artifact-store gateway`) binds its own.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

# Descriptor numbers of the inherited sockets, comma-separated (an internal hand-over
# from the supervisor to its gateway, not configuration).
LISTEN_FDS = "ARTS_LISTEN_FDS"
# Connections the kernel queues before the gateway accepts them; it caps this itself.
BACKLOG = socket.SOMAXCONN


def listen_address(address: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) as a (host, port) pair to bind."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"invalid listen address {address!r}: expected host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def bind(address: str) -> list[socket.socket]:
    """Listening sockets for every address `host:port` resolves to (as asyncio's
    create_server binds them: SO_REUSEADDR, IPv6 sockets IPv6 only). OSError naming the
    address when one cannot be bound."""
    host, port = listen_address(address)
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as err:
                raise OSError(err.errno, f"cannot listen at {address}: {err.strerror}") from None
            sock.listen(BACKLOG)
    except BaseException:
        close(sockets)
        raise
    return sockets


def handed_over(sockets: list[socket.socket]) -> dict[str, str]:
    """The environment that tells a forked gateway to serve `sockets`."""
    return {LISTEN_FDS: ",".join(str(s.fileno()) for s in sockets)}


def inherited(env: Mapping[str, str] = os.environ) -> list[socket.socket] | None:
    """The sockets a supervisor handed over (`handed_over`), None when there are none."""
    fds = env.get(LISTEN_FDS)
    if not fds:
        return None
    return [socket.socket(fileno=int(fd)) for fd in fds.split(",")]


def close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
