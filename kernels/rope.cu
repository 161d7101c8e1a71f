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
//   Each thread owns one (i, h, j) pair — with half mod 8 = 0 and aligned arrays, eight
//   consecutive j (16-byte accesses of x, cos and sin) — so the in-place update never races.
//   Indices in 32 bits (N·heads·head_dim fits an int: the host checks).
//   Launch: 1-D grid-stride over N·heads·half / 8 chunks: block (256), grid
//   (min(ceil(N·heads·half / 8 / 256), e.g. 65535)), dynamic shared 0.
//   The host checks positions[i] < max_pos (the kernel does not know max_pos).
#include "common.cuh"

// Rotate the pair (a, b) by (c, s): s already carries the direction's sign.
__device__ __forceinline__ void rotate(float& a, float& b, float c, float s) {
    const float a0 = a;
    a = a0 * c - b * s;
    b = b * c + a0 * s;
}

extern "C" __global__ void rope(bf16* x, const int* positions, const float* cos,
                                const float* sin, int N, int heads, int head_dim,
                                int direction) {
    const unsigned half = (unsigned)(head_dim / 2);
    const unsigned rows = (unsigned)N * (unsigned)heads;  // (i, h) pairs
    const float sign = direction < 0 ? -1.0f : 1.0f;      // exact negation for the backward
    if (half % 8 == 0 && aligned16(x) && aligned16(cos) && aligned16(sin)) {
        const unsigned row_chunks = half / 8;
        for (unsigned idx = grid_start32(); idx < rows * row_chunks; idx += grid_step32()) {
            const unsigned ih = idx / row_chunks;  // i·heads + h
            const unsigned j = 8 * (idx - ih * row_chunks);
            const unsigned i = ih / (unsigned)heads;
            bf16* row = x + ih * (unsigned)head_dim;
            const unsigned tab = (unsigned)positions[i] * half + j;
            float a[8], b[8], c[8], sn[8];
            load8_bf16(row + j, a);
            load8_bf16(row + j + half, b);
            load4_f32(cos + tab, c);
            load4_f32(cos + tab + 4, c + 4);
            load4_f32(sin + tab, sn);
            load4_f32(sin + tab + 4, sn + 4);
#pragma unroll
            for (int e = 0; e < 8; ++e) rotate(a[e], b[e], c[e], sign * sn[e]);
            store8_bf16(row + j, a);
            store8_bf16(row + j + half, b);
        }
        return;
    }
    for (unsigned idx = grid_start32(); idx < rows * half; idx += grid_step32()) {
        const unsigned ih = idx / half;
        const unsigned j = idx - ih * half;
        const unsigned i = ih / (unsigned)heads;
        const unsigned base = ih * (unsigned)head_dim;
        const unsigned tab = (unsigned)positions[i] * half + j;
        float a = load_bf16(x, base + j);
        float b = load_bf16(x, base + j + half);
        rotate(a, b, cos[tab], sign * sin[tab]);
        store_bf16(x, base + j, a);
        store_bf16(x, base + j + half, b);
    }
}
