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

/// How kiln treats one field of a Llama or Mistral config.json.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treatment {
    /// Read into kiln's model config; it shapes the math (parity-tested against transformers).
    Supported,
    /// Has no effect on kiln's training or inference; the reason is in the table.
    Irrelevant,
    /// Accepted only at the value transformers' plain model uses (given in the table); any other
    /// value is refused.
    OnlyDefault,
}

/// One row of the config.json field table (docs/HUGGINGFACE.md prints it).
pub struct Field {
    pub name: &'static str,
    pub treatment: Treatment,
    pub note: &'static str,
}

const fn row(name: &'static str, treatment: Treatment, note: &'static str) -> Field {
    Field {
        name,
        treatment,
        note,
    }
}

use Treatment::{Irrelevant, OnlyDefault, Supported};

/// Every field of transformers' `LlamaConfig` and `MistralConfig` (4.x and 5.x) and of the
/// `PretrainedConfig` they extend. A config.json key not in this table is refused: kiln cannot
/// know whether it changes the model.
pub const FIELDS: &[Field] = &[
    row("architectures", Supported, "LlamaForCausalLM or MistralForCausalLM; anything else is refused"),
    row("model_type", Supported, "llama or mistral (used when architectures is absent)"),
    row("vocab_size", Supported, "embedding and output rows"),
    row("hidden_size", Supported, "d"),
    row("intermediate_size", Supported, "SwiGLU width F"),
    row("num_hidden_layers", Supported, "L"),
    row("num_attention_heads", Supported, "H"),
    row("num_key_value_heads", Supported, "grouped-query KV heads (absent: H for Llama, 8 for Mistral, as transformers)"),
    row("head_dim", Supported, "D (absent or null: d / H)"),
    row("hidden_act", Supported, "silu (or its alias swish) only: kiln's MLP is SwiGLU; any other activation is refused"),
    row("rms_norm_eps", Supported, "RMSNorm epsilon (absent: 1e-6)"),
    row("rope_theta", Supported, "RoPE base (transformers 4)"),
    row("rope_scaling", Supported, "null, rope_type default or llama3; linear, dynamic, yarn, longrope and others are refused"),
    row("rope_parameters", Supported, "transformers 5's rope_theta + rope_type (default or llama3)"),
    row("tie_word_embeddings", Supported, "output projection shares the embedding"),
    row("max_position_embeddings", Supported, "RoPE table length; kept on export"),
    row("sliding_window", Supported, "Mistral: attention window (absent: 4096, null: none), applied by generation's KV cache; training refuses data.seq_len beyond it. Ignored for Llama, as transformers does"),
    row("attention_bias", Supported, "biases on q, k, v and o projections"),
    row("mlp_bias", Supported, "biases on gate, up and down projections"),
    row("initializer_range", Supported, "std of a fresh initialisation; kept on export"),
    row("attention_dropout", OnlyDefault, "0: kiln has no dropout"),
    row("pretraining_tp", Irrelevant, "transformers splits the same products into slices; the math is unchanged"),
    row("pruned_heads", OnlyDefault, "{}: kiln's heads are never pruned"),
    row("is_encoder_decoder", OnlyDefault, "false: a decoder-only model"),
    row("add_cross_attention", OnlyDefault, "false: no cross-attention in a decoder-only model"),
    row("tie_encoder_decoder", OnlyDefault, "false: no encoder"),
    row("is_decoder", Irrelevant, "a decoder-only model is causal either way"),
    row("cross_attention_hidden_size", OnlyDefault, "null: no cross-attention"),
    row("chunk_size_feed_forward", OnlyDefault, "0: the MLP is not chunked"),
    row("torch_dtype", Irrelevant, "storage type; kiln reads each tensor's own dtype and trains in its backend's precision"),
    row("dtype", Irrelevant, "transformers 5's torch_dtype"),
    row("transformers_version", Irrelevant, "provenance"),
    row("_name_or_path", Irrelevant, "provenance"),
    row("use_cache", Irrelevant, "transformers' KV-cache switch; kiln's generation always caches, which does not change outputs"),
    row("bos_token_id", Irrelevant, "token ids come from the tokenizer; kept on export"),
    row("eos_token_id", Irrelevant, "token ids come from the tokenizer; kept on export"),
    row("pad_token_id", Irrelevant, "padding is masked; kept on export"),
    row("sep_token_id", Irrelevant, "tokenizer metadata"),
    row("decoder_start_token_id", Irrelevant, "encoder-decoder generation only"),
    row("tokenizer_class", Irrelevant, "tokenizer metadata"),
    row("_attn_implementation_autoset", Irrelevant, "transformers' kernel choice (eager, sdpa, flash): the same math"),
    row("_attn_implementation", Irrelevant, "transformers' kernel choice: the same math"),
    row("output_attentions", Irrelevant, "what transformers returns, not what it computes"),
    row("output_hidden_states", Irrelevant, "what transformers returns"),
    row("return_dict", Irrelevant, "what transformers returns"),
    row("torchscript", Irrelevant, "transformers' export switch"),
    row("use_bfloat16", Irrelevant, "legacy TF/JAX dtype switch"),
    row("tf_legacy_loss", Irrelevant, "TensorFlow only"),
    row("id2label", Irrelevant, "classification heads only"),
    row("label2id", Irrelevant, "classification heads only"),
    row("problem_type", Irrelevant, "classification heads only"),
    row("finetuning_task", Irrelevant, "metadata"),
    row("task_specific_params", Irrelevant, "metadata"),
    row("prefix", Irrelevant, "metadata"),
    // Generation defaults (transformers 4 keeps them in the model config): kiln's own sampling
    // flags decide, and the model's math is unchanged.
    row("max_length", Irrelevant, "generation default"),
    row("min_length", Irrelevant, "generation default"),
    row("do_sample", Irrelevant, "generation default"),
    row("early_stopping", Irrelevant, "generation default"),
    row("num_beams", Irrelevant, "generation default"),
    row("num_beam_groups", Irrelevant, "generation default"),
    row("diversity_penalty", Irrelevant, "generation default"),
    row("temperature", Irrelevant, "generation default"),
    row("top_k", Irrelevant, "generation default"),
    row("top_p", Irrelevant, "generation default"),
    row("typical_p", Irrelevant, "generation default"),
    row("repetition_penalty", Irrelevant, "generation default"),
    row("length_penalty", Irrelevant, "generation default"),
    row("no_repeat_ngram_size", Irrelevant, "generation default"),
    row("encoder_no_repeat_ngram_size", Irrelevant, "generation default"),
    row("bad_words_ids", Irrelevant, "generation default"),
    row("num_return_sequences", Irrelevant, "generation default"),
    row("output_scores", Irrelevant, "generation default"),
    row("return_dict_in_generate", Irrelevant, "generation default"),
    row("forced_bos_token_id", Irrelevant, "generation default"),
    row("forced_eos_token_id", Irrelevant, "generation default"),
    row("remove_invalid_values", Irrelevant, "generation default"),
    row("exponential_decay_length_penalty", Irrelevant, "generation default"),
    row("suppress_tokens", Irrelevant, "generation default"),
    row("begin_suppress_tokens", Irrelevant, "generation default"),
];

/// The value an [`Treatment::OnlyDefault`] field must have (a missing key always passes).
fn is_plain(name: &str, v: &Value) -> bool {
    match name {
        "attention_dropout" => v.as_f64() == Some(0.0) || v.is_null(),
        "pruned_heads" => v.is_null() || v.as_object().is_some_and(|m| m.is_empty()),
        "is_encoder_decoder" | "add_cross_attention" | "tie_encoder_decoder" => {
            v.is_null() || v == &Value::Bool(false)
        }
        "cross_attention_hidden_size" => v.is_null(),
        "chunk_size_feed_forward" => v.is_null() || v.as_u64() == Some(0),
        _ => false,
    }
}

/// Every key of config.json is in [`FIELDS`], and each [`Treatment::OnlyDefault`] field holds its
/// plain value.
fn check_fields(obj: &serde_json::Map<String, Value>, file: &Path) -> Result<()> {
    for (key, value) in obj {
        match FIELDS.iter().find(|f| f.name == key) {
            None => bail!(
                "{}: field {key:?} = {} is not a Llama or Mistral config field kiln knows; it may change the model, so the directory is refused (docs/HUGGINGFACE.md lists every field)",
                file.display(),
                short(value)
            ),
            Some(f) if f.treatment == OnlyDefault && !is_plain(key, value) => bail!(
                "{}: {key} = {} is not supported (kiln requires {})",
                file.display(),
                short(value),
                f.note
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

/// A JSON value for a one-line message, cut at 80 characters.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// The fields of a Hugging Face config.json kiln reads (the rest are checked by [`check_fields`]).
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Option<Vec<String>>,
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
    hidden_act: Option<String>,
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
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    initializer_range: Option<f64>,
}

fn rope_from(
    value: &Value,
    field: &str,
    file: &Path,
) -> Result<(Option<f64>, Option<RopeScaling>)> {
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
                    anyhow::anyhow!(
                        "{}: {field}: llama3 RoPE scaling without {k}",
                        file.display()
                    )
                })
            };
            let original = num("original_max_position_embeddings")?;
            if !(original >= 1.0 && original.fract() == 0.0) {
                bail!(
                    "{}: {field}.original_max_position_embeddings = {original} is not a positive integer",
                    file.display()
                );
            }
            Ok((
                theta,
                Some(RopeScaling {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: original as usize,
                }),
            ))
        }
        other => bail!(
            "{}: {field}: RoPE type {other:?} is not supported (kiln supports default and llama3)",
            file.display()
        ),
    }
}

/// The parsed config.json of a Hugging Face directory, as a JSON object.
pub fn read_config_json(dir: &Path) -> Result<serde_json::Map<String, Value>> {
    let file = dir.join("config.json");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => bail!("{}: not a JSON object", file.display()),
        Err(e) => bail!("{}: invalid JSON: {e}", file.display()),
    }
}

/// kiln's model config from a Hugging Face model directory's config.json. Every key must be in
/// [`FIELDS`]; a value kiln cannot reproduce is refused with the field and its value.
pub fn model_config(dir: &Path) -> Result<ModelConfig> {
    let file = dir.join("config.json");
    let obj = read_config_json(dir)?;
    check_fields(&obj, &file)?;
    // Absent and null differ for Mistral's window, which serde's Option does not see.
    let window_field = obj.get("sliding_window").cloned();
    let hf: HfConfig = serde_json::from_value(Value::Object(obj))
        .map_err(|e| anyhow::anyhow!("{}: not a Llama/Mistral config: {e}", file.display()))?;
    let arch = match hf.architectures.as_deref() {
        Some([one]) => one.clone(),
        Some([]) | None => match hf.model_type.as_deref() {
            Some("mistral") => "MistralForCausalLM".into(),
            Some("llama") | None => "LlamaForCausalLM".into(),
            Some(other) => bail!(
                "{}: model_type {other:?} is not supported (kiln loads llama and mistral)",
                file.display()
            ),
        },
        Some(many) => bail!(
            "{}: architectures = {many:?}: kiln loads exactly one of {}",
            file.display(),
            ARCHITECTURES.join(", ")
        ),
    };
    if !ARCHITECTURES.contains(&arch.as_str()) {
        bail!(
            "{}: architectures = [{arch:?}] is not supported (kiln loads {})",
            file.display(),
            ARCHITECTURES.join(", ")
        );
    }
    let mistral = arch == "MistralForCausalLM";
    if let Some(act) = hf.hidden_act.as_deref() {
        if act != "silu" && act != "swish" {
            bail!(
                "{}: hidden_act = {act:?} is not supported (kiln's MLP is SwiGLU: silu)",
                file.display()
            );
        }
    }
    let (mut theta, mut scaling) = (hf.rope_theta, None);
    if let Some(s) = hf.rope_scaling.as_ref().filter(|v| !v.is_null()) {
        let (t, sc) = rope_from(s, "rope_scaling", &file)?;
        theta = theta.or(t);
        scaling = sc;
    }
    if let Some(p) = hf.rope_parameters.as_ref().filter(|v| !v.is_null()) {
        let (t, sc) = rope_from(p, "rope_parameters", &file)?;
        theta = t.or(theta);
        scaling = sc.or(scaling);
    }
    let sliding_window = match (&window_field, mistral) {
        (_, false) => None,
        (None, true) => Some(4096),
        (Some(Value::Null), true) => None,
        (Some(v), true) => match v.as_u64() {
            Some(w) if w > 0 => Some(w as usize),
            _ => bail!(
                "{}: sliding_window = {} is not a positive integer",
                file.display(),
                short(v)
            ),
        },
    };
    Ok(ModelConfig {
        vocab_size: hf.vocab_size,
        dim: hf.hidden_size,
        n_layers: hf.num_hidden_layers,
        n_heads: hf.num_attention_heads,
        n_kv_heads: hf.num_key_value_heads.unwrap_or(if mistral {
            8
        } else {
            hf.num_attention_heads
        }),
        ffn_dim: hf.intermediate_size,
        head_dim: hf.head_dim.unwrap_or(0),
        rope_theta: theta.unwrap_or(10000.0),
        rope_scaling: scaling,
        norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
        tie_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        max_seq_len: hf
            .max_position_embeddings
            .unwrap_or(if mistral { 4096 * 32 } else { 2048 }),
        init_std: hf.initializer_range.unwrap_or(0.02),
        sliding_window,
        attention_bias: hf.attention_bias.unwrap_or(false),
        mlp_bias: hf.mlp_bias.unwrap_or(false),
        init_from: None,
    })
}

/// The safetensors files of a directory: the index's shards in order, or model.safetensors.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("{}: cannot read", index.display()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: invalid index: {e}", index.display()))?;
        let Some(map) = v.get("weight_map").and_then(Value::as_object) else {
            bail!("{}: no weight_map", index.display());
        };
        let mut files = Vec::with_capacity(map.len());
        for (tensor, file) in map {
            let Some(file) = file.as_str() else {
                bail!(
                    "{}: weight_map gives {tensor:?} the file {file}, not a file name",
                    index.display()
                );
            };
            files.push(file.to_string());
        }
        files.sort();
        files.dedup();
        // Shards are files of this directory: a name with a directory part (`../`, `/`) is refused.
        let plain = |f: &str| {
            let mut parts = Path::new(f).components();
            matches!(parts.next(), Some(std::path::Component::Normal(_))) && parts.next().is_none()
        };
        if let Some(bad) = files.iter().find(|f| !plain(f)) {
            bail!(
                "{}: weight_map names {bad:?}, which is not a file name in this directory",
                index.display()
            );
        }
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
    // Every tensor is used. Two kinds are known to be redundant and are skipped, as transformers
    // skips them: a tied model's lm_head copy (transformers re-ties it to the embedding) and the
    // RoPE inverse frequencies older exports stored (recomputed from config.json).
    let mut unused: Vec<(&String, &PathBuf)> = by_name
        .iter()
        .filter(|(n, _)| {
            let redundant = (cfg.tie_embeddings && n.as_str() == "lm_head.weight")
                || n.ends_with("rotary_emb.inv_freq");
            !redundant
        })
        .map(|(n, (f, _))| (n, f))
        .collect();
    unused.sort();
    if let Some((name, file)) = unused.first() {
        bail!(
            "{}: tensor {name} is not part of the model config.json describes ({} unused tensor(s)); kiln refuses rather than drop weights",
            file.display(),
            unused.len()
        );
    }
    Ok((cfg, out))
}

/// Export options.
/// Host tensors in parameter order (`ModelConfig::params`), named as `export` expects.
pub fn named_tensors(mcfg: &ModelConfig, host: Vec<Vec<f32>>) -> Vec<NamedTensor> {
    mcfg.params()
        .into_iter()
        .zip(host)
        .map(|(p, data)| NamedTensor {
            name: p.name,
            shape: p.shape,
            data,
        })
        .collect()
}

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
    /// The Hugging Face directory the model came from (`init_from`, or `kiln convert`'s input):
    /// its config.json and generation_config.json are the starting point, so every field kiln
    /// does not set (max_position_embeddings, pad_token_id, rope settings, …) is kept.
    pub source: Option<PathBuf>,
}

/// config.json for `cfg`: the source's fields (`base`, empty without a source) with every field
/// kiln's model config determines set from it.
fn export_config(
    cfg: &ModelConfig,
    mut base: serde_json::Map<String, Value>,
    opts: &ExportOptions,
) -> Value {
    let source_arch = base
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .map(String::from);
    let mistral = cfg.sliding_window.is_some()
        || source_arch.as_deref() == Some("MistralForCausalLM")
        || (source_arch.is_none()
            && base.get("model_type").and_then(Value::as_str) == Some("mistral"));
    let (arch, model_type) = if mistral {
        ("MistralForCausalLM", "mistral")
    } else {
        ("LlamaForCausalLM", "llama")
    };
    let dtype = if opts.bf16 { "bfloat16" } else { "float32" };
    let act = match base.get("hidden_act").and_then(Value::as_str) {
        Some("swish") => "swish",
        _ => "silu",
    };
    let mut set = |k: &str, v: Value| {
        base.insert(k.to_string(), v);
    };
    set("architectures", json!([arch]));
    set("model_type", json!(model_type));
    set("vocab_size", json!(cfg.vocab_size));
    set("hidden_size", json!(cfg.dim));
    set("intermediate_size", json!(cfg.ffn_dim));
    set("num_hidden_layers", json!(cfg.n_layers));
    set("num_attention_heads", json!(cfg.n_heads));
    set("num_key_value_heads", json!(cfg.n_kv_heads));
    set("head_dim", json!(cfg.head_dim));
    set("hidden_act", json!(act));
    set("rms_norm_eps", json!(cfg.norm_eps));
    set("max_position_embeddings", json!(cfg.max_seq_len));
    set("tie_word_embeddings", json!(cfg.tie_embeddings));
    set("attention_bias", json!(cfg.attention_bias));
    set("mlp_bias", json!(cfg.mlp_bias));
    set("initializer_range", json!(cfg.init_std));
    set("torch_dtype", json!(dtype));
    if mistral {
        set("sliding_window", json!(cfg.sliding_window));
    }
    if base.contains_key("dtype") {
        base.insert("dtype".into(), json!(dtype));
    }
    base.entry("attention_dropout").or_insert(json!(0.0));
    for (key, id) in [
        ("bos_token_id", opts.bos_token_id),
        ("eos_token_id", opts.eos_token_id),
    ] {
        match id {
            Some(id) => {
                base.insert(key.into(), json!(id));
            }
            None => {
                base.entry(key).or_insert(Value::Null);
            }
        }
    }
    let scaling = cfg.rope_scaling.map(|s| {
        json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        })
    });
    if base.contains_key("rope_parameters") {
        // transformers 5's form: theta and type together.
        let mut p = scaling.unwrap_or_else(|| json!({ "rope_type": "default" }));
        p["rope_theta"] = json!(cfg.rope_theta);
        base.insert("rope_parameters".into(), p);
        base.remove("rope_scaling");
        base.remove("rope_theta");
    } else {
        base.insert("rope_theta".into(), json!(cfg.rope_theta));
        base.insert("rope_scaling".into(), scaling.unwrap_or(Value::Null));
    }
    Value::Object(base)
}

/// Write a Hugging Face directory loadable by `AutoModelForCausalLM`.
pub fn export(
    out: &Path,
    cfg: &ModelConfig,
    tensors: &[NamedTensor],
    opts: &ExportOptions,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let base = match &opts.source {
        Some(dir) => read_config_json(dir)?,
        None => serde_json::Map::new(),
    };
    let config = export_config(cfg, base, opts);
    crate::fsutil::write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    let mut generation = opts
        .source
        .as_ref()
        .map(|dir| dir.join("generation_config.json"))
        .filter(|f| f.exists())
        .map(|f| -> Result<Value> {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("{}: cannot read", f.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: invalid JSON: {e}", f.display()))
        })
        .transpose()?
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({ "do_sample": false }));
    for (key, id) in [
        ("bos_token_id", opts.bos_token_id),
        ("eos_token_id", opts.eos_token_id),
    ] {
        if let Some(id) = id {
            generation[key] = json!(id);
        } else if generation.get(key).is_none() {
            generation[key] = Value::Null;
        }
    }
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

    /// Every parameter of `cfg`, filled with 0.5.
    fn constant_tensors(cfg: &ModelConfig) -> Vec<NamedTensor> {
        cfg.params()
            .into_iter()
            .map(|p| NamedTensor {
                data: vec![0.5; p.numel()],
                name: p.name,
                shape: p.shape,
            })
            .collect()
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
    fn docs_field_table_lists_every_field_with_its_treatment() {
        let doc = include_str!("../../docs/HUGGINGFACE.md");
        for f in FIELDS {
            let cell = format!("`{}`", f.name);
            let row = doc
                .lines()
                .find(|l| {
                    l.starts_with('|')
                        && l.split('|')
                            .nth(1)
                            .is_some_and(|c| c.split(", ").any(|n| n.trim() == cell))
                })
                .unwrap_or_else(|| panic!("docs/HUGGINGFACE.md has no row for {cell}"));
            let kind = row.split('|').nth(2).unwrap_or("").trim();
            let want = match f.treatment {
                Supported => "supported",
                Irrelevant => "irrelevant",
                OnlyDefault => "refused unless",
            };
            assert!(
                kind.starts_with(want),
                "{cell}: the doc says {kind:?}, the code {want:?}"
            );
        }
    }

    #[test]
    fn every_field_that_changes_the_math_is_read_or_refused_by_name_and_value() {
        let refused = |key: &str, value: Value, want: &str| {
            let mut c = base();
            c[key] = value;
            let err = model_config(config_dir(c).path()).unwrap_err().to_string();
            assert!(!err.contains('\n'), "{err}");
            assert!(err.contains(key) && err.contains(want), "{key}: {err}");
        };
        refused("hidden_act", json!("gelu"), "\"gelu\"");
        refused("attention_dropout", json!(0.1), "0.1");
        refused("pruned_heads", json!({"0": [1]}), "pruned_heads");
        refused("is_encoder_decoder", json!(true), "true");
        refused(
            "quantization_config",
            json!({"quant_method": "gptq"}),
            "quant_method",
        );
        refused(
            "rope_scaling",
            json!({"rope_type": "yarn", "factor": 4.0}),
            "yarn",
        );
        refused(
            "architectures",
            json!(["Qwen2ForCausalLM"]),
            "Qwen2ForCausalLM",
        );
        // Values that keep the plain model are accepted, as are irrelevant fields.
        let mut c = base();
        for (k, v) in [
            ("hidden_act", json!("swish")),
            ("attention_dropout", json!(0.0)),
            ("pruned_heads", json!({})),
            ("pretraining_tp", json!(4)),
            ("use_cache", json!(false)),
            ("torch_dtype", json!("bfloat16")),
            ("temperature", json!(0.7)),
            ("attention_bias", json!(true)),
            ("mlp_bias", json!(true)),
        ] {
            c[k] = v;
        }
        let m = model_config(config_dir(c).path()).unwrap();
        assert!(m.attention_bias && m.mlp_bias);
    }

    #[test]
    fn mistral_defaults_follow_transformers() {
        let mut m = base();
        m["architectures"] = json!(["MistralForCausalLM"]);
        m.as_object_mut().unwrap().remove("num_key_value_heads");
        m.as_object_mut().unwrap().remove("max_position_embeddings");
        m["num_attention_heads"] = json!(8);
        let c = model_config(config_dir(m.clone()).path()).unwrap();
        assert_eq!(
            (c.sliding_window, c.n_kv_heads, c.max_seq_len),
            (Some(4096), 8, 131072)
        );
        m["sliding_window"] = Value::Null;
        assert_eq!(
            model_config(config_dir(m).path()).unwrap().sliding_window,
            None
        );
    }

    #[test]
    fn a_tensor_the_config_does_not_describe_is_an_error() {
        let mut cfg = model_config(config_dir(base()).path()).unwrap();
        cfg.resolve(300).unwrap();
        let mut tensors = constant_tensors(&cfg);
        // What a model with attention_bias carries, under a config that says false.
        tensors.push(NamedTensor {
            name: "model.layers.0.self_attn.q_proj.bias".into(),
            shape: vec![64],
            data: vec![0.1; 64],
        });
        let out = tempfile::tempdir().unwrap();
        let opts = ExportOptions {
            bf16: false,
            shard_bytes: 1 << 30,
            tokenizer: None,
            bos_token_id: None,
            eos_token_id: None,
            source: None,
        };
        export(out.path(), &cfg, &tensors, &opts).unwrap();
        let err = load(out.path(), None).unwrap_err().to_string();
        assert!(
            err.contains("model.layers.0.self_attn.q_proj.bias"),
            "{err}"
        );
    }

    #[test]
    fn export_keeps_the_source_fields_it_does_not_set() {
        let src = base();
        let mut src = src.as_object().unwrap().clone();
        src.insert("max_position_embeddings".into(), json!(8192));
        src.insert("pad_token_id".into(), json!(7));
        src.insert("use_cache".into(), json!(false));
        src.insert("bos_token_id".into(), json!(11));
        let dir = config_dir(Value::Object(src));
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"bos_token_id": 11, "eos_token_id": 12, "temperature": 0.6, "do_sample": true}"#,
        )
        .unwrap();
        let mut cfg = model_config(dir.path()).unwrap();
        cfg.resolve(300).unwrap();
        let tensors = constant_tensors(&cfg);
        let out = tempfile::tempdir().unwrap();
        let opts = ExportOptions {
            bf16: true,
            shard_bytes: 1 << 30,
            tokenizer: None,
            bos_token_id: None,
            eos_token_id: Some(3),
            source: Some(dir.path().to_path_buf()),
        };
        export(out.path(), &cfg, &tensors, &opts).unwrap();
        let written = read_config_json(out.path()).unwrap();
        assert_eq!(written["max_position_embeddings"], json!(8192));
        assert_eq!(written["pad_token_id"], json!(7));
        assert_eq!(written["use_cache"], json!(false));
        assert_eq!(written["bos_token_id"], json!(11));
        assert_eq!(written["eos_token_id"], json!(3));
        assert_eq!(written["torch_dtype"], json!("bfloat16"));
        let generation: Value = serde_json::from_str(
            &std::fs::read_to_string(out.path().join("generation_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(generation["temperature"], json!(0.6));
        assert_eq!(generation["eos_token_id"], json!(3));
        // And it loads back to the same model.
        assert_eq!(model_config(out.path()).unwrap(), {
            let mut c = cfg.clone();
            c.head_dim = 16;
            c
        });
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
            source: None,
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
