#!/usr/bin/env bash
# One command for a machine with NVIDIA GPUs: check handyjobs against the real driver, then print
# a summary a person can paste into the README.
#
#   scripts/gpu_check.sh               # everything (a few minutes; installs into .venv)
#   GPU_CHECK_BENCH=0 scripts/gpu_check.sh   # without the trainer benchmark
#
# Checks, in order: the gpu-marked tests; `handyjobs gpus` (and --json) against the driver and
# nvidia-smi; a bf16 job pinned with --gpus 0; a held GPU refused and a queued job started when
# it frees; GPU 0's memory and processes back to where they were after `stop`; and
# scripts/bench_trainer.py --backend nccl --device cuda (hand-written loop, ParallelTrainer,
# Accelerate, Fabric). Everything runs in a throwaway HANDYJOBS_HOME on its own tmux socket.
# Exits 1 when a check fails, 0 otherwise; on a machine without an NVIDIA GPU it says so and
# exits 0.
set -uo pipefail

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "gpu_check: skipped: no NVIDIA GPU here (nvidia-smi is missing or lists no GPU)"
    exit 0
fi

set -e
export HANDYJOBS_EXTRAS=dev
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
# The GPU checks need a CUDA build of torch; a .venv made on a laptop may hold the CPU one.
if [ "$("$PY" -c 'import torch; print(torch.version.cuda is not None)')" != "True" ]; then
    spec="${HANDYJOBS_TORCH_SPEC:-torch==2.13.0}"
    echo "==> the torch in $VENV is a CPU build: installing $spec with CUDA"
    if [ -n "${HANDYJOBS_TORCH_INDEX_URL:-}" ]; then
        "$PY" -m pip install -q --force-reinstall "$spec" --index-url "$HANDYJOBS_TORCH_INDEX_URL"
    else
        "$PY" -m pip install -q --force-reinstall "$spec"
    fi
fi
if [ "${GPU_CHECK_BENCH:-1}" != 0 ] && ! "$PY" -c 'import accelerate, lightning' 2>/dev/null; then
    echo "==> installing accelerate and lightning for the benchmark"
    "$PY" -m pip install -q accelerate lightning
fi
set +e

work="$(mktemp -d)"
export HANDYJOBS_HOME="$work/home"
export HANDYJOBS_TMUX_SOCKET="handyjobs-gpu-check-$$"
unset HANDYJOBS_FAKE_GPUS HANDYJOBS_GPUS HANDYJOBS_TEST_NVML TMUX TMUX_PANE
export NO_COLOR=1
cleanup() {
    HANDYJOBS_GPU_TIMEOUT_S=10 handyjobs stop holder >/dev/null 2>&1
    handyjobs stop queued >/dev/null 2>&1
    tmux -L "$HANDYJOBS_TMUX_SOCKET" kill-server 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

results=()   # "PASS|FAIL|SKIP<TAB>check<TAB>detail"
failed=0
record() {   # record STATUS CHECK DETAIL
    results+=("$1"$'\t'"$2"$'\t'"$3")
    [ "$1" = FAIL ] && failed=1
    echo "--> $1: $2${3:+ ($3)}"
}
json() {     # json 'PYTHON EXPRESSION OVER doc' < JSON
    "$PY" -c 'import json, sys; doc = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}
poll() {     # poll SECONDS COMMAND...: run COMMAND every 0.5 s until it succeeds
    local end=$((SECONDS + $1)); shift
    until "$@"; do
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 0.5
    done
}
state() { handyjobs show "$1" --json | json 'doc["state"]'; }
log_tail() { handyjobs logs "$1" 2>&1 | tail -3 | tr '\n' ' '; }
ready() {    # ready FILE JOB: the job wrote FILE, or (status 2) it is no longer on its way
    [ -s "$1" ] && return 0
    case "$(state "$2")" in queued | running) return 1 ;; *) return 2 ;; esac
}
wait_ready() {  # wait_ready SECONDS FILE JOB: until the job holds its GPU, ends, or time is up
    local end=$((SECONDS + $1)) rc
    while :; do
        ready "$2" "$3"; rc=$?
        [ "$rc" -ne 1 ] && return "$rc"
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 0.5
    done
}

echo "==> the machine"
smi_list="$(nvidia-smi -L)"
ngpus="$(grep -c '^GPU ' <<<"$smi_list")"
driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)"
torch_line="$("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
echo "$smi_list"

# ---- 1. the gpu-marked tests
echo "==> pytest -m gpu"
pytest_out="$work/pytest.txt"
"$PY" -m pytest -m gpu -rs -q -p no:cacheprovider tests/ 2>&1 | tee "$pytest_out"
status=${PIPESTATUS[0]}
last="$(tail -1 "$pytest_out")"
if [ "$status" -ne 0 ]; then
    record FAIL "gpu-marked tests" "$last"
elif grep -q "skipped" <<<"$last"; then
    record SKIP "gpu-marked tests" "$last: see the SKIPPED lines above"
else
    record PASS "gpu-marked tests" "$last"
fi

# ---- 2. handyjobs gpus against the driver
echo "==> handyjobs gpus"
gpus_table="$(handyjobs gpus 2>&1)"
echo "$gpus_table"
gpus_json="$(handyjobs gpus --json 2>&1)"
source_seen="$(json 'doc["source"]' <<<"$gpus_json" 2>/dev/null)"
count_seen="$(json 'len(doc["gpus"])' <<<"$gpus_json" 2>/dev/null)"
if [ "$source_seen" = nvml ] && [ "$count_seen" = "$ngpus" ]; then
    record PASS "handyjobs gpus" "NVML, $count_seen GPUs as nvidia-smi -L"
else
    record FAIL "handyjobs gpus" "source ${source_seen:-?}, ${count_seen:-?} GPUs; nvidia-smi -L lists $ngpus"
fi
mem0() { handyjobs gpus --json | json '[g for g in doc["gpus"] if g["index"] == 0][0]["memory_used_mib"]'; }
pids0() { handyjobs gpus --json | json 'sorted(p["pid"] for p in [g for g in doc["gpus"] if g["index"] == 0][0]["processes"])'; }
base_mem="$(mem0)"
base_pids="$(pids0)"

# ---- 3. a bf16 job pinned with --gpus 0
cat >"$work/bf16.py" <<'EOF'
"""A few bf16 training steps on the one GPU handyjobs gave this job."""
import os

import torch

assert torch.cuda.device_count() == 1, torch.cuda.device_count()
model = torch.nn.Linear(1024, 1024).cuda()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randn(256, 1024, device="cuda")
for step in range(20):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x).float().pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"bf16 ok: {torch.cuda.get_device_name(0)}, CUDA_VISIBLE_DEVICES="
      f"{os.environ['CUDA_VISIBLE_DEVICES']}, loss {loss.item():.4f}", flush=True)
EOF
echo "==> handyjobs start bf16.py --gpus 0"
bf16_start="$(cd "$work" && handyjobs start bf16.py --gpus 0 --name bf16 2>&1)"
echo "$bf16_start"
handyjobs wait bf16 >/dev/null 2>&1
bf16_rc=$?
bf16_line="$(handyjobs logs bf16 2>&1 | grep 'bf16 ok' | tail -1)"
if [ "$bf16_rc" -eq 0 ] && grep -q "CUDA_VISIBLE_DEVICES=0," <<<"$bf16_line"; then
    record PASS "bf16 job pinned with --gpus 0" "$bf16_line"
else
    record FAIL "bf16 job pinned with --gpus 0" "exit $bf16_rc: $(handyjobs logs bf16 2>&1 | tail -3 | tr '\n' ' ')"
fi

# ---- 4. a held GPU is refused; a queued job starts when it frees
cat >"$work/holder.py" <<'EOF'
"""Hold 1 GiB on the GPU handyjobs gave this job until it is stopped (10 minutes at most)."""
import os
import sys
import time

import torch

block = torch.ones(2**30, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
open(sys.argv[1], "w").write(str(os.getpid()))
print("holding 1024 MiB on CUDA_VISIBLE_DEVICES=" + os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    time.sleep(0.2)
EOF
echo "==> handyjobs start holder.py --gpus 0 --name holder"
(cd "$work" && handyjobs start holder.py --gpus 0 --name holder -- "$work/ready-holder")
held_table="" refused="" queued="" stop_holder="" list_table="" stop_queued=""
if ! wait_ready 180 "$work/ready-holder" holder; then
    record FAIL "a job holding GPU 0" "holder is $(state holder), not holding GPU memory: $(log_tail holder)"
else
    held_table="$(handyjobs gpus 2>&1)"
    echo "$held_table"
    echo "==> handyjobs start holder.py --gpus 0 --name refused"
    refused="$(cd "$work" && handyjobs start holder.py --gpus 0 --name refused 2>&1)"
    refused_rc=$?
    echo "$refused (exit $refused_rc)"
    if [ "$refused_rc" -eq 1 ] && grep -q "GPU 0 is held by job holder" <<<"$refused"; then
        record PASS "held GPU refused" "$refused"
    else
        record FAIL "held GPU refused" "exit $refused_rc: $refused"
    fi
    echo "==> handyjobs start holder.py --gpus 0 --wait --name queued"
    queued="$(cd "$work" && handyjobs start holder.py --gpus 0 --wait --name queued -- "$work/ready-queued" 2>&1)"
    echo "$queued"
    echo "==> handyjobs stop holder"
    stop_holder="$(handyjobs stop holder 2>&1)"
    stop_holder_rc=$?
    echo "$stop_holder"
    t0=$SECONDS
    if wait_ready 180 "$work/ready-queued" queued && [ "$(state queued)" = running ]; then
        record PASS "queued job started when GPU 0 freed" "running and holding memory $((SECONDS - t0)) s after stop"
    else
        record FAIL "queued job started when GPU 0 freed" "$(state queued): $(log_tail queued)"
    fi
    list_table="$(handyjobs list 2>&1)"

    # ---- 5. memory and processes back after stop
    echo "==> handyjobs stop queued"
    stop_queued="$(handyjobs stop queued 2>&1)"
    stop_queued_rc=$?
    echo "$stop_queued"
    back() {
        local mem pids
        mem="$(mem0)" && pids="$(pids0)" || return 1
        [ "$pids" = "$base_pids" ] && [ $((mem - base_mem)) -le 128 ]
    }
    t0=$SECONDS
    if [ "$stop_holder_rc" -eq 0 ] && [ "$stop_queued_rc" -eq 0 ] && poll 30 back; then
        record PASS "GPU 0 given back after stop" "$(mem0) MiB used (before: $base_mem), processes $(pids0), $((SECONDS - t0)) s after stop"
    else
        record FAIL "GPU 0 given back after stop" "stop exits $stop_holder_rc/$stop_queued_rc: $stop_queued; now $(mem0) MiB, processes $(pids0); before $base_mem MiB, $base_pids"
    fi
fi

# ---- 6. the trainer benchmark on NCCL
bench_out=""
if [ "${GPU_CHECK_BENCH:-1}" = 0 ]; then
    record SKIP "bench_trainer.py --backend nccl" "GPU_CHECK_BENCH=0"
else
    nproc=$((ngpus < 2 ? ngpus : 2))  # NCCL wants a GPU of its own for each process
    echo "==> python scripts/bench_trainer.py --backend nccl --device cuda --nproc $nproc"
    bench_out="$("$PY" scripts/bench_trainer.py --backend nccl --device cuda --nproc "$nproc" --runs 3 2>&1)"
    bench_rc=$?
    echo "$bench_out"
    if [ "$bench_rc" -eq 0 ]; then
        record PASS "bench_trainer.py --backend nccl --device cuda --nproc $nproc" "see the table"
    else
        record FAIL "bench_trainer.py --backend nccl --device cuda --nproc $nproc" "exit $bench_rc: $(tail -1 <<<"$bench_out")"
    fi
fi

# ---- the summary
echo
echo "================================ summary (paste into the README) ================================"
echo
echo "GPU check of $(date -u +%Y-%m-%d) on $(head -1 <<<"$smi_list" | sed 's/ (UUID.*//')$([ "$ngpus" -gt 1 ] && echo " and $((ngpus - 1)) more"), driver $driver, torch $torch_line:"
echo
echo "| check | result | detail |"
echo "|---|---|---|"
for row in "${results[@]}"; do
    IFS=$'\t' read -r status check detail <<<"$row"
    echo "| $check | $status | ${detail//|/\\|} |"
done
echo
echo '```console'
echo '$ handyjobs gpus'
echo "$gpus_table"
if [ -n "$held_table" ]; then
    echo '$ handyjobs start holder.py --gpus 0 --name holder  # then, while it holds GPU 0:'
    echo '$ handyjobs gpus'
    echo "$held_table"
    echo '$ handyjobs start holder.py --gpus 0 --name refused'
    echo "$refused"
    echo '$ handyjobs start holder.py --gpus 0 --wait --name queued'
    echo "$queued"
    echo '$ handyjobs stop holder'
    echo "$stop_holder"
    echo '$ handyjobs list'
    echo "$list_table"
    echo '$ handyjobs stop queued'
    echo "$stop_queued"
fi
echo '```'
if [ -n "$bench_out" ]; then
    echo
    echo '```'
    echo "$bench_out"
    echo '```'
fi
if [ "$failed" -ne 0 ]; then
    echo
    echo "gpu_check: FAILED (see the FAIL rows above)"
    exit 1
fi
echo
echo "gpu_check: all checks passed"
