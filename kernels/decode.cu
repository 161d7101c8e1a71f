// kernels/decode.cu — batched generation: writing new keys/values into the KV cache and attention of
// one query token per sequence against it, split over the key length so that a short batch still
// fills the GPU (flash-decoding). CPU twins: `kv_write`, `attention_decode` in
// src/backend/cpu/mod.rs.
//
// Shapes and layouts (all row-major):
//   cache, k_cache, v_cache  [S, max_len, Hkv, D]  bf16  element (s, j, g, d) at
//                                                         ((s·max_len + j)·Hkv + g)·D + d
//   src                      [N, W]                bf16  (W = Hkv·D for the K and V caches)
//   q, out                   [N, H, D]             bf16  one query per sequence
//   slots, positions, lens   [N]                   int
//   part_m, part_l           [N·H, splits]         fp32  per split: running max and Σ exp
//   part_acc                 [N·H, splits, D]      fp32  per split: Σ exp(score − part_m)·v
// Query head h reads kv head g = h / (H / Hkv). scale = 1/sqrt(D) from the host.
//
// kv_write(bf16* cache, const bf16* src, const int* slots, const int* positions, int N, int W,
//          int max_len)
//   cache[slots[i], positions[i], :] = src[i, :]. Launch: grid-stride over N·W / 8, block (256);
//   with W mod 8 = 0 and aligned arrays each step copies 8 bf16 (16 bytes), otherwise one
//   element. 32-bit indices over src (N·W fits an int); the cache offset in 64 bits.
//
// attention_decode_partial(float* part_m, float* part_l, float* part_acc, const bf16* q,
//                          const bf16* k_cache, const bf16* v_cache, const int* slots,
//                          const int* lens, int N, int H, int Hkv, int D, int max_len,
//                          int chunk, int splits, int window, float scale)
//   Block (i·H + h, split) handles keys [max(split·chunk, lo), min((split+1)·chunk, lens[i])) of
//   sequence i, with lo = max(0, lens[i] − window) for a sliding window (window > 0) and 0 without
//   one (window = 0): scores (one warp per key, lanes over d, xor-shuffle reduction), m = max, p = exp(s − m),
//   l = Σ p, acc_d = Σ p·v_d in key order. A split past the sequence's length writes m = −inf,
//   l = 0, acc = 0, as does a split wholly before the window. Launch: grid (N·H, splits), block (128), dynamic shared chunk·sizeof(float).
//
// attention_decode_combine(bf16* out, const float* part_m, const float* part_l,
//                          const float* part_acc, int N, int H, int D, int splits)
//   Block i·H + h: M = max_s m_s; w_s = exp(m_s − M) (0 for empty splits); L = Σ w_s·l_s;
//   out_d = (Σ_s w_s·acc_s,d) / L, splits added in order. Launch: grid (N·H), block (128).
//
// Limits: D ≤ DECODE_MAX_D (256; larger D writes nothing, the host checks); blockDim.x a multiple
// of 32. No atomics: every sum runs in one fixed order, so results are deterministic. Results
// do not depend on the other sequences of the call, but do depend on `chunk` (the host fixes it).

#include "common.cuh"

#define DECODE_MAX_D 256

extern "C" __global__ void kv_write(bf16* cache, const bf16* src, const int* slots,
                                    const int* positions, int N, int W, int max_len) {
    const unsigned total = (unsigned)N * (unsigned)W;
    const bool vec = W % 8 == 0 && aligned16(cache) && aligned16(src);
    const unsigned step = vec ? 8 : 1;  // elements per access
    const unsigned row = W / step;      // accesses per row
    for (unsigned e = grid_start32(); e < total / step; e += grid_step32()) {
        const unsigned i = e / row;
        const unsigned c = step * (e - i * row);
        const size_t dst = ((size_t)slots[i] * max_len + positions[i]) * W + c;
        if (vec) {
            st_v4(cache + dst, ld_v4(src + (size_t)step * e));
        } else {
            cache[dst] = src[e];
        }
    }
}

extern "C" __global__ void attention_decode_partial(float* part_m, float* part_l, float* part_acc,
                                                    const bf16* q, const bf16* k_cache,
                                                    const bf16* v_cache, const int* slots,
                                                    const int* lens, int N, int H, int Hkv, int D,
                                                    int max_len, int chunk, int splits,
                                                    int window, float scale) {
    KILN_DYNAMIC_SHARED(float, scores);  // [chunk]
    KILN_SHARED(float, qs, DECODE_MAX_D);
    KILN_SHARED(float, scratch, 32);
    const int ih = blockIdx.x;
    const int split = blockIdx.y;
    if (ih >= N * H || split >= splits || D > DECODE_MAX_D) return;
    const int i = ih / H;
    const int h = ih % H;
    const int g = h / (H / Hkv);
    const int len = lens[i];
    const int lo = window > 0 ? max(0, len - window) : 0;
    const int j0 = max(split * chunk, lo);
    const int j1 = min(split * chunk + chunk, len);
    const size_t part = (size_t)ih * splits + split;
    if (j0 >= j1) {
        if (threadIdx.x == 0) {
            part_m[part] = -INFINITY;
            part_l[part] = 0.0f;
        }
        for (int d = threadIdx.x; d < D; d += blockDim.x) part_acc[part * D + d] = 0.0f;
        return;
    }
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    const size_t slot_base = (size_t)slots[i] * max_len;

    for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = load_bf16(q, (size_t)ih * D + d);
    __syncthreads();

    for (int j = j0 + warp; j < j1; j += nwarps) {  // warp-uniform
        const size_t k_off = ((slot_base + j) * Hkv + g) * D;
        float s = 0.0f;
        for (int d = lane; d < D; d += 32) s += qs[d] * load_bf16(k_cache, k_off + d);
        s = warp_reduce_sum(s);
        if (lane == 0) scores[j - j0] = s * scale;
    }
    __syncthreads();

    float m = -INFINITY;
    for (int j = threadIdx.x; j < j1 - j0; j += blockDim.x) m = fmaxf(m, scores[j]);
    m = block_reduce_max(m, scratch);
    float l = 0.0f;
    for (int j = threadIdx.x; j < j1 - j0; j += blockDim.x) {
        const float p = expf(scores[j] - m);
        scores[j] = p;
        l += p;
    }
    l = block_reduce_sum(l, scratch);  // its __syncthreads publishes the probabilities

    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = j0; j < j1; ++j) {
            acc += scores[j - j0] * load_bf16(v_cache, ((slot_base + j) * Hkv + g) * D + d);
        }
        part_acc[part * D + d] = acc;
    }
    if (threadIdx.x == 0) {
        part_m[part] = m;
        part_l[part] = l;
    }
}

extern "C" __global__ void attention_decode_combine(bf16* out, const float* part_m,
                                                    const float* part_l, const float* part_acc,
                                                    int N, int H, int D, int splits) {
    const int ih = blockIdx.x;
    if (ih >= N * H) return;
    const size_t base = (size_t)ih * splits;
    float big = -INFINITY;
    for (int s = 0; s < splits; ++s) big = fmaxf(big, part_m[base + s]);
    float total = 0.0f;
    for (int s = 0; s < splits; ++s) {
        const float ms = part_m[base + s];
        if (ms != -INFINITY) total += expf(ms - big) * part_l[base + s];
    }
    const float inv = 1.0f / total;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < splits; ++s) {
            const float ms = part_m[base + s];
            if (ms != -INFINITY) acc += expf(ms - big) * part_acc[(base + s) * D + d];
        }
        store_bf16(out, (size_t)ih * D + d, acc * inv);
    }
}
