//! `synthesize` with a scripted generator: chain construction end to end (few-shot when the
//! previous text had pairs and it fits, zero-shot otherwise, carried chains), bad and long input
//! lines, and resume after an interruption at random output bytes giving the same file.

use super::*;
use crate::data::records::Pair;
use crate::data::synth_format::pairs_block;
use crate::model::batched::StopReason;
use crate::rng::Rng;

/// Finishes requests a few at a time, newest first (so chains complete out of order); text
/// index i yields two pairs unless i % 4 == 3, which yields none.
struct Scripted<'t> {
    tok: &'t Tokenizer,
    queue: Vec<Request>,
    prompts: Vec<(u64, Vec<u32>)>,
    tokens: u64,
}

impl Scripted<'_> {
    fn output(&self, id: u64) -> Vec<u32> {
        let text = if id % 4 == 3 {
            "nothing useful".to_string()
        } else {
            pairs_block(&pairs_for(id))
        };
        let mut ids = self.tok.encode(&text).unwrap();
        ids.extend(self.tok.eos());
        ids
    }
}

fn pairs_for(id: u64) -> Vec<Pair> {
    vec![
        Pair {
            q: format!("What is {id}?"),
            a: format!("It is {id}."),
        },
        Pair {
            q: format!("Why {id}?"),
            a: "Because.".into(),
        },
    ]
}

impl Generator for Scripted<'_> {
    fn submit(&mut self, r: Request) -> Result<()> {
        self.prompts.push((r.id, r.prompt.clone()));
        self.queue.push(r);
        Ok(())
    }
    fn step(&mut self) -> Vec<Finished> {
        let mut out = Vec::new();
        for _ in 0..3 {
            let Some(r) = self.queue.pop() else { break };
            let tokens = self.output(r.id);
            self.tokens += tokens.len() as u64;
            out.push(Finished {
                id: r.id,
                tokens,
                reason: StopReason::Stop,
            });
        }
        out
    }
    fn slots(&self) -> usize {
        2
    }
    fn generated_tokens(&self) -> u64 {
        self.tokens
    }
}

fn setup(dir: &Path, texts: usize) -> (Tokenizer, SynthOptions) {
    let tok = crate::data::tokenizer::tests::small_tokenizer(dir);
    let mut input = String::new();
    for i in 0..texts {
        if i == 4 {
            input.push_str("{not json\n\n");
        }
        if i == 6 {
            input.push_str("{\"text\": 5}\n");
        }
        if i == 8 {
            // Too long for the context below: kept without pairs.
            let long = "The quick brown fox jumps over the lazy dog. ".repeat(120);
            input.push_str(&format!("{}\n", json!({ "text": long })));
        }
        input.push_str(&format!(
            "{}\n",
            json!({ "text": format!("Text number {i}: the lazy dog.") })
        ));
    }
    std::fs::write(dir.join("raw.jsonl"), input).unwrap();
    let opts = SynthOptions {
        input: TextSource::jsonl(&dir.join("raw.jsonl")),
        out: dir.join("aug.jsonl"),
        rounds: 3,
        max_new_tokens: 40,
        // An example is about 104 tokens here and a prompt 33: one example fits 240 − 40, two do
        // not.
        context: 240,
        sampling: Sampling::default(),
        model_id: "scripted".into(),
        progress_bar: false,
        save_every_s: 0.0,
        stop_after_bytes: None,
    };
    (tok, opts)
}

fn scripted(tok: &Tokenizer) -> Scripted<'_> {
    Scripted {
        tok,
        queue: Vec::new(),
        prompts: Vec::new(),
        tokens: 0,
    }
}

fn records(path: &Path) -> Vec<AugmentedRecord> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn chains_are_built_as_the_authors_define_them() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, opts) = setup(dir.path(), 10);
    let mut g = scripted(&tok);
    let s = synthesize(&mut g, &tok, &opts).unwrap();
    // 11 valid texts (10 + the long one), 2 bad lines; chunks of ceil(11/3) = 4.
    assert_eq!((s.texts, s.bad_lines, s.too_long, s.chains), (11, 2, 1, 4));
    let recs = records(&opts.out);
    assert_eq!(recs.len(), 11);
    // Valid text order: 0..=7, long, 8, 9. Chain i = texts i, i+4, i+8, written chain by chain.
    let valid: Vec<String> = {
        let mut v: Vec<String> = (0..8)
            .map(|i| format!("Text number {i}: the lazy dog."))
            .collect();
        v.push("long".into());
        v.extend((8..10).map(|i| format!("Text number {i}: the lazy dog.")));
        v
    };
    let order: Vec<usize> = (0..4).flat_map(|i| chain_members(i, 11, 3)).collect();
    assert_eq!(order, vec![0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7]);
    for (r, &idx) in recs.iter().zip(&order) {
        if idx == 8 {
            assert!(r.text.starts_with("The quick brown fox") && r.pairs.is_empty());
        } else {
            assert_eq!(r.text, valid[idx]);
            let want = if idx % 4 == 3 {
                vec![]
            } else {
                pairs_for(idx as u64)
            };
            assert_eq!(r.pairs, want, "text {idx}");
        }
    }
    let chain =
        |recs: &[AugmentedRecord], i: usize| recs[i].chain.as_ref().unwrap().as_u64().unwrap();
    let chains = |recs: &[AugmentedRecord]| (0..11).map(|i| chain(recs, i)).collect::<Vec<_>>();
    // Chain 0: text 0 (pairs) → 4 few-shot with pairs (linked) → 8 too long (no pairs).
    // Chain 1: 1 → 5 linked → 9 does not fit after two examples: zero-shot, a new document.
    // Chain 2: 2 → 6 linked → 10 likewise.
    // Chain 3: 3 yields no pairs → 7 zero-shot, not linked (a carried two-entry chain).
    assert_eq!(chains(&recs), vec![0, 0, 2, 3, 3, 5, 6, 6, 8, 9, 10]);
    let prompt = |g: &Scripted, id: u64| g.prompts.iter().find(|p| p.0 == id).unwrap().1.clone();
    let zero = |i: usize| {
        let mut z = vec![tok.bos().unwrap()];
        tok.encode_into(&context_block(&valid[i]), &mut z).unwrap();
        z
    };
    let example = |i: usize| {
        encode_example(&tok, &valid[i], &pairs_for(i as u64))
            .unwrap()
            .0
    };
    assert_eq!(prompt(&g, 0), zero(0));
    assert_eq!(prompt(&g, 4), [example(0), zero(4)].concat());
    assert_eq!(prompt(&g, 9), zero(9));
    assert_eq!(prompt(&g, 7), zero(7));
    assert!(
        g.prompts.iter().all(|p| p.0 != 8),
        "the long text is not generated"
    );
    assert_eq!(s.few_shot, 3); // texts 4, 5, 6

    // With room for two examples, chains 1 and 2 link all three texts.
    let wide = SynthOptions {
        context: 400,
        out: dir.path().join("wide.jsonl"),
        ..opts.clone()
    };
    let mut g2 = scripted(&tok);
    let s2 = synthesize(&mut g2, &tok, &wide).unwrap();
    assert_eq!(s2.too_long, 1);
    assert_eq!(
        chains(&records(&wide.out)),
        vec![0, 0, 2, 3, 3, 3, 6, 6, 6, 9, 10]
    );
    assert_eq!(prompt(&g2, 9), [example(1), example(5), zero(9)].concat());
    assert_eq!(s2.few_shot, 5);
    assert!(std::fs::read_to_string(progress_path(&opts.out))
        .unwrap()
        .contains("\"done\": true"));
}

#[test]
fn interrupted_at_random_bytes_and_resumed_gives_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, opts) = setup(dir.path(), 30);
    let mut g = scripted(&tok);
    let full_stats = synthesize(&mut g, &tok, &opts).unwrap();
    let full = std::fs::read(&opts.out).unwrap();
    let mut rng = Rng::new(9);
    for trial in 0..12 {
        std::fs::remove_file(&opts.out).unwrap();
        std::fs::remove_file(progress_path(&opts.out)).unwrap();
        // Progress saved after every chain, or (trial odd) only at the end.
        let save_every_s = if trial % 2 == 0 { 0.0 } else { 1e9 };
        let mut kills = 0;
        loop {
            // Up to four interruptions, then a run to the end.
            let stop = (kills < 4).then(|| 1 + rng.below(full.len() as u64 / 2));
            let o = SynthOptions {
                save_every_s,
                stop_after_bytes: stop,
                ..opts.clone()
            };
            match synthesize(&mut scripted(&tok), &tok, &o) {
                Ok(s) => {
                    assert_eq!(
                        (s.records, s.pairs, s.few_shot, s.too_long),
                        (
                            full_stats.records,
                            full_stats.pairs,
                            full_stats.few_shot,
                            full_stats.too_long
                        )
                    );
                    break;
                }
                Err(e) => {
                    assert!(e.downcast_ref::<Interrupted>().is_some(), "{e:#}");
                    kills += 1;
                }
            }
        }
        assert!(kills > 0);
        assert_eq!(std::fs::read(&opts.out).unwrap(), full, "trial {trial}");
    }
    // A finished run started again does nothing.
    let again = synthesize(&mut scripted(&tok), &tok, &opts).unwrap();
    assert_eq!(again.resumed_chains, again.chains);
    assert_eq!(std::fs::read(&opts.out).unwrap(), full);
}

#[test]
fn a_resume_with_other_settings_or_a_foreign_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, opts) = setup(dir.path(), 5);
    let o = SynthOptions {
        stop_after_bytes: Some(10),
        ..opts.clone()
    };
    assert!(synthesize(&mut scripted(&tok), &tok, &o).is_err());
    let other = SynthOptions {
        rounds: 2,
        ..opts.clone()
    };
    let e = synthesize(&mut scripted(&tok), &tok, &other)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rounds = 3") && e.contains("aug.jsonl.progress.json"),
        "{e}"
    );
    std::fs::remove_file(progress_path(&opts.out)).unwrap();
    let e = synthesize(&mut scripted(&tok), &tok, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("exists and has no progress file"), "{e}");
}

/// The same texts as a Pile-shaped corpus split over a zstd and a gzip file in a directory, among
/// records of another subset that `--filter` drops: the output is byte-identical to the plain
/// run, also when interrupted and resumed, and the decoded spool is gone once the run completes.
#[test]
fn compressed_filtered_inputs_give_the_records_of_plain_jsonl() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (tok, opts) = setup(dir.path(), 30);
    let full_stats = synthesize(&mut scripted(&tok), &tok, &opts).unwrap();
    let full = std::fs::read(&opts.out).unwrap();

    let raw = std::fs::read_to_string(dir.path().join("raw.jsonl")).unwrap();
    let mut pile = Vec::new();
    for (i, line) in raw.lines().enumerate() {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(mut m)) => {
                m.insert(
                    "meta".into(),
                    json!({ "pile_set_name": "PubMed Abstracts" }),
                );
                pile.push(Value::Object(m).to_string());
            }
            _ => pile.push(line.to_string()),
        }
        if i % 3 == 0 {
            let other =
                json!({ "text": format!("fn f{i}() {{}}"), "meta": { "pile_set_name": "Github" } });
            pile.push(other.to_string());
        }
    }
    let half = pile.len() / 2;
    let (a, b) = (
        pile[..half].join("\n") + "\n",
        pile[half..].join("\n") + "\n",
    );
    let d = dir.path().join("pile");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("00.jsonl.zst"),
        zstd::encode_all(a.as_bytes(), 3).unwrap(),
    )
    .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b.as_bytes()).unwrap();
    std::fs::write(d.join("01.jsonl.gz"), gz.finish().unwrap()).unwrap();

    let pile_opts = SynthOptions {
        input: TextSource {
            inputs: vec![d.clone()],
            format: crate::data::input::Format::Auto,
            field: "text".into(),
            filters: vec![crate::data::input::Filter::parse(
                "meta.pile_set_name == \"PubMed Abstracts\"",
            )
            .unwrap()],
        },
        out: dir.path().join("pile_aug.jsonl"),
        ..opts.clone()
    };
    let s = synthesize(&mut scripted(&tok), &tok, &pile_opts).unwrap();
    assert_eq!(std::fs::read(&pile_opts.out).unwrap(), full);
    assert_eq!(
        (s.texts, s.records, s.pairs),
        (full_stats.texts, full_stats.records, full_stats.pairs)
    );
    assert_eq!(
        s.filtered as usize,
        raw.lines().count().div_ceil(3),
        "the Github records"
    );
    assert_eq!(s.bad_lines, full_stats.bad_lines);
    assert!(
        !spool_path(&pile_opts.out).exists(),
        "the spool is removed at the end"
    );

    // Interrupted after some output: the spool is there, and the resumed run gives the same file.
    std::fs::remove_file(&pile_opts.out).unwrap();
    std::fs::remove_file(progress_path(&pile_opts.out)).unwrap();
    let cut = SynthOptions {
        stop_after_bytes: Some(full.len() as u64 / 3),
        ..pile_opts.clone()
    };
    assert!(synthesize(&mut scripted(&tok), &tok, &cut).is_err());
    assert!(spool_path(&pile_opts.out).exists());
    synthesize(&mut scripted(&tok), &tok, &pile_opts).unwrap();
    assert_eq!(std::fs::read(&pile_opts.out).unwrap(), full);
    assert!(!spool_path(&pile_opts.out).exists());

    // A spool beside an output that has no progress file is not ours to overwrite.
    let other = SynthOptions {
        out: dir.path().join("fresh.jsonl"),
        ..pile_opts.clone()
    };
    std::fs::write(spool_path(&other.out), "mine\n").unwrap();
    let e = synthesize(&mut scripted(&tok), &tok, &other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fresh.jsonl.input.jsonl: exists"), "{e}");
    assert_eq!(
        std::fs::read_to_string(spool_path(&other.out)).unwrap(),
        "mine\n"
    );
}
