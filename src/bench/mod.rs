//! `kiln bench`: throughput of every Backend operation at model shapes, on any backend.
//!
//! Bandwidth-bound operations report achieved GB/s (bytes read + written once, at the backend's
//! storage widths) and the fraction of the measured copy bandwidth (a large buffer copied
//! device-to-device, or memory-to-memory on the CPU). GEMMs and attention report TFLOP/s and the
//! fraction of the measured GEMM rate at the largest model shape. A comparison with PyTorch on the
//! same shapes is `scripts/compare_torch.py`.

pub mod step;

use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::backend::{AdamW, AttnShape, Backend, BufKind, GenerationBackend};
use crate::model::presets::Preset;
use crate::model::ModelConfig;
use crate::rng::Rng;

/// Shapes of one benchmark run (a model's layer at a token count).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BenchShape {
    /// N = B·T tokens.
    pub tokens: usize,
    /// T (attention sequence length; N must be a multiple).
    pub seq: usize,
    pub dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub op: String,
    pub shape: String,
    pub ms: f64,
    /// "GB/s" or "TFLOP/s".
    pub unit: &'static str,
    pub achieved: f64,
    /// Fraction of the measured ceiling for this unit.
    pub of_ceiling: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub shape: BenchShape,
    pub copy_gb_s: f64,
    pub gemm_tflop_s: f64,
    pub rows: Vec<BenchRow>,
}

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| ((r.f64() * 2.0 - 1.0) as f32) * scale)
        .collect()
}

/// AdamW settings for timing the optimizer (its cost does not depend on them).
pub fn timing_adamw(step: u64) -> AdamW {
    AdamW {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step,
        grad_scale: 1.0,
    }
}

/// Median forward and backward milliseconds of attention at `a`, on random q, k, v with one
/// document per row.
fn time_attention<B: Backend>(be: &B, a: AttnShape, iters: usize) -> (f64, f64) {
    let n = a.batch * a.seq;
    let (qd, kvd) = (a.heads * a.head_dim, a.kv_heads * a.head_dim);
    let up = |len: usize, seed: u64| be.upload_as(&random(len, seed, 1.0), BufKind::Act);
    let (q, k, v) = (up(n * qd, 21), up(n * kvd, 22), up(n * kvd, 23));
    let docs = vec![0u32; n];
    let mut out = be.alloc(n * qd, BufKind::Act);
    let mut lse = be.alloc(a.batch * a.heads * a.seq, BufKind::Stat);
    let fwd = time_ms(be, iters, || {
        be.attention(&mut out, &mut lse, &q, &k, &v, &docs, a)
    });
    let dout = up(n * qd, 24);
    let (mut dq, mut dk, mut dv) = (
        be.alloc(n * qd, BufKind::Act),
        be.alloc(n * kvd, BufKind::Act),
        be.alloc(n * kvd, BufKind::Act),
    );
    let bwd = time_ms(be, iters, || {
        be.attention_bwd(
            &mut dq, &mut dk, &mut dv, &dout, &out, &lse, &q, &k, &v, &docs, a,
        )
    });
    (fwd, bwd)
}

/// Median wall time of `f` in milliseconds over `iters` runs after one warm-up.
fn time_ms<B: Backend>(be: &B, iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    be.synchronize();
    let mut times: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            be.synchronize();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

impl BenchShape {
    /// One layer of `preset`'s model at the token count its benchmarks use: the embedded
    /// default's model at B16 × T256, Llama-3-8B at 16 × 1024 tokens. Mistral-7B is for
    /// `kiln bench generate`.
    pub fn of_preset(preset: Preset) -> Result<Self> {
        let (tokens, seq) = match preset {
            Preset::Tiny => (4096, 256),
            Preset::Llama3_8b => (16384, 1024),
            Preset::Mistral7b => bail!("--preset mistral-7b is for `kiln bench generate`"),
        };
        let m = generate_model(preset)?;
        Ok(BenchShape {
            tokens,
            seq,
            dim: m.dim,
            ffn: m.ffn_dim,
            vocab: m.vocab_size,
            heads: m.n_heads,
            kv_heads: m.n_kv_heads,
            head_dim: m.head_dim,
        })
    }
}

/// `preset`'s model, resolved, as the benchmarks build it with random weights: the tiny model
/// gets the embedded default's vocabulary of 2048 and 4096 positions.
pub fn generate_model(preset: Preset) -> Result<ModelConfig> {
    let mut m = preset.config();
    if preset == Preset::Tiny {
        m.max_seq_len = 4096;
    }
    let vocab = if m.vocab_size > 0 { m.vocab_size } else { 2048 };
    m.resolve(vocab)?;
    Ok(m)
}

/// Run every operation at `s` and report achieved throughput against measured ceilings.
pub fn run<B: Backend>(be: &B, s: BenchShape, iters: usize) -> BenchReport {
    let n = s.tokens;
    let qd = s.heads * s.head_dim;
    let act = be.elem_bytes(BufKind::Act) as f64;
    let par = be.elem_bytes(BufKind::Param) as f64;
    let f32b = be.elem_bytes(BufKind::Grad) as f64;
    let up = |len: usize, seed: u64, kind: BufKind| be.upload_as(&random(len, seed, 1.0), kind);
    let mut rows: Vec<(String, String, f64, &'static str, f64)> = Vec::new();
    let mut gb = |op: &str, shape: String, ms: f64, bytes: f64| {
        rows.push((op.into(), shape, ms, "GB/s", bytes / ms / 1e6))
    };

    // Ceiling 1: copy bandwidth (read + write) of a large activation buffer.
    let copy_len = (64usize << 20).max(n * s.dim);
    let src = be.alloc(copy_len, BufKind::Act);
    let mut dst = be.alloc(copy_len, BufKind::Act);
    let ms = time_ms(be, iters, || be.copy(&mut dst, &src));
    let copy_gb_s = 2.0 * copy_len as f64 * act / ms / 1e6;
    drop((src, dst));

    // GEMMs at the layer's shapes.
    let x = up(n * s.dim, 1, BufKind::Act);
    let w_ffn = up(s.ffn * s.dim, 2, BufKind::Param);
    let mut y_ffn = be.alloc(n * s.ffn, BufKind::Act);
    let mut gemms: Vec<(String, String, f64, f64)> = Vec::new();
    let ms = time_ms(be, iters, || {
        be.matmul(&mut y_ffn, &x, &w_ffn, n, s.dim, s.ffn)
    });
    gemms.push((
        "matmul (up/gate)".into(),
        format!("{n}x{}x{}", s.dim, s.ffn),
        ms,
        2.0 * (n * s.dim * s.ffn) as f64,
    ));
    let mut dx = be.alloc(n * s.dim, BufKind::Act);
    let ms = time_ms(be, iters, || {
        be.matmul_dx(&mut dx, &y_ffn, &w_ffn, n, s.dim, s.ffn, false)
    });
    gemms.push((
        "matmul_dx (up/gate)".into(),
        format!("{n}x{}x{}", s.dim, s.ffn),
        ms,
        2.0 * (n * s.dim * s.ffn) as f64,
    ));
    let mut dw = be.alloc(s.ffn * s.dim, BufKind::Grad);
    let ms = time_ms(be, iters, || {
        be.matmul_dw(&mut dw, &y_ffn, &x, n, s.dim, s.ffn)
    });
    gemms.push((
        "matmul_dw (up/gate)".into(),
        format!("{n}x{}x{}", s.dim, s.ffn),
        ms,
        2.0 * (n * s.dim * s.ffn) as f64,
    ));
    let w_q = up(qd * s.dim, 3, BufKind::Param);
    let mut q = be.alloc(n * qd, BufKind::Act);
    let ms = time_ms(be, iters, || be.matmul(&mut q, &x, &w_q, n, s.dim, qd));
    gemms.push((
        "matmul (q_proj)".into(),
        format!("{n}x{}x{qd}", s.dim),
        ms,
        2.0 * (n * s.dim * qd) as f64,
    ));
    let w_lm = up(s.vocab * s.dim, 4, BufKind::Param);
    let mut logits = be.alloc(n * s.vocab, BufKind::Act);
    let ms = time_ms(be, iters, || {
        be.matmul(&mut logits, &x, &w_lm, n, s.dim, s.vocab)
    });
    gemms.push((
        "matmul (lm_head)".into(),
        format!("{n}x{}x{}", s.dim, s.vocab),
        ms,
        2.0 * (n * s.dim * s.vocab) as f64,
    ));
    // Ceiling 2: the best GEMM rate measured at these shapes.
    let gemm_tflop_s = gemms.iter().map(|g| g.3 / g.2 / 1e9).fold(0.0, f64::max);
    let mut flops_rows: Vec<(String, String, f64, &'static str, f64)> = gemms
        .into_iter()
        .map(|(op, sh, ms, fl)| (op, sh, ms, "TFLOP/s", fl / ms / 1e9))
        .collect();
    drop((w_ffn, w_q, dw));

    // Bandwidth-bound kernels.
    let shape_nd = format!("{n}x{}", s.dim);
    let w = up(s.dim, 5, BufKind::Param);
    let mut out = be.alloc(n * s.dim, BufKind::Act);
    let mut rstd = be.alloc(n, BufKind::Stat);
    let ms = time_ms(be, iters, || {
        be.rmsnorm(&mut out, &mut rstd, &x, &w, s.dim, 1e-5)
    });
    gb(
        "rmsnorm",
        shape_nd.clone(),
        ms,
        (2 * n * s.dim) as f64 * act + n as f64 * f32b,
    );
    let dout = up(n * s.dim, 6, BufKind::Act);
    let mut dwn = be.alloc(s.dim, BufKind::Grad);
    let ms = time_ms(be, iters, || {
        be.rmsnorm_bwd(&mut dx, &mut dwn, &dout, &x, &w, &rstd, s.dim)
    });
    // Reads dout, x, dx; writes dx.
    gb(
        "rmsnorm_bwd",
        shape_nd.clone(),
        ms,
        (4 * n * s.dim) as f64 * act + n as f64 * f32b,
    );
    let mut cfg: crate::model::ModelConfig = toml::from_str(&format!(
        "dim = {}\nn_layers = 1\nn_heads = {}\nn_kv_heads = {}\nffn_dim = 1\nhead_dim = {}\nmax_seq_len = {}\n",
        s.heads * s.head_dim,
        s.heads,
        s.kv_heads,
        s.head_dim,
        s.seq
    ))
    .expect("bench model config");
    cfg.resolve(1).expect("bench model config");
    let (cos, sin) = cfg.rope_tables();
    let (cos, sin) = (
        be.upload_as(&cos, BufKind::Stat),
        be.upload_as(&sin, BufKind::Stat),
    );
    let positions: Vec<u32> = (0..n).map(|i| (i % s.seq) as u32).collect();
    let ms = time_ms(be, iters, || {
        be.rope(&mut q, &positions, s.heads, s.head_dim, &cos, &sin)
    });
    gb(
        "rope (q)",
        format!("{n}x{}x{}", s.heads, s.head_dim),
        ms,
        (2 * n * qd) as f64 * act,
    );
    let gate = up(n * s.ffn, 7, BufKind::Act);
    let mut h = be.alloc(n * s.ffn, BufKind::Act);
    let ms = time_ms(be, iters, || be.swiglu(&mut h, &gate, &y_ffn));
    gb(
        "swiglu",
        format!("{n}x{}", s.ffn),
        ms,
        (3 * n * s.ffn) as f64 * act,
    );
    let mut dg = be.alloc(n * s.ffn, BufKind::Act);
    let ms = time_ms(be, iters, || {
        be.swiglu_bwd(&mut dg, &mut h, &y_ffn, &gate, &y_ffn)
    });
    gb(
        "swiglu_bwd",
        format!("{n}x{}", s.ffn),
        ms,
        (5 * n * s.ffn) as f64 * act,
    );
    drop((gate, h, dg, y_ffn));
    let table = up(s.vocab * s.dim, 8, BufKind::Param);
    let mut r = Rng::new(9);
    let ids: Vec<u32> = (0..n).map(|_| r.below(s.vocab as u64) as u32).collect();
    let ms = time_ms(be, iters, || be.embedding(&mut out, &table, &ids, s.dim));
    gb(
        "embedding",
        shape_nd.clone(),
        ms,
        (2 * n * s.dim) as f64 * act,
    );
    let mut dtable = be.alloc(s.vocab * s.dim, BufKind::Grad);
    let ms = time_ms(be, iters, || {
        be.embedding_dw(&mut dtable, &dout, &ids, s.dim)
    });
    gb(
        "embedding_dw",
        shape_nd.clone(),
        ms,
        (n * s.dim) as f64 * (act + 2.0 * f32b),
    );
    drop((table, dtable));
    let targets: Vec<u32> = (0..n).map(|_| r.below(s.vocab as u64) as u32).collect();
    let mask = vec![1u8; n];
    let ms = time_ms(be, iters, || {
        be.cross_entropy(&mut logits, &targets, &mask, s.vocab, 1.0 / n as f32);
    });
    gb(
        "cross_entropy (fwd+bwd)",
        format!("{n}x{}", s.vocab),
        ms,
        (2 * n * s.vocab) as f64 * act,
    );
    drop(logits);
    let len = s.ffn * s.dim;
    let mut p = up(len, 10, BufKind::Param);
    let g = up(len, 11, BufKind::Grad);
    let (mut m, mut v) = (be.alloc(len, BufKind::Optim), be.alloc(len, BufKind::Optim));
    let mut step = 0;
    let ms = time_ms(be, iters, || {
        step += 1;
        be.adamw(&mut p, &g, &mut m, &mut v, timing_adamw(step));
    });
    // Reads p, g, m, v and writes p, m, v (fp32), plus the compute copy where it is separate.
    let copy = if par < f32b { par } else { 0.0 };
    gb(
        "adamw",
        format!("{len}"),
        ms,
        len as f64 * (7.0 * f32b + copy),
    );
    let ms = time_ms(be, iters, || {
        be.sum_squares(&g);
    });
    gb(
        "sum_squares (grad norm)",
        format!("{len}"),
        ms,
        len as f64 * f32b,
    );
    drop((p, g, m, v));

    // Attention (causal, one document per row): 4·B·H·T²·D/2 FLOPs forward, 2.5× that backward.
    let a = AttnShape {
        batch: n / s.seq,
        seq: s.seq,
        heads: s.heads,
        kv_heads: s.kv_heads,
        head_dim: s.head_dim,
        causal: true,
    };
    let fwd_flops = 2.0 * (a.batch * s.heads * s.seq * s.seq * s.head_dim) as f64;
    let (ms, bwd_ms) = time_attention(be, a, iters);
    flops_rows.push((
        "attention".into(),
        format!(
            "B{} T{} H{}/{} D{}",
            a.batch, s.seq, s.heads, s.kv_heads, s.head_dim
        ),
        ms,
        "TFLOP/s",
        fwd_flops / ms / 1e9,
    ));
    let ms = bwd_ms;
    flops_rows.push((
        "attention_bwd".into(),
        format!(
            "B{} T{} H{}/{} D{}",
            a.batch, s.seq, s.heads, s.kv_heads, s.head_dim
        ),
        ms,
        "TFLOP/s",
        2.5 * fwd_flops / ms / 1e9,
    ));

    let rows = rows
        .into_iter()
        .chain(flops_rows)
        .map(|(op, shape, ms, unit, achieved)| BenchRow {
            of_ceiling: if unit == "GB/s" {
                achieved / copy_gb_s
            } else {
                achieved / gemm_tflop_s
            },
            op,
            shape,
            ms,
            unit,
            achieved,
        })
        .collect();
    BenchReport {
        backend: be.name(),
        shape: s,
        copy_gb_s,
        gemm_tflop_s,
        rows,
    }
}

/// The report as a markdown table.
pub fn render(r: &BenchReport) -> String {
    let mut out = format!(
        "backend: {}\nceilings: copy {:.1} GB/s (measured), GEMM {:.2} TFLOP/s (best measured GEMM at these shapes)\n\n| op | shape | ms | achieved | of ceiling |\n|---|---|---:|---:|---:|\n",
        r.backend, r.copy_gb_s, r.gemm_tflop_s
    );
    for row in &r.rows {
        out.push_str(&format!(
            "| {} | {} | {:.3} | {:.2} {} | {:.0}% |\n",
            row.op,
            row.shape,
            row.ms,
            row.achieved,
            row.unit,
            row.of_ceiling * 100.0
        ));
    }
    out
}

/// One shape of `kiln bench attention`.
#[derive(Clone, Debug, Serialize)]
pub struct AttnBenchRow {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub causal: bool,
    /// Document lengths of every row (one document when empty).
    pub docs: Vec<usize>,
    pub fwd_ms: f64,
    pub bwd_ms: f64,
    /// Useful FLOPs (allowed query-key pairs only): forward 4·H·D per pair, backward 2.5×.
    pub fwd_tflop_s: f64,
    pub bwd_tflop_s: f64,
    pub total_tflop_s: f64,
}

/// Mixed document lengths filling a row of `seq` tokens: 1/2, 1/4, 1/8 … of the row, the last
/// taking the rest.
pub fn mixed_docs(seq: usize) -> Vec<usize> {
    let mut lens = Vec::new();
    let mut left = seq;
    let mut next = seq / 2;
    while left > 0 {
        let l = next.clamp(1, left);
        lens.push(l);
        left -= l;
        next = (next / 2).max(16);
    }
    lens
}

/// Time attention forward and backward at `tokens` = batch·seq for every sequence length in
/// `seqs`, head dims in `head_dims` (heads = 2048 / head_dim, as many KV heads), causal and not,
/// and causal with mixed-length documents.
pub fn attention_sweep<B: Backend>(
    be: &B,
    tokens: usize,
    seqs: &[usize],
    head_dims: &[usize],
    iters: usize,
) -> Vec<AttnBenchRow> {
    let mut rows = Vec::new();
    for &hd in head_dims {
        for &seq in seqs {
            if seq == 0 || !tokens.is_multiple_of(seq) {
                continue;
            }
            for (causal, docs) in [(true, vec![]), (false, vec![]), (true, mixed_docs(seq))] {
                let heads = (2048 / hd).max(1);
                let a = AttnShape {
                    batch: tokens / seq,
                    seq,
                    heads,
                    kv_heads: heads,
                    head_dim: hd,
                    causal,
                };
                rows.push(attention_case(be, a, &docs, iters));
            }
        }
    }
    rows
}

fn attention_case<B: Backend>(be: &B, a: AttnShape, docs: &[usize], iters: usize) -> AttnBenchRow {
    let n = a.batch * a.seq;
    let (qd, kvd) = (a.heads * a.head_dim, a.kv_heads * a.head_dim);
    let up = |len: usize, seed: u64| be.upload_as(&random(len, seed, 1.0), BufKind::Act);
    let (q, k, v, dout) = (up(n * qd, 1), up(n * kvd, 2), up(n * kvd, 3), up(n * qd, 4));
    let mut ids = Vec::with_capacity(n);
    for _ in 0..a.batch {
        if docs.is_empty() {
            ids.extend(std::iter::repeat_n(0u32, a.seq));
        } else {
            for (d, &l) in docs.iter().enumerate() {
                ids.extend(std::iter::repeat_n(d as u32, l));
            }
        }
    }
    let lens: Vec<usize> = if docs.is_empty() {
        vec![a.seq]
    } else {
        docs.to_vec()
    };
    let pairs: f64 = lens
        .iter()
        .map(|&l| {
            let l = l as f64;
            if a.causal {
                l * (l + 1.0) / 2.0
            } else {
                l * l
            }
        })
        .sum::<f64>()
        * a.batch as f64;
    let fwd_flops = 4.0 * (a.heads * a.head_dim) as f64 * pairs;
    let mut out = be.alloc(n * qd, BufKind::Act);
    let mut lse = be.alloc(a.batch * a.heads * a.seq, BufKind::Stat);
    let fwd_ms = time_ms(be, iters, || {
        be.attention(&mut out, &mut lse, &q, &k, &v, &ids, a)
    });
    let (mut dq, mut dk, mut dv) = (
        be.alloc(n * qd, BufKind::Act),
        be.alloc(n * kvd, BufKind::Act),
        be.alloc(n * kvd, BufKind::Act),
    );
    let bwd_ms = time_ms(be, iters, || {
        be.attention_bwd(
            &mut dq, &mut dk, &mut dv, &dout, &out, &lse, &q, &k, &v, &ids, a,
        )
    });
    AttnBenchRow {
        batch: a.batch,
        seq: a.seq,
        heads: a.heads,
        kv_heads: a.kv_heads,
        head_dim: a.head_dim,
        causal: a.causal,
        docs: docs.to_vec(),
        fwd_ms,
        bwd_ms,
        fwd_tflop_s: fwd_flops / fwd_ms / 1e9,
        bwd_tflop_s: 2.5 * fwd_flops / bwd_ms / 1e9,
        total_tflop_s: 3.5 * fwd_flops / (fwd_ms + bwd_ms) / 1e9,
    }
}

/// `kiln bench attention` as a markdown table.
pub fn render_attention(backend: &str, rows: &[AttnBenchRow]) -> String {
    let mut out = format!(
        "backend: {backend}\n\n| B×T | H×D | mask | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s | fwd+bwd TFLOP/s |\n|---|---|---|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let mask = match (r.causal, r.docs.len()) {
            (true, 0) => "causal".to_string(),
            (false, _) => "none".to_string(),
            (true, n) => format!("causal, {n} docs/row"),
        };
        out.push_str(&format!(
            "| {}×{} | {}×{} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            r.batch,
            r.seq,
            r.heads,
            r.head_dim,
            mask,
            r.fwd_ms,
            r.fwd_tflop_s,
            r.bwd_ms,
            r.bwd_tflop_s,
            r.total_tflop_s
        ));
    }
    out
}

/// One batch size of `kiln bench generate`.
#[derive(Clone, Debug, Serialize)]
pub struct GenBenchRow {
    pub batch: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    /// Whole run: prefill of every prompt and all decode steps.
    pub total_s: f64,
    /// Generated tokens per second over the whole run (what `generate` users see).
    pub tokens_per_s: f64,
    /// Median wall time of one decode step of the full batch (after every prompt is admitted).
    pub decode_step_ms: f64,
    /// Bytes one decode step must read at least: the weights once and the KV cache at the
    /// midpoint of generation.
    pub step_bytes: f64,
    /// decode_step_ms ÷ (step_bytes at the measured copy bandwidth): 1.0 is the memory bound.
    pub of_memory_bound: f64,
}

/// Random weights for `cfg` without drawing one number per parameter: every tensor tiles one
/// block of normal values (enough for a throughput measurement; the text is meaningless).
pub fn tiled_random_weights(cfg: &crate::model::ModelConfig, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    let block: Vec<f32> = (0..(1 << 20) + 7)
        .map(|_| (rng.f64() as f32 * 2.0 - 1.0) * cfg.init_std as f32 * 1.7)
        .collect();
    cfg.params()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.shape.len() == 1 {
                vec![1.0; p.numel()]
            } else {
                block
                    .iter()
                    .copied()
                    .cycle()
                    .skip(i * 977)
                    .take(p.numel())
                    .collect()
            }
        })
        .collect()
}

/// Generated tokens/s of the batched engine with random weights: for each batch size, `batch`
/// random prompts of `prompt_len` tokens, `new_tokens` each (no stop token, so every sequence runs
/// to the limit), continuous batching with every prompt admitted at once.
pub fn generate_sweep<B: GenerationBackend>(
    be: &B,
    cfg: &crate::model::ModelConfig,
    batches: &[usize],
    prompt_len: usize,
    new_tokens: usize,
) -> anyhow::Result<(f64, Vec<GenBenchRow>)> {
    use crate::model::batched::{Engine, GenLimits, Request};
    let copy_gb_s = {
        let len = 64usize << 20;
        let src = be.alloc(len, BufKind::Act);
        let mut dst = be.alloc(len, BufKind::Act);
        let ms = time_ms(be, 5, || be.copy(&mut dst, &src));
        2.0 * len as f64 * be.elem_bytes(BufKind::Act) as f64 / ms / 1e6
    };
    let model = crate::model::Model::for_inference(be, cfg, &tiled_random_weights(cfg, 1));
    let act = be.elem_bytes(BufKind::Act) as f64;
    let weight_bytes = cfg.num_params() as f64 * act;
    let mut rng = Rng::new(2);
    let mut rows = Vec::new();
    for &batch in batches {
        let limits = GenLimits {
            slots: batch,
            context: prompt_len + new_tokens,
            prefill_tokens: (batch * prompt_len).min(16384).max(prompt_len),
            continuous: true,
        };
        let mut engine = Engine::new(be, &model, limits, Vec::new())?;
        for id in 0..batch {
            let prompt = (0..prompt_len)
                .map(|_| (rng.next_u64() % cfg.vocab_size as u64) as u32)
                .collect();
            engine.submit(Request {
                id: id as u64,
                prompt,
                max_new: new_tokens,
                sampling: Default::default(),
            })?;
        }
        let start = std::time::Instant::now();
        let mut steps = Vec::new();
        while !engine.is_idle() {
            // A pure decode step: nobody waits to be admitted and the whole batch runs.
            let decode_only = engine.pending() == engine.active() && engine.active() == batch;
            let t = std::time::Instant::now();
            engine.step();
            be.synchronize();
            if decode_only {
                steps.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let total_s = start.elapsed().as_secs_f64();
        steps.sort_by(f64::total_cmp);
        let decode_step_ms = steps.get(steps.len() / 2).copied().unwrap_or(f64::NAN);
        let kv_per_token = 2.0 * (cfg.n_layers * cfg.n_kv_heads * cfg.head_dim) as f64 * act;
        let step_bytes =
            weight_bytes + batch as f64 * (prompt_len + new_tokens / 2) as f64 * kv_per_token;
        rows.push(GenBenchRow {
            batch,
            prompt_len,
            new_tokens,
            total_s,
            tokens_per_s: (batch * new_tokens) as f64 / total_s,
            decode_step_ms,
            step_bytes,
            of_memory_bound: decode_step_ms / (step_bytes / copy_gb_s / 1e6),
        });
    }
    Ok((copy_gb_s, rows))
}

/// `kiln bench generate` as a markdown table.
pub fn render_generate(backend: &str, copy_gb_s: f64, rows: &[GenBenchRow]) -> String {
    let mut out = format!(
        "backend: {backend}\nceiling: copy {copy_gb_s:.1} GB/s (measured); a decode step must read the weights once and the KV cache\n\n| batch | prompt | new | total s | generated tokens/s | decode step ms | bytes/step | step ÷ memory bound |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.1} | {:.3} | {:.2} GB | {:.2}× |\n",
            r.batch,
            r.prompt_len,
            r.new_tokens,
            r.total_s,
            r.tokens_per_s,
            r.decode_step_ms,
            r.step_bytes / 1e9,
            r.of_memory_bound
        ));
    }
    out
}
