//! The model's shape: every dimension of a Llama-family transformer, read from `[model]` in a run
//! config (or, later, from a Hugging Face config.json), validated, with the parameter list in
//! Hugging Face naming and the FLOP count MFU is computed from.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Llama-3.1 RoPE frequency scaling (`rope_scaling` with `rope_type = "llama3"` in HF configs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// V; 0 means "the tokenizer's vocabulary size".
    #[serde(default)]
    pub vocab_size: usize,
    /// d (hidden_size)
    #[serde(default)]
    pub dim: usize,
    /// L (num_hidden_layers)
    #[serde(default)]
    pub n_layers: usize,
    /// H (num_attention_heads)
    #[serde(default)]
    pub n_heads: usize,
    /// Hkv (num_key_value_heads); divides H.
    #[serde(default)]
    pub n_kv_heads: usize,
    /// F (intermediate_size)
    #[serde(default)]
    pub ffn_dim: usize,
    /// D; default d / H.
    #[serde(default)]
    pub head_dim: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub tie_embeddings: bool,
    /// Longest position the RoPE tables cover (generation included).
    #[serde(default = "default_max_seq")]
    pub max_seq_len: usize,
    /// Standard deviation of the normal initialisation.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Mistral's sliding attention window: each query attends its last `sliding_window` keys.
    /// Generation applies it in the KV cache; training refuses sequences longer than it (its
    /// attention is full causal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Biases on the q, k, v and o projections (Hugging Face `attention_bias`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub attention_bias: bool,
    /// Biases on the gate, up and down projections (Hugging Face `mlp_bias`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub mlp_bias: bool,
    /// Initialise from a Hugging Face directory (`hf:PATH`) instead of randomly; the shape fields
    /// are then taken from its config.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_theta() -> f64 {
    10000.0
}
fn default_eps() -> f64 {
    1e-5
}
fn default_max_seq() -> usize {
    2048
}
fn default_init_std() -> f64 {
    0.02
}

/// One parameter tensor: Hugging Face name, shape, and whether weight decay applies.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub decay: bool,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl ModelConfig {
    /// Fill defaults that depend on other values (head_dim, vocab from the tokenizer) and validate.
    pub fn resolve(&mut self, tokenizer_vocab: usize) -> Result<()> {
        if self.vocab_size == 0 {
            self.vocab_size = tokenizer_vocab;
        }
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || self.dim == 0
            || self.n_layers == 0
            || self.ffn_dim == 0
        {
            bail!("model: dim, n_layers, n_heads, n_kv_heads and ffn_dim must all be positive");
        }
        // Bounds far past any real model, so that a corrupt config cannot make kiln list or
        // allocate billions of parameters before the weights are read.
        for (name, value, most) in [
            ("n_layers", self.n_layers, 1 << 16),
            ("dim", self.dim, 1 << 20),
            ("ffn_dim", self.ffn_dim, 1 << 22),
            ("n_heads", self.n_heads, 1 << 16),
            ("head_dim", self.head_dim, 1 << 16),
            ("vocab_size", self.vocab_size, 1 << 26),
            ("max_seq_len", self.max_seq_len, 1 << 24),
        ] {
            if value > most {
                bail!("model: {name} = {value} is larger than kiln supports ({most})");
            }
        }
        if self.head_dim == 0 {
            if !self.dim.is_multiple_of(self.n_heads) {
                bail!("model: n_heads = {} does not divide dim = {} (set head_dim explicitly if that is intended)", self.n_heads, self.dim);
            }
            self.head_dim = self.dim / self.n_heads;
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            bail!(
                "model: n_kv_heads = {} does not divide n_heads = {}",
                self.n_kv_heads,
                self.n_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("model: head_dim = {} must be even for RoPE", self.head_dim);
        }
        if self.vocab_size < tokenizer_vocab {
            bail!(
                "model: vocab_size = {} is smaller than the tokenizer's {} ids",
                self.vocab_size,
                tokenizer_vocab
            );
        }
        if [self.rope_theta, self.norm_eps, self.init_std]
            .iter()
            .any(|x| x.is_nan() || *x <= 0.0)
        {
            bail!("model: rope_theta, norm_eps and init_std must be positive");
        }
        Ok(())
    }

    /// Every parameter in a fixed order, with Hugging Face names.
    pub fn params(&self) -> Vec<ParamInfo> {
        let (d, f, v) = (self.dim, self.ffn_dim, self.vocab_size);
        let (qd, kvd) = (
            self.n_heads * self.head_dim,
            self.n_kv_heads * self.head_dim,
        );
        let p = |name: String, shape: Vec<usize>| ParamInfo {
            decay: shape.len() == 2,
            name,
            shape,
        };
        let mut out = vec![p("model.embed_tokens.weight".into(), vec![v, d])];
        for i in 0..self.n_layers {
            let l = format!("model.layers.{i}");
            out.push(p(format!("{l}.input_layernorm.weight"), vec![d]));
            out.push(p(format!("{l}.self_attn.q_proj.weight"), vec![qd, d]));
            out.push(p(format!("{l}.self_attn.k_proj.weight"), vec![kvd, d]));
            out.push(p(format!("{l}.self_attn.v_proj.weight"), vec![kvd, d]));
            out.push(p(format!("{l}.self_attn.o_proj.weight"), vec![d, qd]));
            if self.attention_bias {
                for (name, width) in [("q", qd), ("k", kvd), ("v", kvd), ("o", d)] {
                    out.push(p(format!("{l}.self_attn.{name}_proj.bias"), vec![width]));
                }
            }
            out.push(p(format!("{l}.post_attention_layernorm.weight"), vec![d]));
            out.push(p(format!("{l}.mlp.gate_proj.weight"), vec![f, d]));
            out.push(p(format!("{l}.mlp.up_proj.weight"), vec![f, d]));
            out.push(p(format!("{l}.mlp.down_proj.weight"), vec![d, f]));
            if self.mlp_bias {
                for (name, width) in [("gate", f), ("up", f), ("down", d)] {
                    out.push(p(format!("{l}.mlp.{name}_proj.bias"), vec![width]));
                }
            }
        }
        out.push(p("model.norm.weight".into(), vec![d]));
        if !self.tie_embeddings {
            out.push(p("lm_head.weight".into(), vec![v, d]));
        }
        out
    }

    pub fn num_params(&self) -> usize {
        self.params().iter().map(ParamInfo::numel).sum()
    }

    /// N in the MFU formula: parameters excluding the embedding table (an untied lm_head counts).
    pub fn num_params_non_embedding(&self) -> usize {
        self.num_params() - self.vocab_size * self.dim
    }

    /// Training FLOPs per token: 6·N + 12·L·d·T with d = H·D (PaLM / torchtitan, no causal discount).
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        6.0 * self.num_params_non_embedding() as f64
            + 12.0 * (self.n_layers * self.n_heads * self.head_dim * seq_len) as f64
    }

    /// RoPE inverse frequencies (D/2 of them), with Llama-3.1 scaling when configured.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let inv = 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64);
                match self.rope_scaling {
                    None => inv,
                    Some(s) => {
                        let old = s.original_max_position_embeddings as f64;
                        let low_wavelen = old / s.low_freq_factor;
                        let high_wavelen = old / s.high_freq_factor;
                        let wavelen = 2.0 * std::f64::consts::PI / inv;
                        if wavelen < high_wavelen {
                            inv
                        } else if wavelen > low_wavelen {
                            inv / s.factor
                        } else {
                            let smooth = (old / wavelen - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * inv / s.factor + smooth * inv
                        }
                    }
                }
            })
            .collect()
    }

    /// cos and sin tables [max_seq_len, D/2].
    pub fn rope_tables(&self) -> (Vec<f32>, Vec<f32>) {
        let inv = self.rope_inv_freq();
        let mut cos = Vec::with_capacity(self.max_seq_len * inv.len());
        let mut sin = Vec::with_capacity(self.max_seq_len * inv.len());
        for pos in 0..self.max_seq_len {
            for &f in &inv {
                let a = pos as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        (cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        toml::from_str("dim = 64\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nffn_dim = 96\n")
            .unwrap()
    }

    #[test]
    fn params_have_hf_names_and_counts() {
        let mut c = cfg();
        c.resolve(100).unwrap();
        let p = c.params();
        assert_eq!(p[0].name, "model.embed_tokens.weight");
        assert_eq!(p[2].name, "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(p[3].shape, vec![32, 64]); // 2 kv heads × 16
        assert_eq!(p.last().unwrap().name, "lm_head.weight");
        let per_layer = 64 + 64 * 64 + 2 * 32 * 64 + 64 * 64 + 64 + 3 * 96 * 64;
        assert_eq!(c.num_params(), 2 * 100 * 64 + 2 * per_layer + 64);
        c.tie_embeddings = true;
        assert_eq!(c.params().last().unwrap().name, "model.norm.weight");
    }

    #[test]
    fn impossible_shapes_are_refused() {
        let mut c = cfg();
        c.n_kv_heads = 3;
        assert!(c
            .resolve(100)
            .unwrap_err()
            .to_string()
            .contains("n_kv_heads = 3 does not divide n_heads = 4"));
        let mut c = cfg();
        c.n_heads = 5;
        assert!(c
            .resolve(100)
            .unwrap_err()
            .to_string()
            .contains("n_heads = 5 does not divide dim = 64"));
    }

    #[test]
    fn llama3_rope_scaling_matches_reference_values() {
        // Llama-3.1-8B: theta 500000, factor 8, low 1, high 4, original 8192, head_dim 128.
        let mut c = cfg();
        c.head_dim = 128;
        c.rope_theta = 500000.0;
        c.rope_scaling = Some(RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        let inv = c.rope_inv_freq();
        assert_eq!(inv[0], 1.0); // high frequency: unchanged
        let base = |i: usize| 1.0 / 500000f64.powf(2.0 * i as f64 / 128.0);
        assert!((inv[63] - base(63) / 8.0).abs() < 1e-18); // low frequency: divided by 8
                                                           // A smoothed band exists between.
        assert!((0..64).any(|i| inv[i] < base(i) && inv[i] > base(i) / 8.0));
    }
}
