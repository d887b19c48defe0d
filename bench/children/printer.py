"""Bench child for B7: prints a 100-byte line every INTERVAL seconds, forever."""

import os
import sys
import time

interval = float(sys.argv[1])
n = 0
while True:
    os.write(1, b"%010d " % n + b"x" * 88 + b"\n")
    n += 1
    time.sleep(interval)
