//! The CPU reference backend: every `Backend` operation as a plain kernel over `Vec<T>` buffers,
//! generic over the float type so the same code runs in f32 (training on the CPU, the reference
//! the CUDA kernels are tested against) and in f64 (finite-difference gradient checks). GEMMs go
//! through the `gemm` crate; the other kernels are loops parallelised with rayon over rows,
//! blocks of elements or (batch, head) pairs once the work is large enough to pay for the
//! fork-join. Every reduction that feeds a result is done in a fixed order, so results do not
//! depend on the thread count. This module owns no model logic and allocates only the temporary
//! buffers a kernel needs for one call. The kernels assume the operation's preconditions: the
//! `Backend` impl checks them first, through `contract`.

use super::{contract, AdamW, AttnShape, Backend, BufKind, GenerationBackend};
use gemm::Parallelism;
use rayon::prelude::*;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

#[cfg(test)]
mod tests;

/// GEMMs of at least this many FLOPs (2·m·n·k) run on the rayon pool; smaller ones on the calling
/// thread (below this, a fork-join costs more than it saves).
pub const MATMUL_PAR_FLOPS: usize = 1 << 22;
/// Other kernels run on the rayon pool when their total work (roughly, element operations) is at
/// least this large.
pub const PAR_MIN_WORK: usize = 1 << 15;
/// Smallest amount of work (element operations) handed to one rayon task.
const PAR_GRAIN: usize = 1 << 14;
/// Elementwise kernels walk their buffers in blocks of this many elements.
const ELEM_BLOCK: usize = 1 << 12;

/// The compute type of a `CpuBackend`: what the kernels need from a float. Implemented for f32
/// and f64, the two types the `gemm` crate multiplies.
pub trait Float:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Debug
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn from_f32(x: f32) -> Self;
    fn from_f64(x: f64) -> Self;
    fn to_f32(self) -> f32;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn max(self, other: Self) -> Self;
}

macro_rules! impl_float {
    ($t:ty) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            #[inline]
            fn from_f32(x: f32) -> Self {
                x as $t
            }
            #[inline]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
        }
    };
}
impl_float!(f32);
impl_float!(f64);

/// The CPU backend. Buffers are `Vec<T>`; work runs on rayon's global pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend<T: Float = f32> {
    _t: PhantomData<fn() -> T>,
}

impl<T: Float> CpuBackend<T> {
    pub fn new() -> Self {
        CpuBackend { _t: PhantomData }
    }

    /// A zero-filled buffer (the CPU has one kind of buffer).
    pub fn zeros(&self, len: usize) -> Vec<T> {
        vec![T::ZERO; len]
    }

    /// Host f32 values converted to T.
    pub fn upload(&self, host: &[f32]) -> Vec<T> {
        host.iter().map(|&x| T::from_f32(x)).collect()
    }
}

// ---- helpers ------------------------------------------------------------------------------------

/// Σ a·b with eight independent partial sums (so the loop vectorises), added in a fixed order.
#[inline]
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [T::ZERO; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((s, &xi), &yi) in acc.iter_mut().zip(x).zip(y) {
            *s += xi * yi;
        }
    }
    let mut tail = T::ZERO;
    for (&xi, &yi) in ca.remainder().iter().zip(cb.remainder()) {
        tail += xi * yi;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// y += a·x
#[inline]
fn axpy<T: Float>(y: &mut [T], a: T, x: &[T]) {
    debug_assert_eq!(y.len(), x.len());
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Calls `f(i, row_i)` for each `row`-long chunk of `out` (the last may be shorter) and returns
/// the results in row order. Runs on the rayon pool when rows × `work_per_row` ≥ `PAR_MIN_WORK`.
fn map_rows_mut<T, R, F>(out: &mut [T], row: usize, work_per_row: usize, f: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(usize, &mut [T]) -> R + Sync + Send,
{
    if row == 0 || out.is_empty() {
        return Vec::new();
    }
    let rows = out.len().div_ceil(row);
    if rows < 2 || rows.saturating_mul(work_per_row) < PAR_MIN_WORK {
        out.chunks_mut(row)
            .enumerate()
            .map(|(i, r)| f(i, r))
            .collect()
    } else {
        let min_len = (PAR_GRAIN / work_per_row.max(1)).max(1);
        out.par_chunks_mut(row)
            .with_min_len(min_len)
            .enumerate()
            .map(|(i, r)| f(i, r))
            .collect()
    }
}

/// Whether an elementwise pass over `len` elements should use the rayon pool.
fn parallel_elementwise(len: usize) -> bool {
    len >= PAR_MIN_WORK
}

/// dst[m, n] (= or +=) lhs[m, k] · rhs[k, n]; dst is row-major with row stride `dst_rs`, the
/// operands are described by row and column strides (so a transposed operand is just strides).
#[allow(clippy::too_many_arguments)]
fn gemm_strided<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[T],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[T],
    rhs_rs: usize,
    rhs_cs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * dst_rs + n <= dst.len(), "gemm: dst too short");
    if k == 0 {
        if !accumulate {
            for r in dst.chunks_mut(dst_rs).take(m) {
                r[..n].fill(T::ZERO);
            }
        }
        return;
    }
    assert!(
        (m - 1) * lhs_rs + (k - 1) * lhs_cs < lhs.len(),
        "gemm: lhs too short"
    );
    assert!(
        (k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len(),
        "gemm: rhs too short"
    );
    let flops = 2usize.saturating_mul(m).saturating_mul(n).saturating_mul(k);
    let par = if flops >= MATMUL_PAR_FLOPS {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above keep every element gemm touches (dst rows 0..m, columns 0..n at
    // unit column stride; lhs and rhs through their strides) inside the three slices; `dst` is a
    // unique borrow, so it aliases neither operand; T is f32 or f64 (the `Float` impls), which
    // gemm supports; strides fit in isize because they index allocated slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        );
    }
}

// ---- linear layers ------------------------------------------------------------------------------

/// y[m, n] = x[m, k] · w[n, k]ᵀ
fn matmul<T: Float>(y: &mut [T], x: &[T], w: &[T], m: usize, k: usize, n: usize) {
    // rhs = wᵀ [k, n]: element (i, j) = w[j·k + i]
    gemm_strided(m, n, k, y, n, false, x, k, 1, w, 1, k);
}

/// Rows per task of `matmul_rowwise`.
const ROWWISE_ROWS: usize = 8;
/// Columns per task of `matmul_rowwise` (a block of w rows stays in cache for the task's rows).
const ROWWISE_COLS: usize = 128;

/// y[m, n] = x[m, k] · w[n, k]ᵀ with every element one `dot` (a fixed summation order), so a
/// row's result does not depend on m or on the other rows (unlike the `gemm` crate, whose
/// kernels differ by shape). Parallel over blocks of rows × columns.
fn matmul_rowwise<T: Float>(y: &mut [T], x: &[T], w: &[T], m: usize, k: usize, n: usize) {
    let (rb, cb) = (m.div_ceil(ROWWISE_ROWS), n.div_ceil(ROWWISE_COLS));
    let block = |t: usize| -> Vec<T> {
        let (r0, c0) = ((t / cb) * ROWWISE_ROWS, (t % cb) * ROWWISE_COLS);
        let (r1, c1) = ((r0 + ROWWISE_ROWS).min(m), (c0 + ROWWISE_COLS).min(n));
        let mut out = Vec::with_capacity((r1 - r0) * (c1 - c0));
        for r in r0..r1 {
            let xr = &x[r * k..(r + 1) * k];
            out.extend((c0..c1).map(|c| dot(xr, &w[c * k..(c + 1) * k])));
        }
        out
    };
    let blocks: Vec<Vec<T>> = if m * n * k >= MATMUL_PAR_FLOPS / 2 {
        (0..rb * cb).into_par_iter().map(block).collect()
    } else {
        (0..rb * cb).map(block).collect()
    };
    for (t, b) in blocks.iter().enumerate() {
        let (r0, c0) = ((t / cb) * ROWWISE_ROWS, (t % cb) * ROWWISE_COLS);
        let width = (c0 + ROWWISE_COLS).min(n) - c0;
        for (i, row) in b.chunks(width).enumerate() {
            let o = (r0 + i) * n + c0;
            y[o..o + width].copy_from_slice(row);
        }
    }
}

/// dx[m, k] (= or +=) dy[m, n] · w[n, k]
#[allow(clippy::too_many_arguments)]
fn matmul_dx<T: Float>(
    dx: &mut [T],
    dy: &[T],
    w: &[T],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    gemm_strided(m, k, n, dx, k, accumulate, dy, n, 1, w, k, 1);
}

/// dw[n, k] += dy[m, n]ᵀ · x[m, k]
fn matmul_dw<T: Float>(dw: &mut [T], dy: &[T], x: &[T], m: usize, k: usize, n: usize) {
    // lhs = dyᵀ [n, m]: element (i, j) = dy[j·n + i]
    gemm_strided(n, k, m, dw, k, true, dy, 1, n, x, k, 1);
}

// ---- embedding ----------------------------------------------------------------------------------

/// out[N, d] = table[ids[i], :]  (table [V, d])
fn embedding<T: Float>(out: &mut [T], table: &[T], ids: &[u32], d: usize) {
    map_rows_mut(out, d, d, |i, row| {
        let id = ids[i] as usize;
        row.copy_from_slice(&table[id * d..(id + 1) * d]);
    });
}

/// dtable[ids[i], :] += dout[i, :]  (dtable [V, d], dout [N, d])
///
/// Tokens are grouped by id (a stable sort, so token order is kept within an id); each distinct
/// id's row is then summed by one task, starting from its current value, so repeated ids never
/// race and the additions happen in token order whatever the thread count.
fn embedding_dw<T: Float>(dtable: &mut [T], dout: &[T], ids: &[u32], d: usize) {
    if ids.is_empty() || d == 0 {
        return;
    }
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i]);
    // runs[r] = (start, end) in `order` of the r-th distinct id
    let mut runs = Vec::new();
    let mut start = 0;
    for e in 1..=order.len() {
        if e == order.len() || ids[order[e]] != ids[order[start]] {
            runs.push((start, e));
            start = e;
        }
    }
    // acc [runs, d]: the touched rows, summed independently, then written back
    let mut acc = Vec::with_capacity(runs.len() * d);
    for &(s0, _) in &runs {
        let id = ids[order[s0]] as usize;
        acc.extend_from_slice(&dtable[id * d..(id + 1) * d]);
    }
    map_rows_mut(&mut acc, d, d * ids.len() / runs.len(), |r, row| {
        for &i in &order[runs[r].0..runs[r].1] {
            for (a, &b) in row.iter_mut().zip(&dout[i * d..(i + 1) * d]) {
                *a += b;
            }
        }
    });
    for (&(s0, _), row) in runs.iter().zip(acc.chunks(d)) {
        let id = ids[order[s0]] as usize;
        dtable[id * d..(id + 1) * d].copy_from_slice(row);
    }
}

// ---- RMSNorm ------------------------------------------------------------------------------------

/// out[N, d] = x · rstd · w, rstd[N] = 1 / sqrt(mean(x²) + eps)  (x [N, d], w [d])
fn rmsnorm<T: Float>(out: &mut [T], rstd: &mut [T], x: &[T], w: &[T], d: usize, eps: f32) {
    let eps = T::from_f32(eps);
    let inv_d = T::from_f64(1.0 / d as f64);
    let r = map_rows_mut(out, d, 3 * d, |i, row| {
        let xr = &x[i * d..(i + 1) * d];
        let r = T::ONE / (dot(xr, xr) * inv_d + eps).sqrt();
        for ((o, &xi), &wi) in row.iter_mut().zip(xr).zip(w) {
            *o = xi * r * wi;
        }
        r
    });
    rstd.copy_from_slice(&r);
}

/// dx[N, d] += ∂L/∂x, dw[d] += ∂L/∂w, given dout [N, d], x [N, d], w [d] and the saved rstd [N].
///
/// With r = rstd and y = x·r·w: dw_j = Σ_i dout_ij·x_ij·r_i and
/// dx_ij = r_i·w_j·dout_ij − r_i³·x_ij/d · Σ_k dout_ik·w_k·x_ik.
/// Rows are processed in fixed blocks, each with its own dw partial; the partials are added in
/// block order.
#[allow(clippy::too_many_arguments)]
fn rmsnorm_bwd<T: Float>(
    dx: &mut [T],
    dw: &mut [T],
    dout: &[T],
    x: &[T],
    w: &[T],
    rstd: &[T],
    d: usize,
) {
    const BLOCK_ROWS: usize = 32;
    let inv_d = T::from_f64(1.0 / d as f64);
    let partials = map_rows_mut(dx, BLOCK_ROWS * d, BLOCK_ROWS * 6 * d, |blk, dxb| {
        let mut dw_part = vec![T::ZERO; d];
        for (ri, dxr) in dxb.chunks_mut(d).enumerate() {
            let i = blk * BLOCK_ROWS + ri;
            let (xr, dor, r) = (&x[i * d..(i + 1) * d], &dout[i * d..(i + 1) * d], rstd[i]);
            // Σ_k dout_k·w_k·x_k
            let mut s = T::ZERO;
            for ((&g, &wk), &xk) in dor.iter().zip(w).zip(xr) {
                s += g * wk * xk;
            }
            let c = r * r * r * s * inv_d;
            for ((((dxj, dwj), &g), &wj), &xj) in
                dxr.iter_mut().zip(&mut dw_part).zip(dor).zip(w).zip(xr)
            {
                *dxj += r * wj * g - c * xj;
                *dwj += g * xj * r;
            }
        }
        dw_part
    });
    for p in partials {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += b;
        }
    }
}

// ---- RoPE ---------------------------------------------------------------------------------------

/// Rotate-half RoPE in place on x [N, heads, D]; cos/sin [max_pos, D/2]. For pair (j, j + D/2)
/// at angle θ: (a, b) → (a·cos θ − b·sin θ, b·cos θ + a·sin θ); `inverse` rotates by −θ (the
/// transpose, used by the backward).
#[allow(clippy::too_many_arguments)]
fn rope_rotate<T: Float>(
    x: &mut [T],
    positions: &[u32],
    heads: usize,
    head_dim: usize,
    cos: &[T],
    sin: &[T],
    inverse: bool,
) {
    let half = head_dim / 2;
    let row = heads * head_dim;
    map_rows_mut(x, row, 3 * row, |i, xr| {
        let p = positions[i] as usize;
        let (c, s) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for head in xr.chunks_mut(head_dim) {
            let (lo, hi) = head.split_at_mut(half);
            for (((a, b), &cj), &sj) in lo.iter_mut().zip(hi.iter_mut()).zip(c).zip(s) {
                let sj = if inverse { -sj } else { sj };
                let (x1, x2) = (*a, *b);
                *a = x1 * cj - x2 * sj;
                *b = x2 * cj + x1 * sj;
            }
        }
    });
}

// ---- attention ----------------------------------------------------------------------------------

/// (T, H, Hkv, D, H/Hkv) of one attention call (`contract` checked that Hkv divides H).
fn attn_dims(s: AttnShape) -> (usize, usize, usize, usize, usize) {
    (s.seq, s.heads, s.kv_heads, s.head_dim, s.heads / s.kv_heads)
}

/// Query rows per block of the CPU attention (its S and P blocks are ATTN_QBLOCK × T).
const ATTN_QBLOCK: usize = 64;

/// Copies head `g` of batch row `b` of a [B, T, heads, D] tensor into a contiguous [T, D].
fn gather_head<T: Float>(
    src: &[T],
    b: usize,
    g: usize,
    tt: usize,
    hkv: usize,
    dd: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(tt * dd);
    for j in 0..tt {
        let o = ((b * tt + j) * hkv + g) * dd;
        out.extend_from_slice(&src[o..o + dd]);
    }
    out
}

/// Attention with document masking and GQA, causal or not (see `Backend::attention`).
/// q [B, T, H, D], k/v [B, T, Hkv, D], doc_ids [B·T] → out [B, T, H, D], lse [B, H, T].
///
/// Parallel over (b, h): each task gathers its kv head, and for each query does two passes over
/// the allowed keys (max, then exp-sum and weighted sum of v), writing a [T, D] tile that is then
/// scattered into `out`.
#[allow(clippy::too_many_arguments)]
fn attention<T: Float>(
    out: &mut [T],
    lse: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    doc_ids: &[u32],
    s: AttnShape,
) {
    let (tt, h, hkv, dd, group) = attn_dims(s);
    let scale = T::from_f64(1.0 / (dd as f64).sqrt());
    // tiles [B, H, T, D]
    let mut tiles = vec![T::ZERO; out.len()];
    let lses = map_rows_mut(&mut tiles, tt * dd, tt * tt * dd * 2, |bh, tile| {
        let (bi, hi) = (bh / h, bh % h);
        let g = hi / group;
        let kb = gather_head(k, bi, g, tt, hkv, dd);
        let vb = gather_head(v, bi, g, tt, hkv, dd);
        let qb = gather_head(q, bi, hi, tt, h, dd);
        let docs = &doc_ids[bi * tt..(bi + 1) * tt];
        let mut lse_bh = vec![T::ZERO; tt];
        // Blocks of query rows: S = Q·Kᵀ by GEMM (only the keys a causal block can see), the
        // masked softmax row by row, then O = P·V by GEMM.
        let mut sb = vec![T::ZERO; ATTN_QBLOCK.min(tt) * tt];
        for q0 in (0..tt).step_by(ATTN_QBLOCK) {
            let q1 = (q0 + ATTN_QBLOCK).min(tt);
            let kend = if s.causal { q1 } else { tt };
            let rows = q1 - q0;
            let sblk = &mut sb[..rows * kend];
            gemm_strided(
                rows,
                kend,
                dd,
                sblk,
                kend,
                false,
                &qb[q0 * dd..],
                dd,
                1,
                &kb,
                1,
                dd,
            );
            for (r, row) in sblk.chunks_mut(kend).enumerate() {
                let t = q0 + r;
                let n_keys = if s.causal { t + 1 } else { tt };
                let mut m = T::NEG_INFINITY;
                for (j, sj) in row[..n_keys].iter_mut().enumerate() {
                    *sj = if docs[j] == docs[t] {
                        *sj * scale
                    } else {
                        T::NEG_INFINITY
                    };
                    m = m.max(*sj);
                }
                let mut l = T::ZERO;
                for sj in row[..n_keys].iter_mut() {
                    // another document: probability 0
                    *sj = if *sj == T::NEG_INFINITY {
                        T::ZERO
                    } else {
                        (*sj - m).exp()
                    };
                    l += *sj;
                }
                let inv = T::ONE / l;
                row[..n_keys].iter_mut().for_each(|p| *p *= inv);
                row[n_keys..].fill(T::ZERO); // causal: keys after t
                lse_bh[t] = m + l.ln();
            }
            gemm_strided(
                rows,
                dd,
                kend,
                &mut tile[q0 * dd..],
                dd,
                false,
                sblk,
                kend,
                1,
                &vb,
                dd,
                1,
            );
        }
        lse_bh
    });
    for (dst, src) in lse.chunks_mut(tt.max(1)).zip(lses) {
        dst.copy_from_slice(&src);
    }
    // scatter [B, H, T, D] → [B, T, H, D], parallel over (b, t) rows
    map_rows_mut(out, h * dd, h * dd, |bt, row| {
        let (bi, t) = (bt / tt, bt % tt);
        for (hi, o) in row.chunks_mut(dd).enumerate() {
            let src = ((bi * h + hi) * tt + t) * dd;
            o.copy_from_slice(&tiles[src..src + dd]);
        }
    });
}

/// Backward of `attention`: overwrites dq [B, T, H, D], dk and dv [B, T, Hkv, D].
///
/// Parallel over (b, h). Each task recomputes p = exp(q·k·scale − lse) for the allowed keys and
/// forms dv = Σ p·dout, dS = p·(dout·v − dout·out), dq = scale·Σ dS·k, dk = scale·Σ dS·q into
/// private [T, D] tiles. The kv-head gradients of the H/Hkv query heads sharing one kv head are
/// then summed in head order.
#[allow(clippy::too_many_arguments)]
fn attention_bwd<T: Float>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dout: &[T],
    out: &[T],
    lse: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    doc_ids: &[u32],
    s: AttnShape,
) {
    let (tt, h, hkv, dd, group) = attn_dims(s);
    let b = s.batch;
    let scale = T::from_f64(1.0 / (dd as f64).sqrt());
    let td = tt * dd;
    // tiles [B, H, 3, T, D]: dq, dk, dv of one (b, h)
    let mut tiles = vec![T::ZERO; b * h * 3 * td];
    map_rows_mut(&mut tiles, 3 * td, tt * tt * dd * 4, |bh, tile| {
        let (bi, hi) = (bh / h, bh % h);
        let g = hi / group;
        let kb = gather_head(k, bi, g, tt, hkv, dd);
        let vb = gather_head(v, bi, g, tt, hkv, dd);
        let docs = &doc_ids[bi * tt..(bi + 1) * tt];
        let (dq_t, rest) = tile.split_at_mut(td);
        let (dk_t, dv_t) = rest.split_at_mut(td);
        let qb = gather_head(q, bi, hi, tt, h, dd);
        let dob = gather_head(dout, bi, hi, tt, h, dd);
        let ob = gather_head(out, bi, hi, tt, h, dd);
        // Blocks of query rows: P from S = Q·Kᵀ and the saved lse, dP = dO·Vᵀ, dS = P ∘ (dP − δ)·scale
        // (δ = rowsum(dO ∘ O)), then dQ = dS·K, dK += dSᵀ·Q, dV += Pᵀ·dO, all by GEMM.
        let (mut pb, mut db) = (
            vec![T::ZERO; ATTN_QBLOCK.min(tt) * tt],
            vec![T::ZERO; ATTN_QBLOCK.min(tt) * tt],
        );
        for q0 in (0..tt).step_by(ATTN_QBLOCK) {
            let q1 = (q0 + ATTN_QBLOCK).min(tt);
            let kend = if s.causal { q1 } else { tt };
            let rows = q1 - q0;
            let (pblk, dblk) = (&mut pb[..rows * kend], &mut db[..rows * kend]);
            let (qblk, doblk) = (&qb[q0 * dd..q1 * dd], &dob[q0 * dd..q1 * dd]);
            gemm_strided(rows, kend, dd, pblk, kend, false, qblk, dd, 1, &kb, 1, dd);
            gemm_strided(rows, kend, dd, dblk, kend, false, doblk, dd, 1, &vb, 1, dd);
            for (r, (prow, drow)) in pblk.chunks_mut(kend).zip(dblk.chunks_mut(kend)).enumerate() {
                let t = q0 + r;
                let n_keys = if s.causal { t + 1 } else { tt };
                let l = lse[bh * tt + t];
                let delta = dot(&doblk[r * dd..(r + 1) * dd], &ob[t * dd..(t + 1) * dd]);
                for j in 0..kend {
                    if j < n_keys && docs[j] == docs[t] {
                        let p = (prow[j] * scale - l).exp();
                        prow[j] = p;
                        drow[j] = p * (drow[j] - delta) * scale;
                    } else {
                        prow[j] = T::ZERO;
                        drow[j] = T::ZERO;
                    }
                }
            }
            gemm_strided(
                rows,
                dd,
                kend,
                &mut dq_t[q0 * dd..],
                dd,
                false,
                dblk,
                kend,
                1,
                &kb,
                dd,
                1,
            );
            gemm_strided(kend, dd, rows, dk_t, dd, true, dblk, 1, kend, qblk, dd, 1);
            gemm_strided(kend, dd, rows, dv_t, dd, true, pblk, 1, kend, doblk, dd, 1);
        }
    });
    // dq: scatter [B, H, T, D] → [B, T, H, D]
    map_rows_mut(dq, h * dd, h * dd, |bt, row| {
        let (bi, t) = (bt / tt, bt % tt);
        for (hi, o) in row.chunks_mut(dd).enumerate() {
            let src = (bi * h + hi) * 3 * td + t * dd;
            o.copy_from_slice(&tiles[src..src + dd]);
        }
    });
    // dk, dv: sum the group's heads in order, into [B, T, Hkv, D]
    for (dst, which) in [(dk, 1), (dv, 2)] {
        map_rows_mut(dst, hkv * dd, h * dd, |bt, row| {
            let (bi, t) = (bt / tt, bt % tt);
            for (g, o) in row.chunks_mut(dd).enumerate() {
                o.fill(T::ZERO);
                for hi in g * group..(g + 1) * group {
                    let src = (bi * h + hi) * 3 * td + which * td + t * dd;
                    for (a, &x) in o.iter_mut().zip(&tiles[src..src + dd]) {
                        *a += x;
                    }
                }
            }
        });
    }
}

/// Attention of q [B, Tq, H, D] (positions past..past+Tq) against k_cache/v_cache
/// [B, max_len, Hkv, D] holding positions 0..past+Tq; causal, no document masking.
/// Writes out [B, Tq, H, D]. Parallel over (b, h) like `attention`, reading the cache in place.
#[allow(clippy::too_many_arguments)]
fn attention_cached<T: Float>(
    out: &mut [T],
    q: &[T],
    k_cache: &[T],
    v_cache: &[T],
    max_len: usize,
    past: usize,
    window: Option<usize>,
    s: AttnShape,
) {
    let (tq, h, hkv, dd, group) = attn_dims(s);
    let len = past + tq;
    let scale = T::from_f64(1.0 / (dd as f64).sqrt());
    // tiles [B, H, Tq, D]
    let mut tiles = vec![T::ZERO; out.len()];
    map_rows_mut(&mut tiles, tq * dd, tq * len * dd * 2, |bh, tile| {
        let (bi, hi) = (bh / h, bh % h);
        let g = hi / group;
        // cache rows are read in place (a decode step touches each once per query head)
        let row = |j: usize| ((bi * max_len + j) * hkv + g) * dd;
        let mut scores = vec![T::ZERO; len];
        for i in 0..tq {
            let n_keys = past + i + 1;
            let first = window.map_or(0, |w| n_keys.saturating_sub(w));
            let qo = ((bi * tq + i) * h + hi) * dd;
            let qi = &q[qo..qo + dd];
            let mut m = T::NEG_INFINITY;
            for (j, sj) in scores[first..n_keys].iter_mut().enumerate() {
                let j = first + j;
                *sj = dot(qi, &k_cache[row(j)..row(j) + dd]) * scale;
                m = m.max(*sj);
            }
            let o = &mut tile[i * dd..(i + 1) * dd];
            let mut l = T::ZERO;
            for (j, &sj) in scores[first..n_keys].iter().enumerate() {
                let p = (sj - m).exp();
                l += p;
                axpy(o, p, &v_cache[row(first + j)..row(first + j) + dd]);
            }
            let inv = T::ONE / l;
            o.iter_mut().for_each(|x| *x *= inv);
        }
    });
    map_rows_mut(out, h * dd, h * dd, |bt, row| {
        let (bi, i) = (bt / tq, bt % tq);
        for (hi, o) in row.chunks_mut(dd).enumerate() {
            let src = ((bi * h + hi) * tq + i) * dd;
            o.copy_from_slice(&tiles[src..src + dd]);
        }
    });
}

/// Rows of src [N, W] into cache [S, max_len, W] at (slots[i], positions[i]).
fn kv_write<T: Float>(
    cache: &mut [T],
    src: &[T],
    slots: &[u32],
    positions: &[u32],
    max_len: usize,
) {
    let n = slots.len();
    if n == 0 {
        return;
    }
    let w = src.len() / n;
    for (i, row) in src.chunks(w).enumerate() {
        let (s, p) = (slots[i] as usize, positions[i] as usize);
        let o = (s * max_len + p) * w;
        cache[o..o + w].copy_from_slice(row);
    }
}

/// Decode attention (see `GenerationBackend::attention_decode`): q [N, H, D]; sequence i reads keys
/// 0..lens[i] of cache slot slots[i] in k_cache/v_cache [S, max_len, Hkv, D]; out [N, H, D].
/// Parallel over (i, h); each is the two-pass softmax of `attention_cached`, so a sequence's
/// result does not depend on the other sequences of the call.
#[allow(clippy::too_many_arguments)]
fn attention_decode<T: Float>(
    out: &mut [T],
    q: &[T],
    k_cache: &[T],
    v_cache: &[T],
    slots: &[u32],
    lens: &[u32],
    max_len: usize,
    window: Option<usize>,
    s: AttnShape,
) {
    let (_, h, hkv, dd, group) = attn_dims(s);
    let scale = T::from_f64(1.0 / (dd as f64).sqrt());
    let work = lens.iter().map(|&l| l as usize).max().unwrap_or(0) * dd * 2;
    map_rows_mut(out, dd, work, |ih, o| {
        let (i, hi) = (ih / h, ih % h);
        let g = hi / group;
        let (slot, n_keys) = (slots[i] as usize, lens[i] as usize);
        let first = window.map_or(0, |w| n_keys.saturating_sub(w));
        let row = |j: usize| ((slot * max_len + first + j) * hkv + g) * dd;
        let n_keys = n_keys - first;
        let qi = &q[ih * dd..(ih + 1) * dd];
        let mut scores = vec![T::ZERO; n_keys];
        let mut m = T::NEG_INFINITY;
        for (j, sj) in scores.iter_mut().enumerate() {
            *sj = dot(qi, &k_cache[row(j)..row(j) + dd]) * scale;
            m = m.max(*sj);
        }
        o.fill(T::ZERO);
        let mut l = T::ZERO;
        for (j, &sj) in scores.iter().enumerate() {
            let p = (sj - m).exp();
            l += p;
            axpy(o, p, &v_cache[row(j)..row(j) + dd]);
        }
        let inv = T::ONE / l;
        o.iter_mut().for_each(|x| *x *= inv);
    });
}

// ---- SwiGLU -------------------------------------------------------------------------------------

#[inline]
fn sigmoid<T: Float>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

/// out = silu(gate) ⊙ up, silu(g) = g·σ(g); all three the same length.
fn swiglu<T: Float>(out: &mut [T], gate: &[T], up: &[T]) {
    map_rows_mut(out, ELEM_BLOCK, ELEM_BLOCK * 8, |c, o| {
        let base = c * ELEM_BLOCK;
        let (g, u) = (&gate[base..base + o.len()], &up[base..base + o.len()]);
        for ((oi, &gi), &ui) in o.iter_mut().zip(g).zip(u) {
            *oi = gi * sigmoid(gi) * ui;
        }
    });
}

/// dup = dout·silu(gate), dgate = dout·up·σ(gate)·(1 + gate·(1 − σ(gate)))  (overwrite)
fn swiglu_bwd<T: Float>(dgate: &mut [T], dup: &mut [T], dout: &[T], gate: &[T], up: &[T]) {
    let n = dout.len();
    let block = |c: usize, dg: &mut [T], du: &mut [T]| {
        let base = c * ELEM_BLOCK;
        let r = base..base + dg.len();
        for ((((dgi, dui), &d), &g), &u) in dg
            .iter_mut()
            .zip(du)
            .zip(&dout[r.clone()])
            .zip(&gate[r.clone()])
            .zip(&up[r])
        {
            let sg = sigmoid(g);
            *dui = d * g * sg;
            *dgi = d * u * sg * (T::ONE + g * (T::ONE - sg));
        }
    };
    let chunks = dgate.chunks_mut(ELEM_BLOCK).zip(dup.chunks_mut(ELEM_BLOCK));
    if parallel_elementwise(n) {
        let chunks = dgate
            .par_chunks_mut(ELEM_BLOCK)
            .zip(dup.par_chunks_mut(ELEM_BLOCK));
        chunks
            .enumerate()
            .for_each(|(c, (dg, du))| block(c, dg, du));
    } else {
        chunks
            .enumerate()
            .for_each(|(c, (dg, du))| block(c, dg, du));
    }
}

// ---- loss ---------------------------------------------------------------------------------------

/// Cross-entropy over logits [N, V] (see `Backend::cross_entropy_rows`): losses[r] =
/// mask·(lse − x[target]) (computed in T, as the row), and each row overwritten with
/// scale·mask·(softmax(row) − onehot(target)). Rows with mask 0 get a zero gradient.
fn cross_entropy<T: Float>(
    logits: &mut [T],
    targets: &[u32],
    mask: &[u8],
    vocab: usize,
    scale: f32,
    losses: &mut [T],
) {
    let scale = T::from_f32(scale);
    let rows = map_rows_mut(logits, vocab, 4 * vocab, |i, row| {
        let target = targets[i] as usize;
        if mask[i] == 0 {
            row.fill(T::ZERO);
            return T::ZERO;
        }
        let m = row.iter().fold(T::NEG_INFINITY, |m, &x| m.max(x));
        let x_target = row[target];
        // row ← exp(x − m), once per logit; softmax = that / sum
        let mut sum = T::ZERO;
        for x in row.iter_mut() {
            *x = (*x - m).exp();
            sum += *x;
        }
        let loss = m + sum.ln() - x_target;
        let c = scale / sum;
        for x in row.iter_mut() {
            *x *= c;
        }
        row[target] -= scale;
        loss
    });
    losses.copy_from_slice(&rows);
}

// ---- elementwise, reductions, optimizer ----------------------------------------------------------

/// y += x
fn add_assign<T: Float>(y: &mut [T], x: &[T]) {
    map_rows_mut(y, ELEM_BLOCK, ELEM_BLOCK, |c, yb| {
        let xb = &x[c * ELEM_BLOCK..c * ELEM_BLOCK + yb.len()];
        for (a, &b) in yb.iter_mut().zip(xb) {
            *a += b;
        }
    });
}

/// y[r, j] += b[j]
fn add_bias<T: Float>(y: &mut [T], b: &[T]) {
    let d = b.len();
    map_rows_mut(y, d, d, |_, row| {
        for (a, &bj) in row.iter_mut().zip(b) {
            *a += bj;
        }
    });
}

/// db[j] += Σ_r dy[r, j]: rows summed in blocks of 32 in row order, blocks added in order.
fn bias_grad<T: Float>(db: &mut [T], dy: &[T]) {
    const BLOCK_ROWS: usize = 32;
    let d = db.len();
    let rows = dy.len() / d;
    let blocks = rows.div_ceil(BLOCK_ROWS);
    let mut partials = vec![T::ZERO; blocks * d];
    map_rows_mut(&mut partials, d, BLOCK_ROWS * d, |blk, part| {
        let end = ((blk + 1) * BLOCK_ROWS).min(rows);
        for r in blk * BLOCK_ROWS..end {
            for (p, &g) in part.iter_mut().zip(&dy[r * d..(r + 1) * d]) {
                *p += g;
            }
        }
    });
    for part in partials.chunks(d) {
        for (a, &p) in db.iter_mut().zip(part) {
            *a += p;
        }
    }
}

/// Σ x² in f64, over fixed blocks added in block order (independent of the thread count).
fn sum_squares<T: Float>(x: &[T]) -> f64 {
    // eight partial sums per block (so the loop vectorises), added in a fixed order
    let block = |b: &[T]| {
        let mut acc = [0.0f64; 8];
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            for (s, &a) in acc.iter_mut().zip(c) {
                *s += a.to_f64() * a.to_f64();
            }
        }
        let tail: f64 = chunks
            .remainder()
            .iter()
            .map(|&a| a.to_f64() * a.to_f64())
            .sum();
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
    };
    let partials: Vec<f64> = if parallel_elementwise(x.len()) {
        x.par_chunks(ELEM_BLOCK).map(block).collect()
    } else {
        x.chunks(ELEM_BLOCK).map(block).collect()
    };
    partials.iter().sum()
}

/// One AdamW step, in PyTorch's order (`torch.optim.AdamW`, single-tensor path):
/// g' = g·grad_scale; p *= 1 − lr·wd; m = lerp(m, g', 1 − β1); v = β2·v + (1 − β2)·g'·g';
/// p += (−lr / (1 − β1ᵗ)) · m / (sqrt(v) / sqrt(1 − β2ᵗ) + eps).
/// The per-step scalars are formed in f64 (as Python floats) and rounded to T once; lerp and
/// the final addcdiv round like PyTorch's CPU kernels (`a + w·(b − a)` for |w| < 0.5, else
/// `b − (b − a)·(1 − w)`; `p + (s·m) / denom`).
fn adamw<T: Float>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], hp: AdamW) {
    let n = p.len();
    let (lr, b1, b2) = (hp.lr as f64, hp.beta1 as f64, hp.beta2 as f64);
    let step = hp.step.min(i32::MAX as u64) as i32;
    let decay = T::from_f64(1.0 - lr * hp.weight_decay as f64);
    let lerp_w = T::from_f64(1.0 - b1);
    let lerp_from_start = (1.0 - b1).abs() < 0.5;
    let (beta2, one_minus_b2) = (T::from_f32(hp.beta2), T::from_f64(1.0 - b2));
    let neg_step_size = T::from_f64(-(lr / (1.0 - b1.powi(step))));
    let bc2_sqrt = T::from_f64((1.0 - b2.powi(step)).sqrt());
    let (eps, gs) = (T::from_f32(hp.eps), T::from_f32(hp.grad_scale));
    let block = |c: usize, pb: &mut [T], mb: &mut [T], vb: &mut [T]| {
        let gb = &g[c * ELEM_BLOCK..c * ELEM_BLOCK + pb.len()];
        for (((pi, mi), vi), &gi) in pb.iter_mut().zip(mb).zip(vb).zip(gb) {
            let gi = gi * gs;
            *pi *= decay;
            *mi = if lerp_from_start {
                *mi + lerp_w * (gi - *mi)
            } else {
                gi - (gi - *mi) * (T::ONE - lerp_w)
            };
            *vi = *vi * beta2 + one_minus_b2 * gi * gi;
            let denom = vi.sqrt() / bc2_sqrt + eps;
            *pi += neg_step_size * *mi / denom;
        }
    };
    if parallel_elementwise(n) {
        let it = p
            .par_chunks_mut(ELEM_BLOCK)
            .zip(m.par_chunks_mut(ELEM_BLOCK))
            .zip(v.par_chunks_mut(ELEM_BLOCK));
        it.enumerate()
            .for_each(|(c, ((pb, mb), vb))| block(c, pb, mb, vb));
    } else {
        let it = p
            .chunks_mut(ELEM_BLOCK)
            .zip(m.chunks_mut(ELEM_BLOCK))
            .zip(v.chunks_mut(ELEM_BLOCK));
        it.enumerate()
            .for_each(|(c, ((pb, mb), vb))| block(c, pb, mb, vb));
    }
}

/// Physical memory of this machine (Linux), for the CPU backend.
pub fn system_memory_bytes() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

// ---- the Backend --------------------------------------------------------------------------------

impl<T: Float> Backend for CpuBackend<T> {
    type Buf = Vec<T>;

    fn name(&self) -> String {
        format!(
            "cpu ({}, {} threads)",
            std::any::type_name::<T>(),
            rayon::current_num_threads()
        )
    }

    fn device_memory_bytes(&self) -> Option<f64> {
        system_memory_bytes()
    }

    /// Nominal: per thread, one AVX-512 core's
    /// f32 FMA rate at 3 GHz (2 FMA units × 16 lanes × 2 FLOP × 3e9 = 192 GFLOP/s). An
    /// approximation, not a measurement: set `train.peak_tflops` for your CPU.
    fn peak_flops(&self) -> f64 {
        rayon::current_num_threads() as f64 * 192e9
    }

    fn elem_bytes(&self, _kind: BufKind) -> usize {
        std::mem::size_of::<T>()
    }

    fn alloc(&self, len: usize, _kind: BufKind) -> Vec<T> {
        self.zeros(len)
    }
    fn upload_as(&self, host: &[f32], _kind: BufKind) -> Vec<T> {
        self.upload(host)
    }
    fn download(&self, buf: &Vec<T>) -> Vec<f32> {
        buf.iter().map(|&x| x.to_f32()).collect()
    }
    fn buf_len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }
    /// Every kind is stored alike, so kinds are not recorded (or checked).
    fn buf_kind(&self, _buf: &Vec<T>) -> Option<BufKind> {
        None
    }
    fn fill_zero(&self, buf: &mut Vec<T>) {
        buf.fill(T::ZERO);
    }
    fn copy(&self, dst: &mut Vec<T>, src: &Vec<T>) {
        contract::copy(self, dst, src);
        dst.copy_from_slice(src);
    }
    fn copy_range(
        &self,
        dst: &mut Vec<T>,
        dst_off: usize,
        src: &Vec<T>,
        src_off: usize,
        len: usize,
    ) {
        contract::copy_range(self, dst, dst_off, src, src_off, len);
        dst[dst_off..dst_off + len].copy_from_slice(&src[src_off..src_off + len]);
    }

    fn add_range(
        &self,
        dst: &mut Vec<T>,
        dst_off: usize,
        src: &Vec<T>,
        src_off: usize,
        len: usize,
    ) {
        contract::add_range(self, dst, dst_off, src, src_off, len);
        add_assign(
            &mut dst[dst_off..dst_off + len],
            &src[src_off..src_off + len],
        );
    }

    fn matmul(&self, y: &mut Vec<T>, x: &Vec<T>, w: &Vec<T>, m: usize, k: usize, n: usize) {
        contract::matmul(self, "matmul", y, x, w, (m, k, n));
        matmul(y, x, w, m, k, n);
    }
    fn matmul_dx(
        &self,
        dx: &mut Vec<T>,
        dy: &Vec<T>,
        w: &Vec<T>,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) {
        contract::matmul_dx(self, dx, dy, w, (m, k, n));
        matmul_dx(dx, dy, w, m, k, n, accumulate);
    }
    fn matmul_dw(&self, dw: &mut Vec<T>, dy: &Vec<T>, x: &Vec<T>, m: usize, k: usize, n: usize) {
        contract::matmul_dw(self, dw, dy, x, (m, k, n));
        matmul_dw(dw, dy, x, m, k, n);
    }

    fn embedding(&self, out: &mut Vec<T>, table: &Vec<T>, ids: &[u32], d: usize) {
        contract::embedding(self, out, table, ids, d);
        embedding(out, table, ids, d);
    }
    fn embedding_dw(&self, dtable: &mut Vec<T>, dout: &Vec<T>, ids: &[u32], d: usize) {
        contract::embedding_dw(self, dtable, dout, ids, d);
        embedding_dw(dtable, dout, ids, d);
    }

    fn rmsnorm(
        &self,
        out: &mut Vec<T>,
        rstd: &mut Vec<T>,
        x: &Vec<T>,
        w: &Vec<T>,
        d: usize,
        eps: f32,
    ) {
        contract::rmsnorm(self, out, rstd, x, w, d);
        rmsnorm(out, rstd, x, w, d, eps);
    }
    fn rmsnorm_bwd(
        &self,
        dx: &mut Vec<T>,
        dw: &mut Vec<T>,
        dout: &Vec<T>,
        x: &Vec<T>,
        w: &Vec<T>,
        rstd: &Vec<T>,
        d: usize,
    ) {
        contract::rmsnorm_bwd(self, dx, dw, dout, x, w, rstd, d);
        rmsnorm_bwd(dx, dw, dout, x, w, rstd, d);
    }

    fn rope(
        &self,
        x: &mut Vec<T>,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        cos: &Vec<T>,
        sin: &Vec<T>,
    ) {
        contract::rope(self, "rope", x, positions, (heads, head_dim), cos, sin);
        rope_rotate(x, positions, heads, head_dim, cos, sin, false);
    }
    fn rope_bwd(
        &self,
        dx: &mut Vec<T>,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        cos: &Vec<T>,
        sin: &Vec<T>,
    ) {
        contract::rope(self, "rope_bwd", dx, positions, (heads, head_dim), cos, sin);
        rope_rotate(dx, positions, heads, head_dim, cos, sin, true);
    }

    fn attention(
        &self,
        out: &mut Vec<T>,
        lse: &mut Vec<T>,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        doc_ids: &[u32],
        s: AttnShape,
    ) {
        contract::attention(self, out, lse, q, k, v, doc_ids, s);
        attention(out, lse, q, k, v, doc_ids, s);
    }
    fn attention_bwd(
        &self,
        dq: &mut Vec<T>,
        dk: &mut Vec<T>,
        dv: &mut Vec<T>,
        dout: &Vec<T>,
        out: &Vec<T>,
        lse: &Vec<T>,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        doc_ids: &[u32],
        s: AttnShape,
    ) {
        contract::attention_bwd(self, (dq, dk, dv), dout, out, lse, (q, k, v), doc_ids, s);
        attention_bwd(dq, dk, dv, dout, out, lse, q, k, v, doc_ids, s);
    }
    fn swiglu(&self, out: &mut Vec<T>, gate: &Vec<T>, up: &Vec<T>) {
        contract::swiglu(self, out, gate, up);
        swiglu(out, gate, up);
    }
    fn swiglu_bwd(
        &self,
        dgate: &mut Vec<T>,
        dup: &mut Vec<T>,
        dout: &Vec<T>,
        gate: &Vec<T>,
        up: &Vec<T>,
    ) {
        contract::swiglu_bwd(self, dgate, dup, dout, gate, up);
        swiglu_bwd(dgate, dup, dout, gate, up);
    }

    fn cross_entropy_rows(
        &self,
        logits: &mut Vec<T>,
        targets: &[u32],
        mask: &[u8],
        row0: usize,
        vocab: usize,
        scale: f32,
        losses: &mut Vec<T>,
    ) {
        contract::cross_entropy_rows(self, logits, targets, mask, row0, vocab, losses);
        let r = row0..row0 + logits.len() / vocab;
        cross_entropy(
            logits,
            &targets[r.clone()],
            &mask[r.clone()],
            vocab,
            scale,
            &mut losses[r],
        );
    }
    fn read_sum(&self, x: &Vec<T>, len: usize) -> f64 {
        x[..len].iter().map(|v| v.to_f64()).sum()
    }

    fn add_assign(&self, y: &mut Vec<T>, x: &Vec<T>) {
        contract::add_assign(self, y, x);
        add_assign(y, x);
    }
    fn add_bias(&self, y: &mut Vec<T>, b: &Vec<T>) {
        contract::add_bias(self, y, b);
        add_bias(y, b);
    }
    fn bias_grad(&self, db: &mut Vec<T>, dy: &Vec<T>) {
        contract::bias_grad(self, db, dy);
        bias_grad(db, dy);
    }
    fn sum_squares(&self, x: &Vec<T>) -> f64 {
        contract::sum_squares(self, x);
        sum_squares(x)
    }
    fn adamw(&self, p: &mut Vec<T>, g: &Vec<T>, m: &mut Vec<T>, v: &mut Vec<T>, hp: AdamW) {
        contract::adamw(self, p, g, m, v, &hp);
        adamw(p, g, m, v, hp);
    }
}

impl<T: Float> GenerationBackend for CpuBackend<T> {
    fn matmul_rowwise(&self, y: &mut Vec<T>, x: &Vec<T>, w: &Vec<T>, m: usize, k: usize, n: usize) {
        contract::matmul(self, "matmul_rowwise", y, x, w, (m, k, n));
        matmul_rowwise(y, x, w, m, k, n);
    }

    fn attention_cached(
        &self,
        out: &mut Vec<T>,
        q: &Vec<T>,
        k_cache: &Vec<T>,
        v_cache: &Vec<T>,
        max_len: usize,
        past: usize,
        window: Option<usize>,
        s: AttnShape,
    ) {
        contract::attention_cached(self, out, q, k_cache, v_cache, max_len, past, window, s);
        attention_cached(out, q, k_cache, v_cache, max_len, past, window, s);
    }

    fn kv_write(
        &self,
        cache: &mut Vec<T>,
        src: &Vec<T>,
        slots: &[u32],
        positions: &[u32],
        max_len: usize,
    ) {
        contract::kv_write(self, cache, src, slots, positions, max_len);
        kv_write(cache, src, slots, positions, max_len);
    }

    fn attention_decode(
        &self,
        out: &mut Vec<T>,
        q: &Vec<T>,
        k_cache: &Vec<T>,
        v_cache: &Vec<T>,
        slots: &[u32],
        lens: &[u32],
        max_len: usize,
        window: Option<usize>,
        s: AttnShape,
    ) {
        contract::attention_decode(
            self, out, q, k_cache, v_cache, slots, lens, max_len, window, s,
        );
        attention_decode(out, q, k_cache, v_cache, slots, lens, max_len, window, s);
    }
}
