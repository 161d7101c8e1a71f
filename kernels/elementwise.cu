// kernels/elementwise.cu — elementwise addition, the parameters' bf16 working copy, and the
// sum-of-squares partials (CPU twins: `add_assign`, `sum_squares` in src/backend/cpu/mod.rs;
// `cast_f32_to_bf16` refreshes a parameter's bf16 working copy from its fp32 master:
// `CudaBackend::sync_param_copy`).
//
// add_bf16 and cast_f32_to_bf16 are 1-D grid-stride loops: block (256), grid
// (min(ceil(n / 256), e.g. 65535)), dynamic shared 0. Flat arrays of n elements.
//   add_bf16(bf16* y, const bf16* x, int n)          y = bf16(float(y) + float(x))
//   cast_f32_to_bf16(bf16* y, const float* x, int n) y = bf16(x) (round to nearest even)
//
// sum_squares_f32(float* partials, const float* x, int n)
//   partials [G] with G = gridDim.x (host-chosen, e.g. 1024); block (256), dynamic shared 0.
//   partials[b] = Σ x[i]² over i = b·256 + threadIdx.x + k·G·256, k = 0, 1, …: each thread
//   sums its elements serially in k order, then the block sums the 256 per-thread values with
//   the fixed-order block reduction. The host adds the G partials in f64, in index order.
#include "common.cuh"

extern "C" __global__ void add_bf16(bf16* y, const bf16* x, int n) {
    for (size_t i = grid_stride_start(); i < (size_t)n; i += grid_stride_step()) {
        store_bf16(y, i, load_bf16(y, i) + load_bf16(x, i));
    }
}

extern "C" __global__ void sum_squares_f32(float* partials, const float* x, int n) {
    KILN_SHARED(float, scratch, 32);
    float acc = 0.0f;
    for (size_t i = grid_stride_start(); i < (size_t)n; i += grid_stride_step()) {
        acc += x[i] * x[i];
    }
    acc = block_reduce_sum(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

extern "C" __global__ void cast_f32_to_bf16(bf16* y, const float* x, int n) {
    for (size_t i = grid_stride_start(); i < (size_t)n; i += grid_stride_step()) {
        store_bf16(y, i, x[i]);
    }
}
