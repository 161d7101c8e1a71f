//! The step-time model (`kiln bench step`): every operation of one training step of a Llama at
//! its shapes — how many times the step calls it, its measured time, and its time at the device's
//! measured ceilings (FLOPs ÷ the best measured GEMM rate, bytes ÷ the measured copy bandwidth) —
//! beside a measured whole step, so the gap per operation, and what no operation accounts for
//! (launches, host stalls, the small operations not listed), are visible.
//!
//! The operations and their counts follow `Model::forward`/`backward` without recomputation: per
//! layer two RMSNorms, the q/k/v/o and gate/up/down projections (forward, input gradient, weight
//! gradient), RoPE on q and k, attention, SwiGLU; once per step the embedding, the final norm, the
//! head, cross-entropy, the gradient norm and AdamW over every parameter. With a chunked head
//! (`--head-chunk R`, as `train.head_chunk`) the head's three GEMMs and cross-entropy run once per
//! chunk of rows, at the chunk's shape, and the measured step is the chunked one.

use std::collections::HashMap;

use anyhow::{bail, Result};
use serde::Serialize;

use super::{random, time_attention, time_ms, timing_adamw};
use crate::backend::{AttnShape, Backend, BufKind};
use crate::model::{head_rows, Model, ModelConfig, Recompute};
use crate::rng::Rng;

/// The models the step-time model knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StepModel {
    /// The embedded default's model (4 layers, d 128): seconds on a CPU.
    Tiny,
    /// A GPT-2-small-sized Llama: 12 layers, d 768, 12 heads, SwiGLU 2048, GPT-2's 50,257-token
    /// vocabulary, tied embeddings (124M parameters).
    #[value(name = "124m")]
    Llama124m,
    /// Llama-3.2-1B's shape: 16 layers, d 2048, 32 heads / 8 KV heads, SwiGLU 8192, 128,256-token
    /// vocabulary, tied embeddings (1.24B parameters).
    #[value(name = "1b")]
    Llama1b,
}

impl StepModel {
    pub fn config(self) -> Result<ModelConfig> {
        let (text, vocab) = match self {
            StepModel::Tiny => (
                "dim = 128\nn_layers = 4\nn_heads = 4\nn_kv_heads = 2\nffn_dim = 352\nmax_seq_len = 4096\ntie_embeddings = true\n",
                2048,
            ),
            StepModel::Llama124m => (
                "dim = 768\nn_layers = 12\nn_heads = 12\nn_kv_heads = 12\nffn_dim = 2048\nmax_seq_len = 4096\ntie_embeddings = true\n",
                50257,
            ),
            StepModel::Llama1b => (
                "dim = 2048\nn_layers = 16\nn_heads = 32\nn_kv_heads = 8\nffn_dim = 8192\nmax_seq_len = 8192\nrope_theta = 500000.0\ntie_embeddings = true\n",
                128256,
            ),
        };
        let mut m: ModelConfig = toml::from_str(text)?;
        m.resolve(vocab)?;
        Ok(m)
    }

    /// Tokens per step (B·T) and the sequence length T a step uses by default on a device.
    pub fn default_tokens(self, gpu: bool) -> (usize, usize) {
        match (self, gpu) {
            (StepModel::Tiny, _) => (4096, 256),
            (_, false) => (1024, 512),
            (_, true) => (16384, 2048),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StepRow {
    pub op: String,
    pub shape: String,
    /// Calls per training step.
    pub calls: usize,
    /// "FLOP" or "byte": what `work` counts (per call).
    pub unit: &'static str,
    pub work: f64,
    /// Measured milliseconds per call (median).
    pub ms: f64,
    /// Milliseconds per call at the measured ceiling.
    pub ideal_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub backend: String,
    pub model: String,
    pub params: usize,
    pub tokens: usize,
    pub seq: usize,
    /// Rows of the output projection and loss computed at once (`tokens` unless chunked).
    pub head_rows: usize,
    pub copy_gb_s: f64,
    pub gemm_tflop_s: f64,
    pub rows: Vec<StepRow>,
    /// A whole measured step: forward, loss, backward, gradient norm, AdamW (median).
    pub step_ms: f64,
}

impl StepReport {
    /// Σ calls × measured time over the listed operations.
    pub fn ops_ms(&self) -> f64 {
        self.rows.iter().map(|r| r.calls as f64 * r.ms).sum()
    }

    /// Σ calls × time at the ceilings.
    pub fn ideal_ms(&self) -> f64 {
        self.rows.iter().map(|r| r.calls as f64 * r.ideal_ms).sum()
    }
}

/// Measure every operation of a step of `cfg` at `tokens` = B·T tokens of `seq`, and a whole step,
/// the head `head_chunk` rows at a time (0: all at once; as `train.head_chunk`).
pub fn run<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    name: &str,
    tokens: usize,
    seq: usize,
    head_chunk: usize,
    iters: usize,
) -> Result<StepReport> {
    if seq == 0 || tokens == 0 || !tokens.is_multiple_of(seq) || seq > cfg.max_seq_len {
        bail!(
            "--tokens {tokens} must be a positive multiple of the sequence length {seq}, which may not pass the model's {} positions",
            cfg.max_seq_len
        );
    }
    let (n, d, f, v, l) = (tokens, cfg.dim, cfg.ffn_dim, cfg.vocab_size, cfg.n_layers);
    let (hq, hk, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    let (qd, kvd) = (hq * hd, hk * hd);
    let hr = head_rows(n, head_chunk);
    let act = be.elem_bytes(BufKind::Act) as f64;
    let par = be.elem_bytes(BufKind::Param) as f64;
    let f32b = be.elem_bytes(BufKind::Grad) as f64;
    let up = |len: usize, seed: u64, kind: BufKind| be.upload_as(&random(len, seed, 1.0), kind);

    // Ceiling: copy bandwidth of a large activation buffer (read + write).
    let copy_len = (64usize << 20).max(n * d);
    let src = be.alloc(copy_len, BufKind::Act);
    let mut dst = be.alloc(copy_len, BufKind::Act);
    let ms = time_ms(be, iters, || be.copy(&mut dst, &src));
    let copy_gb_s = 2.0 * copy_len as f64 * act / ms / 1e6;
    drop((src, dst));

    // (op, shape, calls, unit, work per call, measured ms per call)
    let mut rows: Vec<(String, String, usize, &'static str, f64, f64)> = Vec::new();

    // Projections: forward, input gradient and weight gradient, each distinct shape timed once.
    // (name, rows, in, out, calls): the head runs once per chunk of rows.
    let projections = [
        ("q_proj", n, d, qd, l),
        ("k_proj", n, d, kvd, l),
        ("v_proj", n, d, kvd, l),
        ("o_proj", n, qd, d, l),
        ("gate_proj", n, d, f, l),
        ("up_proj", n, d, f, l),
        ("down_proj", n, f, d, l),
        ("lm_head", hr, d, v, n / hr),
    ];
    let mut timed: HashMap<(usize, usize, usize), [f64; 3]> = HashMap::new();
    for &(name, m, k, out, calls) in &projections {
        let t = match timed.get(&(m, k, out)) {
            Some(t) => *t,
            None => {
                let x = up(m * k, 1, BufKind::Act);
                let w = up(out * k, 2, BufKind::Param);
                let mut y = be.alloc(m * out, BufKind::Act);
                let fwd = time_ms(be, iters, || be.matmul(&mut y, &x, &w, m, k, out));
                let mut dx = be.alloc(m * k, BufKind::Act);
                let dxm = time_ms(be, iters, || {
                    be.matmul_dx(&mut dx, &y, &w, m, k, out, false)
                });
                let mut dw = be.alloc(out * k, BufKind::Grad);
                let dwm = time_ms(be, iters, || be.matmul_dw(&mut dw, &y, &x, m, k, out));
                let t = [fwd, dxm, dwm];
                timed.insert((m, k, out), t);
                t
            }
        };
        let flops = 2.0 * (m * k * out) as f64;
        let shape = format!("{m}x{k}x{out}");
        for (pass, ms) in ["", " dx", " dw"].iter().zip(t) {
            rows.push((
                format!("matmul{pass} ({name})"),
                shape.clone(),
                calls,
                "FLOP",
                flops,
                ms,
            ));
        }
    }
    let gemm_tflop_s = rows.iter().map(|r| r.4 / r.5 / 1e9).fold(0.0, f64::max);

    // Attention, causal, one document per row: 2·B·H·T²·D FLOPs forward (the causal half of
    // QKᵀ and PV), 2.5× that backward.
    let a = AttnShape {
        batch: n / seq,
        seq,
        heads: hq,
        kv_heads: hk,
        head_dim: hd,
        causal: true,
    };
    let fwd_flops = 2.0 * (a.batch * hq * seq * seq * hd) as f64;
    let shape = format!("B{} T{seq} H{hq}/{hk} D{hd}", a.batch);
    let (fwd, bwd) = time_attention(be, a, iters);
    rows.push(("attention".into(), shape.clone(), l, "FLOP", fwd_flops, fwd));
    rows.push((
        "attention_bwd".into(),
        shape,
        l,
        "FLOP",
        2.5 * fwd_flops,
        bwd,
    ));

    // Memory-bound operations: bytes read and written once, at the backend's widths.
    let x = up(n * d, 7, BufKind::Act);
    let w = up(d, 8, BufKind::Param);
    let mut out = be.alloc(n * d, BufKind::Act);
    let mut rstd = be.alloc(n, BufKind::Stat);
    let nd = format!("{n}x{d}");
    let ms = time_ms(be, iters, || {
        be.rmsnorm(&mut out, &mut rstd, &x, &w, d, 1e-5)
    });
    let norms = 2 * l + 1;
    let bytes = (2 * n * d) as f64 * act + n as f64 * f32b;
    rows.push(("rmsnorm".into(), nd.clone(), norms, "byte", bytes, ms));
    let dout = up(n * d, 9, BufKind::Act);
    let mut dx = be.alloc(n * d, BufKind::Act);
    let mut dwn = be.alloc(d, BufKind::Grad);
    let ms = time_ms(be, iters, || {
        be.rmsnorm_bwd(&mut dx, &mut dwn, &dout, &x, &w, &rstd, d)
    });
    let bytes = (4 * n * d) as f64 * act + n as f64 * f32b;
    rows.push(("rmsnorm_bwd".into(), nd.clone(), norms, "byte", bytes, ms));
    let (cos, sin) = cfg.rope_tables();
    let (cos, sin) = (
        be.upload_as(&cos, BufKind::Stat),
        be.upload_as(&sin, BufKind::Stat),
    );
    let positions: Vec<u32> = (0..n).map(|i| (i % seq) as u32).collect();
    let (mut q, mut dk) = (up(n * qd, 3, BufKind::Act), up(n * kvd, 4, BufKind::Act));
    for (what, heads) in [("q", hq), ("k", hk)] {
        let buf = if what == "q" { &mut q } else { &mut dk };
        let width = heads * hd;
        let shape = format!("{n}x{heads}x{hd}");
        let bytes = (2 * n * width) as f64 * act;
        let ms = time_ms(be, iters, || {
            be.rope(buf, &positions, heads, hd, &cos, &sin)
        });
        rows.push((
            format!("rope ({what})"),
            shape.clone(),
            l,
            "byte",
            bytes,
            ms,
        ));
        let ms = time_ms(be, iters, || {
            be.rope_bwd(buf, &positions, heads, hd, &cos, &sin)
        });
        rows.push((format!("rope_bwd ({what})"), shape, l, "byte", bytes, ms));
    }
    drop((q, dk));
    let gate = up(n * f, 10, BufKind::Act);
    let upv = up(n * f, 11, BufKind::Act);
    let mut h = be.alloc(n * f, BufKind::Act);
    let nf = format!("{n}x{f}");
    let ms = time_ms(be, iters, || be.swiglu(&mut h, &gate, &upv));
    rows.push((
        "swiglu".into(),
        nf.clone(),
        l,
        "byte",
        (3 * n * f) as f64 * act,
        ms,
    ));
    let mut dg = be.alloc(n * f, BufKind::Act);
    let ms = time_ms(be, iters, || {
        be.swiglu_bwd(&mut dg, &mut h, &upv, &gate, &upv)
    });
    rows.push((
        "swiglu_bwd".into(),
        nf,
        l,
        "byte",
        (5 * n * f) as f64 * act,
        ms,
    ));
    drop((gate, upv, h, dg));
    let table = up(v * d, 12, BufKind::Param);
    let mut r = Rng::new(13);
    let ids: Vec<u32> = (0..n).map(|_| r.below(v as u64) as u32).collect();
    let ms = time_ms(be, iters, || be.embedding(&mut out, &table, &ids, d));
    rows.push((
        "embedding".into(),
        nd.clone(),
        1,
        "byte",
        (2 * n * d) as f64 * act,
        ms,
    ));
    let mut dtable = be.alloc(v * d, BufKind::Grad);
    let ms = time_ms(be, iters, || be.embedding_dw(&mut dtable, &dout, &ids, d));
    rows.push((
        "embedding_dw".into(),
        nd,
        1,
        "byte",
        (n * d) as f64 * (act + 2.0 * f32b),
        ms,
    ));
    drop((table, dtable, x, w, out, rstd, dout, dx, dwn));
    // Cross-entropy over one chunk of the head's rows (all of them unchunked), its losses left
    // on the device as training leaves them.
    let mut logits = up(hr * v, 14, BufKind::Act);
    let targets: Vec<u32> = (0..n).map(|_| r.below(v as u64) as u32).collect();
    let mask = vec![1u8; n];
    let mut losses = be.alloc(n, BufKind::Stat);
    let ms = time_ms(be, iters, || {
        be.cross_entropy_rows(
            &mut logits,
            &targets,
            &mask,
            0,
            v,
            1.0 / n as f32,
            &mut losses,
        );
    });
    rows.push((
        "cross_entropy (fwd+bwd)".into(),
        format!("{hr}x{v}"),
        n / hr,
        "byte",
        (2 * hr * v) as f64 * act,
        ms,
    ));
    drop((logits, losses));
    // The optimizer over every parameter at once (the step makes one call per tensor).
    let params = cfg.num_params();
    let mut p = up(params, 15, BufKind::Param);
    let g = up(params, 16, BufKind::Grad);
    let (mut m, mut vm) = (
        be.alloc(params, BufKind::Optim),
        be.alloc(params, BufKind::Optim),
    );
    let ms = time_ms(be, iters, || {
        be.sum_squares_many(&[&g]);
    });
    rows.push((
        "sum_squares (grad norm)".into(),
        format!("{params}"),
        1,
        "byte",
        params as f64 * f32b,
        ms,
    ));
    let mut step = 0;
    let ms = time_ms(be, iters, || {
        step += 1;
        be.adamw(&mut p, &g, &mut m, &mut vm, timing_adamw(step));
    });
    let copy = if par < f32b { par } else { 0.0 };
    rows.push((
        "adamw".into(),
        format!("{params}"),
        1,
        "byte",
        params as f64 * (7.0 * f32b + copy),
        ms,
    ));
    drop((p, g, m, vm));

    // A whole step of the model itself.
    let mut model = Model::new(be, cfg, 1);
    let mut ws = model.workspace_with(be, n / seq, seq, Recompute::None, head_chunk);
    let inputs: Vec<u32> = (0..n).map(|_| r.below(v as u64) as u32).collect();
    let doc_ids = vec![0u32; n];
    let (mut m, mut vm): (Vec<B::Buf>, Vec<B::Buf>) = model
        .grads
        .iter()
        .map(|g| {
            let len = be.buf_len(g);
            (be.alloc(len, BufKind::Optim), be.alloc(len, BufKind::Optim))
        })
        .unzip();
    let mut step = 0;
    let step_ms = time_ms(be, iters, || {
        step += 1;
        model.zero_grads(be);
        model.forward(be, &mut ws, &inputs, &doc_ids);
        model.stage_loss(be, &mut ws, &targets, &mask, 1.0 / n as f32);
        model.backward(be, &mut ws, &inputs, &doc_ids);
        let _loss = ws.take_loss(be);
        let grads: Vec<&B::Buf> = model.grads.iter().collect();
        let _norm = be.sum_squares_many(&grads).sqrt();
        model.adamw_step(be, &mut m, &mut vm, timing_adamw(step));
    });

    let rows = rows
        .into_iter()
        .map(|(op, shape, calls, unit, work, ms)| StepRow {
            ideal_ms: if unit == "FLOP" {
                work / (gemm_tflop_s * 1e9)
            } else {
                work / (copy_gb_s * 1e6)
            },
            op,
            shape,
            calls,
            unit,
            work,
            ms,
        })
        .collect();
    Ok(StepReport {
        backend: be.name(),
        model: name.to_string(),
        params,
        tokens: n,
        seq,
        head_rows: hr,
        copy_gb_s,
        gemm_tflop_s,
        rows,
        step_ms,
    })
}

/// The report as markdown: one row per operation, then the totals against the measured step.
pub fn render(r: &StepReport) -> String {
    let head = if r.head_rows < r.tokens {
        format!("; head: {} rows per chunk", r.head_rows)
    } else {
        String::new()
    };
    let mut s = format!(
        "backend: {}\nmodel: {} ({:.1} M parameters), {} tokens per step (T {}){head}\nceilings: copy {:.1} GB/s (measured), GEMM {:.2} TFLOP/s (best measured GEMM of the step)\n\n| op | shape | calls | ms/call | ms/call at ceiling | step ms | step ms at ceiling | gap ms | of ceiling |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
        r.backend,
        r.model,
        r.params as f64 / 1e6,
        r.tokens,
        r.seq,
        r.copy_gb_s,
        r.gemm_tflop_s
    );
    for row in &r.rows {
        let (t, i) = (row.calls as f64 * row.ms, row.calls as f64 * row.ideal_ms);
        s.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} | {:.0}% |\n",
            row.op,
            row.shape,
            row.calls,
            row.ms,
            row.ideal_ms,
            t,
            i,
            t - i,
            100.0 * i / t.max(1e-12)
        ));
    }
    let (ops, ideal) = (r.ops_ms(), r.ideal_ms());
    s.push_str(&format!(
        "\nlisted operations: {ops:.1} ms measured, {ideal:.1} ms at the ceilings ({:.0}%)\nmeasured step: {:.1} ms ({:.0} tokens/s); not in the listed operations: {:.1} ms ({:.0}% of the step: launches, host work and stalls, residual adds and the small operations)\n",
        100.0 * ideal / ops.max(1e-12),
        r.step_ms,
        r.tokens as f64 / (r.step_ms / 1e3),
        r.step_ms - ops,
        100.0 * (r.step_ms - ops) / r.step_ms.max(1e-12)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    #[test]
    fn the_step_model_lists_every_operation_of_a_step_and_a_measured_step() {
        let be = CpuBackend::<f32>::new();
        let cfg = StepModel::Tiny.config().unwrap();
        let r = run(&be, &cfg, "tiny", 512, 128, 0, 1).unwrap();
        // Seven projections and the head, three passes each; attention both ways; norms, RoPE,
        // SwiGLU, embedding, cross-entropy, the norm and AdamW.
        assert_eq!(r.rows.len(), 8 * 3 + 2 + 2 + 4 + 2 + 2 + 1 + 2);
        let calls = |op: &str| r.rows.iter().find(|x| x.op == op).unwrap().calls;
        assert_eq!(calls("matmul (q_proj)"), cfg.n_layers);
        assert_eq!(calls("matmul dw (lm_head)"), 1);
        assert_eq!(calls("rmsnorm"), 2 * cfg.n_layers + 1);
        // FLOPs of the projections: 6 × N × (parameters in the projections and head).
        let proj: f64 = r
            .rows
            .iter()
            .filter(|x| x.op.starts_with("matmul"))
            .map(|x| x.calls as f64 * x.work)
            .sum();
        let per_layer = cfg.dim
            * (2 * cfg.n_heads * cfg.head_dim + 2 * cfg.n_kv_heads * cfg.head_dim)
            + 3 * cfg.dim * cfg.ffn_dim;
        let weights = cfg.n_layers * per_layer + cfg.vocab_size * cfg.dim;
        assert_eq!(proj, 6.0 * 512.0 * weights as f64);
        for row in &r.rows {
            assert!(row.ms > 0.0 && row.ideal_ms > 0.0, "{row:?}");
        }
        assert!(r.step_ms > 0.0 && r.ops_ms() > 0.0);
        let text = render(&r);
        assert!(text.contains("| matmul dx (down_proj) |"), "{text}");
        assert!(text.contains("measured step:"), "{text}");
    }

    #[test]
    fn a_chunked_head_runs_its_gemms_and_loss_once_per_chunk_at_the_same_flops() {
        let be = CpuBackend::<f32>::new();
        let cfg = StepModel::Tiny.config().unwrap();
        let (whole, chunked) = (
            run(&be, &cfg, "tiny", 512, 128, 0, 1).unwrap(),
            run(&be, &cfg, "tiny", 512, 128, 100, 1).unwrap(),
        );
        // 100 is not a divisor of 512: the largest one below it, 64, as training picks.
        assert_eq!((whole.head_rows, chunked.head_rows), (512, 64));
        let row = |r: &StepReport, op: &str| r.rows.iter().find(|x| x.op == op).unwrap().clone();
        for op in [
            "matmul (lm_head)",
            "matmul dx (lm_head)",
            "matmul dw (lm_head)",
        ] {
            let (a, b) = (row(&whole, op), row(&chunked, op));
            assert_eq!((a.calls, b.calls), (1, 8), "{op}");
            assert_eq!(b.shape, format!("64x{}x{}", cfg.dim, cfg.vocab_size));
            assert_eq!(a.calls as f64 * a.work, b.calls as f64 * b.work, "{op}");
        }
        let (a, b) = (
            row(&whole, "cross_entropy (fwd+bwd)"),
            row(&chunked, "cross_entropy (fwd+bwd)"),
        );
        assert_eq!((a.calls, b.calls), (1, 8));
        assert_eq!(a.work, 8.0 * b.work);
        assert!(chunked.step_ms > 0.0);
        assert!(render(&chunked).contains("head: 64 rows per chunk"));
    }
}
