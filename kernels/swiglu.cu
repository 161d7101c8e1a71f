// kernels/swiglu.cu — SwiGLU forward and backward (CPU twins: `swiglu`, `swiglu_bwd` in
// src/backend/cpu/mod.rs). All tensors are flat bf16 arrays of n elements.
//
// swiglu_fwd(bf16* out, const bf16* gate, const bf16* up, int n)
//   out = silu(g)·u with silu(g) = g·σ(g), σ(g) = 1 / (1 + exp(−g)) (exp(−g) → inf gives σ = 0,
//   → 0 gives σ = 1: no NaN for any finite g).
// swiglu_bwd(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up, int n)
//   σ = σ(g); dup = dout·g·σ; dgate = dout·u·σ·(1 + g·(1 − σ))  (both overwritten).
//
// Launch (both): 1-D grid-stride, block (256), grid (min(ceil(n / 256), e.g. 65535)), shared 0.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_ref(float g) { return 1.0f / (1.0f + expf(-g)); }

extern "C" __global__ void swiglu_fwd(bf16* out, const bf16* gate, const bf16* up, int n) {
    for (size_t i = grid_stride_start(); i < (size_t)n; i += grid_stride_step()) {
        const float g = load_bf16(gate, i);
        const float u = load_bf16(up, i);
        store_bf16(out, i, g * sigmoidf_ref(g) * u);
    }
}

extern "C" __global__ void swiglu_bwd(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate,
                                      const bf16* up, int n) {
    for (size_t i = grid_stride_start(); i < (size_t)n; i += grid_stride_step()) {
        const float d = load_bf16(dout, i);
        const float g = load_bf16(gate, i);
        const float u = load_bf16(up, i);
        const float sg = sigmoidf_ref(g);
        store_bf16(dup, i, d * g * sg);
        store_bf16(dgate, i, d * u * sg * (1.0f + g * (1.0f - sg)));
    }
}
