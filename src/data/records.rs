//! JSONL record types shared by `kiln prep`, `kiln synth` and `kiln world`.
//!
//! An augmented record is one raw text with the instruction–response pairs synthesized for it.
//! Records that share a `chain` id came from one multi-round synthesis chain and render into one
//! few-shot pre-training document, in file order.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One instruction–response pair. Multiple-choice and chain-of-thought pairs keep the
/// synthesizer's in-string encoding (`\nOptions:\n- a\n- b` in `q`; `\nLet's think step by
/// step.` at the end of `q` and `\nTherefore, the answer is X` at the end of `a`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    pub q: String,
    pub a: String,
}

/// `{"text": ..., "pairs": [{"q": ..., "a": ...}], "chain": id?}`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AugmentedRecord {
    /// `context` is accepted too: the synthesizer's fine-tuning collection, mixed into
    /// pre-training from scratch, renders like augmented records.
    #[serde(alias = "context")]
    pub text: String,
    #[serde(default)]
    pub pairs: Vec<Pair>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<serde_json::Value>,
}

/// A synthesizer fine-tuning record: `{"text" (or "context"): ..., "pairs": [...], "source": id?}`.
/// `source` only groups adjacent records (`kiln prep` reads it on its own); unknown fields are
/// ignored.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FinetuneRecord {
    /// `context` is the field name of the authors' fine-tuning collection.
    #[serde(alias = "context")]
    pub text: String,
    #[serde(default)]
    pub pairs: Vec<Pair>,
}

/// One JSONL line as a record, or a one-line description of what is wrong with it.
pub fn parse_record<T: DeserializeOwned>(line: &str) -> Result<T, String> {
    serde_json::from_str(line).map_err(|e| format!("invalid record: {e}"))
}
