#!/usr/bin/env bash
# The CUDA tests on kiln's CUDA emulator with the kernels and the emulator's runtime built under
# AddressSanitizer: every device buffer and every block's shared array is its own host
# allocation, so an out-of-bounds global or shared access in a kernel is reported with its
# stack. Separate target directory (target/asan), so the normal build is untouched.
#
#   scripts/emu-sanitize.sh                 # every test in tests/cuda.rs
#   scripts/emu-sanitize.sh flash           # a filter, as for cargo test
set -euo pipefail
cd "$(dirname "$0")/.."
export KILN_EMU_SANITIZE=address
export CARGO_TARGET_DIR=target/asan
cargo test --features cuda-emu --test cuda --no-run 2>&1 | grep -E '^(error|warning: unused)' -A5 || true
bin=$(cargo test --features cuda-emu --test cuda --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "cuda" and m.get("executable"):
        print(m["executable"])' | tail -n 1 || true)
[ -n "$bin" ] || { echo "emu-sanitize: the test build failed (run: KILN_EMU_SANITIZE=address CARGO_TARGET_DIR=target/asan cargo test --features cuda-emu --test cuda --no-run)" >&2; exit 1; }
asan=$(g++ -print-file-name=libasan.so)
# Rust's own allocations are not instrumented; leaks at exit are the test harness's, not kernels'.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0}
LD_PRELOAD="$asan" "$bin" "$@"
