//! Training end to end through the `kiln` binary on a small synthetic world: loss falls,
//! checkpoints resume bit-exactly, `kiln generate` samples, and bad configs or checkpoints give
//! one clear error line.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
mod common;

use common::{assert_clean_error, kiln, stderr};

const CONFIG: &str = r#"
[world]
dir = "w"
people = 200
bios_per_person = 2
vocab_size = 600

[data]
tokenizer = "w/tokenizer.json"
seq_len = 32
batch_size = 16
val_fraction = 0.05

[[data.sources]]
name = "raw"
path = "w/shards/raw_*.kiln"
weight = 0.8

[[data.sources]]
name = "augmented"
path = "w/shards/augmented_*.kiln"
weight = 0.2

[model]
dim = 32
n_layers = 2
n_heads = 4
n_kv_heads = 2
ffn_dim = 64
max_seq_len = 64
tie_embeddings = false

[train]
steps = 20
lr = 3e-2
warmup_steps = 2
eval_every = 10
eval_batches = 2
log_every = 5
checkpoint_every = 10
keep_last = 0
out_dir = "run"
"#;

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn resumed_run_is_bitwise_identical_and_generate_prints_text() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), CONFIG).unwrap();

    // Uninterrupted: 20 steps.
    let o = kiln(
        &[
            "train",
            "--config",
            "c.toml",
            "--set",
            "train.out_dir=\"full\"",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let full = metrics(&d.join("full"));
    assert_eq!(full.len(), 20);
    for k in ["loss", "lr", "grad_norm", "tokens_per_s", "mfu"] {
        assert!(full[0][k].is_number(), "metrics lack {k}: {}", full[0]);
    }
    assert!(full[9]["val_loss"].is_number());
    let first = full[0]["loss"].as_f64().unwrap();
    let last = full[19]["loss"].as_f64().unwrap();
    assert!(last < first - 0.5, "loss should fall: {first} -> {last}");

    // Interrupted: 10 steps, then resume to 20.
    let o = kiln(
        &[
            "train",
            "--config",
            "c.toml",
            "--set",
            "train.out_dir=\"part\"",
            "--until",
            "10",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kiln(
        &[
            "train",
            "--config",
            "c.toml",
            "--set",
            "train.out_dir=\"part\"",
            "--resume",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resumed from"), "{}", stderr(&o));
    let part = metrics(&d.join("part"));
    assert_eq!(part.len(), 20);
    for (a, b) in full.iter().zip(&part) {
        assert_eq!(a["step"], b["step"]);
        assert_eq!(
            a["loss"].as_f64().unwrap().to_bits(),
            b["loss"].as_f64().unwrap().to_bits(),
            "step {}",
            a["step"]
        );
        assert_eq!(
            a["grad_norm"].as_f64().unwrap().to_bits(),
            b["grad_norm"].as_f64().unwrap().to_bits()
        );
    }
    let p1 = std::fs::read(d.join("full/step_000020/model.safetensors")).unwrap();
    let p2 = std::fs::read(d.join("part/step_000020/model.safetensors")).unwrap();
    assert!(p1 == p2, "final parameters differ");
    let o1 = std::fs::read(d.join("full/step_000020/optimizer.safetensors")).unwrap();
    let o2 = std::fs::read(d.join("part/step_000020/optimizer.safetensors")).unwrap();
    assert!(o1 == o2, "optimizer state differs");
    assert!(
        d.join("full/config.toml").exists(),
        "resolved config beside the checkpoints"
    );

    let o = kiln(
        &[
            "generate",
            "--checkpoint",
            "full",
            "--prompt",
            "The",
            "--max-new-tokens",
            "12",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("The") && text.trim().len() > 3, "{text}");
    let o = kiln(
        &[
            "generate",
            "--checkpoint",
            "full/step_000010",
            "-p",
            "The",
            "--temperature",
            "0.8",
            "--top-p",
            "0.9",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // A checkpoint from another model shape.
    let o = kiln(
        &[
            "train",
            "--config",
            "c.toml",
            "--set",
            "train.out_dir=\"full\"",
            "--set",
            "model.ffn_dim=48",
            "--resume",
            "10",
        ],
        d,
    );
    assert_clean_error(&o, &["model.safetensors", "another model shape"]);
    // A truncated checkpoint file.
    let f = d.join("part/step_000010/optimizer.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let o = kiln(
        &[
            "train",
            "--config",
            "c.toml",
            "--set",
            "train.out_dir=\"part\"",
            "--resume",
            "10",
        ],
        d,
    );
    assert_clean_error(
        &o,
        &[
            "step_000010/optimizer.safetensors",
            "not a valid safetensors file",
        ],
    );
    // A missing checkpoint.
    let o = kiln(
        &[
            "train",
            "--config",
            "c.toml",
            "--set",
            "train.out_dir=\"part\"",
            "--resume",
            "7",
        ],
        d,
    );
    assert_clean_error(&o, &["step_000007"]);
    let o = kiln(&["generate", "--checkpoint", "nowhere", "-p", "x"], d);
    assert_clean_error(&o, &["nowhere", "no complete checkpoint"]);
}

#[test]
fn config_errors_are_one_line_and_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), CONFIG).unwrap();
    let with = |extra: &str| {
        assert!(kiln(&["world", "--config", "c.toml"], d).status.success());
        kiln(&["train", "--config", "c.toml", "--set", extra], d)
    };
    assert_clean_error(
        &with("model.n_heads=3"),
        &["n_heads = 3 does not divide dim = 32"],
    );
    assert_clean_error(
        &with("model.n_kv_heads=3"),
        &["n_kv_heads = 3 does not divide n_heads = 4"],
    );
    assert_clean_error(&with("train.lrr=0.1"), &["unknown field `lrr`"]);
    assert_clean_error(&with("train.steps=\"many\""), &["invalid type"]);
    assert_clean_error(
        &with("data.seq_len=100"),
        &["data.seq_len = 100 exceeds model.max_seq_len = 64"],
    );
    std::fs::write(
        d.join("bad.toml"),
        CONFIG.replace("[train]\n", "[train]\nwarmup = 5\n"),
    )
    .unwrap();
    assert_clean_error(
        &kiln(&["train", "--config", "bad.toml"], d),
        &["bad.toml:", "unknown field `warmup`"],
    );
    assert_clean_error(
        &kiln(&["train", "--config", "missing.toml"], d),
        &["missing.toml", "cannot read config"],
    );
}

#[test]
fn gradient_accumulation_matches_one_large_batch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), CONFIG).unwrap();
    let run = |out: &str, batch: &str, accum: &str| {
        let o = kiln(
            &[
                "train",
                "--config",
                "c.toml",
                "--set",
                &format!("train.out_dir=\"{out}\""),
                "--set",
                &format!("data.batch_size={batch}"),
                "--set",
                &format!("train.grad_accum={accum}"),
                "--set",
                "train.steps=3",
                "--set",
                "data.val_fraction=0",
            ],
            d,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        metrics(&d.join(out))
    };
    let big = run("big", "8", "1");
    let acc = run("acc", "4", "2");
    for (a, b) in big.iter().zip(&acc) {
        let (x, y) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!(
            (x - y).abs() < 1e-5 * x.abs(),
            "step {}: {x} vs {y}",
            a["step"]
        );
        let (x, y) = (
            a["grad_norm"].as_f64().unwrap(),
            b["grad_norm"].as_f64().unwrap(),
        );
        assert!(
            (x - y).abs() < 1e-4 * x.abs(),
            "grad norm step {}: {x} vs {y}",
            a["step"]
        );
    }
}

#[test]
fn bench_prints_every_operation_against_measured_ceilings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = kiln(
        &[
            "bench",
            "--iters",
            "1",
            "--tokens",
            "256",
            "--json",
            "bench.json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    for op in [
        "rmsnorm_bwd",
        "cross_entropy",
        "adamw",
        "matmul_dw",
        "attention_bwd",
        "of ceiling",
    ] {
        assert!(table.contains(op), "bench output lacks {op}: {table}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("bench.json")).unwrap()).unwrap();
    assert!(report["copy_gb_s"].as_f64().unwrap() > 0.0);
    assert!(report["rows"].as_array().unwrap().len() >= 15);
    if !cfg!(feature = "cuda") {
        assert_clean_error(
            &kiln(&["bench", "--device", "cuda"], d),
            &["built without CUDA"],
        );
        assert_clean_error(
            &kiln(&["train", "--device", "cuda"], d),
            &["built without CUDA"],
        );
    }
    assert_clean_error(
        &kiln(&["bench", "--tokens", "100"], d),
        &["--tokens 100", "multiple of the sequence length 256"],
    );

    // The step-time model on the tiny model: every operation of a step and a measured step.
    let o = kiln(
        &[
            "bench",
            "step",
            "--model",
            "tiny",
            "--tokens",
            "256",
            "--seq",
            "128",
            "--iters",
            "1",
            "--json",
            "step.json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    for row in [
        "| matmul dw (lm_head) | 256x128x2048 | 1 |",
        "| rmsnorm | 256x128 | 9 |",
        "measured step:",
    ] {
        assert!(table.contains(row), "{row} missing: {table}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("step.json")).unwrap()).unwrap();
    assert!(v["step_ms"].as_f64().unwrap() > 0.0);
    assert_clean_error(
        &kiln(
            &[
                "bench", "step", "--model", "tiny", "--tokens", "300", "--seq", "128",
            ],
            d,
        ),
        &["--tokens 300", "multiple of the sequence length 128"],
    );

    // The attention sweep: causal, not causal, and causal with mixed documents per shape.
    let o = kiln(
        &[
            "bench",
            "attention",
            "--tokens",
            "128",
            "--seqs",
            "64,128",
            "--head-dims",
            "64",
            "--iters",
            "1",
            "--json",
            "attn.json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    for row in ["| 2×64 | 32×64 | causal |", "| 1×128 | 32×64 | none |"] {
        assert!(table.contains(row), "{row} missing: {table}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("attn.json")).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows
        .iter()
        .all(|r| r["fwd_tflop_s"].as_f64().unwrap() > 0.0 && r["bwd_ms"].as_f64().unwrap() > 0.0));
    assert!(rows[2]["docs"].as_array().unwrap().len() > 1);
    assert_clean_error(
        &kiln(&["bench", "attention", "--seqs", "300"], d),
        &["--seqs", "300", "16384"],
    );

    // Batched generation throughput: every sequence runs to the token limit.
    let o = kiln(
        &[
            "bench",
            "generate",
            "--batches",
            "1,3",
            "--prompt-len",
            "20",
            "--new-tokens",
            "6",
            "--json",
            "gen.json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("gen.json")).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (r, batch) in rows.iter().zip([1, 3]) {
        assert_eq!(r["batch"], batch);
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["decode_step_ms"].as_f64().unwrap() > 0.0);
    }
    assert_clean_error(
        &kiln(
            &[
                "bench",
                "generate",
                "--prompt-len",
                "4000",
                "--new-tokens",
                "400",
            ],
            d,
        ),
        &["exceeds the model's 4096 positions"],
    );
}

#[test]
fn hugging_face_export_convert_and_bad_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), CONFIG).unwrap();
    let o = kiln(
        &[
            "train",
            "--config",
            "c.toml",
            "--set",
            "train.steps=2",
            "--set",
            "data.val_fraction=0",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kiln(
        &[
            "export",
            "--checkpoint",
            "run",
            "--to-hf",
            "hf",
            "--dtype",
            "f32",
            "--shard-size",
            "20kB",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        d.join("hf/model.safetensors.index.json").exists(),
        "sharded above --shard-size"
    );
    assert!(d.join("hf/tokenizer.json").exists() && d.join("hf/generation_config.json").exists());
    let o = kiln(&["convert", "--from-hf", "hf", "--to-hf", "hf-bf16"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("hf-bf16/model.safetensors").exists());

    // Continual pre-training from the export, with the shape taken from its config.json.
    let cpt = CONFIG.replace("[model]\n", "[model]\ninit_from = \"hf:hf\"\n");
    std::fs::write(d.join("cpt.toml"), &cpt).unwrap();
    let o = kiln(
        &[
            "train",
            "--config",
            "cpt.toml",
            "--set",
            "train.out_dir=\"cpt\"",
            "--set",
            "train.steps=2",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("initialised from hf"), "{}", stderr(&o));
    let o = kiln(
        &[
            "train",
            "--config",
            "cpt.toml",
            "--set",
            "train.out_dir=\"cpt2\"",
            "--set",
            "model.ffn_dim=48",
        ],
        d,
    );
    assert_clean_error(&o, &["model.ffn_dim = 48", "config.json says 64"]);

    let broken = |name: &str, edit: &dyn Fn(&Path)| {
        let target = d.join(name);
        let _ = std::fs::remove_dir_all(&target);
        std::fs::create_dir_all(&target).unwrap();
        for e in std::fs::read_dir(d.join("hf")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), target.join(e.file_name())).unwrap();
        }
        edit(&target);
        kiln(&["convert", "--from-hf", name, "--to-hf", "out"], d)
    };
    let edit_config = |p: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(p.join("config.json"), v.to_string()).unwrap();
    };
    let shards = |p: &Path| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|f| {
                f.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("model-")
            })
            .collect();
        v.sort();
        v
    };
    assert!(shards(&d.join("hf")).len() >= 2);
    assert_clean_error(
        &broken("b1", &|p| std::fs::remove_file(&shards(p)[1]).unwrap()),
        &["is missing"],
    );
    assert_clean_error(
        &broken("b2", &|p| {
            edit_config(p, &|v| {
                v["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
            })
        }),
        &["architectures = [\"GPT2LMHeadModel\"] is not supported"],
    );
    assert_clean_error(
        &broken("b3", &|p| {
            edit_config(p, &|v| {
                v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0})
            })
        }),
        &["RoPE type \"yarn\" is not supported"],
    );
    assert_clean_error(
        &broken("b4", &|p| {
            edit_config(p, &|v| v["intermediate_size"] = serde_json::json!(80))
        }),
        &["config.json implies"],
    );
    assert_clean_error(
        &broken("b5", &|p| {
            let first = &shards(p)[0];
            let bytes = std::fs::read(first).unwrap();
            std::fs::write(first, &bytes[..bytes.len() / 2]).unwrap();
        }),
        &["not a valid safetensors file"],
    );

    // A Mistral checkpoint whose sliding window is shorter than the configured sequence.
    broken("mistral", &|p| {
        edit_config(p, &|v| {
            v["architectures"] = serde_json::json!(["MistralForCausalLM"]);
            v["sliding_window"] = serde_json::json!(16);
        })
    });
    let o = kiln(
        &[
            "train",
            "--config",
            "cpt.toml",
            "--set",
            "model.init_from=\"hf:mistral\"",
            "--set",
            "train.out_dir=\"m\"",
        ],
        d,
    );
    assert_clean_error(
        &o,
        &["data.seq_len = 32 exceeds the model's sliding window of 16 tokens"],
    );

    // A tokenizer with more ids than the model's embedding.
    let o = kiln(
        &[
            "tokenizer",
            "train",
            "--input",
            "w/raw.jsonl",
            "--vocab-size",
            "700",
            "--out",
            "big.json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kiln(
        &[
            "train",
            "--config",
            "cpt.toml",
            "--set",
            "data.tokenizer=\"big.json\"",
            "--set",
            "train.out_dir=\"cpt3\"",
        ],
        d,
    );
    assert_clean_error(&o, &["vocab_size = 600 is smaller than the tokenizer's"]);
}

#[test]
fn paper_recipes_parse_match_their_vanilla_twins_and_print_a_memory_plan() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for domain in ["biomed", "finance"] {
        let ipt = kiln::config::Config::load(
            Some(&root.join(format!("configs/llama3-8b-{domain}-ipt.toml"))),
            &[],
        )
        .unwrap();
        let van = kiln::config::Config::load(
            Some(&root.join(format!("configs/llama3-8b-{domain}-vanilla.toml"))),
            &[],
        )
        .unwrap();
        let tokens = |c: &kiln::config::Config| {
            c.data.batch_size * c.data.seq_len * c.train.grad_accum * c.train.world_size
        };
        assert_eq!(tokens(&ipt), 262_144, "0.25M tokens per step");
        assert_eq!(
            (tokens(&van), van.train.steps),
            (tokens(&ipt), ipt.train.steps),
            "same token budget"
        );
        assert_eq!(
            (ipt.train.lr, ipt.train.warmup_steps, ipt.train.steps),
            (1e-5, 1000, 4000)
        );
        assert_eq!(
            ipt.data
                .sources
                .iter()
                .map(|s| s.weight)
                .collect::<Vec<_>>(),
            vec![0.5, 0.5]
        );
        let o = kiln(
            &[
                "plan",
                "--config",
                &format!("configs/llama3-8b-{domain}-ipt.toml"),
            ],
            root,
        );
        let err = stderr(&o);
        // The recipe fits 8 × 80 GB with headroom at ZeRO-2.
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains("memory plan per device (world 8, ZeRO-2)")
                && err.contains("= 56.24 GB of 80.00 GB available"),
            "{err}"
        );
        assert!(err.contains("8.03 B parameters"), "{err}");
        // The table for choosing: world 4 and 8 at every stage.
        assert!(
            err.contains("world   4: ZeRO-0 164.5 GB does not fit, ZeRO-1 104.3 GB does not fit, ZeRO-2 74.3 GB fits"),
            "{err}"
        );
        // At ZeRO-0 the state alone does not fit 80 GB: the plan says what to change.
        let o = kiln(
            &[
                "plan",
                "--config",
                &format!("configs/llama3-8b-{domain}-ipt.toml"),
                "--set",
                "train.zero_stage=0",
            ],
            root,
        );
        assert_clean_error(&o, &["set train.zero_stage = 2"]);
        // 4 × 80 GB, as the config's comment says: full recomputation.
        let o = kiln(
            &[
                "plan",
                "--config",
                &format!("configs/llama3-8b-{domain}-ipt.toml"),
                "--set",
                "train.world_size=4",
                "--set",
                "train.grad_accum=16",
                "--set",
                "train.recompute=\"full\"",
            ],
            root,
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

#[test]
fn synthesizer_sft_recipe_parses_and_its_memory_plan_fits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c =
        kiln::config::Config::load(Some(&root.join("configs/synthesizer-sft.toml")), &[]).unwrap();
    let m = c.model.as_ref().unwrap();
    assert_eq!(m.init_from.as_deref(), Some("hf:models/Mistral-7B-v0.1"));
    assert_eq!((m.sliding_window, c.data.seq_len), (Some(4096), 4096));
    assert_eq!(
        c.data.batch_size * c.data.seq_len * c.train.grad_accum * c.train.world_size,
        262_144
    );
    let o = kiln(&["plan", "--config", "configs/synthesizer-sft.toml"], root);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("7.24 B parameters"), "{err}");
    assert!(
        err.contains("memory plan per device (world 8, ZeRO-1)"),
        "{err}"
    );
}

#[test]
fn eval_scores_a_trained_checkpoint_on_world_tasks_and_held_out_shards() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), CONFIG).unwrap();
    let o = kiln(
        &["train", "--config", "c.toml", "--set", "train.steps=3"],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kiln(
        &[
            "eval",
            "--checkpoint",
            "run",
            "--tasks",
            "w/tasks/heldout_mc.jsonl",
            "w/tasks/heldout_qa.jsonl",
            "--data",
            "w/shards/raw_*.kiln",
            "--data-batches",
            "2",
            "--max-new-tokens",
            "6",
            "--json",
            "eval.json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("| heldout_mc | 600 |") && table.contains("| heldout_qa | 600 |"),
        "{table}"
    );
    assert!(table.contains("held-out loss"), "{table}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("eval.json")).unwrap()).unwrap();
    let mc = &v["tasks"][0];
    for k in ["acc_mean_token", "acc_per_byte", "acc_sum"] {
        let a = mc[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{k} = {a}");
    }
    assert!(v["tasks"][1]["exact_match"].is_number() && v["tasks"][1]["f1"].is_number());
    assert!(v["heldout"]["perplexity"].as_f64().unwrap() > 1.0);

    // In-training evaluation: [eval] scores tasks every N steps into metrics.jsonl.
    let with_eval = format!("{CONFIG}\n[eval]\ntasks = [\"w/tasks/heldout_mc.jsonl\", \"w/tasks/heldout_qa.jsonl\"]\nevery = 2\nmax_items = 12\nmax_new_tokens = 4\n");
    std::fs::write(d.join("e.toml"), with_eval).unwrap();
    let o = kiln(
        &[
            "train",
            "--config",
            "e.toml",
            "--set",
            "train.steps=3",
            "--set",
            "train.out_dir=\"ev\"",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("eval step 2: heldout_mc (12 items): acc"),
        "{}",
        stderr(&o)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(d.join("ev/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines[0].get("eval").is_none());
    assert_eq!(lines[1]["eval"][0]["items"], 12);
    assert!(lines[2]["eval"][1]["exact_match"].is_number());

    // Both runs in one figure: loss curves, and the task-score panel for the run that evaluated.
    let o = kiln(&["plot", "run", "ev", "--out", "curves"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let png = std::fs::read(d.join("curves.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    let svg = std::fs::read_to_string(d.join("curves.svg")).unwrap();
    for text in [
        "run train",
        "ev train",
        "ev validation",
        "task scores",
        "ev heldout_mc",
        "step",
    ] {
        assert!(svg.contains(text), "the SVG lacks {text:?}");
    }
    assert_clean_error(
        &kiln(&["plot", "nowhere"], d),
        &["nowhere/metrics.jsonl", "cannot read"],
    );

    // A malformed task line names the file and line.
    std::fs::write(d.join("bad.jsonl"), "{\"input\": \"q\", \"options\": [\"a\", \"b\"], \"gold_index\": 0}\n{\"input\": \"q\", \"options\": [\"a\", \"b\"], \"gold_index\": 5}\n").unwrap();
    assert_clean_error(
        &kiln(&["eval", "--checkpoint", "run", "--tasks", "bad.jsonl"], d),
        &["bad.jsonl:2", "gold_index 5 is out of range"],
    );
    // A tokenizer that is not the one the checkpoint was trained with.
    let o = kiln(
        &[
            "tokenizer",
            "train",
            "--input",
            "w/raw.jsonl",
            "--vocab-size",
            "500",
            "--out",
            "w/tokenizer.json",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_clean_error(
        &kiln(&["eval", "--checkpoint", "run", "--tasks", "bad.jsonl"], d),
        &["w/tokenizer.json", "not the one"],
    );
}

#[test]
fn experiment_world_trains_both_arms_scores_them_and_reuses_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The embedded configs, shrunk: a 30-person world and a few steps of a very small model.
    let small = [
        "--set",
        "world.people=30",
        "--set",
        "world.bios_per_person=2",
        "--set",
        "world.vocab_size=400",
        "--set",
        "data.seq_len=32",
        "--set",
        "data.batch_size=4",
        "--set",
        "model.dim=32",
        "--set",
        "model.n_heads=4",
        "--set",
        "model.n_kv_heads=2",
        "--set",
        "model.ffn_dim=64",
        "--set",
        "model.max_seq_len=64",
        "--set",
        "train.steps=4",
        "--set",
        "train.warmup_steps=1",
        "--set",
        "train.log_every=1",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "eval.every=2",
        "--set",
        "eval.max_items=3",
        "--set",
        "eval.max_new_tokens=3",
    ];
    let mut args = vec!["experiment", "world", "--out", "exp", "--max-items", "5"];
    args.extend(small);
    let o = kiln(&args, d);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("experiment: training vanilla"), "{err}");
    assert!(
        err.contains("experiment: training instruction pre-training"),
        "{err}"
    );
    // The vanilla arm reads the biographies only; the other mixes in the augmented records.
    let vanilla_cfg = std::fs::read_to_string(d.join("exp/vanilla/config.toml")).unwrap();
    let ipt_cfg = std::fs::read_to_string(d.join("exp/ipt/config.toml")).unwrap();
    assert!(!vanilla_cfg.contains("augmented_"), "{vanilla_cfg}");
    assert!(ipt_cfg.contains("augmented_"), "{ipt_cfg}");

    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table.contains("| vanilla | ") && table.contains("| instruction pre-training | "),
        "{table}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("exp/results.json")).unwrap())
            .unwrap();
    let arms = v["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 2);
    for arm in arms {
        assert_eq!(arm["tokens"], 4 * 4 * 32);
        let tasks: Vec<&str> = arm["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["task"].as_str().unwrap())
            .collect();
        assert_eq!(
            tasks,
            ["heldout_qa", "heldout_mc", "heldout_cloze", "train_qa"]
        );
        assert_eq!(arm["tasks"][0]["items"], 5);
        let em = arm["tasks"][0]["exact_match"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&em));
    }
    let png = std::fs::read(d.join("exp/curves.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    let svg = std::fs::read_to_string(d.join("exp/curves.svg")).unwrap();
    assert!(svg.contains("vanilla train") && svg.contains("ipt heldout_qa"));

    // Run again: both runs are finished and reused, the scores are the same.
    let o = kiln(&args, d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is finished, reusing it"),
        "{}",
        stderr(&o)
    );
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("exp/results.json")).unwrap())
            .unwrap();
    assert_eq!(again["arms"][1]["tasks"], v["arms"][1]["tasks"]);

    // Keys that do not change a run may differ (as on `kiln train --resume`): still reused.
    let mut same = args.clone();
    same.extend(["--set", "train.threads=1", "--set", "train.log_every=3"]);
    let o = kiln(&same, d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is finished, reusing it")
            && !stderr(&o).contains("experiment: training"),
        "{}",
        stderr(&o)
    );

    // A different model is a different config: refused naming the key, nothing overwritten.
    let mut other = args.clone();
    other.extend(["--set", "model.ffn_dim=96"]);
    let o = kiln(&other, d);
    assert_clean_error(&o, &["exp/vanilla", "different config", "model.ffn_dim"]);

    // A world directory holds one world: asking for another there is refused, and moving
    // world.dir moves every {world} path of the configs with it.
    let mut other = args.clone();
    other.extend(["--set", "world.people=31"]);
    assert_clean_error(
        &kiln(&other, d),
        &["data/world-exp holds a world of 30 people", "31"],
    );
    let mut moved = vec!["experiment", "world", "--out", "exp31", "--max-items", "2"];
    moved.extend(small);
    moved.extend(["--set", "world.people=31", "--set", "world.dir=\"w31\""]);
    let o = kiln(&moved, d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.join("w31/tokenizer.json").exists() && d.join("w31/shards").is_dir());
    let cfg31 = std::fs::read_to_string(d.join("exp31/ipt/config.toml")).unwrap();
    assert!(
        cfg31.contains("w31/shards/augmented_") && !cfg31.contains("{world}"),
        "{cfg31}"
    );

    // Arms that differ in more than their data are not a controlled comparison.
    let vanilla = include_str!("../configs/world-vanilla.toml");
    assert!(vanilla.contains("lr = 2e-3"));
    std::fs::write(d.join("v.toml"), vanilla.replace("lr = 2e-3", "lr = 1e-3")).unwrap();
    let mut bad = vec![
        "experiment",
        "world",
        "--out",
        "exp2",
        "--vanilla",
        "v.toml",
    ];
    bad.extend(small);
    assert_clean_error(&kiln(&bad, d), &["train.lr", "not a controlled comparison"]);
}

#[test]
fn experiment_world_finetune_study_tunes_vanilla_at_the_same_tokens_over_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let args = vec![
        "experiment",
        "world",
        "--study",
        "finetune",
        "--seeds",
        "2",
        "--ft-fraction",
        "0.25",
        "--out",
        "ft",
        "--max-items",
        "4",
    ];
    let args = tiny_world(
        args,
        &[
            "train.steps=8",
            "train.warmup_steps=1",
            "train.log_every=1",
            "train.checkpoint_every=4",
            "eval.every=4",
            "eval.max_items=2",
            "eval.max_new_tokens=3",
        ],
    );
    let o = kiln(&args, d);
    assert!(o.status.success(), "{}", stderr(&o));
    for seed in ["seed0", "seed1"] {
        // Pre-training 6 of the 8 steps on the biographies, exported, then tuning 2 steps from it
        // on the question-answer shard only, with the loss on the answers.
        let pt =
            std::fs::read_to_string(d.join(format!("ft/{seed}/vanilla-pt/config.toml"))).unwrap();
        assert!(pt.contains("steps = 6") && pt.contains("raw_"), "{pt}");
        let ft =
            std::fs::read_to_string(d.join(format!("ft/{seed}/vanilla-ft/config.toml"))).unwrap();
        assert!(
            ft.contains("steps = 2") && ft.contains("qa_sft_") && !ft.contains("raw_"),
            "{ft}"
        );
        assert!(ft.contains(&format!("hf:ft/{seed}/vanilla-pt/hf")), "{ft}");
        assert!(d
            .join(format!("ft/{seed}/vanilla-pt/hf/config.json"))
            .exists());
        let seed_n = &seed[4..];
        assert!(ft.contains(&format!("seed = {seed_n}")), "{ft}");
    }
    // The tuning data: one document per training person and attribute, the loss on answers only.
    // The studies run the embedded configs at study scale, in a world of their own.
    let world = d.join("data/world-study");
    let tok =
        kiln::data::tokenizer::Tokenizer::from_file(&world.join("tokenizer.json"), None, None)
            .unwrap();
    let shard =
        kiln::data::shard::Shard::open(&world.join("shards/qa_sft_00000.kiln"), 400, None).unwrap();
    assert_eq!(shard.num_documents(), 15 * 6);
    assert!(shard.has_loss_mask());
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(world.join("eval_train.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    shard.extend_tokens(shard.document(0), &mut ids);
    shard.extend_loss_mask(shard.document(0), &mut mask);
    let split = |keep: bool| -> Vec<u32> {
        ids.iter()
            .zip(&mask)
            .filter(|(_, &m)| m == keep)
            .map(|(&t, _)| t)
            .collect()
    };
    assert_eq!(
        tok.decode(&split(false), true).unwrap(),
        format!("Question: {}\nAnswer:", first["q"].as_str().unwrap())
    );
    assert_eq!(
        tok.decode(&split(true), true).unwrap(),
        format!(" {}", first["a"].as_str().unwrap())
    );
    assert!(*mask.last().unwrap(), "the EOS is in the loss");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("ft/results.json")).unwrap()).unwrap();
    assert_eq!(v["study"], "finetune");
    let seeds = v["seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), 2);
    for s in seeds {
        let arms: Vec<&str> = s["arms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            arms,
            [
                "vanilla",
                "instruction pre-training",
                "vanilla + instruction tuning"
            ]
        );
        // The same total tokens in every arm.
        for a in s["arms"].as_array().unwrap() {
            assert_eq!(a["tokens"], 8 * 4 * 32, "{a}");
            assert_eq!(a["tasks"][0]["items"], 4);
        }
    }
    let summary = v["summary"].as_array().unwrap();
    let qa = summary
        .iter()
        .find(|x| x["arm"] == "vanilla + instruction tuning" && x["task"] == "heldout_qa")
        .unwrap();
    assert_eq!(qa["values"].as_array().unwrap().len(), 2);
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table.contains("| vanilla + instruction tuning | ") && table.contains("Physics of LM 3.1"),
        "{table}"
    );
    assert!(d.join("ft/curves.png").exists() && d.join("ft/results.md").exists());

    // Again: every run is finished and reused, the export is not redone.
    let o = kiln(&args, d);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        !err.contains("experiment: training") && !err.contains("exported"),
        "{err}"
    );
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("ft/results.json")).unwrap()).unwrap();
    assert_eq!(again["summary"], v["summary"]);

    let bad: Vec<&str> = args
        .iter()
        .map(|&a| if a == "0.25" { "1.5" } else { a })
        .collect();
    assert_clean_error(&kiln(&bad, d), &["--ft-fraction 1.5", "between 0 and 1"]);
}

#[test]
fn experiment_world_efficiency_study_runs_budgets_and_mixtures_over_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let args = vec![
        "experiment",
        "world",
        "--study",
        "efficiency",
        "--seeds",
        "2",
        "--budgets",
        "0.5,1",
        "--ratios",
        "0.5,0.2",
        "--out",
        "eff",
        "--max-items",
        "3",
    ];
    let args = tiny_world(
        args,
        &[
            "train.steps=8",
            "train.warmup_steps=2",
            "train.log_every=1",
            "train.checkpoint_every=4",
            "eval.every=4",
            "eval.max_items=2",
            "eval.max_new_tokens=3",
        ],
    );
    let o = kiln(&args, d);
    assert!(o.status.success(), "{}", stderr(&o));
    for seed in ["seed0", "seed1"] {
        // Each budget is a run of its own: half the steps (and warm-up), or all of them.
        let half =
            std::fs::read_to_string(d.join(format!("eff/{seed}/budget0.5/vanilla/config.toml")))
                .unwrap();
        assert!(
            half.contains("steps = 4") && half.contains("warmup_steps = 1"),
            "{half}"
        );
        let fifth =
            std::fs::read_to_string(d.join(format!("eff/{seed}/budget1/ipt-0.2/config.toml")))
                .unwrap();
        assert!(fifth.contains("steps = 8"), "{fifth}");
        // Vanilla + instruction tuning splits each budget: at half the steps, 4 = 3 + 1, the
        // tuning starting from the pre-training run's export.
        let tuned =
            std::fs::read_to_string(d.join(format!("eff/{seed}/budget0.5/vanilla-ft/config.toml")))
                .unwrap();
        let t: toml::Value = toml::from_str(&tuned).unwrap();
        assert_eq!(t["train"]["steps"].as_integer(), Some(1), "{tuned}");
        assert!(tuned.contains("budget0.5/vanilla-pt/hf"), "{tuned}");
        let cfg: toml::Value = toml::from_str(&fifth).unwrap();
        let weights: Vec<(String, f64)> = cfg["data"]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["weight"].as_float().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            weights,
            [("raw".to_string(), 0.8), ("augmented".to_string(), 0.2)]
        );
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("eff/results.json")).unwrap())
            .unwrap();
    assert_eq!(v["study"], "efficiency");
    for s in v["seeds"].as_array().unwrap() {
        let arms: Vec<(&str, u64)> = s["arms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["name"].as_str().unwrap(), a["tokens"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            arms,
            [
                ("vanilla @ 0.5", 4 * 4 * 32),
                ("vanilla + instruction tuning @ 0.5", 4 * 4 * 32),
                ("instruction pre-training, 1:1 @ 0.5", 4 * 4 * 32),
                ("instruction pre-training, 1/5 augmented @ 0.5", 4 * 4 * 32),
                ("vanilla @ 1", 8 * 4 * 32),
                ("vanilla + instruction tuning @ 1", 8 * 4 * 32),
                ("instruction pre-training, 1:1 @ 1", 8 * 4 * 32),
                ("instruction pre-training, 1/5 augmented @ 1", 8 * 4 * 32),
            ]
        );
    }
    let spread = v["summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["arm"] == "vanilla @ 1" && x["task"] == "heldout_mc")
        .unwrap();
    assert_eq!(spread["values"].as_array().unwrap().len(), 2);
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table.contains("| instruction pre-training, 1/5 augmented |")
            && table.contains("| vanilla + instruction tuning |")
            && table.contains("Vanilla's best"),
        "{table}"
    );
    for f in [
        "heldout_qa_vs_tokens.png",
        "heldout_mc_vs_tokens.svg",
        "curves.png",
    ] {
        assert!(d.join("eff").join(f).exists(), "{f}");
    }

    // Again: every run is reused.
    let o = kiln(&args, d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("experiment: training"),
        "{}",
        stderr(&o)
    );

    let bad: Vec<&str> = args
        .iter()
        .map(|&a| if a == "0.5,1" { "0,1" } else { a })
        .collect();
    assert_clean_error(&kiln(&bad, d), &["--budgets", "positive share"]);
}

#[test]
fn experiment_world_ablation_study_leaves_one_category_out_and_scores_per_category() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let args = vec![
        "experiment",
        "world",
        "--study",
        "ablation",
        "--seeds",
        "2",
        "--leave-out",
        "birth_city,employer",
        "--out",
        "abl",
        "--max-items",
        "3",
    ];
    let args = tiny_world(
        args,
        &[
            "train.steps=4",
            "train.warmup_steps=1",
            "train.log_every=1",
            "train.checkpoint_every=2",
            "eval.every=2",
            "eval.max_items=2",
            "eval.max_new_tokens=3",
        ],
    );
    let o = kiln(&args, d);
    assert!(o.status.success(), "{}", stderr(&o));
    let world = d.join("data/world-study");
    // The left-out category's questions are nowhere in its records; the others are all there.
    let records = std::fs::read_to_string(world.join("aug_no_birth_city.jsonl")).unwrap();
    let train_items: Vec<serde_json::Value> =
        std::fs::read_to_string(world.join("eval_train.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    for item in &train_items {
        let q = serde_json::to_string(item["q"].as_str().unwrap()).unwrap();
        assert_eq!(
            records.contains(&q),
            item["attribute"] != "birth_city",
            "{q}"
        );
    }
    for seed in ["seed0", "seed1"] {
        let cfg =
            std::fs::read_to_string(d.join(format!("abl/{seed}/ipt-no-employer/config.toml")))
                .unwrap();
        assert!(
            cfg.contains("aug_no_employer_") && cfg.contains("raw_"),
            "{cfg}"
        );
        assert!(d.join(format!("abl/{seed}/ipt/config.toml")).exists());
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("abl/results.json")).unwrap())
            .unwrap();
    assert_eq!(v["study"], "ablation");
    let arm = &v["seeds"][1]["arms"][2];
    assert_eq!(arm["name"], "instruction pre-training without employer");
    let tasks: Vec<&str> = arm["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .collect();
    assert_eq!(
        tasks,
        [
            "heldout_qa_birth_date",
            "heldout_qa_birth_city",
            "heldout_qa_university",
            "heldout_qa_major",
            "heldout_qa_employer",
            "heldout_qa_employer_city",
            "heldout_qa"
        ]
    );
    // The default layout left out: its own run on shards rendered without the classic layout.
    let layout = &v["seeds"][0]["arms"][3];
    assert_eq!(
        layout["name"],
        "instruction pre-training without the classic layout"
    );
    assert!(world
        .join("shards/aug_no_layout-classic_00000.kiln")
        .exists());
    let cfg =
        std::fs::read_to_string(d.join("abl/seed0/ipt-no-layout-classic/config.toml")).unwrap();
    assert!(cfg.contains("aug_no_layout-classic_"), "{cfg}");
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table.contains("| instruction pre-training without birth_city |") && table.contains("**"),
        "{table}"
    );
    // Per-category task files hold the held-out people's questions about that category only.
    let per = std::fs::read_to_string(world.join("tasks/heldout_qa_employer.jsonl")).unwrap();
    assert_eq!(per.lines().count(), 15);

    let o = kiln(&args, d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("experiment: training"),
        "{}",
        stderr(&o)
    );

    let bad: Vec<&str> = args
        .iter()
        .map(|&a| {
            if a == "birth_city,employer" {
                "salary"
            } else {
                a
            }
        })
        .collect();
    assert_clean_error(&kiln(&bad, d), &["--leave-out salary", "not an attribute"]);
}

/// `args` (a `kiln experiment world` command) on a 30-person world and a very small model, with
/// `extra` `--set` overrides (the schedule and the scoring).
fn tiny_world<'a>(mut args: Vec<&'a str>, extra: &[&'a str]) -> Vec<&'a str> {
    let world = [
        "world.people=30",
        "world.bios_per_person=2",
        "world.vocab_size=400",
        "data.seq_len=32",
        "data.batch_size=4",
        "model.dim=32",
        "model.n_heads=4",
        "model.n_kv_heads=2",
        "model.ffn_dim=64",
        "model.max_seq_len=64",
    ];
    for s in world.iter().chain(extra) {
        args.extend(["--set", s]);
    }
    args
}

/// `kiln train --config c.toml --set train.out_dir="OUT"` plus `extra`, with `env` set.
fn train_in(d: &Path, out: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let out_dir = format!("train.out_dir=\"{out}\"");
    let mut args = vec!["train", "--config", "c.toml", "--set", &out_dir];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(&args)
        .envs(env.iter().copied())
        .current_dir(d)
        .output()
        .expect("run kiln")
}

fn steps_of(dir: &Path) -> Vec<u64> {
    metrics(dir)
        .iter()
        .map(|m| m["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_run_directory_is_locked_and_never_silently_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), CONFIG).unwrap();
    // Build the world first, so the background run starts training at once.
    let o = train_in(d, "short", &["--set", "train.steps=2"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    // A long run holds "long" ...
    let mut first = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "train",
            "--config",
            "c.toml",
            "--set",
            "train.out_dir=\"long\"",
            "--set",
            "train.steps=1000000",
        ])
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let metrics_path = d.join("long/metrics.jsonl");
    while std::fs::metadata(&metrics_path).map_or(true, |m| m.len() == 0) {
        assert!(Instant::now() < deadline, "the first run logged no step");
        assert!(first.try_wait().unwrap().is_none(), "the first run ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    // ... so a second run there fails at once, naming the directory and the holder.
    let pid = format!("pid {}", first.id());
    for extra in [&[][..], &["--overwrite"][..], &["--resume"][..]] {
        let o = train_in(d, "long", extra, &[]);
        assert_clean_error(&o, &["long", "another run", &pid]);
    }
    first.kill().unwrap();
    first.wait().unwrap();

    // The killed run's lock died with it, but its files stay: a fresh run is refused ...
    std::fs::write(d.join("long/notes.txt"), "mine").unwrap();
    let o = train_in(d, "long", &["--set", "train.steps=2"], &[]);
    assert_clean_error(
        &o,
        &["long", "holds another run", "--resume", "--overwrite"],
    );
    // ... until --overwrite, which removes the old run's files and nothing else.
    let o = train_in(d, "long", &["--set", "train.steps=2", "--overwrite"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--overwrite: removed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(steps_of(&d.join("long")), [1, 2]);
    assert_eq!(
        std::fs::read_to_string(d.join("long/notes.txt")).unwrap(),
        "mine"
    );
    let ckpts: Vec<_> = std::fs::read_dir(d.join("long"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("step_"))
        .collect();
    assert_eq!(ckpts, ["step_000002"]);
}

#[test]
fn resume_refuses_changed_keys_and_records_safe_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), CONFIG).unwrap();
    let steps8 = ["--set", "train.steps=8"];
    let o = train_in(d, "r", &[&steps8[..], &["--until", "4"]].concat(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A change to the math is refused, naming the key (and only the unsafe keys).
    let o = train_in(
        d,
        "r",
        &[
            &steps8[..],
            &[
                "--resume",
                "--set",
                "train.lr=1e-2",
                "--set",
                "train.log_every=1",
            ],
        ]
        .concat(),
        &[],
    );
    assert_clean_error(&o, &["train.lr", "--overwrite"]);
    assert!(!stderr(&o).contains("train.log_every"), "{}", stderr(&o));
    // Fewer steps than the checkpoint's schedule: refused.
    let o = train_in(d, "r", &["--resume", "--set", "train.steps=6"], &[]);
    assert_clean_error(&o, &["train.steps: 8 -> 6"]);
    // Safe changes: accepted, printed and recorded on the first step after the resume.
    let o = train_in(
        d,
        "r",
        &[
            "--resume",
            "--set",
            "train.steps=10",
            "--set",
            "train.log_every=1",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("config changed since the checkpoint"),
        "{}",
        stderr(&o)
    );
    let m = metrics(&d.join("r"));
    assert_eq!(steps_of(&d.join("r")), (1..=10).collect::<Vec<_>>());
    let changes = m[4]["config_changes"].to_string();
    assert!(changes.contains("train.steps: 8 -> 10"), "{changes}");
    assert!(changes.contains("train.log_every: 5 -> 1"), "{changes}");
    assert!(
        m.iter()
            .filter(|x| x.get("config_changes").is_some())
            .count()
            == 1
    );
    // Every reader of metrics.jsonl still reads it.
    let o = kiln(&["plot", "r", "--out", "p"], d);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn metrics_hold_each_step_once_after_kills_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), CONFIG).unwrap();
    let set = [
        "--set",
        "train.steps=12",
        "--set",
        "train.checkpoint_every=4",
    ];
    let o = train_in(d, "m", &[&set[..], &["--until", "3"]].concat(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Crashes at step 7, having logged steps 4..=6 past its checkpoint of step 4.
    let o = train_in(
        d,
        "m",
        &[&set[..], &["--resume"]].concat(),
        &[("KILN_FAULT", "panic@0:7")],
    );
    assert!(
        !o.status.success(),
        "the fault did not fire: {}",
        stderr(&o)
    );
    assert_eq!(steps_of(&d.join("m")), (1..=6).collect::<Vec<_>>());
    let o = train_in(d, "m", &[&set[..], &["--resume"]].concat(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(steps_of(&d.join("m")), (1..=12).collect::<Vec<_>>());
}

#[test]
fn exit_codes_tell_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), CONFIG).unwrap();
    // Nothing to train.
    let o = train_in(d, "z", &["--set", "train.steps=0"], &[]);
    assert_clean_error(&o, &["nothing to train", "train.steps = 0"]);
    let o = train_in(d, "u", &["--set", "train.steps=4", "--until", "2"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train_in(
        d,
        "u",
        &["--set", "train.steps=4", "--resume", "--until", "2"],
        &[],
    );
    assert_clean_error(&o, &["nothing to train", "step 2"]);
    // Every step skipped as non-finite: a checkpoint whose weights are all NaN.
    let model = d.join("u/step_000002/model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for b in &mut bytes[header..] {
        *b = 0xff;
    }
    std::fs::write(&model, bytes).unwrap();
    let o = train_in(d, "u", &["--set", "train.steps=4", "--resume"], &[]);
    assert_clean_error(&o, &["every one of the 2 step(s)", "skipped"]);
}

#[test]
fn full_recomputation_trains_bitwise_like_keeping_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), CONFIG).unwrap();
    let run = |out: &str, recompute: &str| {
        let set = format!("train.recompute={recompute}");
        let o = train_in(d, out, &["--set", "train.steps=3", "--set", &set], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        metrics(&d.join(out))
    };
    let keep = run("keep", "false");
    let full = run("full", "\"full\"");
    assert_eq!(keep.len(), full.len());
    for (a, b) in keep.iter().zip(&full) {
        for key in ["loss", "grad_norm"] {
            assert_eq!(a[key], b[key], "step {}: {key}", a["step"]);
        }
    }
    // A name kiln does not know is one line naming the key.
    let o = train_in(d, "bad", &["--set", "train.recompute=\"some\""], &[]);
    assert_clean_error(&o, &["recompute", "\"full\""]);
}

#[test]
fn a_chunked_head_trains_like_the_whole_head() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), CONFIG).unwrap();
    let run = |out: &str, chunk: &str| {
        let set = format!("train.head_chunk={chunk}");
        let o = train_in(d, out, &["--set", "train.steps=4", "--set", &set], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        (metrics(&d.join(out)), stderr(&o))
    };
    let (whole, err) = run("whole", "0");
    assert!(!err.contains("head: "), "{err}");
    // 16 × 32 = 512 rows a micro-batch; 100 asked, 64 used.
    let (chunked, err) = run("chunked", "100");
    assert!(
        err.contains(
            "head: output projection and loss in chunks of 64 of the micro-batch's 512 rows"
        ),
        "{err}"
    );
    assert_eq!(whole.len(), chunked.len());
    for (a, b) in whole.iter().zip(&chunked) {
        for key in ["loss", "grad_norm"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!(
                ((x - y) / x).abs() < 1e-4,
                "step {}: {key} {x} vs {y}",
                a["step"]
            );
        }
    }
    // Four steps move the loss well beyond that tolerance.
    let first = whole[0]["loss"].as_f64().unwrap();
    let last = whole.last().unwrap()["loss"].as_f64().unwrap();
    assert!((first - last).abs() / first > 1e-2, "{first} {last}");
}

#[test]
fn studies_reuse_each_others_finished_runs_of_the_same_config() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let extra = [
        "train.steps=8",
        "train.warmup_steps=1",
        "train.log_every=1",
        "train.checkpoint_every=4",
        "eval.every=0",
    ];
    let study = |name: &str, out: &str, args: &[&str]| {
        let mut a = vec![
            "experiment",
            "world",
            "--study",
            name,
            "--seeds",
            "1",
            "--out",
            out,
            "--max-items",
            "3",
        ];
        a.extend_from_slice(args);
        let o = kiln(&tiny_world(a, &extra), d);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let ft = study("finetune", "runs/ft", &[]);
    assert_eq!(ft.matches("experiment: training").count(), 4, "{ft}");
    // The efficiency study's full budget at the 1:1 mixture is the finetune study's three arms:
    // nothing is trained again; the half budget and the 1/5 mixture are new.
    let eff = study(
        "efficiency",
        "runs/eff",
        &["--budgets", "0.5,1", "--ratios", "0.5,0.2"],
    );
    for arm in [
        "runs/ft/seed0/vanilla ran this config",
        "runs/ft/seed0/vanilla-pt ran this config",
        "runs/ft/seed0/vanilla-ft ran this config",
        "runs/ft/seed0/ipt ran this config",
    ] {
        assert!(eff.contains(arm), "{arm}: {eff}");
    }
    let trained: Vec<&str> = eff
        .lines()
        .filter(|l| l.starts_with("experiment: training"))
        .collect();
    let at_one: Vec<&&str> = trained.iter().filter(|l| l.contains("@ 1 ")).collect();
    assert_eq!((trained.len(), at_one.len()), (6, 1), "{trained:?}");
    assert!(at_one[0].contains("1/5 augmented"), "{trained:?}");
    assert!(!d.join("runs/eff/seed0/budget1/vanilla").exists());
    // Both report the same scores for the shared runs, which the results point at.
    let results = |p: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join(p)).unwrap()).unwrap()
    };
    let (f, e) = (
        results("runs/ft/results.json"),
        results("runs/eff/results.json"),
    );
    let arm = |r: &serde_json::Value, name: &str| {
        r["seeds"][0]["arms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("no arm {name}"))
            .clone()
    };
    let (a, b) = (
        arm(&f, "instruction pre-training"),
        arm(&e, "instruction pre-training, 1:1 @ 1"),
    );
    assert_eq!(b["run_dir"], "runs/ft/seed0/ipt");
    assert_eq!(a["tasks"], b["tasks"]);
    // The ablation's arm with every category is the same instruction pre-training run.
    let abl = study("ablation", "runs/abl", &["--leave-out", "birth_city"]);
    assert!(abl.contains("runs/ft/seed0/ipt ran this config"), "{abl}");
    assert_eq!(abl.matches("experiment: training").count(), 2, "{abl}");
}
