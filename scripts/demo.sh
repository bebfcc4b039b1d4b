#!/usr/bin/env bash
# The two-minute tour: make .venv (if missing), install handyjobs, start the example 2-process
# CPU training job with `handyjobs start`, follow its log to the end, and show `handyjobs list`.
# Idempotent: run it again and it starts a fresh demo job on the same .venv.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"

name="demo-$(date +%H%M%S)"
echo "==> handyjobs start examples/train.py --cpu --nproc 2 --name $name"
handyjobs start examples/train.py --cpu --nproc 2 --name "$name" -- --epochs 2
echo "==> handyjobs logs $name -f"
handyjobs logs "$name" -f
echo "==> handyjobs list"
handyjobs list
handyjobs wait "$name"
