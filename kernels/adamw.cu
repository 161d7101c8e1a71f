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
//   Launch: 1-D grid-stride, block (256), grid (min(ceil(n / 256), e.g. 65535)), shared 0.
#include "common.cuh"

extern "C" __global__ void adamw(float* p, bf16* p_bf16, const float* g, float* m, float* v,
                                 int n, float lr, float beta1, float beta2, float eps,
                                 float weight_decay, float bias_c1, float bias_c2,
                                 float grad_scale) {
    const double lr_d = (double)lr;
    const double b1_d = (double)beta1;
    const float decay = (float)(1.0 - lr_d * (double)weight_decay);
    const float lerp_w = (float)(1.0 - b1_d);
    const bool lerp_from_start = fabs(1.0 - b1_d) < 0.5;
    const float one_minus_lerp_w = __fsub_rn(1.0f, lerp_w);
    const float one_minus_b2 = (float)(1.0 - (double)beta2);
    const float neg_step = (float)(-(lr_d / (double)bias_c1));
    const float bc2_sqrt = (float)sqrt((double)bias_c2);

    for (size_t i = grid_stride_start(); i < (size_t)n; i += grid_stride_step()) {
        const float gi = __fmul_rn(g[i], grad_scale);
        float pi = __fmul_rn(p[i], decay);
        float mi = m[i];
        mi = lerp_from_start ? __fadd_rn(mi, __fmul_rn(lerp_w, __fsub_rn(gi, mi)))
                             : __fsub_rn(gi, __fmul_rn(__fsub_rn(gi, mi), one_minus_lerp_w));
        float vi = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(__fmul_rn(one_minus_b2, gi), gi));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        pi = __fadd_rn(pi, __fdiv_rn(__fmul_rn(neg_step, mi), denom));
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        p_bf16[i] = __float2bfloat16(pi);
    }
}
