#!/usr/bin/env bash
# Every GPU check of one sitting, in one device call of about 6 minutes, logs under OUT.
#
#   scripts/gpu-prepare.sh                       # here: binaries and data/world, prints the carry list
#   scripts/gpu-session.sh OUT                   # on the GPU machine (no Rust, no network)
#   STEPS="cuda-tests train-flash" scripts/gpu-session.sh OUT      # a subset
#   scripts/gpu-session.sh --emulated OUT        # dry run here on the CUDA emulator (after
#                                                # scripts/gpu-prepare.sh --emulated)
#
# Steps, in order of value, each under its own time limit and all under one budget
# (BUDGET_S, default 330 s: a step that cannot start with 15 s left is skipped and says so);
# the script goes on when a step fails, and OUT/summary.txt lists every step with its exit
# status and seconds:
#   1. nvidia-smi; the ceilings (copy GB/s, torch.matmul bf16 TFLOP/s) with every op vs PyTorch
#   2. the CUDA tests (KILN_REQUIRE_CUDA=1: a missing device fails; every test and every flash
#      case reports, the harness lists all failures at the end), including 50 training steps
#      against the CPU's loss curve
#   3. training the embedded default's data on the GPU with flash attention (tokens/s, MFU), and
#      with the chunked LM head (train.head_chunk)
#   4. flash attention vs SDPA at the Llama-3-8B head shape (D 128, T up to 4096, causal and
#      packed documents); the flash forward at 64 query rows per block beside it; the step-time
#      model (`kiln bench step`) of a 124M and a 1B Llama step
#   5. the same training through `kiln launch` and NCCL at world size 1
#   6. ZeRO-3 through NCCL at world size 1, small and at the widest 8B-layer shape one GPU holds
#   7. training with reference attention; batched generation of a Mistral-7B-shaped model vs
#      transformers; the 1B step with the chunked head
# Without STEPS every step runs, in this order, until the budget is spent.
# Data: data/world is carried (gpu-prepare.sh builds it); the script refuses to start without it
# rather than rebuild it there.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
emulated=0
if [ "${1:-}" = "--emulated" ]; then
  emulated=1
  shift
fi
out=${1:?usage: scripts/gpu-session.sh [--emulated] OUT [kiln] [cuda-tests]}
dev=.device
[ $emulated = 1 ] && dev=.device-emu
kiln=${2:-$dev/kiln}
tests=${3:-$dev/cuda-tests}
py=${PYTHON:-/opt/torch/.venv/bin/python}
budget=${BUDGET_S:-330}
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
for f in "$kiln" "$tests" data/world/tokenizer.json; do
  [ -e "$f" ] || { echo "gpu-session: $f is missing (run scripts/gpu-prepare.sh$([ $emulated = 1 ] && echo ' --emulated') and carry its output)" | tee -a "$summary" >&2; exit 2; }
done

want=" ${STEPS:-} "
start=$SECONDS

step() { # step NAME LIMIT_S CMD...
  local name=$1 limit=$2
  shift 2
  [ -z "${STEPS:-}" ] || [[ "$want" == *" $name "* ]] || return 0
  local left=$((budget - (SECONDS - start)))
  if [ "$left" -lt 15 ]; then
    printf '%-20s skipped: %ss of the %ss budget left\n' "$name" "$left" "$budget" | tee -a "$summary"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)" | tee -a "$out/session.log"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local note=""
  [ $rc = 124 ] && note=" (time limit)"
  [ $rc != 0 ] && note="$note: $(grep -m1 -E 'error|panicked|FAILED|Error' "$out/$name.log" | cut -c1-160)"
  printf '%-20s rc=%-4s %5ss%s\n' "$name" "$rc" "$((SECONDS - t0))" "$note" | tee -a "$summary"
}
skip() { printf '%-20s skipped: %s\n' "$1" "$2" | tee -a "$summary"; }

cenv="$here/cuda-env.sh"
[ $emulated = 1 ] && cenv=env

work=$(mktemp -d)
# The embedded default's data with a model whose head dim (64) the flash kernels take.
cfg=(--set model.dim=512 --set model.n_layers=8 --set model.n_heads=8 --set model.n_kv_heads=2
  --set model.ffn_dim=1408 --set model.max_seq_len=1024 --set data.seq_len=1024 --set data.batch_size=16
  --set train.steps=60 --set train.log_every=10 --set train.checkpoint_every=0 --set train.eval_every=0)
if [ $emulated = 1 ]; then
  # The same commands at a size the emulator finishes in seconds.
  cfg=(--set model.dim=128 --set model.n_layers=2 --set model.n_heads=2 --set model.n_kv_heads=1
    --set model.ffn_dim=256 --set model.max_seq_len=128 --set data.seq_len=128 --set data.batch_size=2
    --set train.steps=3 --set train.log_every=1 --set train.checkpoint_every=0 --set train.eval_every=0)
fi

if [ $emulated = 1 ]; then
  skip nvidia-smi "emulated"
  skip compare-ops "needs PyTorch on a GPU"
else
  step nvidia-smi 20 nvidia-smi
  step compare-ops 60 "$cenv" "$py" "$here/compare_torch.py" --kiln "$kiln" --device cuda
fi
if [ $emulated = 1 ]; then
  # The whole emulated suite takes minutes on 2 cores (CI runs it): the dry run checks the
  # plumbing with the intrinsics, the fault checks and one training step.
  step cuda-tests 150 env KILN_REQUIRE_CUDA=1 "$tests" intrinsic emulator_faults one_training_step --nocapture
else
  step cuda-tests 150 env KILN_REQUIRE_CUDA=1 "$cenv" "$tests" --nocapture
fi
step train-flash 45 "$cenv" "$kiln" train --device cuda "${cfg[@]}" --set "train.out_dir=\"$work/flash\""
# The same run with the fused head: output projection and loss 1,024 rows at a time (tokens/s
# and the loss curve beside train-flash's).
step train-head-chunk 45 "$cenv" "$kiln" train --device cuda "${cfg[@]}" --set "train.out_dir=\"$work/head-chunk\"" --set train.head_chunk=1024
if [ $emulated = 1 ]; then
  skip compare-attention "needs PyTorch on a GPU"
  skip attention-rows-64 "a timing: needs a GPU"
  skip step-model-124m "a timing: needs a GPU"
  skip step-model-1b "a timing: needs a GPU"
  step launch-nccl-1 30 "$kiln" launch --nproc-per-node 1 -- train --device cuda "${cfg[@]}" --set "train.out_dir=\"$work/nccl\""
else
  step compare-attention 60 "$cenv" "$py" "$here/compare_torch.py" --kiln "$kiln" --device cuda --attention --iters 5
  # The flash forward at 64 query rows per block (the default is 128): its forward column beside
  # compare-attention's.
  step attention-rows-64 30 env KILN_FLASH_FWD_ROWS=64 "$cenv" "$kiln" bench attention --device cuda --seqs 4096 --head-dims 128 --iters 5
  # The step-time model (issue 19): each operation of a 124M and a 1B Llama step, measured and at
  # the measured ceilings, beside a measured step.
  step step-model-124m 45 "$cenv" "$kiln" bench step --device cuda --model 124m --iters 5 --json "$out/step-124m.json"
  step step-model-1b 60 "$cenv" "$kiln" bench step --device cuda --model 1b --iters 3 --json "$out/step-1b.json"
  step launch-nccl-1 45 "$cenv" "$kiln" launch --nproc-per-node 1 -- train --device cuda "${cfg[@]}" --set "train.out_dir=\"$work/nccl\""
fi
if [ $emulated = 1 ]; then
  skip zero3-nccl-1 "needs NCCL"
  skip zero3-large "needs a GPU's memory"
else
  # ZeRO-3 through NCCL at world size 1: every unit's weights gathered and freed around it.
  step zero3-nccl-1 45 "$cenv" "$kiln" launch --nproc-per-node 1 -- train --device cuda "${cfg[@]}" --set "train.out_dir=\"$work/zero3\"" --set train.zero_stage=3
  # The widest Llama-3-8B layers one H200 holds at ZeRO-3 and world size 1 (24 layers, 5.2 B
  # parameters with the world's vocabulary; plan about 100 GB): measured memory and tokens/s
  # beside the plan (the first-step line in the log).
  step zero3-large 120 "$cenv" "$kiln" launch --nproc-per-node 1 -- train --device cuda "${cfg[@]}" \
    --set model.dim=4096 --set model.n_layers=24 --set model.n_heads=32 --set model.n_kv_heads=8 \
    --set model.ffn_dim=14336 --set model.max_seq_len=4096 --set data.seq_len=4096 --set data.batch_size=1 \
    --set train.steps=6 --set train.log_every=1 --set train.zero_stage=3 --set 'train.recompute="full"' \
    --set "train.out_dir=\"$work/zero3-large\""
fi
step train-reference 45 "$cenv" "$kiln" train --device cuda "${cfg[@]}" --set "train.out_dir=\"$work/reference\"" --set train.attention=reference
if [ $emulated = 1 ]; then
  skip compare-generate "needs transformers on a GPU"
  skip step-model-1b-head-chunk "a timing: needs a GPU"
else
  step compare-generate 90 "$cenv" "$py" "$here/compare_generate.py" --kiln "$kiln" --device cuda
  # The 1B step with the chunked head (2,048 rows of 128,256 logits at a time) beside step-model-1b.
  step step-model-1b-head-chunk 60 "$cenv" "$kiln" bench step --device cuda --model 1b --iters 3 --head-chunk 2048 --json "$out/step-1b-head-chunk.json"
fi
for run in flash head-chunk reference nccl zero3 zero3-large; do
  [ -f "$work/$run/metrics.jsonl" ] && cp "$work/$run/metrics.jsonl" "$out/metrics-$run.jsonl"
done
rm -rf "$work"
printf '%-20s %ss of %ss\n' total "$((SECONDS - start))" "$budget" | tee -a "$summary"
echo "logs in $out; summary:"
cat "$summary"
