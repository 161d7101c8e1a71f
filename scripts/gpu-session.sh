#!/usr/bin/env bash
# Every GPU check of one sitting on the device machine, in one call, logs under OUT.
#
#   scripts/gpu-session.sh OUT [kiln binary] [cuda test binary]
#   STEPS="cuda-tests compare-attention" scripts/gpu-session.sh OUT     # a subset
#
# All steps together may take up to 26 minutes: a device call is limited to 10, so split them over
# three calls with STEPS (e.g. "nvidia-smi compare-ops cuda-tests", "compare-attention
# compare-generate", then the training steps).
# Defaults: .device/kiln and .device/cuda-tests (built and stripped on a machine with Rust; see
# docs/CUDA.md). Each step runs under its own time limit and the script goes on when one fails;
# OUT/summary.txt lists every step with its exit status and seconds. Steps, in order of value:
#   1. nvidia-smi and the ceilings (copy GB/s, torch.matmul TFLOP/s) with every op vs PyTorch
#   2. the CUDA test binary (KILN_REQUIRE_CUDA=1: a missing device fails)
#   3. flash attention vs SDPA (kiln bench attention and compare_torch.py --attention), and
#      batched generation of a Mistral-7B-shaped model vs transformers (compare_generate.py)
#   4. training on the GPU: the tiny run with flash and with reference attention, and the same
#      run launched through NCCL at world size 1 (its throughput against the plain run)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: scripts/gpu-session.sh OUT [kiln] [cuda-tests]}
kiln=${2:-.device/kiln}
tests=${3:-.device/cuda-tests}
py=${PYTHON:-/opt/torch/.venv/bin/python}
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"

want=" ${STEPS:-nvidia-smi compare-ops cuda-tests compare-attention compare-generate train-flash train-reference launch-nccl-1} "

step() { # step NAME LIMIT_S CMD...
  local name=$1 limit=$2
  shift 2
  [[ "$want" == *" $name "* ]] || return 0
  local t0=$SECONDS
  echo "== $name" | tee -a "$out/session.log"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  printf '%-28s rc=%-4s %5ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$summary"
}

cenv="$here/cuda-env.sh"

step nvidia-smi 30 nvidia-smi
step compare-ops 180 "$cenv" "$py" "$here/compare_torch.py" --kiln "$kiln" --device cuda
step cuda-tests 300 env KILN_REQUIRE_CUDA=1 "$cenv" "$tests" --test-threads=1 --nocapture
step compare-attention 240 "$cenv" "$py" "$here/compare_torch.py" --kiln "$kiln" --device cuda --attention --iters 5
step compare-generate 480 "$cenv" "$py" "$here/compare_generate.py" --kiln "$kiln" --device cuda

work=$(mktemp -d)
# The embedded default's data with a model whose head dim (64) the flash kernels take.
cfg=(--set model.dim=512 --set model.n_layers=8 --set model.n_heads=8 --set model.n_kv_heads=2
  --set model.ffn_dim=1408 --set model.max_seq_len=1024 --set data.seq_len=1024 --set data.batch_size=16
  --set train.steps=60 --set train.log_every=10 --set train.checkpoint_every=0 --set train.eval_every=0)
step train-flash 120 "$cenv" "$kiln" train --device cuda "${cfg[@]}" --set "train.out_dir=\"$work/flash\""
step train-reference 120 "$cenv" "$kiln" train --device cuda "${cfg[@]}" --set "train.out_dir=\"$work/reference\"" --set train.attention=reference
step launch-nccl-1 120 "$cenv" "$kiln" launch --nproc-per-node 1 -- train --device cuda "${cfg[@]}" --set "train.out_dir=\"$work/nccl\""
for run in flash reference nccl; do
  [ -f "$work/$run/metrics.jsonl" ] && cp "$work/$run/metrics.jsonl" "$out/metrics-$run.jsonl"
done
rm -rf "$work"
echo "logs in $out; summary:"
cat "$summary"
