// kernels/rmsnorm.cu — RMSNorm forward and backward (CPU twins: `rmsnorm`, `rmsnorm_bwd` in
// src/backend/cpu/mod.rs). bf16 storage, fp32 math; every reduction in a fixed order.
//
// rmsnorm_fwd(bf16* out, float* rstd, const bf16* x, const bf16* w, int N, int d, float eps)
//   x, out [N, d]; w [d]; rstd [N] (fp32, saved for the backward).
//   rstd[r] = 1 / sqrt(mean_j(x[r,j]²) + eps);  out[r,j] = x[r,j] · rstd[r] · w[j].
//   Launch: grid (N), block (256), dynamic shared 0.
//
// Both kernels take 16-byte accesses (8 bf16) when d mod 8 = 0 and the arrays are aligned, and
// go element by element otherwise.
//
// rmsnorm_bwd(bf16* dx, float* dw_partial, const bf16* dout, const bf16* x, const bf16* w,
//             const float* rstd, int N, int d, int rows_per_block)
//   dout, x, dx [N, d]; w [d]; rstd [N]; dw_partial [ceil(N / rows_per_block), d] (fp32 scratch).
//   Block b owns rows b·rows_per_block .. min(N, (b+1)·rows_per_block) - 1. Per row r, with
//   g = dout[r,:]·w and c = rstd³ · mean_j(dout·w·x):
//     dx[r,j] += rstd·w[j]·dout[r,j] − c·x[r,j]      (accumulates into the existing bf16 dx)
//   and dw_partial[b, j] = Σ over the block's rows, in row order, of dout[r,j]·x[r,j]·rstd[r]
//   (overwritten). Then reduce_partials_add adds the partials into the fp32 dw. On the vector path
//   (d ≤ 8·RMS_BWD_CHUNKS·blockDim.x) each thread keeps its columns' partials in registers and
//   writes them once; otherwise they are accumulated in dw_partial row by row. The sums are the
//   same, in the same order, either way.
//   Launch: grid (ceil(N / rows_per_block)), block (256), dynamic shared 0.
//   rows_per_block = 32 reproduces the CPU's partial grouping (its BLOCK_ROWS).
//
// reduce_partials_add(float* dst, const float* partials, int nparts, int d)
//   dst [d] (fp32, accumulated); partials [nparts, d].
//   dst[j] = (((dst[j] + partials[0,j]) + partials[1,j]) + …) — the CPU's order.
//   Launch: grid (ceil(d / 256)), block (256), dynamic shared 0.
#include "common.cuh"

// 8-element chunks per thread the backward keeps in registers (d ≤ 8192 at 256 threads).
#define RMS_BWD_CHUNKS 4

extern "C" __global__ void rmsnorm_fwd(bf16* out, float* rstd, const bf16* x, const bf16* w,
                                       int N, int d, float eps) {
    KILN_SHARED(float, scratch, 32);
    const int row = blockIdx.x;
    if (row >= N) return;  // block-uniform
    const size_t base = (size_t)row * d;
    const bool vec = d % 8 == 0 && aligned16(out) && aligned16(x) && aligned16(w);
    const int chunks = vec ? d / 8 : 0;

    float ss = 0.0f;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        float xs[8];
        load8_bf16(x + base + 8 * c, xs);
#pragma unroll
        for (int e = 0; e < 8; ++e) ss += xs[e] * xs[e];
    }
    for (int j = 8 * chunks + threadIdx.x; j < d; j += blockDim.x) {
        const float xj = load_bf16(x, base + j);
        ss += xj * xj;
    }
    ss = block_reduce_sum(ss, scratch);

    const float inv_d = (float)(1.0 / (double)d);
    const float r = 1.0f / sqrtf(ss * inv_d + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        float xs[8], ws[8];
        load8_bf16(x + base + 8 * c, xs);
        load8_bf16(w + 8 * c, ws);
#pragma unroll
        for (int e = 0; e < 8; ++e) xs[e] = xs[e] * r * ws[e];
        store8_bf16(out + base + 8 * c, xs);
    }
    for (int j = 8 * chunks + threadIdx.x; j < d; j += blockDim.x) {
        store_bf16(out, base + j, load_bf16(x, base + j) * r * load_bf16(w, j));
    }
}

extern "C" __global__ void rmsnorm_bwd(bf16* dx, float* dw_partial, const bf16* dout,
                                       const bf16* x, const bf16* w, const float* rstd, int N,
                                       int d, int rows_per_block) {
    KILN_SHARED(float, scratch, 32);
    const size_t part = (size_t)blockIdx.x * d;
    const float inv_d = (float)(1.0 / (double)d);
    const int first = blockIdx.x * rows_per_block;
    const int last = min(first + rows_per_block, N);  // exclusive; block-uniform bounds
    const bool vec = d % 8 == 0 && d / 8 <= RMS_BWD_CHUNKS * (int)blockDim.x && aligned16(dx) &&
                     aligned16(dw_partial) && aligned16(dout) && aligned16(x) && aligned16(w);

    if (vec) {
        const int chunks = d / 8;
        float acc[RMS_BWD_CHUNKS][8];
#pragma unroll
        for (int k = 0; k < RMS_BWD_CHUNKS; ++k)
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[k][e] = 0.0f;
        for (int row = first; row < last; ++row) {
            const size_t base = (size_t)row * d;
            const float r = rstd[row];
            float s = 0.0f;  // Σ_j dout·w·x
#pragma unroll
            for (int k = 0; k < RMS_BWD_CHUNKS; ++k) {
                const int c = threadIdx.x + k * blockDim.x;
                if (c < chunks) {  // a guard, not a break: acc stays in registers
                    float g[8], ws[8], xs[8];
                    load8_bf16(dout + base + 8 * c, g);
                    load8_bf16(w + 8 * c, ws);
                    load8_bf16(x + base + 8 * c, xs);
#pragma unroll
                    for (int e = 0; e < 8; ++e) s += g[e] * ws[e] * xs[e];
                }
            }
            s = block_reduce_sum(s, scratch);
            const float cr = r * r * r * s * inv_d;
#pragma unroll
            for (int k = 0; k < RMS_BWD_CHUNKS; ++k) {
                const int c = threadIdx.x + k * blockDim.x;
                if (c < chunks) {
                    float g[8], ws[8], xs[8], dxs[8];
                    load8_bf16(dout + base + 8 * c, g);
                    load8_bf16(w + 8 * c, ws);
                    load8_bf16(x + base + 8 * c, xs);
                    load8_bf16(dx + base + 8 * c, dxs);
#pragma unroll
                    for (int e = 0; e < 8; ++e) {
                        dxs[e] = dxs[e] + (r * ws[e] * g[e] - cr * xs[e]);
                        acc[k][e] += g[e] * xs[e] * r;
                    }
                    store8_bf16(dx + base + 8 * c, dxs);
                }
            }
        }
#pragma unroll
        for (int k = 0; k < RMS_BWD_CHUNKS; ++k) {
            const int c = threadIdx.x + k * blockDim.x;
            if (c < chunks) {
                store4_f32(dw_partial + part + 8 * c, acc[k]);
                store4_f32(dw_partial + part + 8 * c + 4, acc[k] + 4);
            }
        }
        return;
    }

    // Each thread owns columns j ≡ threadIdx.x (mod blockDim.x) of this block's partial row, so
    // the read-modify-writes below never race.
    for (int j = threadIdx.x; j < d; j += blockDim.x) dw_partial[part + j] = 0.0f;
    for (int row = first; row < last; ++row) {
        const size_t base = (size_t)row * d;
        const float r = rstd[row];
        float s = 0.0f;  // Σ_j dout·w·x
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            s += load_bf16(dout, base + j) * load_bf16(w, j) * load_bf16(x, base + j);
        }
        s = block_reduce_sum(s, scratch);
        const float cr = r * r * r * s * inv_d;
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            const float g = load_bf16(dout, base + j);
            const float wj = load_bf16(w, j);
            const float xj = load_bf16(x, base + j);
            const float dxj = load_bf16(dx, base + j);
            store_bf16(dx, base + j, dxj + (r * wj * g - cr * xj));
            dw_partial[part + j] += g * xj * r;
        }
    }
}

extern "C" __global__ void reduce_partials_add(float* dst, const float* partials, int nparts,
                                               int d) {
    const size_t j = grid_stride_start();
    for (size_t jj = j; jj < (size_t)d; jj += grid_stride_step()) {
        float acc = dst[jj];
        for (int p = 0; p < nparts; ++p) acc += partials[(size_t)p * d + jj];
        dst[jj] = acc;
    }
}
