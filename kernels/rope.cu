// kernels/rope.cu — rotate-half RoPE in place, forward and its transpose (CPU twin:
// `rope_rotate` in src/backend/cpu/mod.rs, used by `rope` and `rope_bwd`).
//
// rope(bf16* x, const int* positions, const float* cos, const float* sin, int N, int heads,
//      int head_dim, int direction)
//   x [N, heads, head_dim] (bf16, in place); positions [N]; cos, sin [max_pos, head_dim/2] (fp32).
//   half = head_dim / 2 (head_dim even). For token i, head h, j < half, with a = x[i,h,j],
//   b = x[i,h,j+half], c = cos[positions[i]·half + j], s = sin[positions[i]·half + j]:
//     direction +1 (forward):          x[j] = a·c − b·s,  x[j+half] = b·c + a·s
//     direction −1 (backward, rotation by −θ): x[j] = a·c + b·s,  x[j+half] = b·c − a·s
//   Each thread owns one (i, h, j) pair, so the in-place update never races.
//   Launch: 1-D grid-stride over N·heads·half pairs: block (256), grid (min(ceil(N·heads·half /
//   256), e.g. 65535)), dynamic shared 0.
//   The host checks positions[i] < max_pos (the kernel does not know max_pos).
#include "common.cuh"

extern "C" __global__ void rope(bf16* x, const int* positions, const float* cos,
                                const float* sin, int N, int heads, int head_dim,
                                int direction) {
    const size_t half = (size_t)(head_dim / 2);
    const size_t total = (size_t)N * heads * half;
    const float sign = direction < 0 ? -1.0f : 1.0f;
    for (size_t idx = grid_stride_start(); idx < total; idx += grid_stride_step()) {
        const size_t j = idx % half;
        const size_t ih = idx / half;  // i·heads + h
        const size_t i = ih / heads;
        const size_t base = ih * (size_t)head_dim;
        const size_t tab = (size_t)positions[i] * half + j;
        const float c = cos[tab];
        const float s = sign * sin[tab];  // exact negation for the backward
        const float a = load_bf16(x, base + j);
        const float b = load_bf16(x, base + j + half);
        store_bf16(x, base + j, a * c - b * s);
        store_bf16(x, base + j + half, b * c + a * s);
    }
}
