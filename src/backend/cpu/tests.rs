//! Tests of the CPU backend: each forward kernel (run in f32, outputs poisoned with NaN first)
//! against a naive f64 loop on seeded random inputs; each backward by central finite differences
//! in f64 on L = Σ out ⊙ R; the accumulate (`+=`) contracts; the KV-cache attention against full
//! attention; AdamW against a scalar transcription of PyTorch's update.

use super::*;
use crate::rng::Rng;

/// Test inputs: the project's seeded generator, plus the draws these tests need.
trait TestDraws {
    /// Uniform in [-1, 1) rounded to f32 (so the f32 run and the f64 reference see the same
    /// input), never exactly zero.
    fn signed(&mut self) -> f64;
    fn vec(&mut self, n: usize) -> Vec<f64>;
    fn id_below(&mut self, n: usize) -> u32;
}

impl TestDraws for Rng {
    fn signed(&mut self) -> f64 {
        let x = (2.0 * self.f64() - 1.0) as f32 as f64;
        if x == 0.0 {
            0.5
        } else {
            x
        }
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.signed()).collect()
    }
    fn id_below(&mut self, n: usize) -> u32 {
        self.index(n) as u32
    }
}

fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&a| a as f32).collect()
}
fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&a| a as f64).collect()
}
fn poisoned32(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}
fn poisoned64(n: usize) -> Vec<f64> {
    vec![f64::NAN; n]
}

/// ‖out − reference‖ / ‖reference‖ (NaN anywhere makes it NaN, which fails every bound).
fn rel_err(out: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len());
    let num: f64 = out
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let den: f64 = reference.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

#[track_caller]
fn assert_close(name: &str, out: &[f64], reference: &[f64], bound: f64) {
    let e = rel_err(out, reference);
    assert!(e < bound, "{name}: relative error {e:e} >= {bound:e}");
}

/// f32 forward outputs must be within this relative error of the f64 reference.
const F32_BOUND: f64 = 1e-5;
/// Finite-difference gradient checks in f64.
const FD_EPS: f64 = 1e-6;
const FD_BOUND: f64 = 1e-6;

/// Central-difference gradient of `loss` at `x`.
fn fd_grad(x: &[f64], mut loss: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = xp[i];
            xp[i] = x0 + FD_EPS;
            let lp = loss(&xp);
            xp[i] = x0 - FD_EPS;
            let lm = loss(&xp);
            xp[i] = x0;
            (lp - lm) / (2.0 * FD_EPS)
        })
        .collect()
}

#[track_caller]
fn check_grad(name: &str, analytic: &[f64], x: &[f64], loss: impl FnMut(&[f64]) -> f64) {
    let numeric = fd_grad(x, loss);
    assert_close(name, analytic, &numeric, FD_BOUND);
}

fn weighted_sum(out: &[f64], r: &[f64]) -> f64 {
    out.iter().zip(r).map(|(a, b)| a * b).sum()
}

fn cpu32() -> CpuBackend<f32> {
    CpuBackend::new()
}
fn cpu64() -> CpuBackend<f64> {
    CpuBackend::new()
}

// ---- naive f64 references -----------------------------------------------------------------------

fn naive_matmul(x: &[f64], w: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k).map(|p| x[i * k + p] * w[j * k + p]).sum();
        }
    }
    y
}

fn naive_rmsnorm(x: &[f64], w: &[f64], d: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / d;
    let mut out = vec![0.0; n * d];
    let mut rstd = vec![0.0; n];
    for i in 0..n {
        let ms: f64 = (0..d).map(|j| x[i * d + j] * x[i * d + j]).sum::<f64>() / d as f64;
        rstd[i] = 1.0 / (ms + eps).sqrt();
        for j in 0..d {
            out[i * d + j] = x[i * d + j] * rstd[i] * w[j];
        }
    }
    (out, rstd)
}

/// Hugging Face's form: x·cos + rotate_half(x)·sin with the half tables repeated to length D.
fn naive_rope(
    x: &[f64],
    pos: &[u32],
    heads: usize,
    dd: usize,
    cos: &[f64],
    sin: &[f64],
) -> Vec<f64> {
    let half = dd / 2;
    let mut out = vec![0.0; x.len()];
    for (i, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            let o = (i * heads + h) * dd;
            for j in 0..dd {
                let rot = if j < half {
                    -x[o + j + half]
                } else {
                    x[o + j - half]
                };
                let t = p as usize * half + j % half;
                out[o + j] = x[o + j] * cos[t] + rot * sin[t];
            }
        }
    }
    out
}

fn rope_tables(max_pos: usize, dd: usize) -> (Vec<f64>, Vec<f64>) {
    let half = dd / 2;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..max_pos {
        for j in 0..half {
            let angle = p as f64 * 10000f64.powf(-2.0 * j as f64 / dd as f64);
            cos.push(angle.cos() as f32 as f64);
            sin.push(angle.sin() as f32 as f64);
        }
    }
    (cos, sin)
}

fn naive_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    docs: &[u32],
    s: AttnShape,
) -> (Vec<f64>, Vec<f64>) {
    let AttnShape {
        batch: b,
        seq: tt,
        heads: h,
        kv_heads: hkv,
        head_dim: dd,
        causal,
    } = s;
    let scale = 1.0 / (dd as f64).sqrt();
    let mut out = vec![0.0; b * tt * h * dd];
    let mut lse = vec![0.0; b * h * tt];
    for bi in 0..b {
        for hi in 0..h {
            let g = hi / (h / hkv);
            for t in 0..tt {
                let qo = ((bi * tt + t) * h + hi) * dd;
                let scores: Vec<f64> = (0..tt)
                    .map(|j| {
                        if (!causal || j <= t) && docs[bi * tt + j] == docs[bi * tt + t] {
                            let ko = ((bi * tt + j) * hkv + g) * dd;
                            (0..dd).map(|c| q[qo + c] * k[ko + c]).sum::<f64>() * scale
                        } else {
                            f64::NEG_INFINITY
                        }
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let l: f64 = scores.iter().map(|&x| (x - m).exp()).sum();
                lse[(bi * h + hi) * tt + t] = m + l.ln();
                for (j, &sc) in scores.iter().enumerate() {
                    let p = (sc - m).exp() / l;
                    let vo = ((bi * tt + j) * hkv + g) * dd;
                    for c in 0..dd {
                        out[qo + c] += p * v[vo + c];
                    }
                }
            }
        }
    }
    (out, lse)
}

fn naive_cross_entropy(
    logits: &[f64],
    targets: &[u32],
    mask: &[u8],
    vocab: usize,
    scale: f64,
) -> (f64, Vec<f64>) {
    let mut loss = 0.0;
    let mut grad = vec![0.0; logits.len()];
    for (i, (&t, &mk)) in targets.iter().zip(mask).enumerate() {
        let row = &logits[i * vocab..(i + 1) * vocab];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|&x| (x - m).exp()).sum::<f64>().ln();
        let mk = mk as f64;
        loss += mk * (lse - row[t as usize]);
        for j in 0..vocab {
            let onehot = if j == t as usize { 1.0 } else { 0.0 };
            grad[i * vocab + j] = scale * mk * ((row[j] - lse).exp() - onehot);
        }
    }
    (loss, grad)
}

/// Attention inputs: q [B,T,H,D], k, v [B,T,Hkv,D], doc ids with several documents per row.
fn attn_inputs(rng: &mut Rng, s: AttnShape) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<u32>) {
    let q = rng.vec(s.batch * s.seq * s.heads * s.head_dim);
    let k = rng.vec(s.batch * s.seq * s.kv_heads * s.head_dim);
    let v = rng.vec(k.len());
    // documents start at random positions (~1 in 4), ids increase along the row
    let mut docs = Vec::new();
    for b in 0..s.batch {
        let mut id = 10 * b as u32;
        for t in 0..s.seq {
            if t > 0 && rng.index(4) == 0 {
                id += 1;
            }
            docs.push(id);
        }
    }
    (q, k, v, docs)
}

// ---- forward kernels vs naive references (f32 backend, f64 reference) ---------------------------

#[test]
fn matmul_f32_matches_naive_small_and_parallel() {
    let be = cpu32();
    let mut rng = Rng::new(1);
    // the second shape is above MATMUL_PAR_FLOPS, so it takes gemm's rayon path
    for (m, k, n) in [(37, 64, 29), (128, 128, 160)] {
        assert_eq!((2 * m * n * k >= MATMUL_PAR_FLOPS), (m == 128));
        let (x, w) = (rng.vec(m * k), rng.vec(n * k));
        let mut y = poisoned32(m * n);
        be.matmul(&mut y, &to_f32(&x), &to_f32(&w), m, k, n);
        assert_close(
            "matmul",
            &to_f64(&y),
            &naive_matmul(&x, &w, m, k, n),
            F32_BOUND,
        );
    }
}

#[test]
fn matmul_dx_and_dw_f32_match_naive() {
    let be = cpu32();
    let mut rng = Rng::new(2);
    let (m, k, n) = (33, 48, 40);
    let (dy, w, x) = (rng.vec(m * n), rng.vec(n * k), rng.vec(m * k));
    // dx = dy · w  ==  dy · (wᵀ)ᵀ
    let wt: Vec<f64> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
    let mut dx = poisoned32(m * k);
    be.matmul_dx(&mut dx, &to_f32(&dy), &to_f32(&w), m, k, n, false);
    assert_close(
        "matmul_dx",
        &to_f64(&dx),
        &naive_matmul(&dy, &wt, m, n, k),
        F32_BOUND,
    );
    // dw = dyᵀ · x
    let dyt: Vec<f64> = (0..n * m).map(|i| dy[(i % m) * n + i / m]).collect();
    let xt: Vec<f64> = (0..k * m).map(|i| x[(i % m) * k + i / m]).collect();
    let mut dw = vec![0.0f32; n * k];
    be.matmul_dw(&mut dw, &to_f32(&dy), &to_f32(&x), m, k, n);
    assert_close(
        "matmul_dw",
        &to_f64(&dw),
        &naive_matmul(&dyt, &xt, n, m, k),
        F32_BOUND,
    );
}

#[test]
fn embedding_f32_copies_rows() {
    let be = cpu32();
    let mut rng = Rng::new(3);
    let (vocab, d) = (50, 24);
    let table = rng.vec(vocab * d);
    let ids: Vec<u32> = (0..2000).map(|_| rng.id_below(vocab)).collect();
    let mut out = poisoned32(ids.len() * d);
    be.embedding(&mut out, &to_f32(&table), &ids, d);
    let reference: Vec<f64> = ids
        .iter()
        .flat_map(|&i| table[i as usize * d..(i as usize + 1) * d].to_vec())
        .collect();
    assert_eq!(to_f64(&out), reference);
}

#[test]
fn rmsnorm_f32_matches_naive() {
    let be = cpu32();
    let mut rng = Rng::new(4);
    // 300 rows × 128 is above PAR_MIN_WORK: the parallel path
    for (n, d) in [(5, 16), (300, 128)] {
        let (x, w) = (rng.vec(n * d), rng.vec(d));
        let (mut out, mut rstd) = (poisoned32(n * d), poisoned32(n));
        be.rmsnorm(&mut out, &mut rstd, &to_f32(&x), &to_f32(&w), d, 1e-5);
        let (ro, rr) = naive_rmsnorm(&x, &w, d, 1e-5f32 as f64);
        assert_close("rmsnorm out", &to_f64(&out), &ro, F32_BOUND);
        assert_close("rmsnorm rstd", &to_f64(&rstd), &rr, F32_BOUND);
    }
}

#[test]
fn rope_f32_matches_hf_rotate_half() {
    let be = cpu32();
    let mut rng = Rng::new(5);
    let (heads, dd, max_pos) = (4, 16, 512);
    let (cos, sin) = rope_tables(max_pos, dd);
    let pos: Vec<u32> = (0..700).map(|_| rng.id_below(max_pos)).collect();
    let x = rng.vec(pos.len() * heads * dd);
    let mut y = to_f32(&x);
    be.rope(&mut y, &pos, heads, dd, &to_f32(&cos), &to_f32(&sin));
    assert_close(
        "rope",
        &to_f64(&y),
        &naive_rope(&x, &pos, heads, dd, &cos, &sin),
        F32_BOUND,
    );
    // rope_bwd is the inverse rotation: it brings x back
    be.rope_bwd(&mut y, &pos, heads, dd, &to_f32(&cos), &to_f32(&sin));
    assert_close("rope_bwd ∘ rope", &to_f64(&y), &x, F32_BOUND);
}

#[test]
fn attention_f32_matches_naive_with_gqa_and_documents() {
    let be = cpu32();
    let mut rng = Rng::new(6);
    // T = 48: large enough that (b, h) tasks go to the rayon pool
    for (kv_heads, causal) in [(4, true), (2, true), (1, true), (2, false)] {
        let s = AttnShape {
            batch: 2,
            seq: 48,
            heads: 4,
            kv_heads,
            head_dim: 16,
            causal,
        };
        let (q, k, v, docs) = attn_inputs(&mut rng, s);
        let (mut out, mut lse) = (poisoned32(q.len()), poisoned32(2 * 4 * 48));
        be.attention(
            &mut out,
            &mut lse,
            &to_f32(&q),
            &to_f32(&k),
            &to_f32(&v),
            &docs,
            s,
        );
        let (ro, rl) = naive_attention(&q, &k, &v, &docs, s);
        assert_close("attention out", &to_f64(&out), &ro, F32_BOUND);
        assert_close("attention lse", &to_f64(&lse), &rl, F32_BOUND);
    }
}

#[test]
fn swiglu_f32_matches_naive() {
    let be = cpu32();
    let mut rng = Rng::new(7);
    let n = 50_000; // several ELEM_BLOCKs, parallel path
    let (g, u): (Vec<f64>, Vec<f64>) = (rng.vec(n).iter().map(|x| 8.0 * x).collect(), rng.vec(n));
    let mut out = poisoned32(n);
    be.swiglu(&mut out, &to_f32(&g), &to_f32(&u));
    let reference: Vec<f64> = g
        .iter()
        .zip(&u)
        .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    assert_close("swiglu", &to_f64(&out), &reference, F32_BOUND);
}

#[test]
fn swiglu_handles_extreme_gates() {
    let be = cpu32();
    let g = vec![-1000.0f32, -90.0, 0.5, 90.0, 1000.0];
    let u = vec![1.0f32; 5];
    let mut out = poisoned32(5);
    be.swiglu(&mut out, &g, &u);
    assert!(out.iter().all(|x| x.is_finite()), "{out:?}");
    let (mut dg, mut du) = (poisoned32(5), poisoned32(5));
    be.swiglu_bwd(&mut dg, &mut du, &u, &g, &u);
    assert!(dg.iter().chain(&du).all(|x| x.is_finite()), "{dg:?} {du:?}");
}

#[test]
fn cross_entropy_f32_matches_naive() {
    let be = cpu32();
    let mut rng = Rng::new(8);
    let (n, vocab) = (64, 1000);
    let logits: Vec<f64> = rng.vec(n * vocab).iter().map(|x| 10.0 * x).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng.id_below(vocab)).collect();
    let mask: Vec<u8> = (0..n).map(|i| (i % 5 != 2) as u8).collect();
    let mut buf = to_f32(&logits);
    let loss = be.cross_entropy(&mut buf, &targets, &mask, vocab, 0.25);
    let (rl, rg) = naive_cross_entropy(&logits, &targets, &mask, vocab, 0.25);
    assert!(((loss - rl) / rl).abs() < F32_BOUND, "loss {loss} vs {rl}");
    assert_close("cross_entropy grad", &to_f64(&buf), &rg, F32_BOUND);
}

#[test]
#[should_panic(expected = "target")]
fn cross_entropy_rejects_target_out_of_vocab() {
    let mut logits = vec![0.5f32; 2 * 4];
    cpu32().cross_entropy(&mut logits, &[1, 4], &[1, 1], 4, 1.0);
}

#[test]
fn add_assign_and_sum_squares_match_naive() {
    let be = cpu32();
    let mut rng = Rng::new(9);
    let n = 40_000;
    let (x, y) = (rng.vec(n), rng.vec(n));
    let mut yb = to_f32(&y);
    be.add_assign(&mut yb, &to_f32(&x));
    let sum: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    assert_close("add_assign", &to_f64(&yb), &sum, F32_BOUND);
    let ss = be.sum_squares(&to_f32(&x));
    let reference: f64 = x.iter().map(|a| a * a).sum();
    assert!(
        ((ss - reference) / reference).abs() < 1e-12,
        "{ss} vs {reference}"
    );
}

#[test]
fn memory_ops_round_trip() {
    let be = cpu32();
    let host: Vec<f32> = (0..10).map(|i| i as f32 + 0.5).collect();
    let mut a = be.upload(&host);
    assert_eq!(be.buf_len(&a), 10);
    assert_eq!(be.download(&a), host);
    let mut b = be.zeros(10);
    be.copy(&mut b, &a);
    assert_eq!(b, a);
    be.copy_range(&mut b, 2, &a, 6, 3);
    assert_eq!(&b[2..5], &host[6..9]);
    be.fill_zero(&mut a);
    assert!(a.iter().all(|&x| x == 0.0));
    // f64 backend: upload widens, download narrows
    let be64 = cpu64();
    assert_eq!(be64.download(&be64.upload(&host)), host);
}

// ---- gradient checks (f64, central differences) ------------------------------------------------

#[test]
fn matmul_gradients_match_finite_differences() {
    let be = cpu64();
    let mut rng = Rng::new(10);
    let (m, k, n) = (5, 7, 6);
    let (x, w, r) = (rng.vec(m * k), rng.vec(n * k), rng.vec(m * n));
    let loss = |x: &[f64], w: &[f64]| {
        let mut y = poisoned64(m * n);
        be.matmul(&mut y, &x.to_vec(), &w.to_vec(), m, k, n);
        weighted_sum(&y, &r)
    };
    let mut dx = poisoned64(m * k);
    be.matmul_dx(&mut dx, &r, &w, m, k, n, false);
    check_grad("matmul dx", &dx, &x, |x| loss(x, &w));
    let mut dw = vec![0.0; n * k];
    be.matmul_dw(&mut dw, &r, &x, m, k, n);
    check_grad("matmul dw", &dw, &w, |w| loss(&x, w));
}

#[test]
fn embedding_gradient_matches_finite_differences_with_repeated_ids() {
    let be = cpu64();
    let mut rng = Rng::new(11);
    let (vocab, d) = (6, 5);
    let ids = [3u32, 1, 3, 0, 3, 5, 1];
    let (table, r) = (rng.vec(vocab * d), rng.vec(ids.len() * d));
    let mut dtable = vec![0.0; vocab * d];
    be.embedding_dw(&mut dtable, &r, &ids, d);
    check_grad("embedding dtable", &dtable, &table, |t| {
        let mut out = poisoned64(ids.len() * d);
        be.embedding(&mut out, &t.to_vec(), &ids, d);
        weighted_sum(&out, &r)
    });
    // rows of ids that never occur stay exactly zero
    assert!(dtable[2 * d..3 * d]
        .iter()
        .chain(&dtable[4 * d..5 * d])
        .all(|&g| g == 0.0));
}

#[test]
fn rmsnorm_gradients_match_finite_differences() {
    let be = cpu64();
    let mut rng = Rng::new(12);
    let (n, d, eps) = (4, 9, 1e-5);
    let (x, w, r) = (rng.vec(n * d), rng.vec(d), rng.vec(n * d));
    let loss = |x: &[f64], w: &[f64]| {
        let (mut out, mut rstd) = (poisoned64(n * d), poisoned64(n));
        be.rmsnorm(&mut out, &mut rstd, &x.to_vec(), &w.to_vec(), d, eps);
        weighted_sum(&out, &r)
    };
    let (mut out, mut rstd) = (poisoned64(n * d), poisoned64(n));
    be.rmsnorm(&mut out, &mut rstd, &x, &w, d, eps);
    let (mut dx, mut dw) = (vec![0.0; n * d], vec![0.0; d]);
    be.rmsnorm_bwd(&mut dx, &mut dw, &r, &x, &w, &rstd, d);
    check_grad("rmsnorm dx", &dx, &x, |x| loss(x, &w));
    check_grad("rmsnorm dw", &dw, &w, |w| loss(&x, w));
}

#[test]
fn rope_gradient_matches_finite_differences() {
    let be = cpu64();
    let mut rng = Rng::new(13);
    let (heads, dd) = (3, 8);
    let pos = [5u32, 0, 17, 3, 3, 30];
    let (cos, sin) = rope_tables(32, dd);
    let (x, r) = (
        rng.vec(pos.len() * heads * dd),
        rng.vec(pos.len() * heads * dd),
    );
    let mut dx = r.clone();
    be.rope_bwd(&mut dx, &pos, heads, dd, &cos, &sin);
    check_grad("rope dx", &dx, &x, |x| {
        let mut y = x.to_vec();
        be.rope(&mut y, &pos, heads, dd, &cos, &sin);
        weighted_sum(&y, &r)
    });
}

#[test]
fn attention_gradients_match_finite_differences_with_gqa_and_documents() {
    let be = cpu64();
    let mut rng = Rng::new(14);
    for (kv_heads, causal) in [(2, true), (1, true), (2, false)] {
        let s = AttnShape {
            batch: 2,
            seq: 7,
            heads: 4,
            kv_heads,
            head_dim: 4,
            causal,
        };
        let (q, k, v, _) = attn_inputs(&mut rng, s);
        // several documents per row; row 1 starts a new document at t = 1
        let docs = [0u32, 0, 0, 1, 1, 2, 2, 5, 6, 6, 6, 6, 7, 7];
        let r = rng.vec(q.len());
        let forward = |q: &[f64], k: &[f64], v: &[f64]| {
            let (mut out, mut lse) = (poisoned64(q.len()), poisoned64(s.batch * s.heads * s.seq));
            be.attention(
                &mut out,
                &mut lse,
                &q.to_vec(),
                &k.to_vec(),
                &v.to_vec(),
                &docs,
                s,
            );
            (out, lse)
        };
        let (out, lse) = forward(&q, &k, &v);
        let (mut dq, mut dk, mut dv) = (
            poisoned64(q.len()),
            poisoned64(k.len()),
            poisoned64(v.len()),
        );
        be.attention_bwd(
            &mut dq, &mut dk, &mut dv, &r, &out, &lse, &q, &k, &v, &docs, s,
        );
        check_grad("attention dq", &dq, &q, |q| {
            weighted_sum(&forward(q, &k, &v).0, &r)
        });
        check_grad("attention dk", &dk, &k, |k| {
            weighted_sum(&forward(&q, k, &v).0, &r)
        });
        check_grad("attention dv", &dv, &v, |v| {
            weighted_sum(&forward(&q, &k, v).0, &r)
        });
    }
}

#[test]
fn attention_backward_f32_matches_f64_in_parallel_path() {
    // the FD check above runs the serial path; this one runs the (b, h)-parallel backward in f32
    // against the f64 backend (itself FD-checked) on a shape large enough to go parallel
    let mut rng = Rng::new(15);
    let s = AttnShape {
        batch: 2,
        seq: 40,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        causal: true,
    };
    let (q, k, v, docs) = attn_inputs(&mut rng, s);
    let r = rng.vec(q.len());
    let lse_len = s.batch * s.heads * s.seq;
    let be64 = cpu64();
    let (mut out, mut lse) = (poisoned64(q.len()), poisoned64(lse_len));
    be64.attention(&mut out, &mut lse, &q, &k, &v, &docs, s);
    let (mut dq, mut dk, mut dv) = (
        poisoned64(q.len()),
        poisoned64(k.len()),
        poisoned64(v.len()),
    );
    be64.attention_bwd(
        &mut dq, &mut dk, &mut dv, &r, &out, &lse, &q, &k, &v, &docs, s,
    );
    let be = cpu32();
    let (q32, k32, v32) = (to_f32(&q), to_f32(&k), to_f32(&v));
    let (mut out32, mut lse32) = (poisoned32(q.len()), poisoned32(lse_len));
    be.attention(&mut out32, &mut lse32, &q32, &k32, &v32, &docs, s);
    let (mut dq32, mut dk32, mut dv32) = (
        poisoned32(q.len()),
        poisoned32(k.len()),
        poisoned32(v.len()),
    );
    be.attention_bwd(
        &mut dq32,
        &mut dk32,
        &mut dv32,
        &to_f32(&r),
        &out32,
        &lse32,
        &q32,
        &k32,
        &v32,
        &docs,
        s,
    );
    assert_close("attention dq f32", &to_f64(&dq32), &dq, F32_BOUND);
    assert_close("attention dk f32", &to_f64(&dk32), &dk, F32_BOUND);
    assert_close("attention dv f32", &to_f64(&dv32), &dv, F32_BOUND);
}

#[test]
fn swiglu_gradients_match_finite_differences() {
    let be = cpu64();
    let mut rng = Rng::new(16);
    let n = 23;
    let (g, u, r): (Vec<f64>, _, _) = (
        rng.vec(n).iter().map(|x| 4.0 * x).collect(),
        rng.vec(n),
        rng.vec(n),
    );
    let loss = |g: &[f64], u: &[f64]| {
        let mut out = poisoned64(n);
        be.swiglu(&mut out, &g.to_vec(), &u.to_vec());
        weighted_sum(&out, &r)
    };
    let (mut dg, mut du) = (poisoned64(n), poisoned64(n));
    be.swiglu_bwd(&mut dg, &mut du, &r, &g, &u);
    check_grad("swiglu dgate", &dg, &g, |g| loss(g, &u));
    check_grad("swiglu dup", &du, &u, |u| loss(&g, u));
}

#[test]
fn cross_entropy_gradient_matches_finite_differences_with_masked_rows() {
    let be = cpu64();
    let mut rng = Rng::new(17);
    let (n, vocab, scale) = (5, 7, 0.7);
    let logits: Vec<f64> = rng.vec(n * vocab).iter().map(|x| 3.0 * x).collect();
    let targets = [2u32, 6, 0, 3, 3];
    let mask = [1u8, 0, 1, 1, 0];
    let mut grad = logits.clone();
    be.cross_entropy(&mut grad, &targets, &mask, vocab, scale as f32);
    let scale = scale as f32 as f64;
    check_grad("cross_entropy dlogits", &grad, &logits, |l| {
        scale * be.cross_entropy(&mut l.to_vec(), &targets, &mask, vocab, 1.0)
    });
    for i in [1, 4] {
        assert!(
            grad[i * vocab..(i + 1) * vocab].iter().all(|&g| g == 0.0),
            "masked row {i}"
        );
    }
}

// ---- accumulate contracts -----------------------------------------------------------------------

/// out0 + (the op into zeros) == (the op into out0)
#[track_caller]
fn assert_accumulates(name: &str, out0: &[f64], fresh: &[f64], accumulated: &[f64]) {
    let expect: Vec<f64> = out0.iter().zip(fresh).map(|(a, b)| a + b).collect();
    assert_close(name, accumulated, &expect, 1e-14);
}

#[test]
fn gradient_ops_accumulate() {
    let be = cpu64();
    let mut rng = Rng::new(18);
    let (m, k, n) = (6, 5, 4);
    let (dy, w, x) = (rng.vec(m * n), rng.vec(n * k), rng.vec(m * k));

    let dw0 = rng.vec(n * k);
    let (mut fresh, mut acc) = (vec![0.0; n * k], dw0.clone());
    be.matmul_dw(&mut fresh, &dy, &x, m, k, n);
    be.matmul_dw(&mut acc, &dy, &x, m, k, n);
    assert_accumulates("matmul_dw", &dw0, &fresh, &acc);

    let dx0 = rng.vec(m * k);
    let (mut fresh, mut acc) = (poisoned64(m * k), dx0.clone());
    be.matmul_dx(&mut fresh, &dy, &w, m, k, n, false);
    be.matmul_dx(&mut acc, &dy, &w, m, k, n, true);
    assert_accumulates("matmul_dx accumulate", &dx0, &fresh, &acc);

    let (vocab, d, ids) = (5, 3, [4u32, 0, 4, 2]);
    let (dout, t0) = (rng.vec(ids.len() * d), rng.vec(vocab * d));
    let (mut fresh, mut acc) = (vec![0.0; vocab * d], t0.clone());
    be.embedding_dw(&mut fresh, &dout, &ids, d);
    be.embedding_dw(&mut acc, &dout, &ids, d);
    assert_accumulates("embedding_dw", &t0, &fresh, &acc);

    let (rows, d) = (3, 8);
    let (xr, wr, dout) = (rng.vec(rows * d), rng.vec(d), rng.vec(rows * d));
    let (mut out, mut rstd) = (poisoned64(rows * d), poisoned64(rows));
    be.rmsnorm(&mut out, &mut rstd, &xr, &wr, d, 1e-6);
    let (dx0, dw0) = (rng.vec(rows * d), rng.vec(d));
    let (mut fdx, mut fdw) = (vec![0.0; rows * d], vec![0.0; d]);
    let (mut adx, mut adw) = (dx0.clone(), dw0.clone());
    be.rmsnorm_bwd(&mut fdx, &mut fdw, &dout, &xr, &wr, &rstd, d);
    be.rmsnorm_bwd(&mut adx, &mut adw, &dout, &xr, &wr, &rstd, d);
    assert_accumulates("rmsnorm_bwd dx", &dx0, &fdx, &adx);
    assert_accumulates("rmsnorm_bwd dw", &dw0, &fdw, &adw);
}

#[test]
fn embedding_dw_parallel_path_matches_serial_sum() {
    // 3000 tokens × 32 is above PAR_MIN_WORK; ids drawn from a small vocabulary so most repeat
    let be = cpu32();
    let mut rng = Rng::new(19);
    let (vocab, d) = (40, 32);
    let ids: Vec<u32> = (0..3000).map(|_| rng.id_below(vocab)).collect();
    let (dout, t0) = (rng.vec(ids.len() * d), rng.vec(vocab * d));
    let mut reference = t0.clone();
    for (i, &id) in ids.iter().enumerate() {
        for j in 0..d {
            reference[id as usize * d + j] += dout[i * d + j];
        }
    }
    let mut dt = to_f32(&t0);
    be.embedding_dw(&mut dt, &to_f32(&dout), &ids, d);
    assert_close("embedding_dw", &to_f64(&dt), &reference, F32_BOUND);
}

// ---- KV-cache attention --------------------------------------------------------------------------

#[test]
fn attention_cached_prefill_then_decode_equals_full_attention() {
    let be = cpu32();
    let mut rng = Rng::new(20);
    let (tt, max_len, prefill) = (9, 12, 4);
    let full = AttnShape {
        batch: 2,
        seq: tt,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        causal: true,
    };
    let (q, k, v, _) = attn_inputs(&mut rng, full);
    let (q, k, v) = (to_f32(&q), to_f32(&k), to_f32(&v));
    let docs = vec![0u32; 2 * tt];
    let (mut out, mut lse) = (poisoned32(q.len()), poisoned32(2 * 4 * tt));
    be.attention(&mut out, &mut lse, &q, &k, &v, &docs, full);

    let (qrow, kvrow) = (4 * 8, 2 * 8); // one position of q, of k/v
                                        // cache [B, max_len, Hkv, D], poisoned beyond what has been written
    let (mut kc, mut vc) = (
        poisoned32(2 * max_len * kvrow),
        poisoned32(2 * max_len * kvrow),
    );
    let mut got = poisoned32(q.len());
    let mut past = 0;
    for step in [prefill, 1, 1, 1, 1, 1] {
        for b in 0..2 {
            for t in past..past + step {
                let (src, dst) = ((b * tt + t) * kvrow, (b * max_len + t) * kvrow);
                kc[dst..dst + kvrow].copy_from_slice(&k[src..src + kvrow]);
                vc[dst..dst + kvrow].copy_from_slice(&v[src..src + kvrow]);
            }
        }
        let s = AttnShape { seq: step, ..full };
        let qs: Vec<f32> = (0..2)
            .flat_map(|b| q[(b * tt + past) * qrow..(b * tt + past + step) * qrow].to_vec())
            .collect();
        let mut o = poisoned32(qs.len());
        be.attention_cached(&mut o, &qs, &kc, &vc, max_len, past, None, s);
        for b in 0..2 {
            got[(b * tt + past) * qrow..(b * tt + past + step) * qrow]
                .copy_from_slice(&o[b * step * qrow..(b + 1) * step * qrow]);
        }
        past += step;
    }
    assert_eq!(past, tt);
    assert_close("attention_cached", &to_f64(&got), &to_f64(&out), 1e-6);
}

// ---- AdamW ----------------------------------------------------------------------------------------

/// PyTorch `torch.optim.AdamW` (single-tensor path), one element at a time, transcribed from
/// torch/optim/adamw.py and the CPU kernels of lerp_, addcmul_ and addcdiv_.
#[allow(clippy::too_many_arguments)]
fn torch_adamw_reference(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], hp: AdamW) {
    let (lr, b1, b2, eps, wd) = (
        hp.lr as f64,
        hp.beta1 as f64,
        hp.beta2 as f64,
        hp.eps as f64,
        hp.weight_decay as f64,
    );
    let step = hp.step as i32;
    let bias_correction1 = 1.0 - b1.powi(step);
    let bias_correction2 = 1.0 - b2.powi(step);
    let step_size = lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.sqrt();
    let weight = 1.0 - b1;
    for i in 0..p.len() {
        let grad = g[i] * hp.grad_scale as f64;
        p[i] *= 1.0 - lr * wd; // param.mul_(1 - lr * weight_decay)
                               // exp_avg.lerp_(grad, 1 - beta1)
        m[i] = if weight.abs() < 0.5 {
            m[i] + weight * (grad - m[i])
        } else {
            grad - (grad - m[i]) * (1.0 - weight)
        };
        v[i] = v[i] * b2 + (1.0 - b2) * grad * grad; // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        let denom = v[i].sqrt() / bias_correction2_sqrt + eps;
        p[i] += -step_size * m[i] / denom; // param.addcdiv_(exp_avg, denom, value=-step_size)
    }
}

#[test]
fn adamw_matches_pytorch_reference() {
    let mut rng = Rng::new(21);
    let n = 20_000; // parallel path
    for (wd, grad_scale) in [(0.1f32, 0.5f32), (0.0, 1.0)] {
        let p0 = rng.vec(n);
        let (mut pr, mut mr, mut vr) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        let (mut p64, mut m64, mut v64) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        let (mut p32, mut m32, mut v32) = (to_f32(&p0), vec![0.0f32; n], vec![0.0f32; n]);
        for step in 1..=5 {
            let g = rng.vec(n);
            let hp = AdamW {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: wd,
                step,
                grad_scale,
            };
            torch_adamw_reference(&mut pr, &g, &mut mr, &mut vr, hp);
            cpu64().adamw(&mut p64, &g, &mut m64, &mut v64, hp);
            cpu32().adamw(&mut p32, &to_f32(&g), &mut m32, &mut v32, hp);
        }
        assert_eq!(p64, pr, "f64 parameters");
        assert_eq!(m64, mr, "f64 first moment");
        assert_eq!(v64, vr, "f64 second moment");
        assert_close("adamw f32 p", &to_f64(&p32), &pr, F32_BOUND);
        assert_close("adamw f32 m", &to_f64(&m32), &mr, F32_BOUND);
        assert_close("adamw f32 v", &to_f64(&v32), &vr, F32_BOUND);
    }
}

#[test]
fn matmul_rowwise_matches_matmul_and_rows_do_not_depend_on_the_batch() {
    let mut rng = Rng::new(21);
    let (m, k, n) = (19, 150, 300);
    let x = to_f32(&rng.vec(m * k));
    let w = to_f32(&rng.vec(n * k));
    let mut y = poisoned32(m * n);
    matmul_rowwise(&mut y, &x, &w, m, k, n);
    let mut g = poisoned32(m * n);
    matmul(&mut g, &x, &w, m, k, n);
    assert!(rel_err(&to_f64(&y), &to_f64(&g)) < 1e-6);
    // Every row alone, and rows 5..12 as their own batch, give the same bits.
    for r in 0..m {
        let mut one = poisoned32(n);
        matmul_rowwise(&mut one, &x[r * k..(r + 1) * k], &w, 1, k, n);
        assert_eq!(one[..], y[r * n..(r + 1) * n], "row {r}");
    }
    let mut mid = poisoned32(7 * n);
    matmul_rowwise(&mut mid, &x[5 * k..12 * k], &w, 7, k, n);
    assert_eq!(mid[..], y[5 * n..12 * n]);
}

#[test]
fn bias_add_and_gradient_are_the_broadcast_sum_and_the_column_sum() {
    let mut rng = Rng::new(24);
    let (rows, d) = (70usize, 13usize); // two full blocks of 32 rows and a partial one
    let y = to_f32(&rng.vec(rows * d));
    let b = to_f32(&rng.vec(d));
    let mut got = y.clone();
    cpu32().add_bias(&mut got, &b);
    for r in 0..rows {
        for j in 0..d {
            assert_eq!(got[r * d + j], y[r * d + j] + b[j]);
        }
    }
    let dy = rng.vec(rows * d);
    let start = rng.vec(d);
    let mut db = start.clone();
    cpu64().bias_grad(&mut db, &dy);
    for j in 0..d {
        let want = start[j] + (0..rows).map(|r| dy[r * d + j]).sum::<f64>();
        assert!(
            (db[j] - want).abs() < 1e-12,
            "column {j}: {} vs {want}",
            db[j]
        );
    }
}

/// The keys of positions `first..=last` of a [max_len, Hkv, D] cache moved to positions 0.., the
/// rest poisoned: attention over it without a window is attention over exactly those keys.
fn window_of(cache: &[f32], w: usize, first: usize, last: usize) -> Vec<f32> {
    let mut out = poisoned32(cache.len());
    out[..(last + 1 - first) * w].copy_from_slice(&cache[first * w..(last + 1) * w]);
    out
}

#[test]
fn sliding_window_attends_exactly_the_last_w_keys_cached_and_decode() {
    let mut rng = Rng::new(23);
    let (max_len, hkv, h, d, window) = (30usize, 2usize, 4usize, 8usize, 7usize);
    let w = hkv * d;
    let kc = to_f32(&rng.vec(max_len * w));
    let vc = to_f32(&rng.vec(max_len * w));
    let s = AttnShape {
        batch: 1,
        seq: 1,
        heads: h,
        kv_heads: hkv,
        head_dim: d,
        causal: true,
    };
    // Several queries at once (a prefill continuing at past = 12), each against its window.
    let (past, tq) = (12usize, 9usize);
    let q = to_f32(&rng.vec(tq * h * d));
    let mut out = poisoned32(q.len());
    attention_cached(
        &mut out,
        &q,
        &kc,
        &vc,
        max_len,
        past,
        Some(window),
        AttnShape { seq: tq, ..s },
    );
    for i in 0..tq {
        let pos = past + i;
        let first = (pos + 1).saturating_sub(window);
        let (k1, v1) = (window_of(&kc, w, first, pos), window_of(&vc, w, first, pos));
        let mut one = poisoned32(h * d);
        let qi = &q[i * h * d..(i + 1) * h * d];
        attention_cached(&mut one, qi, &k1, &v1, max_len, pos - first, None, s);
        assert_eq!(
            one[..],
            out[i * h * d..(i + 1) * h * d],
            "query at position {pos}"
        );
        // Decode of the same query (length pos + 1) agrees bit for bit.
        let mut dec = poisoned32(h * d);
        attention_decode(
            &mut dec,
            qi,
            &kc,
            &vc,
            &[0],
            &[pos as u32 + 1],
            max_len,
            Some(window),
            s,
        );
        assert_eq!(dec, one, "decode at position {pos}");
    }
    // A window at least as long as the sequence changes nothing.
    let mut wide = poisoned32(q.len());
    attention_cached(
        &mut wide,
        &q,
        &kc,
        &vc,
        max_len,
        past,
        Some(max_len),
        AttnShape { seq: tq, ..s },
    );
    let mut none = poisoned32(q.len());
    attention_cached(
        &mut none,
        &q,
        &kc,
        &vc,
        max_len,
        past,
        None,
        AttnShape { seq: tq, ..s },
    );
    assert_eq!(wide, none);
}

#[test]
fn decode_attention_equals_cached_attention_per_sequence() {
    let mut rng = Rng::new(22);
    let (slots_total, max_len, hkv, h, d) = (4usize, 40usize, 2usize, 4usize, 8usize);
    let w = hkv * d;
    let kc = to_f32(&rng.vec(slots_total * max_len * w));
    let vc = to_f32(&rng.vec(slots_total * max_len * w));
    let (slots, lens) = ([3u32, 0, 2], [40u32, 1, 17]);
    let q = to_f32(&rng.vec(3 * h * d));
    let s = AttnShape {
        batch: 3,
        seq: 1,
        heads: h,
        kv_heads: hkv,
        head_dim: d,
        causal: true,
    };
    let mut out = poisoned32(q.len());
    attention_decode(&mut out, &q, &kc, &vc, &slots, &lens, max_len, None, s);
    for i in 0..3 {
        let sl = slots[i] as usize;
        let range = sl * max_len * w..(sl + 1) * max_len * w;
        let mut one = poisoned32(h * d);
        let s1 = AttnShape { batch: 1, ..s };
        let qi = &q[i * h * d..(i + 1) * h * d];
        let past = lens[i] as usize - 1;
        attention_cached(
            &mut one,
            qi,
            &kc[range.clone()],
            &vc[range],
            max_len,
            past,
            None,
            s1,
        );
        assert_eq!(one[..], out[i * h * d..(i + 1) * h * d], "sequence {i}");
    }
    // kv_write puts row i at (slot, position).
    let mut cache = vec![0f32; slots_total * max_len * w];
    let src = to_f32(&rng.vec(2 * w));
    kv_write(&mut cache, &src, &[1, 3], &[5, 39], max_len);
    assert_eq!(cache[(max_len + 5) * w..(max_len + 6) * w], src[..w]);
    assert_eq!(
        cache[(3 * max_len + 39) * w..(3 * max_len + 40) * w],
        src[w..]
    );
    assert_eq!(cache.iter().filter(|&&x| x != 0.0).count(), 2 * w);
}

// ---- the contract: a wrong buffer is a panic naming the operation, the buffer and the lengths ---

#[test]
#[should_panic(expected = "copy_range: src has 4 elements, src_off + len = 2 + 3 reaches past it")]
fn contract_rejects_a_copy_range_past_the_source() {
    let mut dst = vec![0f32; 8];
    cpu32().copy_range(&mut dst, 0, &vec![1f32; 4], 2, 3);
}

#[test]
#[should_panic(expected = "add_range: dst has 8 elements, dst_off + len = 6 + 3 reaches past it")]
fn contract_rejects_an_add_range_past_the_destination() {
    let mut dst = vec![0f32; 8];
    cpu32().add_range(&mut dst, 6, &vec![1f32; 4], 0, 3);
}

#[test]
fn add_range_adds_one_range_into_another_and_leaves_the_rest() {
    let mut dst: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let src: Vec<f32> = (0..5).map(|i| 10.0 * i as f32).collect();
    cpu32().add_range(&mut dst, 3, &src, 1, 4);
    assert_eq!(dst, vec![0.0, 1.0, 2.0, 13.0, 24.0, 35.0, 46.0, 7.0]);
}

#[test]
#[should_panic(expected = "matmul: x has 11 elements, m·k = 12")]
fn contract_rejects_a_short_matmul_operand() {
    let (m, k, n) = (3, 4, 5);
    let mut y = vec![0f32; m * n];
    cpu32().matmul(&mut y, &vec![1f32; m * k - 1], &vec![1f32; n * k], m, k, n);
}

#[test]
#[should_panic(expected = "matmul_dw: dw has 19 elements, n·k = 20")]
fn contract_rejects_a_short_weight_gradient() {
    let (m, k, n) = (3, 4, 5);
    let mut dw = vec![0f32; n * k - 1];
    cpu32().matmul_dw(&mut dw, &vec![1f32; m * n], &vec![1f32; m * k], m, k, n);
}

#[test]
#[should_panic(expected = "embedding: out has 15 elements, len(ids)·d = 16")]
fn contract_rejects_a_short_embedding_output() {
    let mut out = vec![0f32; 2 * 8 - 1];
    cpu32().embedding(&mut out, &vec![1f32; 10 * 8], &[1, 2], 8);
}

#[test]
#[should_panic(expected = "embedding_dw: id 10 >= vocab 10")]
fn contract_rejects_an_id_past_the_table() {
    let mut dtable = vec![0f32; 10 * 8];
    cpu32().embedding_dw(&mut dtable, &vec![1f32; 2 * 8], &[1, 10], 8);
}

#[test]
#[should_panic(expected = "rmsnorm: x has 1000 elements, len(rstd)·d = 1024")]
fn contract_rejects_a_short_rmsnorm_input() {
    let (rows, d) = (8, 128);
    let (mut out, mut rstd) = (vec![0f32; rows * d], vec![0f32; rows]);
    cpu32().rmsnorm(
        &mut out,
        &mut rstd,
        &vec![1f32; 1000],
        &vec![1f32; d],
        d,
        1e-5,
    );
}

#[test]
#[should_panic(expected = "rmsnorm_bwd: dw has 127 elements, d = 128")]
fn contract_rejects_a_short_rmsnorm_weight_gradient() {
    let (rows, d) = (8, 128);
    let (mut dx, mut dw) = (vec![0f32; rows * d], vec![0f32; d - 1]);
    let x = vec![1f32; rows * d];
    cpu32().rmsnorm_bwd(
        &mut dx,
        &mut dw,
        &x,
        &x,
        &vec![1f32; d],
        &vec![1f32; rows],
        d,
    );
}

#[test]
#[should_panic(expected = "rope_bwd: x has 63 elements, len(positions)·heads·head_dim = 64")]
fn contract_rejects_a_short_rope_input() {
    let (cos, sin) = (vec![1f32; 16 * 4], vec![0f32; 16 * 4]);
    let mut dx = vec![0f32; 2 * 4 * 8 - 1];
    cpu32().rope_bwd(&mut dx, &[0, 1], 4, 8, &cos, &sin);
}

#[test]
#[should_panic(expected = "rope: position 16 >= table length 16")]
fn contract_rejects_a_position_past_the_rope_tables() {
    let (cos, sin) = (vec![1f32; 16 * 4], vec![0f32; 16 * 4]);
    let mut x = vec![0f32; 2 * 4 * 8];
    cpu32().rope(&mut x, &[0, 16], 4, 8, &cos, &sin);
}

/// B = 2, T = 5, H = 4, Hkv = 2, D = 8.
fn contract_attn_shape() -> AttnShape {
    AttnShape {
        batch: 2,
        seq: 5,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        causal: true,
    }
}

#[test]
#[should_panic(expected = "attention: lse has 39 elements, B·H·T = 40")]
fn contract_rejects_a_short_attention_lse() {
    let s = contract_attn_shape();
    let (q, kv) = (vec![0f32; 2 * 5 * 4 * 8], vec![0f32; 2 * 5 * 2 * 8]);
    let (mut out, mut lse) = (q.clone(), vec![0f32; 39]);
    cpu32().attention(&mut out, &mut lse, &q, &kv, &kv, &[0; 10], s);
}

#[test]
#[should_panic(expected = "attention_bwd: dv has 159 elements, B·T·Hkv·D = 160")]
fn contract_rejects_a_short_attention_gradient() {
    let s = contract_attn_shape();
    let (q, kv, lse) = (vec![0f32; 320], vec![0f32; 160], vec![0f32; 40]);
    let (mut dq, mut dk, mut dv) = (q.clone(), kv.clone(), vec![0f32; 159]);
    cpu32().attention_bwd(
        &mut dq, &mut dk, &mut dv, &q, &q, &lse, &q, &kv, &kv, &[0; 10], s,
    );
}

#[test]
#[should_panic(expected = "attention_cached: k_cache has 255 elements, B·max_len·Hkv·D = 256")]
fn contract_rejects_a_short_kv_cache() {
    let s = AttnShape {
        seq: 1,
        ..contract_attn_shape()
    };
    let (q, cache) = (vec![0f32; 2 * 4 * 8], vec![0f32; 2 * 8 * 2 * 8]);
    let mut out = q.clone();
    cpu32().attention_cached(&mut out, &q, &cache[1..].to_vec(), &cache, 8, 3, None, s);
}

#[test]
#[should_panic(expected = "attention_decode: q has 63 elements, N·H·D = 64")]
fn contract_rejects_a_short_decode_query() {
    let s = AttnShape {
        seq: 1,
        ..contract_attn_shape()
    };
    let cache = vec![0f32; 3 * 8 * 2 * 8];
    let mut out = vec![0f32; 2 * 4 * 8];
    let q = vec![0f32; 2 * 4 * 8 - 1];
    cpu32().attention_decode(&mut out, &q, &cache, &cache, &[0, 2], &[3, 8], 8, None, s);
}

#[test]
#[should_panic(expected = "kv_write: slot 3 >= cache slots 3")]
fn contract_rejects_a_slot_past_the_cache() {
    let mut cache = vec![0f32; 3 * 8 * 16];
    cpu32().kv_write(&mut cache, &vec![1f32; 2 * 16], &[0, 3], &[1, 1], 8);
}

#[test]
#[should_panic(expected = "swiglu_bwd: up has 99 elements, len(dout) = 100")]
fn contract_rejects_a_short_swiglu_input() {
    let x = vec![0f32; 100];
    let (mut dg, mut du) = (x.clone(), x.clone());
    cpu32().swiglu_bwd(&mut dg, &mut du, &x, &x, &x[1..].to_vec());
}

#[test]
#[should_panic(expected = "cross_entropy: logits has 7 elements, not a multiple of d = 4")]
fn contract_rejects_short_logits() {
    let mut logits = vec![0.5f32; 2 * 4 - 1];
    cpu32().cross_entropy(&mut logits, &[1, 3], &[1, 1], 4, 1.0);
}

#[test]
#[should_panic(expected = "cross_entropy: logits hold rows 2..2+2 of len(targets) = 3")]
fn contract_rejects_loss_rows_past_the_batch() {
    let be = cpu32();
    let mut losses = vec![0f32; 3];
    be.cross_entropy_rows(
        &mut vec![0.5f32; 8],
        &[1, 3, 0],
        &[1, 1, 1],
        2,
        4,
        1.0,
        &mut losses,
    );
}

#[test]
#[should_panic(expected = "cross_entropy: losses has 2 elements, len(targets) = 3")]
fn contract_rejects_short_losses() {
    let be = cpu32();
    let mut losses = vec![0f32; 2];
    be.cross_entropy_rows(
        &mut vec![0.5f32; 4],
        &[1, 3, 0],
        &[1, 1, 1],
        0,
        4,
        1.0,
        &mut losses,
    );
}

#[test]
fn cross_entropy_rows_in_chunks_match_the_whole_batch() {
    // Rows 0..3 and 3..7 of a batch of 7, each chunk at its offset: the same row losses and
    // gradients as the whole batch at once, and nothing written outside a chunk's rows.
    let be = cpu32();
    let mut rng = Rng::new(18);
    let (n, vocab) = (7, 50);
    let logits: Vec<f32> = rng
        .vec(n * vocab)
        .iter()
        .map(|&x| (5.0 * x) as f32)
        .collect();
    let targets: Vec<u32> = (0..n).map(|_| rng.id_below(vocab)).collect();
    let mask: Vec<u8> = (0..n).map(|i| (i != 4) as u8).collect();
    let mut whole = logits.clone();
    let mut whole_losses = poisoned32(n);
    be.cross_entropy_rows(
        &mut whole,
        &targets,
        &mask,
        0,
        vocab,
        0.5,
        &mut whole_losses,
    );
    let mut losses = poisoned32(n);
    for (r0, rows) in [(3, 4), (0, 3)] {
        let mut chunk = logits[r0 * vocab..(r0 + rows) * vocab].to_vec();
        let before = losses.clone();
        be.cross_entropy_rows(&mut chunk, &targets, &mask, r0, vocab, 0.5, &mut losses);
        assert_eq!(
            chunk,
            whole[r0 * vocab..(r0 + rows) * vocab],
            "rows {r0}..+{rows}"
        );
        for (i, (a, b)) in losses.iter().zip(&before).enumerate() {
            if !(r0..r0 + rows).contains(&i) {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "row {i} outside the chunk was written"
                );
            }
        }
    }
    assert_eq!(losses, whole_losses);
    assert_eq!(losses[4], 0.0, "masked row");
    let sum = be.read_sum(&losses, n);
    let want: f64 = whole_losses.iter().map(|&l| l as f64).sum();
    assert_eq!(sum, want);
}

#[test]
#[should_panic(expected = "add_assign: x has 9 elements, len(y) = 10")]
fn contract_rejects_a_short_addend() {
    let mut y = vec![0f32; 10];
    cpu32().add_assign(&mut y, &vec![1f32; 9]);
}

#[test]
#[should_panic(expected = "adamw: v has 9 elements, len(p) = 10")]
fn contract_rejects_a_short_optimizer_moment() {
    let hp = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
        grad_scale: 1.0,
    };
    let (mut p, mut m, mut v) = (vec![0f32; 10], vec![0f32; 10], vec![0f32; 9]);
    cpu32().adamw(&mut p, &vec![0f32; 10], &mut m, &mut v, hp);
}
