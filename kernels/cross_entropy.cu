// kernels/cross_entropy.cu — fused softmax cross-entropy with a loss mask, writing the gradient
// over the logits in place (CPU twin: `cross_entropy` in src/backend/cpu/mod.rs).
//
// cross_entropy_fused(bf16* logits, float* losses, const int* targets, const unsigned char* mask,
//                     int N, int V, float scale)
//   logits [N, V] (bf16, overwritten with the gradient); losses [N] (fp32); targets [N];
//   mask [N] (u8, 0 or 1).
//   Row r with mask[r] != 0: m = max_j x_j; s = Σ_j exp(x_j − m); lse = m + log(s);
//     losses[r] = lse − x[target];  logits[r, j] = exp(x_j − m)·(scale / s) − scale·[j == target]
//     (= scale·(softmax_j − onehot_j), computed the CPU's way).
//   Row r with mask[r] == 0: losses[r] = 0 and the row is zeroed.
//   Passes: max, then sum (both from the original logits, block reductions in a fixed order),
//   then the write; x[target] is read by every thread before the first reduction, and each
//   thread overwrites only the logits it read itself, so nothing is read after it is written.
//   The host sums losses in f64 in row order. A target outside [0, V) (a host bug: the host
//   checks targets) gives losses[r] = NaN and a gradient without the one-hot term.
//   Launch: grid (N), block (512), dynamic shared 0.
#include "common.cuh"

extern "C" __global__ void cross_entropy_fused(bf16* logits, float* losses, const int* targets,
                                               const unsigned char* mask, int N, int V,
                                               float scale) {
    KILN_SHARED(float, scratch, 32);
    const int row = blockIdx.x;
    if (row >= N) return;  // block-uniform
    const size_t base = (size_t)row * V;

    if (mask[row] == 0) {  // block-uniform
        for (int j = threadIdx.x; j < V; j += blockDim.x) store_bf16(logits, base + j, 0.0f);
        if (threadIdx.x == 0) losses[row] = 0.0f;
        return;
    }

    const int target = targets[row];
    const bool target_ok = target >= 0 && target < V;
    const float x_target = target_ok ? load_bf16(logits, base + target) : NAN;

    float m = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, load_bf16(logits, base + j));
    m = block_reduce_max(m, scratch);

    float s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(load_bf16(logits, base + j) - m);
    s = block_reduce_sum(s, scratch);  // its __syncthreads also orders all reads before writes

    if (threadIdx.x == 0) losses[row] = (m + logf(s)) - x_target;
    const float c = scale / s;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float g = expf(load_bf16(logits, base + j) - m) * c;
        if (j == target) g -= scale;
        store_bf16(logits, base + j, g);
    }
}
