#!/usr/bin/env bash
# Run every CUDA test on a machine with a GPU; a missing device is a failure here, not a skip.
#   scripts/gpu-test.sh                      # builds and runs through cargo
#   scripts/gpu-test.sh .device/cuda-tests   # runs a prebuilt test binary (no Rust toolchain)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export KILN_REQUIRE_CUDA=1
if [ $# -ge 1 ]; then
  exec "$here/cuda-env.sh" "$1" --test-threads=1 --nocapture "${@:2}"
fi
exec "$here/cuda-env.sh" cargo test --release --features cuda --test cuda -- --test-threads=1 --nocapture
