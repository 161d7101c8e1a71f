//! The data path: tokenizers, token shards, the synthesizer's text format, templating of
//! instruction-augmented documents, synthesizer fine-tuning sequences, `kiln prep`, and the
//! mixture and packing loader. (The embedded synthetic world lives in `src/world/`, a layer above.)

pub mod augment;
pub mod bpe;
pub mod finetune;
pub mod input;
pub mod loader;
pub mod prep;
pub mod pretokenize;
pub mod records;
pub mod shard;
pub mod synth_format;
pub mod templates;
pub mod text_lines;
pub mod tokenizer;
