// kernels/emu/cuda_emu.h — the CUDA language on the host, for kiln's CUDA emulator.
//
// Implements (only what kiln's kernels use; every kernel file is compiled with this header
// forced in front of it, `-include kernels/emu/cuda_emu.h -DKILN_EMU`):
//   __global__, __device__, __forceinline__, __launch_bounds__, __align__   (plain C++)
//   threadIdx, blockIdx, blockDim, gridDim     the running CUDA thread's coordinates (per fiber)
//   __syncthreads()                            a real block barrier, checked (runtime.cpp)
//   __nv_bfloat16, __nv_bfloat162, __float2bfloat16, __bfloat162float, __floats2bfloat162_rn
//                                              bf16 storage, round-to-nearest-even as on the GPU
//   __fadd_rn, __fsub_rn, __fmul_rn, __fdiv_rn, __fsqrt_rn, min, max, rsqrtf   device math
//   uint4, __uint_as_float, __float_as_uint    the 16-byte vector type and bit casts
//   KILN_SHARED / KILN_DYNAMIC_SHARED          per-block shared memory (see intrinsics.cuh)
// Warp intrinsics (shuffles, ldmatrix, mma, cp.async, atomics) live in kernels/intrinsics.cuh,
// whose emulated half calls the runtime entry points declared here.
//
// Not a general CUDA implementation: no textures, no cooperative groups, no streams inside
// kernels. Fibers (runtime.cpp) give every CUDA thread its own stack; `threadIdx` is read
// through the running fiber, `blockIdx` / `blockDim` / `gridDim` through the running block.
#pragma once

#ifndef KILN_EMU
#error "cuda_emu.h is the emulator's shim; nvcc builds use the real CUDA headers"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// build.rs preprocesses with -D__global__=<marker> to list each file's kernels.
#ifndef __global__
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
    unsigned int x, y, z;
};

namespace kiln_emu {

struct ThreadCoords {
    dim3 thread_idx;
};
struct BlockCoords {
    dim3 block_idx, block_dim, grid_dim;
};
// The running fiber's and block's coordinates (set by the scheduler before every switch).
extern thread_local const ThreadCoords* tls_thread;
extern thread_local const BlockCoords* tls_block;

// Runtime entry points (runtime.cpp). `file`/`line` name the call site in errors.
void syncthreads(const char* file, int line);
void* dynamic_shared(const char* file, int line);
void* static_shared(const void* key, size_t bytes, const char* name, const char* file, int line);
void fault(const char* file, int line, const char* fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));

// Warp collectives: every lane of `mask` must arrive at the same call site; each lane passes
// `in` (`in_bytes`) and gets its result in `out` (`out_bytes`) from `op`, which sees all 32
// lanes' inputs at once (lanes outside the mask have no input).
enum class Collective : int { Shfl, LdMatrix, Mma };
struct CollectiveOp {
    Collective kind;
    int variant;  // shfl: mode; ldmatrix: transposed; mma: 0
    void (*compute)(int variant, const void* const* in, void* const* out, uint32_t mask,
                    const char* file, int line);
};
void warp_collective(const CollectiveOp& op, uint32_t mask, const void* in, void* out,
                     const char* file, int line);

// A 16-byte vector access (ld/st.global.v4 or .shared.v4): faults unless `p` is 16-byte aligned
// and the 16 bytes lie inside one device allocation or this block's shared memory.
void vector_access(const void* p, bool store, const char* file, int line);

// cp.async: queued per thread, the destination poisoned until the wait that completes it.
void cp_async(void* dst, const void* src, int cp_size, int src_size, const char* file, int line);
void cp_async_commit();
void cp_async_wait(int newest_pending, const char* file, int line);  // -1: wait_all
// Whether `p .. p+bytes` lies inside this block's shared memory.
bool in_shared(const void* p, size_t bytes);

}  // namespace kiln_emu

#define threadIdx (kiln_emu::tls_thread->thread_idx)
#define blockIdx (kiln_emu::tls_block->block_idx)
#define blockDim (kiln_emu::tls_block->block_dim)
#define gridDim (kiln_emu::tls_block->grid_dim)
#define __syncthreads() kiln_emu::syncthreads(__FILE__, __LINE__)

// ---- bf16 ---------------------------------------------------------------------------------

struct __nv_bfloat16 {
    uint16_t bits;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t u = (uint32_t)h.bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
// Round to nearest even; NaN stays a (quiet) NaN, as cvt.rn.bf16.f32 does.
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(uint16_t)0x7fff};
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162{__float2bfloat16(lo), __float2bfloat16(hi)};
}

// ---- vector type and bit casts -------------------------------------------------------------

struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};
inline float __uint_as_float(unsigned int u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, 4);
    return u;
}

// ---- device math ----------------------------------------------------------------------------
// Compiled with -ffp-contract=off, so these are single IEEE operations as on the GPU.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline size_t min(size_t a, size_t b) { return a < b ? a : b; }
inline size_t max(size_t a, size_t b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
