//! docs/RECIPES.md runs as written: every `sh` block of it, through bash with this build's `kiln`
//! first on PATH, in a directory where this test has written small files at the paths the recipes
//! use, with the schemas the public datasets have (the Pile's zstd JSONL, OpenOrca's, WizardLM's
//! and RefinedWeb's parquet, LIMA's JSONL, gzip JSONL news, the synthesizer's collection), a
//! stand-in synthesizer (tests/common/standin.rs), small tokenizers and the repository's configs.
//! Then the shards hold what the recipes say: exactly the PubMed records, every instruction set,
//! the augmented records, and every config's mixture loads (`kiln data`, in the recipe).

use std::io::Write;
use std::path::Path;
use std::process::Command;

mod common;

use common::standin::{make_model_at, texts};
use common::{shard_documents, write_parquet, write_parquet_conversations};
use kiln::data::tokenizer::{train_byte_level_bpe, Tokenizer};
use serde_json::json;

/// The `sh` blocks of a markdown file, in order.
fn sh_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().expect("open block")),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed ```sh block");
    blocks
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn gzip(path: &Path, lines: &[String]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    std::fs::write(path, e.finish().unwrap()).unwrap();
}

fn zstd_file(path: &Path, lines: &[String]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let z = zstd::encode_all((lines.join("\n") + "\n").as_bytes(), 3).unwrap();
    std::fs::write(path, z).unwrap();
}

#[test]
fn the_recipes_run_as_written_on_files_shaped_like_the_public_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));

    // The configs, and `kiln` on PATH.
    std::fs::create_dir_all(d.join("configs")).unwrap();
    for e in std::fs::read_dir(repo.join("configs")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, d.join("configs").join(p.file_name().unwrap())).unwrap();
    }
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kiln"), d.join("bin/kiln")).unwrap();

    // The corpora. Pile: PubMed Abstracts among other subsets, over two zstd shards.
    let abstracts = texts(12);
    let mut pile = Vec::new();
    for (i, t) in abstracts.iter().enumerate() {
        pile.push(
            json!({ "text": t, "meta": { "pile_set_name": "PubMed Abstracts" } }).to_string(),
        );
        let (set, other) = match i % 3 {
            0 => ("Github", format!("fn main() {{ println!(\"{i}\"); }}")),
            1 => ("Pile-CC", format!("Page {i} of a web crawl.")),
            _ => ("ArXiv", format!("We prove lemma {i}.")),
        };
        pile.push(json!({ "text": other, "meta": { "pile_set_name": set } }).to_string());
    }
    zstd_file(&d.join("downloads/pile/00.jsonl.zst"), &pile[..10]);
    zstd_file(&d.join("downloads/pile/01.jsonl.zst"), &pile[10..]);
    // Financial news as gzip JSONL.
    let news: Vec<String> = (0..7)
        .map(|i| {
            json!({ "text": format!("Shares of company {i} rose {i} percent on strong earnings."), "date": format!("2023-01-{:02}", i + 1), "ticker": format!("T{i}") })
                .to_string()
        })
        .collect();
    gzip(&d.join("downloads/finance-news/2022.json.gz"), &news[..3]);
    gzip(&d.join("downloads/finance-news/2023.json.gz"), &news[3..]);
    // OpenOrca's columns.
    std::fs::create_dir_all(d.join("downloads/openorca")).unwrap();
    let orca_n = 9;
    let col = |f: &dyn Fn(usize) -> String| (0..orca_n).map(f).collect::<Vec<String>>();
    write_parquet(
        &d.join("downloads/openorca/1M-GPT4-Augmented.parquet"),
        "message schema { REQUIRED BYTE_ARRAY id (UTF8); REQUIRED BYTE_ARRAY system_prompt (UTF8); REQUIRED BYTE_ARRAY question (UTF8); REQUIRED BYTE_ARRAY response (UTF8); }",
        &[
            col(&|i| format!("flan.{i}")),
            col(&|_| "You are an AI assistant.".into()),
            col(&|i| format!("What is {i} plus {i}?")),
            col(&|i| format!("{} is the answer.", 2 * i)),
        ],
        4,
    );
    // LIMA: conversations as a list of strings (one multi-turn).
    let lima: Vec<String> = (0..5)
        .map(|i| {
            let mut conv = vec![
                format!("How do I fold shirt {i}?"),
                format!("Fold it in {i} steps."),
            ];
            if i == 2 {
                conv.extend(["And then?".to_string(), "Put it away.".to_string()]);
            }
            json!({ "conversations": conv, "source": "stackexchange" }).to_string()
        })
        .collect();
    write_lines(&d.join("downloads/lima/train.jsonl"), &lima);
    // WizardLM evol-instruct V2 as the Hub converts it: conversations, a list of {from, value}.
    let wizard: Vec<(String, Vec<(String, String)>)> = (0..6)
        .map(|i| {
            (
                format!("idx_{i}"),
                vec![
                    ("human".into(), format!("Write a poem about {i} cats.")),
                    ("gpt".into(), format!("{i} cats sat on a mat.")),
                ],
            )
        })
        .collect();
    std::fs::create_dir_all(d.join("downloads/wizardlm")).unwrap();
    write_parquet_conversations(
        &d.join("downloads/wizardlm/train-00000-of-00001.parquet"),
        &wizard,
    );
    // RefinedWeb: five parquet files of its string columns, the first in augment/, as the recipe
    // splits them.
    std::fs::create_dir_all(d.join("downloads/refinedweb/augment")).unwrap();
    std::fs::create_dir_all(d.join("downloads/refinedweb/raw")).unwrap();
    let web = texts(20);
    for f in 0..5 {
        let rows: Vec<usize> = (f * 4..f * 4 + 4).collect();
        let c = |g: &dyn Fn(usize) -> String| rows.iter().map(|&i| g(i)).collect::<Vec<String>>();
        write_parquet(
            &d.join(format!(
                "downloads/refinedweb/{}/train-0000{f}-of-00005.parquet",
                if f == 0 { "augment" } else { "raw" }
            )),
            "message schema { REQUIRED BYTE_ARRAY content (UTF8); REQUIRED BYTE_ARRAY url (UTF8); REQUIRED BYTE_ARRAY dump (UTF8); REQUIRED BYTE_ARRAY segment (UTF8); }",
            &[
                c(&|i| web[i].clone()),
                c(&|i| format!("https://example.org/{i}")),
                c(&|_| "CC-MAIN-2023-06".into()),
                c(&|i| format!("segment-{i}")),
            ],
            3,
        );
    }
    // The synthesizer's fine-tuning collection.
    let sft: Vec<String> = (0..4)
        .map(|i| {
            json!({ "context": format!("Passage {i} about rivers."), "pairs": [{ "q": format!("Which passage is this?"), "a": format!("Number {i}.") }], "source": "squad" })
                .to_string()
        })
        .collect();
    write_lines(&d.join("downloads/synth-sft/collection.jsonl"), &sft);

    // Models: the stand-in synthesizer; small tokenizers where Llama-3's and Mistral's go.
    make_model_at(&d.join("models/instruction-synthesizer"));
    let corpus: Vec<String> = texts(40)
        .into_iter()
        .chain(pile.iter().cloned())
        .chain(news.iter().cloned())
        .collect();
    for t in ["Meta-Llama-3-8B", "Mistral-7B-v0.1"] {
        let p = d.join("models").join(t).join("tokenizer.json");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        train_byte_level_bpe(corpus.iter().map(String::as_str), 500, &p).unwrap();
    }

    // Every sh block, as written.
    let md = std::fs::read_to_string(repo.join("docs/RECIPES.md")).unwrap();
    let blocks = sh_blocks(&md);
    assert!(blocks.len() >= 5, "{} sh blocks", blocks.len());
    let path = format!(
        "{}:{}",
        d.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (i, b) in blocks.iter().enumerate() {
        let o = Command::new("bash")
            .args(["-euo", "pipefail", "-c", b])
            .current_dir(d)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "RECIPES.md sh block {} failed:\n{b}\n--- stderr:\n{}",
            i + 1,
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // What the shards hold.
    let vocab = |t: &str| {
        Tokenizer::from_file(&d.join("models").join(t).join("tokenizer.json"), None, None)
            .unwrap()
            .vocab_size()
    };
    let (llama, mistral) = (vocab("Meta-Llama-3-8B"), vocab("Mistral-7B-v0.1"));
    let general = d.join("data/general/shards");
    assert_eq!(
        shard_documents(&general, "instructions_openorca", llama).len(),
        orca_n
    );
    assert_eq!(
        shard_documents(&general, "instructions_lima", llama).len(),
        lima.len()
    );
    assert_eq!(
        shard_documents(&general, "instructions_wizardlm", llama).len(),
        wizard.len()
    );
    // The biomedicine raw corpus is exactly the PubMed abstracts, in order.
    let tok =
        Tokenizer::from_file(&d.join("models/Meta-Llama-3-8B/tokenizer.json"), None, None).unwrap();
    let raw = shard_documents(&d.join("data/biomed/shards"), "raw", llama);
    assert_eq!(raw.len(), abstracts.len());
    for (doc, text) in raw.iter().zip(&abstracts) {
        assert!(
            tok.decode(doc, true).unwrap().contains(text.trim()),
            "{text}"
        );
    }
    // Every abstract and news item was augmented (3 rounds: 4 chains of 3 and 3 chains of 3, 2, 2).
    for (domain, n) in [("biomed", abstracts.len()), ("finance", news.len())] {
        let aug =
            std::fs::read_to_string(d.join(format!("data/{domain}/augmented.jsonl"))).unwrap();
        assert_eq!(aug.lines().count(), n, "{domain}");
        assert!(aug.contains("Who is it?"), "{domain}");
        assert!(!d
            .join(format!("data/{domain}/augmented.jsonl.input.jsonl"))
            .exists());
        assert!(
            !shard_documents(&d.join(format!("data/{domain}/shards")), "augmented", llama)
                .is_empty()
        );
    }
    // From scratch: a fifth augmented, four fifths raw, the collection, and the fifth raw for the
    // vanilla arm (which the IPT arm's raw_* glob does not take).
    let scratch = d.join("data/scratch/shards");
    let aug = std::fs::read_to_string(d.join("data/scratch/augmented.jsonl")).unwrap();
    assert_eq!(aug.lines().count(), 4);
    assert_eq!(shard_documents(&scratch, "fifth_raw", mistral).len(), 4);
    assert_eq!(shard_documents(&scratch, "raw", mistral).len(), 16);
    assert_eq!(
        shard_documents(&scratch, "synthsft", mistral).len(),
        sft.len()
    );
}
