// kernels/adamw.cu — one AdamW step on fp32 master weights, refreshing their bf16 copy (CPU
// twin: `adamw` in src/backend/cpu/mod.rs, PyTorch's single-tensor order).
//
// adamw(float* p, bf16* p_bf16, const float* g, float* m, float* v, int n, float lr, float beta1,
//       float beta2, float eps, float weight_decay, float bias_c1, float bias_c2,
//       float grad_scale)
//   p, m, v, g [n] (fp32); p_bf16 [n] (bf16, overwritten with bf16(p) after the update).
//   bias_c1 = 1 − β1ᵗ and bias_c2 = 1 − β2ᵗ (t the 1-based step), formed by the host in f64
//   from the f32 betas and rounded to f32.
//   The per-step scalars are formed in f64 and rounded to f32 once, as the CPU does:
//     decay = 1 − lr·wd, lerp_w = 1 − β1, one_minus_b2 = 1 − β2,
//     neg_step = −(lr / bias_c1), bc2_sqrt = sqrt(bias_c2).
//   Per element, in the CPU's order and rounding (the _rn intrinsics keep nvcc from fusing
//   multiply-adds, so each operation rounds exactly as the CPU's does):
//     gi = g·grad_scale; p = p·decay;
//     m = |lerp_w| < 0.5 ? m + lerp_w·(gi − m) : gi − (gi − m)·(1 − lerp_w);
//     v = v·β2 + (one_minus_b2·gi)·gi;
//     p = p + (neg_step·m) / (sqrt(v) / bc2_sqrt + eps);  p_bf16 = bf16(p).
//   Launch: 1-D grid-stride, block (256), grid (min(ceil(n / 8 / 256), e.g. 65535)), shared 0.
//   Eight elements per thread and step with 16-byte accesses when every array is 16-byte
//   aligned, the tail (and unaligned arrays) element by element; the same arithmetic on both.
#include "common.cuh"

// The per-step scalars (see above), formed once per thread.
struct AdamwScalars {
    float decay, lerp_w, one_minus_lerp_w, beta2, one_minus_b2, neg_step, bc2_sqrt, eps,
        grad_scale;
    bool lerp_from_start;
};

// One element's update in the CPU's order and rounding.
__device__ __forceinline__ void adamw_one(const AdamwScalars& k, float g, float& p, float& m,
                                          float& v) {
    const float gi = __fmul_rn(g, k.grad_scale);
    float pi = __fmul_rn(p, k.decay);
    float mi = m;
    mi = k.lerp_from_start ? __fadd_rn(mi, __fmul_rn(k.lerp_w, __fsub_rn(gi, mi)))
                           : __fsub_rn(gi, __fmul_rn(__fsub_rn(gi, mi), k.one_minus_lerp_w));
    const float vi =
        __fadd_rn(__fmul_rn(v, k.beta2), __fmul_rn(__fmul_rn(k.one_minus_b2, gi), gi));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), k.bc2_sqrt), k.eps);
    pi = __fadd_rn(pi, __fdiv_rn(__fmul_rn(k.neg_step, mi), denom));
    p = pi;
    m = mi;
    v = vi;
}

extern "C" __global__ void adamw(float* p, bf16* p_bf16, const float* g, float* m, float* v,
                                 int n, float lr, float beta1, float beta2, float eps,
                                 float weight_decay, float bias_c1, float bias_c2,
                                 float grad_scale) {
    const double lr_d = (double)lr;
    const double b1_d = (double)beta1;
    AdamwScalars k;
    k.decay = (float)(1.0 - lr_d * (double)weight_decay);
    k.lerp_w = (float)(1.0 - b1_d);
    k.lerp_from_start = fabs(1.0 - b1_d) < 0.5;
    k.one_minus_lerp_w = __fsub_rn(1.0f, k.lerp_w);
    k.beta2 = beta2;
    k.one_minus_b2 = (float)(1.0 - (double)beta2);
    k.neg_step = (float)(-(lr_d / (double)bias_c1));
    k.bc2_sqrt = (float)sqrt((double)bias_c2);
    k.eps = eps;
    k.grad_scale = grad_scale;

    const bool vec = aligned16(p) && aligned16(p_bf16) && aligned16(g) && aligned16(m) &&
                     aligned16(v);
    const unsigned chunks = vec ? n / 8 : 0;
    for (unsigned c = grid_start32(); c < chunks; c += grid_step32()) {
        float pp[8];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const unsigned o = 8 * c + 4 * h;
            float p4[4], g4[4], m4[4], v4[4];
            load4_f32(p + o, p4);
            load4_f32(g + o, g4);
            load4_f32(m + o, m4);
            load4_f32(v + o, v4);
#pragma unroll
            for (int e = 0; e < 4; ++e) adamw_one(k, g4[e], p4[e], m4[e], v4[e]);
            store4_f32(p + o, p4);
            store4_f32(m + o, m4);
            store4_f32(v + o, v4);
#pragma unroll
            for (int e = 0; e < 4; ++e) pp[4 * h + e] = p4[e];
        }
        store8_bf16(p_bf16 + 8 * c, pp);
    }
    for (unsigned i = 8 * chunks + grid_start32(); i < (unsigned)n; i += grid_step32()) {
        float pi = p[i], mi = m[i], vi = v[i];
        adamw_one(k, g[i], pi, mi, vi);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        p_bf16[i] = __float2bfloat16(pi);
    }
}
