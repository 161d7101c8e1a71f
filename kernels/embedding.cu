// kernels/embedding.cu — token embedding lookup and its deterministic backward (CPU twins:
// `embedding`, `embedding_dw` in src/backend/cpu/mod.rs).
//
// embedding_fwd(bf16* out, const bf16* table, const int* ids, int N, int d)
//   table [V, d] (bf16); ids [N]; out [N, d]: out[i, :] = table[ids[i], :].
//   Launch: 1-D grid-stride over N·d elements, block (256), grid (min(ceil(N·d / 256), e.g.
//   65535)), shared 0. The host checks every id < V (the kernel does not know V).
//
// embedding_bwd(float* dtable, const bf16* dout, const int* order, const int* seg_start,
//               const int* seg_id, int nseg, int d)
//   dtable [V, d] (fp32, accumulated); dout [N, d] (bf16).
//   Host-side preparation (what makes it deterministic and race-free): `order` [N] is the token
//   indices 0..N-1 stably sorted by id; the distinct ids form nseg runs; run s covers
//   order[seg_start[s] .. seg_start[s+1]) (seg_start has nseg+1 entries, seg_start[nseg] = N)
//   and has id seg_id[s]. Distinct runs write distinct rows, so blocks never race.
//   dtable[seg_id[s], j] = ((dtable[seg_id[s], j] + dout[order[k0], j]) + dout[order[k0+1], j])
//   + … in token order — the CPU's order.
//   Launch: grid (nseg), block (256) looping over j, shared 0.
#include "common.cuh"

extern "C" __global__ void embedding_fwd(bf16* out, const bf16* table, const int* ids, int N,
                                         int d) {
    const size_t total = (size_t)N * d;
    for (size_t idx = grid_stride_start(); idx < total; idx += grid_stride_step()) {
        const size_t i = idx / (size_t)d;
        const size_t j = idx % (size_t)d;
        out[idx] = table[(size_t)ids[i] * d + j];
    }
}

extern "C" __global__ void embedding_bwd(float* dtable, const bf16* dout, const int* order,
                                         const int* seg_start, const int* seg_id, int nseg,
                                         int d) {
    const int s = blockIdx.x;
    if (s >= nseg) return;  // block-uniform
    const int k0 = seg_start[s];
    const int k1 = seg_start[s + 1];
    const size_t row = (size_t)seg_id[s] * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = dtable[row + j];
        for (int k = k0; k < k1; ++k) acc += load_bf16(dout, (size_t)order[k] * d + j);
        dtable[row + j] = acc;
    }
}
