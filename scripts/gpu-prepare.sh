#!/usr/bin/env bash
# Build everything a GPU sitting carries, here, on a machine with Rust and no GPU:
#   .device/kiln, .device/cuda-tests   the release binary and the CUDA test binary (`cuda`, stripped)
#   data/world                         the embedded default's world, tokenizer and shards (the GPU
#                                      machine has no Rust and must not rebuild them)
# and print their size and the `carry` list. nvcc comes from pip (CUDA_HOME, or the venv .ci/run
# makes). With --emulated, build the same two binaries for the CUDA emulator into .device-emu/
# instead (the sitting's dry run here: scripts/gpu-session.sh --emulated OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
feature=cuda
dest=.device
if [ "${1:-}" = "--emulated" ]; then
  feature=cuda-emu
  dest=.device-emu
fi
if [ "$feature" = cuda ] && [ -z "${CUDA_HOME:-}" ]; then
  venv="${KILN_NVCC_VENV:-$HOME/.cache/kiln-nvcc-13.0}"
  CUDA_HOME=$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)
  [ -x "$CUDA_HOME/bin/nvcc" ] || { echo "gpu-prepare: no nvcc; set CUDA_HOME (docs/CUDA.md) or run .ci/run once" >&2; exit 1; }
  export CUDA_HOME
fi
cargo build --release --features "$feature"
tests=$(cargo test --release --features "$feature" --test cuda --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "cuda" and m.get("executable"):
        print(m["executable"])' | tail -n 1)
[ -n "$tests" ] || { echo "gpu-prepare: the CUDA test binary did not build" >&2; exit 1; }
mkdir -p "$dest"
cp target/release/kiln "$dest/kiln"
cp "$tests" "$dest/cuda-tests"
strip "$dest/kiln" "$dest/cuda-tests"
# The world of configs/tiny.toml (the sitting's training runs use its data).
"$dest/kiln" world >/dev/null
echo "carried:"
du -sh "$dest" data/world
total=$(du -sc "$dest" data/world | tail -n 1 | cut -f1)
echo "total $((total / 1024)) MiB of the 64 MiB carry limit"
echo "carry: [\"$dest\", \"data/world\"]"
