// kernels/cross_entropy.cu — fused softmax cross-entropy with a loss mask, writing the gradient
// over the logits in place (CPU twin: `cross_entropy` in src/backend/cpu/mod.rs).
//
// cross_entropy_fused(bf16* logits, float* losses, const int* targets, int N, int V, float scale)
//   logits [N, V] (bf16, overwritten with the gradient); losses [N] (fp32); targets [N], the loss
//   mask folded in: a negative target is a masked row. (The host passes pointers into a
//   micro-batch's targets and losses at a chunk's first row, so a chunked head uploads the
//   targets once and reads the losses once.)
//   Row r with targets[r] ≥ 0: m = max_j x_j; s = Σ_j exp(x_j − m); lse = m + log(s);
//     losses[r] = lse − x[target];  logits[r, j] = exp(x_j − m)·(scale / s) − scale·[j == target]
//     (= scale·(softmax_j − onehot_j), computed the CPU's way).
//   Row r with targets[r] < 0: losses[r] = 0 and the row is zeroed.
//   Two passes over the row: the first keeps each thread's running max and its sum of
//   exp(x − max) (rescaled when the max grows: online softmax), and the block combines the
//   (max, sum) pairs in a fixed order; the second writes the gradient. x[target] is read by every
//   thread before the first pass, and each thread overwrites only the logits it read itself, so
//   nothing is read after it is written. With V mod 8 = 0 and an aligned array every access
//   moves 8 bf16 (16 bytes); otherwise one element. The host sums losses in f64 in row order.
//   A target ≥ V (a host bug: the host checks targets) gives losses[r] = NaN and a gradient
//   without the one-hot term.
//   Launch: grid (N), block (512), dynamic shared 0.
#include "common.cuh"

// Running (max, Σ exp(x − max)) of one thread (`fold` adds values) or of several (`merge`).
struct MaxSum {
    float m, s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
    const float m = fmaxf(a.m, b.m);
    // A side whose max is the new max keeps its sum; the other is rescaled (exp(−inf) = 0 for an
    // empty side). Addition commutes, so merge(a, b) and merge(b, a) are bitwise equal.
    const float sa = a.m == m ? a.s : a.s * expf(a.m - m);
    const float sb = b.m == m ? b.s : b.s * expf(b.m - m);
    return MaxSum{m, sa + sb};
}

// The (max, sum) of the whole block, the same bits in every thread (fixed-order butterfly and
// per-warp combination, as block_reduce_sum). `scratch` holds 64 floats.
__device__ __forceinline__ MaxSum block_reduce_max_sum(MaxSum v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int nwarps = (int)(blockDim.x >> 5);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = merge(v, MaxSum{shfl_xor(v.m, o), shfl_xor(v.s, o)});
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = v.m;
        scratch[32 + warp] = v.s;
    }
    __syncthreads();
    MaxSum r = lane < nwarps ? MaxSum{scratch[lane], scratch[32 + lane]} : MaxSum{-INFINITY, 0.0f};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) r = merge(r, MaxSum{shfl_xor(r.m, o), shfl_xor(r.s, o)});
    return r;
}

// Fold n values into the running pair: one rescale per group, then the group's exponentials.
template <int n>
__device__ __forceinline__ MaxSum fold(MaxSum acc, const float* x) {
    float gm = x[0];
#pragma unroll
    for (int e = 1; e < n; ++e) gm = fmaxf(gm, x[e]);
    const float m = fmaxf(acc.m, gm);
    float s = acc.m == m ? acc.s : acc.s * expf(acc.m - m);
#pragma unroll
    for (int e = 0; e < n; ++e) s += expf(x[e] - m);
    return MaxSum{m, s};
}

extern "C" __global__ void cross_entropy_fused(bf16* logits, float* losses, const int* targets,
                                               int N, int V, float scale) {
    KILN_SHARED(float, scratch, 64);
    const int row = blockIdx.x;
    if (row >= N) return;  // block-uniform
    bf16* x = logits + (size_t)row * V;
    const int chunks = V % 8 == 0 && aligned16(logits) ? V / 8 : 0;

    const int target = targets[row];
    if (target < 0) {  // masked; block-uniform
        const float zero[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int c = threadIdx.x; c < chunks; c += blockDim.x) store8_bf16(x + 8 * c, zero);
        for (int j = 8 * chunks + threadIdx.x; j < V; j += blockDim.x) store_bf16(x, j, 0.0f);
        if (threadIdx.x == 0) losses[row] = 0.0f;
        return;
    }

    const bool target_ok = target < V;
    const float x_target = target_ok ? load_bf16(x, target) : NAN;

    MaxSum acc{-INFINITY, 0.0f};
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        float v[8];
        load8_bf16(x + 8 * c, v);
        acc = fold<8>(acc, v);
    }
    for (int j = 8 * chunks + threadIdx.x; j < V; j += blockDim.x) {
        const float v = load_bf16(x, j);
        acc = fold<1>(acc, &v);
    }
    // Its __syncthreads also order every read of the row before the first write.
    const MaxSum t = block_reduce_max_sum(acc, scratch);
    const float m = t.m;

    if (threadIdx.x == 0) losses[row] = (m + logf(t.s)) - x_target;
    const float k = scale / t.s;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        float v[8];
        load8_bf16(x + 8 * c, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            v[e] = expf(v[e] - m) * k;
            if (8 * c + e == target) v[e] -= scale;
        }
        store8_bf16(x + 8 * c, v);
    }
    for (int j = 8 * chunks + threadIdx.x; j < V; j += blockDim.x) {
        float g = expf(load_bf16(x, j) - m) * k;
        if (j == target) g -= scale;
        store_bf16(x, j, g);
    }
}
