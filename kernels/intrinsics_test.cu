// kernels/intrinsics_test.cu — test kernels for the intrinsics layer (kernels/intrinsics.cuh).
// Each loads its inputs with plain indexing written from the PTX ISA's documented layouts, runs
// one intrinsic, and writes the result back with the same plain indexing; tests/cuda.rs checks
// them against references computed in Rust. The same kernels run under the emulator in CI and
// on a GPU in the GPU sitting, so a layout the emulator got wrong would show up there too.
// The `fault_*` kernels do what the hardware would fault on; only the emulator's tests launch
// them (they expect a one-line error naming the kernel and the line).
//
// Kernels (one warp of 32 threads unless said otherwise):
//   test_mma(d, a, b, c)                a [16,16], b [16(k),8(n)] bf16 row-major, c, d [16,8]
//                                       fp32: d = a·b + c through the m16n8k16 fragments
//   test_ldmatrix(out, tile, trans)     tile [32,8] bf16 (matrix j = rows 8j..8j+7) copied to
//                                       shared; out[lane·4 + j] = register j of lane
//   test_cp_async(out, src, n_valid)    32 chunks of 8 bf16: chunk l copied with src-size 16
//                                       when l < n_valid, else 0 (zero-fill); groups of 16
//                                       chunks; out = the shared tile after wait_group<1> (first
//                                       half) and wait_all (second half)
//   test_cp_async_early_read(out, src)  out = a 16-byte shared chunk read before its wait
//                                       (emulator only: poisoned, all bits set)
//   test_pack_bf16(out, in, n)          out[i] = pack_bf16(in[2i], in[2i+1]), grid-stride
//   test_shfl_xor(out, in)              out[s·32 + lane] = shfl_xor(in[lane], 1 << s), s < 5
//   test_fast_exp2(out, in, n)          out[i] = fast_exp2(in[i]), grid-stride
//   test_atomic_add(acc, per_thread)    every thread of every block adds 1.0 `per_thread` times
//   test_atomic_add_v2(acc, per_thread) every thread adds (1.0, 2.0) to acc[2·(thread % 4)..]
//                                       `per_thread` times
//   fault_atomic_add_v2_misaligned(acc) a vector atomic at acc + 1 (4-byte aligned)
//   fault_barrier_after_exit()          block 64: threads ≥ 32 return, the rest __syncthreads
//   fault_divergent_shfl(out)           lanes < 16 and lanes ≥ 16 shuffle at different lines
//   fault_ldmatrix_misaligned()         row addresses 8 bytes off
//   fault_cp_async_past_end(src, n)     copies the 16 bytes at src + n (past the allocation)
//   fault_ld_v4_misaligned(out, src)    a 16-byte load at src + 1 element (2-byte aligned)
//   fault_st_v4_past_end(out, n)        a 16-byte store at out + n (past the allocation)
//   fault_dynamic_shared(out)           touches its dynamic shared memory (launched with more
//                                       than 48 KiB and no opt-in)
#include "common.cuh"

#include <stdint.h>

__device__ __forceinline__ uint32_t pair_at(const bf16* p) {
    const uint16_t lo = *reinterpret_cast<const uint16_t*>(p);
    const uint16_t hi = *reinterpret_cast<const uint16_t*>(p + 1);
    return (uint32_t)lo | ((uint32_t)hi << 16);
}

extern "C" __global__ void test_mma(float* d, const bf16* a, const bf16* b, const float* c) {
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    uint32_t af[4];
    af[0] = pair_at(a + g * 16 + 2 * t);
    af[1] = pair_at(a + (g + 8) * 16 + 2 * t);
    af[2] = pair_at(a + g * 16 + 2 * t + 8);
    af[3] = pair_at(a + (g + 8) * 16 + 2 * t + 8);
    // B is k × n row-major: the pair (k, k+1) at column n is two elements 8 apart.
    bf16 b0[2] = {b[(2 * t) * 8 + g], b[(2 * t + 1) * 8 + g]};
    bf16 b1[2] = {b[(2 * t + 8) * 8 + g], b[(2 * t + 9) * 8 + g]};
    float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t],
                    c[(g + 8) * 8 + 2 * t + 1]};
    mma_16816(acc, af, pair_at(b0), pair_at(b1));
    d[g * 8 + 2 * t] = acc[0];
    d[g * 8 + 2 * t + 1] = acc[1];
    d[(g + 8) * 8 + 2 * t] = acc[2];
    d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

extern "C" __global__ void test_ldmatrix(uint32_t* out, const bf16* tile, int trans) {
    KILN_SHARED(bf16, s, 32 * 8);
    const int lane = threadIdx.x & 31;
    for (int i = lane; i < 32 * 8; i += 32) s[i] = tile[i];
    __syncthreads();
    uint32_t r[4];
    if (trans) {
        ldsm_x4_t(r, s + lane * 8);
    } else {
        ldsm_x4(r, s + lane * 8);
    }
    for (int j = 0; j < 4; ++j) out[lane * 4 + j] = r[j];
}

extern "C" __global__ void test_cp_async(bf16* out, const bf16* src, int n_valid) {
    KILN_SHARED(bf16, s, 32 * 8);
    const int lane = threadIdx.x & 31;
    // Group 0: chunks 0..15 (lanes 0..15); group 1: chunks 16..31.
    if (lane < 16) cp_async_16(s + lane * 8, src + lane * 8, lane < n_valid);
    cp_async_commit();
    if (lane >= 16) cp_async_16(s + lane * 8, src + lane * 8, lane < n_valid);
    cp_async_commit();
    cp_async_wait_group<1>();
    __syncthreads();
    // Group 0 has landed for every thread.
    for (int i = lane; i < 16 * 8; i += 32) out[i] = s[i];
    cp_async_wait_all();
    __syncthreads();
    for (int i = 16 * 8 + lane; i < 32 * 8; i += 32) out[i] = s[i];
}

extern "C" __global__ void test_cp_async_early_read(uint32_t* out, const bf16* src) {
    KILN_SHARED(bf16, s, 8);
    if (threadIdx.x == 0) {
        cp_async_16(s, src, true);
        cp_async_commit();
        for (int i = 0; i < 4; ++i) out[i] = reinterpret_cast<const uint32_t*>(s)[i];
        cp_async_wait_all();
    }
}

extern "C" __global__ void test_pack_bf16(uint32_t* out, const float* in, int n) {
    for (size_t i = grid_stride_start(); i < (size_t)n; i += grid_stride_step()) {
        out[i] = pack_bf16(in[2 * i], in[2 * i + 1]);
    }
}

extern "C" __global__ void test_shfl_xor(float* out, const float* in) {
    const int lane = threadIdx.x & 31;
    for (int s = 0; s < 5; ++s) out[s * 32 + lane] = shfl_xor(in[lane], 1 << s);
}

extern "C" __global__ void test_fast_exp2(float* out, const float* in, int n) {
    for (size_t i = grid_stride_start(); i < (size_t)n; i += grid_stride_step()) {
        out[i] = fast_exp2(in[i]);
    }
}

extern "C" __global__ void test_atomic_add(float* acc, int per_thread) {
    for (int i = 0; i < per_thread; ++i) atomic_add(acc, 1.0f);
}

extern "C" __global__ void test_atomic_add_v2(float* acc, int per_thread) {
    float* p = acc + 2 * (threadIdx.x % 4);
    for (int i = 0; i < per_thread; ++i) atomic_add_v2(p, 1.0f, 2.0f);
}

extern "C" __global__ void fault_atomic_add_v2_misaligned(float* acc) {
    if (threadIdx.x == 0) atomic_add_v2(acc + 1, 1.0f, 2.0f);
}

extern "C" __global__ void fault_barrier_after_exit() {
    if (threadIdx.x >= 32) return;
    __syncthreads();
}

extern "C" __global__ void fault_divergent_shfl(float* out) {
    const int lane = threadIdx.x & 31;
    float v = (float)lane;
    if (lane < 16) {
        v = shfl_xor(v, 1);
    } else {
        v = shfl_xor(v, 2);
    }
    out[lane] = v;
}

extern "C" __global__ void fault_ldmatrix_misaligned(uint32_t* out) {
    KILN_SHARED(bf16, s, 33 * 8);
    const int lane = threadIdx.x & 31;
    for (int i = lane; i < 33 * 8; i += 32) s[i] = __float2bfloat16(0.0f);
    __syncthreads();
    uint32_t r[4];
    ldsm_x4(r, s + 4 + lane * 8);
    out[lane] = r[0];
}

extern "C" __global__ void fault_cp_async_past_end(bf16* out, const bf16* src, int n) {
    KILN_SHARED(bf16, s, 8);
    if (threadIdx.x == 0) {
        cp_async_16(s, src + n, true);
        cp_async_wait_all();
        out[0] = s[0];
    }
}

extern "C" __global__ void fault_dynamic_shared(float* out) {
    KILN_DYNAMIC_SHARED(float, s);
    s[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

extern "C" __global__ void fault_ld_v4_misaligned(bf16* out, const bf16* src) {
    if (threadIdx.x == 0) st_v4(out, ld_v4(src + 1));
}

extern "C" __global__ void fault_st_v4_past_end(bf16* out, int n) {
    if (threadIdx.x == 0) st_v4(out + n, uint4{1u, 2u, 3u, 4u});
}
