#!/usr/bin/env bash
# What only a GPU can show, in one command, on any CUDA machine that already has torch, triton and the
# project's dependencies (it installs nothing, so it also runs offline). PYTHON picks the interpreter.
#   1. the GPU tests: Triton kernels compiled (not interpreted) against float64, quantized kernels, and
#      every pinned launch configuration forced onto every launch in turn, in bf16 and fp16 (E = 1 and 5,
#      empty experts, experts with fewer rows than a tile, a skewed hot expert, transposed W), TMA
#      against pointer loads bit for bit, split-K decode against the reference;
#   2. bench.kernels: every shape A-E and the quantized rows, with the measured ceilings;
#   3. bench.profile_model: one GPT-4-shape layer at decode (8k context, batch 1, 8, 64);
#   4. bench.compile_speed: the small preset's training step, eager against torch.compile (the
#      experts as Triton custom operators), and its dense twin's (compiled should be no slower).
# Everything is written under bench/results/<device>/ (and copied to $OUT when that is set);
# gpu_run.log holds the console. Each step has its own time limit, so one hang cannot stall the rest;
# in all about 14 minutes (an estimate: not yet run on a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
dev=$($PY -c 'from kernels.measure import device_slug; print(device_slug(True))') || exit 1
out=bench/results/$dev
mkdir -p "$out"
log() { tee -a "$out/gpu_run.log"; }
{ date -u; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv; } 2>&1 | log
timeout 420 $PY -m pytest -q -x -p no:cacheprovider tests/kernels/test_triton_kernels.py tests/serving/test_quantized.py \
    tests/kernels/test_kernels.py "tests/kernels/test_ops.py::test_small_preset_traces_without_a_graph_break_on_a_gpu" 2>&1 | tail -20 | log
timeout 300 $PY -m bench.kernels --out "$out" 2>&1 | log
timeout 150 $PY -m bench.profile_model --layers 1 --mode decode --context 8192 --batches 1,8,64 --out "$out" 2>&1 \
    | tail -40 | log
timeout 300 $PY -m bench.compile_speed --config small --device cuda --rounds 3 --steps 10 --out "$out" 2>&1 \
    | tail -8 | log
# TUNE=1: also time every clean config of every mode and write the table the GPU would pin
# (kernels.tuning.tune_configs --quick; several minutes: hundreds of compiles)
if [ "${TUNE:-0}" = 1 ]; then timeout 420 $PY -m kernels.tuning.tune_configs --quick --reps 10 --out "$out" 2>&1 | tail -5 | log; fi
if [ -n "${OUT:-}" ]; then cp -r "$out" "$OUT/"; fi
