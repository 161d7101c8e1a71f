//! `kiln eval` (task scores and held-out loss of a checkpoint) and `kiln generate`.

use std::time::Instant;

use anyhow::{bail, Result};

use crate::backend::cpu::CpuBackend;
use crate::cli::{EvalArgs, GenerateArgs};
use crate::model::generate::Sampling;
use crate::model::Model;
use crate::train::setup::{open_model, OpenedModel};

pub fn eval(a: EvalArgs) -> Result<()> {
    if a.tasks.is_empty() && a.data.is_none() {
        bail!("nothing to evaluate: give --tasks FILE... and/or --data GLOB");
    }
    let c = open_model(&a.checkpoint)?;
    let be = CpuBackend::<f32>::new();
    let model = Model::from_host(&be, &c.mcfg, &c.params);
    eprintln!("evaluating {}", c.id);
    let mut results = Vec::new();
    for path in &a.tasks {
        let items = crate::eval::read_tasks(path)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let t = Instant::now();
        let s = crate::eval::evaluate(
            &be,
            &model,
            &c.tok,
            &name,
            &items,
            a.batch,
            a.max_new_tokens,
        )?;
        eprintln!(
            "{name}: {} items in {:.1}s",
            s.items,
            t.elapsed().as_secs_f64()
        );
        results.push(s);
    }
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    println!("| task | items | acc (mean/token) | acc (per byte) | acc (sum) | exact match | F1 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.task,
            r.items,
            pct(r.acc_mean_token),
            pct(r.acc_per_byte),
            pct(r.acc_sum),
            pct(r.exact_match),
            pct(r.f1)
        );
    }
    let mut heldout = None;
    if let Some(glob) = &a.data {
        let Some(seq_len) = a.seq_len.or(c.seq_len) else {
            bail!(
                "{}: a Hugging Face directory records no sequence length: give --seq-len for --data",
                a.checkpoint.display()
            );
        };
        let (loss, ppl) =
            crate::eval::heldout_loss(&be, &model, &c.tok, glob, a.batch, seq_len, a.data_batches)?;
        println!("held-out loss {loss:.4}, perplexity {ppl:.2} ({glob})");
        heldout = Some(serde_json::json!({ "data": glob, "loss": loss, "perplexity": ppl }));
    }
    if let Some(path) = a.json {
        let v = serde_json::json!({ "model": c.id, "tasks": results, "heldout": heldout });
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let OpenedModel {
        tok, mcfg, params, ..
    } = open_model(&a.checkpoint)?;
    let be = CpuBackend::<f32>::new();
    let model = Model::from_host(&be, &mcfg, &params);
    let stop: Vec<u32> = tok.eos().into_iter().collect();
    for (i, prompt) in a.prompt.iter().enumerate() {
        let mut ids: Vec<u32> = tok.bos().into_iter().collect();
        tok.encode_into(prompt, &mut ids)?;
        let sampling = Sampling {
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed + i as u64,
        };
        let out = model.generate(&be, &ids, a.max_new_tokens, &stop, sampling);
        println!("{}{}", prompt, tok.decode(&out, true)?);
    }
    Ok(())
}
