"""A job that runs until it is stopped (the docs' `long.py`): prints a line, then waits."""

import time

print("working until stopped", flush=True)
for _ in range(3600):
    time.sleep(1)
