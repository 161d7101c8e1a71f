// kernels/common.cuh — helpers shared by every kiln kernel file.
//
// Implements:
//   bf16                      the storage type (__nv_bfloat16: <cuda_bf16.h>, or the emulator's)
//   load_bf16 / store_bf16    bf16 <-> float at an index (store rounds to nearest even)
//   grid_stride_start/step    the first index and the stride of a 1-D grid-stride loop (size_t)
//   grid_start32/step32       the same in 32 bits, for loops whose bound fits an int (every
//                             `int n` kernel): no 64-bit index arithmetic
//   aligned16(p)              whether p is 16-byte aligned (the vector paths' precondition)
//   load8_bf16 / store8_bf16  8 bf16 <-> 8 floats through one 16-byte access (p 16-byte aligned;
//                             the store rounds to nearest even, as store_bf16)
//   load4_f32 / store4_f32    4 floats f[0..4) through one 16-byte access (p 16-byte aligned)
//   cast_f32_to_bf16_loop     y[i] = bf16(x[i]) for i < n, grid-stride, 8 per step where aligned
//
// The memory-bound kernels move 16 bytes per access where their arrays allow it (8 bf16 or 4
// fp32 per thread and step) and fall back to the scalar loop for the tail and for arrays that
// are not 16-byte aligned; per element the arithmetic is the same on both paths.
//   warp_reduce_sum/max       butterfly reduction over a full warp with shfl_xor; every
//                             lane ends with the same, bitwise identical result
//   block_reduce_sum/max      warp reductions, then one warp-level reduction of the per-warp
//                             results read from shared scratch; every thread returns the same
//                             value, computed in a fixed order (no atomics), so results are
//                             deterministic run to run
//
// Requirements on callers: blockDim.x is a multiple of 32 and at most 1024 (every lane of every
// warp is active: the shuffles use the full mask), and every thread of the block calls a
// block_reduce_* (they contain __syncthreads). `scratch` is a __shared__ float[32]; one scratch
// array may be reused by consecutive calls (the leading __syncthreads protects it).
#pragma once

#include <math.h>
#include <stddef.h>

#include "intrinsics.cuh"  // every PTX / warp intrinsic (and <cuda_bf16.h> under nvcc)

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float load_bf16(const bf16* p, size_t i) {
    return __bfloat162float(p[i]);
}

__device__ __forceinline__ void store_bf16(bf16* p, size_t i, float v) {
    p[i] = __float2bfloat16(v);
}

// First index and stride of a 1-D grid-stride loop, in size_t so that no product overflows.
__device__ __forceinline__ size_t grid_stride_start() {
    return (size_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ size_t grid_stride_step() {
    return (size_t)gridDim.x * blockDim.x;
}

__device__ __forceinline__ unsigned grid_start32() { return blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ unsigned grid_step32() { return gridDim.x * blockDim.x; }

__device__ __forceinline__ bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

__device__ __forceinline__ void load8_bf16(const bf16* p, float (&f)[8]) {
    const uint4 u = ld_v4(p);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        f[2 * k] = __uint_as_float(w[k] << 16);
        f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
}

__device__ __forceinline__ void store8_bf16(bf16* p, const float (&f)[8]) {
    uint4 u;
    u.x = pack_bf16(f[0], f[1]);
    u.y = pack_bf16(f[2], f[3]);
    u.z = pack_bf16(f[4], f[5]);
    u.w = pack_bf16(f[6], f[7]);
    st_v4(p, u);
}

__device__ __forceinline__ void load4_f32(const float* p, float* f) {
    const uint4 u = ld_v4(p);
    f[0] = __uint_as_float(u.x);
    f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z);
    f[3] = __uint_as_float(u.w);
}

__device__ __forceinline__ void store4_f32(float* p, const float* f) {
    uint4 u;
    u.x = __float_as_uint(f[0]);
    u.y = __float_as_uint(f[1]);
    u.z = __float_as_uint(f[2]);
    u.w = __float_as_uint(f[3]);
    st_v4(p, u);
}

// y[i] = bf16(x[i]) (round to nearest even) for i < n over a 1-D grid with 8 elements per
// thread and step (launch ceil(n / 8) threads' worth of blocks, or fewer).
__device__ __forceinline__ void cast_f32_to_bf16_loop(bf16* y, const float* x, int n) {
    const unsigned chunks = aligned16(y) && aligned16(x) ? n / 8 : 0;
    for (unsigned c = grid_start32(); c < chunks; c += grid_step32()) {
        float v[8];
        load4_f32(x + 8 * c, v);
        load4_f32(x + 8 * c + 4, v + 4);
        store8_bf16(y + 8 * c, v);
    }
    for (unsigned i = 8 * chunks + grid_start32(); i < (unsigned)n; i += grid_step32()) {
        store_bf16(y, i, x[i]);
    }
}

// Sum over the 32 lanes of a warp (butterfly: offsets 16, 8, 4, 2, 1). Float addition is
// commutative, so lane l and lane l^o compute the same sum at each level and all lanes finish
// with the identical value.
__device__ __forceinline__ float warp_reduce_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += shfl_xor(v, o);
    return v;
}

__device__ __forceinline__ float warp_reduce_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, shfl_xor(v, o));
    return v;
}

// Sum of v over the block; every thread gets the result. Each warp reduces the same per-warp
// partials in the same order, so every thread holds a bitwise identical value.
__device__ __forceinline__ float block_reduce_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = (int)(blockDim.x >> 5);
    v = warp_reduce_sum(v);
    __syncthreads();  // earlier readers of scratch are done
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nwarps ? scratch[lane] : 0.0f;
    return warp_reduce_sum(r);
}

// Max of v over the block; every thread gets the result.
__device__ __forceinline__ float block_reduce_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = (int)(blockDim.x >> 5);
    v = warp_reduce_max(v);
    __syncthreads();  // earlier readers of scratch are done
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nwarps ? scratch[lane] : -INFINITY;
    return warp_reduce_max(r);
}
