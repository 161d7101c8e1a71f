#!/usr/bin/env bash
# Run a command with the CUDA libraries kiln loads at run time on LD_LIBRARY_PATH:
#   scripts/cuda-env.sh target/release/kiln train --device cuda
# Libraries come from $CUDA_HOME/lib(64), or from a Python environment's `nvidia/` packages
# (pip's CUDA wheels: nvidia/cu13/lib, nvidia/nccl/lib, ...). cudarc never tries `libnccl.so.2`,
# the only name pip's NCCL wheel ships, so a `libnccl.so` link is made in a private directory.
set -euo pipefail

dirs=()
if [ -n "${CUDA_HOME:-}" ]; then
  for d in "$CUDA_HOME/lib64" "$CUDA_HOME/lib"; do [ -d "$d" ] && dirs+=("$d"); done
fi
python=""
for p in "${KILN_PYTHON:-}" /opt/torch/.venv/bin/python python3; do
  if [ -n "$p" ] && command -v "$p" >/dev/null 2>&1; then python="$p"; break; fi
done
if [ -n "$python" ]; then
  nvidia=$("$python" - <<'PY' 2>/dev/null || true
import importlib.util, os
spec = importlib.util.find_spec("nvidia")
if spec and spec.submodule_search_locations:
    print(list(spec.submodule_search_locations)[0])
PY
)
  if [ -n "$nvidia" ] && [ -d "$nvidia" ]; then
    for d in "$nvidia"/*/lib "$nvidia"/*/lib64; do [ -d "$d" ] && dirs+=("$d"); done
  fi
fi

links="${TMPDIR:-/tmp}/kiln-cuda-libs-$(id -u)"
mkdir -p "$links"
for d in "${dirs[@]}"; do
  if [ -e "$d/libnccl.so.2" ] && [ ! -e "$d/libnccl.so" ]; then
    ln -sf "$d/libnccl.so.2" "$links/libnccl.so"
  fi
done
dirs=("$links" "${dirs[@]}")

joined=$(IFS=:; echo "${dirs[*]}")
export LD_LIBRARY_PATH="$joined${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"
