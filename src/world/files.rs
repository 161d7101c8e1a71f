//! The world on disk. [`write_world`] writes the generated world's five files; [`ensure_world`]
//! builds whatever of a config's world is missing: those files, the task files `kiln eval` reads
//! (`tasks/`), the byte-level BPE tokenizer trained on the world's texts, and the token shards of
//! the raw and augmented records.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{generate, Attribute, WorldConfig};
use crate::config::{Config, WorldSection};
use crate::data::augment::Layout;
use crate::data::prep::{prep, InputKind, PrepOptions};
use crate::data::records::AugmentedRecord;
use crate::data::tokenizer::{train_byte_level_bpe, Tokenizer};
use crate::fsutil::write_atomic_with;

// ---------------------------------------------------------------------------------------------
// The generated world's files
// ---------------------------------------------------------------------------------------------

/// Counts and sizes of what [`write_world`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldSummary {
    pub people: usize,
    pub train_people: usize,
    pub heldout_people: usize,
    /// Lines in `raw.jsonl`.
    pub biographies: usize,
    /// Lines in `augmented.jsonl`.
    pub augmented_records: usize,
    /// QA pairs summed over all augmented records.
    pub augmented_pairs: usize,
    /// Lines in `eval.jsonl` (held-out people).
    pub eval_items: usize,
    /// Lines in `eval_train.jsonl` (train people).
    pub eval_train_items: usize,
    pub raw_bytes: u64,
    pub augmented_bytes: u64,
    pub eval_bytes: u64,
    pub eval_train_bytes: u64,
}

/// `world.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldManifest {
    pub config: WorldConfig,
    pub attributes: Vec<Attribute>,
    pub summary: WorldSummary,
}

#[derive(Serialize)]
struct RawLine<'a> {
    text: &'a str,
}

/// Generates the world for `cfg` and writes its five files into `dir` (created if missing). Each
/// file is written to `<name>.tmp`, fsynced and renamed into place.
pub fn write_world(cfg: &WorldConfig, dir: &Path) -> io::Result<WorldSummary> {
    cfg.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let world = generate(cfg);
    fs::create_dir_all(dir)?;

    let raw_bytes = write_jsonl(
        dir,
        "raw.jsonl",
        world.raw_texts().map(|text| RawLine { text }),
    )?;
    let records = world.augmented_records();
    let augmented_pairs = records.iter().map(|r| r.pairs.len()).sum();
    let augmented_bytes = write_jsonl(dir, "augmented.jsonl", records.iter())?;
    let eval_bytes = write_jsonl(dir, "eval.jsonl", world.eval_items(false))?;
    let eval_train_bytes = write_jsonl(dir, "eval_train.jsonl", world.eval_items(true))?;

    let train_people = world.train_people().count();
    let summary = WorldSummary {
        people: world.people().len(),
        train_people,
        heldout_people: world.people().len() - train_people,
        biographies: world.bio_order().len(),
        augmented_records: records.len(),
        augmented_pairs,
        eval_items: world.eval_items(false).count(),
        eval_train_items: world.eval_items(true).count(),
        raw_bytes,
        augmented_bytes,
        eval_bytes,
        eval_train_bytes,
    };
    let manifest = WorldManifest {
        config: cfg.clone(),
        attributes: Attribute::ALL.to_vec(),
        summary: summary.clone(),
    };
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    json.push(b'\n');
    write_atomic_with(&dir.join("world.json"), |w| w.write_all(&json))?;
    crate::fsutil::sync_parent(&dir.join("world.json"));
    Ok(summary)
}

/// Writes one JSON value per line; returns the bytes written.
fn write_jsonl<T: Serialize>(
    dir: &Path,
    name: &str,
    items: impl Iterator<Item = T>,
) -> io::Result<u64> {
    let mut bytes = 0u64;
    write_atomic_with(&dir.join(name), |w| {
        for item in items {
            let mut line = serde_json::to_vec(&item).map_err(io::Error::other)?;
            line.push(b'\n');
            w.write_all(&line)?;
            bytes += line.len() as u64;
        }
        Ok(())
    })?;
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// A config's world: files, tasks, tokenizer, shards
// ---------------------------------------------------------------------------------------------

/// Build the synthetic world's files, tokenizer and shards where missing (or all with `force`).
pub fn ensure_world(w: &WorldSection, cfg: &Config, force: bool, with_prep: bool) -> Result<()> {
    let dir = &w.dir;
    let wc = WorldConfig {
        seed: w.seed,
        people: w.people,
        bios_per_person: w.bios_per_person,
        train_fraction: 0.5,
    };
    wc.validate().map_err(|e| anyhow::anyhow!("[world]: {e}"))?;
    let manifest = dir.join("world.json");
    if !force && manifest.exists() {
        // An existing world must be the one asked for: its files, tokenizer and shards are reused.
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("{}: cannot read", manifest.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", manifest.display()))?;
        let have: WorldConfig = serde_json::from_value(v["config"].clone()).map_err(|e| {
            anyhow::anyhow!("{}: not a kiln world manifest: {e}", manifest.display())
        })?;
        if have != wc {
            bail!(
                "{} holds a world of {} people × {} biographies (seed {}), but the config asks for {} × {} (seed {}): choose another world.dir, or regenerate it with `kiln world --force`",
                dir.display(),
                have.people,
                have.bios_per_person,
                have.seed,
                wc.people,
                wc.bios_per_person,
                wc.seed
            );
        }
    }
    if force || !manifest.exists() {
        let t = Instant::now();
        let s = write_world(&wc, dir)
            .with_context(|| format!("{}: cannot write the world", dir.display()))?;
        eprintln!(
            "world: {} people, {} biographies, {} augmented records, {} held-out questions -> {} ({:.1}s)",
            s.people,
            s.biographies,
            s.augmented_records,
            s.eval_items,
            dir.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let last_task = format!(
        "tasks/heldout_qa_{}.jsonl",
        Attribute::ALL[Attribute::ALL.len() - 1].as_str()
    );
    if force || !dir.join(&last_task).exists() {
        write_world_tasks(dir)?;
    }
    if !with_prep {
        return Ok(());
    }
    let tok_path = &cfg.data.tokenizer;
    if force || !tok_path.exists() {
        let t = Instant::now();
        let raw = read_jsonl_texts(&dir.join("raw.jsonl"))?;
        let aug = read_augmented_texts(&dir.join("augmented.jsonl"))?;
        if let Some(parent) = tok_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        train_byte_level_bpe(raw.iter().chain(aug.iter()), w.vocab_size, tok_path)?;
        eprintln!(
            "tokenizer: byte-level BPE, {} ids -> {} ({:.1}s)",
            w.vocab_size,
            tok_path.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let tok = Tokenizer::from_file(
        tok_path,
        cfg.data.bos_token.as_deref(),
        cfg.data.eos_token.as_deref(),
    )?;
    let shards = dir.join("shards");
    for (name, file, kind) in [
        ("raw", "raw.jsonl", InputKind::Jsonl),
        ("augmented", "augmented.jsonl", InputKind::Augmented),
    ] {
        let done = shards.join(format!("{name}_00000.kiln"));
        if !force && done.exists() {
            continue;
        }
        remove_shards(&shards, name)?;
        let opts = PrepOptions {
            inputs: vec![dir.join(file)],
            kind: Some(kind),
            out_dir: shards.clone(),
            name: name.into(),
            seed: w.seed,
            ..PrepOptions::default()
        };
        let stats = prep(&tok, &opts)?;
        eprintln!("{}", stats.report(name));
    }
    let done = shards.join(format!("{QA_SFT}_00000.kiln"));
    if force || !done.exists() {
        let (docs, tokens) = write_qa_sft(&tok, &dir.join("eval_train.jsonl"), &done)?;
        eprintln!(
            "{QA_SFT}: {docs} question-answer documents, {tokens} tokens (loss on the answers) -> {}",
            done.display()
        );
    }
    Ok(())
}

/// What an ablation run leaves out of the augmented records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeftOut {
    /// Every pair about one attribute.
    Category(Attribute),
    /// One document layout (the other layouts keep their relative weights).
    Layout(Layout),
}

impl LeftOut {
    /// `birth_city`, or `layout-classic`.
    pub fn key(self) -> String {
        match self {
            LeftOut::Category(a) => a.as_str().to_string(),
            LeftOut::Layout(l) => format!(
                "layout-{}",
                clap::ValueEnum::to_possible_value(&l)
                    .map_or("plain".into(), |v| v.get_name().to_string())
            ),
        }
    }
}

/// The augmented records without `left_out`, as shards named `aug_no_{key}` beside the world's
/// others (built once): the ablation study's data. Returns the shards' glob.
pub fn ensure_ablation_shards(w: &WorldSection, cfg: &Config, left_out: LeftOut) -> Result<String> {
    let dir = &w.dir;
    let name = format!("aug_no_{}", left_out.key());
    let shards = dir.join("shards");
    let glob = shards.join(format!("{name}_*.kiln")).display().to_string();
    if shards.join(format!("{name}_00000.kiln")).exists() {
        return Ok(glob);
    }
    let (input, skip_layout) = match left_out {
        LeftOut::Category(a) => {
            let wc = WorldConfig {
                seed: w.seed,
                people: w.people,
                bios_per_person: w.bios_per_person,
                train_fraction: 0.5,
            };
            let file = format!("{name}.jsonl");
            let records = generate(&wc).augmented_records_without(Some(a));
            write_jsonl(dir, &file, records.iter())
                .with_context(|| format!("{}: cannot write", dir.join(&file).display()))?;
            (dir.join(file), None)
        }
        LeftOut::Layout(l) => (dir.join("augmented.jsonl"), Some(l)),
    };
    let tok = Tokenizer::from_file(
        &cfg.data.tokenizer,
        cfg.data.bos_token.as_deref(),
        cfg.data.eos_token.as_deref(),
    )?;
    remove_shards(&shards, &name)?;
    let opts = PrepOptions {
        inputs: vec![input],
        kind: Some(InputKind::Augmented),
        out_dir: shards.clone(),
        name: name.clone(),
        seed: w.seed,
        skip_layout,
        ..PrepOptions::default()
    };
    let stats = prep(&tok, &opts)?;
    eprintln!("{}", stats.report(&name));
    Ok(glob)
}

/// Name of the shard of the training people's question–answer pairs for instruction tuning
/// (`kiln experiment world --study finetune`).
pub const QA_SFT: &str = "qa_sft";

/// The training people's question–answer pairs as instruction-tuning documents, one per pair:
/// `Question: {q}\nAnswer: {a}` (the evaluation's prompt and answer), framed by BOS and EOS, with
/// the loss on the answer's tokens and the EOS only. Returns (documents, tokens).
fn write_qa_sft(tok: &Tokenizer, eval_train: &Path, out: &Path) -> Result<(u64, u64)> {
    use crate::data::shard::ShardWriter;
    let mut w = ShardWriter::create(out, tok.vocab_size(), tok.fingerprint(), true)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for_each_line(eval_train, |n, line| {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{n}: {e}", eval_train.display()))?;
        let (Some(q), Some(a)) = (v["q"].as_str(), v["a"].as_str()) else {
            bail!("{}:{n}: no \"q\" or \"a\"", eval_train.display());
        };
        let prompt = format!("Question: {q}\nAnswer:");
        let (ids, spans) = tok.encode_with_offsets(&format!("{prompt} {a}"))?;
        let (mut doc, mut mask) = (Vec::with_capacity(ids.len() + 2), Vec::new());
        if let Some(b) = tok.bos() {
            doc.push(b);
            mask.push(false);
        }
        for (id, (_, end)) in ids.into_iter().zip(spans) {
            doc.push(id);
            mask.push(end > prompt.len());
        }
        if let Some(e) = tok.eos() {
            doc.push(e);
            mask.push(true);
        }
        w.push_document(&doc, Some(&mask))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    })?;
    let (tokens, docs) = w.finish().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((docs, tokens))
}

/// The world's question-answer items as task files `kiln eval` reads: multiple choice and
/// completion, for the held-out people and the training people; and, for the held-out people,
/// `heldout_cloze.jsonl`: the same facts and options as multiple choice after a biography-style
/// prefix ("Ada Lee was born in"), which probes whether a model stored a fact independently of
/// whether it can answer a question about it.
fn write_world_tasks(dir: &Path) -> Result<()> {
    let tasks = dir.join("tasks");
    std::fs::create_dir_all(&tasks)?;
    for (src, name) in [("eval.jsonl", "heldout"), ("eval_train.jsonl", "train")] {
        let (mut mc, mut qa, mut cloze) = (String::new(), String::new(), String::new());
        let mut by_attr = vec![String::new(); Attribute::ALL.len()];
        let path = dir.join(src);
        for_each_line(&path, |n, line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{}:{n}: {e}", path.display()))?;
            let input = format!("Question: {}\nAnswer:", v["q"].as_str().unwrap_or_default());
            mc.push_str(&serde_json::json!({ "input": input, "options": v["options"], "gold_index": v["answer_index"] }).to_string());
            mc.push('\n');
            qa.push_str(&serde_json::json!({ "input": input, "answer": v["a"] }).to_string());
            qa.push('\n');
            let person = v["person"].as_str().unwrap_or_default();
            let key = v["attribute"].as_str().unwrap_or_default();
            let Some(attribute) = Attribute::from_key(key) else {
                bail!("{}:{n}: unknown attribute {key:?}", path.display());
            };
            let q = &mut by_attr[attribute as usize];
            q.push_str(&serde_json::json!({ "input": input, "answer": v["a"] }).to_string());
            q.push('\n');
            let prefix = attribute.cloze();
            cloze.push_str(&serde_json::json!({ "input": format!("{person} {prefix}"), "options": v["options"], "gold_index": v["answer_index"] }).to_string());
            cloze.push('\n');
            Ok(())
        })?;
        crate::fsutil::write_atomic(&tasks.join(format!("{name}_mc.jsonl")), mc.as_bytes())?;
        crate::fsutil::write_atomic(&tasks.join(format!("{name}_qa.jsonl")), qa.as_bytes())?;
        if name == "heldout" {
            crate::fsutil::write_atomic(&tasks.join("heldout_cloze.jsonl"), cloze.as_bytes())?;
            for (attr, text) in Attribute::ALL.iter().zip(&by_attr) {
                let path = tasks.join(format!("heldout_qa_{}.jsonl", attr.as_str()));
                crate::fsutil::write_atomic(&path, text.as_bytes())?;
            }
        }
    }
    Ok(())
}

fn remove_shards(dir: &Path, name: &str) -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.starts_with(&format!("{name}_")) && f.ends_with(".kiln") {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    Ok(())
}

/// Read the `text` field of every line of a JSONL file.
fn read_jsonl_texts(path: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for_each_line(path, |line_no, line| {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{line_no}: invalid JSON: {e}", path.display()))?;
        match v.get("text").and_then(|t| t.as_str()) {
            Some(t) => out.push(t.to_string()),
            None => bail!("{}:{line_no}: no \"text\" field", path.display()),
        }
        Ok(())
    })?;
    Ok(out)
}

/// The question and answer strings of augmented records (their texts are in raw.jsonl).
fn read_augmented_texts(path: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for_each_line(path, |line_no, line| {
        let r: AugmentedRecord = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{line_no}: invalid record: {e}", path.display()))?;
        out.extend(r.pairs.into_iter().map(|p| format!("{}\n{}", p.q, p.a)));
        Ok(())
    })?;
    Ok(out)
}

fn for_each_line(path: &Path, mut f: impl FnMut(u64, &str) -> Result<()>) -> Result<()> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        if reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("{}: read error", path.display()))?
            == 0
        {
            return Ok(());
        }
        n += 1;
        let line = std::str::from_utf8(&buf)
            .map_err(|_| anyhow::anyhow!("{}:{n}: not valid UTF-8", path.display()))?;
        let line = line.trim_end_matches(['\n', '\r']);
        if !line.trim().is_empty() {
            f(n, line)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::generate::tests::small;
    use crate::world::{EvalItem, MAX_PEOPLE};
    use std::path::PathBuf;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("kiln-world-test-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const FILES: [&str; 5] = [
        "raw.jsonl",
        "augmented.jsonl",
        "eval.jsonl",
        "eval_train.jsonl",
        "world.json",
    ];

    fn read_all(dir: &Path) -> Vec<Vec<u8>> {
        FILES
            .iter()
            .map(|f| fs::read(dir.join(f)).unwrap())
            .collect()
    }

    #[test]
    fn same_seed_gives_byte_identical_files_and_other_seed_differs() {
        let (a, b, c) = (TempDir::new("a"), TempDir::new("b"), TempDir::new("c"));
        let sa = write_world(&small(11), &a.0).unwrap();
        let sb = write_world(&small(11), &b.0).unwrap();
        write_world(&small(12), &c.0).unwrap();
        assert_eq!(sa, sb);
        let (fa, fb, fc) = (read_all(&a.0), read_all(&b.0), read_all(&c.0));
        assert_eq!(fa, fb);
        for i in 0..4 {
            assert_ne!(fa[i], fc[i], "{} did not change with the seed", FILES[i]);
        }
        // No temporary files left behind.
        for entry in fs::read_dir(&a.0).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(FILES.contains(&name.as_str()), "stray file {name}");
        }
        assert_eq!(generate(&small(11)), generate(&small(11)));
    }

    #[test]
    fn files_parse_and_counts_match_summary() {
        let dir = TempDir::new("counts");
        let cfg = small(5);
        let s = write_world(&cfg, &dir.0).unwrap();
        let text = |f: &str| fs::read_to_string(dir.0.join(f)).unwrap();
        let raw: Vec<serde_json::Value> = text("raw.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(raw.len(), cfg.people * cfg.bios_per_person);
        assert!(raw.iter().all(|v| v["text"].is_string()));
        let aug: Vec<AugmentedRecord> = text("augmented.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let eval: Vec<EvalItem> = text("eval.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let eval_train: Vec<EvalItem> = text("eval_train.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(s.people, cfg.people);
        assert_eq!(s.train_people, 150);
        assert_eq!(s.heldout_people, 150);
        assert_eq!(s.biographies, raw.len());
        assert_eq!(s.augmented_records, aug.len());
        assert_eq!(s.augmented_records, 150 * cfg.bios_per_person);
        assert_eq!(
            s.augmented_pairs,
            aug.iter().map(|r| r.pairs.len()).sum::<usize>()
        );
        assert_eq!(s.eval_items, eval.len());
        assert_eq!(s.eval_items, 150 * Attribute::ALL.len());
        assert_eq!(s.eval_train_items, eval_train.len());
        assert_eq!(
            s.raw_bytes,
            fs::metadata(dir.0.join("raw.jsonl")).unwrap().len()
        );
        assert!(aug.iter().all(|r| r.chain.is_none() && !r.pairs.is_empty()));
        let manifest: WorldManifest = serde_json::from_str(&text("world.json")).unwrap();
        assert_eq!(manifest.config, cfg);
        assert_eq!(manifest.summary, s);
        // Raw text lines say "text" and nothing else.
        let first = text("raw.jsonl").lines().next().unwrap().to_string();
        assert!(first.starts_with("{\"text\":\""), "{first}");
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = [
            WorldConfig {
                bios_per_person: 0,
                ..WorldConfig::default()
            },
            WorldConfig {
                train_fraction: 1.5,
                ..WorldConfig::default()
            },
            WorldConfig {
                train_fraction: f64::NAN,
                ..WorldConfig::default()
            },
            WorldConfig {
                people: MAX_PEOPLE + 1,
                ..WorldConfig::default()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err());
            let dir = TempDir::new("bad");
            let err = write_world(&cfg, &dir.0).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        assert!(WorldConfig::default().validate().is_ok());
        let empty = generate(&WorldConfig {
            people: 0,
            ..WorldConfig::default()
        });
        assert!(empty.people().is_empty());
    }
}
