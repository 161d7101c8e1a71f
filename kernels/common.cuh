// kernels/common.cuh — helpers shared by every kiln kernel file.
//
// Implements:
//   bf16                      the storage type (__nv_bfloat16: <cuda_bf16.h>, or the emulator's)
//   load_bf16 / store_bf16    bf16 <-> float at an index (store rounds to nearest even)
//   grid_stride_start/step    the first index and the stride of a 1-D grid-stride loop (size_t)
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
