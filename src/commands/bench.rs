//! `kiln bench`: every backend operation at a model's shape, the attention sweep, and batched
//! generation, against measured ceilings.

use anyhow::{bail, Result};

use super::device::{self, DeviceBackend, OnDevice, Placement};
use crate::bench::step::{self, StepModel};
use crate::bench::{
    attention_sweep, generate_model, generate_sweep, render, render_attention, render_generate,
    AttnBenchRow, BenchReport, BenchShape, GenBenchRow,
};
use crate::cli::{BenchArgs, BenchWhat, Device};
use crate::model::presets::Preset;
use crate::model::ModelConfig;

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.what == BenchWhat::Attention {
        return bench_attention(a);
    }
    if a.what == BenchWhat::Generate {
        return bench_generate(a);
    }
    if a.what == BenchWhat::Step {
        return bench_step(a);
    }
    let preset = a.preset.unwrap_or(if a.device == Device::Cuda {
        Preset::Llama3_8b
    } else {
        Preset::Tiny
    });
    let mut shape = BenchShape::of_preset(preset)?;
    if let Some(n) = a.tokens {
        if n == 0 || n % shape.seq != 0 {
            bail!(
                "--tokens {n}: must be a positive multiple of the sequence length {}",
                shape.seq
            );
        }
        shape.tokens = n;
    }
    let report = device::on_device(
        Placement::new(a.device),
        Ops {
            shape,
            iters: a.iters,
        },
    )?;
    println!("{}", render(&report));
    if let Some(path) = a.json {
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(())
}

fn bench_step(a: BenchArgs) -> Result<()> {
    let model = a.model.unwrap_or(StepModel::Llama124m);
    let cfg = model.config()?;
    let (tokens, seq) = model.default_tokens(a.device == Device::Cuda);
    let seq = a.seq.unwrap_or(seq);
    let tokens = a.tokens.unwrap_or(tokens.max(seq));
    let name = format!("{model:?}");
    eprintln!(
        "step-time model: {name}, {:.1} M parameters, {tokens} tokens of T {seq}, {} timed repetitions per operation",
        cfg.num_params() as f64 / 1e6,
        a.iters
    );
    let report = device::on_device(
        Placement::new(a.device),
        Step {
            cfg: &cfg,
            name,
            tokens,
            seq,
            head_chunk: a.head_chunk,
            iters: a.iters,
        },
    )?;
    println!("{}", step::render(&report));
    if let Some(path) = a.json {
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(())
}

struct Step<'a> {
    cfg: &'a ModelConfig,
    name: String,
    tokens: usize,
    seq: usize,
    head_chunk: usize,
    iters: usize,
}

impl OnDevice for Step<'_> {
    type Out = step::StepReport;
    fn run<B: DeviceBackend>(self, be: &B) -> Result<step::StepReport> {
        step::run(
            be,
            self.cfg,
            &self.name,
            self.tokens,
            self.seq,
            self.head_chunk,
            self.iters,
        )
    }
}

fn bench_generate(a: BenchArgs) -> Result<()> {
    let preset = a.preset.unwrap_or(if a.device == Device::Cuda {
        Preset::Mistral7b
    } else {
        Preset::Tiny
    });
    let mcfg = generate_model(preset)?;
    let batches = if a.batches.is_empty() {
        vec![1, 32, 128]
    } else {
        a.batches.clone()
    };
    if batches.contains(&0) || a.prompt_len == 0 || a.new_tokens == 0 {
        bail!("--batches, --prompt-len and --new-tokens must be positive");
    }
    if a.prompt_len + a.new_tokens > mcfg.max_seq_len {
        bail!(
            "--prompt-len {} + --new-tokens {} exceeds the model's {} positions",
            a.prompt_len,
            a.new_tokens,
            mcfg.max_seq_len
        );
    }
    eprintln!(
        "model: {:?} shape, {:.2} B parameters, random weights",
        preset,
        mcfg.num_params() as f64 / 1e9
    );
    let work = Generate {
        mcfg: &mcfg,
        batches: &batches,
        prompt_len: a.prompt_len,
        new_tokens: a.new_tokens,
    };
    let (backend, copy, rows) = device::on_device(Placement::new(a.device), work)?;
    println!("{}", render_generate(&backend, copy, &rows));
    if let Some(path) = a.json {
        let v = serde_json::json!({ "backend": backend, "copy_gb_s": copy, "rows": rows });
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}

fn bench_attention(a: BenchArgs) -> Result<()> {
    let tokens = a.tokens.unwrap_or(16384);
    let seqs = if a.seqs.is_empty() {
        vec![512, 1024, 2048, 4096, 8192, 16384]
    } else {
        a.seqs.clone()
    };
    let head_dims = if a.head_dims.is_empty() {
        vec![64, 128]
    } else {
        a.head_dims.clone()
    };
    if let Some(s) = seqs.iter().find(|&&s| s == 0 || !tokens.is_multiple_of(s)) {
        bail!("--seqs: {s} does not divide the token count {tokens}");
    }
    if let Some(d) = head_dims.iter().find(|&&d| d == 0 || 2048 % d != 0) {
        bail!("--head-dims: {d} does not divide the width 2048");
    }
    let work = Attention {
        tokens,
        seqs: &seqs,
        head_dims: &head_dims,
        iters: a.iters,
    };
    let (backend, rows) = device::on_device(Placement::new(a.device), work)?;
    println!("{}", render_attention(&backend, &rows));
    if let Some(path) = a.json {
        let v = serde_json::json!({ "backend": backend, "rows": rows });
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}

/// Every operation at one shape.
struct Ops {
    shape: BenchShape,
    iters: usize,
}

impl OnDevice for Ops {
    type Out = BenchReport;
    fn run<B: DeviceBackend>(self, be: &B) -> Result<BenchReport> {
        Ok(crate::bench::run(be, self.shape, self.iters))
    }
}

/// Batched generation over batch sizes: (backend, copy GB/s, rows).
struct Generate<'a> {
    mcfg: &'a ModelConfig,
    batches: &'a [usize],
    prompt_len: usize,
    new_tokens: usize,
}

impl OnDevice for Generate<'_> {
    type Out = (String, f64, Vec<GenBenchRow>);
    fn run<B: DeviceBackend>(self, be: &B) -> Result<Self::Out> {
        let (copy, rows) = generate_sweep(
            be,
            self.mcfg,
            self.batches,
            self.prompt_len,
            self.new_tokens,
        )?;
        Ok((be.name(), copy, rows))
    }
}

/// The attention sweep over sequence lengths and head dims: (backend, rows).
struct Attention<'a> {
    tokens: usize,
    seqs: &'a [usize],
    head_dims: &'a [usize],
    iters: usize,
}

impl OnDevice for Attention<'_> {
    type Out = (String, Vec<AttnBenchRow>);
    fn run<B: DeviceBackend>(self, be: &B) -> Result<Self::Out> {
        let rows = attention_sweep(be, self.tokens, self.seqs, self.head_dims, self.iters);
        Ok((be.name(), rows))
    }
}
