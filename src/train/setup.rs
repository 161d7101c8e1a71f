//! What a run resolves before it starts: the model's shape (from `[model]`, or from a Hugging Face
//! directory with `init_from = "hf:PATH"`, checked against the tokenizer and the data) and the
//! loader's options for one rank. Commands that open a run's checkpoints (`eval`, `export`,
//! `plan`, the world experiment) resolve the model the same way training did.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::config::Config;
use crate::data::loader::LoaderOptions;
use crate::data::tokenizer::Tokenizer;
use crate::model::ModelConfig;

/// The Hugging Face directory of `model.init_from = "hf:PATH"`, if set.
pub fn init_from_hf(m: &ModelConfig) -> Result<Option<PathBuf>> {
    match m.init_from.as_deref() {
        None => Ok(None),
        Some(s) => match s.strip_prefix("hf:") {
            Some(path) => Ok(Some(PathBuf::from(path))),
            None => bail!(
                "model.init_from = {s:?}: expected \"hf:PATH\" (a Hugging Face model directory)"
            ),
        },
    }
}

/// The resolved model config for a run config and tokenizer. With `init_from = "hf:PATH"` the
/// shape comes from that directory's config.json (the run's max_seq_len and init_from are kept).
pub fn resolve_model(cfg: &Config, tok: &Tokenizer) -> Result<ModelConfig> {
    resolve_model_shape(cfg, Some(tok.vocab_size() as usize), true)
}

/// As [`resolve_model`], without a tokenizer when `tokenizer_vocab` is None (then
/// `model.vocab_size` must be set). `need_hf`: the init_from directory must exist; otherwise the
/// `[model]` shape is used when it is missing (memory plans for runs prepared elsewhere).
pub fn resolve_model_shape(
    cfg: &Config,
    tokenizer_vocab: Option<usize>,
    need_hf: bool,
) -> Result<ModelConfig> {
    let Some(mut m) = cfg.model.clone() else {
        bail!("the config has no [model] section");
    };
    if let Some(dir) = init_from_hf(&m)? {
        if need_hf || dir.join("config.json").exists() {
            let mut hf = crate::hf::model_config(&dir)?;
            let file = dir.join("config.json");
            for (key, mine, theirs) in [
                ("vocab_size", m.vocab_size, hf.vocab_size),
                ("dim", m.dim, hf.dim),
                ("n_layers", m.n_layers, hf.n_layers),
                ("n_heads", m.n_heads, hf.n_heads),
                ("n_kv_heads", m.n_kv_heads, hf.n_kv_heads),
                ("ffn_dim", m.ffn_dim, hf.ffn_dim),
            ] {
                if mine != 0 && mine != theirs {
                    bail!("model.{key} = {mine} but {} says {theirs}", file.display());
                }
            }
            hf.max_seq_len = m.max_seq_len.max(cfg.data.seq_len);
            hf.init_from = m.init_from.clone();
            m = hf;
        }
    }
    let vocab = match tokenizer_vocab {
        Some(v) => v,
        None if m.vocab_size > 0 => m.vocab_size,
        None => bail!("model.vocab_size must be set when no tokenizer is loaded"),
    };
    m.resolve(vocab)?;
    if cfg.data.seq_len > m.max_seq_len {
        bail!(
            "data.seq_len = {} exceeds model.max_seq_len = {}",
            cfg.data.seq_len,
            m.max_seq_len
        );
    }
    if let Some(w) = m.sliding_window {
        if cfg.data.seq_len > w {
            bail!(
                "data.seq_len = {} exceeds the model's sliding window of {w} tokens (kiln's attention is full causal): lower data.seq_len to at most {w}",
                cfg.data.seq_len
            );
        }
    }
    Ok(m)
}

/// The loader's options for this run on rank `rank` of `world_size`.
pub fn loader_options(
    cfg: &Config,
    tok: &Tokenizer,
    rank: usize,
    world_size: usize,
) -> LoaderOptions {
    let d = &cfg.data;
    LoaderOptions {
        seq_len: d.seq_len,
        batch_size: d.batch_size,
        seed: d.seed,
        shuffle: d.shuffle,
        val_fraction: d.val_fraction,
        rank,
        world_size,
        vocab_size: tok.vocab_size(),
        fingerprint: Some(tok.fingerprint()),
        delimiter: tok.bos().or(tok.eos()),
    }
}
