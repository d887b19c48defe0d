"""Bench child for B5: ignores SIGTERM, says ready, then sleeps."""

import os
import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.write(1, b"ready\n")
time.sleep(120)
