"""``python example_app/check_port.py PORT``: exit 0 when 127.0.0.1:PORT can be served, else say so.

``make demo`` runs it first, so that a busy port ends at once with what to do instead of in
gunicorn's bind retries. Only the standard library: it runs before the virtual environment exists.
"""

from __future__ import annotations

import socket
import sys


def can_bind(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` can be bound now, as gunicorn binds it (``SO_REUSEADDR``: a port in
    TIME_WAIT is free, one something listens on is not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def main(argv: list[str]) -> int:
    """``check_port.py PORT``: 0 when 127.0.0.1:PORT can be bound, 1 (and a free port to use
    instead, on stderr) when it is busy, 2 for a missing or invalid PORT."""
    if len(argv) != 2 or not argv[1].isdigit() or not 0 < int(argv[1]) < 65536:
        print("usage: check_port.py PORT (1-65535)", file=sys.stderr)
        return 2
    port = int(argv[1])
    if can_bind(port):
        return 0
    free = next((p for p in range(port + 1, min(port + 100, 65536)) if can_bind(p)), None)
    hint = f"; run make demo PORT={free}" if free else "; run make demo PORT=<a free port>"
    print(f"make demo: port {port} is busy (something listens on 127.0.0.1:{port}){hint}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
