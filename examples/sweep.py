"""One point of a sweep (the docs' `sweep.py`): takes --lr and --bs, works 3 s, prints a loss."""

import argparse
import time

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--bs", type=int, default=32)
args = parser.parse_args()
time.sleep(3)
print(f"lr={args.lr} bs={args.bs}: final loss {1.0 / args.bs:.4f}")
