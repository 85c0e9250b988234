#!/usr/bin/env bash
# The GPU check of "Populations at the hardware's throughput", as ONE prepared script for a lent
# GPU machine (see shared/GPU.md). On this machine first:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl optuna==5.1.0 optuna-integration==5.0.0 alembic colorlog Mako SQLAlchemy jsonargparse \
#     docstring_parser typeshed_client mnist1d==0.0.2.post1 plotly pytest pluggy iniconfig
# then, with the device tool: run(command="bash perf/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Everything goes under $OUT (or ./gpu_out); each step's log is kept even if a later one fails.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$OUT/pip.log" 2>&1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
step() {  # step NAME TIMEOUT COMMAND...: timed, logged, never stops the script
  local name=$1 limit=$2; shift 2
  local start=$(date +%s%N)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  local ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%-22s rc=%-3s %6d ms\n' "$name" "$rc" "$ms" | tee -a "$OUT/summary.txt"
}
# 1. Throughput against the reference (eager, then compiled as CUDA graphs), K up to 1024.
step throughput_gpu 150 python3 perf/bench_throughput.py --accelerator cuda --graphs \
  --members 1 64 1024 --epochs 3 --out "$OUT/throughput_gpu.json"
step throughput_compiled 150 python3 perf/bench_throughput.py --accelerator cuda --graphs \
  --members 64 1024 --epochs 3 --compile reduce-overhead --out "$OUT/throughput_compiled.json"
# 2. The demo on the GPU and on the same machine's CPU.
step demo_gpu 120 python3 -m lightning_opt compare --config configs/experiments/gnw_vs_adam.yaml \
  --output_dir "$OUT/demo_gpu"
step demo_cpu 120 python3 -m lightning_opt compare --config configs/experiments/gnw_vs_adam.yaml \
  --output_dir "$OUT/demo_cpu" --trainer.accelerator cpu
# 3. No host sync in the step loop, under torch.cuda.set_sync_debug_mode("error").
step no_sync_gpu 90 python3 -m pytest -q -p no:cacheprovider tests/test_no_sync.py tests/test_compile.py
tail -n 8 "$OUT"/throughput_*.log
cat "$OUT/summary.txt"
