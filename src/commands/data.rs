//! The data commands: `kiln tokenizer` (train a byte-level BPE, encode), `kiln prep` (text to
//! token shards) and `kiln data` (what the loader will feed a config).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;

use super::set_threads;
use crate::cli::{DataArgs, PrepArgs, TokenizerCommand};
use crate::config::Config;
use crate::data::loader::{Loader, Split};
use crate::data::prep::{prep, PrepOptions};
use crate::data::text_lines::TextLines;
use crate::data::tokenizer::{train_byte_level_bpe, Tokenizer};
use crate::world::ensure_world;

pub fn tokenizer(cmd: TokenizerCommand) -> Result<()> {
    match cmd {
        TokenizerCommand::Train {
            input,
            vocab_size,
            out,
            field,
        } => {
            let t = Instant::now();
            // Stream the inputs into the trainer; the first bad line stops it and is reported.
            let error: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
            let texts = TextLines::new(input, field, error.clone());
            train_byte_level_bpe(texts, vocab_size, &out)?;
            if let Some(e) = error.lock().expect("poisoned").take() {
                let _ = std::fs::remove_file(&out);
                return Err(e);
            }
            let tok = Tokenizer::from_file(&out, None, None)?;
            eprintln!(
                "tokenizer: {} ids, fast encoder: {}, written to {} ({:.1}s)",
                tok.vocab_size(),
                if tok.is_fast() { "yes" } else { "no" },
                out.display(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        TokenizerCommand::Encode { tokenizer, text } => {
            let tok = Tokenizer::from_file(&tokenizer, None, None)?;
            let ids = tok.encode(&text)?;
            println!("{}", serde_json::to_string(&ids)?);
            Ok(())
        }
    }
}

pub fn prep_cmd(a: PrepArgs) -> Result<()> {
    set_threads(a.threads.unwrap_or(0));
    let tok = Tokenizer::from_file(&a.tokenizer, a.bos_token.as_deref(), a.eos_token.as_deref())?;
    let filters = a
        .filter
        .iter()
        .map(|f| crate::data::input::Filter::parse(f))
        .collect::<Result<Vec<_>>>()?;
    let opts = PrepOptions {
        inputs: a.input,
        format: a.format,
        kind: a.kind,
        field: a.field,
        instruction_field: a.instruction_field,
        response_field: a.response_field,
        filters,
        text_split: a.text_split,
        out_dir: a.out,
        name: a.name.clone(),
        shard_bytes: a.shard_size,
        skip_bad_lines: a.skip_bad_lines,
        seed: a.seed,
        finetune_max_tokens: a.max_tokens,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ..PrepOptions::default()
    };
    let stats = prep(&tok, &opts)?;
    eprintln!("{}", stats.report(&a.name));
    Ok(())
}

pub fn data(a: DataArgs) -> Result<()> {
    let cfg = Config::load(a.config.config.as_deref(), &a.config.overrides)?;
    if let Some(w) = &cfg.world {
        ensure_world(w, &cfg, false, true)?;
    }
    let d = &cfg.data;
    let tok = Tokenizer::from_file(&d.tokenizer, d.bos_token.as_deref(), d.eos_token.as_deref())?;
    let opts = crate::train::setup::loader_options(&cfg, &tok, 0, 1);
    let mut loader = Loader::new(&d.sources, opts, Split::Train, Path::new("."))?;
    let planned = a.tokens.unwrap_or_else(|| loader.split_tokens());
    println!(
        "{:<16} {:>7} {:>10} {:>13} {:>8} {:>8}",
        "source", "shards", "documents", "train tokens", "weight", "epochs"
    );
    for r in loader.report(planned) {
        println!(
            "{:<16} {:>7} {:>10} {:>13} {:>8.3} {:>8.2}",
            r.name, r.shards, r.documents, r.tokens, r.weight, r.epochs
        );
    }
    println!("planned tokens: {planned}");
    let batch = loader.next_batch();
    for row in 0..a.show.min(batch.batch_size) {
        let t = batch.seq_len;
        let ids = &batch.inputs[row * t..(row + 1) * t];
        let docs = batch.doc_ids[row * t..(row + 1) * t]
            .iter()
            .max()
            .map_or(0, |m| m + 1);
        println!(
            "--- row {row}: {docs} document(s), {} of {t} targets in the loss",
            batch.loss_mask[row * t..(row + 1) * t]
                .iter()
                .filter(|&&m| m == 1)
                .count()
        );
        println!("{}", tok.decode(ids, false)?);
    }
    if a.time_batches > 0 {
        let t = Instant::now();
        let mut tokens = 0usize;
        for _ in 0..a.time_batches {
            tokens += loader.next_batch().inputs.len();
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "loader: {} batches, {tokens} tokens in {s:.3}s = {:.1} M tokens/s",
            a.time_batches,
            tokens as f64 / s / 1e6
        );
    }
    Ok(())
}
