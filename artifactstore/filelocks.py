"""The lock on an upload session's data file: an exclusive flock(2), held by a gateway
that appends a client's bytes to the file itself (blob.proto, LocateUpload) and by
blob_svc while it writes, commits or removes the session, so that no bytes are appended
to a file being verified and published (a published file is the canonical blob's).

flock, not fcntl's record locks: it belongs to the open file, so one process's two
descriptors of a file exclude each other too, and it is released when the descriptor is
closed or its process dies.
"""

from __future__ import annotations

import asyncio
import fcntl

# How often a waiter tries again. Waits are rare (two requests on one session at once)
# and polling keeps them off worker threads, which a blocking flock would hold.
POLL_SECONDS = 0.005


def try_lock(fd: int) -> bool:
    """Take the lock on the file `fd` refers to, if no other descriptor holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


async def lock(fd: int) -> None:
    """Take the lock on the file `fd` refers to, waiting while another holds it."""
    # Another process holds it: there is no event of this loop to wait for.
    while not try_lock(fd):  # noqa: ASYNC110
        await asyncio.sleep(POLL_SECONDS)
