"""Logs that cannot fill the disk: free a log's head without moving its offsets (Linux hole punching).

The child's stdout *is* the log file, so it cannot be rotated: the child would go on writing
into the renamed file. ``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`` frees the
blocks of the oldest bytes instead; the file keeps its size and every offset its meaning, and
``lseek(SEEK_DATA)`` finds the first byte still kept. (``os.posix_fallocate`` only allocates.)
Filesystems without hole punching (some network filesystems; not ext4, xfs, btrfs or tmpfs)
raise ``OSError(EOPNOTSUPP)``: the caller then stops the run instead (see README).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import typing as t

#: The per-run (and ``PROCMAN_MAX_LOG_ACTION``) choices when a log reaches its cap.
ACTIONS = ("truncate", "stop")
#: The smallest cap accepted: a few filesystem blocks, so that what is kept is still useful.
MIN_MAX_LOG_BYTES = 16 * 1024

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc: t.Any = None


def _fallocate() -> t.Any:
    """libc's ``fallocate(int, int, off_t, off_t)``, or None where there is none (not Linux)."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name, use_errno=True) if name else False
        except OSError:
            _libc = False
    fn = getattr(_libc, "fallocate", None) if _libc else None
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
        fn.restype = ctypes.c_int
    return fn


def punch_hole(path: str, start: int, length: int) -> None:
    """Free the blocks of bytes ``[start, start + length)`` of ``path``; its size does not change.

    Raises ``OSError`` (``EOPNOTSUPP`` where the platform or filesystem cannot).
    """
    if length <= 0:
        return
    fallocate = _fallocate()
    if fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "hole punching needs Linux fallocate()", path)
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start, length) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)


def data_start(fd: int, size: int) -> int:
    """The first byte of the open file ``fd`` that is still kept (0 when nothing was dropped)."""
    if size <= 0 or not hasattr(os, "SEEK_DATA"):
        return 0
    try:
        return min(os.lseek(fd, 0, os.SEEK_DATA), size)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data at all after 0: everything is a hole
            return size
        return 0  # SEEK_DATA not supported here: nothing can have been punched either


def hole_end(size: int, cap: int, block: int) -> int:
    """Where the hole that keeps at most ``cap`` bytes (and whole blocks) of a ``size``-byte file ends."""
    block = max(block, 512)
    return max(0, (size - cap) // block * block)
