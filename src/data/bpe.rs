//! A fast byte-level BPE encoder that reproduces the `tokenizers` crate id for id.
//!
//! `FastBpe` owns the whole encode path of a byte-level BPE `tokenizer.json`: splitting out added
//! tokens, pre-tokenization (see `crate::data::pretokenize`), and the BPE merge loop on the
//! bytes of each word. Merges apply in merge-list priority, keyed by the pair of token ids, so the
//! result equals `Tokenizer::encode(text, false)` for any tokenizer.json it accepts, including
//! ones whose vocab ids do not follow merge order. Configurations it does not reproduce exactly
//! make `from_tokenizer_json` answer `Ok(None)` so the caller can use the `tokenizers` crate.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;
use serde_json::{Map, Value};

use crate::data::pretokenize::Splitter;

/// Words up to this many bytes merge in stack arrays with a linear scan; longer ones use a heap.
const SMALL_WORD: usize = 64;

/// No merge for this pair.
const NO_MERGE: u64 = u64::MAX;

/// The GPT-2 byte-to-unicode alphabet: printable bytes map to themselves, the others to
/// U+0100 onwards in byte order.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let cp = if printable {
            b
        } else {
            shifted += 1;
            255 + shifted
        };
        *slot = char::from_u32(cp).unwrap_or('\0');
    }
    table
}

/// The bytes a byte-level vocab string stands for; `None` if it uses characters outside the
/// alphabet.
fn token_bytes(token: &str, reverse: &FxHashMap<char, u8>) -> Option<Vec<u8>> {
    token.chars().map(|c| reverse.get(&c).copied()).collect()
}

/// Leftmost-longest matcher over a small set of added tokens.
#[derive(Debug, Default)]
struct AddedMatcher {
    first_byte: Vec<bool>,
    /// (content, id), longest first.
    tokens: Vec<(Box<[u8]>, u32)>,
}

impl AddedMatcher {
    fn new(mut tokens: Vec<(Box<[u8]>, u32)>) -> Self {
        tokens.sort_by_key(|t| Reverse(t.0.len()));
        let mut first_byte = vec![false; 256];
        for (t, _) in &tokens {
            first_byte[t[0] as usize] = true;
        }
        AddedMatcher { first_byte, tokens }
    }

    /// The leftmost match at or after `from`, longest among those starting there.
    fn find(&self, b: &[u8], from: usize) -> Option<(usize, usize, u32)> {
        for i in from..b.len() {
            if self.first_byte[b[i] as usize] {
                for (t, id) in &self.tokens {
                    if b[i..].starts_with(t) {
                        return Some((i, i + t.len(), *id));
                    }
                }
            }
        }
        None
    }
}

/// Byte-level BPE encoder equivalent to the `tokenizers` crate for the configurations it accepts.
#[derive(Debug)]
pub struct FastBpe {
    /// Token id of each single byte.
    byte_ids: [u32; 256],
    /// `(left << 32) | right` → `(priority << 32) | merged`; priority is the merge-list index.
    merges: FxHashMap<u64, u64>,
    /// Words that encode to exactly one token: under `ignore_merges` every vocab entry, otherwise
    /// the entries the merges rebuild from their own bytes.
    whole: FxHashMap<Box<[u8]>, u32>,
    max_whole_len: usize,
    /// `Split` stages before ByteLevel; with `add_prefix_space` off this also holds ByteLevel's
    /// own regex stage.
    stages: Vec<Splitter>,
    /// ByteLevel `add_prefix_space`.
    add_prefix_space: bool,
    /// ByteLevel's regex stage when `add_prefix_space` is on (it runs after the prefix).
    prefixed_stage: Option<Splitter>,
    /// Added tokens matched on the raw text, then those matched on the normalized text.
    added: [AddedMatcher; 2],
}

fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> &'a Value {
    obj.get(key).unwrap_or(&Value::Null)
}

fn type_of(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

/// A string option that must be null or empty.
fn empty_str(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// The pre-tokenizer shapes this encoder reproduces: `ByteLevel`, or a `Sequence` of `Split`
/// stages (Isolated, not inverted) ending in `ByteLevel`. Returns the split stages, ByteLevel's
/// `add_prefix_space` and `use_regex`.
fn parse_pre_tokenizer(v: &Value) -> Option<(Vec<Splitter>, bool, bool)> {
    let parts: Vec<&Value> = match type_of(v)? {
        "ByteLevel" => vec![v],
        "Sequence" => v.get("pretokenizers")?.as_array()?.iter().collect(),
        _ => return None,
    };
    let (byte_level, splits) = parts.split_last()?;
    if type_of(byte_level)? != "ByteLevel" {
        return None;
    }
    let add_prefix_space = byte_level.get("add_prefix_space")?.as_bool()?;
    let use_regex = match byte_level.get("use_regex") {
        None => true,
        Some(u) => u.as_bool()?,
    };
    let mut stages = Vec::new();
    for split in splits {
        if type_of(split)? != "Split"
            || split.get("behavior")?.as_str()? != "Isolated"
            || split.get("invert")?.as_bool()?
        {
            return None;
        }
        let pattern = split.get("pattern")?;
        let splitter = if let Some(re) = pattern.get("Regex").and_then(Value::as_str) {
            Splitter::new(re).ok()?
        } else {
            let literal = pattern.get("String")?.as_str()?;
            Splitter::regex(&fancy_regex::escape(literal)).ok()?
        };
        stages.push(splitter);
    }
    Some((stages, add_prefix_space, use_regex))
}

impl FastBpe {
    /// Build from a tokenizer.json's text. `Ok(None)` when the tokenizer is not a byte-level BPE
    /// this encoder reproduces exactly; `Err` only for malformed JSON.
    pub fn from_tokenizer_json(json: &str) -> Result<Option<FastBpe>, String> {
        let root: Value =
            serde_json::from_str(json).map_err(|e| format!("bad tokenizer.json: {e}"))?;
        let root = root
            .as_object()
            .ok_or_else(|| "bad tokenizer.json: not an object".to_string())?;
        Ok(Self::from_root(root))
    }

    fn from_root(root: &Map<String, Value>) -> Option<FastBpe> {
        if !field(root, "truncation").is_null() || !field(root, "padding").is_null() {
            return None;
        }
        let normalizer = field(root, "normalizer");
        let no_normalizer = normalizer.is_null()
            || (type_of(normalizer) == Some("Sequence")
                && normalizer
                    .get("normalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.is_empty()));
        if !no_normalizer {
            return None;
        }
        let decoder = field(root, "decoder");
        if !decoder.is_null() && type_of(decoder) != Some("ByteLevel") {
            return None;
        }
        let (mut stages, add_prefix_space, use_regex) =
            parse_pre_tokenizer(field(root, "pre_tokenizer"))?;

        let model = root.get("model")?.as_object()?;
        if model
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "BPE")
        {
            return None;
        }
        let dropout_off = match field(model, "dropout") {
            Value::Null => true,
            d => d.as_f64() == Some(0.0),
        };
        if !dropout_off
            || !empty_str(field(model, "continuing_subword_prefix"))
            || !empty_str(field(model, "end_of_word_suffix"))
        {
            return None;
        }
        let ignore_merges = field(model, "ignore_merges").as_bool().unwrap_or(false);
        let vocab_json = model.get("vocab")?.as_object()?;
        let mut vocab: FxHashMap<&str, u32> = FxHashMap::default();
        for (token, id) in vocab_json {
            vocab.insert(token.as_str(), u32::try_from(id.as_u64()?).ok()?);
        }

        let alphabet = byte_alphabet();
        let reverse: FxHashMap<char, u8> = alphabet
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let mut byte_ids = [0u32; 256];
        for (b, c) in alphabet.iter().enumerate() {
            byte_ids[b] = *vocab.get(c.to_string().as_str())?;
        }

        let mut merges: FxHashMap<u64, u64> = FxHashMap::default();
        let mut priority = 0u64;
        for merge in model.get("merges")?.as_array()? {
            let (a, b) = match merge {
                Value::String(s) => {
                    if s.starts_with("#version") {
                        continue;
                    }
                    let mut parts = s.split(' ');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(a), Some(b), None) => (a, b),
                        _ => return None,
                    }
                }
                Value::Array(pair) => match pair.as_slice() {
                    [a, b] => (a.as_str()?, b.as_str()?),
                    _ => return None,
                },
                _ => return None,
            };
            let a_id = *vocab.get(a)?;
            let b_id = *vocab.get(b)?;
            let merged_id = *vocab.get(format!("{a}{b}").as_str())?;
            merges.insert(
                (u64::from(a_id) << 32) | u64::from(b_id),
                (priority << 32) | u64::from(merged_id),
            );
            priority += 1;
        }

        let added = Self::parse_added_tokens(field(root, "added_tokens"), &vocab)?;

        let regex_stage = use_regex.then_some(Splitter::Gpt2);
        let prefixed_stage = if add_prefix_space {
            regex_stage
        } else {
            stages.extend(regex_stage);
            None
        };
        let mut bpe = FastBpe {
            byte_ids,
            merges,
            whole: FxHashMap::default(),
            max_whole_len: 0,
            stages,
            add_prefix_space,
            prefixed_stage,
            added,
        };

        let mut whole = FxHashMap::default();
        let mut scratch = Vec::new();
        for (token, &id) in &vocab {
            let Some(bytes) = token_bytes(token, &reverse) else {
                continue;
            };
            if bytes.is_empty() {
                continue;
            }
            let keep = ignore_merges || {
                scratch.clear();
                bpe.merge(&bytes, &mut scratch);
                scratch.as_slice() == [id]
            };
            if keep {
                bpe.max_whole_len = bpe.max_whole_len.max(bytes.len());
                whole.insert(bytes.into_boxed_slice(), id);
            }
        }
        bpe.whole = whole;
        Some(bpe)
    }

    /// Added tokens with the ids `tokenizers` gives them (the model's id when the content is in the
    /// vocab, otherwise the next free id from the vocab size on), split by the `normalized` flag.
    fn parse_added_tokens(v: &Value, vocab: &FxHashMap<&str, u32>) -> Option<[AddedMatcher; 2]> {
        let list = match v {
            Value::Null => return Some([AddedMatcher::default(), AddedMatcher::default()]),
            v => v.as_array()?,
        };
        let mut next_id = u32::try_from(vocab.len()).ok()?;
        let mut seen: FxHashMap<&str, ()> = FxHashMap::default();
        let mut raw = Vec::new();
        let mut normalized = Vec::new();
        for t in list {
            let content = t.get("content")?.as_str()?;
            let flag = |k: &str| t.get(k).and_then(Value::as_bool);
            if flag("single_word")? || flag("lstrip")? || flag("rstrip")? {
                return None;
            }
            let is_normalized = flag("normalized")?;
            if content.is_empty() {
                continue;
            }
            if seen.insert(content, ()).is_some() {
                return None;
            }
            let id = match vocab.get(content) {
                Some(&id) => id,
                None => {
                    next_id += 1;
                    next_id - 1
                }
            };
            let entry = (content.as_bytes().to_vec().into_boxed_slice(), id);
            if is_normalized {
                normalized.push(entry);
            } else {
                raw.push(entry);
            }
        }
        Some([AddedMatcher::new(raw), AddedMatcher::new(normalized)])
    }

    /// Append the ids of `text` to `out`; identical to tokenizers' `encode(text, false).get_ids()`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        self.split_added(0, text, out);
    }

    /// Splits out the added tokens of matcher `phase` and passes the text between them on.
    fn split_added(&self, phase: usize, text: &str, out: &mut Vec<u32>) {
        let Some(matcher) = self.added.get(phase) else {
            self.encode_text(text, out);
            return;
        };
        if matcher.tokens.is_empty() {
            self.split_added(phase + 1, text, out);
            return;
        }
        let b = text.as_bytes();
        let mut prev = 0;
        while let Some((start, end, id)) = matcher.find(b, prev) {
            if start > prev {
                self.split_added(phase + 1, &text[prev..start], out);
            }
            out.push(id);
            prev = end;
        }
        if prev < b.len() {
            self.split_added(phase + 1, &text[prev..], out);
        }
    }

    /// Pre-tokenizes a text without added tokens and encodes each word.
    fn encode_text(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        if !self.add_prefix_space {
            match self.stages.as_slice() {
                [] => self.encode_word(text.as_bytes(), out),
                [one] => one.split(text, |w| self.encode_word(w.as_bytes(), out)),
                _ => self.run_stages(0, text, &mut |w| self.encode_word(w.as_bytes(), out)),
            }
            return;
        }
        self.run_stages(0, text, &mut |piece| {
            let prefixed;
            let piece = if piece.starts_with(' ') {
                piece
            } else {
                prefixed = format!(" {piece}");
                prefixed.as_str()
            };
            match &self.prefixed_stage {
                Some(stage) => stage.split(piece, |w| self.encode_word(w.as_bytes(), out)),
                None => self.encode_word(piece.as_bytes(), out),
            }
        });
    }

    fn run_stages(&self, level: usize, text: &str, f: &mut dyn FnMut(&str)) {
        match self.stages.get(level) {
            None => f(text),
            Some(stage) => stage.split(text, |piece| self.run_stages(level + 1, piece, f)),
        }
    }

    /// Encodes one pre-tokenized word.
    #[inline]
    fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        match word.len() {
            0 => {}
            1 => out.push(self.byte_ids[word[0] as usize]),
            n => {
                if n <= self.max_whole_len {
                    if let Some(&id) = self.whole.get(word) {
                        out.push(id);
                        return;
                    }
                }
                self.merge(word, out);
            }
        }
    }

    #[inline]
    fn pair(&self, left: u32, right: u32) -> u64 {
        self.merges
            .get(&((u64::from(left) << 32) | u64::from(right)))
            .copied()
            .unwrap_or(NO_MERGE)
    }

    /// Runs the merges on the bytes of `word`: repeatedly the adjacent pair of lowest merge
    /// priority, leftmost first.
    fn merge(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.len() <= SMALL_WORD {
            self.merge_small(word, out);
        } else {
            self.merge_large(word, out);
        }
    }

    fn merge_small(&self, word: &[u8], out: &mut Vec<u32>) {
        let mut n = word.len();
        if n == 0 {
            return;
        }
        let mut ids = [0u32; SMALL_WORD];
        let mut pairs = [NO_MERGE; SMALL_WORD];
        for (slot, &b) in ids.iter_mut().zip(word) {
            *slot = self.byte_ids[b as usize];
        }
        for k in 0..n - 1 {
            pairs[k] = self.pair(ids[k], ids[k + 1]);
        }
        while n > 1 {
            let mut best = NO_MERGE;
            let mut at = 0;
            for (k, &p) in pairs[..n - 1].iter().enumerate() {
                if p < best {
                    best = p;
                    at = k;
                }
            }
            if best == NO_MERGE {
                break;
            }
            ids[at] = best as u32;
            ids.copy_within(at + 2..n, at + 1);
            if at + 2 < n {
                pairs.copy_within(at + 2..n - 1, at + 1);
            }
            n -= 1;
            if at + 1 < n {
                pairs[at] = self.pair(ids[at], ids[at + 1]);
            }
            if at > 0 {
                pairs[at - 1] = self.pair(ids[at - 1], ids[at]);
            }
        }
        out.extend_from_slice(&ids[..n]);
    }

    fn merge_large(&self, word: &[u8], out: &mut Vec<u32>) {
        const NONE: usize = usize::MAX;
        let n = word.len();
        let mut ids: Vec<u32> = word.iter().map(|&b| self.byte_ids[b as usize]).collect();
        let mut next: Vec<usize> = (1..=n).map(|k| if k == n { NONE } else { k }).collect();
        let mut prev: Vec<usize> = (0..n).map(|k| k.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap: BinaryHeap<Reverse<(u64, usize)>> = (0..n - 1)
            .filter_map(|k| {
                let p = self.pair(ids[k], ids[k + 1]);
                (p != NO_MERGE).then_some(Reverse((p, k)))
            })
            .collect();
        while let Some(Reverse((p, at))) = heap.pop() {
            if !alive[at] {
                continue;
            }
            let right = next[at];
            if right == NONE || self.pair(ids[at], ids[right]) != p {
                continue;
            }
            ids[at] = p as u32;
            alive[right] = false;
            next[at] = next[right];
            if next[at] != NONE {
                prev[next[at]] = at;
            }
            if prev[at] != NONE {
                let q = self.pair(ids[prev[at]], ids[at]);
                if q != NO_MERGE {
                    heap.push(Reverse((q, prev[at])));
                }
            }
            if next[at] != NONE {
                let q = self.pair(ids[at], ids[next[at]]);
                if q != NO_MERGE {
                    heap.push(Reverse((q, at)));
                }
            }
        }
        let mut k = 0;
        while k != NONE {
            out.push(ids[k]);
            k = next[k];
        }
    }
}

#[cfg(test)]
mod tests;
