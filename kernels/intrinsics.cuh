// kernels/intrinsics.cuh — every inline PTX instruction and warp-level intrinsic kiln's kernels
// use, in one place. Under nvcc each is the PTX instruction (or CUDA builtin); in the CUDA
// emulator (KILN_EMU, kernels/emu/) each is C++ that follows the PTX ISA: the emulated ones
// are warp collectives in kernels/emu/runtime.cpp and are unit-tested against plain references
// through kernels/intrinsics_test.cu (tests/cuda.rs), which also runs on a GPU.
//
// Implements:
//   KILN_SHARED(T, name, n)          __shared__ T name[n]: one array per block
//   KILN_DYNAMIC_SHARED(T, name)     extern __shared__ __align__(128) T name[]: the launch's
//                                    dynamic shared memory
//   cp_async_16(dst, src, valid)     cp.async.cg.shared.global 16 bytes; !valid = src-size 0:
//                                    zero-fill, nothing read
//   cp_async_commit()                cp.async.commit_group
//   cp_async_wait_all()              cp.async.wait_all (commit + wait_group 0)
//   cp_async_wait_group<N>()         cp.async.wait_group N: all but the newest N groups landed
//   ldsm_x4(r, p), ldsm_x4_t(r, p)   ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16: lanes
//                                    8j … 8j+7 give the 16-byte-aligned row addresses of matrix
//                                    j; register j of lane l holds row l/4, columns 2(l%4), +1
//                                    (.trans: rows 2(l%4), +1 of column l/4), low half first
//   mma_16816(c, a, b0, b1)          mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, c += a·b
//                                    (g = lane/4, t = lane%4: a0 = A[g][2t..], a1 = A[g+8][2t..],
//                                    a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]; b0 = B[2t..2t+1][g],
//                                    b1 = B[2t+8..2t+9][g]; c0,c1 = C[g][2t..], c2,c3 = C[g+8][2t..])
//   pack_bf16(lo, hi)                cvt.rn.bf16x2.f32 d, hi, lo: two floats rounded to nearest
//                                    even, `lo` in the low half (the instruction's FIRST source
//                                    goes to the UPPER half)
//   shfl_xor(v, o)                   __shfl_xor_sync over the full warp
//   fast_exp2(x)                     ex2.approx.ftz.f32 (2^x; −inf → +0)
//   atomic_add(p, v)                 atomicAdd on fp32 global memory
//   atomic_add_v2(p, a, b)           p[0] += a, p[1] += b, each atomically, on fp32 global memory
//                                    (p 8-byte aligned): one vector red.global.add.v2.f32 on
//                                    sm_90, two scalar atomics before
//   ld_bf16x2(p), st_b32(p, v)       4-byte vector load / store (p must be 4-byte aligned)
//   ld_v4(p), st_v4(p, v)            16-byte vector load / store (ld/st.v4.u32; p must be 16-byte
//                                    aligned; the emulator also checks the 16 bytes are mapped)
#pragma once

#include <stdint.h>

#define KILN_FULL_MASK 0xffffffffu

#ifdef __CUDACC__
// =============================== nvcc: the PTX itself ===============================

#include <cuda_bf16.h>

#define KILN_SHARED(T, name, n) __shared__ T name[n]
#define KILN_DYNAMIC_SHARED(T, name) extern __shared__ __align__(128) T name[]

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
                 "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    uint32_t d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

__device__ __forceinline__ float shfl_xor(float v, int o) {
    return __shfl_xor_sync(KILN_FULL_MASK, v, o);
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }

__device__ __forceinline__ void atomic_add_v2(float* p, float a, float b) {
#if __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(__cvta_generic_to_global(p)), "f"(a),
                 "f"(b)
                 : "memory");
#else
    atomicAdd(p, a);
    atomicAdd(p + 1, b);
#endif
}

__device__ __forceinline__ __nv_bfloat162 ld_bf16x2(const __nv_bfloat16* p) {
    return *reinterpret_cast<const __nv_bfloat162*>(p);
}
__device__ __forceinline__ void st_b32(void* p, uint32_t v) {
    *reinterpret_cast<uint32_t*>(p) = v;
}

__device__ __forceinline__ uint4 ld_v4(const void* p) {
    return *reinterpret_cast<const uint4*>(p);
}
__device__ __forceinline__ void st_v4(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

#else
// =============================== the emulator ===============================
// Each function takes the call site as trailing defaulted arguments, so every fault and every
// warp-collective mismatch names the line of kernel code that caused it.

#ifndef KILN_EMU
#error "intrinsics.cuh: compile with nvcc, or with -DKILN_EMU and the emulator's shim"
#endif

#define KILN_SITE const char *kiln_file = __builtin_FILE(), int kiln_line = __builtin_LINE()

#define KILN_SHARED(T, name, n)                                                               \
    static char kiln_shared_key_##name;                                                       \
    T* const name = static_cast<T*>(kiln_emu::static_shared(&kiln_shared_key_##name,          \
                                                            sizeof(T) * (size_t)(n), #name,  \
                                                            __FILE__, __LINE__))
#define KILN_DYNAMIC_SHARED(T, name) \
    T* const name = static_cast<T*>(kiln_emu::dynamic_shared(__FILE__, __LINE__))

namespace kiln_emu {
// Collective bodies (runtime.cpp): they see all 32 lanes' inputs at once.
void shfl_xor_all(int, const void* const* in, void* const* out, uint32_t mask, const char* file,
                  int line);
void ldmatrix_all(int trans, const void* const* in, void* const* out, uint32_t mask,
                  const char* file, int line);
void mma_all(int, const void* const* in, void* const* out, uint32_t mask, const char* file,
             int line);
void atomic_add_f32(float* p, float v);
}  // namespace kiln_emu

inline void cp_async_16(void* dst, const void* src, bool valid, KILN_SITE) {
    kiln_emu::cp_async(dst, src, 16, valid ? 16 : 0, kiln_file, kiln_line);
}
inline void cp_async_commit() { kiln_emu::cp_async_commit(); }
inline void cp_async_wait_all(KILN_SITE) {
    kiln_emu::cp_async_commit();
    kiln_emu::cp_async_wait(0, kiln_file, kiln_line);
}
template <int N>
inline void cp_async_wait_group(KILN_SITE) {
    kiln_emu::cp_async_wait(N, kiln_file, kiln_line);
}

inline void ldsm_x4(uint32_t (&r)[4], const void* p, KILN_SITE) {
    static const kiln_emu::CollectiveOp op{kiln_emu::Collective::LdMatrix, 0,
                                           kiln_emu::ldmatrix_all};
    kiln_emu::warp_collective(op, KILN_FULL_MASK, &p, r, kiln_file, kiln_line);
}
inline void ldsm_x4_t(uint32_t (&r)[4], const void* p, KILN_SITE) {
    static const kiln_emu::CollectiveOp op{kiln_emu::Collective::LdMatrix, 1,
                                           kiln_emu::ldmatrix_all};
    kiln_emu::warp_collective(op, KILN_FULL_MASK, &p, r, kiln_file, kiln_line);
}

struct KilnMmaIn {
    uint32_t a[4];
    uint32_t b[2];
    float c[4];
};
inline void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                      KILN_SITE) {
    static const kiln_emu::CollectiveOp op{kiln_emu::Collective::Mma, 0, kiln_emu::mma_all};
    const KilnMmaIn in{{a[0], a[1], a[2], a[3]}, {b0, b1}, {c[0], c[1], c[2], c[3]}};
    kiln_emu::warp_collective(op, KILN_FULL_MASK, &in, c, kiln_file, kiln_line);
}

inline uint32_t pack_bf16(float lo, float hi) {
    return (uint32_t)__float2bfloat16(lo).bits | ((uint32_t)__float2bfloat16(hi).bits << 16);
}

struct KilnShflIn {
    float v;
    int lane_mask;
};
inline float shfl_xor(float v, int o, KILN_SITE) {
    static const kiln_emu::CollectiveOp op{kiln_emu::Collective::Shfl, 0, kiln_emu::shfl_xor_all};
    const KilnShflIn in{v, o};
    float out;
    kiln_emu::warp_collective(op, KILN_FULL_MASK, &in, &out, kiln_file, kiln_line);
    return out;
}

inline float fast_exp2(float x) { return exp2f(x); }

inline void atomic_add(float* p, float v) { kiln_emu::atomic_add_f32(p, v); }

inline void atomic_add_v2(float* p, float a, float b, KILN_SITE) {
    if ((uintptr_t)p % 8 != 0) {
        kiln_emu::fault(kiln_file, kiln_line, "misaligned 8-byte vector atomic at %p", (void*)p);
    }
    kiln_emu::atomic_add_f32(p, a);
    kiln_emu::atomic_add_f32(p + 1, b);
}

inline __nv_bfloat162 ld_bf16x2(const __nv_bfloat16* p, KILN_SITE) {
    if ((uintptr_t)p % 4 != 0) {
        kiln_emu::fault(kiln_file, kiln_line, "misaligned 4-byte vector load at %p", (const void*)p);
    }
    __nv_bfloat162 v;
    memcpy(&v, p, 4);
    return v;
}
inline void st_b32(void* p, uint32_t v, KILN_SITE) {
    if ((uintptr_t)p % 4 != 0) {
        kiln_emu::fault(kiln_file, kiln_line, "misaligned 4-byte vector store at %p", p);
    }
    memcpy(p, &v, 4);
}

inline uint4 ld_v4(const void* p, KILN_SITE) {
    kiln_emu::vector_access(p, false, kiln_file, kiln_line);
    uint4 v;
    memcpy(&v, p, 16);
    return v;
}
inline void st_v4(void* p, uint4 v, KILN_SITE) {
    kiln_emu::vector_access(p, true, kiln_file, kiln_line);
    memcpy(p, &v, 16);
}

#endif
