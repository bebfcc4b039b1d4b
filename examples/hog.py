"""Holds 500 MB for 3 s (the docs' `hog.py`): what `show` says a job cost."""

import time

block = b"\1" * (500 << 20)  # 500 MB, every page written
time.sleep(3)
print("done")
