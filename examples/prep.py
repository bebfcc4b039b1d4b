"""A preparation step that fails (the docs' `prep.py`): exits 3 after 8 s."""

import sys
import time

time.sleep(8)
print("prep: no data found", flush=True)
sys.exit(3)
