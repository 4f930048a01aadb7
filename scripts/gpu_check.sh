#!/usr/bin/env bash
# GPU checks and benchmarks in one timed run, for a machine with an NVIDIA GPU and PyTorch already
# installed (no network needed; hopelm runs from this checkout through PYTHONPATH):
#   1. the `gpu` tests (tests/gpu: CUDA == CPU in float64, streaming, bf16 autocast, trainer, checkpoint)
#   2. the README's main job on CUDA: train the tiny hope, sample, evaluate
#   3. `hopelm bench` at the gpu125m preset (all models, bf16 autocast), first with the training steps
#      replayed from CUDA graphs (`--cuda-graph`, stage gbench), then eager (stage bench)
#   4. the compiled-mixers test (Triton), last because compiling takes minutes
# Each stage gets what is left of the budget (at most its own cap) and a failing stage does not stop
# the others; STAGES="tests train" runs a subset, BENCH_ARGS replaces the bench's lengths and limits.
# Usage: bash scripts/gpu_check.sh [OUT_DIR] [BUDGET_SECONDS]; OUT_DIR gets log.txt, bench.json,
# bench.md, bench-graph.json, bench-graph.md and the training run's metrics.jsonl. Dry run without a GPU:
#   HOPELM_TEST_DEVICE=cpu PYTHON=.venv/bin/python TRAIN_ARGS=--train.max_steps=3 bash scripts/gpu_check.sh /tmp/g 200
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu-check}
BUDGET=${2:-560}
PY=${PYTHON:-python3}
DEV=${HOPELM_TEST_DEVICE:-cuda}   # cpu: a dry run of this script without a GPU
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HOPELM_CACHE=/tmp/hopelm-cache
start=$SECONDS
exec > >(tee -a "$OUT/log.txt") 2>&1

STAGES=" ${STAGES:-info tests train sample eval gbench bench compiled} "   # a subset reruns only those
BENCH_ARGS=${BENCH_ARGS:---lengths 1024,2048 --prefill 1k,4k,16k --decode 1k,4k,16k --repeats 2 --max-seconds 20}

stage() {   # stage NAME CAP_SECONDS COMMAND...
  local name=$1 cap=$2 left=$((BUDGET - (SECONDS - start)))
  shift 2
  [[ $STAGES == *" $name "* ]] || return 0
  ((left < cap)) && cap=$left
  if ((cap < 15)); then echo "== $name: not run (budget spent)"; return; fi
  echo "== $name (at most ${cap}s): $*"
  local t0=$SECONDS
  timeout "$cap" "$@"
  echo "== $name: exit $? after $((SECONDS - t0)) s"
}

stage info 30 bash -c "nvidia-smi -L; $PY -c 'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())'; nproc"
stage tests 150 "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider -k "not compiled" --durations=8
run=/tmp/gpu-tiny-hope
stage train 240 "$PY" -m hopelm train --model.name=hope --train.device=$DEV --train.out_dir=$run --train.progress=false \
  --train.trace_nonfinite=true ${TRAIN_ARGS:-}   # a non-finite step is traced to its operation (bf16: docs/results.md)
cp $run/metrics.jsonl "$OUT/" 2>/dev/null
stage sample 30 "$PY" -m hopelm sample $run/final --prompt "ROMEO:" --device $DEV --seed 1
stage eval 30 "$PY" -m hopelm eval $run/final --split validation --device $DEV
stage gbench 240 "$PY" -m hopelm bench --preset gpu125m --device $DEV --cuda-graph $BENCH_ARGS --out /tmp/bench-gpu125m-graph
cp /tmp/bench-gpu125m-graph/bench.json "$OUT/bench-graph.json" 2>/dev/null
cp /tmp/bench-gpu125m-graph/bench.md "$OUT/bench-graph.md" 2>/dev/null
stage bench 240 "$PY" -m hopelm bench --preset gpu125m --device $DEV $BENCH_ARGS --out /tmp/bench-gpu125m
cp /tmp/bench-gpu125m/bench.json /tmp/bench-gpu125m/bench.md "$OUT/" 2>/dev/null
stage compiled 400 "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider -k compiled
echo "== total $((SECONDS - start)) s"
