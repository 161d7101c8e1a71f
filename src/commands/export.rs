//! `kiln export` (a checkpoint to a Hugging Face directory) and `kiln convert` (a Hugging Face
//! directory through kiln's reader and writer).

use anyhow::Result;

use crate::cli::{ConvertArgs, ExportArgs, ExportDtype};
use crate::train::setup::open_checkpoint;

pub fn export(a: ExportArgs) -> Result<()> {
    let c = open_checkpoint(&a.checkpoint)?;
    let opts = crate::hf::ExportOptions {
        bf16: a.dtype == ExportDtype::Bf16,
        shard_bytes: a.shard_size,
        tokenizer: Some(c.cfg.data.tokenizer.clone()),
        bos_token_id: c.tok.bos(),
        eos_token_id: c.tok.eos(),
        source: crate::train::setup::init_from_hf(&c.mcfg)?
            .filter(|d| d.join("config.json").exists()),
    };
    let tensors = crate::hf::named_tensors(&c.mcfg, c.params);
    crate::hf::export(&a.to_hf, &c.mcfg, &tensors, &opts)?;
    eprintln!(
        "exported {} (step {}) to {}",
        c.dir.display(),
        c.step,
        a.to_hf.display()
    );
    Ok(())
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    let (mcfg, host) = crate::hf::load(&a.from_hf, None)?;
    let tokenizer = Some(a.from_hf.join("tokenizer.json")).filter(|p| p.exists());
    let opts = crate::hf::ExportOptions {
        bf16: a.dtype == ExportDtype::Bf16,
        shard_bytes: a.shard_size,
        tokenizer,
        // The source's token ids and every other field it has are kept.
        bos_token_id: None,
        eos_token_id: None,
        source: Some(a.from_hf.clone()),
    };
    crate::hf::export(
        &a.to_hf,
        &mcfg,
        &crate::hf::named_tensors(&mcfg, host),
        &opts,
    )?;
    eprintln!(
        "{}: {} layers, d={}, {} heads ({} kv), vocab {}: checked and written to {}",
        a.from_hf.display(),
        mcfg.n_layers,
        mcfg.dim,
        mcfg.n_heads,
        mcfg.n_kv_heads,
        mcfg.vocab_size,
        a.to_hf.display()
    );
    Ok(())
}
