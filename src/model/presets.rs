//! Named model shapes, the one home of each: `[model] preset = "llama3-8b"` in a run config,
//! `kiln bench --preset`, and `kiln bench generate --preset` all read them from here. A config's
//! own `[model]` keys override the preset's.

use serde::{Deserialize, Serialize};

use super::config::ModelConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// The embedded default's model (configs/tiny.toml): 4 layers, d = 128; the vocabulary comes
    /// from the tokenizer.
    Tiny,
    /// Llama-3-8B.
    #[serde(rename = "llama3-8b")]
    #[value(name = "llama3-8b")]
    Llama3_8b,
    /// Mistral-7B, the instruction synthesizer's shape.
    #[serde(rename = "mistral-7b")]
    #[value(name = "mistral-7b")]
    Mistral7b,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::Tiny, Preset::Llama3_8b, Preset::Mistral7b];

    /// The name a config or the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Llama3_8b => "llama3-8b",
            Preset::Mistral7b => "mistral-7b",
        }
    }

    pub fn from_name(name: &str) -> Option<Preset> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The shape, unresolved (`vocab_size` 0 means the tokenizer's; see [`ModelConfig::resolve`]).
    pub fn config(self) -> ModelConfig {
        let base = ModelConfig {
            vocab_size: 0,
            dim: 0,
            n_layers: 0,
            n_heads: 0,
            n_kv_heads: 0,
            ffn_dim: 0,
            head_dim: 0,
            rope_theta: 10000.0,
            rope_scaling: None,
            norm_eps: 1e-5,
            tie_embeddings: false,
            max_seq_len: 2048,
            init_std: 0.02,
            sliding_window: None,
            attention_bias: false,
            mlp_bias: false,
            init_from: None,
        };
        match self {
            Preset::Tiny => ModelConfig {
                dim: 128,
                n_layers: 4,
                n_heads: 4,
                n_kv_heads: 2,
                ffn_dim: 352,
                tie_embeddings: true,
                ..base
            },
            Preset::Llama3_8b => ModelConfig {
                vocab_size: 128256,
                dim: 4096,
                n_layers: 32,
                n_heads: 32,
                n_kv_heads: 8,
                ffn_dim: 14336,
                rope_theta: 500000.0,
                max_seq_len: 8192,
                ..base
            },
            Preset::Mistral7b => ModelConfig {
                vocab_size: 32000,
                dim: 4096,
                n_layers: 32,
                n_heads: 32,
                n_kv_heads: 8,
                ffn_dim: 14336,
                rope_theta: 1000000.0,
                max_seq_len: 32768,
                ..base
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_resolves_and_its_name_round_trips() {
        for p in Preset::ALL {
            assert_eq!(Preset::from_name(p.name()), Some(p));
            let mut m = p.config();
            m.resolve(2048).unwrap();
            assert_eq!(m.head_dim, if p == Preset::Tiny { 32 } else { 128 });
        }
        let mut m = Preset::Llama3_8b.config();
        m.resolve(128256).unwrap();
        // Llama-3-8B has 8.03 B parameters.
        assert_eq!(m.num_params(), 8_030_261_248);
    }
}
