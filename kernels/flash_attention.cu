// kernels/flash_attention.cu — FlashAttention-2-style attention on tensor cores: bf16 inputs,
// fp32 accumulation (mma.sync m16n8k16), online softmax, causal or not, document masking for
// packed sequences, GQA without repeating K/V, head dims 64 and 128, any sequence length.
// CPU twins: `attention` and `attention_bwd` in src/backend/cpu/mod.rs; the simple kernels in
// attention.cu are the GPU reference.
//
// Shapes and layouts (all row-major, as attention.cu):
//   q, out, dout, dq  [B, T, H, D]    bf16     element (b, t, h, d) at ((b·T + t)·H + h)·D + d
//   k, v, dk, dv      [B, T, Hkv, D]  bf16
//   lse, delta        [B, H, T]       fp32     (lse in natural log, as the trait says)
//   dq_acc            [B, T, H, D]    fp32     (atomic dQ accumulation)
//   meta              [3, B, T]       int      doc ids; run_start; run_end
// Query head h reads kv head g = h / (H / Hkv). scale = 1/sqrt(D) from the host.
// Query t attends key s iff doc[s] == doc[t] and (not causal or s ≤ t).
//
// meta: the host writes the doc ids, and for every position the half-open run [run_start,
// run_end) of equal doc ids around it. When every doc id occupies a single run (packed
// sequences: the loader's case) the kernels use the runs to skip whole tiles and pass
// `contiguous = 1`; otherwise the host writes run_start = 0, run_end = T, passes 0, and every
// tile is masked element by element (still exact, only slower).
//
// Tiling. Forward: a block owns BR query rows of one (b, h), 64 or 128 (FlashAttention-2's
// block), a warp per 16 rows (4 or 8 warps); the host picks BR (`CudaBackend`'s
// `flash_fwd_rows`, 128 by default). Deterministic dQ: a block of 4 warps owns 64 query rows.
// The backward dK/dV kernel: a block owns 64 key rows of one (b, g), each warp 16, and walks the
// query tiles (32 rows) of every query head of the group, so GQA heads are summed in registers
// in a fixed order. Shared-memory tiles are stored with a 16-byte-chunk XOR swizzle (chunk c of
// row r at c ^ (r & 7)) so ldmatrix reads are free of bank conflicts. Rows past T are loaded as
// zeros (cp.async zero-fill) and masked. The forward double-buffers its key tiles: K, V and the
// doc ids of key tile i + 1 land (cp.async) in one buffer while tile i is computed from the
// other.
//
// Kernels (block 128 threads unless said; dynamic shared memory as `flash_smem` in
// src/backend/cuda/mod.rs; the host opts in above 48 KiB):
//   flash_fwd_d{64,128}_r{64,128}(out, lse, q, k, v, meta, B, T, H, Hkv, scale, causal,
//                                 contiguous)
//     BR = 64 or 128 query rows per block, block BR/16·32 threads, grid (ceil(T/BR), H, B).
//     Writes out and lse.
//   flash_bwd_pre(delta, dq_acc, dout, out, B, T, H, D, zero_dq)
//     delta[b,h,t] = Σ_d dout·out (one warp per row); zeroes the dq_acc row when zero_dq.
//     grid (ceil(B·T·H / 4)), block 128.
//   flash_bwd_dkdv_d{64,128}(dk, dv, dq_acc, dout, q, k, v, lse, delta, meta, B, T, H, Hkv,
//                            scale, causal, contiguous, accumulate_dq)
//     grid (ceil(T/64), Hkv, B). Overwrites dk, dv. With accumulate_dq, adds scale·dS·K into
//     dq_acc with fp32 atomics (the fast path; summation order varies run to run).
//   flash_bwd_dq_d{64,128}(dq, dout, q, k, v, lse, delta, meta, B, T, H, Hkv, scale, causal,
//                          contiguous)
//     grid (ceil(T/64), H, B). dQ without atomics, recomputing P and dP per key tile in a fixed
//     order: the deterministic mode (bitwise repeatable with the dK/dV kernel run without
//     accumulate_dq).
//   flash_dq_convert(dq, dq_acc, n): dq = bf16(dq_acc), grid-stride.
#include "common.cuh"

#include <stdint.h>

namespace {

constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Element offset of (row r, column col) in a swizzled [rows, D] tile; col a multiple of 8.
template <int D>
__device__ __forceinline__ int sw(int r, int col) {
    return r * D + ((((col >> 3) ^ (r & 7))) << 3);
}

// Rows row0 … row0+R−1 of one head of a [B, T, heads, D] tensor into a swizzled tile; rows at or
// past T become zeros. Issues cp.async only (the caller commits and waits).
template <int R, int D, int NT = kThreads>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, int b, int T, int heads,
                                          int head, int row0) {
    constexpr int kChunks = D / 8;
    for (int i = threadIdx.x; i < R * kChunks; i += NT) {
        const int r = i / kChunks;
        const int c = i % kChunks;
        const int t = row0 + r;
        const bool ok = t < T;
        const bf16* src = g + ((((size_t)b * T + (ok ? t : 0)) * heads + head) * D + c * 8);
        cp_async_16(s + sw<D>(r, c * 8), src, ok);
    }
}

// A fragments (16×16 at rows r0, cols c0) from a swizzled tile.
template <int D>
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const bf16* s, int r0, int c0) {
    const int lane = threadIdx.x & 31;
    ldsm_x4(a, s + sw<D>(r0 + (lane & 7) + ((lane >> 3) & 1) * 8, c0 + (lane >> 4) * 8));
}
// B fragments of two n-tiles (rows n0 … n0+15 of the tile are the n index, cols c0 … c0+15
// the k index): b[0], b[1] for n0 … n0+7; b[2], b[3] for n0+8 … n0+15.
template <int D>
__device__ __forceinline__ void frag_b_nk(uint32_t (&b)[4], const bf16* s, int n0, int c0) {
    const int lane = threadIdx.x & 31;
    ldsm_x4(b, s + sw<D>(n0 + (lane & 7) + (lane >> 4) * 8, c0 + ((lane >> 3) & 1) * 8));
}
// B fragments of two n-tiles from a tile whose rows are the k index (k0 … k0+15) and whose
// columns are the n index (n0 … n0+15): b[0], b[1] for n0 … n0+7; b[2], b[3] for n0+8 ….
template <int D>
__device__ __forceinline__ void frag_b_kn(uint32_t (&b)[4], const bf16* s, int k0, int n0) {
    const int lane = threadIdx.x & 31;
    ldsm_x4_t(b, s + sw<D>(k0 + (lane & 7) + ((lane >> 3) & 1) * 8, n0 + (lane >> 4) * 8));
}

// The accumulator of two adjacent n8 tiles (16 rows × 16 k) as an A fragment.
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&lo)[4],
                                         const float (&hi)[4]) {
    a[0] = pack_bf16(lo[0], lo[1]);
    a[1] = pack_bf16(lo[2], lo[3]);
    a[2] = pack_bf16(hi[0], hi[1]);
    a[3] = pack_bf16(hi[2], hi[3]);
}

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, shfl_xor(v, 1));
    return fmaxf(v, shfl_xor(v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += shfl_xor(v, 1);
    return v + shfl_xor(v, 2);
}

struct Meta {
    const int* doc;    // [T] of this sequence
    const int* start;  // run start
    const int* end;    // run end
};
__device__ __forceinline__ Meta meta_of(const int* meta, int B, int T, int b) {
    const size_t bt = (size_t)B * T;
    const size_t off = (size_t)b * T;
    return Meta{meta + off, meta + bt + off, meta + 2 * bt + off};
}

// Whether every (query, key) pair of the tiles [q0, q1] × [k0, k1] (inclusive, all < T) is
// allowed, so the element mask can be skipped. Block-uniform.
__device__ __forceinline__ bool tile_unmasked(const Meta& m, int q0, int q1, int k0, int k1,
                                              int causal, int contiguous) {
    if (causal && k1 > q0) return false;
    if (!contiguous) return false;
    const int d = m.doc[q0];
    return m.doc[q1] == d && m.doc[k0] == d && m.doc[k1] == d;
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

template <int D, int BR>
__device__ void fwd(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q,
                    const bf16* __restrict__ k, const bf16* __restrict__ v,
                    const int* __restrict__ meta, int B, int T, int H, int Hkv, float scale,
                    int causal, int contiguous) {
    constexpr int BC = 64;
    constexpr int NT = BR / 16 * 32;  // a warp per 16 query rows
    KILN_DYNAMIC_SHARED(unsigned char, smem);
    bf16* qs = reinterpret_cast<bf16*>(smem);
    bf16* ks = qs + BR * D;      // two K tiles
    bf16* vs = ks + 2 * BC * D;  // two V tiles
    int* kdoc = reinterpret_cast<int*>(vs + 2 * BC * D);  // two key tiles' doc ids

    const int q0 = blockIdx.x * BR;
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    if (q0 >= T) return;
    const int g = h / (H / Hkv);
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const Meta m = meta_of(meta, B, T, b);
    const int q_last = min(q0 + BR, T) - 1;
    const int kv_lo = (m.start[q0] / BC) * BC;
    const int kv_hi = causal ? q_last + 1 : m.end[q_last];
    const int tiles = kv_hi > kv_lo ? (kv_hi - kv_lo + BC - 1) / BC : 0;

    // Key tile i (K, V and its doc ids) lives in buffer i & 1. Q and tile 0 are fetched first;
    // at the top of tile i, once it has landed and every warp has passed the barrier (so is done
    // with tile i − 1's buffer), tile i + 1 is fetched into that buffer and lands while tile i is
    // computed: a whole tile of lookahead and one barrier per tile.
    auto fetch = [&](int tile, int buf) {
        const int k0 = kv_lo + tile * BC;
        load_tile<BC, D, NT>(ks + buf * BC * D, k, b, T, Hkv, g, k0);
        load_tile<BC, D, NT>(vs + buf * BC * D, v, b, T, Hkv, g, k0);
        if (threadIdx.x < BC) kdoc[buf * BC + threadIdx.x] = m.doc[min(k0 + (int)threadIdx.x, T - 1)];
    };
    load_tile<BR, D, NT>(qs, q, b, T, H, h, q0);
    if (tiles > 0) fetch(0, 0);
    cp_async_commit();
    const int row_a = q0 + warp * 16 + (lane >> 2);
    const int row_b = row_a + 8;
    const int doc_a = m.doc[min(row_a, T - 1)];
    const int doc_b = m.doc[min(row_b, T - 1)];
    cp_async_wait_all();
    __syncthreads();
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) frag_a<D>(qf[kk], qs, warp * 16, kk * 16);

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;
    const float sl2 = scale * kLog2e;

    for (int tile = 0; tile < tiles; ++tile) {
        const int buf = tile & 1;
        const int k0 = kv_lo + tile * BC;
        const bf16* kt = ks + buf * BC * D;
        const bf16* vt = vs + buf * BC * D;
        const int* dt_doc = kdoc + buf * BC;
        if (tile > 0) {
            cp_async_wait_all();  // this tile
            __syncthreads();      // and every warp is done with the other buffer
        }
        if (tile + 1 < tiles) {
            fetch(tile + 1, buf ^ 1);
            cp_async_commit();
        }

        float s[BC / 8][4];
#pragma unroll
        for (int i = 0; i < BC / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int np = 0; np < BC / 16; ++np) {
                uint32_t bb[4];
                frag_b_nk<D>(bb, kt, np * 16, kk * 16);
                mma_16816(s[2 * np], qf[kk], bb[0], bb[1]);
                mma_16816(s[2 * np + 1], qf[kk], bb[2], bb[3]);
            }
        }

        const int k_last = min(k0 + BC, T) - 1;
        const bool masked =
            k0 + BC > T || !tile_unmasked(m, q0, q_last, k0, k_last, causal, contiguous);
        float mx_a = m_a, mx_b = m_b;
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                float x = s[nt][c] * sl2;
                if (masked) {
                    const int kc = nt * 8 + (lane & 3) * 2 + (c & 1);
                    const int key = k0 + kc;
                    const int row = c < 2 ? row_a : row_b;
                    const int rd = c < 2 ? doc_a : doc_b;
                    const bool ok = key < T && (!causal || key <= row) && dt_doc[kc] == rd;
                    if (!ok) x = -INFINITY;
                }
                s[nt][c] = x;
            }
            mx_a = fmaxf(mx_a, fmaxf(s[nt][0], s[nt][1]));
            mx_b = fmaxf(mx_b, fmaxf(s[nt][2], s[nt][3]));
        }
        mx_a = quad_max(mx_a);
        mx_b = quad_max(mx_b);
        // A row with nothing allowed so far keeps max −inf: exponentiate against 0 instead.
        const float base_a = mx_a == -INFINITY ? 0.0f : mx_a;
        const float base_b = mx_b == -INFINITY ? 0.0f : mx_b;
        const float alpha_a = fast_exp2(m_a - base_a);
        const float alpha_b = fast_exp2(m_b - base_b);
        m_a = mx_a;
        m_b = mx_b;
        float ps_a = 0.0f, ps_b = 0.0f;
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
            s[nt][0] = fast_exp2(s[nt][0] - base_a);
            s[nt][1] = fast_exp2(s[nt][1] - base_a);
            s[nt][2] = fast_exp2(s[nt][2] - base_b);
            s[nt][3] = fast_exp2(s[nt][3] - base_b);
            ps_a += s[nt][0] + s[nt][1];
            ps_b += s[nt][2] + s[nt][3];
        }
        l_a = l_a * alpha_a + ps_a;  // per-thread partial sums; the quad is summed at the end
        l_b = l_b * alpha_b + ps_b;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            o[dt][0] *= alpha_a;
            o[dt][1] *= alpha_a;
            o[dt][2] *= alpha_b;
            o[dt][3] *= alpha_b;
        }
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            uint32_t pa[4];
            acc_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t bb[4];
                frag_b_kn<D>(bb, vt, kk * 16, dp * 16);
                mma_16816(o[2 * dp], pa, bb[0], bb[1]);
                mma_16816(o[2 * dp + 1], pa, bb[2], bb[3]);
            }
        }
    }

    l_a = quad_sum(l_a);
    l_b = quad_sum(l_b);
    const float inv_a = 1.0f / l_a;
    const float inv_b = 1.0f / l_b;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
        const int col = dt * 8 + (lane & 3) * 2;
        if (row_a < T) {
            st_b32(out + (((size_t)b * T + row_a) * H + h) * D + col, pack_bf16(o[dt][0] * inv_a, o[dt][1] * inv_a));
        }
        if (row_b < T) {
            st_b32(out + (((size_t)b * T + row_b) * H + h) * D + col, pack_bf16(o[dt][2] * inv_b, o[dt][3] * inv_b));
        }
    }
    if ((lane & 3) == 0) {
        const size_t row0 = ((size_t)b * H + h) * T;
        if (row_a < T) lse[row0 + row_a] = (m_a + log2f(l_a)) * kLn2;
        if (row_b < T) lse[row0 + row_b] = (m_b + log2f(l_b)) * kLn2;
    }
}

// ---------------------------------------------------------------------------------------------
// Backward: dK and dV (and atomic dQ)
// ---------------------------------------------------------------------------------------------

constexpr int kDsPitch = 32 + 8;  // dS^T tile row pitch (elements): conflict-free ldmatrix

template <int D>
__device__ void bwd_dkdv(bf16* __restrict__ dk, bf16* __restrict__ dv, float* __restrict__ dq_acc,
                         const bf16* __restrict__ dout, const bf16* __restrict__ q,
                         const bf16* __restrict__ k, const bf16* __restrict__ v,
                         const float* __restrict__ lse, const float* __restrict__ delta,
                         const int* __restrict__ meta, int B, int T, int H, int Hkv, float scale,
                         int causal, int contiguous, int accumulate_dq) {
    constexpr int BC = 64, BQ = 32;
    KILN_DYNAMIC_SHARED(unsigned char, smem);
    bf16* ks = reinterpret_cast<bf16*>(smem);
    bf16* vs = ks + BC * D;
    bf16* qs = vs + BC * D;
    bf16* dos = qs + BQ * D;
    bf16* dst = dos + BQ * D;  // [BC][kDsPitch] dS^T, bf16
    float* lse_s = reinterpret_cast<float*>(dst + BC * kDsPitch);
    float* delta_s = lse_s + BQ;
    int* qdoc = reinterpret_cast<int*>(delta_s + BQ);

    const int k0 = blockIdx.x * BC;
    const int g = blockIdx.y;
    const int b = blockIdx.z;
    if (k0 >= T) return;
    const int group = H / Hkv;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const Meta m = meta_of(meta, B, T, b);
    const int k_last = min(k0 + BC, T) - 1;
    const int q_lo = ((causal ? k0 : m.start[k0]) / BQ) * BQ;
    const int q_hi = m.end[k_last];

    load_tile<BC, D>(ks, k, b, T, Hkv, g, k0);
    load_tile<BC, D>(vs, v, b, T, Hkv, g, k0);
    cp_async_commit();
    const int key_a = k0 + warp * 16 + (lane >> 2);
    const int key_b = key_a + 8;
    const int kdoc_a = m.doc[min(key_a, T - 1)];
    const int kdoc_b = m.doc[min(key_b, T - 1)];

    float dkacc[D / 8][4], dvacc[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
        dkacc[i][0] = dkacc[i][1] = dkacc[i][2] = dkacc[i][3] = 0.0f;
        dvacc[i][0] = dvacc[i][1] = dvacc[i][2] = dvacc[i][3] = 0.0f;
    }
    const float sl2 = scale * kLog2e;

    for (int h = g * group; h < (g + 1) * group; ++h) {
        const size_t lrow = ((size_t)b * H + h) * T;
        for (int qq0 = q_lo; qq0 < q_hi; qq0 += BQ) {
            __syncthreads();  // the previous step's readers of qs, dos, dst are done
            load_tile<BQ, D>(qs, q, b, T, H, h, qq0);
            load_tile<BQ, D>(dos, dout, b, T, H, h, qq0);
            cp_async_commit();
            if (threadIdx.x < BQ) {
                const int t = qq0 + threadIdx.x;
                lse_s[threadIdx.x] = t < T ? lse[lrow + t] * kLog2e : 0.0f;
                delta_s[threadIdx.x] = t < T ? delta[lrow + t] : 0.0f;
                qdoc[threadIdx.x] = m.doc[min(t, T - 1)];
            }
            cp_async_wait_all();
            __syncthreads();

            // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys × BQ queries.
            float st[BQ / 8][4], dpt[BQ / 8][4];
#pragma unroll
            for (int i = 0; i < BQ / 8; ++i) {
                st[i][0] = st[i][1] = st[i][2] = st[i][3] = 0.0f;
                dpt[i][0] = dpt[i][1] = dpt[i][2] = dpt[i][3] = 0.0f;
            }
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                uint32_t ka[4], va[4];
                frag_a<D>(ka, ks, warp * 16, kk * 16);
                frag_a<D>(va, vs, warp * 16, kk * 16);
#pragma unroll
                for (int np = 0; np < BQ / 16; ++np) {
                    uint32_t bq[4], bd[4];
                    frag_b_nk<D>(bq, qs, np * 16, kk * 16);
                    frag_b_nk<D>(bd, dos, np * 16, kk * 16);
                    mma_16816(st[2 * np], ka, bq[0], bq[1]);
                    mma_16816(st[2 * np + 1], ka, bq[2], bq[3]);
                    mma_16816(dpt[2 * np], va, bd[0], bd[1]);
                    mma_16816(dpt[2 * np + 1], va, bd[2], bd[3]);
                }
            }

            // P^T and dS^T = P^T ∘ (dP^T − delta), in place.
            const int qq_last = min(qq0 + BQ, T) - 1;
            const bool masked = qq0 + BQ > T || k0 + BC > T ||
                                !tile_unmasked(m, qq0, qq_last, k0, k_last, causal, contiguous);
#pragma unroll
            for (int nt = 0; nt < BQ / 8; ++nt) {
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const int qc = nt * 8 + (lane & 3) * 2 + (c & 1);
                    const int query = qq0 + qc;
                    bool ok = true;
                    if (masked) {
                        const int key = c < 2 ? key_a : key_b;
                        const int kd = c < 2 ? kdoc_a : kdoc_b;
                        ok = query < T && key < T && (!causal || key <= query) && qdoc[qc] == kd;
                    }
                    const float p = ok ? fast_exp2(st[nt][c] * sl2 - lse_s[qc]) : 0.0f;
                    st[nt][c] = p;
                    dpt[nt][c] = p * (dpt[nt][c] - delta_s[qc]);
                }
            }

            // dV += P^T dO and dK += dS^T Q (scale applied at the end).
#pragma unroll
            for (int kk = 0; kk < BQ / 16; ++kk) {
                uint32_t pa[4], dsa[4];
                acc_to_a(pa, st[2 * kk], st[2 * kk + 1]);
                acc_to_a(dsa, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
                for (int dp = 0; dp < D / 16; ++dp) {
                    uint32_t bd[4], bq[4];
                    frag_b_kn<D>(bd, dos, kk * 16, dp * 16);
                    frag_b_kn<D>(bq, qs, kk * 16, dp * 16);
                    mma_16816(dvacc[2 * dp], pa, bd[0], bd[1]);
                    mma_16816(dvacc[2 * dp + 1], pa, bd[2], bd[3]);
                    mma_16816(dkacc[2 * dp], dsa, bq[0], bq[1]);
                    mma_16816(dkacc[2 * dp + 1], dsa, bq[2], bq[3]);
                }
            }

            if (accumulate_dq) {
                // dS^T into shared memory, then dQ (BQ × D) = dS K split over the 4 warps:
                // warp w takes query rows (w & 1)·16 … and columns (w >> 1)·D/2 ….
#pragma unroll
                for (int nt = 0; nt < BQ / 8; ++nt) {
                    const int col = nt * 8 + (lane & 3) * 2;
                    const int r = warp * 16 + (lane >> 2);
                    st_b32(dst + r * kDsPitch + col, pack_bf16(dpt[nt][0], dpt[nt][1]));
                    st_b32(dst + (r + 8) * kDsPitch + col, pack_bf16(dpt[nt][2], dpt[nt][3]));
                }
                __syncthreads();
                const int mt = warp & 1;
                const int dh = warp >> 1;
                float dqa[D / 16][4];
#pragma unroll
                for (int i = 0; i < D / 16; ++i) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < BC / 16; ++kk) {
                    uint32_t a[4];
                    ldsm_x4_t(a, dst + (kk * 16 + (lane & 7) + (lane >> 4) * 8) * kDsPitch + mt * 16 +
                                     ((lane >> 3) & 1) * 8);
#pragma unroll
                    for (int dp = 0; dp < D / 32; ++dp) {
                        uint32_t bk[4];
                        frag_b_kn<D>(bk, ks, kk * 16, dh * (D / 2) + dp * 16);
                        mma_16816(dqa[2 * dp], a, bk[0], bk[1]);
                        mma_16816(dqa[2 * dp + 1], a, bk[2], bk[3]);
                    }
                }
                const int qa = qq0 + mt * 16 + (lane >> 2);
                const int qb = qa + 8;
#pragma unroll
                for (int nt = 0; nt < D / 16; ++nt) {
                    const int col = dh * (D / 2) + nt * 8 + (lane & 3) * 2;
                    if (qa < T) {
                        float* p = dq_acc + (((size_t)b * T + qa) * H + h) * D + col;
                        atomic_add_v2(p, dqa[nt][0] * scale, dqa[nt][1] * scale);
                    }
                    if (qb < T) {
                        float* p = dq_acc + (((size_t)b * T + qb) * H + h) * D + col;
                        atomic_add_v2(p, dqa[nt][2] * scale, dqa[nt][3] * scale);
                    }
                }
            }
        }
    }

#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
        const int col = dt * 8 + (lane & 3) * 2;
        if (key_a < T) {
            const size_t off = (((size_t)b * T + key_a) * Hkv + g) * D + col;
            st_b32(dk + off, pack_bf16(dkacc[dt][0] * scale, dkacc[dt][1] * scale));
            st_b32(dv + off, pack_bf16(dvacc[dt][0], dvacc[dt][1]));
        }
        if (key_b < T) {
            const size_t off = (((size_t)b * T + key_b) * Hkv + g) * D + col;
            st_b32(dk + off, pack_bf16(dkacc[dt][2] * scale, dkacc[dt][3] * scale));
            st_b32(dv + off, pack_bf16(dvacc[dt][2], dvacc[dt][3]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward: deterministic dQ
// ---------------------------------------------------------------------------------------------

template <int D>
__device__ void bwd_dq(bf16* __restrict__ dq, const bf16* __restrict__ dout,
                       const bf16* __restrict__ q, const bf16* __restrict__ k,
                       const bf16* __restrict__ v, const float* __restrict__ lse,
                       const float* __restrict__ delta, const int* __restrict__ meta, int B,
                       int T, int H, int Hkv, float scale, int causal, int contiguous) {
    constexpr int BR = 64, BC = 32;
    KILN_DYNAMIC_SHARED(unsigned char, smem);
    bf16* qs = reinterpret_cast<bf16*>(smem);
    bf16* dos = qs + BR * D;
    bf16* ks = dos + BR * D;
    bf16* vs = ks + BC * D;
    int* kdoc = reinterpret_cast<int*>(vs + BC * D);

    const int q0 = blockIdx.x * BR;
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    if (q0 >= T) return;
    const int g = h / (H / Hkv);
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const Meta m = meta_of(meta, B, T, b);
    const int q_last = min(q0 + BR, T) - 1;
    const int kv_lo = (m.start[q0] / BC) * BC;
    const int kv_hi = causal ? q_last + 1 : m.end[q_last];

    load_tile<BR, D>(qs, q, b, T, H, h, q0);
    load_tile<BR, D>(dos, dout, b, T, H, h, q0);
    cp_async_commit();
    const int row_a = q0 + warp * 16 + (lane >> 2);
    const int row_b = row_a + 8;
    const size_t lrow = ((size_t)b * H + h) * T;
    const float lse_a = row_a < T ? lse[lrow + row_a] * kLog2e : 0.0f;
    const float lse_b = row_b < T ? lse[lrow + row_b] * kLog2e : 0.0f;
    const float del_a = row_a < T ? delta[lrow + row_a] : 0.0f;
    const float del_b = row_b < T ? delta[lrow + row_b] : 0.0f;
    const int doc_a = m.doc[min(row_a, T - 1)];
    const int doc_b = m.doc[min(row_b, T - 1)];
    const float sl2 = scale * kLog2e;

    float dqa[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.0f;

    for (int k0 = kv_lo; k0 < kv_hi; k0 += BC) {
        __syncthreads();
        load_tile<BC, D>(ks, k, b, T, Hkv, g, k0);
        load_tile<BC, D>(vs, v, b, T, Hkv, g, k0);
        cp_async_commit();
        if (threadIdx.x < BC) kdoc[threadIdx.x] = m.doc[min(k0 + (int)threadIdx.x, T - 1)];
        cp_async_wait_all();
        __syncthreads();

        float s[BC / 8][4], dp[BC / 8][4];
#pragma unroll
        for (int i = 0; i < BC / 8; ++i) {
            s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
            dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            uint32_t qa[4], da[4];
            frag_a<D>(qa, qs, warp * 16, kk * 16);
            frag_a<D>(da, dos, warp * 16, kk * 16);
#pragma unroll
            for (int np = 0; np < BC / 16; ++np) {
                uint32_t bk[4], bv[4];
                frag_b_nk<D>(bk, ks, np * 16, kk * 16);
                frag_b_nk<D>(bv, vs, np * 16, kk * 16);
                mma_16816(s[2 * np], qa, bk[0], bk[1]);
                mma_16816(s[2 * np + 1], qa, bk[2], bk[3]);
                mma_16816(dp[2 * np], da, bv[0], bv[1]);
                mma_16816(dp[2 * np + 1], da, bv[2], bv[3]);
            }
        }
        const int k_last = min(k0 + BC, T) - 1;
        const bool masked =
            k0 + BC > T || !tile_unmasked(m, q0, q_last, k0, k_last, causal, contiguous);
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int kc = nt * 8 + (lane & 3) * 2 + (c & 1);
                bool ok = true;
                if (masked) {
                    const int key = k0 + kc;
                    const int row = c < 2 ? row_a : row_b;
                    const int rd = c < 2 ? doc_a : doc_b;
                    ok = key < T && (!causal || key <= row) && kdoc[kc] == rd;
                }
                const float p = ok ? fast_exp2(s[nt][c] * sl2 - (c < 2 ? lse_a : lse_b)) : 0.0f;
                s[nt][c] = p * (dp[nt][c] - (c < 2 ? del_a : del_b));  // dS
            }
        }
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            uint32_t a[4];
            acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int dp2 = 0; dp2 < D / 16; ++dp2) {
                uint32_t bk[4];
                frag_b_kn<D>(bk, ks, kk * 16, dp2 * 16);
                mma_16816(dqa[2 * dp2], a, bk[0], bk[1]);
                mma_16816(dqa[2 * dp2 + 1], a, bk[2], bk[3]);
            }
        }
    }

#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
        const int col = dt * 8 + (lane & 3) * 2;
        if (row_a < T) {
            st_b32(dq + (((size_t)b * T + row_a) * H + h) * D + col, pack_bf16(dqa[dt][0] * scale, dqa[dt][1] * scale));
        }
        if (row_b < T) {
            st_b32(dq + (((size_t)b * T + row_b) * H + h) * D + col, pack_bf16(dqa[dt][2] * scale, dqa[dt][3] * scale));
        }
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

#define KILN_FLASH_FWD(DIM, ROWS)                                                                \
    extern "C" __global__ void __launch_bounds__(ROWS / 16 * 32) flash_fwd_d##DIM##_r##ROWS(     \
        bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int* meta,    \
        int B, int T, int H, int Hkv, float scale, int causal, int contiguous) {                \
        fwd<DIM, ROWS>(out, lse, q, k, v, meta, B, T, H, Hkv, scale, causal, contiguous);        \
    }
KILN_FLASH_FWD(64, 64)
KILN_FLASH_FWD(64, 128)
KILN_FLASH_FWD(128, 64)
KILN_FLASH_FWD(128, 128)

#define KILN_FLASH_DKDV(DIM)                                                                     \
    extern "C" __global__ void __launch_bounds__(kThreads) flash_bwd_dkdv_d##DIM(               \
        bf16* dk, bf16* dv, float* dq_acc, const bf16* dout, const bf16* q, const bf16* k,      \
        const bf16* v, const float* lse, const float* delta, const int* meta, int B, int T,     \
        int H, int Hkv, float scale, int causal, int contiguous, int accumulate_dq) {           \
        bwd_dkdv<DIM>(dk, dv, dq_acc, dout, q, k, v, lse, delta, meta, B, T, H, Hkv, scale,     \
                      causal, contiguous, accumulate_dq);                                       \
    }
KILN_FLASH_DKDV(64)
KILN_FLASH_DKDV(128)

#define KILN_FLASH_DQ(DIM)                                                                       \
    extern "C" __global__ void __launch_bounds__(kThreads) flash_bwd_dq_d##DIM(                 \
        bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,                \
        const float* lse, const float* delta, const int* meta, int B, int T, int H, int Hkv,    \
        float scale, int causal, int contiguous) {                                              \
        bwd_dq<DIM>(dq, dout, q, k, v, lse, delta, meta, B, T, H, Hkv, scale, causal,           \
                    contiguous);                                                                \
    }
KILN_FLASH_DQ(64)
KILN_FLASH_DQ(128)

extern "C" __global__ void flash_bwd_pre(float* delta, float* dq_acc, const bf16* dout,
                                         const bf16* out, int B, int T, int H, int D,
                                         int zero_dq) {
    const size_t rows = (size_t)B * T * H;
    const size_t row = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;  // warp-uniform
    const int lane = threadIdx.x & 31;
    const size_t off = row * D;
    float acc = 0.0f;
    for (int d = 2 * lane; d < D; d += 64) {
        const __nv_bfloat162 a = ld_bf16x2(dout + off + d);
        const __nv_bfloat162 o = ld_bf16x2(out + off + d);
        acc += __bfloat162float(a.x) * __bfloat162float(o.x) +
               __bfloat162float(a.y) * __bfloat162float(o.y);
        if (zero_dq) {
            dq_acc[off + d] = 0.0f;
            dq_acc[off + d + 1] = 0.0f;
        }
    }
    acc = warp_reduce_sum(acc);
    if (lane == 0) {
        const size_t h = row % H;
        const size_t t = (row / H) % T;
        const size_t b = row / ((size_t)H * T);
        delta[(b * H + h) * T + t] = acc;
    }
}

extern "C" __global__ void flash_dq_convert(bf16* dq, const float* dq_acc, int n) {
    cast_f32_to_bf16_loop(dq, dq_acc, n);
}
