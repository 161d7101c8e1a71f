// kernels/embedding.cu — token embedding lookup and its deterministic backward (CPU twins:
// `embedding`, `embedding_dw` in src/backend/cpu/mod.rs).
//
// embedding_fwd(bf16* out, const bf16* table, const int* ids, int N, int d)
//   table [V, d] (bf16); ids [N]; out [N, d]: out[i, :] = table[ids[i], :].
//   Launch: 1-D grid-stride over N·d / 8 chunks, block (256), grid (min(ceil(N·d / 8 / 256),
//   e.g. 65535)), shared 0. With d mod 8 = 0 and aligned arrays each step copies 8 bf16 (16
//   bytes); otherwise element by element. Indices in 32 bits (N·d fits an int: the host checks);
//   only the table row offset ids[i]·d is formed in 64 bits. The host checks every id < V (the
//   kernel does not know V).
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
    const unsigned total = (unsigned)N * (unsigned)d;
    if (d % 8 == 0 && aligned16(out) && aligned16(table)) {
        const unsigned row_chunks = d / 8;
        for (unsigned c = grid_start32(); c < total / 8; c += grid_step32()) {
            const unsigned i = c / row_chunks;
            const unsigned j = 8 * (c - i * row_chunks);
            st_v4(out + 8 * c, ld_v4(table + (size_t)ids[i] * d + j));
        }
        return;
    }
    for (unsigned idx = grid_start32(); idx < total; idx += grid_step32()) {
        const unsigned i = idx / (unsigned)d;
        const unsigned j = idx - i * (unsigned)d;
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
