//! `kiln synth` end to end through the binary, on a Hugging Face directory kiln writes itself: a
//! one-layer Llama whose layers are identities and whose output head maps each token to a fixed
//! successor, so that greedy decoding after any prompt writes `<QUE> Who is it? <ANS> Ada.
//! </END>` then EOS — a deterministic stand-in synthesizer. Checks the records and their chains,
//! that `kiln prep --kind augmented` reads them, that runs stopped at arbitrary output bytes (and
//! killed with SIGKILL) and restarted give the uninterrupted file, and the one-line errors.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::standin::{make_model, texts, OUTPUT};
use common::{assert_clean_error, kiln, stderr};
use kiln::data::synth_format::context_block;
use kiln::rng::Rng;

fn write_input(dir: &Path, n: usize) -> PathBuf {
    let mut body = String::new();
    for (i, t) in texts(n).iter().enumerate() {
        if i == 3 {
            body.push_str("{\"text\": \n");
        }
        body.push_str(&serde_json::json!({ "text": t, "id": i }).to_string());
        body.push('\n');
    }
    let p = dir.join("raw.jsonl");
    std::fs::write(&p, body).unwrap();
    p
}

/// `kiln synth` on the stand-in: 24 new tokens, a context of 256 and a batch of 3 unless `extra`
/// sets them.
fn synth_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "synth",
        "--model",
        "model",
        "--input",
        "raw.jsonl",
        "--out",
        out,
        "--max-new-tokens",
        "24",
    ];
    for (flag, default) in [("--context", "256"), ("--batch", "3")] {
        if !extra.contains(&flag) {
            a.extend([flag, default]);
        }
    }
    a.extend_from_slice(extra);
    a
}

#[test]
fn synth_writes_chained_records_that_prep_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_model(d);
    write_input(d, 9);
    let o = kiln(&synth_args("aug.jsonl", &[]), d);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("raw.jsonl:4: invalid JSON"), "{err}");
    assert!(err.contains("generation memory plan: weights"), "{err}");
    assert!(
        err.contains("9 texts in 5 chains -> 9 records, 9 pairs"),
        "{err}"
    );
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(d.join("aug.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 9 texts, 2 rounds: chains of texts (0, 5), (1, 6), (2, 7), (3, 8), (4); every text gets the
    // pair, and each second text is prompted after the first and linked to it.
    let order = [0, 5, 1, 6, 2, 7, 3, 8, 4];
    let all = texts(9);
    for (r, &i) in recs.iter().zip(&order) {
        assert_eq!(r["text"], all[i]);
        assert_eq!(
            r["pairs"],
            serde_json::json!([{"q": "Who is it?", "a": "Ada."}])
        );
    }
    let chains: Vec<u64> = recs.iter().map(|r| r["chain"].as_u64().unwrap()).collect();
    assert_eq!(chains, vec![0, 0, 2, 2, 4, 4, 6, 6, 8]);
    assert!(err.contains("4 few-shot prompts"), "{err}");
    let o = kiln(
        &[
            "prep",
            "--tokenizer",
            "model/tokenizer.json",
            "--input",
            "aug.jsonl",
            "--kind",
            "augmented",
            "--out",
            "shards",
            "--name",
            "aug",
        ],
        d,
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // Linked records render into one document each: 5 chains.
    assert!(err.contains("9 lines, 5 documents"), "{err}");

    // The same texts in parquet, nested (doc.body), among rows of another language that a filter
    // drops: the same file, and no spool left behind.
    let mut bodies = Vec::new();
    let mut langs = Vec::new();
    for (i, t) in all.iter().enumerate() {
        bodies.push(t.clone());
        langs.push("en".to_string());
        if i % 2 == 0 {
            bodies.push(format!("Ein anderer Text {i}."));
            langs.push("de".to_string());
        }
    }
    common::write_parquet(
        &d.join("raw.parquet"),
        "message m { REQUIRED GROUP doc { REQUIRED BYTE_ARRAY body (UTF8); } REQUIRED BYTE_ARRAY lang (UTF8); }",
        &[bodies, langs],
        4,
    );
    let mut args = synth_args(
        "aug_pq.jsonl",
        &["--field", "doc.body", "--filter", "lang == \"en\""],
    );
    args[4] = "raw.parquet";
    let o = kiln(&args, d);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("9 texts (5 records dropped by --filter) in 5 chains"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(d.join("aug_pq.jsonl")).unwrap(),
        std::fs::read(d.join("aug.jsonl")).unwrap()
    );
    assert!(!d.join("aug_pq.jsonl.input.jsonl").exists());
}

#[test]
fn stopped_or_killed_and_restarted_synth_gives_the_uninterrupted_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_model(d);
    write_input(d, 120);
    let o = kiln(&synth_args("full.jsonl", &[]), d);
    assert!(o.status.success(), "{}", stderr(&o));
    let full = std::fs::read(d.join("full.jsonl")).unwrap();
    // Stopped at arbitrary bytes (mid-line included) by the testing hook, then restarted.
    let mut rng = Rng::new(3);
    for _ in 0..3 {
        let at = 1 + rng.below(full.len() as u64 - 1);
        let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(synth_args("cut.jsonl", &[]))
            .env("KILN_SYNTH_STOP_AFTER_BYTES", at.to_string())
            .current_dir(d)
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(std::fs::metadata(d.join("cut.jsonl")).unwrap().len() > 0);
    }
    let o = kiln(&synth_args("cut.jsonl", &[]), d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(d.join("cut.jsonl")).unwrap(), full);
    // SIGKILL at random moments.
    let mut killed = 0;
    for _ in 0..4 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(synth_args("kill.jsonl", &["--batch", "1"]))
            .current_dir(d)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let wait_ms = 20 + rng.below(300);
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
    }
    eprintln!("SIGKILLed {killed} of 4 runs before they finished");
    let o = kiln(&synth_args("kill.jsonl", &["--batch", "1"]), d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(d.join("kill.jsonl")).unwrap(),
        full,
        "after {killed} kills"
    );
}

#[test]
fn synth_bad_input_gives_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_model(d);
    write_input(d, 4);
    let o = kiln(
        &[
            "synth",
            "--model",
            "model",
            "--input",
            "missing.jsonl",
            "--out",
            "o.jsonl",
        ],
        d,
    );
    assert_clean_error(&o, &["missing.jsonl: cannot read input"]);
    let o = kiln(&synth_args("o.jsonl", &["--filter", "lang = 1"]), d);
    assert_clean_error(&o, &["--filter", "PATH == VALUE"]);
    let mut args = synth_args("o.jsonl", &[]);
    args[4] = "corpus/*.zst";
    let o = kiln(&args, d);
    assert_clean_error(&o, &["corpus/*.zst: no file matches this pattern"]);
    let o = kiln(
        &[
            "synth",
            "--model",
            "nowhere",
            "--input",
            "raw.jsonl",
            "--out",
            "o.jsonl",
        ],
        d,
    );
    assert_clean_error(&o, &["nowhere"]);
    let o = kiln(&synth_args("o.jsonl", &["--context", "4096"]), d);
    assert_clean_error(
        &o,
        &["context 4096 is longer than the model's 1024 positions"],
    );
    let o = kiln(&synth_args("o.jsonl", &[]), d);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kiln(&synth_args("o.jsonl", &["--rounds", "3"]), d);
    assert_clean_error(&o, &["o.jsonl.progress.json", "rounds = 2"]);
    std::fs::write(d.join("taken.jsonl"), "precious\n").unwrap();
    let o = kiln(&synth_args("taken.jsonl", &[]), d);
    assert_clean_error(&o, &["taken.jsonl: exists and has no progress file"]);
    assert_eq!(
        std::fs::read_to_string(d.join("taken.jsonl")).unwrap(),
        "precious\n"
    );
}

#[test]
fn generate_and_eval_take_a_hugging_face_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_model(d);
    let prompt = context_block("Anything at all.");
    let o = kiln(
        &[
            "generate",
            "--checkpoint",
            "model",
            "-p",
            &prompt,
            "--max-new-tokens",
            "20",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(out.trim_end(), format!("{prompt}{OUTPUT}"), "{out}");

    let item = serde_json::json!({ "input": prompt, "answer": OUTPUT });
    std::fs::write(d.join("tasks.jsonl"), format!("{item}\n")).unwrap();
    let o = kiln(
        &[
            "eval",
            "--checkpoint",
            "model",
            "--tasks",
            "tasks.jsonl",
            "--max-new-tokens",
            "20",
            "--json",
            "eval.json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("eval.json")).unwrap()).unwrap();
    assert_eq!(v["tasks"][0]["exact_match"], 1.0, "{v}");
    assert_eq!(v["model"], "hf:model", "{v}");
    // Held-out data needs a sequence length, which a Hugging Face directory does not record.
    let o = kiln(&["eval", "--checkpoint", "model", "--data", "*.bin"], d);
    assert_clean_error(&o, &["--seq-len"]);
}
