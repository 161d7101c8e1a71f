// kernels/elementwise.cu — elementwise addition, the parameters' bf16 working copy, and the
// sum-of-squares partials (CPU twins: `add_assign`, `sum_squares` in src/backend/cpu/mod.rs;
// `cast_f32_to_bf16` refreshes a parameter's bf16 working copy from its fp32 master:
// `CudaBackend::sync_param_copy`).
//
// add_bf16, cast_f32_to_bf16 and add_bias_bf16 are 1-D grid-stride loops: block (256), grid
// (min(ceil(n / 8 / 256), e.g. 65535)), dynamic shared 0. Flat arrays of n elements, 8 per
// thread and step with 16-byte accesses when the arrays are 16-byte aligned (add_bias_bf16:
// also d mod 8 = 0), the rest element by element; 32-bit indices.
//   add_bf16(bf16* y, const bf16* x, int n)          y = bf16(float(y) + float(x))
//   cast_f32_to_bf16(bf16* y, const float* x, int n) y = bf16(x) (round to nearest even)
//   add_bias_bf16(bf16* y, const bf16* b, int n, int d) y[i] = bf16(float(y[i]) + float(b[i % d]))
//     (y [n/d, d], b [d]: a linear layer's bias; CPU twin `add_bias`)
//
// bias_grad_partials(float* partials, const bf16* dy, int rows, int d, int rows_per_block)
//   partials [ceil(rows / rows_per_block), d] (overwritten): partials[b, j] = Σ dy[r, j] over
//   the block's rows r, in row order. Then reduce_partials_add (rmsnorm.cu) adds them into the
//   fp32 gradient in block order. rows_per_block = 32 reproduces the CPU's grouping (CPU twin
//   `bias_grad`). Launch: grid (ceil(rows / rows_per_block)), block (256), dynamic shared 0;
//   threads stride over j, so a warp reads consecutive columns of a row.
//
// sum_squares_f32(float* partials, const float* x, int n)
//   partials [G] with G = gridDim.x (host-chosen, e.g. 1024); block (256), dynamic shared 0.
//   partials[b] = Σ x[i]² over i = b·256 + threadIdx.x + k·G·256, k = 0, 1, …: each thread
//   sums its elements serially in k order, then the block sums the 256 per-thread values with
//   the fixed-order block reduction. The host adds the G partials in f64, in index order.
#include "common.cuh"

extern "C" __global__ void add_bf16(bf16* y, const bf16* x, int n) {
    const unsigned chunks = aligned16(y) && aligned16(x) ? n / 8 : 0;
    for (unsigned c = grid_start32(); c < chunks; c += grid_step32()) {
        float a[8], b[8];
        load8_bf16(y + 8 * c, a);
        load8_bf16(x + 8 * c, b);
#pragma unroll
        for (int e = 0; e < 8; ++e) a[e] += b[e];
        store8_bf16(y + 8 * c, a);
    }
    for (unsigned i = 8 * chunks + grid_start32(); i < (unsigned)n; i += grid_step32()) {
        store_bf16(y, i, load_bf16(y, i) + load_bf16(x, i));
    }
}

extern "C" __global__ void add_f32_range(float* y, int y_off, const float* x, int x_off, int n) {
    for (size_t i = grid_stride_start(); i < (size_t)n; i += grid_stride_step()) {
        y[(size_t)y_off + i] += x[(size_t)x_off + i];
    }
}

extern "C" __global__ void add_bias_bf16(bf16* y, const bf16* b, int n, int d) {
    const unsigned chunks = aligned16(y) && aligned16(b) && d % 8 == 0 ? n / 8 : 0;
    const unsigned row_chunks = d / 8;
    for (unsigned c = grid_start32(); c < chunks; c += grid_step32()) {
        float a[8], w[8];
        load8_bf16(y + 8 * c, a);
        load8_bf16(b + 8 * (c % row_chunks), w);
#pragma unroll
        for (int e = 0; e < 8; ++e) a[e] += w[e];
        store8_bf16(y + 8 * c, a);
    }
    for (unsigned i = 8 * chunks + grid_start32(); i < (unsigned)n; i += grid_step32()) {
        store_bf16(y, i, load_bf16(y, i) + load_bf16(b, i % (unsigned)d));
    }
}

extern "C" __global__ void bias_grad_partials(float* partials, const bf16* dy, int rows, int d,
                                              int rows_per_block) {
    const int r0 = blockIdx.x * rows_per_block;
    const int r1 = min(r0 + rows_per_block, rows);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = 0.0f;
        for (int r = r0; r < r1; ++r) acc += load_bf16(dy, (size_t)r * d + j);
        partials[(size_t)blockIdx.x * d + j] = acc;
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
    cast_f32_to_bf16_loop(y, x, n);
}
