"""Bench child: writes a deterministic byte pattern to stdout as fast as it can.

    writer.py block TOTAL   1 MiB blocks of 1 KiB ASCII lines; each block starts with its 8-digit number
    writer.py lines TOTAL   100-byte lines, 10,000 per write; each write starts with its 9-digit number

``chunks(mode, total)`` is imported by the bench to compute the expected bytes (size and sha256).
"""

from __future__ import annotations

import os
import sys
import typing as t

BLOCK = 1 << 20
LINE = 100
LINES_PER_WRITE = 10_000


def _block_base() -> bytes:
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    lines = []
    for j in range(1024):
        k = j % len(alphabet)
        lines.append(((alphabet[k:] + alphabet[:k]) * 16)[:1023] + b"\n")
    return b"".join(lines)


def _lines_base() -> bytes:
    return ((b"0123456789abcdefghij" * 5)[: LINE - 1] + b"\n") * LINES_PER_WRITE


def chunks(mode: str, total: int) -> t.Iterator[bytes]:
    """The bytes the child writes, in the chunks it writes them."""
    if mode == "block":
        base, width = _block_base(), 8
    elif mode == "lines":
        base, width = _lines_base(), 9
    else:
        raise ValueError(mode)
    tail = base[width:]
    sent = i = 0
    while sent < total:
        chunk = b"%0*d" % (width, i) + tail
        if len(chunk) > total - sent:
            chunk = chunk[: total - sent]
        yield chunk
        sent += len(chunk)
        i += 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


if __name__ == "__main__":
    for piece in chunks(sys.argv[1], int(sys.argv[2])):
        _write_all(1, piece)
