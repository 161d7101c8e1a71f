//! The Backend boundary: the list of operations the Llama-family model uses, over buffers the
//! backend owns. The model (`crate::model`) is written once against this trait; `cpu::CpuBackend`
//! is the f32 reference (generic over the float type, so gradient checks run it in f64), and the
//! CUDA backend implements the same trait with its own kernels. The operations only generation
//! uses (KV cache, decode attention, row-independent GEMMs) form the sub-trait
//! [`GenerationBackend`], which both backends implement too.
//!
//! Conventions (shapes are row-major, innermost last):
//! * Weights are in Hugging Face layout `[out, in]`; a linear layer is `y = x · wᵀ`.
//! * Token-major activations: `[N, d]` with N = B·T rows.
//! * Attention tensors: q `[B, T, H, D]`, k and v `[B, T, Hkv, D]` (H a multiple of Hkv: GQA),
//!   out `[B, T, H, D]`, lse `[B, H, T]`.
//! * Gradient ops that say "accumulate" add into their output (`+=`); the others overwrite.
//! * Small per-token integer inputs (token ids, positions, document ids, targets, loss mask) are
//!   host slices; a device backend uploads them.
//!
//! Each operation's preconditions (buffer lengths against the shapes passed, buffer kinds, index
//! ranges) are checked in one place, [`contract`], which both backends call before computing.
//!
//! This trait is not a general tensor library: add an operation only when the model needs one.

pub mod contract;
pub mod cpu;
#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
pub mod cuda;
pub mod tracked;

/// Shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// B
    pub batch: usize,
    /// Tq: query positions per sequence.
    pub seq: usize,
    /// H
    pub heads: usize,
    /// Hkv (divides H)
    pub kv_heads: usize,
    /// D
    pub head_dim: usize,
    /// Causal (query t sees keys s ≤ t of its document) or bidirectional within documents.
    /// Training and generation are causal; the non-causal case serves kernel tests and benchmarks.
    pub causal: bool,
}

/// Which attention implementation a backend runs (`train.attention`): kiln's flash kernels, or the
/// reference path (materialised scores; the CPU backend always runs it).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernel {
    #[default]
    Flash,
    Reference,
}

/// What a buffer holds. A mixed-precision backend picks storage by kind (the CUDA backend: bf16
/// activations, fp32 master weights with a bf16 working copy, fp32 gradients, optimizer state
/// and statistics); the CPU reference stores everything in its one float type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufKind {
    /// Parameters (master copy plus the compute copy).
    Param,
    /// Parameter gradients.
    Grad,
    /// Optimizer moments.
    Optim,
    /// Activations and their gradients.
    Act,
    /// Per-row statistics and tables kept in full precision (rstd, lse, RoPE tables).
    Stat,
}

/// AdamW hyper-parameters for one update (decoupled weight decay, bias-corrected moments).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Applied as p -= lr · wd · p (0 for parameters that are not decayed).
    pub weight_decay: f32,
    /// 1-based step count, for bias correction.
    pub step: u64,
    /// Gradients are multiplied by this before the update (clipping and loss scaling).
    pub grad_scale: f32,
}

pub trait Backend: Send + Sync {
    /// A buffer of the backend's compute type.
    type Buf: Send + Sync;

    fn name(&self) -> String;

    /// Bytes one element of a buffer of this kind occupies in the storage its operations read
    /// (for bandwidth figures).
    fn elem_bytes(&self, kind: BufKind) -> usize;

    /// Bytes one element of a buffer of this kind occupies in all its storages (CUDA parameters:
    /// the fp32 master and the bf16 copy); what memory plans and measurements count.
    fn storage_bytes(&self, kind: BufKind) -> usize {
        self.elem_bytes(kind)
    }

    /// Memory one device has, in bytes (None when unknown).
    fn device_memory_bytes(&self) -> Option<f64>;

    /// Nominal dense peak FLOP/s of one device in the precision the matrix multiplies run in, the
    /// denominator of MFU; 0 when unknown (then `train.peak_tflops` gives it).
    fn peak_flops(&self) -> f64;

    /// Wait until all queued work is done (a no-op on the CPU; timing on a GPU needs it).
    fn synchronize(&self) {}

    /// Bytes of device memory in use now, as the device reports it (every allocation, the
    /// backend's buffers and everything else); None where there is no such figure (the CPU).
    fn device_memory_in_use(&self) -> Option<f64> {
        None
    }

    /// The device allocator's high-water mark in bytes, where there is one (CUDA's memory pool).
    fn allocator_peak(&self) -> Option<f64> {
        None
    }

    /// Bytes of buffers alive and at their peak, by kind, where the backend measures them
    /// ([`tracked::Tracked`]); None otherwise.
    fn memory_peaks(&self) -> Option<tracked::MemPeaks> {
        None
    }

    // ---- memory ---------------------------------------------------------------------------
    /// A zero-filled buffer.
    fn alloc(&self, len: usize, kind: BufKind) -> Self::Buf;
    fn upload_as(&self, host: &[f32], kind: BufKind) -> Self::Buf;
    fn download(&self, buf: &Self::Buf) -> Vec<f32>;
    fn buf_len(&self, buf: &Self::Buf) -> usize;
    /// The kind a buffer was made with, where the backend records it (None: the backend stores
    /// every kind alike, as the CPU backend does). [`contract`] checks it against the precision
    /// each operation uses the buffer in.
    fn buf_kind(&self, buf: &Self::Buf) -> Option<BufKind>;
    fn fill_zero(&self, buf: &mut Self::Buf);
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf);
    /// Copy `len` elements from `src[src_off..]` into `dst[dst_off..]`.
    fn copy_range(
        &self,
        dst: &mut Self::Buf,
        dst_off: usize,
        src: &Self::Buf,
        src_off: usize,
        len: usize,
    );

    /// dst[dst_off..dst_off + len] += src[src_off..src_off + len] in full precision (both
    /// `Grad`, `Optim` or `Stat`: a sharded optimizer summing reduced gradient slices).
    fn add_range(
        &self,
        dst: &mut Self::Buf,
        dst_off: usize,
        src: &Self::Buf,
        src_off: usize,
        len: usize,
    );

    // ---- linear layers --------------------------------------------------------------------
    /// y[m, n] = x[m, k] · w[n, k]ᵀ  (overwrite)
    fn matmul(&self, y: &mut Self::Buf, x: &Self::Buf, w: &Self::Buf, m: usize, k: usize, n: usize);
    /// dx[m, k] (= or +=) dy[m, n] · w[n, k]
    #[allow(clippy::too_many_arguments)]
    fn matmul_dx(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        w: &Self::Buf,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    );
    /// dw[n, k] += dy[m, n]ᵀ · x[m, k]  (accumulate)
    fn matmul_dw(
        &self,
        dw: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        m: usize,
        k: usize,
        n: usize,
    );

    // ---- embedding ------------------------------------------------------------------------
    /// out[N, d] = table[ids[i], :]
    fn embedding(&self, out: &mut Self::Buf, table: &Self::Buf, ids: &[u32], d: usize);
    /// dtable[ids[i], :] += dout[i, :]  (accumulate)
    fn embedding_dw(&self, dtable: &mut Self::Buf, dout: &Self::Buf, ids: &[u32], d: usize);

    // ---- RMSNorm --------------------------------------------------------------------------
    /// out[N, d] = x · rstd · w, rstd[N] = 1 / sqrt(mean(x²) + eps)  (rstd saved for backward)
    fn rmsnorm(
        &self,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        d: usize,
        eps: f32,
    );
    /// dx[N, d] += ∂L/∂x, dw[d] += ∂L/∂w  (both accumulate)
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_bwd(
        &self,
        dx: &mut Self::Buf,
        dw: &mut Self::Buf,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rstd: &Self::Buf,
        d: usize,
    );

    // ---- RoPE (Hugging Face rotate-half: pairs i and i + D/2) ---------------------------------
    /// In place on x[N, heads, D]: token i is at position positions[i];
    /// cos/sin are tables [max_pos, D/2] (frequency scaling already applied).
    fn rope(
        &self,
        x: &mut Self::Buf,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        cos: &Self::Buf,
        sin: &Self::Buf,
    );
    /// In place on dx: the transpose of `rope` (rotation by -angle).
    fn rope_bwd(
        &self,
        dx: &mut Self::Buf,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        cos: &Self::Buf,
        sin: &Self::Buf,
    );

    // ---- attention ------------------------------------------------------------------------
    /// Self-attention with document masking and GQA, softmax scale 1/sqrt(D).
    /// Query t attends key s iff doc_ids[b·T + s] == doc_ids[b·T + t] and, when `s.causal`,
    /// s <= t.
    /// Writes out [B, T, H, D] and lse [B, H, T] (natural-log log-sum-exp of the scaled scores).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        doc_ids: &[u32],
        s: AttnShape,
    );
    /// Gradients of `attention`; overwrites dq [B,T,H,D], dk and dv [B,T,Hkv,D].
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        doc_ids: &[u32],
        s: AttnShape,
    );
    // ---- SwiGLU ---------------------------------------------------------------------------
    /// out = silu(gate) ⊙ up, elementwise.
    fn swiglu(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf);
    /// Overwrites dgate and dup.
    fn swiglu_bwd(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
    );

    // ---- loss -----------------------------------------------------------------------------
    /// Cross-entropy over rows row0 … row0+R−1 of a batch of N rows with targets[N] and loss
    /// mask[N] (0/1), their logits in `logits` [R, V]: writes row r's loss
    /// mask · (logsumexp(row) − row[target]) to `losses[r]` (a full-precision buffer of at
    /// least N) and overwrites `logits` with the gradient of scale · their sum:
    /// scale · mask · (softmax(row) − onehot(target)). Every target id must be < V. Nothing is
    /// read back (a device queues the work; [`Backend::read_sum`] reads the losses), and the
    /// whole batch's targets and mask are passed with every chunk of rows, so a device uploads
    /// them once and a loss computed in chunks costs one read, not one per chunk.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_rows(
        &self,
        logits: &mut Self::Buf,
        targets: &[u32],
        mask: &[u8],
        row0: usize,
        vocab: usize,
        scale: f32,
        losses: &mut Self::Buf,
    );

    /// As [`Backend::cross_entropy_rows`] over a whole batch (logits [N, V]), returning the sum
    /// of the row losses (in f64, in row order; waits for the device).
    fn cross_entropy(
        &self,
        logits: &mut Self::Buf,
        targets: &[u32],
        mask: &[u8],
        vocab: usize,
        scale: f32,
    ) -> f64 {
        let mut losses = self.alloc(targets.len(), BufKind::Stat);
        self.cross_entropy_rows(logits, targets, mask, 0, vocab, scale, &mut losses);
        self.read_sum(&losses, targets.len())
    }

    /// Σ x[..len] in f64, in index order, read back at the buffer's own precision (waits for the
    /// device): the loss of row losses written by [`Backend::cross_entropy_rows`].
    fn read_sum(&self, x: &Self::Buf, len: usize) -> f64 {
        self.download(x)[..len].iter().map(|&v| v as f64).sum()
    }

    // ---- elementwise, reductions, optimizer ------------------------------------------------
    /// y += x
    fn add_assign(&self, y: &mut Self::Buf, x: &Self::Buf);
    /// y[r, j] += b[j] for every row r of y [rows, len(b)] (a linear layer's bias).
    fn add_bias(&self, y: &mut Self::Buf, b: &Self::Buf);
    /// db[j] += Σ_r dy[r, j] over dy [rows, len(db)]: rows summed in blocks of 32 in row order,
    /// the block sums added into db in block order (the bias's gradient).
    fn bias_grad(&self, db: &mut Self::Buf, dy: &Self::Buf);
    /// Σ x², accumulated in f64.
    fn sum_squares(&self, x: &Self::Buf) -> f64;
    /// Σ over `xs` of `sum_squares(x)`, added in order, bit for bit: the gradient norm of many
    /// tensors. A device backend reads all the partial sums back at once (one transfer, not one
    /// per tensor).
    fn sum_squares_many(&self, xs: &[&Self::Buf]) -> f64 {
        xs.iter().map(|x| self.sum_squares(x)).sum()
    }
    /// One AdamW step on p with gradient g (times grad_scale) and moments m, v (kept in f32 or
    /// wider by the backend).
    fn adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: AdamW,
    );
}

/// The operations only generation uses (`model::generate`'s KV-cache path and the batched
/// engine `model::batched`): row-independent GEMMs, attention against a KV cache, cache writes
/// and decode attention. Their preconditions are checked in [`contract`] too.
pub trait GenerationBackend: Backend {
    /// y[m, n] = x[m, k] · w[n, k]ᵀ (overwrite), each row computed on its own: a row's result
    /// has the same bits whatever m is and whichever rows share the call. Batched generation uses
    /// it, so that a sequence's tokens do not depend on its batch-mates (batched = unbatched,
    /// resumed = uninterrupted). The CPU backend guarantees this; a GPU backend may route it to
    /// its ordinary GEMM and document that it does not.
    fn matmul_rowwise(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        m: usize,
        k: usize,
        n: usize,
    );

    /// Attention of new queries against a KV cache (generation). q [B, Tq, H, D] are positions
    /// past..past+Tq; k_cache/v_cache [B, max_len, Hkv, D] hold positions 0..past+Tq (the new
    /// keys already written). Causal; no document masking. With `window = Some(w)` (Mistral's
    /// sliding window) the query at position p attends keys max(0, p+1−w) ..= p only. Writes
    /// out [B, Tq, H, D].
    #[allow(clippy::too_many_arguments)]
    fn attention_cached(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        max_len: usize,
        past: usize,
        window: Option<usize>,
        s: AttnShape,
    );

    /// Write rows of `src` [N, W] into a KV cache [S, max_len, W]: row i goes to slot
    /// `slots[i]`, position `positions[i]` (every slot < S, every position < max_len).
    fn kv_write(
        &self,
        cache: &mut Self::Buf,
        src: &Self::Buf,
        slots: &[u32],
        positions: &[u32],
        max_len: usize,
    );
    /// Decode attention, one query per sequence: q [N, H, D] (s.batch = N, s.seq = 1); sequence
    /// i lives in cache slot `slots[i]` of k_cache/v_cache [S, max_len, Hkv, D] and attends its
    /// keys 0..lens[i] (its new key already written), or with `window = Some(w)` only the last
    /// min(w, lens[i]) of them. Writes out [N, H, D].
    #[allow(clippy::too_many_arguments)]
    fn attention_decode(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        slots: &[u32],
        lens: &[u32],
        max_len: usize,
        window: Option<usize>,
        s: AttnShape,
    );
}
