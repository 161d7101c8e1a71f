//! Text ↔ token ids for kiln: loads any Hugging Face `tokenizer.json` through the `tokenizers`
//! crate, encodes byte-level BPE tokenizers (GPT-2, Llama-3 style) with kiln's fast encoder
//! (`data::bpe`, id-for-id identical), frames documents with explicit BOS/EOS, fingerprints the
//! tokenizer for shard headers, and trains new byte-level BPE tokenizers.
//!
//! BOS/EOS are never added by the tokenizer's post-processor: `encode` adds no special tokens,
//! `encode_document` adds them once (a text that already starts with BOS gets no second one).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, ModelWrapper, PreTokenizerWrapper};

use super::bpe::FastBpe;

/// Special-token names kiln recognises as BOS / EOS, in order of preference.
const BOS_NAMES: &[&str] = &[
    "<|begin_of_text|>",
    "<s>",
    "<|startoftext|>",
    "<|endoftext|>",
];
const EOS_NAMES: &[&str] = &["<|end_of_text|>", "</s>", "<|endoftext|>"];

/// The special tokens a tokenizer trained by kiln carries (BOS, EOS), the synthesizer's `<s>`/`</s>`.
pub const TRAINED_SPECIAL_TOKENS: &[&str] = &["<s>", "</s>"];

/// A token's (start, end) byte offsets in the encoded text.
pub type ByteSpan = (usize, usize);

pub struct Tokenizer {
    path: PathBuf,
    inner: tokenizers::Tokenizer,
    fast: Option<FastBpe>,
    bos: Option<u32>,
    eos: Option<u32>,
    vocab_size: u64,
    fingerprint: u64,
}

/// FNV-1a, 64 bit: a stable hash for fingerprints (not for security).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A BPE model's merges must join two vocabulary tokens into a third (the second without the
/// `continuing_subword_prefix`); the tokenizers crate indexes out of bounds on merges that do not.
fn check_bpe_merges(root: &serde_json::Value) -> Result<()> {
    use serde_json::Value;
    let Some(model) = root
        .get("model")
        .filter(|m| m.get("type").is_none_or(|t| t == "BPE"))
    else {
        return Ok(());
    };
    let (Some(vocab), Some(merges)) = (
        model.get("vocab").and_then(Value::as_object),
        model.get("merges").and_then(Value::as_array),
    ) else {
        return Ok(());
    };
    let prefix = model
        .get("continuing_subword_prefix")
        .and_then(Value::as_str)
        .unwrap_or("");
    for merge in merges {
        let (a, b) = match merge {
            Value::String(s) if s.starts_with("#version") => continue,
            Value::String(s) => match s.split_once(' ') {
                Some(ab) => ab,
                None => continue,
            },
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => (a.as_str(), b.as_str()),
                _ => continue,
            },
            _ => continue,
        };
        let joined = b.strip_prefix(prefix).map(|rest| format!("{a}{rest}"));
        if !vocab.contains_key(a)
            || !vocab.contains_key(b)
            || !joined.is_some_and(|j| vocab.contains_key(&j))
        {
            bail!("merge {a:?} {b:?} does not join two vocabulary tokens into a third");
        }
    }
    Ok(())
}

impl Tokenizer {
    /// Load a `tokenizer.json`. BOS/EOS are taken from the names given, else recognised by name.
    pub fn from_file(path: &Path, bos: Option<&str>, eos: Option<&str>) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read tokenizer", path.display()))?;
        Self::from_json(&text, path, bos, eos)
    }

    pub fn from_json(
        text: &str,
        path: &Path,
        bos: Option<&str>,
        eos: Option<&str>,
    ) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}: not a valid tokenizer.json: {e}", path.display()))?;
        check_bpe_merges(&value)
            .map_err(|e| anyhow::anyhow!("{}: not a valid tokenizer.json: {e}", path.display()))?;
        // The tokenizers crate panics on some malformed files; that is a bad file, not a crash.
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(text.as_bytes()))
            .map_err(|_| {
                anyhow::anyhow!(
                    "{}: not a valid tokenizer.json: the tokenizers crate cannot load it",
                    path.display()
                )
            })?
            .map_err(|e| anyhow::anyhow!("{}: not a valid tokenizer.json: {e}", path.display()))?;
        // Fingerprint the parsed JSON re-serialised, so whitespace and formatting do not matter.
        let canonical = serde_json::to_vec(&value)?;
        let fingerprint = fnv1a64(&canonical);
        let fast = FastBpe::from_tokenizer_json(text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let find = |given: Option<&str>, names: &[&str], what: &str| -> Result<Option<u32>> {
            match given {
                Some(name) => match inner.token_to_id(name) {
                    Some(id) => Ok(Some(id)),
                    None => bail!(
                        "{}: {what} token {name:?} is not in the vocabulary",
                        path.display()
                    ),
                },
                None => Ok(names.iter().find_map(|n| inner.token_to_id(n))),
            }
        };
        let bos = find(bos, BOS_NAMES, "BOS")?;
        let eos = find(eos, EOS_NAMES, "EOS")?;
        let vocab_size = inner.get_vocab_size(true) as u64;
        Ok(Tokenizer {
            path: path.to_path_buf(),
            inner,
            fast,
            bos,
            eos,
            vocab_size,
            fingerprint,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Number of ids, added tokens included; every id the tokenizer emits is below it.
    pub fn vocab_size(&self) -> u64 {
        self.vocab_size
    }
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    /// True when encoding goes through kiln's fast byte-level BPE encoder.
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids of `text` with no special tokens added (added tokens written in the text still match).
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        match &self.fast {
            Some(fast) => fast.encode(text, out),
            None => {
                let enc = self.inner.encode_fast(text, false).map_err(|e| {
                    anyhow::anyhow!("{}: encoding failed: {e}", self.path.display())
                })?;
                out.extend_from_slice(enc.get_ids());
            }
        }
        Ok(())
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out)?;
        Ok(out)
    }

    /// Ids through the `tokenizers` crate only (the reference the fast encoder is checked against).
    pub fn encode_reference(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("{}: encoding failed: {e}", self.path.display()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids with byte offsets (start, end) into `text`, through the `tokenizers` crate.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteSpan>)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("{}: encoding failed: {e}", self.path.display()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// One document as stored in a shard: BOS (once) + text + EOS (when it differs from BOS).
    pub fn encode_document(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        self.frame_document(text, &mut out)?;
        Ok(out)
    }

    pub fn frame_document(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let start = out.len();
        if let Some(b) = self.bos {
            out.push(b);
        }
        self.encode_into(text, out)?;
        // Never a double BOS: the text may already begin with the BOS token's string.
        if let Some(b) = self.bos {
            if out.len() > start + 1 && out[start + 1] == b {
                out.remove(start);
            }
        }
        if let Some(e) = self.eos {
            if Some(e) != self.bos && out.last() != Some(&e) {
                out.push(e);
            }
        }
        Ok(())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| anyhow::anyhow!("{}: decoding failed: {e}", self.path.display()))
    }
}

/// Train a byte-level BPE tokenizer (GPT-2 style pre-tokenization, `<s>`/`</s>` special tokens)
/// on `texts` and write it as `tokenizer.json` at `out` (atomically).
pub fn train_byte_level_bpe<I, S>(texts: I, vocab_size: usize, out: &Path) -> Result<()>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let min = 256 + TRAINED_SPECIAL_TOKENS.len();
    if vocab_size < min {
        bail!("--vocab-size {vocab_size} is too small: a byte-level BPE needs at least {min}");
    }
    let mut tok = tokenizers::Tokenizer::new(ModelWrapper::BPE(BPE::default()));
    let byte_level = ByteLevel::default()
        .add_prefix_space(false)
        .trim_offsets(true)
        .use_regex(true);
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
    let specials = TRAINED_SPECIAL_TOKENS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let mut trainer = TrainerWrapper::BpeTrainer(
        BpeTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build(),
    );
    tok.train(&mut trainer, texts)
        .map_err(|e| anyhow::anyhow!("tokenizer training failed: {e}"))?;
    let json = tok
        .to_string(true)
        .map_err(|e| anyhow::anyhow!("cannot serialise the tokenizer: {e}"))?;
    crate::fsutil::write_atomic(out, json.as_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn small_tokenizer(dir: &Path) -> Tokenizer {
        let text = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
            .repeat(20);
        let path = dir.join("tokenizer.json");
        train_byte_level_bpe(
            [text.as_str(), "1234 5678 <s> hello </s>"].into_iter(),
            400,
            &path,
        )
        .unwrap();
        Tokenizer::from_file(&path, None, None).unwrap()
    }

    #[test]
    fn trained_tokenizer_round_trips_and_frames_documents_without_double_bos() {
        let dir = tempfile::tempdir().unwrap();
        let tok = small_tokenizer(dir.path());
        assert!(
            tok.is_fast(),
            "a GPT-2-style byte-level BPE should take the fast path"
        );
        let bos = tok.bos().unwrap();
        let eos = tok.eos().unwrap();
        let text = "The lazy fox, 42 jugs: ünïcödé ✓";
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, tok.encode_reference(text).unwrap());
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        let doc = tok.encode_document(text).unwrap();
        assert_eq!(doc[0], bos);
        assert_eq!(*doc.last().unwrap(), eos);
        let doc2 = tok.encode_document("<s>The fox").unwrap();
        assert_eq!(doc2[0], bos);
        assert_ne!(doc2[1], bos, "double BOS");
    }

    #[test]
    fn fingerprint_ignores_formatting_but_not_content() {
        let dir = tempfile::tempdir().unwrap();
        let tok = small_tokenizer(dir.path());
        let text = std::fs::read_to_string(tok.path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let compact = serde_json::to_string(&v).unwrap();
        let same = Tokenizer::from_json(&compact, Path::new("x"), None, None).unwrap();
        assert_eq!(same.fingerprint(), tok.fingerprint());
        let changed = compact.replacen("\"<s>\"", "\"<S>\"", 1);
        let other = Tokenizer::from_json(&changed, Path::new("x"), None, None).unwrap();
        assert_ne!(other.fingerprint(), tok.fingerprint());
    }

    #[test]
    fn merges_the_tokenizers_crate_would_panic_on_are_a_one_line_error() {
        let dir = tempfile::tempdir().unwrap();
        let tok = small_tokenizer(dir.path());
        let text = std::fs::read_to_string(tok.path()).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        // A prefix longer than a merge's second token; a merge joining into no vocabulary token.
        let mut long_prefix = v.clone();
        long_prefix["model"]["continuing_subword_prefix"] = "########".into();
        // "Ā" is byte 0 in the byte-level alphabet; "ĀĀ" is not a token of this vocabulary.
        let merge = serde_json::json!(["Ā Ā"]);
        v["model"]["merges"] = merge;
        for bad in [long_prefix, v] {
            let e = Tokenizer::from_json(&bad.to_string(), Path::new("t.json"), None, None)
                .err()
                .unwrap();
            let e = format!("{e:#}");
            assert!(
                e.starts_with("t.json: not a valid tokenizer.json: merge ") && !e.contains('\n'),
                "{e}"
            );
        }
    }

    #[test]
    fn sentencepiece_style_tokenizer_falls_back_to_the_tokenizers_crate() {
        use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
        // A Mistral-like tokenizer: Metaspace pre-tokenization, `<s>`/`</s>`, no byte-level alphabet.
        let mut tok = tokenizers::Tokenizer::new(ModelWrapper::BPE(BPE::default()));
        let meta = Metaspace::new('▁', PrependScheme::First, true);
        tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Metaspace(meta.clone())));
        tok.with_decoder(Some(DecoderWrapper::Metaspace(meta)));
        let mut trainer = TrainerWrapper::BpeTrainer(
            BpeTrainer::builder()
                .vocab_size(300)
                .show_progress(false)
                .special_tokens(vec![
                    AddedToken::from("<s>", true),
                    AddedToken::from("</s>", true),
                ])
                .build(),
        );
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(30);
        tok.train(&mut trainer, [text.as_str()].into_iter())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sp.json");
        std::fs::write(&path, tok.to_string(false).unwrap()).unwrap();
        let t = Tokenizer::from_file(&path, None, None).unwrap();
        assert!(!t.is_fast());
        assert_eq!(t.bos(), t.token_to_id("<s>"));
        assert_eq!(t.eos(), t.token_to_id("</s>"));
        let ids = t.encode("the lazy dog").unwrap();
        assert_eq!(ids, t.encode_reference("the lazy dog").unwrap());
        assert_eq!(t.decode(&ids, false).unwrap(), "the lazy dog");
        let doc = t.encode_document("<s>the fox").unwrap();
        assert_eq!(
            doc.iter().filter(|&&i| Some(i) == t.bos()).count(),
            1,
            "one BOS: {doc:?}"
        );
    }
}
