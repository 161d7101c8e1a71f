//! `kiln prep`: text → token shards.
//!
//! Reads plain text, JSONL (`text` field, name configurable), instruction–response records (general
//! instructions as pre-training text: instruction, newline, response), augmented records (templated
//! into natural documents by `data::augment`) or synthesizer fine-tuning records (packed one-shot
//! examples with loss-mask bits, `data::finetune`), plain or compressed, from files, directories
//! and globs (`data::input`), keeps the JSON records that pass every `--filter`, tokenizes on all
//! cores, and writes kiln shards,
//! rolling to a new shard at a size. It streams: input is read in chunks of a few MB, each chunk is
//! encoded in parallel (order kept) and written before the next is read, so memory stays flat
//! however large the input.
//!
//! Every bad line is reported as `file:line: problem`; `skip_bad_lines` counts and skips them.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::augment::{template_chain_without, Layout};
use super::finetune::pack_examples;
use super::input::{self, lookup, Filter, Format};
use super::records::{parse_record, AugmentedRecord, FinetuneRecord, Pair};
use super::shard::ShardWriter;
use super::tokenizer::Tokenizer;
use crate::rng::derive_seed;

/// What the input lines are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    /// Plain text files (see `TextSplit`).
    Text,
    /// JSONL, one document per line in a string field.
    Jsonl,
    /// JSONL augmented records `{"text", "pairs", "chain"?}`, templated into natural documents;
    /// adjacent records with the same `chain` form one few-shot document.
    Augmented,
    /// JSONL augmented records with an optional `source`: synthesizer fine-tuning sequences
    /// (adjacent records of one source packed together, loss only on the pairs).
    Finetune,
    /// JSONL instruction–response records (general instructions as pre-training text, the paper's
    /// recommendation for a base model): the instruction (trailing whitespace trimmed) and the
    /// response (trimmed) joined by a newline, no chat template, any system prompt dropped, one
    /// record per document. Fields: OpenOrca's
    /// `question` and `response` unless `--instruction-field` / `--response-field` say otherwise.
    Instructions,
}

/// How a plain-text file splits into documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TextSplit {
    /// The whole file is one document.
    File,
    /// Paragraphs separated by blank lines.
    Paragraph,
    /// Every non-empty line.
    Line,
}

#[derive(Clone, Debug)]
pub struct PrepOptions {
    /// Files, directories and globs (`data::input::expand`).
    pub inputs: Vec<PathBuf>,
    /// How the files are stored (compression).
    pub format: Format,
    /// None: `.jsonl`/`.json` (compressed or not) → Jsonl, anything else → Text.
    pub kind: Option<InputKind>,
    pub field: String,
    /// Instructions: the dotted paths of the instruction and the response.
    pub instruction_field: String,
    pub response_field: String,
    /// JSON records are kept when every filter holds.
    pub filters: Vec<Filter>,
    pub text_split: TextSplit,
    pub out_dir: PathBuf,
    /// Shard file prefix: `{name}_{index:05}.kiln`.
    pub name: String,
    /// Roll to a new shard when one reaches this many bytes.
    pub shard_bytes: u64,
    pub skip_bad_lines: bool,
    /// Seed of the templating choices (augmented records).
    pub seed: u64,
    /// Fine-tuning documents hold at most this many tokens.
    pub finetune_max_tokens: usize,
    /// Bytes of input read per parallel chunk.
    pub chunk_bytes: usize,
    pub progress: bool,
    /// Augmented: never lay documents out this way (the ablation study's leave-one-format-out).
    pub skip_layout: Option<Layout>,
}

impl Default for PrepOptions {
    fn default() -> Self {
        PrepOptions {
            inputs: Vec::new(),
            format: Format::Auto,
            kind: None,
            field: "text".into(),
            instruction_field: "question".into(),
            response_field: "response".into(),
            filters: Vec::new(),
            text_split: TextSplit::File,
            out_dir: PathBuf::from("shards"),
            name: "data".into(),
            shard_bytes: 256 << 20,
            skip_bad_lines: false,
            seed: 0,
            finetune_max_tokens: 4096,
            chunk_bytes: 4 << 20,
            progress: true,
            skip_layout: None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PrepStats {
    pub input_bytes: u64,
    pub lines: u64,
    pub skipped_lines: u64,
    /// JSON records dropped by the filters, and kept (when there are filters).
    pub filtered_out: u64,
    pub kept_records: u64,
    pub filtering: bool,
    pub documents: u64,
    pub tokens: u64,
    pub shards: Vec<PathBuf>,
    pub seconds: f64,
    /// Peak resident memory of the process (Linux; None elsewhere).
    pub peak_rss_bytes: Option<u64>,
}

/// The process's peak resident set size, from /proc/self/status (VmHWM).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl PrepStats {
    pub fn mb_per_s(&self) -> f64 {
        self.input_bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }

    /// The one-line log report of the run that wrote the shards named `name`.
    pub fn report(&self, name: &str) -> String {
        format!(
            "prep {name}: {} lines, {} documents, {} tokens, {} shard(s), {:.1} MB in {:.2}s ({:.1} MB/s, {:.2} M tokens/s, peak RSS {} MB){}{}",
            self.lines,
            self.documents,
            self.tokens,
            self.shards.len(),
            self.input_bytes as f64 / 1e6,
            self.seconds,
            self.mb_per_s(),
            self.tokens_per_s() / 1e6,
            self.peak_rss_bytes.map_or("?".to_string(), |b| format!("{:.0}", b as f64 / 1e6)),
            if self.skipped_lines > 0 { format!(", skipped {} bad line(s)", self.skipped_lines) } else { String::new() },
            if self.filtered_out > 0 || self.filtering { format!("; --filter kept {} record(s), dropped {}", self.kept_records, self.filtered_out) } else { String::new() }
        )
    }
}

/// A unit of work encoded independently: one or more lines that make documents together.
struct Unit {
    /// 1-based line number of the first line (for errors and the templating seed).
    line: u64,
    lines: Vec<(u64, String)>,
}

/// An encoded document: ids and optional loss mask.
type Doc = (Vec<u32>, Option<Vec<bool>>);

struct ShardSink<'a> {
    tok: &'a Tokenizer,
    opts: &'a PrepOptions,
    with_mask: bool,
    writer: Option<ShardWriter>,
    stats: PrepStats,
}

impl ShardSink<'_> {
    fn push(&mut self, doc: &Doc) -> Result<()> {
        if self.writer.is_none() {
            let path = self.opts.out_dir.join(format!(
                "{}_{:05}.kiln",
                self.opts.name,
                self.stats.shards.len()
            ));
            self.writer = Some(ShardWriter::create(
                &path,
                self.tok.vocab_size(),
                self.tok.fingerprint(),
                self.with_mask,
            )?);
            self.stats.shards.push(path);
        }
        let w = self.writer.as_mut().expect("writer just created");
        w.push_document(&doc.0, doc.1.as_deref())?;
        self.stats.documents += 1;
        self.stats.tokens += doc.0.len() as u64;
        if w.bytes_so_far() >= self.opts.shard_bytes {
            self.close()?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            w.finish()?;
        }
        Ok(())
    }
}

/// A failed prep leaves no partial shard: the open writer's temporary file goes with the sink.
impl Drop for ShardSink<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            w.abandon();
        }
    }
}

fn kind_for(path: &Path, format: Format, kind: Option<InputKind>) -> InputKind {
    kind.unwrap_or_else(|| match input::content_extension(path, format).as_deref() {
        Some("jsonl" | "json") => InputKind::Jsonl,
        _ => InputKind::Text,
    })
}

/// Run `kiln prep`.
pub fn prep(tok: &Tokenizer, opts: &PrepOptions) -> Result<PrepStats> {
    if opts.inputs.is_empty() {
        bail!("no input files given");
    }
    let inputs = input::expand(&opts.inputs)?;
    let mut total_bytes = 0;
    for p in &inputs {
        let meta =
            std::fs::metadata(p).with_context(|| format!("{}: cannot read input", p.display()))?;
        total_bytes += meta.len();
    }
    if !opts.filters.is_empty() {
        if let Some(p) = inputs
            .iter()
            .find(|p| kind_for(p, opts.format, opts.kind) == InputKind::Text)
        {
            bail!(
                "{}: --filter applies to JSON records, and this input is plain text (set --kind)",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("{}: cannot create output directory", opts.out_dir.display()))?;
    let with_mask = inputs
        .iter()
        .any(|p| kind_for(p, opts.format, opts.kind) == InputKind::Finetune);
    let mut sink = ShardSink {
        tok,
        opts,
        with_mask,
        writer: None,
        stats: PrepStats {
            filtering: !opts.filters.is_empty(),
            ..PrepStats::default()
        },
    };
    let bar = progress_bar(opts.progress, total_bytes);
    let start = Instant::now();
    for (fi, path) in inputs.iter().enumerate() {
        let kind = kind_for(path, opts.format, opts.kind);
        prep_file(tok, opts, fi as u64, path, kind, &mut sink, &bar, start)?;
    }
    sink.close()?;
    bar.finish_and_clear();
    let mut stats = std::mem::take(&mut sink.stats);
    if stats.documents == 0 {
        bail!(
            "no documents in {}: nothing to write (empty inputs, or every line was skipped or filtered out)",
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    stats.seconds = start.elapsed().as_secs_f64();
    stats.peak_rss_bytes = peak_rss_bytes();
    Ok(stats)
}

fn progress_bar(show: bool, total: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "prep {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ETA {eta}",
        )
        .expect("static template"),
    );
    bar
}

/// The top-level fields a record of `kind` is read from (a parquet file decodes only these
/// columns); `None` for kinds that keep whole records.
fn needed_columns(kind: InputKind, opts: &PrepOptions) -> Option<Vec<String>> {
    let fields: Vec<&str> = match kind {
        InputKind::Jsonl => vec![&opts.field],
        InputKind::Instructions => vec![&opts.instruction_field, &opts.response_field],
        _ => return None,
    }
    .into_iter()
    .map(|f| f.as_str())
    .collect();
    let mut cols: Vec<String> = fields
        .into_iter()
        .chain(opts.filters.iter().map(|f| f.path[0].as_str()))
        .map(|f| f.split('.').next().unwrap_or(f).to_string())
        .collect();
    cols.dedup();
    Some(cols)
}

#[allow(clippy::too_many_arguments)]
fn prep_file(
    tok: &Tokenizer,
    opts: &PrepOptions,
    file_index: u64,
    path: &Path,
    kind: InputKind,
    sink: &mut ShardSink,
    bar: &indicatif::ProgressBar,
    start: Instant,
) -> Result<()> {
    let opened = input::open_columns(path, opts.format, needed_columns(kind, opts).as_deref())?;
    let mut reader = opened.reader;
    let mut shown = 0u64;
    let file_seed = derive_seed(opts.seed, file_index);
    let mut units: Vec<Unit> = Vec::new();
    let mut chunk_bytes = 0usize;
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    // For grouped kinds: the key of the group being collected (chain or source).
    let mut open_key: Option<serde_json::Value> = None;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("{}: read error", path.display()))?;
        let eof = n == 0;
        if !eof {
            line_no += 1;
            sink.stats.lines += 1;
            sink.stats.input_bytes += n as u64;
            chunk_bytes += n;
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            let line = match std::str::from_utf8(&buf) {
                Ok(s) => s.to_string(),
                Err(e) => {
                    let msg = format!(
                        "{}:{line_no}: not valid UTF-8 (byte {} of the line)",
                        path.display(),
                        e.valid_up_to() + 1
                    );
                    if opts.skip_bad_lines {
                        sink.stats.skipped_lines += 1;
                        continue;
                    }
                    bail!(msg);
                }
            };
            add_line(kind, opts, &mut units, &mut open_key, line_no, line);
        }
        // Encode a chunk when it is large enough (keeping the last, possibly open, group) or at EOF.
        if eof || (chunk_bytes >= opts.chunk_bytes && units.len() > 1) {
            let keep = if eof
                || matches!(kind, InputKind::Jsonl | InputKind::Instructions)
                || kind == InputKind::Text && opts.text_split == TextSplit::Line
            {
                0
            } else {
                1
            };
            let ready: Vec<Unit> = units.drain(..units.len() - keep.min(units.len())).collect();
            encode_units(tok, opts, path, kind, file_seed, &ready, sink)?;
            // Progress in bytes of the file (compressed bytes for a compressed file).
            let consumed = opened.consumed.load(Ordering::Relaxed);
            bar.inc(consumed.saturating_sub(shown));
            shown = consumed;
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{:.2} M tok/s",
                sink.stats.tokens as f64 / secs / 1e6
            ));
            chunk_bytes = 0;
        }
        if eof {
            break;
        }
    }
    Ok(())
}

/// Append a line to the pending units, opening a new unit where a new document or group starts.
fn add_line(
    kind: InputKind,
    opts: &PrepOptions,
    units: &mut Vec<Unit>,
    open_key: &mut Option<serde_json::Value>,
    line_no: u64,
    line: String,
) {
    let new_unit = |units: &mut Vec<Unit>, line: String| {
        units.push(Unit {
            line: line_no,
            lines: vec![(line_no, line)],
        })
    };
    match kind {
        InputKind::Jsonl | InputKind::Instructions => new_unit(units, line),
        InputKind::Text => match opts.text_split {
            TextSplit::Line => {
                if !line.trim().is_empty() {
                    new_unit(units, line)
                }
            }
            TextSplit::Paragraph => {
                if line.trim().is_empty() {
                    *open_key = None;
                } else if open_key.is_some() && !units.is_empty() {
                    units
                        .last_mut()
                        .expect("non-empty")
                        .lines
                        .push((line_no, line));
                } else {
                    *open_key = Some(serde_json::Value::Bool(true));
                    new_unit(units, line);
                }
            }
            TextSplit::File => match units.last_mut() {
                Some(u) => u.lines.push((line_no, line)),
                None => new_unit(units, line),
            },
        },
        InputKind::Augmented | InputKind::Finetune => {
            // Group adjacent records by chain (augmented) or source (fine-tuning). The key is read
            // cheaply here; full parsing and its errors happen in the parallel encode.
            let field = if kind == InputKind::Augmented {
                "chain"
            } else {
                "source"
            };
            let key = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get(field).cloned())
                .filter(|k| !k.is_null());
            match (&key, open_key.as_ref(), units.last_mut()) {
                (Some(k), Some(open), Some(u)) if k == open => u.lines.push((line_no, line)),
                _ => new_unit(units, line),
            }
            *open_key = key;
        }
    }
}

fn encode_units(
    tok: &Tokenizer,
    opts: &PrepOptions,
    path: &Path,
    kind: InputKind,
    file_seed: u64,
    units: &[Unit],
    sink: &mut ShardSink,
) -> Result<()> {
    let results: Vec<Result<Encoded, (u64, String)>> = units
        .par_iter()
        .map(|u| encode_unit(tok, opts, kind, file_seed, u))
        .collect();
    for r in results {
        match r {
            Ok(e) => {
                sink.stats.filtered_out += e.dropped;
                sink.stats.kept_records += e.kept;
                for d in &e.docs {
                    sink.push(d)?;
                }
            }
            Err((line, problem)) => {
                if opts.skip_bad_lines {
                    sink.stats.skipped_lines += 1;
                } else {
                    bail!("{}:{line}: {problem}", path.display());
                }
            }
        }
    }
    Ok(())
}

/// A unit's documents, and how many of its JSON records the filters kept and dropped.
#[derive(Default)]
struct Encoded {
    docs: Vec<Doc>,
    kept: u64,
    dropped: u64,
}

/// Parse a JSON line; None when a filter drops it.
fn record(
    opts: &PrepOptions,
    raw: &str,
    line: u64,
    e: &mut Encoded,
) -> Result<Option<serde_json::Value>, (u64, String)> {
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|err| (line, format!("invalid JSON: {err}")))?;
    if opts.filters.iter().all(|f| f.keeps(&v)) {
        e.kept += 1;
        Ok(Some(v))
    } else {
        e.dropped += 1;
        Ok(None)
    }
}

/// Whether a grouped record (augmented, fine-tuning) passes the filters. Without filters it is not
/// parsed here: its own parser reads it once.
fn passes(
    opts: &PrepOptions,
    raw: &str,
    line: u64,
    e: &mut Encoded,
) -> Result<bool, (u64, String)> {
    if opts.filters.is_empty() {
        return Ok(true);
    }
    Ok(record(opts, raw, line, e)?.is_some())
}

/// The string at a dotted path of a record, or the problem.
fn string_at<'v>(v: &'v serde_json::Value, path: &str) -> Result<&'v str, String> {
    let keys: Vec<&str> = path.split('.').collect();
    match lookup(v, &keys) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => Err(format!("field {path:?} is not a string")),
        None => Err(format!("no {path:?} field")),
    }
}

fn encode_unit(
    tok: &Tokenizer,
    opts: &PrepOptions,
    kind: InputKind,
    file_seed: u64,
    unit: &Unit,
) -> Result<Encoded, (u64, String)> {
    let doc = |text: &str, line: u64| -> Result<Doc, (u64, String)> {
        tok.encode_document(text)
            .map(|ids| (ids, None))
            .map_err(|e| (line, e.to_string()))
    };
    let mut out = Encoded::default();
    match kind {
        InputKind::Text => {
            let text = unit
                .lines
                .iter()
                .map(|(_, l)| l.as_str())
                .collect::<Vec<_>>()
                .join("\n");
            if !text.trim().is_empty() {
                out.docs.push(doc(&text, unit.line)?);
            }
        }
        InputKind::Jsonl | InputKind::Instructions => {
            let (line, raw) = &unit.lines[0];
            if raw.trim().is_empty() {
                return Ok(out);
            }
            let Some(v) = record(opts, raw, *line, &mut out)? else {
                return Ok(out);
            };
            let text = if kind == InputKind::Jsonl {
                string_at(&v, &opts.field)
                    .map_err(|e| (*line, e))?
                    .to_string()
            } else {
                let q = string_at(&v, &opts.instruction_field).map_err(|e| (*line, e))?;
                let a = string_at(&v, &opts.response_field).map_err(|e| (*line, e))?;
                format!("{}\n{}", q.trim_end(), a.trim())
            };
            if !text.is_empty() {
                out.docs.push(doc(&text, *line)?);
            }
        }
        InputKind::Augmented => {
            let mut records = Vec::with_capacity(unit.lines.len());
            for (line, raw) in &unit.lines {
                if raw.trim().is_empty() || !passes(opts, raw, *line, &mut out)? {
                    continue;
                }
                let r: AugmentedRecord = parse_record(raw).map_err(|e| (*line, e))?;
                records.push(r);
            }
            let entries: Vec<(&str, &[Pair])> = records
                .iter()
                .map(|r| (r.text.as_str(), r.pairs.as_slice()))
                .collect();
            let seed = derive_seed(file_seed, unit.line);
            for d in template_chain_without(&entries, seed, opts.skip_layout) {
                out.docs.push(doc(&d.text, unit.line)?);
            }
        }
        InputKind::Finetune => {
            let mut records = Vec::with_capacity(unit.lines.len());
            for (line, raw) in &unit.lines {
                if raw.trim().is_empty() || !passes(opts, raw, *line, &mut out)? {
                    continue;
                }
                let r: FinetuneRecord = parse_record(raw).map_err(|e| (*line, e))?;
                records.push(r);
            }
            let examples = records
                .iter()
                .map(|r| (r.text.as_str(), r.pairs.as_slice()));
            let docs = pack_examples(tok, examples, opts.finetune_max_tokens)
                .map_err(|e| (unit.line, e.to_string()))?;
            out.docs
                .extend(docs.into_iter().map(|(ids, mask)| (ids, Some(mask))));
        }
    }
    Ok(out)
}
