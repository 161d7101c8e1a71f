//! What a run resolves before it starts: the model's shape (from `[model]`, or from a Hugging Face
//! directory with `init_from = "hf:PATH"`, checked against the tokenizer and the data) and the
//! loader's options for one rank. Commands that open a run's checkpoints (`eval`, `export`,
//! `plan`, the world experiment) resolve the model the same way training did.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::config::Config;
use crate::data::loader::LoaderOptions;
use crate::data::tokenizer::Tokenizer;
use crate::model::ModelConfig;
use crate::train::checkpoint;

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
/// shape comes from that directory's config.json (init_from is kept; max_seq_len is the larger of
/// its max_position_embeddings and data.seq_len).
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
            // The source's max_position_embeddings stays (export writes it back), unless the run's
            // sequences are longer.
            hf.max_seq_len = hf.max_seq_len.max(cfg.data.seq_len);
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

/// A checkpoint with what it was trained with: its directory, step, run config, tokenizer,
/// model config and parameters (in `mcfg.params()` order, shapes checked).
pub struct OpenedCheckpoint {
    pub dir: PathBuf,
    pub step: u64,
    pub cfg: Config,
    pub tok: Tokenizer,
    pub mcfg: crate::model::ModelConfig,
    pub params: Vec<Vec<f32>>,
}

/// Open a run directory's newest checkpoint, or one checkpoint directory, with the run config and
/// tokenizer it was trained with (the tokenizer's fingerprint must match the one recorded).
pub fn open_checkpoint(path: &Path) -> Result<OpenedCheckpoint> {
    let dir = if path.join("DONE").exists() {
        path.to_path_buf()
    } else {
        match checkpoint::latest(path)? {
            Some((_, d)) => d,
            None => bail!(
                "{}: no complete checkpoint (a run directory or a step_NNNNNN directory)",
                path.display()
            ),
        }
    };
    let ckpt = checkpoint::load(&dir)?;
    let config_text = ckpt
        .state
        .get("config")
        .and_then(|c| c.as_str())
        .ok_or_else(|| anyhow::anyhow!("{}/state.json: no run config recorded", dir.display()))?;
    let cfg = Config::parse(
        &format!("{}/state.json (config)", dir.display()),
        config_text,
        &[],
    )?;
    let d = &cfg.data;
    let tok = Tokenizer::from_file(&d.tokenizer, d.bos_token.as_deref(), d.eos_token.as_deref())?;
    if let Some(fp) = ckpt
        .state
        .get("tokenizer_fingerprint")
        .and_then(|f| f.as_str())
    {
        let now = format!("{:016x}", tok.fingerprint());
        if fp != now {
            bail!(
                "{}: this tokenizer is not the one {} was trained with (fingerprint {now}, the run used {fp})",
                d.tokenizer.display(),
                dir.display()
            );
        }
    }
    let mcfg = resolve_model(&cfg, &tok)?;
    let params = crate::train::checkpoint::tensors_in_order(
        &crate::train::checkpoint::model_source(&dir),
        &mcfg.params(),
        ckpt.model,
        "",
    )?;
    Ok(OpenedCheckpoint {
        dir,
        step: ckpt.step,
        cfg,
        tok,
        mcfg,
        params,
    })
}

/// A model to evaluate or generate with: its config, parameters, tokenizer, a name for logs, and
/// the run's sequence length when it is a kiln checkpoint.
pub struct OpenedModel {
    pub mcfg: ModelConfig,
    pub params: Vec<Vec<f32>>,
    pub tok: Tokenizer,
    pub id: String,
    pub seq_len: Option<usize>,
}

/// A Hugging Face directory (config.json + safetensors + tokenizer.json), a run directory (its
/// newest checkpoint) or one checkpoint directory.
pub fn open_model(path: &Path) -> Result<OpenedModel> {
    if path.join("config.json").exists() {
        let tok_path = path.join("tokenizer.json");
        if !tok_path.exists() {
            bail!(
                "{}: no tokenizer.json beside config.json (kiln needs the fast tokenizer file)",
                path.display()
            );
        }
        let tok = Tokenizer::from_file(&tok_path, None, None)?;
        let (mcfg, params) = crate::hf::load(path, Some(tok.vocab_size() as usize))?;
        return Ok(OpenedModel {
            mcfg,
            params,
            tok,
            id: format!("hf:{}", path.display()),
            seq_len: None,
        });
    }
    let c = open_checkpoint(path)?;
    Ok(OpenedModel {
        id: format!("{} (step {})", c.dir.display(), c.step),
        mcfg: c.mcfg,
        params: c.params,
        tok: c.tok,
        seq_len: Some(c.cfg.data.seq_len),
    })
}
