//! Hugging Face checkpoints in and out: `LlamaForCausalLM` and `MistralForCausalLM` directories
//! (config.json, single or sharded safetensors with model.safetensors.index.json, bf16/fp16/fp32
//! tensors, tokenizer.json) to kiln's model config and parameters, and back.
//!
//! Parameter names are Hugging Face's already (DESIGN.md §2), so import is a check of names and
//! shapes; RoPE follows Hugging Face's rotate-half convention on both sides. Both transformers 4
//! (`rope_theta`, `rope_scaling`) and transformers 5 (`rope_parameters`) configs are read; RoPE types
//! `default` and `llama3` are supported, anything else is refused with a clear message.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::model::{ModelConfig, RopeScaling};
use crate::safetensors_io::{read_safetensors, write_safetensors_as, NamedTensor};

const ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM"];

/// The fields of a Hugging Face config.json kiln reads (others are ignored).
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<Value>,
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    initializer_range: Option<f64>,
}

fn rope_from(value: &Value, file: &Path) -> Result<(Option<f64>, Option<RopeScaling>)> {
    let theta = value.get("rope_theta").and_then(Value::as_f64);
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok((theta, None)),
        "llama3" => {
            let num = |k: &str| {
                value.get(k).and_then(Value::as_f64).ok_or_else(|| {
                    anyhow::anyhow!("{}: llama3 RoPE scaling without {k}", file.display())
                })
            };
            Ok((
                theta,
                Some(RopeScaling {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: num("original_max_position_embeddings")?
                        as usize,
                }),
            ))
        }
        other => bail!(
            "{}: RoPE type {other:?} is not supported (kiln supports default and llama3)",
            file.display()
        ),
    }
}

/// kiln's model config from a Hugging Face model directory's config.json.
pub fn model_config(dir: &Path) -> Result<ModelConfig> {
    let file = dir.join("config.json");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    let hf: HfConfig = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a Llama/Mistral config: {e}", file.display()))?;
    let arch =
        hf.architectures
            .first()
            .cloned()
            .unwrap_or_else(|| match hf.model_type.as_deref() {
                Some("mistral") => "MistralForCausalLM".into(),
                _ => "LlamaForCausalLM".into(),
            });
    if !ARCHITECTURES.contains(&arch.as_str()) {
        bail!(
            "{}: architecture {arch} is not supported (kiln loads {})",
            file.display(),
            ARCHITECTURES.join(", ")
        );
    }
    let (mut theta, mut scaling) = (hf.rope_theta, None);
    if let Some(s) = hf.rope_scaling.as_ref().filter(|v| !v.is_null()) {
        let (t, sc) = rope_from(s, &file)?;
        theta = theta.or(t);
        scaling = sc;
    }
    if let Some(p) = hf.rope_parameters.as_ref().filter(|v| !v.is_null()) {
        let (t, sc) = rope_from(p, &file)?;
        theta = t.or(theta);
        scaling = sc.or(scaling);
    }
    Ok(ModelConfig {
        vocab_size: hf.vocab_size,
        dim: hf.hidden_size,
        n_layers: hf.num_hidden_layers,
        n_heads: hf.num_attention_heads,
        n_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        ffn_dim: hf.intermediate_size,
        head_dim: hf.head_dim.unwrap_or(0),
        rope_theta: theta.unwrap_or(10000.0),
        rope_scaling: scaling,
        norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
        tie_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        max_seq_len: hf.max_position_embeddings.unwrap_or(4096),
        init_std: hf.initializer_range.unwrap_or(0.02),
        sliding_window: if arch == "MistralForCausalLM" {
            hf.sliding_window
        } else {
            None
        },
        init_from: None,
    })
}

/// The safetensors files of a directory: the index's shards in order, or model.safetensors.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("{}: cannot read", index.display()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid index: {e}", index.display()))?;
        let Some(map) = v.get("weight_map").and_then(Value::as_object) else {
            bail!("{}: no weight_map", index.display());
        };
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.exists()) {
            bail!(
                "{}: shard listed in {} is missing",
                missing.display(),
                index.display()
            );
        }
        return Ok(paths);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    bail!(
        "{}: no model.safetensors or model.safetensors.index.json",
        dir.display()
    )
}

/// Load a Hugging Face directory: its model config (resolved against `tokenizer_vocab` when
/// given) and parameters in `cfg.params()` order, names and shapes checked.
pub fn load(dir: &Path, tokenizer_vocab: Option<usize>) -> Result<(ModelConfig, Vec<Vec<f32>>)> {
    let mut cfg = model_config(dir)?;
    if let Some(v) = tokenizer_vocab {
        if v > cfg.vocab_size {
            bail!(
                "{}: the tokenizer has {v} ids but the model's embedding has {} rows",
                dir.join("config.json").display(),
                cfg.vocab_size
            );
        }
    }
    let vocab = cfg.vocab_size;
    cfg.resolve(tokenizer_vocab.unwrap_or(vocab))
        .with_context(|| dir.join("config.json").display().to_string())?;
    let mut by_name: HashMap<String, (PathBuf, NamedTensor)> = HashMap::new();
    for f in weight_files(dir)? {
        for t in read_safetensors(&f)? {
            by_name.insert(t.name.clone(), (f.clone(), t));
        }
    }
    let mut out = Vec::new();
    for p in cfg.params() {
        let Some((file, t)) = by_name.remove(&p.name) else {
            bail!(
                "{}: no tensor {} (expected {:?})",
                dir.display(),
                p.name,
                p.shape
            );
        };
        if t.shape != p.shape {
            bail!(
                "{}: tensor {} has shape {:?}, config.json implies {:?}",
                file.display(),
                p.name,
                t.shape,
                p.shape
            );
        }
        out.push(t.data);
    }
    // A tied model may still carry an lm_head copy; other leftovers (rotary caches) are ignored
    // unless they look like weights of a layer kiln does not have.
    if let Some(name) = by_name
        .keys()
        .find(|n| n.ends_with(".weight") && !(cfg.tie_embeddings && n.as_str() == "lm_head.weight"))
    {
        bail!(
            "{}: unexpected tensor {name}: not a plain Llama/Mistral model",
            dir.display()
        );
    }
    Ok((cfg, out))
}

/// Export options.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Store bf16 (default) or fp32.
    pub bf16: bool,
    /// Shard above this many bytes per file.
    pub shard_bytes: u64,
    /// tokenizer.json to copy beside the weights.
    pub tokenizer: Option<PathBuf>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

/// Write a Hugging Face directory loadable by `AutoModelForCausalLM`.
pub fn export(
    out: &Path,
    cfg: &ModelConfig,
    tensors: &[NamedTensor],
    opts: &ExportOptions,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let arch = if cfg.sliding_window.is_some() {
        "MistralForCausalLM"
    } else {
        "LlamaForCausalLM"
    };
    let dtype = if opts.bf16 { "bfloat16" } else { "float32" };
    let mut config = json!({
        "architectures": [arch],
        "model_type": if cfg.sliding_window.is_some() { "mistral" } else { "llama" },
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": false,
        "mlp_bias": false,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "torch_dtype": dtype,
        "bos_token_id": opts.bos_token_id,
        "eos_token_id": opts.eos_token_id,
    });
    if let Some(s) = cfg.rope_scaling {
        config["rope_scaling"] = json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        });
    }
    if let Some(w) = cfg.sliding_window {
        config["sliding_window"] = json!(w);
    }
    crate::fsutil::write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    let generation = json!({ "bos_token_id": opts.bos_token_id, "eos_token_id": opts.eos_token_id, "do_sample": false });
    crate::fsutil::write_atomic(
        &out.join("generation_config.json"),
        serde_json::to_string_pretty(&generation)?.as_bytes(),
    )?;

    // Tied models do not store lm_head (transformers re-ties it).
    let tensors: Vec<&NamedTensor> = tensors
        .iter()
        .filter(|t| !(cfg.tie_embeddings && t.name == "lm_head.weight"))
        .collect();
    let elem = if opts.bf16 { 2 } else { 4 };
    let mut shards: Vec<Vec<NamedTensor>> = vec![Vec::new()];
    let mut size = 0u64;
    for t in &tensors {
        let bytes = (t.data.len() * elem) as u64;
        if size > 0 && size + bytes > opts.shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("one shard").push((*t).clone());
    }
    let meta = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    if shards.len() == 1 {
        write_safetensors_as(&out.join("model.safetensors"), &shards[0], meta, opts.bf16)?;
        let _ = std::fs::remove_file(out.join("model.safetensors.index.json"));
    } else {
        let n = shards.len();
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for (i, shard) in shards.iter().enumerate() {
            let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            write_safetensors_as(&out.join(&name), shard, meta.clone(), opts.bf16)?;
            for t in shard {
                weight_map.insert(t.name.clone(), name.clone());
                total += (t.data.len() * elem) as u64;
            }
        }
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        crate::fsutil::write_atomic(
            &out.join("model.safetensors.index.json"),
            serde_json::to_string_pretty(&index)?.as_bytes(),
        )?;
        let _ = std::fs::remove_file(out.join("model.safetensors"));
    }
    if let Some(tok) = &opts.tokenizer {
        let bytes = std::fs::read(tok)
            .with_context(|| format!("{}: cannot read tokenizer", tok.display()))?;
        crate::fsutil::write_atomic(&out.join("tokenizer.json"), &bytes)?;
        let tc = json!({ "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false });
        crate::fsutil::write_atomic(
            &out.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&tc)?.as_bytes(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_dir(config: Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        dir
    }

    fn base() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 300, "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 128
        })
    }

    #[test]
    fn reads_transformers4_rope_scaling_and_transformers5_rope_parameters_alike() {
        let mut v4 = base();
        v4["rope_theta"] = json!(500000.0);
        v4["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let mut v5 = base();
        v5["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let (a, b) = (config_dir(v4), config_dir(v5));
        let (ca, cb) = (
            model_config(a.path()).unwrap(),
            model_config(b.path()).unwrap(),
        );
        assert_eq!(ca, cb);
        assert_eq!(ca.rope_theta, 500000.0);
        assert_eq!(
            ca.rope_scaling.unwrap().original_max_position_embeddings,
            64
        );
        let mut plain = base();
        plain["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 10000.0});
        let c = model_config(config_dir(plain).path()).unwrap();
        assert_eq!((c.rope_theta, c.rope_scaling), (10000.0, None));
    }

    #[test]
    fn mistral_keeps_its_sliding_window_and_llama_ignores_one() {
        let mut m = base();
        m["architectures"] = json!(["MistralForCausalLM"]);
        m["sliding_window"] = json!(32);
        assert_eq!(
            model_config(config_dir(m).path()).unwrap().sliding_window,
            Some(32)
        );
        let mut l = base();
        l["sliding_window"] = json!(32);
        assert_eq!(
            model_config(config_dir(l).path()).unwrap().sliding_window,
            None
        );
    }

    #[test]
    fn bf16_export_round_trips_through_import_within_bf16_rounding() {
        let mut cfg = model_config(config_dir(base()).path()).unwrap();
        cfg.resolve(300).unwrap();
        let mut rng = crate::rng::Rng::new(1);
        let tensors: Vec<NamedTensor> = cfg
            .params()
            .into_iter()
            .map(|p| NamedTensor {
                data: (0..p.numel()).map(|_| rng.f64() as f32 - 0.5).collect(),
                name: p.name,
                shape: p.shape,
            })
            .collect();
        let out = tempfile::tempdir().unwrap();
        let opts = ExportOptions {
            bf16: true,
            shard_bytes: 10_000,
            tokenizer: None,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        };
        export(out.path(), &cfg, &tensors, &opts).unwrap();
        let (back_cfg, back) = load(out.path(), None).unwrap();
        assert_eq!(back_cfg.params(), cfg.params());
        for (t, b) in tensors.iter().zip(&back) {
            for (x, y) in t.data.iter().zip(b) {
                assert!((x - y).abs() <= x.abs() / 256.0, "{}: {x} vs {y}", t.name);
            }
        }
    }
}
