//! Data-path throughput: `kiln prep` (MB/s of JSONL input, tokenize + write shards) and the
//! mixture/packing loader (tokens/s of packed batches), on the synthetic world's text and a
//! byte-level BPE tokenizer trained on it.
//!
//!     cargo bench --bench data

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln::data::loader::{Loader, LoaderOptions, SourceSpec, Split};
use kiln::data::prep::{prep, PrepOptions};
use kiln::data::tokenizer::{train_byte_level_bpe, Tokenizer};
use kiln::world::{generate, WorldConfig};

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    tok: Tokenizer,
    input_bytes: u64,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let world = generate(&WorldConfig {
        people: 4000,
        ..WorldConfig::default()
    });
    let texts: Vec<&str> = world.raw_texts().collect();
    let tok_path = root.join("tokenizer.json");
    train_byte_level_bpe(texts.iter(), 8192, &tok_path).unwrap();
    let tok = Tokenizer::from_file(&tok_path, None, None).unwrap();
    let body: String = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
        .collect();
    std::fs::write(root.join("corpus.jsonl"), &body).unwrap();
    Fixture {
        input_bytes: body.len() as u64,
        _dir: dir,
        root,
        tok,
    }
}

fn prep_opts(root: &Path) -> PrepOptions {
    PrepOptions {
        inputs: vec![root.join("corpus.jsonl")],
        out_dir: root.join("shards"),
        name: "raw".into(),
        progress: false,
        ..PrepOptions::default()
    }
}

fn bench_prep(c: &mut Criterion) {
    let f = fixture();
    let mut g = c.benchmark_group("prep");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(f.input_bytes));
    g.bench_function("jsonl_world_bpe8k", |b| {
        b.iter(|| prep(&f.tok, &prep_opts(&f.root)).unwrap())
    });
    g.finish();
}

fn bench_loader(c: &mut Criterion) {
    let f = fixture();
    prep(&f.tok, &prep_opts(&f.root)).unwrap();
    let spec = vec![SourceSpec {
        name: "raw".into(),
        path: f
            .root
            .join("shards/raw_*.kiln")
            .to_string_lossy()
            .into_owned(),
        weight: 1.0,
    }];
    let mut g = c.benchmark_group("loader");
    for (b_size, t) in [(16usize, 256usize), (8, 2048)] {
        let opts = LoaderOptions {
            seq_len: t,
            batch_size: b_size,
            seed: 0,
            shuffle: true,
            val_fraction: 0.0,
            rank: 0,
            world_size: 1,
            vocab_size: f.tok.vocab_size(),
            fingerprint: Some(f.tok.fingerprint()),
            delimiter: f.tok.bos(),
        };
        let mut loader = Loader::new(&spec, opts, Split::Train, &f.root).unwrap();
        g.throughput(Throughput::Elements((b_size * t) as u64));
        g.bench_function(format!("next_batch_B{b_size}_T{t}"), |b| {
            b.iter(|| loader.next_batch())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_prep, bench_loader);
criterion_main!(benches);
