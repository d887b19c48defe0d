"""Bench child for B6: output that is not nice text.

    badoutput.py invalid SIZE        SIZE bytes of mixed valid and invalid UTF-8 on stdout, and on stderr
    badoutput.py longline SIZE PAUSE SIZE bytes without any newline on stdout, then PAUSE s, then exit

``payload(mode, size)`` is imported by the bench to know the expected bytes.
"""

from __future__ import annotations

import os
import sys
import time

# Invalid sequences: stray bytes, lone continuation bytes, truncated and overlong forms, surrogates,
# NUL, CR LF, plus valid multi-byte text, so decoders hit every kind of error.
PIECES = [b"\xff\xfe\xfd", b"ok \xe2\x82\xac euro", b"\x80\x81\xbf", b"\xc3\x28", b"\xe2\x28\xa1",
          b"\xf0\x90\x28\xbc", b"\xc0\xaf", b"\xed\xa0\x80", b"\x00nul\x00", b"\r\n", b"\xce\xba\xe1\xbd\xb9\n",
          b"line \xe4\xb8\xad\xe6\x96\x87\n", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"]


def payload(mode: str, size: int, stream: str = "stdout") -> bytes:
    if mode == "invalid":
        unit = b"".join(PIECES) + (b"[stderr]" if stream == "stderr" else b"[stdout]")
        return (unit * (size // len(unit) + 1))[:size]
    if mode == "longline":
        return (b"abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1))[:size]
    raise ValueError(mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[: 1 << 16]):]


if __name__ == "__main__":
    mode, size = sys.argv[1], int(sys.argv[2])
    if mode == "invalid":
        out, err = payload(mode, size, "stdout"), payload(mode, size, "stderr")
        for i in range(0, size, 4096):  # interleave the two streams
            _write_all(1, out[i:i + 4096])
            _write_all(2, err[i:i + 4096])
    else:
        _write_all(1, payload(mode, size))
        time.sleep(float(sys.argv[3]))
