"""Early writeback of upload bytes on a local disk: as each block is appended, the kernel
is asked to start writing it out (sync_file_range, SYNC_FILE_RANGE_WRITE), so the fsync of
the commit finds little left to write. Clients such as skopeo and docker commit each layer
before they send the next, and a 16 MiB layer's commit waited about 10 ms on that fsync.

Python's os module has no sync_file_range, hence ctypes. Where libc lacks it (not Linux)
nothing is started early and the commit's fsync writes everything, as before; either way
that fsync is what makes the bytes durable.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

_SYNC_FILE_RANGE_WRITE = 2


def _bind() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _bind()


class Writeback:
    """Starts writing out the bytes appended to one file, from `offset` on, as they come
    (`path` None: a file that is not on a local disk, left alone)."""

    def __init__(self, path: str | None, offset: int) -> None:
        # Any descriptor of the file will do: writeback is of the file's pages.
        self._fd = -1
        if path is not None and _sync_file_range is not None:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._offset = offset

    def appended(self, count: int) -> None:
        """`count` more bytes were appended: start writing them out (a hint, so a failure
        is ignored)."""
        if _sync_file_range is not None and self._fd >= 0:
            _sync_file_range(self._fd, self._offset, count, _SYNC_FILE_RANGE_WRITE)
        self._offset += count

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
