//! The instruction synthesizer (`kiln synth`): raw texts in, augmented records out, with the
//! authors' multi-round chains (`chain.rs`) on kiln's batched generator (`model::batched`).
//!
//! Input: JSONL with a string `text` per line. Lines that are not JSON, or have no non-empty
//! `text`, are reported with their line numbers, counted and skipped; texts whose zero-shot
//! prompt does not fit the context are reported, counted and written without pairs (the raw text
//! is kept). Output: augmented records `{"text", "pairs", "chain"}` (docs/FORMATS.md §3), chain by
//! chain — chain i holds valid texts i, i + c, i + 2c, … (c = ceil(N / rounds)), one record per
//! text in round order — so records `kiln prep --kind augmented` must group are adjacent.
//!
//! Resumable and lossless: records are appended in that fixed order; a small progress file
//! (`OUT.progress.json`, written atomically after the output is synced) records how many chains
//! and bytes are complete. A restarted run with the same settings truncates the output to that
//! length (dropping a partial tail line and anything written after the last save) and continues
//! with the next chain; on the CPU the records are then byte-identical to an uninterrupted run
//! (generation is batch-invariant there; see `model::batched`).

pub mod chain;
pub mod texts;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::backend::GenerationBackend;
use crate::data::finetune::encode_example;
use crate::data::records::AugmentedRecord;
use crate::data::synth_format::{context_block, parse_generation};
use crate::data::tokenizer::Tokenizer;
use crate::model::batched::{Engine, Finished, Request};
use crate::model::generate::Sampling;
use crate::rng::derive_seed;
use chain::{chain_count, chain_members, chain_prompt, group_ids, push_entry, Entry};
pub use texts::TextSource;
use texts::{spool_path, text_in, Texts};

/// What `synthesize` needs from a generator: the batched engine, or a scripted fake in tests.
pub trait Generator {
    fn submit(&mut self, r: Request) -> Result<()>;
    /// Advance; returns the requests that finished.
    fn step(&mut self) -> Vec<Finished>;
    /// Sequences it decodes together.
    fn slots(&self) -> usize;
    fn generated_tokens(&self) -> u64;
}

impl<B: GenerationBackend> Generator for Engine<'_, B> {
    fn submit(&mut self, r: Request) -> Result<()> {
        Engine::submit(self, r)
    }
    fn step(&mut self) -> Vec<Finished> {
        Engine::step(self)
    }
    fn slots(&self) -> usize {
        self.limits().slots
    }
    fn generated_tokens(&self) -> u64 {
        self.generated_tokens
    }
}

/// Settings of one synthesis run.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub input: TextSource,
    pub out: PathBuf,
    /// M: 2 for general corpora, 3 for domain corpora (the paper).
    pub rounds: usize,
    /// New tokens per text (400 in the paper).
    pub max_new_tokens: usize,
    /// Prompt plus generation (4096 in the paper).
    pub context: usize,
    /// Greedy by default (the paper); a sampled run seeds each text by its index.
    pub sampling: Sampling,
    /// Names the model in the progress file: a resumed run must use the same one.
    pub model_id: String,
    pub progress_bar: bool,
    /// Seconds between progress-file saves (0: after every completed chain).
    pub save_every_s: f64,
    /// Testing hook: stop as if killed once this call has written this many output bytes (mid-
    /// line if need be), without saving progress; `synthesize` then fails with [`Interrupted`].
    pub stop_after_bytes: Option<u64>,
}

/// Counters of a run (cumulative over resumed runs).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SynthStats {
    /// Valid input texts.
    pub texts: u64,
    pub chains: u64,
    pub records: u64,
    pub pairs: u64,
    /// Texts prompted after their chain's previous text(s).
    pub few_shot: u64,
    /// Texts whose prompt did not fit the context (written without pairs).
    pub too_long: u64,
    /// Input lines skipped (bad JSON, no text).
    pub bad_lines: u64,
    /// Input records a `--filter` dropped.
    #[serde(default)]
    pub filtered: u64,
    pub generated_tokens: u64,
    /// Chains that were already complete when this call started.
    #[serde(default)]
    pub resumed_chains: u64,
    #[serde(default)]
    pub seconds: f64,
}

/// The error `synthesize` returns when `stop_after_bytes` stops it.
#[derive(Debug, thiserror::Error)]
#[error("stopped after {0} output bytes (testing hook)")]
pub struct Interrupted(pub u64);

/// The `text` of one input JSONL line, or a one-line description of what is wrong with it.
pub fn text_of(line: &str) -> std::result::Result<String, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    text_in(&v, &["text".to_string()])
}

pub fn progress_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".progress.json");
    out.with_file_name(name)
}

/// Output writer that counts bytes and honours `stop_after_bytes`.
struct Output {
    w: BufWriter<File>,
    bytes: u64,
    written_here: u64,
    stop_after: Option<u64>,
}

impl Output {
    fn write(&mut self, data: &[u8], path: &Path) -> Result<()> {
        let err = |e| anyhow::Error::new(e).context(format!("{}: write error", path.display()));
        if let Some(limit) = self.stop_after {
            if self.written_here + data.len() as u64 > limit {
                let part = (limit - self.written_here) as usize;
                self.w.write_all(&data[..part]).map_err(err)?;
                self.w.flush().map_err(err)?;
                return Err(Interrupted(limit).into());
            }
        }
        self.w.write_all(data).map_err(err)?;
        self.bytes += data.len() as u64;
        self.written_here += data.len() as u64;
        Ok(())
    }

    fn sync(&mut self, path: &Path) -> Result<()> {
        self.w
            .flush()
            .and_then(|_| self.w.get_ref().sync_data())
            .with_context(|| format!("{}: write error", path.display()))
    }
}

/// One chain being synthesized.
struct ChainRun {
    members: Vec<usize>,
    entries: Vec<Entry>,
    /// The text now generating, and whether its prompt is few-shot.
    current: Option<(String, bool)>,
    /// Counters added to the run's stats when the chain is written.
    few_shot: u64,
    too_long: u64,
    tokens: u64,
}

/// Synthesize `opts.input` into `opts.out` with `gen`, resuming from the progress file when one
/// exists. Reports (bad lines, long texts) go to stderr, one line each.
pub fn synthesize<G: Generator>(
    gen: &mut G,
    tok: &Tokenizer,
    opts: &SynthOptions,
) -> Result<SynthStats> {
    let started = Instant::now();
    if opts.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if opts.max_new_tokens == 0 || opts.context < 2 {
        bail!("--max-new-tokens must be positive and --context at least 2");
    }
    if let Some(parent) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create the directory", parent.display()))?;
    }
    let progress_file = progress_path(&opts.out);
    let spool = spool_path(&opts.out);
    let resuming = progress_file.exists();
    if !resuming {
        if std::fs::metadata(&opts.out).is_ok_and(|m| m.len() > 0) {
            bail!(
                "{}: exists and has no progress file ({}); remove it or choose another --out",
                opts.out.display(),
                progress_file.display()
            );
        }
        if spool.exists() {
            bail!(
                "{}: exists and {} has no progress file; remove it or choose another --out",
                spool.display(),
                opts.out.display()
            );
        }
    }
    let mut say = |s: String| eprintln!("{s}");
    let texts = Texts::index(&opts.input, &spool, &mut say)?;
    let n = texts.len();
    let rounds = opts.rounds;
    let chains = chain_count(n, rounds);
    let mut settings = opts.input.settings(&texts.files)?;
    let rest = json!({
        "texts": n,
        "rounds": rounds,
        "max_new_tokens": opts.max_new_tokens,
        "context": opts.context,
        "temperature": opts.sampling.temperature,
        "top_p": opts.sampling.top_p,
        "seed": opts.sampling.seed,
        "model": opts.model_id,
        "tokenizer": format!("{:016x}", tok.fingerprint()),
    });
    settings.extend(rest.as_object().expect("an object").clone());
    let settings = Value::Object(settings);
    let (mut stats, first_chain, bytes) = match std::fs::read_to_string(&progress_file) {
        Ok(text) => resume_point(&progress_file, &text, &settings, &opts.out)?,
        Err(_) => {
            let stats = SynthStats {
                texts: n as u64,
                chains: chains as u64,
                bad_lines: texts.bad,
                filtered: texts.filtered,
                ..SynthStats::default()
            };
            save_progress(&progress_file, &settings, &stats, 0, 0, chains == 0)?;
            (stats, 0, 0)
        }
    };
    stats.resumed_chains = first_chain as u64;
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&opts.out)
        .with_context(|| format!("{}: cannot open for writing", opts.out.display()))?;
    file.set_len(bytes)
        .with_context(|| format!("{}: cannot truncate", opts.out.display()))?;
    let mut file = file;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(bytes))
        .with_context(|| format!("{}: cannot seek", opts.out.display()))?;
    let mut out = Output {
        w: BufWriter::new(file),
        bytes,
        written_here: 0,
        stop_after: opts.stop_after_bytes,
    };
    if first_chain >= chains {
        save_progress(&progress_file, &settings, &stats, chains, bytes, true)?;
        texts.finish()?;
        stats.seconds = started.elapsed().as_secs_f64();
        return Ok(stats);
    }

    let texts_before: usize = (0..first_chain)
        .map(|i| chain_members(i, n, rounds).len())
        .sum();
    let bar = progress_bar(opts.progress_bar, n as u64, texts_before as u64);
    let bos: Vec<u32> = tok.bos().into_iter().collect();
    let budget = opts.context.saturating_sub(opts.max_new_tokens);
    let window = (4 * gen.slots()).max(1);
    let gen_tokens_base = gen.generated_tokens();

    let mut running: HashMap<usize, ChainRun> = HashMap::new();
    let mut complete: BTreeMap<usize, ChainRun> = BTreeMap::new();
    let (mut next_start, mut next_write) = (first_chain, first_chain);
    let mut last_save = Instant::now();
    let mut last_msg = Instant::now();
    loop {
        // Start chains up to the window, and submit each one's next text.
        while next_start < chains && running.len() + complete.len() < window {
            running.insert(
                next_start,
                ChainRun {
                    members: chain_members(next_start, n, rounds),
                    entries: Vec::new(),
                    current: None,
                    few_shot: 0,
                    too_long: 0,
                    tokens: 0,
                },
            );
            next_start += 1;
        }
        let idle: Vec<usize> = running
            .iter()
            .filter(|(_, c)| c.current.is_none())
            .map(|(&i, _)| i)
            .collect();
        for i in idle {
            let c = running.get_mut(&i).expect("running chain");
            loop {
                let r = c.entries.len();
                if r == c.members.len() {
                    let c = running.remove(&i).expect("running chain");
                    complete.insert(i, c);
                    break;
                }
                let text = texts.get(c.members[r])?;
                let mut zero = bos.clone();
                tok.encode_into(&context_block(&text), &mut zero)?;
                if zero.len() >= opts.context {
                    c.too_long += 1;
                    bar.println(format!(
                        "{}: too long: its prompt is {} tokens, the context {}; kept without pairs",
                        texts.origin(c.members[r]),
                        zero.len(),
                        opts.context
                    ));
                    bar.inc(1);
                    let e = entry(text, Vec::new(), Vec::new());
                    push_entry(&mut c.entries, e, false);
                    continue;
                }
                let (prompt, few) = chain_prompt(&c.entries, &zero, budget);
                let index = c.members[r];
                gen.submit(Request {
                    id: index as u64,
                    prompt,
                    max_new: opts.max_new_tokens,
                    sampling: Sampling {
                        seed: derive_seed(opts.sampling.seed, index as u64),
                        ..opts.sampling
                    },
                })?;
                c.current = Some((text, few));
                break;
            }
        }
        // Write finished chains in order.
        let mut wrote = false;
        while let Some(c) = complete.remove(&next_write) {
            stats.few_shot += c.few_shot;
            stats.too_long += c.too_long;
            stats.generated_tokens += c.tokens;
            let entries = c.entries;
            for (e, id) in entries.iter().zip(group_ids(next_write, rounds, &entries)) {
                let rec = AugmentedRecord {
                    text: e.text.clone(),
                    pairs: e.pairs.clone(),
                    chain: Some(json!(id)),
                };
                let mut line = serde_json::to_string(&rec)?;
                line.push('\n');
                out.write(line.as_bytes(), &opts.out)?;
                stats.records += 1;
                stats.pairs += e.pairs.len() as u64;
            }
            next_write += 1;
            wrote = true;
        }
        let finished = next_write == chains;
        if finished || (wrote && last_save.elapsed().as_secs_f64() >= opts.save_every_s) {
            out.sync(&opts.out)?;
            save_progress(
                &progress_file,
                &settings,
                &stats,
                next_write,
                out.bytes,
                finished,
            )?;
            last_save = Instant::now();
        }
        if finished {
            break;
        }
        // Generate.
        for f in gen.step() {
            let index = f.id as usize;
            let ci = index % chains;
            let c = running
                .get_mut(&ci)
                .ok_or_else(|| anyhow::anyhow!("generator returned unknown request {}", f.id))?;
            let (text, few) = c
                .current
                .take()
                .ok_or_else(|| anyhow::anyhow!("generator returned request {} twice", f.id))?;
            let pairs = parse_generation(&tok.decode(&f.tokens, true)?);
            c.few_shot += few as u64;
            c.tokens += f.tokens.len() as u64;
            // Render the example only when a later round may use it.
            let example = if !pairs.is_empty() && c.entries.len() + 1 < c.members.len() {
                encode_example(tok, &text, &pairs)?.0
            } else {
                Vec::new()
            };
            push_entry(&mut c.entries, entry(text, pairs, example), few);
            bar.inc(1);
        }
        if last_msg.elapsed().as_secs_f64() >= 0.25 {
            let s = started.elapsed().as_secs_f64().max(1e-9);
            let toks = gen.generated_tokens() - gen_tokens_base;
            bar.set_message(format!("{:.0} tok/s", toks as f64 / s));
            last_msg = Instant::now();
        }
    }
    bar.finish_and_clear();
    texts.finish()?;
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

fn entry(text: String, pairs: Vec<crate::data::records::Pair>, example: Vec<u32>) -> Entry {
    Entry {
        text,
        pairs,
        example,
        inherit_from_prev: false,
        followed_by_next: false,
    }
}

fn progress_bar(show: bool, total: u64, done: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "synth {bar:30} {pos}/{len} texts  {per_sec}  {msg}  ETA {eta}",
        )
        .expect("valid template"),
    );
    bar.set_position(done);
    bar.reset_eta();
    bar
}

fn save_progress(
    path: &Path,
    settings: &Value,
    stats: &SynthStats,
    chains_done: usize,
    bytes: u64,
    done: bool,
) -> Result<()> {
    let v = json!({
        "version": 1,
        "settings": settings,
        "chains_done": chains_done,
        "bytes": bytes,
        "done": done,
        "stats": stats,
    });
    crate::fsutil::write_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())
}

/// Where a run restarts, from the progress file `path` (its contents `text`): the stats so far, the
/// first chain to do and the output length. A progress file that does not fit `settings` or `out`
/// is a one-line error naming it.
pub fn resume_point(
    path: &Path,
    text: &str,
    settings: &Value,
    out: &Path,
) -> Result<(SynthStats, usize, u64)> {
    let bad = |what: &str| anyhow::anyhow!("{}: {what}; remove it to start over", path.display());
    let v: Value = serde_json::from_str(text).map_err(|e| bad(&format!("not valid JSON ({e})")))?;
    let was = v.get("settings").ok_or_else(|| bad("no settings"))?;
    if let (Some(a), Some(b)) = (was.as_object(), settings.as_object()) {
        for (k, now) in b {
            if a.get(k) != Some(now) {
                bail!(
                    "{}: written by a run with {k} = {}, this run has {now}; use the same settings to resume, or another --out",
                    path.display(),
                    a.get(k).map_or("nothing".to_string(), |x| x.to_string())
                );
            }
        }
    }
    let chains_done = v
        .get("chains_done")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("no chains_done"))? as usize;
    let bytes = v
        .get("bytes")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("no bytes"))?;
    let stats: SynthStats = serde_json::from_value(v.get("stats").cloned().unwrap_or_default())
        .map_err(|e| bad(&format!("bad stats ({e})")))?;
    let have = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    if have < bytes {
        bail!(
            "{}: {have} bytes, but {} says {bytes} were written; the output was changed, cannot resume",
            out.display(),
            path.display()
        );
    }
    Ok((stats, chains_done, bytes))
}

#[cfg(test)]
mod tests;
