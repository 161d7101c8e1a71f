//! The preconditions of every `Backend` operation, checked in one place. Both backends call an
//! operation's check first (`CpuBackend` before its loops, `CudaBackend` before any launch or
//! GEMM), so a buffer that does not match the shapes passed is a panic naming the operation, the
//! buffer, its length and the length the shapes give (`rmsnorm: x has 1000 elements,
//! len(rstd)·d = 1024`); on a GPU it is never an out-of-bounds read or write.
//!
//! What is checked, all O(1) in the buffers (lengths and kinds, never contents):
//! * every buffer's length against the shapes passed (exactly: a buffer is never "long enough");
//! * every buffer's kind, where the backend records one (`Backend::buf_kind`), against the
//!   precision the operation reads or writes it in ([`Precision`]);
//! * shape invariants (H a multiple of Hkv, an even head dim, 1-based AdamW steps);
//! * host index slices (token ids, positions, cache slots and lengths, targets) against the
//!   table or cache they index: O(tokens), as cheap as uploading them.
//!
//! Apart from the index scans, a check costs a few comparisons per operation.

use super::{AdamW, AttnShape, Backend, BufKind};

/// The storage an operation reads or writes an operand in. A mixed-precision backend stores
/// only what a buffer's kind needs (the CUDA backend: bf16 for activations, fp32 for gradients,
/// optimizer moments and statistics, both for parameters), so an operand of another kind has no
/// storage in that precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// The compute precision: activations and the parameters' working copy (`Act`, `Param`).
    Compute,
    /// Full precision: the parameters' master copy, gradients, optimizer moments and per-row
    /// statistics (`Param`, `Grad`, `Optim`, `Stat`).
    Full,
    /// Both: parameters only (the optimizer updates the master copy and refreshes the working
    /// copy).
    Both,
}

impl Precision {
    /// Whether a buffer of `kind` has storage in this precision.
    pub fn admits(self, kind: BufKind) -> bool {
        match self {
            Precision::Compute => matches!(kind, BufKind::Act | BufKind::Param),
            Precision::Full => !matches!(kind, BufKind::Act),
            Precision::Both => kind == BufKind::Param,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Precision::Compute => "the compute precision",
            Precision::Full => "full precision",
            Precision::Both => "both precisions",
        }
    }

    fn kinds(self) -> &'static str {
        match self {
            Precision::Compute => "Act or Param",
            Precision::Full => "Param, Grad, Optim or Stat",
            Precision::Both => "Param",
        }
    }
}

/// a·b·…, saturating: a product that overflows matches no buffer's length.
fn prod(factors: &[usize]) -> usize {
    factors.iter().fold(1usize, |a, &b| a.saturating_mul(b))
}

/// The checks of one operation on one backend.
struct Op<'a, B: Backend + ?Sized> {
    be: &'a B,
    name: &'static str,
}

impl<'a, B: Backend + ?Sized> Op<'a, B> {
    fn new(be: &'a B, name: &'static str) -> Self {
        Op { be, name }
    }

    fn len(&self, buf: &B::Buf) -> usize {
        self.be.buf_len(buf)
    }

    /// `buf` (called `arg`) holds storage in precision `p`.
    #[track_caller]
    fn kind(&self, arg: &str, buf: &B::Buf, p: Precision) -> &Self {
        if let Some(kind) = self.be.buf_kind(buf) {
            assert!(
                p.admits(kind),
                "{}: {arg} is of kind {kind:?}; the operation uses it in {}, which only {} buffers have",
                self.name,
                p.what(),
                p.kinds()
            );
        }
        self
    }

    /// `buf` (called `arg`) holds storage in precision `p` and `want` elements (`what`: the
    /// shape expression that gives it).
    #[track_caller]
    fn buf(&self, arg: &str, buf: &B::Buf, p: Precision, what: &str, want: usize) -> &Self {
        self.kind(arg, buf, p);
        let len = self.len(buf);
        assert!(
            len == want,
            "{}: {arg} has {len} elements, {what} = {want}",
            self.name
        );
        self
    }

    /// A host slice (`arg`) has `want` entries.
    #[track_caller]
    fn host(&self, arg: &str, len: usize, what: &str, want: usize) -> &Self {
        assert!(
            len == want,
            "{}: {arg} has {len} entries, {what} = {want}",
            self.name
        );
        self
    }

    /// Every entry of a host index slice is below `bound` (`what`: what it indexes).
    #[track_caller]
    fn below(&self, arg: &str, values: &[u32], bound: usize, what: &str) -> &Self {
        if let Some(&bad) = values.iter().find(|&&x| x as usize >= bound) {
            panic!("{}: {arg} {bad} >= {what} {bound}", self.name);
        }
        self
    }

    /// `len(buf)` is a multiple of the row width `d`; returns the rows, len(buf) / d (len(buf)
    /// for d = 0).
    #[track_caller]
    fn rows_of(&self, arg: &str, buf: &B::Buf, d: usize) -> usize {
        let len = self.len(buf);
        assert!(
            len.is_multiple_of(d.max(1)),
            "{}: {arg} has {len} elements, not a multiple of d = {d}",
            self.name
        );
        len / d.max(1)
    }

    /// The attention shape's head counts: Hkv > 0 and H a multiple of Hkv.
    #[track_caller]
    fn heads(&self, s: AttnShape) -> &Self {
        assert!(
            s.kv_heads > 0 && s.heads.is_multiple_of(s.kv_heads),
            "{}: heads {} not a multiple of kv_heads {}",
            self.name,
            s.heads,
            s.kv_heads
        );
        self
    }
}

use Precision::{Both, Compute, Full};

// ---- memory ---------------------------------------------------------------------------------------

/// `copy`: dst and src of one length.
#[track_caller]
pub fn copy<B: Backend + ?Sized>(be: &B, dst: &B::Buf, src: &B::Buf) {
    let op = Op::new(be, "copy");
    let n = op.len(dst);
    let len = op.len(src);
    assert!(len == n, "copy: src has {len} elements, len(dst) = {n}");
}

/// `copy_range`: both ranges inside their buffers.
#[track_caller]
pub fn copy_range<B: Backend + ?Sized>(
    be: &B,
    dst: &B::Buf,
    dst_off: usize,
    src: &B::Buf,
    src_off: usize,
    len: usize,
) {
    ranges(
        &Op::new(be, "copy_range"),
        None,
        [dst, src],
        [dst_off, src_off],
        len,
    );
}

/// dst[dst_off..+len] and src[src_off..+len] lie inside their buffers (of `precision`, when
/// given).
#[track_caller]
fn ranges<B: Backend + ?Sized>(
    op: &Op<'_, B>,
    precision: Option<Precision>,
    bufs: [&B::Buf; 2],
    offs: [usize; 2],
    len: usize,
) {
    for ((arg, buf), off) in ["dst", "src"].into_iter().zip(bufs).zip(offs) {
        let have = match precision {
            Some(p) => op.kind(arg, buf, p).len(buf),
            None => op.len(buf),
        };
        assert!(
            off.checked_add(len).is_some_and(|end| end <= have),
            "{}: {arg} has {have} elements, {arg}_off + len = {off} + {len} reaches past it",
            op.name
        );
    }
}

/// `add_range`: as `copy_range`, both buffers in full precision.
#[track_caller]
pub fn add_range<B: Backend + ?Sized>(
    be: &B,
    dst: &B::Buf,
    dst_off: usize,
    src: &B::Buf,
    src_off: usize,
    len: usize,
) {
    let op = Op::new(be, "add_range");
    ranges(&op, Some(Full), [dst, src], [dst_off, src_off], len);
}

// ---- linear layers --------------------------------------------------------------------------------

/// `matmul` and `matmul_rowwise` (`name`): y [m, n], x [m, k], w [n, k].
#[track_caller]
pub fn matmul<B: Backend + ?Sized>(
    be: &B,
    name: &'static str,
    y: &B::Buf,
    x: &B::Buf,
    w: &B::Buf,
    (m, k, n): (usize, usize, usize),
) {
    Op::new(be, name)
        .buf("y", y, Compute, "m·n", prod(&[m, n]))
        .buf("x", x, Compute, "m·k", prod(&[m, k]))
        .buf("w", w, Compute, "n·k", prod(&[n, k]));
}

/// `matmul_dx`: dx [m, k], dy [m, n], w [n, k].
#[track_caller]
pub fn matmul_dx<B: Backend + ?Sized>(
    be: &B,
    dx: &B::Buf,
    dy: &B::Buf,
    w: &B::Buf,
    (m, k, n): (usize, usize, usize),
) {
    Op::new(be, "matmul_dx")
        .buf("dx", dx, Compute, "m·k", prod(&[m, k]))
        .buf("dy", dy, Compute, "m·n", prod(&[m, n]))
        .buf("w", w, Compute, "n·k", prod(&[n, k]));
}

/// `matmul_dw`: dw [n, k] (full precision, accumulated), dy [m, n], x [m, k].
#[track_caller]
pub fn matmul_dw<B: Backend + ?Sized>(
    be: &B,
    dw: &B::Buf,
    dy: &B::Buf,
    x: &B::Buf,
    (m, k, n): (usize, usize, usize),
) {
    Op::new(be, "matmul_dw")
        .buf("dw", dw, Full, "n·k", prod(&[n, k]))
        .buf("dy", dy, Compute, "m·n", prod(&[m, n]))
        .buf("x", x, Compute, "m·k", prod(&[m, k]));
}

// ---- embedding ------------------------------------------------------------------------------------

/// `embedding`: out [N, d] with N = len(ids), table [V, d], every id < V.
#[track_caller]
pub fn embedding<B: Backend + ?Sized>(be: &B, out: &B::Buf, table: &B::Buf, ids: &[u32], d: usize) {
    let op = Op::new(be, "embedding");
    op.buf("out", out, Compute, "len(ids)·d", prod(&[ids.len(), d]))
        .kind("table", table, Compute);
    let vocab = op.rows_of("table", table, d);
    op.below("id", ids, vocab, "vocab");
}

/// `embedding_dw`: dtable [V, d] (full precision), dout [N, d] with N = len(ids), every id < V.
#[track_caller]
pub fn embedding_dw<B: Backend + ?Sized>(
    be: &B,
    dtable: &B::Buf,
    dout: &B::Buf,
    ids: &[u32],
    d: usize,
) {
    let op = Op::new(be, "embedding_dw");
    op.buf("dout", dout, Compute, "len(ids)·d", prod(&[ids.len(), d]))
        .kind("dtable", dtable, Full);
    let vocab = op.rows_of("dtable", dtable, d);
    op.below("id", ids, vocab, "vocab");
}

// ---- RMSNorm --------------------------------------------------------------------------------------

/// `rmsnorm`: rows = len(rstd); out and x [rows, d], w [d]; rstd in full precision.
#[track_caller]
pub fn rmsnorm<B: Backend + ?Sized>(
    be: &B,
    out: &B::Buf,
    rstd: &B::Buf,
    x: &B::Buf,
    w: &B::Buf,
    d: usize,
) {
    let op = Op::new(be, "rmsnorm");
    let rows = op.kind("rstd", rstd, Full).len(rstd);
    op.buf("x", x, Compute, "len(rstd)·d", prod(&[rows, d]))
        .buf("out", out, Compute, "len(rstd)·d", prod(&[rows, d]))
        .buf("w", w, Compute, "d", d);
}

/// `rmsnorm_bwd`: rows = len(rstd); dx, dout and x [rows, d]; w [d]; dw [d] in full precision.
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn rmsnorm_bwd<B: Backend + ?Sized>(
    be: &B,
    dx: &B::Buf,
    dw: &B::Buf,
    dout: &B::Buf,
    x: &B::Buf,
    w: &B::Buf,
    rstd: &B::Buf,
    d: usize,
) {
    let op = Op::new(be, "rmsnorm_bwd");
    let rows = op.kind("rstd", rstd, Full).len(rstd);
    op.buf("dx", dx, Compute, "len(rstd)·d", prod(&[rows, d]))
        .buf("dout", dout, Compute, "len(rstd)·d", prod(&[rows, d]))
        .buf("x", x, Compute, "len(rstd)·d", prod(&[rows, d]))
        .buf("w", w, Compute, "d", d)
        .buf("dw", dw, Full, "d", d);
}

// ---- RoPE -----------------------------------------------------------------------------------------

/// `rope` and `rope_bwd` (`name`): x [N, heads, head_dim] with N = len(positions), head_dim even;
/// cos and sin [max_pos, head_dim/2] in full precision; every position < max_pos.
#[track_caller]
pub fn rope<B: Backend + ?Sized>(
    be: &B,
    name: &'static str,
    x: &B::Buf,
    positions: &[u32],
    (heads, head_dim): (usize, usize),
    cos: &B::Buf,
    sin: &B::Buf,
) {
    let op = Op::new(be, name);
    assert!(head_dim % 2 == 0, "{name}: head_dim {head_dim} is odd");
    op.buf(
        "x",
        x,
        Compute,
        "len(positions)·heads·head_dim",
        prod(&[positions.len(), heads, head_dim]),
    )
    .kind("cos", cos, Full)
    .buf("sin", sin, Full, "len(cos)", op.len(cos));
    let max_pos = op.len(cos) / (head_dim / 2).max(1);
    op.below("position", positions, max_pos, "table length");
}

// ---- attention ------------------------------------------------------------------------------------

/// `attention`: q and out [B, T, H, D], k and v [B, T, Hkv, D], lse [B, H, T] in full
/// precision, doc_ids [B·T]; H a multiple of Hkv.
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn attention<B: Backend + ?Sized>(
    be: &B,
    out: &B::Buf,
    lse: &B::Buf,
    q: &B::Buf,
    k: &B::Buf,
    v: &B::Buf,
    doc_ids: &[u32],
    s: AttnShape,
) {
    let (q_len, kv_len) = qkv_lens(s, s.seq);
    Op::new(be, "attention")
        .heads(s)
        .buf("q", q, Compute, "B·T·H·D", q_len)
        .buf("out", out, Compute, "B·T·H·D", q_len)
        .buf("k", k, Compute, "B·T·Hkv·D", kv_len)
        .buf("v", v, Compute, "B·T·Hkv·D", kv_len)
        .buf("lse", lse, Full, "B·H·T", prod(&[s.batch, s.heads, s.seq]))
        .host("doc_ids", doc_ids.len(), "B·T", prod(&[s.batch, s.seq]));
}

/// `attention_bwd`: dq, dout, out and q [B, T, H, D]; dk, dv, k and v [B, T, Hkv, D]; lse
/// [B, H, T] in full precision; doc_ids [B·T]; H a multiple of Hkv.
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn attention_bwd<B: Backend + ?Sized>(
    be: &B,
    (dq, dk, dv): (&B::Buf, &B::Buf, &B::Buf),
    dout: &B::Buf,
    out: &B::Buf,
    lse: &B::Buf,
    (q, k, v): (&B::Buf, &B::Buf, &B::Buf),
    doc_ids: &[u32],
    s: AttnShape,
) {
    let (q_len, kv_len) = qkv_lens(s, s.seq);
    let op = Op::new(be, "attention_bwd");
    op.heads(s);
    for (arg, buf) in [("q", q), ("dq", dq), ("dout", dout), ("out", out)] {
        op.buf(arg, buf, Compute, "B·T·H·D", q_len);
    }
    for (arg, buf) in [("k", k), ("v", v), ("dk", dk), ("dv", dv)] {
        op.buf(arg, buf, Compute, "B·T·Hkv·D", kv_len);
    }
    op.buf("lse", lse, Full, "B·H·T", prod(&[s.batch, s.heads, s.seq]))
        .host("doc_ids", doc_ids.len(), "B·T", prod(&[s.batch, s.seq]));
}

/// Elements of q [B, rows, H, D] and of k [B, rows, Hkv, D].
fn qkv_lens(s: AttnShape, rows: usize) -> (usize, usize) {
    (
        prod(&[s.batch, rows, s.heads, s.head_dim]),
        prod(&[s.batch, rows, s.kv_heads, s.head_dim]),
    )
}

// ---- generation -----------------------------------------------------------------------------------

/// `attention_cached`: q and out [B, Tq, H, D]; k_cache and v_cache [B, max_len, Hkv, D];
/// past + Tq ≤ max_len; H a multiple of Hkv.
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn attention_cached<B: Backend + ?Sized>(
    be: &B,
    out: &B::Buf,
    q: &B::Buf,
    k_cache: &B::Buf,
    v_cache: &B::Buf,
    max_len: usize,
    past: usize,
    window: Option<usize>,
    s: AttnShape,
) {
    assert!(window != Some(0), "attention_cached: a window of 0 keys");
    assert!(
        past.saturating_add(s.seq) <= max_len,
        "attention_cached: past {past} + {} new > cache length {max_len}",
        s.seq
    );
    let (q_len, _) = qkv_lens(s, s.seq);
    let (_, cache_len) = qkv_lens(s, max_len);
    Op::new(be, "attention_cached")
        .heads(s)
        .buf("q", q, Compute, "B·Tq·H·D", q_len)
        .buf("out", out, Compute, "B·Tq·H·D", q_len)
        .buf("k_cache", k_cache, Compute, "B·max_len·Hkv·D", cache_len)
        .buf("v_cache", v_cache, Compute, "B·max_len·Hkv·D", cache_len);
}

/// `kv_write`: src [N, W] with N = len(slots) = len(positions); every slot below the cache's
/// S = len(cache) / (max_len·W) slots and every position < max_len.
#[track_caller]
pub fn kv_write<B: Backend + ?Sized>(
    be: &B,
    cache: &B::Buf,
    src: &B::Buf,
    slots: &[u32],
    positions: &[u32],
    max_len: usize,
) {
    let op = Op::new(be, "kv_write");
    let n = slots.len();
    op.kind("cache", cache, Compute)
        .host("positions", positions.len(), "len(slots)", n);
    if n == 0 {
        return;
    }
    let src_len = op.kind("src", src, Compute).len(src);
    assert!(
        src_len.is_multiple_of(n),
        "kv_write: src has {src_len} elements, not a multiple of len(slots) = {n}"
    );
    let w = src_len / n;
    let total_slots = op.len(cache) / prod(&[max_len, w]).max(1);
    op.below("slot", slots, total_slots, "cache slots")
        .below("position", positions, max_len, "max_len");
}

/// `attention_decode`: one query per sequence (s.seq = 1); q and out [N, H, D] with N =
/// s.batch = len(slots) = len(lens); k_cache and v_cache of one length, [S, max_len, Hkv, D];
/// every slot < S and every length in 1..=max_len; H a multiple of Hkv.
#[allow(clippy::too_many_arguments)]
#[track_caller]
pub fn attention_decode<B: Backend + ?Sized>(
    be: &B,
    out: &B::Buf,
    q: &B::Buf,
    k_cache: &B::Buf,
    v_cache: &B::Buf,
    slots: &[u32],
    lens: &[u32],
    max_len: usize,
    window: Option<usize>,
    s: AttnShape,
) {
    assert_eq!(s.seq, 1, "attention_decode: one query per sequence");
    assert!(window != Some(0), "attention_decode: a window of 0 keys");
    let n = s.batch;
    let op = Op::new(be, "attention_decode");
    let q_len = prod(&[n, s.heads, s.head_dim]);
    op.heads(s)
        .host("slots", slots.len(), "N", n)
        .host("lens", lens.len(), "N", n)
        .buf("q", q, Compute, "N·H·D", q_len)
        .buf("out", out, Compute, "N·H·D", q_len)
        .kind("k_cache", k_cache, Compute)
        .buf("v_cache", v_cache, Compute, "len(k_cache)", op.len(k_cache));
    let total_slots = op.len(k_cache) / prod(&[max_len, s.kv_heads, s.head_dim]).max(1);
    op.below("slot", slots, total_slots, "cache slots");
    if let Some(&bad) = lens.iter().find(|&&l| l == 0 || l as usize > max_len) {
        panic!("attention_decode: length {bad} outside 1..=max_len {max_len}");
    }
}

// ---- SwiGLU ---------------------------------------------------------------------------------------

/// `swiglu`: out, gate and up of one length.
#[track_caller]
pub fn swiglu<B: Backend + ?Sized>(be: &B, out: &B::Buf, gate: &B::Buf, up: &B::Buf) {
    let op = Op::new(be, "swiglu");
    let n = op.kind("out", out, Compute).len(out);
    op.buf("gate", gate, Compute, "len(out)", n)
        .buf("up", up, Compute, "len(out)", n);
}

/// `swiglu_bwd`: dgate, dup, dout, gate and up of one length.
#[track_caller]
pub fn swiglu_bwd<B: Backend + ?Sized>(
    be: &B,
    dgate: &B::Buf,
    dup: &B::Buf,
    dout: &B::Buf,
    gate: &B::Buf,
    up: &B::Buf,
) {
    let op = Op::new(be, "swiglu_bwd");
    let n = op.kind("dout", dout, Compute).len(dout);
    for (arg, buf) in [("dgate", dgate), ("dup", dup), ("gate", gate), ("up", up)] {
        op.buf(arg, buf, Compute, "len(dout)", n);
    }
}

// ---- loss -----------------------------------------------------------------------------------------

/// `cross_entropy_rows`: logits [R, V] (R ≥ 1) for rows row0 … row0+R−1 of N = len(targets),
/// mask [N], every target < V, and a full-precision losses buffer of at least N.
#[track_caller]
pub fn cross_entropy_rows<B: Backend + ?Sized>(
    be: &B,
    logits: &B::Buf,
    targets: &[u32],
    mask: &[u8],
    row0: usize,
    vocab: usize,
    losses: &B::Buf,
) {
    let n = targets.len();
    let op = Op::new(be, "cross_entropy");
    op.kind("logits", logits, Compute)
        .kind("losses", losses, Full)
        .host("mask", mask.len(), "len(targets)", n)
        .below("target", targets, vocab, "vocab");
    let rows = op.rows_of("logits", logits, vocab);
    assert!(
        rows > 0 && row0.checked_add(rows).is_some_and(|end| end <= n),
        "cross_entropy: logits hold rows {row0}..{row0}+{rows} of len(targets) = {n}"
    );
    let have = op.len(losses);
    assert!(
        have >= n,
        "cross_entropy: losses has {have} elements, len(targets) = {n}"
    );
}

// ---- elementwise, reductions, optimizer -----------------------------------------------------------

/// `add_assign`: y and x of one length.
#[track_caller]
pub fn add_assign<B: Backend + ?Sized>(be: &B, y: &B::Buf, x: &B::Buf) {
    let op = Op::new(be, "add_assign");
    let n = op.kind("y", y, Compute).len(y);
    op.buf("x", x, Compute, "len(y)", n);
}

/// `add_bias`: y [rows, d] in compute precision, b [d] (a parameter) with d dividing len(y).
#[track_caller]
pub fn add_bias<B: Backend + ?Sized>(be: &B, y: &B::Buf, b: &B::Buf) {
    let op = Op::new(be, "add_bias");
    let d = op.kind("b", b, Compute).len(b);
    let n = op.kind("y", y, Compute).len(y);
    assert!(
        d > 0 && n.is_multiple_of(d),
        "add_bias: y has {n} elements, not a multiple of len(b) = {d}"
    );
}

/// `bias_grad`: db [d] in full precision, dy [rows, d] in compute precision.
#[track_caller]
pub fn bias_grad<B: Backend + ?Sized>(be: &B, db: &B::Buf, dy: &B::Buf) {
    let op = Op::new(be, "bias_grad");
    let d = op.kind("db", db, Full).len(db);
    let n = op.kind("dy", dy, Compute).len(dy);
    assert!(
        d > 0 && n.is_multiple_of(d),
        "bias_grad: dy has {n} elements, not a multiple of len(db) = {d}"
    );
}

/// `sum_squares`: x in full precision.
#[track_caller]
pub fn sum_squares<B: Backend + ?Sized>(be: &B, x: &B::Buf) {
    Op::new(be, "sum_squares").kind("x", x, Full);
}

/// `adamw`: p (a parameter: both precisions), g, m and v (full precision) of one length; the
/// step 1-based.
#[track_caller]
pub fn adamw<B: Backend + ?Sized>(
    be: &B,
    p: &B::Buf,
    g: &B::Buf,
    m: &B::Buf,
    v: &B::Buf,
    hp: &AdamW,
) {
    let op = Op::new(be, "adamw");
    assert!(hp.step >= 1, "adamw: step is 1-based");
    let n = op.kind("p", p, Both).len(p);
    for (arg, buf) in [("g", g), ("m", m), ("v", v)] {
        op.buf(arg, buf, Full, "len(p)", n);
    }
}
