//! Run configuration: the TOML schema, defaults, validation, and `--set section.key=value`
//! overrides. Unknown keys and wrong types are errors naming the file, the line and the key.
//! Relative paths in a config are relative to the current directory (run kiln from the
//! repository root, as the README does).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::backend::AttentionKernel;
use crate::data::loader::SourceSpec;
use crate::model::presets::Preset;
use crate::model::ModelConfig;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data: DataConfig,
    /// The model's shape (required by `kiln train`).
    #[serde(default)]
    pub model: Option<ModelConfig>,
    #[serde(default)]
    pub train: TrainConfig,
    /// How `kiln world` builds the embedded default data (used when the data is missing).
    #[serde(default)]
    pub world: Option<WorldSection>,
    /// Task evaluation during training.
    #[serde(default)]
    pub eval: Option<EvalSection>,
}

/// `[eval]`: task files scored every `every` steps and at the end; results go to metrics.jsonl.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Task files (JSONL, as `kiln eval --tasks` reads).
    pub tasks: Vec<PathBuf>,
    /// Score every N steps (0 = only at the end).
    #[serde(default)]
    pub every: u64,
    /// Score at most this many items per task (0 = all).
    #[serde(default)]
    pub max_items: usize,
    #[serde(default = "default_eval_batch")]
    pub batch: usize,
    #[serde(default = "default_eval_new_tokens")]
    pub max_new_tokens: usize,
}

fn default_eval_batch() -> usize {
    16
}
fn default_eval_new_tokens() -> usize {
    32
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A Hugging Face tokenizer.json.
    pub tokenizer: PathBuf,
    /// BOS / EOS token strings (default: recognised by name).
    #[serde(default)]
    pub bos_token: Option<String>,
    #[serde(default)]
    pub eos_token: Option<String>,
    /// T: tokens per sequence.
    pub seq_len: usize,
    /// B: sequences per micro-batch (per rank).
    pub batch_size: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Fraction of documents held out for validation.
    #[serde(default)]
    pub val_fraction: f64,
    pub sources: Vec<SourceSpec>,
}

fn yes() -> bool {
    true
}

/// `[train]`: the optimisation and the run's bookkeeping. Every field has a default.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Micro-batches per step (gradient accumulation).
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// The schedule's floor as a fraction of the peak.
    pub min_lr_ratio: f64,
    pub warmup_steps: u64,
    pub schedule: Schedule,
    /// WSD: fraction of the steps spent decaying.
    pub decay_fraction: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, on 2-D weights only.
    pub weight_decay: f64,
    /// Global-norm clipping threshold (0 = off).
    pub grad_clip: f64,
    /// Validation loss every N steps (0 = only at the end); needs data.val_fraction > 0.
    pub eval_every: u64,
    pub eval_batches: usize,
    /// Console progress every N steps.
    pub log_every: u64,
    /// Checkpoint every N steps (0 = only at the end).
    pub checkpoint_every: u64,
    /// Complete checkpoints kept (0 = all).
    pub keep_last: usize,
    /// Run directory: checkpoints, metrics.jsonl, config.toml.
    pub out_dir: PathBuf,
    /// Seed of the initialisation.
    pub seed: u64,
    /// Stop after this many non-finite steps in a row (each is skipped).
    pub max_bad_steps: u64,
    /// Worker threads (0 = all cores).
    pub threads: usize,
    /// Peak FLOP/s of the device for MFU, in TFLOP/s (0 = the backend's nominal figure).
    pub peak_tflops: f64,
    /// Data-parallel processes the run is planned for (the memory plan divides sharded state by it).
    pub world_size: usize,
    /// Data parallelism's sharding (DeepSpeed's ZeRO stages): 0, every rank holds the whole state;
    /// 1, the fp32 master weights and Adam moments are sharded over the ranks (each keeps the
    /// model in the compute precision); 2, the fp32 gradients too (reduced on every micro-batch);
    /// 3, the compute copy of the weights too (each unit's gathered around its forward and its
    /// backward).
    pub zero_stage: u8,
    /// Memory available per device in GB for the memory plan (0 = detect: the GPU's memory, or
    /// the machine's RAM for the CPU backend).
    pub device_memory_gb: f64,
    /// CUDA attention kernels: `flash` (kernels/flash_attention.cu; head dims 64 and 128, other
    /// head dims fall back to the reference) or `reference` (kernels/attention.cu, simple and slow).
    pub attention: AttentionKernel,
    /// Bitwise repeatable CUDA backward: dQ without atomics (costs a second pass over the keys).
    pub deterministic: bool,
    /// What the backward rebuilds instead of keeping: `false` (nothing), `true` or "norms" (both
    /// RMSNorm outputs and the SwiGLU product: 2·d + F fewer values per token and layer, for one
    /// extra pass of norms and SwiGLU), or "full" (each layer keeps its input only and runs again
    /// inside the backward: one extra forward). Gradients are unchanged (bitwise on the CPU).
    pub recompute: crate::model::Recompute,
    /// Rows of the output projection and loss computed at once (0: the whole micro-batch). A
    /// chunk holds chunk·V logits instead of B·T·V, and its backward runs right after its loss
    /// (the fused LM head and cross-entropy); the rows used are the largest divisor of B·T that
    /// is at most this. The gradients are the same up to rounding.
    pub head_chunk: usize,
    /// Data parallelism: gradient bucket size in MB (of fp32 gradients) for the overlapped
    /// reduction.
    pub bucket_mb: f64,
    /// Data parallelism: seconds a rank waits for the others (rendezvous, each collective)
    /// before it gives up with an error.
    pub comm_timeout_s: f64,
}

impl TrainConfig {
    /// Elements of fp32 gradient per reduction bucket (`bucket_mb`).
    pub fn bucket_elems(&self) -> usize {
        ((self.bucket_mb * 1e6 / 4.0) as usize).max(1)
    }
}

/// `train.schedule`: linear warm-up then cosine decay to a floor, or warm-up–stable–decay (see
/// `train::schedule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    #[default]
    Cosine,
    Wsd,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            grad_accum: 1,
            lr: 3e-4,
            min_lr_ratio: 0.1,
            warmup_steps: 100,
            schedule: Schedule::Cosine,
            decay_fraction: 0.2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
            eval_every: 0,
            eval_batches: 10,
            log_every: 10,
            checkpoint_every: 0,
            keep_last: 3,
            out_dir: PathBuf::from("runs/default"),
            seed: 0,
            max_bad_steps: 10,
            threads: 0,
            peak_tflops: 0.0,
            world_size: 1,
            zero_stage: 0,
            device_memory_gb: 0.0,
            attention: AttentionKernel::Flash,
            deterministic: false,
            recompute: crate::model::Recompute::None,
            head_chunk: 0,
            bucket_mb: 25.0,
            comm_timeout_s: 600.0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorldSection {
    /// Directory the world files, tokenizer and shards go to.
    pub dir: PathBuf,
    #[serde(default = "default_world_seed")]
    pub seed: u64,
    #[serde(default = "default_people")]
    pub people: usize,
    #[serde(default = "default_bios")]
    pub bios_per_person: usize,
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
}

fn default_world_seed() -> u64 {
    1234
}
fn default_people() -> usize {
    2000
}
fn default_bios() -> usize {
    4
}
fn default_vocab() -> usize {
    2048
}

/// The embedded default run (configs/tiny.toml, compiled into the binary).
pub const TINY_TOML: &str = include_str!("../configs/tiny.toml");

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parse a TOML value from an override's right-hand side; bare words become strings.
fn parse_override_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// `[model] preset = "NAME"`: the named shape (`model::presets`), with the section's other keys
/// on top. Returns whether there was one.
fn expand_model_preset(table: &mut toml::Table) -> Result<bool> {
    let Some(toml::Value::Table(model)) = table.get_mut("model") else {
        return Ok(false);
    };
    let Some(value) = model.remove("preset") else {
        return Ok(false);
    };
    let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
    let Some(preset) = value.as_str().and_then(Preset::from_name) else {
        bail!(
            "model.preset = {value}: expected one of {}",
            names.join(", ")
        );
    };
    let toml::Value::Table(mut base) = toml::Value::try_from(preset.config())? else {
        bail!("internal: preset {} is not a table", preset.name());
    };
    base.extend(std::mem::take(model));
    *model = base;
    Ok(true)
}

/// Apply `section.key=value` overrides to a parsed TOML table.
pub fn apply_overrides(table: &mut toml::Table, overrides: &[String]) -> Result<()> {
    for o in overrides {
        let Some((key, value)) = o.split_once('=') else {
            bail!("--set {o:?}: expected section.key=value");
        };
        let parts: Vec<&str> = key.trim().split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            bail!("--set {o:?}: empty key component");
        }
        let mut cur = &mut *table;
        for p in &parts[..parts.len() - 1] {
            let entry = cur
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            cur = match entry {
                toml::Value::Table(t) => t,
                _ => bail!("--set {o:?}: {p:?} is not a section"),
            };
        }
        cur.insert(
            parts[parts.len() - 1].to_string(),
            parse_override_value(value.trim()),
        );
    }
    Ok(())
}

impl Config {
    /// Load a config file (or the embedded default when `path` is None) with overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Config> {
        let (name, text) = match path {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read config", p.display()))?,
            ),
            None => (
                "configs/tiny.toml (embedded)".to_string(),
                TINY_TOML.to_string(),
            ),
        };
        Self::parse(&name, &text, overrides)
    }

    /// Parse a config's text (`name` for errors) with overrides. Every error is one line: a
    /// message echoing a multi-line value has its line breaks escaped.
    pub fn parse(name: &str, text: &str, overrides: &[String]) -> Result<Config> {
        Self::parse_lines(name, text, overrides).map_err(|e| {
            let message = format!("{e:#}");
            if message.contains('\n') {
                anyhow::anyhow!(message.replace('\n', "\\n"))
            } else {
                e
            }
        })
    }

    fn parse_lines(name: &str, text: &str, overrides: &[String]) -> Result<Config> {
        let at_line = |e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| format!(":{}", line_of(text, s.start)))
                .unwrap_or_default();
            anyhow::anyhow!("{name}{line}: {}", e.message().trim())
        };
        let mut table: toml::Table = toml::from_str(text).map_err(at_line)?;
        apply_overrides(&mut table, overrides).with_context(|| name.to_string())?;
        let preset = expand_model_preset(&mut table).with_context(|| name.to_string())?;
        let cfg: Config = if overrides.is_empty() && !preset {
            toml::from_str(text).map_err(at_line)?
        } else {
            // Re-parse the merged config from text so an error can point at the offending line.
            let merged = toml::to_string(&table)?;
            toml::from_str(&merged).map_err(|e| {
                let at = e
                    .span()
                    .and_then(|s| merged.lines().nth(line_of(&merged, s.start) - 1))
                    .map(|l| format!(" at `{}`", l.trim()))
                    .unwrap_or_default();
                let with = if overrides.is_empty() {
                    "with model.preset"
                } else {
                    "with --set overrides"
                };
                anyhow::anyhow!("{name} ({with}){at}: {}", e.message().trim())
            })?
        };
        let mut cfg = cfg;
        cfg.expand_world_dir()
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        cfg.validate().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        Ok(cfg)
    }

    /// `{world}` in `data.tokenizer`, a source's `path` or an `[eval]` task file stands for
    /// `world.dir`, so that a config's paths follow its world when `--set world.dir=…` moves it.
    fn expand_world_dir(&mut self) -> Result<()> {
        const KEY: &str = "{world}";
        let mut paths: Vec<String> = vec![self.data.tokenizer.to_string_lossy().into_owned()];
        paths.extend(self.data.sources.iter().map(|s| s.path.clone()));
        if let Some(e) = &self.eval {
            paths.extend(e.tasks.iter().map(|t| t.to_string_lossy().into_owned()));
        }
        if !paths.iter().any(|p| p.contains(KEY)) {
            return Ok(());
        }
        let Some(w) = &self.world else {
            bail!("a path uses {KEY}, but the config has no [world] section");
        };
        let dir = w.dir.to_string_lossy().into_owned();
        let expand = |p: &str| p.replace(KEY, &dir);
        self.data.tokenizer = expand(&self.data.tokenizer.to_string_lossy()).into();
        for s in &mut self.data.sources {
            s.path = expand(&s.path);
        }
        if let Some(e) = &mut self.eval {
            for t in &mut e.tasks {
                *t = expand(&t.to_string_lossy()).into();
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        let d = &self.data;
        if d.seq_len == 0 {
            bail!("data.seq_len must be positive");
        }
        if d.batch_size == 0 {
            bail!("data.batch_size must be positive");
        }
        if !(0.0..1.0).contains(&d.val_fraction) {
            bail!("data.val_fraction = {} must be in [0, 1)", d.val_fraction);
        }
        if d.sources.is_empty() {
            bail!("data.sources is empty: list at least one [[data.sources]]");
        }
        for s in &d.sources {
            if !(s.weight.is_finite() && s.weight >= 0.0) {
                bail!(
                    "data.sources {:?}: weight {} must be a non-negative number",
                    s.name,
                    s.weight
                );
            }
        }
        if d.sources.iter().all(|s| s.weight == 0.0) {
            bail!("data.sources: every weight is 0");
        }
        let t = &self.train;
        if t.grad_accum == 0 {
            bail!("train.grad_accum must be positive");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("train.lr = {} must be a positive number", t.lr);
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) || !(0.0..=1.0).contains(&t.decay_fraction) {
            bail!("train.min_lr_ratio and train.decay_fraction must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&t.beta1)
            || !(0.0..1.0).contains(&t.beta2)
            || t.eps.is_nan()
            || t.eps <= 0.0
        {
            bail!("train: beta1 and beta2 must be in [0, 1) and eps positive");
        }
        if t.world_size == 0 {
            bail!("train.world_size must be positive");
        }
        if t.zero_stage > 3 {
            bail!(
                "train.zero_stage = {} is not a ZeRO stage: 0 (nothing sharded), 1 (master weights and moments), 2 (and gradients) or 3 (and the weights themselves)",
                t.zero_stage
            );
        }
        let positive = |x: f64| x > 0.0 && x.is_finite();
        if !positive(t.bucket_mb) || !positive(t.comm_timeout_s) {
            bail!("train.bucket_mb and train.comm_timeout_s must be positive numbers");
        }
        if t.weight_decay < 0.0 || t.grad_clip < 0.0 || t.peak_tflops < 0.0 {
            bail!("train: weight_decay, grad_clip and peak_tflops must not be negative");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let c = Config::load(None, &[]).unwrap();
        assert!(!c.data.sources.is_empty());
    }

    #[test]
    fn overrides_apply_and_type_errors_are_reported() {
        let c = Config::load(None, &["data.seq_len=64".into(), "data.seed=9".into()]).unwrap();
        assert_eq!((c.data.seq_len, c.data.seed), (64, 9));
        let e = Config::load(None, &["data.seq_len=abc".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("seq_len") || e.contains("invalid type"), "{e}");
        let e = Config::load(None, &["data.nonsense=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `nonsense`"), "{e}");
    }

    #[test]
    fn a_model_preset_fills_the_shape_and_the_sections_keys_win() {
        let text = "[data]\ntokenizer = \"t.json\"\nseq_len = 8\nbatch_size = 1\n[[data.sources]]\nname = \"a\"\npath = \"a_*.kiln\"\nweight = 1.0\n[model]\npreset = \"llama3-8b\"\nmax_seq_len = 4096\n";
        let m = Config::parse("x.toml", text, &[]).unwrap().model.unwrap();
        let want = Preset::Llama3_8b.config();
        assert_eq!((m.dim, m.n_layers, m.ffn_dim), (4096, 32, 14336));
        assert_eq!(m.rope_theta, want.rope_theta);
        assert_eq!(m.max_seq_len, 4096);
        let m = Config::parse("x.toml", text, &["model.n_layers=2".into()])
            .unwrap()
            .model
            .unwrap();
        assert_eq!((m.dim, m.n_layers), (4096, 2));
        let bad = text.replace("llama3-8b", "llama9");
        let e = Config::parse("x.toml", &bad, &[]).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains(
                "x.toml: model.preset = \"llama9\": expected one of tiny, llama3-8b, mistral-7b"
            ),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let text = "[data]\ntokenizer = \"t.json\"\nseq_len = 8\nbatch_size = 1\nbogus = 1\nsources = []\n";
        let e = Config::parse("x.toml", text, &[]).unwrap_err().to_string();
        assert!(e.starts_with("x.toml:5: unknown field `bogus`"), "{e}");
        let text =
            "[data]\ntokenizer = \"t.json\"\nseq_len = \"eight\"\nbatch_size = 1\nsources = []\n";
        let e = Config::parse("x.toml", text, &[]).unwrap_err().to_string();
        assert!(e.starts_with("x.toml:3: invalid type"), "{e}");
    }
}
