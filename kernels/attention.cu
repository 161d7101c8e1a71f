// kernels/attention.cu — reference (simple, not fast) causal attention with document masking and
// GQA: forward, the backward split into delta / dq / dk-dv, and attention against a KV cache
// (CPU twins: `attention`, `attention_bwd`, `attention_cached` in src/backend/cpu/mod.rs).
// Flash attention replaces these later; these stay as the GPU reference.
//
// Shapes and layouts (all row-major):
//   q, out, dout, dq  [B, T, H, D]    bf16     element (b, t, h, d) at ((b·T + t)·H + h)·D + d
//   k, v, dk, dv      [B, T, Hkv, D]  bf16     element (b, s, g, d) at ((b·T + s)·Hkv + g)·D + d
//   lse, delta        [B, H, T]       fp32     element (b, h, t) at (b·H + h)·T + t
//   doc_ids           [B·T]           int
// Query head h reads kv head g = h / (H / Hkv) (H a multiple of Hkv). scale = 1/sqrt(D), passed
// in by the host (the CPU's T::from_f64(1/sqrt(D)) rounded to f32). Query t attends key s iff
// doc_ids[b·T + s] == doc_ids[b·T + t] and, when `causal` is non-zero, s ≤ t. "Keys s ≤ t" and
// "queries t ≥ s" below read "all keys" / "all queries" when causal is 0.
//
// Limits: D ≤ ATTN_MAX_D (256; a block with a larger D returns without writing — the host must
// check). blockDim.x must be a multiple of 32 (128 is the documented size).
// Dot products of length D: one warp per key (or query) row, lanes over d (stride 32), then the
// xor-shuffle warp reduction. Weighted sums over rows: each thread owns the columns
// d ≡ threadIdx.x (mod blockDim.x) and adds the rows serially in index order. No atomics:
// every result is computed in one fixed order and is deterministic.
//
// attention_fwd(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
//               const int* doc_ids, int B, int T, int H, int Hkv, int D, float scale,
//               int causal)
//   Block (b, h, t) with blockIdx.x = (b·H + h)·T + t: scores_s = scale·q_t·k_s for allowed s,
//   m = max, p_s = exp(scores_s − m), l = Σ p_s, lse = m + log(l), out_t = (Σ_s p_s·v_s)·(1/l).
//   Launch: grid (B·H·T), block (128), dynamic shared T·sizeof(float) (the scores row).
//   Static shared is 1152 bytes, so without opting in T ≤ 12000 (48 KiB per block); above that
//   the host sets CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (up to 227 KiB on sm_90,
//   163 KiB on sm_80 — T ≤ ~57k / ~41k).
//
// attention_delta(float* delta, const bf16* dout, const bf16* out, int B, int T, int H, int D)
//   delta[b, h, t] = Σ_d dout[b,t,h,d]·out[b,t,h,d] (one thread per (b, h, t), serial over d).
//   Launch: 1-D grid-stride over B·H·T, block (256), grid (ceil(B·H·T / 256)), shared 0.
//
// attention_bwd_dq(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
//                  const float* lse, const float* delta, const int* doc_ids, int B, int T,
//                  int H, int Hkv, int D, float scale, int causal)
//   Block (b, h, t) with blockIdx.x = (b·H + h)·T + t. For allowed s, in order:
//   p = exp(scale·q_t·k_s − lse_t); ds = p·(dout_t·v_s − delta_t)·scale; dq_t = Σ_s ds·k_s
//   (overwritten). Keys are processed in chunks of ATTN_CHUNK, so there is no T limit.
//   Launch: grid (B·H·T), block (128), dynamic shared 0.
//
// attention_bwd_dkdv(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
//                    const bf16* v, const float* lse, const float* delta, const int* doc_ids,
//                    int B, int T, int H, int Hkv, int D, float scale, int causal)
//   Block (b, g, s) with blockIdx.x = (b·Hkv + g)·T + s (one key row). Loops over the query
//   heads h = g·(H/Hkv) … (g+1)·(H/Hkv) − 1, then over queries t = s … T−1 in the same
//   document, in that order: p = exp(scale·q_t·k_s − lse_t); dv_s += p·dout_t;
//   ds = p·(dout_t·v_s − delta_t)·scale; dk_s += ds·q_t. dk, dv overwritten (fp32 accumulation
//   in shared memory, one column per thread). Queries in chunks of ATTN_CHUNK: no T limit.
//   Launch: grid (B·Hkv·T), block (128), dynamic shared 0.
//
// attention_cached(bf16* out, const bf16* q, const bf16* k_cache, const bf16* v_cache, int B,
//                  int Tq, int H, int Hkv, int D, int max_len, int past, int window,
//                  float scale)
//   q, out [B, Tq, H, D] (positions past … past+Tq−1); k_cache, v_cache [B, max_len, Hkv, D]
//   holding positions 0 … past+Tq−1. Query i attends keys 0 … past+i (causal, no document
//   mask), or with a sliding window (window > 0; 0: none) keys max(0, past+i+1−window) … past+i; otherwise as attention_fwd, without lse. Requires past + Tq ≤ max_len (else the
//   block returns without writing; the host checks).
//   Block (b, h, i) with blockIdx.x = (b·H + h)·Tq + i.
//   Launch: grid (B·H·Tq), block (128), dynamic shared (past+Tq)·sizeof(float) (same 12000
//   limit as attention_fwd without the opt-in).
#include "common.cuh"

#define ATTN_MAX_D 256
#define ATTN_CHUNK 128

// Σ_d a[d]·float(b[off + d]) over one warp: lanes take d = lane, lane+32, …; every lane returns
// the same sum. Must be called by all 32 lanes of the warp.
__device__ __forceinline__ float warp_dot_shared_bf16(const float* a, const bf16* b, size_t off,
                                                      int D) {
    float acc = 0.0f;
    for (int d = (int)(threadIdx.x & 31); d < D; d += 32) acc += a[d] * load_bf16(b, off + d);
    return warp_reduce_sum(acc);
}

extern "C" __global__ void attention_fwd(bf16* out, float* lse, const bf16* q, const bf16* k,
                                         const bf16* v, const int* doc_ids, int B, int T, int H,
                                         int Hkv, int D, float scale, int causal) {
    KILN_DYNAMIC_SHARED(float, scores);  // [T]: scores, then probabilities
    KILN_SHARED(float, qs, ATTN_MAX_D);
    KILN_SHARED(float, scratch, 32);
    const size_t bid = blockIdx.x;  // (b·H + h)·T + t
    if (bid >= (size_t)B * H * T || D > ATTN_MAX_D) return;  // block-uniform
    const int t = (int)(bid % T);
    const int h = (int)((bid / T) % H);
    const int b = (int)(bid / ((size_t)T * H));
    const int g = h / (H / Hkv);
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;

    const size_t q_off = (((size_t)b * T + t) * H + h) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = load_bf16(q, q_off + d);
    __syncthreads();

    const int* docs = doc_ids + (size_t)b * T;
    const int doc_t = docs[t];
    const int n_keys = causal ? t + 1 : T;
    for (int s = warp; s < n_keys; s += nwarps) {  // warp-uniform
        if (docs[s] != doc_t) {
            if (lane == 0) scores[s] = -INFINITY;
            continue;
        }
        const float dot = warp_dot_shared_bf16(qs, k, (((size_t)b * T + s) * Hkv + g) * D, D);
        if (lane == 0) scores[s] = dot * scale;
    }
    __syncthreads();

    float m = -INFINITY;
    for (int s = threadIdx.x; s < n_keys; s += blockDim.x) m = fmaxf(m, scores[s]);
    m = block_reduce_max(m, scratch);  // finite: key t is always allowed

    float l = 0.0f;
    for (int s = threadIdx.x; s < n_keys; s += blockDim.x) {
        const float p = scores[s] == -INFINITY ? 0.0f : expf(scores[s] - m);
        scores[s] = p;
        l += p;
    }
    l = block_reduce_sum(l, scratch);  // its __syncthreads publishes the probabilities

    if (threadIdx.x == 0) lse[bid] = m + logf(l);
    const float inv = 1.0f / l;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < n_keys; ++s) {
            const float p = scores[s];
            if (p == 0.0f) continue;  // masked key (or an underflowed one: adds nothing)
            acc += p * load_bf16(v, (((size_t)b * T + s) * Hkv + g) * D + d);
        }
        store_bf16(out, q_off + d, acc * inv);
    }
}

extern "C" __global__ void attention_delta(float* delta, const bf16* dout, const bf16* out,
                                           int B, int T, int H, int D) {
    const size_t rows = (size_t)B * H * T;
    for (size_t i = grid_stride_start(); i < rows; i += grid_stride_step()) {
        const size_t t = i % T;
        const size_t h = (i / T) % H;
        const size_t b = i / ((size_t)T * H);
        const size_t off = ((b * T + t) * H + h) * D;
        float acc = 0.0f;
        for (int d = 0; d < D; ++d) acc += load_bf16(dout, off + d) * load_bf16(out, off + d);
        delta[i] = acc;
    }
}

extern "C" __global__ void attention_bwd_dq(bf16* dq, const bf16* dout, const bf16* q,
                                            const bf16* k, const bf16* v, const float* lse,
                                            const float* delta, const int* doc_ids, int B, int T,
                                            int H, int Hkv, int D, float scale, int causal) {
    KILN_SHARED(float, qs, ATTN_MAX_D);
    KILN_SHARED(float, dos, ATTN_MAX_D);
    KILN_SHARED(float, acc, ATTN_MAX_D);    // dq row; column d owned by thread d % blockDim.x
    KILN_SHARED(float, ds_chunk, ATTN_CHUNK);
    const size_t bid = blockIdx.x;  // (b·H + h)·T + t
    if (bid >= (size_t)B * H * T || D > ATTN_MAX_D) return;  // block-uniform
    const int t = (int)(bid % T);
    const int h = (int)((bid / T) % H);
    const int b = (int)(bid / ((size_t)T * H));
    const int g = h / (H / Hkv);
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;

    const size_t q_off = (((size_t)b * T + t) * H + h) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        qs[d] = load_bf16(q, q_off + d);
        dos[d] = load_bf16(dout, q_off + d);
        acc[d] = 0.0f;
    }
    __syncthreads();

    const int* docs = doc_ids + (size_t)b * T;
    const int doc_t = docs[t];
    const float lse_t = lse[bid];
    const float delta_t = delta[bid];
    const int n_keys = causal ? t + 1 : T;
    for (int c0 = 0; c0 < n_keys; c0 += ATTN_CHUNK) {  // block-uniform
        const int c1 = min(n_keys, c0 + ATTN_CHUNK);  // keys c0 .. c1-1
        for (int s = c0 + warp; s < c1; s += nwarps) {  // warp-uniform
            if (docs[s] != doc_t) {
                if (lane == 0) ds_chunk[s - c0] = 0.0f;
                continue;
            }
            const size_t kv_off = (((size_t)b * T + s) * Hkv + g) * D;
            const float qk = warp_dot_shared_bf16(qs, k, kv_off, D);
            const float dov = warp_dot_shared_bf16(dos, v, kv_off, D);
            const float p = expf(qk * scale - lse_t);
            if (lane == 0) ds_chunk[s - c0] = p * (dov - delta_t) * scale;
        }
        __syncthreads();
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            float a = acc[d];
            for (int s = c0; s < c1; ++s) {
                const float ds = ds_chunk[s - c0];
                if (ds == 0.0f) continue;  // masked key (or a zero term)
                a += ds * load_bf16(k, (((size_t)b * T + s) * Hkv + g) * D + d);
            }
            acc[d] = a;
        }
        __syncthreads();  // ds_chunk is rewritten by the next chunk
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x) store_bf16(dq, q_off + d, acc[d]);
}

extern "C" __global__ void attention_bwd_dkdv(bf16* dk, bf16* dv, const bf16* dout,
                                              const bf16* q, const bf16* k, const bf16* v,
                                              const float* lse, const float* delta,
                                              const int* doc_ids, int B, int T, int H, int Hkv,
                                              int D, float scale, int causal) {
    KILN_SHARED(float, ks, ATTN_MAX_D);
    KILN_SHARED(float, vs, ATTN_MAX_D);
    KILN_SHARED(float, dk_acc, ATTN_MAX_D);  // column d owned by thread d % blockDim.x
    KILN_SHARED(float, dv_acc, ATTN_MAX_D);
    KILN_SHARED(float, p_chunk, ATTN_CHUNK);
    KILN_SHARED(float, ds_chunk, ATTN_CHUNK);
    const size_t bid = blockIdx.x;  // (b·Hkv + g)·T + s
    if (bid >= (size_t)B * Hkv * T || D > ATTN_MAX_D) return;  // block-uniform
    const int s = (int)(bid % T);
    const int g = (int)((bid / T) % Hkv);
    const int b = (int)(bid / ((size_t)T * Hkv));
    const int group = H / Hkv;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;

    const size_t kv_off = (((size_t)b * T + s) * Hkv + g) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        ks[d] = load_bf16(k, kv_off + d);
        vs[d] = load_bf16(v, kv_off + d);
        dk_acc[d] = 0.0f;
        dv_acc[d] = 0.0f;
    }
    __syncthreads();

    const int* docs = doc_ids + (size_t)b * T;
    const int doc_s = docs[s];
    for (int h = g * group; h < (g + 1) * group; ++h) {  // block-uniform
        const size_t row0 = ((size_t)b * H + h) * T;     // lse/delta row of (b, h)
        for (int c0 = causal ? s : 0; c0 < T; c0 += ATTN_CHUNK) {  // block-uniform
            const int c1 = min(T, c0 + ATTN_CHUNK);       // queries c0 .. c1-1
            for (int t = c0 + warp; t < c1; t += nwarps) {  // warp-uniform
                if (docs[t] != doc_s) {
                    if (lane == 0) {
                        p_chunk[t - c0] = 0.0f;
                        ds_chunk[t - c0] = 0.0f;
                    }
                    continue;
                }
                const size_t q_off = (((size_t)b * T + t) * H + h) * D;
                // q_t·k_s and dout_t·v_s with k_s, v_s from shared
                const float qk = warp_dot_shared_bf16(ks, q, q_off, D);
                const float dov = warp_dot_shared_bf16(vs, dout, q_off, D);
                const float p = expf(qk * scale - lse[row0 + t]);
                if (lane == 0) {
                    p_chunk[t - c0] = p;
                    ds_chunk[t - c0] = p * (dov - delta[row0 + t]) * scale;
                }
            }
            __syncthreads();
            for (int d = threadIdx.x; d < D; d += blockDim.x) {
                float ak = dk_acc[d];
                float av = dv_acc[d];
                for (int t = c0; t < c1; ++t) {
                    const float p = p_chunk[t - c0];
                    const float ds = ds_chunk[t - c0];
                    if (p == 0.0f && ds == 0.0f) continue;  // masked query (or zero terms)
                    const size_t q_off = (((size_t)b * T + t) * H + h) * D + d;
                    av += p * load_bf16(dout, q_off);
                    ak += ds * load_bf16(q, q_off);
                }
                dk_acc[d] = ak;
                dv_acc[d] = av;
            }
            __syncthreads();  // p_chunk / ds_chunk are rewritten by the next chunk
        }
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        store_bf16(dk, kv_off + d, dk_acc[d]);
        store_bf16(dv, kv_off + d, dv_acc[d]);
    }
}

extern "C" __global__ void attention_cached(bf16* out, const bf16* q, const bf16* k_cache,
                                            const bf16* v_cache, int B, int Tq, int H, int Hkv,
                                            int D, int max_len, int past, int window,
                                            float scale) {
    KILN_DYNAMIC_SHARED(float, scores);  // [past + Tq]
    KILN_SHARED(float, qs, ATTN_MAX_D);
    KILN_SHARED(float, scratch, 32);
    const size_t bid = blockIdx.x;  // (b·H + h)·Tq + i
    if (bid >= (size_t)B * H * Tq || D > ATTN_MAX_D || past + Tq > max_len) return;
    const int i = (int)(bid % Tq);
    const int h = (int)((bid / Tq) % H);
    const int b = (int)(bid / ((size_t)Tq * H));
    const int g = h / (H / Hkv);
    const int n_keys = past + i + 1;                             // keys 0 .. past+i
    const int first = window > 0 ? max(0, n_keys - window) : 0;  // the window's first key
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;

    const size_t q_off = (((size_t)b * Tq + i) * H + h) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = load_bf16(q, q_off + d);
    __syncthreads();

    for (int j = first + warp; j < n_keys; j += nwarps) {  // warp-uniform
        const float dot =
            warp_dot_shared_bf16(qs, k_cache, (((size_t)b * max_len + j) * Hkv + g) * D, D);
        if (lane == 0) scores[j] = dot * scale;
    }
    __syncthreads();

    float m = -INFINITY;
    for (int j = first + threadIdx.x; j < n_keys; j += blockDim.x) m = fmaxf(m, scores[j]);
    m = block_reduce_max(m, scratch);

    float l = 0.0f;
    for (int j = first + threadIdx.x; j < n_keys; j += blockDim.x) {
        const float p = expf(scores[j] - m);
        scores[j] = p;
        l += p;
    }
    l = block_reduce_sum(l, scratch);  // its __syncthreads publishes the probabilities

    const float inv = 1.0f / l;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = first; j < n_keys; ++j) {
            acc += scores[j] * load_bf16(v_cache, (((size_t)b * max_len + j) * Hkv + g) * D + d);
        }
        store_bf16(out, q_off + d, acc * inv);
    }
}
