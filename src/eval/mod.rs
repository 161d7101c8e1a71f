//! Evaluation: multiple-choice and completion tasks scored the way the paper's domain harness
//! does (PAPER.md §5.3), and held-out loss.
//!
//! * Multiple choice (`{"input", "options", "gold_index"}`): each option is scored by the
//!   negative log-likelihood of `" " + option` after the prompt. Three normalisations are
//!   reported: mean per token (the paper's), per byte of the option (lm-evaluation-harness's
//!   acc_norm), and the raw sum (acc); the lowest NLL wins.
//! * Completion (`{"input", "answer"}`): greedy decoding stopped at the first newline (or after
//!   `max_new_tokens`), scored by exact match and token F1 against the answer, both trimmed.
//!
//! Sequences are BOS + prompt + continuation, batched into rows padded at the end (causal
//! attention makes the padding invisible to the scored positions).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::backend::{Backend, GenerationBackend};
use crate::data::tokenizer::Tokenizer;
use crate::model::generate::Sampling;
use crate::model::Model;

/// One task item.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    MultipleChoice {
        input: String,
        options: Vec<String>,
        gold: usize,
    },
    Completion {
        input: String,
        answer: String,
    },
}

/// Read a task file: every line one item; a malformed line is an error naming file and line.
pub fn read_tasks(path: &Path) -> Result<Vec<Item>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read task file", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{n}", path.display());
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}: invalid JSON: {e}", at()))?;
        let Some(input) = v.get("input").and_then(|x| x.as_str()) else {
            bail!("{}: no \"input\" string", at());
        };
        let item = match (v.get("options"), v.get("answer")) {
            (Some(opts), _) => {
                let Some(opts) = opts.as_array() else {
                    bail!("{}: \"options\" is not a list", at());
                };
                let options: Vec<String> = opts.iter().filter_map(|o| o.as_str().map(String::from)).collect();
                if options.len() != opts.len() || options.len() < 2 {
                    bail!("{}: \"options\" must be a list of at least two strings", at());
                }
                let gold = v
                    .get("gold_index")
                    .or_else(|| v.get("label"))
                    .and_then(|g| g.as_u64())
                    .ok_or_else(|| anyhow::anyhow!("{}: no \"gold_index\" (a non-negative integer)", at()))? as usize;
                if gold >= options.len() {
                    bail!("{}: gold_index {gold} is out of range for {} options", at(), options.len());
                }
                Item::MultipleChoice { input: input.to_string(), options, gold }
            }
            (None, Some(ans)) => match ans.as_str() {
                Some(a) => Item::Completion { input: input.to_string(), answer: a.to_string() },
                None => bail!("{}: \"answer\" is not a string", at()),
            },
            (None, None) => bail!("{}: neither \"options\" with \"gold_index\" (multiple choice) nor \"answer\" (completion)", at()),
        };
        items.push(item);
    }
    if items.is_empty() {
        bail!("{}: no task items", path.display());
    }
    Ok(items)
}

/// Scores of one task file.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct TaskScores {
    pub task: String,
    pub items: usize,
    /// Multiple choice: accuracy under each normalisation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub acc_mean_token: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub acc_per_byte: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub acc_sum: Option<f64>,
    /// Completion: exact match and token F1.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exact_match: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub f1: Option<f64>,
}

/// Negative log-likelihoods of `continuation` token ids given the preceding ids, for many
/// (prefix, continuation) pairs, batched `batch` rows at a time.
pub fn continuation_nll<B: Backend>(
    be: &B,
    model: &Model<B>,
    pairs: &[(Vec<u32>, Vec<u32>)],
    batch: usize,
) -> Vec<Vec<f64>> {
    let v = model.cfg.vocab_size;
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let t = chunk
            .iter()
            .map(|(p, c)| p.len() + c.len())
            .max()
            .unwrap_or(1)
            .min(model.cfg.max_seq_len);
        let mut ws = model.workspace(be, chunk.len(), t);
        let mut ids = Vec::with_capacity(chunk.len() * t);
        let mut starts = Vec::new();
        for (p, c) in chunk {
            let mut row: Vec<u32> = p.iter().chain(c).copied().collect();
            // Keep the end (the continuation) when a row exceeds the context: left truncation.
            if row.len() > t {
                row.drain(..row.len() - t);
            }
            starts.push(row.len() - c.len());
            row.resize(t, 0);
            ids.extend(row);
        }
        model.forward(be, &mut ws, &ids, &vec![0; chunk.len() * t]);
        let logits = be.download(&ws.logits);
        for (r, (_, c)) in chunk.iter().enumerate() {
            let nll = (0..c.len())
                .map(|j| {
                    // Position start+j−1 predicts token start+j.
                    let pos = starts[r] + j - 1;
                    let row = &logits[(r * t + pos) * v..(r * t + pos + 1) * v];
                    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                    let lse = max
                        + row
                            .iter()
                            .map(|&x| (x as f64 - max).exp())
                            .sum::<f64>()
                            .ln();
                    lse - row[c[j] as usize] as f64
                })
                .collect();
            out.push(nll);
        }
    }
    out
}

/// The winning option under mean-per-token, per-byte and sum normalisations.
pub fn choose(nlls: &[Vec<f64>], options: &[String]) -> (usize, usize, usize) {
    let argmin = |score: &dyn Fn(usize) -> f64| {
        (0..nlls.len())
            .min_by(|&a, &b| score(a).total_cmp(&score(b)))
            .unwrap_or(0)
    };
    let sum = |i: usize| nlls[i].iter().sum::<f64>();
    (
        argmin(&|i| sum(i) / nlls[i].len().max(1) as f64),
        argmin(&|i| sum(i) / (options[i].len() + 1).max(1) as f64),
        argmin(&sum),
    )
}

/// Token F1 between whitespace-split prediction and answer (SQuAD style, case-insensitive).
pub fn token_f1(pred: &str, answer: &str) -> f64 {
    let p: Vec<String> = pred.split_whitespace().map(str::to_lowercase).collect();
    let a: Vec<String> = answer.split_whitespace().map(str::to_lowercase).collect();
    if p.is_empty() || a.is_empty() {
        return (p.is_empty() && a.is_empty()) as u8 as f64;
    }
    let mut remaining = a.clone();
    let mut common = 0;
    for w in &p {
        if let Some(i) = remaining.iter().position(|x| x == w) {
            remaining.swap_remove(i);
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let (prec, rec) = (
        common as f64 / p.len() as f64,
        common as f64 / a.len() as f64,
    );
    2.0 * prec * rec / (prec + rec)
}

/// Token ids whose text contains a newline, and EOS: where a completion stops.
pub fn stop_tokens(tok: &Tokenizer, vocab: usize) -> Vec<u32> {
    let mut stop: Vec<u32> = (0..vocab.min(tok.vocab_size() as usize) as u32)
        .filter(|&id| {
            tok.decode(&[id], false)
                .map(|s| s.contains('\n'))
                .unwrap_or(false)
        })
        .collect();
    stop.extend(tok.eos());
    stop
}

/// Greedy completion of `prompt` ids, stopped at the first newline (`stop` from [`stop_tokens`]).
pub fn complete<B: GenerationBackend>(
    be: &B,
    model: &Model<B>,
    tok: &Tokenizer,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
) -> Result<String> {
    let ids = model.generate(be, prompt, max_new, stop, Sampling::default());
    let text = tok.decode(&ids, true)?;
    Ok(text.split('\n').next().unwrap_or("").to_string())
}

/// Score one task file.
pub fn evaluate<B: GenerationBackend>(
    be: &B,
    model: &Model<B>,
    tok: &Tokenizer,
    name: &str,
    items: &[Item],
    batch: usize,
    max_new: usize,
) -> Result<TaskScores> {
    let bos: Vec<u32> = tok.bos().into_iter().collect();
    let encode = |s: &str| -> Result<Vec<u32>> { tok.encode(s) };
    let mut scores = TaskScores {
        task: name.to_string(),
        items: items.len(),
        ..Default::default()
    };
    let (mut mc, mut hits) = (0usize, [0usize; 3]);
    let (mut qa, mut em, mut f1) = (0usize, 0usize, 0.0);
    let mut pairs = Vec::new();
    for item in items {
        if let Item::MultipleChoice { input, options, .. } = item {
            let mut prefix = bos.clone();
            prefix.extend(encode(input)?);
            for o in options {
                pairs.push((prefix.clone(), encode(&format!(" {o}"))?));
            }
        }
    }
    if let Some(w) = model.cfg.sliding_window {
        // Scoring runs the training forward, whose attention is full causal.
        let longest = pairs
            .iter()
            .map(|(p, c)| p.len() + c.len())
            .max()
            .unwrap_or(0)
            .min(model.cfg.max_seq_len);
        if longest > w {
            bail!(
                "{name}: an item of {longest} tokens is longer than the model's sliding window of {w}; kiln scores with full causal attention, which would differ from the model past its window"
            );
        }
    }
    let nlls = continuation_nll(be, model, &pairs, batch);
    let stop = stop_tokens(tok, model.cfg.vocab_size);
    let mut k = 0;
    for item in items {
        match item {
            Item::MultipleChoice { options, gold, .. } => {
                let picks = choose(&nlls[k..k + options.len()], options);
                k += options.len();
                mc += 1;
                for (h, p) in hits.iter_mut().zip([picks.0, picks.1, picks.2]) {
                    *h += (p == *gold) as usize;
                }
            }
            Item::Completion { input, answer } => {
                let mut prompt = bos.clone();
                prompt.extend(encode(input)?);
                let pred = complete(be, model, tok, &prompt, max_new, &stop)?;
                qa += 1;
                em += (pred.trim() == answer.trim()) as usize;
                f1 += token_f1(&pred, answer);
            }
        }
    }
    if mc > 0 {
        scores.acc_mean_token = Some(hits[0] as f64 / mc as f64);
        scores.acc_per_byte = Some(hits[1] as f64 / mc as f64);
        scores.acc_sum = Some(hits[2] as f64 / mc as f64);
    }
    if qa > 0 {
        scores.exact_match = Some(em as f64 / qa as f64);
        scores.f1 = Some(f1 / qa as f64);
    }
    Ok(scores)
}

/// Mean loss and perplexity over `batches` batches of shards matching `glob` (in file order).
pub fn heldout_loss<B: Backend>(
    be: &B,
    model: &Model<B>,
    tok: &Tokenizer,
    glob: &str,
    batch: usize,
    seq: usize,
    batches: usize,
) -> Result<(f64, f64)> {
    use crate::data::loader::{Loader, LoaderOptions, SourceSpec, Split};
    if let Some(w) = model.cfg.sliding_window.filter(|&w| seq > w) {
        bail!(
            "held-out sequences of {seq} tokens are longer than the model's sliding window of {w} (kiln scores with full causal attention): give --seq-len {w} or less"
        );
    }
    if seq > model.cfg.max_seq_len {
        bail!(
            "held-out sequences of {seq} tokens are longer than the model's {} positions",
            model.cfg.max_seq_len
        );
    }
    let spec = [SourceSpec {
        name: "heldout".into(),
        path: glob.to_string(),
        weight: 1.0,
    }];
    let opts = LoaderOptions {
        seq_len: seq,
        batch_size: batch,
        seed: 0,
        shuffle: false,
        val_fraction: 0.0,
        rank: 0,
        world_size: 1,
        vocab_size: tok.vocab_size(),
        fingerprint: Some(tok.fingerprint()),
        delimiter: tok.bos().or(tok.eos()),
    };
    let mut loader = Loader::new(&spec, opts, Split::Train, Path::new("."))?;
    let mut ws = model.workspace(be, batch, seq);
    let (mut sum, mut count) = (0.0, 0u64);
    for _ in 0..batches.max(1) {
        let b = loader.next_batch();
        model.forward(be, &mut ws, &b.inputs, &b.doc_ids);
        sum += model.loss(be, &mut ws, &b.targets, &b.loss_mask, 0.0);
        count += b.loss_mask.iter().map(|&m| m as u64).sum::<u64>();
    }
    let loss = sum / count.max(1) as f64;
    Ok((loss, loss.exp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_normalisations_can_disagree_as_computed_by_hand() {
        // Option 0: 1 token, NLL 2.0 (mean 2.0, per byte 2/2 = 1.0, sum 2.0).
        // Option 1: 3 tokens, NLLs 1.0 each (mean 1.0, per byte 3/11 ≈ 0.27, sum 3.0).
        // Option 2: 2 tokens, NLL 0.9 + 0.9 (mean 0.9, per byte 1.8/3 = 0.6, sum 1.8).
        let nlls = vec![vec![2.0], vec![1.0, 1.0, 1.0], vec![0.9, 0.9]];
        let options = vec!["a".to_string(), "longeroptio".to_string(), "bc".to_string()];
        assert_eq!(choose(&nlls, &options), (2, 1, 2));
        let nlls = vec![vec![1.5], vec![0.8, 0.8]];
        let options = vec!["x".to_string(), "yy".to_string()];
        // mean: 1.5 vs 0.8 → 1; per byte: 1.5/2 = 0.75 vs 1.6/3 ≈ 0.53 → 1; sum: 1.5 vs 1.6 → 0.
        assert_eq!(choose(&nlls, &options), (1, 1, 0));
    }

    #[test]
    fn token_f1_is_squad_style() {
        assert_eq!(token_f1("Paris", "paris"), 1.0);
        assert_eq!(token_f1("the city of Paris", "Paris"), 0.4);
        assert_eq!(token_f1("London", "Paris"), 0.0);
        assert_eq!(token_f1("", ""), 1.0);
    }

    #[test]
    fn task_lines_are_validated_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let check = |body: &str, needle: &str| {
            std::fs::write(&p, body).unwrap();
            let e = format!("{:#}", read_tasks(&p).unwrap_err());
            assert!(e.contains("t.jsonl:") && e.contains(needle), "{e}");
        };
        check(
            "{\"input\": \"q\", \"options\": [\"a\", \"b\"]}\n",
            "no \"gold_index\"",
        );
        check(
            "{\"input\": \"q\", \"options\": [\"a\", \"b\"], \"gold_index\": 2}\n",
            "gold_index 2 is out of range",
        );
        check("{\"input\": \"q\"}\n", "neither");
        check("{\"input\": \"q\", \"answer\": \"a\"}\n{\"options\": [\"a\", \"b\"], \"gold_index\": 0}\n", ":2: no \"input\"");
        std::fs::write(&p, "{\"input\": \"q\", \"options\": [\"a\", \"b\"], \"gold_index\": 1}\n{\"input\": \"q\", \"answer\": \"x\"}\n").unwrap();
        assert_eq!(read_tasks(&p).unwrap().len(), 2);
    }

    #[test]
    fn scoring_picks_what_the_model_assigns_the_highest_likelihood() {
        use crate::backend::cpu::CpuBackend;
        // Train nothing: compare the batched NLL with a one-row forward pass computed directly.
        let be = CpuBackend::<f32>::new();
        let mut cfg: crate::model::ModelConfig =
            toml::from_str("vocab_size = 50\ndim = 32\nn_layers = 1\nn_heads = 4\nn_kv_heads = 2\nffn_dim = 48\nmax_seq_len = 32\ninit_std = 0.5\n").unwrap();
        cfg.resolve(50).unwrap();
        let model = Model::new(&be, &cfg, 3);
        let pairs = vec![
            (vec![1, 2, 3], vec![4, 5]),
            (vec![1, 2], vec![7]),
            (vec![9, 9, 9, 9], vec![3, 3, 3]),
        ];
        let batched = continuation_nll(&be, &model, &pairs, 2);
        for (k, (p, c)) in pairs.iter().enumerate() {
            let alone = continuation_nll(&be, &model, &[(p.clone(), c.clone())], 1);
            for (a, b) in alone[0].iter().zip(&batched[k]) {
                assert!((a - b).abs() < 1e-5, "padding changed a score: {a} vs {b}");
            }
        }
        // By hand for the first pair: NLL of 4 after [1,2,3] from the logits at position 2.
        let mut ws = model.workspace(&be, 1, 5);
        model.forward(&be, &mut ws, &[1, 2, 3, 4, 5], &[0; 5]);
        let logits = be.download(&ws.logits);
        let row = &logits[2 * 50..3 * 50];
        let lse = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        assert!((lse - row[4] as f64 - batched[0][0]).abs() < 1e-5);
    }
}
