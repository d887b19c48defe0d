"""Bench child for B5: starts two grandchildren (one in its own session, out of the process group),
says ready with their pids, then sleeps. It dies on SIGTERM; the grandchildren must be killed too."""

import os
import subprocess
import time

same_group = subprocess.Popen(["sleep", "120"])
own_session = subprocess.Popen(["sleep", "120"], start_new_session=True)
os.write(1, b"ready %d %d\n" % (same_group.pid, own_session.pid))
time.sleep(120)
