// kernels/swiglu.cu — SwiGLU forward and backward (CPU twins: `swiglu`, `swiglu_bwd` in
// src/backend/cpu/mod.rs). All tensors are flat bf16 arrays of n elements.
//
// swiglu_fwd(bf16* out, const bf16* gate, const bf16* up, int n)
//   out = silu(g)·u with silu(g) = g·σ(g), σ(g) = 1 / (1 + exp(−g)) (exp(−g) → inf gives σ = 0,
//   → 0 gives σ = 1: no NaN for any finite g).
// swiglu_bwd(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up, int n)
//   σ = σ(g); dup = dout·g·σ; dgate = dout·u·σ·(1 + g·(1 − σ))  (both overwritten).
//
// Launch (both): 1-D grid-stride, block (256), grid (min(ceil(n / 8 / 256), e.g. 65535)), shared
// 0. When every array is 16-byte aligned, thread t handles 8-element chunks t, t + stride, … with
// 16-byte accesses, and the n mod 8 tail element by element; otherwise every element goes the
// scalar way. 32-bit indices (n is an int).
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_ref(float g) { return 1.0f / (1.0f + expf(-g)); }

__device__ __forceinline__ float swiglu_one(float g, float u) { return g * sigmoidf_ref(g) * u; }

extern "C" __global__ void swiglu_fwd(bf16* out, const bf16* gate, const bf16* up, int n) {
    const unsigned chunks = aligned16(out) && aligned16(gate) && aligned16(up) ? n / 8 : 0;
    for (unsigned c = grid_start32(); c < chunks; c += grid_step32()) {
        float g[8], u[8], o[8];
        load8_bf16(gate + 8 * c, g);
        load8_bf16(up + 8 * c, u);
#pragma unroll
        for (int e = 0; e < 8; ++e) o[e] = swiglu_one(g[e], u[e]);
        store8_bf16(out + 8 * c, o);
    }
    for (unsigned i = 8 * chunks + grid_start32(); i < (unsigned)n; i += grid_step32()) {
        store_bf16(out, i, swiglu_one(load_bf16(gate, i), load_bf16(up, i)));
    }
}

// dgate and dup of one element.
__device__ __forceinline__ void swiglu_grad(float d, float g, float u, float& dg, float& du) {
    const float sg = sigmoidf_ref(g);
    du = d * g * sg;
    dg = d * u * sg * (1.0f + g * (1.0f - sg));
}

extern "C" __global__ void swiglu_bwd(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate,
                                      const bf16* up, int n) {
    const bool vec = aligned16(dgate) && aligned16(dup) && aligned16(dout) && aligned16(gate) &&
                     aligned16(up);
    const unsigned chunks = vec ? n / 8 : 0;
    for (unsigned c = grid_start32(); c < chunks; c += grid_step32()) {
        float d[8], g[8], u[8], dg[8], du[8];
        load8_bf16(dout + 8 * c, d);
        load8_bf16(gate + 8 * c, g);
        load8_bf16(up + 8 * c, u);
#pragma unroll
        for (int e = 0; e < 8; ++e) swiglu_grad(d[e], g[e], u[e], dg[e], du[e]);
        store8_bf16(dgate + 8 * c, dg);
        store8_bf16(dup + 8 * c, du);
    }
    for (unsigned i = 8 * chunks + grid_start32(); i < (unsigned)n; i += grid_step32()) {
        float dg, du;
        swiglu_grad(load_bf16(dout, i), load_bf16(gate, i), load_bf16(up, i), dg, du);
        store_bf16(dup, i, du);
        store_bf16(dgate, i, dg);
    }
}
