//! Equivalence tests of `FastBpe` against the `tokenizers` crate, plus a throughput measurement.
//!
//! Real vocabularies come from the rank files the `tiktoken-rs` dev-dependency ships in its
//! source (found under the cargo registry); `ranks_to_tokenizer_json` turns ranks into a
//! tokenizer.json with the standard tiktoken → Hugging Face merge derivation.

use super::*;
use crate::data::pretokenize::CL100K_PATTERN;
use crate::rng::Rng;
use serde_json::json;
use std::path::PathBuf;
use std::str::FromStr;
use tokenizers::Tokenizer;

/// A file in the `tiktoken-rs` package source inside the cargo registry.
fn tiktoken_asset(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let src = home.join("registry").join("src");
    let mut found = Vec::new();
    for index in std::fs::read_dir(&src)
        .expect("cargo registry src")
        .flatten()
    {
        for pkg in std::fs::read_dir(index.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let file_name = pkg.file_name();
            if file_name.to_string_lossy().starts_with("tiktoken-rs-") {
                let path = pkg.path().join("assets").join(name);
                if path.is_file() {
                    found.push(path);
                }
            }
        }
    }
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("{name} not found in the tiktoken-rs package under {src:?}"))
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 {s:?}"),
        }
    };
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | value(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Token bytes in rank order from a `.tiktoken` file (`base64 rank` per line).
fn tiktoken_ranks(name: &str) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(tiktoken_asset(name)).expect("read rank file");
    let mut ranks: Vec<(u32, Vec<u8>)> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (b64, rank) = l.split_once(' ').expect("rank line");
            (rank.parse().expect("rank"), base64_decode(b64))
        })
        .collect();
    ranks.sort();
    for (i, (r, _)) in ranks.iter().enumerate() {
        assert_eq!(*r as usize, i, "ranks are dense");
    }
    ranks.into_iter().map(|(_, t)| t).collect()
}

fn byte_level(bytes: &[u8]) -> String {
    let alphabet = byte_alphabet();
    bytes.iter().map(|&b| alphabet[b as usize]).collect()
}

/// tiktoken → tokenizer.json: vocab = ranks in the byte-level alphabet; for each multi-byte
/// token in rank order, the merge is the final pair left by BPE over its bytes using only
/// lower-ranked tokens.
fn ranks_to_tokenizer_json(
    ranks: &[Vec<u8>],
    pre_tokenizer: Value,
    specials: &[&str],
    ignore_merges: bool,
) -> String {
    let rank_of: FxHashMap<&[u8], usize> = ranks
        .iter()
        .enumerate()
        .map(|(r, t)| (t.as_slice(), r))
        .collect();
    let mut merges = Vec::new();
    for (rank, token) in ranks.iter().enumerate() {
        if token.len() < 2 {
            continue;
        }
        let mut parts: Vec<&[u8]> = token.chunks(1).collect();
        while parts.len() > 2 {
            let mut best: Option<(usize, usize)> = None;
            for k in 0..parts.len() - 1 {
                let joined = [parts[k], parts[k + 1]].concat();
                if let Some(&r) = rank_of.get(joined.as_slice()) {
                    if r < rank && best.is_none_or(|(br, _)| r < br) {
                        best = Some((r, k));
                    }
                }
            }
            let (_, k) = best.expect("token reachable by merges");
            let len = parts[k].len() + parts[k + 1].len();
            let start = parts[k].as_ptr() as usize - token.as_ptr() as usize;
            parts[k] = &token[start..start + len];
            parts.remove(k + 1);
        }
        merges.push(json!([byte_level(parts[0]), byte_level(parts[1])]));
    }
    let vocab: Map<String, Value> = ranks
        .iter()
        .enumerate()
        .map(|(r, t)| (byte_level(t), json!(r)))
        .collect();
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": ranks.len() + i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
                           "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                  "vocab": vocab, "merges": merges}
    })
    .to_string()
}

fn gpt2_pre_tokenizer() -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
}

fn llama3_pre_tokenizer() -> Value {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": CL100K_PATTERN}, "behavior": "Isolated",
         "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
    ]})
}

/// The real GPT-2 tokenizer: `encoder.json` and `vocab.bpe` (string merges) from tiktoken-rs.
fn gpt2_json() -> String {
    let vocab: Value = serde_json::from_str(
        &std::fs::read_to_string(tiktoken_asset("encoder.json")).expect("read encoder.json"),
    )
    .expect("encoder.json");
    let merges: Vec<Value> = std::fs::read_to_string(tiktoken_asset("vocab.bpe"))
        .expect("read vocab.bpe")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("#version"))
        .map(|l| json!(l))
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 50256, "content": "<|endoftext|>", "single_word": false,
                          "lstrip": false, "rstrip": false, "normalized": true,
                          "special": true}],
        "normalizer": null, "pre_tokenizer": gpt2_pre_tokenizer(),
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                           "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": merges}
    })
    .to_string()
}

fn llama3_json() -> String {
    ranks_to_tokenizer_json(
        &tiktoken_ranks("cl100k_base.tiktoken"),
        llama3_pre_tokenizer(),
        &[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|endoftext|>",
            "<|eot_id|>",
        ],
        true,
    )
}

/// A small byte-level BPE trained here with the tokenizers crate.
fn trained_json() -> String {
    use tokenizers::models::bpe::{BpeTrainer, BPE};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::AddedToken;
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(700)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
        .build()
        .into();
    let lines: Vec<String> = corpus()
        .iter()
        .cycle()
        .take(400)
        .map(|s| s.to_string())
        .collect();
    tokenizer
        .train(&mut trainer, lines.into_iter())
        .expect("train");
    tokenizer.to_string(false).expect("serialize")
}

/// Diverse texts for the equivalence tests.
fn corpus() -> Vec<String> {
    let mut texts: Vec<String> = [
        "Hello world! This is a simple English sentence, with punctuation.",
        "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX.",
        "I'm sure it's what they'd've said: we'll see, you're right, I've done it.",
        "CONTRACTIONS: IT'S, WE'LL, THEY'RE, I'VE, I'M, HE'D; Mixed: It'S, We'Ll, They'rE, 'ſ",
        "Numbers: 1234567 12 3.14159 1,000,000 2024-01-01 0x1F 1e-9 ½ ² ١٢٣٤٥",
        "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n\tprintln!(\"{x:?}\");\n}\n",
        "def f(a, b):\r\n    return a**2 + b  # comment\r\n\r\n\r\nclass C:\n\tpass\n",
        "many    spaces   and\t\ttabs \t \n\n\n  newlines   \n",
        "trailing whitespace   ",
        "   leading whitespace",
        " ",
        "\n",
        "\r\n\r\n",
        "emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷 and more🙂!",
        "CJK: 漢字とひらがなとカタカナ。中文文本，标点符号。한국어 텍스트입니다.",
        "Arabic: مرحبا بالعالم، كيف حالك؟ Hebrew: שלום עולם",
        "Combining marks: e\u{301} a\u{308} n\u{303} Z\u{335}\u{330}a\u{337}l\u{336}g\u{334}o",
        "Accented: café naïve façade résumé Ångström Øresund Łódź Ĳssel ǅ",
        "Special <|endoftext|> token<|endoftext|>inside<|endoftext|> <|endoftext|>",
        "<|begin_of_text|>Llama <|eot_id|>\n<|end_of_text|><|endoftext|><|endof",
        "URLs https://example.com/path?q=1&r=2#frag and emails someone@example.org",
        "Math: ∀x∈ℝ, x² ≥ 0; ∑_{i=1}^{n} i = n(n+1)/2 → ∞",
        "Mixed\u{a0}nbsp\u{2003}em\u{3000}ideographic\u{85}nel\u{200b}zwsp\u{1c}fs",
        "''''''' \"\"\" ''s 's 't ' s",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    texts.push("abcdefghij".repeat(40));
    texts.push(" ".repeat(300) + "x" + &"\n".repeat(200));
    texts.push("=".repeat(150) + "\n" + &"-".repeat(70));
    texts.push("1234567890".repeat(20));
    texts.push("😀".repeat(40));
    texts.push(texts.join(" "));
    texts
}

const FUZZ_ALPHABET: &[&str] = &[
    "a",
    "b",
    "s",
    "t",
    "S",
    "T",
    "L",
    "l",
    "d",
    "D",
    "m",
    "r",
    "e",
    "v",
    "E",
    "th",
    "the",
    "ing",
    " the",
    "0",
    "1",
    "7",
    "'",
    "'",
    ".",
    ",",
    "!",
    "?",
    "-",
    "(",
    "\"",
    " ",
    " ",
    " ",
    " ",
    "\n",
    "\n",
    "\r\n",
    "\r",
    "\t",
    "é",
    "ſ",
    "漢",
    "😀",
    "\u{301}",
    "\u{a0}",
    "١",
    "<|endoftext|>",
    "<|",
    "|>",
    "_",
    "€",
];

fn fuzz_texts(count: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let len = rng.index(30);
            (0..len)
                .map(|_| FUZZ_ALPHABET[rng.index(FUZZ_ALPHABET.len())])
                .collect()
        })
        .collect()
}

fn load(json: &str) -> (FastBpe, Tokenizer) {
    let fast = FastBpe::from_tokenizer_json(json)
        .expect("valid json")
        .expect("supported tokenizer");
    let reference = Tokenizer::from_str(json).expect("tokenizers loads it");
    (fast, reference)
}

fn assert_same(json: &str, texts: &[String]) {
    let (fast, reference) = load(json);
    for text in texts {
        let expected = reference
            .encode(text.as_str(), false)
            .expect("encode")
            .get_ids()
            .to_vec();
        let mut got = Vec::new();
        fast.encode(text, &mut got);
        assert_eq!(got, expected, "text {text:?}");
    }
}

#[test]
fn trained_tokenizer_matches() {
    let json = trained_json();
    assert_same(&json, &corpus());
    assert_same(&json, &fuzz_texts(2000, 1));
}

/// Vocab ids reversed so the merged tokens' id order disagrees with merge order: priority must
/// come from the merge list.
#[test]
fn merge_priority_is_not_vocab_order() {
    let mut root: Value = serde_json::from_str(&trained_json()).expect("json");
    let vocab = root["model"]["vocab"].as_object_mut().expect("vocab");
    let max = vocab.values().filter_map(Value::as_u64).max().expect("ids");
    for id in vocab.values_mut() {
        let old = id.as_u64().expect("id");
        if old >= 300 {
            *id = json!(max + 300 - old);
        }
    }
    // String merges ("a b") rather than the arrays the trainer wrote.
    let merges = root["model"]["merges"].as_array_mut().expect("merges");
    for m in merges.iter_mut() {
        let pair = m.as_array().expect("pair");
        let joined = format!(
            "{} {}",
            pair[0].as_str().expect("str"),
            pair[1].as_str().expect("str")
        );
        *m = json!(joined);
    }
    let json = root.to_string();
    assert_same(&json, &corpus());
    assert_same(&json, &fuzz_texts(1000, 2));
}

#[test]
fn trained_variants_match() {
    let base: Value = serde_json::from_str(&trained_json()).expect("json");
    // ByteLevel add_prefix_space.
    let mut prefixed = base.clone();
    prefixed["pre_tokenizer"]["add_prefix_space"] = json!(true);
    // A fancy-regex Split stage before ByteLevel's own regex, and ignore_merges.
    let mut sequence = base.clone();
    sequence["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{N}{1,2}"}, "behavior": "Isolated",
         "invert": false},
        {"type": "Split", "pattern": {"String": "e"}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}
    ]});
    sequence["model"]["ignore_merges"] = json!(true);
    // The added token matched after normalization, and a second added token outside the vocab.
    let mut normalized = base.clone();
    let added = normalized["added_tokens"].as_array_mut().expect("added");
    added[0]["normalized"] = json!(true);
    added.push(
        json!({"id": 9999, "content": "<|endof", "single_word": false, "lstrip": false,
                      "rstrip": false, "normalized": false, "special": false}),
    );
    for v in [prefixed, sequence, normalized] {
        let json = v.to_string();
        assert_same(&json, &corpus());
        assert_same(&json, &fuzz_texts(500, 3));
    }
}

#[test]
fn gpt2_matches() {
    let json = gpt2_json();
    let (fast, _) = load(&json);
    assert!(matches!(fast.stages.as_slice(), [Splitter::Gpt2]));
    assert_same(&json, &corpus());
    assert_same(&json, &fuzz_texts(3000, 4));
}

#[test]
fn llama3_matches() {
    let json = llama3_json();
    let (fast, _) = load(&json);
    assert!(matches!(fast.stages.as_slice(), [Splitter::Cl100k]));
    assert_same(&json, &corpus());
    assert_same(&json, &fuzz_texts(3000, 5));
}

/// The rank conversion rebuilds GPT-2's published merges from the r50k ranks.
#[test]
fn rank_conversion_reproduces_gpt2_merges() {
    let converted: Value = serde_json::from_str(&ranks_to_tokenizer_json(
        &tiktoken_ranks("r50k_base.tiktoken"),
        gpt2_pre_tokenizer(),
        &[],
        false,
    ))
    .expect("json");
    let converted: Vec<String> = converted["model"]["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .map(|m| {
            format!(
                "{} {}",
                m[0].as_str().expect("a"),
                m[1].as_str().expect("b")
            )
        })
        .collect();
    let published: Vec<String> = std::fs::read_to_string(tiktoken_asset("vocab.bpe"))
        .expect("read vocab.bpe")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("#version"))
        .map(str::to_string)
        .collect();
    assert_eq!(converted.len(), published.len());
    assert_eq!(converted, published);
}

#[test]
fn unsupported_configurations_fall_back() {
    let base: Value = serde_json::from_str(&trained_json()).expect("json");
    let mut cases = Vec::new();
    let mut v = base.clone();
    v["normalizer"] = json!({"type": "NFC"});
    cases.push(v);
    let mut v = base.clone();
    v["model"]["dropout"] = json!(0.1);
    cases.push(v);
    let mut v = base.clone();
    v["model"]["continuing_subword_prefix"] = json!("##");
    cases.push(v);
    let mut v = base.clone();
    v["added_tokens"][0]["lstrip"] = json!(true);
    cases.push(v);
    let mut v = base.clone();
    v["pre_tokenizer"] = json!({"type": "Metaspace", "replacement": "▁",
                                "prepend_scheme": "always", "split": true});
    cases.push(v);
    let mut v = base.clone();
    v["decoder"] = json!({"type": "Metaspace"});
    cases.push(v);
    let mut v = base.clone();
    v["truncation"] = json!({"max_length": 8});
    cases.push(v);
    let mut v = base;
    v["model"]["type"] = json!("WordPiece");
    cases.push(v);
    for case in cases {
        let got = FastBpe::from_tokenizer_json(&case.to_string()).expect("valid json");
        assert!(got.is_none(), "{case}");
    }
    assert!(FastBpe::from_tokenizer_json("{not json").is_err());
    assert!(FastBpe::from_tokenizer_json("[1, 2]").is_err());
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn fast_bpe_is_send_and_sync() {
    assert_send_sync::<FastBpe>();
}

/// English-like documents: Zipf-weighted common words, some random words, numbers,
/// punctuation and paragraph breaks.
fn english_like_documents(total_bytes: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "the",
        "of",
        "and",
        "to",
        "a",
        "in",
        "is",
        "that",
        "for",
        "it",
        "as",
        "was",
        "with",
        "be",
        "by",
        "on",
        "not",
        "he",
        "this",
        "are",
        "or",
        "his",
        "from",
        "at",
        "which",
        "but",
        "have",
        "an",
        "had",
        "they",
        "you",
        "were",
        "their",
        "one",
        "all",
        "we",
        "can",
        "her",
        "has",
        "there",
        "been",
        "if",
        "more",
        "when",
        "will",
        "would",
        "who",
        "so",
        "no",
        "she",
        "other",
        "its",
        "may",
        "these",
        "about",
        "than",
        "into",
        "only",
        "some",
        "time",
        "could",
        "new",
        "them",
        "people",
        "also",
        "two",
        "first",
        "after",
        "most",
        "world",
        "training",
        "model",
        "language",
        "government",
        "between",
        "development",
        "important",
        "university",
        "history",
        "different",
        "however",
        "because",
        "through",
        "information",
        "example",
        "system",
        "research",
        "national",
        "children",
        "water",
        "economic",
        "political",
        "themselves",
        "century",
        "questions",
        "instruction",
        "response",
        "answer",
        "therefore",
        "don't",
        "it's",
        "they're",
        "we'll",
        "I've",
        "London",
        "America",
        "January",
        "Microsoft",
        "photosynthesis",
    ];
    let mut rng = Rng::new(42);
    let mut docs = Vec::new();
    let mut total = 0;
    while total < total_bytes {
        let target = 2000 + rng.index(8000);
        let mut doc = String::with_capacity(target + 64);
        let mut sentence_start = true;
        while doc.len() < target {
            let r = rng.index(100);
            let word: String = if r < 85 {
                // Zipf-like: the square of a uniform index favours the head of the list.
                let u = rng.index(1000) as f64 / 1000.0;
                WORDS[(u * u * WORDS.len() as f64) as usize].to_string()
            } else if r < 95 {
                let len = 3 + rng.index(9);
                (0..len)
                    .map(|_| (b'a' + rng.index(26) as u8) as char)
                    .collect()
            } else {
                rng.index(100_000).to_string()
            };
            if sentence_start {
                let mut chars = word.chars();
                if let Some(c) = chars.next() {
                    doc.extend(c.to_uppercase());
                    doc.push_str(chars.as_str());
                }
            } else {
                doc.push_str(&word);
            }
            sentence_start = false;
            match rng.index(40) {
                0..=2 => {
                    doc.push_str(". ");
                    sentence_start = true;
                }
                3 => doc.push_str(", "),
                4 => {
                    doc.push_str(".\n\n");
                    sentence_start = true;
                }
                5 => doc.push_str(" (see "),
                6 => doc.push_str("): "),
                _ => doc.push(' '),
            }
        }
        total += doc.len();
        docs.push(doc);
    }
    docs
}

/// `cargo test --release -- --ignored --nocapture throughput`
#[test]
#[ignore]
fn throughput() {
    use rayon::prelude::*;
    use std::time::Instant;
    let json = gpt2_json();
    let (fast, reference) = load(&json);
    let docs = english_like_documents(20_000_000);
    let bytes: usize = docs.iter().map(String::len).sum();
    let mb = bytes as f64 / 1e6;
    let report = |name: &str, f: &dyn Fn() -> usize| {
        let start = Instant::now();
        let tokens = f();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name:<28} {:>7.1} MB/s  ({tokens} tokens, {mb:.1} MB in {secs:.2} s)",
            mb / secs
        );
        tokens
    };
    let fast_one = report("FastBpe, 1 thread", &|| {
        let mut out = Vec::new();
        docs.iter()
            .map(|d| {
                out.clear();
                fast.encode(d, &mut out);
                out.len()
            })
            .sum()
    });
    let fast_par = report("FastBpe, rayon", &|| {
        docs.par_iter()
            .map(|d| {
                let mut out = Vec::new();
                fast.encode(d, &mut out);
                out.len()
            })
            .sum()
    });
    let hf_one = report("tokenizers, 1 thread", &|| {
        docs.iter()
            .map(|d| reference.encode(d.as_str(), false).expect("encode").len())
            .sum()
    });
    let hf_par = report("tokenizers, rayon", &|| {
        docs.par_iter()
            .map(|d| reference.encode(d.as_str(), false).expect("encode").len())
            .sum()
    });
    assert_eq!(fast_one, hf_one);
    assert_eq!(fast_par, hf_par);
}
