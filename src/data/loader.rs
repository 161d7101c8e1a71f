//! The mixture and packing loader: draws documents from weighted sources of token shards and
//! packs them into fixed-length sequences, so raw and instruction-augmented text share sequences.
//!
//! * **Sources.** Each source is a glob of shards (kiln or llm.c format) with a weight by tokens.
//!   A source is chosen for each new document by a smooth weighted round-robin with seeded jitter:
//!   the source furthest behind its token share (plus a random fraction of a document) goes next,
//!   so token shares track the weights within a few documents while the order stays random.
//! * **Order.** Within a source, documents are visited in a seeded pseudo-random permutation per
//!   epoch (a keyed Feistel bijection: O(1) memory, recomputed on resume), or in file order with
//!   `shuffle = false`. A source that runs out starts its next epoch.
//! * **Validation split.** A document belongs to the validation split when a keyed hash of
//!   (source, document) falls below `val_fraction`; training never sees it.
//! * **Packing.** Documents are concatenated into one stream; sequence g covers stream tokens
//!   [g·T, g·T + T + 1), so consecutive sequences share one token and every token is a target once.
//!   Each row carries per-token document ids and cu_seqlens (attention never crosses documents)
//!   and the loss mask of its targets (from the shards' mask bits; all ones otherwise).
//! * **Ranks.** Sequence g goes to rank g mod world_size: disjoint, and together complete.
//! * **Cursor.** The loader's whole position is a small serialisable [`Cursor`]; restoring it
//!   continues with exactly the batches the uninterrupted run would have produced.
//!
//! It does not tokenize, template or read text: `kiln prep` did that.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::shard::Shard;
use crate::rng::{derive_seed, splitmix64, Rng};

/// One weighted source of shards.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub name: String,
    /// A glob (or a single path) of shard files.
    pub path: String,
    /// Share of training tokens (normalised over all sources).
    pub weight: f64,
}

#[derive(Clone, Debug)]
pub struct LoaderOptions {
    /// T: tokens per row (inputs); rows hold T + 1 stream tokens.
    pub seq_len: usize,
    /// B: rows per micro-batch.
    pub batch_size: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub val_fraction: f64,
    pub rank: usize,
    pub world_size: usize,
    /// Every token id must be below this (the tokenizer's vocabulary size).
    pub vocab_size: u64,
    /// Expected tokenizer fingerprint; kiln shards recording another one are refused.
    pub fingerprint: Option<u64>,
    /// Document-start token of llm.c shards (their boundaries).
    pub delimiter: Option<u32>,
}

/// Which documents a loader serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
}

struct Source {
    spec: SourceSpec,
    shards: Vec<Shard>,
    /// Cumulative document counts: shard i holds documents cum_docs[i]..cum_docs[i+1].
    cum_docs: Vec<u64>,
    tokens: u64,
    /// Documents and tokens in the split this loader serves.
    split_docs: u64,
    split_tokens: u64,
}

impl Source {
    fn num_docs(&self) -> u64 {
        *self.cum_docs.last().unwrap_or(&0)
    }

    fn locate(&self, doc: u64) -> (&Shard, usize) {
        let i = self.cum_docs.partition_point(|&c| c <= doc) - 1;
        (&self.shards[i], (doc - self.cum_docs[i]) as usize)
    }

    fn doc_len(&self, doc: u64) -> u64 {
        let (shard, d) = self.locate(doc);
        let r = shard.document(d);
        r.end - r.start
    }
}

/// Position within one source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCursor {
    pub epoch: u64,
    /// Next index into this epoch's permutation.
    pub next: u64,
    /// Tokens drawn from this source so far (drives the weighted round-robin).
    pub taken: u64,
}

/// A document being read: source, document number, offset of the next token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocPos {
    pub source: usize,
    pub doc: u64,
    pub offset: u64,
}

/// The loader's complete position. Serialise it into checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub sources: Vec<SourceCursor>,
    pub head: Option<DocPos>,
    /// The last token of the previous sequence, which starts the next: (id, in the loss).
    pub carry: Option<(u32, bool)>,
    /// Sequences produced so far, over all ranks.
    pub sequence: u64,
    pub rng: Rng,
}

/// One micro-batch. All arrays are (B, T) row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    /// Document index of each input token within its row, starting at 0.
    pub doc_ids: Vec<u32>,
    /// Start offsets of the documents over the flattened B·T tokens, then B·T (varlen attention).
    pub cu_seqlens: Vec<u32>,
    /// 1 where the target counts in the loss.
    pub loss_mask: Vec<u8>,
}

pub struct Loader {
    opts: LoaderOptions,
    split: Split,
    sources: Vec<Source>,
    weights: Vec<f64>,
    mean_doc_len: f64,
    cursor: Cursor,
    // Scratch for one row, reused.
    row_tokens: Vec<u32>,
    row_mask: Vec<bool>,
    row_docs: Vec<u32>,
}

/// Expand a glob (or a plain path) into a sorted list of files; error naming it when empty.
pub fn expand_glob(pattern: &str, base: &Path) -> Result<Vec<PathBuf>> {
    let full = if Path::new(pattern).is_absolute() {
        pattern.to_string()
    } else {
        base.join(pattern).to_string_lossy().into_owned()
    };
    let mut paths: Vec<PathBuf> = glob::glob(&full)
        .with_context(|| format!("invalid glob pattern {pattern:?}"))?
        .filter_map(|p| p.ok())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("{full}: the pattern matches no file");
    }
    Ok(paths)
}

fn in_validation(seed: u64, source: usize, doc: u64, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    let h = derive_seed(
        derive_seed(seed ^ 0x7661_6c69_6461_7465, source as u64),
        doc,
    );
    (h as f64) < fraction * u64::MAX as f64
}

/// A keyed pseudo-random permutation of [0, n): a 4-round Feistel network on the smallest
/// even-bit-width power-of-two domain ≥ n, with cycle walking.
fn permute(index: u64, n: u64, key: u64) -> u64 {
    debug_assert!(index < n);
    let bits = (64 - (n.max(2) - 1).leading_zeros()).div_ceil(2) as u64; // half width
    let mask = (1u64 << bits) - 1;
    let mut x = index;
    loop {
        let (mut l, mut r) = (x >> bits, x & mask);
        for round in 0..4u64 {
            let mut k = key ^ (round << 56) ^ r;
            let f = splitmix64(&mut k) & mask;
            (l, r) = (r, l ^ f);
        }
        x = (l << bits) | r;
        if x < n {
            return x;
        }
    }
}

impl Loader {
    /// Open every shard of every source (validated), for the given split. `base` resolves relative
    /// globs (the config file's directory).
    pub fn new(
        specs: &[SourceSpec],
        opts: LoaderOptions,
        split: Split,
        base: &Path,
    ) -> Result<Self> {
        if specs.is_empty() {
            bail!("the data config lists no sources");
        }
        if opts.seq_len == 0 || opts.batch_size == 0 {
            bail!("seq_len and batch_size must be positive");
        }
        if opts.world_size == 0 || opts.rank >= opts.world_size {
            bail!(
                "rank {} is not below world size {}",
                opts.rank,
                opts.world_size
            );
        }
        if !(0.0..1.0).contains(&opts.val_fraction) {
            bail!("val_fraction {} must be in [0, 1)", opts.val_fraction);
        }
        let mut sources = Vec::new();
        for (si, spec) in specs.iter().enumerate() {
            if !(spec.weight >= 0.0 && spec.weight.is_finite()) {
                bail!(
                    "source {:?}: weight {} must be a non-negative number",
                    spec.name,
                    spec.weight
                );
            }
            let paths =
                expand_glob(&spec.path, base).with_context(|| format!("source {:?}", spec.name))?;
            let mut shards = Vec::new();
            let mut cum_docs = vec![0u64];
            let mut tokens = 0;
            for p in paths {
                let shard = Shard::open(&p, opts.vocab_size, opts.delimiter)?;
                if let (Some(want), Some(got)) = (opts.fingerprint, shard.fingerprint()) {
                    if want != got {
                        bail!(
                            "{}: shard was tokenized with another tokenizer (fingerprint {got:016x}, the config's tokenizer is {want:016x}); re-run kiln prep with the config's tokenizer",
                            p.display()
                        );
                    }
                }
                tokens += shard.num_tokens();
                cum_docs.push(cum_docs.last().unwrap() + shard.num_documents() as u64);
                shards.push(shard);
            }
            let mut src = Source {
                spec: spec.clone(),
                shards,
                cum_docs,
                tokens,
                split_docs: 0,
                split_tokens: 0,
            };
            for d in 0..src.num_docs() {
                let val = in_validation(opts.seed, si, d, opts.val_fraction);
                if val == (split == Split::Validation) {
                    let len = src.doc_len(d);
                    if len > 0 {
                        src.split_docs += 1;
                        src.split_tokens += len;
                    }
                }
            }
            sources.push(src);
        }
        let mut weights: Vec<f64> = sources
            .iter()
            .map(|s| {
                if s.split_tokens > 0 {
                    s.spec.weight
                } else {
                    0.0
                }
            })
            .collect();
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            bail!(
                "no {} tokens: every source is empty or has weight 0",
                if split == Split::Train {
                    "training"
                } else {
                    "validation"
                }
            );
        }
        weights.iter_mut().for_each(|w| *w /= total);
        let (docs, toks) = sources.iter().fold((0u64, 0u64), |(d, t), s| {
            (d + s.split_docs, t + s.split_tokens)
        });
        let mean_doc_len = toks as f64 / docs.max(1) as f64;
        let cursor = Cursor {
            sources: vec![SourceCursor::default(); sources.len()],
            head: None,
            carry: None,
            sequence: 0,
            rng: Rng::new(derive_seed(opts.seed, 0x6d69_7874)),
        };
        let t = opts.seq_len;
        Ok(Loader {
            opts,
            split,
            sources,
            weights,
            mean_doc_len,
            cursor,
            row_tokens: Vec::with_capacity(t + 1),
            row_mask: Vec::with_capacity(t + 1),
            row_docs: Vec::with_capacity(t + 1),
        })
    }

    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// Continue from a saved cursor (from a loader built with the same config).
    pub fn restore(&mut self, cursor: Cursor) -> Result<()> {
        if cursor.sources.len() != self.sources.len() {
            bail!(
                "data cursor has {} sources, the config has {}: the data config changed since the checkpoint",
                cursor.sources.len(),
                self.sources.len()
            );
        }
        self.cursor = cursor;
        Ok(())
    }

    /// Rewind to the start (validation passes start over each time).
    pub fn reset(&mut self) {
        let fresh = Cursor {
            sources: vec![SourceCursor::default(); self.sources.len()],
            head: None,
            carry: None,
            sequence: 0,
            rng: Rng::new(derive_seed(self.opts.seed, 0x6d69_7874)),
        };
        self.cursor = fresh;
    }

    /// Tokens per source in this split, normalised weights, and the epochs each source is repeated
    /// when the run consumes `planned_tokens` tokens (over all ranks).
    pub fn report(&self, planned_tokens: u64) -> Vec<SourceReport> {
        self.sources
            .iter()
            .zip(&self.weights)
            .map(|(s, &w)| SourceReport {
                name: s.spec.name.clone(),
                shards: s.shards.len(),
                documents: s.split_docs,
                tokens: s.split_tokens,
                source_tokens: s.tokens,
                weight: w,
                epochs: if s.split_tokens == 0 {
                    0.0
                } else {
                    planned_tokens as f64 * w / s.split_tokens as f64
                },
            })
            .collect()
    }

    /// Total tokens in this split over all sources.
    pub fn split_tokens(&self) -> u64 {
        self.sources.iter().map(|s| s.split_tokens).sum()
    }

    /// Pick the source of the next document and the document itself.
    fn next_document(&mut self) -> DocPos {
        // Smooth weighted round-robin by tokens, with jitter of up to one mean document.
        let mut best = (f64::INFINITY, 0usize);
        for (i, &w) in self.weights.iter().enumerate() {
            if w <= 0.0 {
                continue;
            }
            let jitter = self.cursor.rng.f64() * self.mean_doc_len;
            let score = (self.cursor.sources[i].taken as f64 + jitter) / w;
            if score < best.0 {
                best = (score, i);
            }
        }
        let si = best.1;
        let key_base = derive_seed(self.opts.seed, si as u64);
        loop {
            let src = &self.sources[si];
            let n = src.num_docs();
            let sc = &mut self.cursor.sources[si];
            if sc.next >= n {
                sc.epoch += 1;
                sc.next = 0;
            }
            let idx = sc.next;
            sc.next += 1;
            let doc = if self.opts.shuffle {
                permute(idx, n, derive_seed(key_base, sc.epoch))
            } else {
                idx
            };
            let val = in_validation(self.opts.seed, si, doc, self.opts.val_fraction);
            if val != (self.split == Split::Validation) {
                continue;
            }
            let len = src.doc_len(doc);
            if len == 0 {
                continue;
            }
            sc.taken += len;
            return DocPos {
                source: si,
                doc,
                offset: 0,
            };
        }
    }

    /// Advance the stream by `count` tokens; with `copy`, append them to the row buffers, giving
    /// each token its row-local document id (a token that starts a document opens a new id, except
    /// as the row's first token).
    fn take(&mut self, mut count: usize, copy: bool) {
        while count > 0 {
            let mut pos = match self.cursor.head {
                Some(p) => p,
                None => self.next_document(),
            };
            let (shard, d) = self.sources[pos.source].locate(pos.doc);
            let range = shard.document(d);
            let len = range.end - range.start;
            let n = (count as u64).min(len - pos.offset);
            if copy {
                let mut serial = self.row_docs.last().copied().unwrap_or(0);
                if pos.offset == 0 && !self.row_docs.is_empty() {
                    serial += 1;
                }
                let r = range.start + pos.offset..range.start + pos.offset + n;
                shard.extend_tokens(r.clone(), &mut self.row_tokens);
                shard.extend_loss_mask(r, &mut self.row_mask);
                self.row_docs
                    .extend(std::iter::repeat_n(serial, n as usize));
            }
            pos.offset += n;
            count -= n as usize;
            self.cursor.head = (pos.offset < len).then_some(pos);
        }
    }

    /// Produce the next row of T + 1 stream tokens into the row buffers. With `copy` false (a row
    /// of another rank) only the last token is copied: it is the next row's first.
    fn next_row(&mut self, copy: bool) {
        self.row_tokens.clear();
        self.row_mask.clear();
        self.row_docs.clear();
        let mut need = self.opts.seq_len + 1;
        if let Some((tok, mask)) = self.cursor.carry {
            need -= 1;
            if copy {
                self.row_tokens.push(tok);
                self.row_mask.push(mask);
                self.row_docs.push(0);
            }
        }
        if copy {
            self.take(need, true);
        } else {
            self.take(need - 1, false);
            self.take(1, true);
        }
        let last = self.row_tokens.len() - 1;
        self.cursor.carry = Some((self.row_tokens[last], self.row_mask[last]));
        self.cursor.sequence += 1;
    }

    /// Skip the rows of other ranks up to global sequence `sequence` (data parallelism: after a
    /// step every rank calls this with the step's end, so all ranks hold the same cursor, which
    /// any world size can resume from). A no-op when the cursor is already there.
    pub fn skip_to(&mut self, sequence: u64) {
        while self.cursor.sequence < sequence {
            self.next_row(false);
        }
    }

    /// The next micro-batch of this rank.
    pub fn next_batch(&mut self) -> Batch {
        let (b, t) = (self.opts.batch_size, self.opts.seq_len);
        let mut batch = Batch {
            batch_size: b,
            seq_len: t,
            inputs: Vec::with_capacity(b * t),
            targets: Vec::with_capacity(b * t),
            doc_ids: Vec::with_capacity(b * t),
            cu_seqlens: Vec::with_capacity(b + 8),
            loss_mask: Vec::with_capacity(b * t),
        };
        let world = self.opts.world_size as u64;
        for row in 0..b {
            loop {
                let mine = self.cursor.sequence % world == self.opts.rank as u64;
                self.next_row(mine);
                if mine {
                    break;
                }
            }
            batch.inputs.extend_from_slice(&self.row_tokens[..t]);
            batch.targets.extend_from_slice(&self.row_tokens[1..]);
            batch
                .loss_mask
                .extend(self.row_mask[1..].iter().map(|&m| m as u8));
            batch.doc_ids.extend_from_slice(&self.row_docs[..t]);
            for i in 0..t {
                if i == 0 || self.row_docs[i] != self.row_docs[i - 1] {
                    batch.cu_seqlens.push((row * t + i) as u32);
                }
            }
        }
        batch.cu_seqlens.push((b * t) as u32);
        batch
    }
}

/// Per-source numbers printed at start.
#[derive(Clone, Debug, Serialize)]
pub struct SourceReport {
    pub name: String,
    pub shards: usize,
    pub documents: u64,
    /// Tokens in this split.
    pub tokens: u64,
    /// Tokens in the source, both splits.
    pub source_tokens: u64,
    pub weight: f64,
    pub epochs: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::ShardWriter;

    /// Write `docs` documents of varied length into `shards` shards; tokens encode (source, doc, i).
    fn write_source(dir: &Path, name: &str, source: u32, docs: u32, shards: u32) {
        let per = docs.div_ceil(shards);
        for s in 0..shards {
            let path = dir.join(format!("{name}_{s:03}.kiln"));
            let mut w = ShardWriter::create(&path, 1 << 20, 7, false).unwrap();
            for d in s * per..((s + 1) * per).min(docs) {
                let len = 5 + (d * 37 % 150);
                let doc: Vec<u32> = (0..len)
                    .map(|i| source << 18 | (d % 1024) << 8 | (i % 256))
                    .collect();
                w.push_document(&doc, None).unwrap();
            }
            w.finish().unwrap();
        }
    }

    fn opts(batch: usize, seq: usize) -> LoaderOptions {
        LoaderOptions {
            seq_len: seq,
            batch_size: batch,
            seed: 11,
            shuffle: true,
            val_fraction: 0.0,
            rank: 0,
            world_size: 1,
            vocab_size: 1 << 20,
            fingerprint: Some(7),
            delimiter: None,
        }
    }

    fn specs(dir: &Path, weights: &[f64]) -> Vec<SourceSpec> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| SourceSpec {
                name: format!("s{i}"),
                path: dir
                    .join(format!("s{i}_*.kiln"))
                    .to_string_lossy()
                    .into_owned(),
                weight: w,
            })
            .collect()
    }

    #[test]
    fn permutation_is_a_bijection() {
        for n in [1u64, 2, 3, 17, 1000, 4097] {
            let mut seen: Vec<u64> = (0..n).map(|i| permute(i, n, 99)).collect();
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn unshuffled_single_source_streams_documents_in_order_with_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        write_source(dir.path(), "s0", 0, 40, 3);
        let mut o = opts(2, 64);
        o.shuffle = false;
        let mut l = Loader::new(&specs(dir.path(), &[1.0]), o, Split::Train, dir.path()).unwrap();
        // Rebuild the stream from batches: inputs of each row, plus the last target.
        let mut stream = Vec::new();
        for _ in 0..10 {
            let b = l.next_batch();
            for r in 0..2 {
                stream.extend_from_slice(&b.inputs[r * 64..(r + 1) * 64]);
                // Document ids change exactly where a document starts (token index i == 0).
                for i in 1..64 {
                    let starts = b.inputs[r * 64 + i] & 0xff == 0;
                    assert_eq!(b.doc_ids[r * 64 + i] != b.doc_ids[r * 64 + i - 1], starts);
                }
                assert_eq!(
                    &b.targets[r * 64..r * 64 + 63],
                    &b.inputs[r * 64 + 1..(r + 1) * 64]
                );
            }
            assert_eq!(*b.cu_seqlens.last().unwrap(), 128);
            assert!(b.cu_seqlens.windows(2).all(|w| w[0] < w[1]));
        }
        let mut expect = Vec::new();
        'outer: for d in 0..40u32 {
            for i in 0..5 + (d * 37 % 150) {
                expect.push((d % 1024) << 8 | (i % 256));
                if expect.len() == stream.len() {
                    break 'outer;
                }
            }
        }
        assert_eq!(stream, expect);
    }

    #[test]
    fn mixture_weights_hold_within_one_percent_over_a_million_tokens() {
        let dir = tempfile::tempdir().unwrap();
        write_source(dir.path(), "s0", 0, 3000, 2);
        write_source(dir.path(), "s1", 1, 500, 1);
        write_source(dir.path(), "s2", 2, 800, 1);
        let w = [0.6, 0.25, 0.15];
        let mut l = Loader::new(
            &specs(dir.path(), &w),
            opts(8, 256),
            Split::Train,
            dir.path(),
        )
        .unwrap();
        let mut counts = [0u64; 3];
        let mut total = 0;
        while total < 1_000_000 {
            let b = l.next_batch();
            for &t in &b.targets {
                counts[(t >> 18) as usize] += 1;
            }
            total += b.targets.len() as u64;
        }
        for i in 0..3 {
            let share = counts[i] as f64 / total as f64;
            assert!(
                (share - w[i]).abs() < 0.01,
                "source {i}: {share} vs {}",
                w[i]
            );
        }
        let rep = l.report(1_000_000);
        assert!(rep[1].epochs > 1.0, "the small source repeats: {rep:?}");
    }

    #[test]
    fn resumed_cursor_gives_identical_batches() {
        let dir = tempfile::tempdir().unwrap();
        write_source(dir.path(), "s0", 0, 200, 2);
        write_source(dir.path(), "s1", 1, 50, 1);
        let sp = specs(dir.path(), &[0.7, 0.3]);
        let mut a = Loader::new(&sp, opts(4, 100), Split::Train, dir.path()).unwrap();
        for _ in 0..7 {
            a.next_batch();
        }
        let saved = serde_json::to_string(a.cursor()).unwrap();
        let want: Vec<Batch> = (0..30).map(|_| a.next_batch()).collect();
        let mut b = Loader::new(&sp, opts(4, 100), Split::Train, dir.path()).unwrap();
        b.restore(serde_json::from_str(&saved).unwrap()).unwrap();
        let got: Vec<Batch> = (0..30).map(|_| b.next_batch()).collect();
        assert_eq!(got, want);
        // And the same config from scratch gives the same batches.
        let mut c = Loader::new(&sp, opts(4, 100), Split::Train, dir.path()).unwrap();
        let mut d = Loader::new(&sp, opts(4, 100), Split::Train, dir.path()).unwrap();
        assert_eq!(c.next_batch(), d.next_batch());
    }

    #[test]
    fn ranks_are_disjoint_and_together_complete() {
        let dir = tempfile::tempdir().unwrap();
        write_source(dir.path(), "s0", 0, 100, 1);
        write_source(dir.path(), "s1", 1, 100, 1);
        let sp = specs(dir.path(), &[0.5, 0.5]);
        let rows = |rank: usize, world: usize, batches: usize| -> Vec<Vec<u32>> {
            let mut o = opts(2, 50);
            o.rank = rank;
            o.world_size = world;
            let mut l = Loader::new(&sp, o, Split::Train, dir.path()).unwrap();
            (0..batches)
                .flat_map(|_| {
                    let b = l.next_batch();
                    (0..2)
                        .map(move |r| b.inputs[r * 50..(r + 1) * 50].to_vec())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let single = rows(0, 1, 12); // 24 rows
        let parts: Vec<Vec<Vec<u32>>> = (0..3).map(|r| rows(r, 3, 4)).collect(); // 3 × 8 rows
        for (g, row) in single.iter().enumerate() {
            assert_eq!(&parts[g % 3][g / 3], row, "row {g}");
        }
    }

    #[test]
    fn skip_to_gives_every_rank_the_global_cursor_and_another_world_size_continues_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        write_source(dir.path(), "s0", 0, 100, 1);
        let sp = specs(dir.path(), &[1.0]);
        let loader = |rank: usize, world: usize| {
            let mut o = opts(2, 30);
            o.rank = rank;
            o.world_size = world;
            Loader::new(&sp, o, Split::Train, dir.path()).unwrap()
        };
        let rows_of = |b: &Batch| -> Vec<Vec<u32>> {
            (0..2)
                .map(|r| b.inputs[r * 30..(r + 1) * 30].to_vec())
                .collect()
        };
        // One rank: 10 batches of 2 rows = global sequences 0..20.
        let mut single = loader(0, 1);
        let reference: Vec<Vec<u32>> = (0..10)
            .flat_map(|_| rows_of(&single.next_batch()))
            .collect();
        // World 3 for one step (sequences 0..6), then every rank skips to 6: equal cursors.
        let mut three: Vec<Loader> = (0..3).map(|r| loader(r, 3)).collect();
        for l in &mut three {
            l.next_batch();
            l.skip_to(6);
        }
        assert!(three.iter().all(|l| l.cursor() == three[0].cursor()));
        // Resume that cursor with world 4: the next batches cover sequences 6..14 exactly.
        let cursor = three[0].cursor().clone();
        let mut got: Vec<Vec<u32>> = Vec::new();
        for r in 0..4 {
            let mut l = loader(r, 4);
            l.restore(cursor.clone()).unwrap();
            got.extend(rows_of(&l.next_batch()));
        }
        let mut want = reference[6..14].to_vec();
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn validation_split_is_disjoint_from_training() {
        let dir = tempfile::tempdir().unwrap();
        write_source(dir.path(), "s0", 0, 400, 1);
        let sp = specs(dir.path(), &[1.0]);
        let mut o = opts(1, 40);
        o.val_fraction = 0.1;
        let docs_of = |split: Split| {
            let mut l = Loader::new(&sp, o.clone(), split, dir.path()).unwrap();
            let mut set = std::collections::BTreeSet::new();
            for _ in 0..300 {
                for &t in &l.next_batch().inputs {
                    set.insert(t >> 8);
                }
            }
            set
        };
        let train = docs_of(Split::Train);
        let val = docs_of(Split::Validation);
        assert!(train.is_disjoint(&val));
        assert!(!val.is_empty() && val.len() < 80, "{}", val.len());
    }

    #[test]
    fn fingerprint_mismatch_and_empty_glob_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_source(dir.path(), "s0", 0, 10, 1);
        let mut o = opts(1, 8);
        o.fingerprint = Some(8);
        let e = Loader::new(&specs(dir.path(), &[1.0]), o, Split::Train, dir.path())
            .err()
            .unwrap();
        assert!(
            format!("{e:#}").contains("s0_000.kiln: shard was tokenized with another tokenizer"),
            "{e:#}"
        );
        let e = Loader::new(
            &specs(dir.path(), &[1.0, 1.0]),
            opts(1, 8),
            Split::Train,
            dir.path(),
        )
        .err()
        .unwrap();
        assert!(
            format!("{e:#}").contains("s1_*.kiln: the pattern matches no file"),
            "{e:#}"
        );
    }
}
