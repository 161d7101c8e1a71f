//! The data path end to end through the `kiln` binary: tokenizer training, prep, the loader, and
//! every bad-input case giving one clear line that names the file, a non-zero exit and no panic.

use std::path::{Path, PathBuf};

mod common;

use common::{
    assert_clean_error, kiln, shard_documents, stderr, write_parquet, write_parquet_with,
};
use kiln::data::loader::{Loader, LoaderOptions, SourceSpec, Split};
use kiln::data::shard::write_llmc_shard;
use kiln::data::tokenizer::Tokenizer;

fn documents() -> Vec<String> {
    (0..300)
        .map(|i| {
            format!(
                "Document {i}: the fox number {} jumped over {} lazy dogs.\nIt said \"héllo, wörld\" — ✓ {}",
                i * 7,
                i % 13,
                "and then some more words ".repeat(i % 9)
            )
        })
        .collect()
}

fn write_jsonl(path: &Path, docs: &[String]) {
    let body: String = docs
        .iter()
        .map(|d| serde_json::json!({ "text": d }).to_string() + "\n")
        .collect();
    std::fs::write(path, body).unwrap();
}

/// A trained tokenizer in `dir` (through the CLI).
fn train_tokenizer(dir: &Path) -> PathBuf {
    write_jsonl(&dir.join("corpus.jsonl"), &documents());
    let o = kiln(
        &[
            "tokenizer",
            "train",
            "--input",
            "corpus.jsonl",
            "--vocab-size",
            "600",
            "--out",
            "tok.json",
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    dir.join("tok.json")
}

fn loader_opts(tok: &Tokenizer, seq: usize, shuffle: bool) -> LoaderOptions {
    LoaderOptions {
        seq_len: seq,
        batch_size: 4,
        seed: 3,
        shuffle,
        val_fraction: 0.0,
        rank: 0,
        world_size: 1,
        vocab_size: tok.vocab_size(),
        fingerprint: Some(tok.fingerprint()),
        delimiter: tok.bos(),
    }
}

#[test]
fn text_to_shards_to_loader_round_trips_documents_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok_path = train_tokenizer(d);
    // Small shards so the documents span several of them.
    let o = kiln(
        &[
            "prep",
            "-t",
            "tok.json",
            "-i",
            "corpus.jsonl",
            "-o",
            "shards",
            "--name",
            "c",
            "--shard-size",
            "4kB",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("300 documents"), "{}", stderr(&o));
    assert!(
        d.join("shards/c_00002.kiln").exists(),
        "expected several shards"
    );

    let tok = Tokenizer::from_file(&tok_path, None, None).unwrap();
    let spec = vec![SourceSpec {
        name: "c".into(),
        path: "shards/c_*.kiln".into(),
        weight: 1.0,
    }];
    let mut loader = Loader::new(&spec, loader_opts(&tok, 128, false), Split::Train, d).unwrap();
    // Rebuild the token stream; within a row, document ids change exactly at BOS tokens.
    let bos = tok.bos().unwrap();
    let total = loader.split_tokens() as usize;
    let mut stream: Vec<u32> = Vec::new();
    while stream.len() < total {
        let b = loader.next_batch();
        for k in 0..4 * 128 {
            if k % 128 > 0 {
                assert_eq!(
                    b.doc_ids[k] != b.doc_ids[k - 1],
                    b.inputs[k] == bos,
                    "boundary at {k}"
                );
            }
            stream.push(b.inputs[k]);
        }
    }
    stream.truncate(total);
    let mut starts: Vec<usize> = (0..total).filter(|&i| stream[i] == bos).collect();
    starts.push(total);
    let decoded: Vec<String> = starts
        .windows(2)
        .map(|w| tok.decode(&stream[w[0]..w[1]], true).unwrap())
        .collect();
    let want = documents();
    assert_eq!(decoded.len(), want.len());
    for (i, (got, want)) in decoded.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "document {i}");
    }
}

#[test]
fn llmc_shards_are_read_by_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok = Tokenizer::from_file(&train_tokenizer(d), None, None).unwrap();
    let bos = tok.bos().unwrap();
    let mut toks = Vec::new();
    for doc in documents().iter().take(50) {
        toks.push(bos);
        toks.extend(tok.encode(doc).unwrap());
    }
    write_llmc_shard(&d.join("train_000.bin"), &toks, 2).unwrap();
    let spec = vec![SourceSpec {
        name: "llmc".into(),
        path: "train_*.bin".into(),
        weight: 1.0,
    }];
    let mut opts = loader_opts(&tok, 64, false);
    opts.fingerprint = Some(tok.fingerprint());
    let mut loader = Loader::new(&spec, opts, Split::Train, d).unwrap();
    let b = loader.next_batch();
    assert_eq!(&b.inputs[..64], &toks[..64]);
    assert_eq!(loader.report(0)[0].documents, 50);
}

#[test]
fn prep_templates_augmented_records_and_masks_finetune_records() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok_path = train_tokenizer(d);
    let rec = |text: &str, chain: Option<u32>| {
        let mut v = serde_json::json!({
            "text": text,
            "pairs": [{"q": "How many dogs?", "a": "Three."}, {"q": "Who jumped?", "a": "The fox."}]
        });
        if let Some(c) = chain {
            v["chain"] = c.into();
        }
        v.to_string()
    };
    let body = [
        rec("The fox jumped over three dogs.", Some(1)),
        rec("A second text.", Some(1)),
        rec("Alone.", None),
    ]
    .join("\n");
    std::fs::write(d.join("aug.jsonl"), body + "\n").unwrap();
    let o = kiln(
        &[
            "prep",
            "-t",
            "tok.json",
            "-i",
            "aug.jsonl",
            "-o",
            "s",
            "--name",
            "aug",
            "--kind",
            "augmented",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("2 documents"),
        "chain of two + one alone: {}",
        stderr(&o)
    );

    std::fs::write(
        d.join("tune.jsonl"),
        rec("The fox jumped over three dogs.", None) + "\n",
    )
    .unwrap();
    let o = kiln(
        &[
            "prep",
            "-t",
            "tok.json",
            "-i",
            "tune.jsonl",
            "-o",
            "s",
            "--name",
            "tune",
            "--kind",
            "finetune",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let tok = Tokenizer::from_file(&tok_path, None, None).unwrap();
    let shard =
        kiln::data::shard::Shard::open(&d.join("s/tune_00000.kiln"), tok.vocab_size(), None)
            .unwrap();
    assert!(shard.has_loss_mask());
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    shard.extend_tokens(shard.document(0), &mut ids);
    shard.extend_loss_mask(shard.document(0), &mut mask);
    let masked: Vec<u32> = ids
        .iter()
        .zip(&mask)
        .filter(|(_, &m)| m)
        .map(|(&t, _)| t)
        .collect();
    let text = tok.decode(&masked, false).unwrap();
    assert_eq!(
        text,
        "<QUE> How many dogs? <ANS> Three. </END>\n\n<QUE> Who jumped? <ANS> The fox. </END></s>"
    );
}

#[test]
fn bad_inputs_give_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    train_tokenizer(d);
    let prep = |input: &str, extra: &[&str]| {
        let mut args = vec![
            "prep", "-t", "tok.json", "-i", input, "-o", "out", "--name", "x",
        ];
        args.extend_from_slice(extra);
        kiln(&args, d)
    };

    // Inputs without a document: an error, not an empty success.
    std::fs::write(d.join("empty.jsonl"), "").unwrap();
    assert_clean_error(&prep("empty.jsonl", &[]), &["no documents", "empty.jsonl"]);
    // Missing input file.
    assert_clean_error(
        &prep("missing.jsonl", &[]),
        &["missing.jsonl", "cannot read input"],
    );
    // Missing tokenizer.
    assert_clean_error(
        &kiln(
            &["prep", "-t", "nope.json", "-i", "corpus.jsonl", "-o", "out"],
            d,
        ),
        &["nope.json", "cannot read tokenizer"],
    );
    // Broken tokenizer.json.
    std::fs::write(d.join("broken.json"), "{ not json").unwrap();
    assert_clean_error(
        &kiln(
            &[
                "prep",
                "-t",
                "broken.json",
                "-i",
                "corpus.jsonl",
                "-o",
                "out",
            ],
            d,
        ),
        &["broken.json", "not a valid tokenizer.json"],
    );
    // Non-UTF-8 line.
    std::fs::write(
        d.join("latin1.jsonl"),
        b"{\"text\": \"ok\"}\n{\"text\": \"caf\xe9\"}\n",
    )
    .unwrap();
    assert_clean_error(
        &prep("latin1.jsonl", &[]),
        &["latin1.jsonl:2", "not valid UTF-8"],
    );
    // JSONL line without the text field, invalid JSON, field not a string.
    std::fs::write(
        d.join("nofield.jsonl"),
        "{\"text\": \"a\"}\n{\"body\": \"b\"}\n",
    )
    .unwrap();
    assert_clean_error(
        &prep("nofield.jsonl", &[]),
        &["nofield.jsonl:2", "no \"text\" field"],
    );
    std::fs::write(
        d.join("badjson.jsonl"),
        "{\"text\": \"a\"}\n{\"text\": \n{\"text\": 5}\n",
    )
    .unwrap();
    assert_clean_error(
        &prep("badjson.jsonl", &[]),
        &["badjson.jsonl:2", "invalid JSON"],
    );
    // --skip-bad-lines continues and counts.
    let o = prep("badjson.jsonl", &["--skip-bad-lines"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("skipped 2 bad line(s)"),
        "{}",
        stderr(&o)
    );
    let o = prep("latin1.jsonl", &["--skip-bad-lines"]);
    assert!(
        stderr(&o).contains("skipped 1 bad line(s)"),
        "{}",
        stderr(&o)
    );
    // A failed prep leaves no partial shard behind.
    let tmp: Vec<_> = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(tmp.is_empty(), "partial files left: {tmp:?}");
    // Bad augmented record.
    std::fs::write(
        d.join("aug.jsonl"),
        "{\"text\": \"a\", \"pairs\": [{\"q\": 1}]}\n",
    )
    .unwrap();
    assert_clean_error(
        &prep("aug.jsonl", &["--kind", "augmented"]),
        &["aug.jsonl:1", "invalid record"],
    );

    // Shards: build a good one, then corrupt copies, and read them through `kiln data`.
    assert!(prep("corpus.jsonl", &[]).status.success());
    let good = std::fs::read(d.join("out/x_00000.kiln")).unwrap();
    let config = |glob: &str| {
        let name = format!("cfg_{}.toml", glob.replace(['/', '*', '.'], "_"));
        std::fs::write(
            d.join(&name),
            format!(
                "[data]\ntokenizer = \"tok.json\"\nseq_len = 16\nbatch_size = 2\n\n[[data.sources]]\nname = \"s\"\npath = \"{glob}\"\nweight = 1.0\n"
            ),
        )
        .unwrap();
        name
    };
    let data = |glob: &str| {
        let c = config(glob);
        kiln(&["data", "--config", &c], d)
    };
    assert!(data("out/x_*.kiln").status.success());

    let bad = |name: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        std::fs::create_dir_all(d.join("bad")).unwrap();
        std::fs::write(d.join("bad").join(name), b).unwrap();
        data(&format!("bad/{name}"))
    };
    assert_clean_error(
        &bad("magic.kiln", &|b| b[0] = b'Z'),
        &["magic.kiln", "unknown magic"],
    );
    assert_clean_error(
        &bad("version.kiln", &|b| b[8] = 7),
        &["version.kiln", "version 7"],
    );
    assert_clean_error(
        &bad("short.kiln", &|b| b.truncate(b.len() - 5)),
        &["short.kiln", "size mismatch"],
    );
    assert_clean_error(
        &bad("tiny.kiln", &|b| b.truncate(20)),
        &["tiny.kiln", "truncated header"],
    );
    // Token id past the vocabulary (600 ids; u16 tokens start at byte 128).
    assert_clean_error(
        &bad("vocab.kiln", &|b| {
            b[128..130].copy_from_slice(&60000u16.to_le_bytes())
        }),
        &[
            "vocab.kiln",
            "token id 60000",
            "is not below the vocabulary size",
        ],
    );
    // Fingerprint differs from the config's tokenizer.
    assert_clean_error(
        &bad("finger.kiln", &|b| b[48] ^= 0xff),
        &["finger.kiln", "another tokenizer"],
    );
    // A source glob matching nothing.
    assert_clean_error(
        &data("nowhere/*.kiln"),
        &["nowhere/*.kiln", "matches no file"],
    );
    // Config errors.
    std::fs::write(
        d.join("typo.toml"),
        "[data]\ntokenizer = \"tok.json\"\nseq_len = 16\nbatch_sise = 2\nsources = []\n",
    )
    .unwrap();
    assert_clean_error(
        &kiln(&["data", "--config", "typo.toml"], d),
        &["typo.toml:4", "unknown field `batch_sise`"],
    );
    let c = config("out/x_*.kiln");
    assert_clean_error(
        &kiln(&["data", "--config", &c, "--set", "data.seq_len=-3"], d),
        &["seq_len"],
    );
}

#[test]
fn prep_memory_stays_flat_on_a_100_mb_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    train_tokenizer(d);
    // ~100 MB of JSONL, generated line by line.
    {
        use std::io::Write;
        let f = std::fs::File::create(d.join("big.jsonl")).unwrap();
        let mut w = std::io::BufWriter::new(f);
        let docs = documents();
        let mut written = 0usize;
        let mut i = 0usize;
        while written < 100_000_000 {
            let line = serde_json::json!({ "text": format!("{} #{i}", docs[i % docs.len()]) })
                .to_string()
                + "\n";
            w.write_all(line.as_bytes()).unwrap();
            written += line.len();
            i += 1;
        }
    }
    let o = kiln(
        &[
            "prep",
            "-t",
            "tok.json",
            "-i",
            "big.jsonl",
            "-o",
            "out",
            "--name",
            "big",
            "--shard-size",
            "16MB",
        ],
        d,
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let peak_mb: f64 = err
        .split("peak RSS ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {err}"));
    eprintln!("{err}");
    assert!(
        peak_mb < 150.0,
        "prep of 100 MB used {peak_mb} MB peak: memory is not flat"
    );
    assert!(
        d.join("out/big_00001.kiln").exists(),
        "shards roll at --shard-size"
    );
    // The same input as zstd (generated here, streamed both ways): the same tokens, flat memory.
    {
        let src = std::io::BufReader::new(std::fs::File::open(d.join("big.jsonl")).unwrap());
        let dst = std::io::BufWriter::new(std::fs::File::create(d.join("big.jsonl.zst")).unwrap());
        zstd::stream::copy_encode(src, dst, 3).unwrap();
    }
    let o = kiln(
        &[
            "prep",
            "-t",
            "tok.json",
            "-i",
            "big.jsonl.zst",
            "-o",
            "out",
            "--name",
            "bigzst",
            "--shard-size",
            "16MB",
        ],
        d,
    );
    let zerr = stderr(&o);
    assert!(o.status.success(), "{zerr}");
    eprintln!("{zerr}");
    let field = |s: &str, after: &str| -> String {
        s.split(after)
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    // "prep NAME: L lines, D documents, T tokens, ...": the counts after the name agree.
    let counts = |s: &str| {
        s.split(": ")
            .nth(1)
            .unwrap()
            .split(", ")
            .take(3)
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert_eq!(counts(&zerr), counts(&err));
    let zpeak: f64 = field(&zerr, "peak RSS ").parse().unwrap();
    assert!(
        zpeak < 150.0,
        "prep of 100 MB of zstd used {zpeak} MB peak: memory is not flat"
    );
}

#[test]
fn compressed_pile_and_dolma_records_with_a_filter_and_openorca_instructions_prepare_like_plain_jsonl(
) {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    train_tokenizer(d);
    let vocab = Tokenizer::from_file(&d.join("tok.json"), None, None)
        .unwrap()
        .vocab_size();
    // Pile-shaped records: text and meta.pile_set_name; a third are PubMed Abstracts.
    let docs = documents();
    let sets = ["PubMed Abstracts", "Pile-CC", "Github"];
    let pile: String = docs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"text": t, "meta": {"pile_set_name": sets[i % 3]}}).to_string()
                + "\n"
        })
        .collect();
    let pubmed: Vec<String> = docs.iter().step_by(3).cloned().collect();
    write_jsonl(&d.join("pubmed.jsonl"), &pubmed);
    std::fs::create_dir_all(d.join("pile")).unwrap();
    // The Pile ships .jsonl.zst; Dolma ships .json.gz (JSONL inside).
    let zst = zstd::encode_all(pile.as_bytes(), 3).unwrap();
    std::fs::write(d.join("pile/00.jsonl.zst"), zst).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(pile.as_bytes()).unwrap();
    std::fs::write(d.join("dolma.json.gz"), gz.finish().unwrap()).unwrap();
    let prep = |input: &str, name: &str, extra: &[&str]| {
        let mut args = vec![
            "prep",
            "--tokenizer",
            "tok.json",
            "--input",
            input,
            "--out",
            "shards",
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        let o = kiln(&args, d);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    prep("pubmed.jsonl", "plain", &[]);
    let want = shard_documents(&d.join("shards"), "plain", vocab);
    assert_eq!(want.len(), 100);
    let filter = ["--filter", r#"meta.pile_set_name == "PubMed Abstracts""#];
    // A directory (its .zst inside), a .json.gz, and a glob.
    for (input, name) in [
        ("pile", "zst"),
        ("dolma.json.gz", "gz"),
        ("pil*/*.zst", "glob"),
    ] {
        let err = prep(input, name, &filter);
        assert!(
            err.contains("--filter kept 100 record(s), dropped 200"),
            "{err}"
        );
        assert_eq!(
            shard_documents(&d.join("shards"), name, vocab),
            want,
            "{input}"
        );
    }
    // OpenOrca-shaped general instructions: the system prompt dropped, the instruction (trailing
    // space trimmed) and the response (trimmed) joined by a newline; the same as JSONL holding
    // exactly that text.
    let orca: Vec<serde_json::Value> = docs
        .iter()
        .take(50)
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"id": format!("niv.{i}"), "system_prompt": "You are an AI assistant.",
                "question": format!("Summarise: {t}"), "response": format!("  It is document {i}.")})
        })
        .collect();
    let body: String = orca.iter().map(|v| v.to_string() + "\n").collect();
    std::fs::write(d.join("orca.jsonl"), body).unwrap();
    let joined: Vec<String> = orca
        .iter()
        .map(|v| {
            format!(
                "{}\n{}",
                v["question"].as_str().unwrap().trim_end(),
                v["response"].as_str().unwrap().trim()
            )
        })
        .collect();
    write_jsonl(&d.join("joined.jsonl"), &joined);
    prep("orca.jsonl", "orca", &["--kind", "instructions"]);
    prep("joined.jsonl", "joined", &[]);
    let got = shard_documents(&d.join("shards"), "orca", vocab);
    assert_eq!(got.len(), 50);
    assert_eq!(got, shard_documents(&d.join("shards"), "joined", vocab));
    // A field mapping for other sets (LIMA-style conversations [instruction, response]).
    let lima: String = orca
        .iter()
        .map(|v| {
            serde_json::json!({"conversations": [v["question"], v["response"]]}).to_string() + "\n"
        })
        .collect();
    std::fs::write(d.join("lima.jsonl"), lima).unwrap();
    prep(
        "lima.jsonl",
        "lima",
        &[
            "--kind",
            "instructions",
            "--instruction-field",
            "conversations.0",
            "--response-field",
            "conversations.1",
        ],
    );
    assert_eq!(shard_documents(&d.join("shards"), "lima", vocab), got);
    // Bad filters and formats are one line naming the problem.
    let o = kiln(
        &[
            "prep",
            "--tokenizer",
            "tok.json",
            "--input",
            "pubmed.jsonl",
            "--out",
            "s2",
            "--filter",
            "meta.x = 1",
        ],
        d,
    );
    assert_clean_error(&o, &["--filter", "PATH == VALUE"]);
    let o = kiln(
        &[
            "prep",
            "--tokenizer",
            "tok.json",
            "--input",
            "pubmed.jsonl",
            "--out",
            "s2",
            "--format",
            "zstd",
        ],
        d,
    );
    assert_clean_error(&o, &["pubmed.jsonl: not a zstd file"]);
}

#[test]
fn parquet_records_of_pile_and_openorca_shapes_prepare_like_plain_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    train_tokenizer(d);
    let vocab = Tokenizer::from_file(&d.join("tok.json"), None, None)
        .unwrap()
        .vocab_size();
    let docs = documents();
    let sets: Vec<String> = (0..docs.len())
        .map(|i| ["PubMed Abstracts", "Pile-CC", "Github"][i % 3].to_string())
        .collect();
    // Nested like the Pile's records: text, meta.pile_set_name; 7 row groups; snappy (as the Hub
    // converts), and zstd and lz4 column chunks in a directory of their own.
    let pile_schema = "message pile { REQUIRED BYTE_ARRAY text (UTF8); REQUIRED GROUP meta { REQUIRED BYTE_ARRAY pile_set_name (UTF8); } }";
    let pile_cols = [docs.clone(), sets];
    write_parquet(&d.join("pile.parquet"), pile_schema, &pile_cols, 45);
    std::fs::create_dir_all(d.join("codecs")).unwrap();
    let (first, second) = (
        pile_cols.clone().map(|c| c[..150].to_vec()),
        pile_cols.clone().map(|c| c[150..].to_vec()),
    );
    use parquet::basic::{Compression, ZstdLevel};
    let zstd = Compression::ZSTD(ZstdLevel::try_new(3).unwrap());
    write_parquet_with(&d.join("codecs/a.parquet"), pile_schema, &first, 45, zstd);
    write_parquet_with(
        &d.join("codecs/b.parquet"),
        pile_schema,
        &second,
        45,
        Compression::LZ4_RAW,
    );
    let pubmed: Vec<String> = docs.iter().step_by(3).cloned().collect();
    write_jsonl(&d.join("pubmed.jsonl"), &pubmed);
    let prep = |args: &[&str]| {
        let mut all = vec!["prep", "--tokenizer", "tok.json", "--out", "shards"];
        all.extend_from_slice(args);
        let o = kiln(&all, d);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    prep(&["--input", "pubmed.jsonl", "--name", "plain"]);
    let err = prep(&[
        "--input",
        "pile.parquet",
        "--name",
        "pq",
        "--filter",
        r#"meta.pile_set_name == "PubMed Abstracts""#,
    ]);
    assert!(
        err.contains("--filter kept 100 record(s), dropped 200"),
        "{err}"
    );
    let want = shard_documents(&d.join("shards"), "plain", vocab);
    assert_eq!(want.len(), 100);
    assert_eq!(shard_documents(&d.join("shards"), "pq", vocab), want);
    prep(&[
        "--input",
        "codecs",
        "--name",
        "codecs",
        "--filter",
        r#"meta.pile_set_name == "PubMed Abstracts""#,
    ]);
    assert_eq!(shard_documents(&d.join("shards"), "codecs", vocab), want);
    // OpenOrca's columns: id, system_prompt, question, response.
    let n = 40;
    let col = |f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<String>>();
    let orca = [
        col(&|i| format!("niv.{i}")),
        col(&|_| "You are a helpful assistant.".to_string()),
        col(&|i| format!("Summarise: {}", docs[i])),
        col(&|i| format!("It is document {i}.")),
    ];
    write_parquet(
        &d.join("orca.parquet"),
        "message orca { REQUIRED BYTE_ARRAY id (UTF8); REQUIRED BYTE_ARRAY system_prompt (UTF8); REQUIRED BYTE_ARRAY question (UTF8); REQUIRED BYTE_ARRAY response (UTF8); }",
        &orca,
        16,
    );
    let joined: Vec<String> = (0..n)
        .map(|i| format!("{}\n{}", orca[2][i].trim_end(), orca[3][i].trim()))
        .collect();
    write_jsonl(&d.join("joined.jsonl"), &joined);
    prep(&[
        "--input",
        "orca.parquet",
        "--name",
        "orca",
        "--kind",
        "instructions",
    ]);
    prep(&["--input", "joined.jsonl", "--name", "joined"]);
    let got = shard_documents(&d.join("shards"), "orca", vocab);
    assert_eq!(got.len(), n);
    assert_eq!(got, shard_documents(&d.join("shards"), "joined", vocab));
    // A file that is not parquet is one line naming it.
    let o = kiln(
        &[
            "prep",
            "--tokenizer",
            "tok.json",
            "--input",
            "pubmed.jsonl",
            "--out",
            "s2",
            "--format",
            "parquet",
        ],
        d,
    );
    assert_clean_error(&o, &["pubmed.jsonl: not a parquet file"]);
}
