//! Data parallelism without GPUs, on the CPU backend: N ranks × micro-batch b train to the same
//! parameters as 1 rank × N·b (f32 tolerance), with gradient accumulation, at ZeRO-0 to 3
//! (buckets smaller than the embedding, which is split over several); resuming a sharded run with
//! the same world size and stage is bitwise exact, and with another world size and stage re-splits
//! the state; validation and export at ZeRO-3; measured memory against the plan at every stage; a
//! rank that panics stops the others with an error instead of a hang; `kiln launch` runs two CPU
//! processes over the TCP rendezvous (ZeRO-3) and stops the survivors when one fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{kiln, rel_err, stderr};

use kiln::config::Config;
use kiln::train::checkpoint;

fn config(dir: &Path, extra: &[(&str, &str)]) -> Config {
    let d = dir.display();
    let text = format!(
        r#"
[world]
dir = "{d}/w"
people = 120
bios_per_person = 2
vocab_size = 500

[data]
tokenizer = "{d}/w/tokenizer.json"
seq_len = 32
batch_size = 4
val_fraction = 0.0

[[data.sources]]
name = "raw"
path = "{d}/w/shards/raw_*.kiln"
weight = 0.8

[[data.sources]]
name = "augmented"
path = "{d}/w/shards/augmented_*.kiln"
weight = 0.2

[model]
dim = 32
n_layers = 2
n_heads = 4
n_kv_heads = 2
ffn_dim = 64
max_seq_len = 32
tie_embeddings = false

[train]
steps = 6
grad_accum = 2
lr = 1e-2
warmup_steps = 1
log_every = 100
checkpoint_every = 3
keep_last = 0
threads = 1
bucket_mb = 0.01
comm_timeout_s = 60
out_dir = "{d}/run"
"#
    );
    let overrides: Vec<String> = extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Config::parse("test", &text, &overrides).unwrap()
}

fn world_ready(dir: &Path) {
    let cfg = config(dir, &[]);
    kiln::world::ensure_world(cfg.world.as_ref().unwrap(), &cfg, false, true).unwrap();
}

/// Train `cfg` (threads when world_size > 1) and return the parameters of step `step`.
fn params_at(cfg: &Config, step: u64) -> Vec<checkpoint::NamedTensor> {
    if cfg.train.world_size > 1 {
        kiln::train::ranks::train_ranks_as_threads(cfg, None, None).unwrap();
    } else {
        let be = kiln::backend::cpu::CpuBackend::<f32>::new();
        kiln::train::trainer::train(&be, cfg, None, None).unwrap();
    }
    load_params(&cfg.train.out_dir, step)
}

fn load_params(out: &Path, step: u64) -> Vec<checkpoint::NamedTensor> {
    checkpoint::load(&out.join(format!("step_{step:06}")))
        .unwrap()
        .model
}

/// max over tensors of ‖a − b‖ / ‖b‖.
fn max_rel(a: &[checkpoint::NamedTensor], b: &[checkpoint::NamedTensor]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.name, y.name);
            rel_err(&x.data, &y.data)
        })
        .fold(0.0, f64::max)
}

fn metrics_losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn n_ranks_with_batch_b_match_one_rank_with_batch_n_b_at_every_zero_stage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world_ready(d);
    let out = |name: &str| format!("\"{}/{name}\"", d.display());
    // The reference: one rank, micro-batch 4, two micro-batches per step.
    let reference = config(d, &[("train.out_dir", &out("ref"))]);
    let want = params_at(&reference, 6);
    let want_losses = metrics_losses(&d.join("ref"));
    // The tolerance below is meaningful: three steps move the parameters far more than it.
    let moved = max_rel(&load_params(&d.join("ref"), 3), &want);
    assert!(
        moved > 1e-2,
        "parameters barely move ({moved:e}): the test would be weak"
    );
    // The last three compute the output projection and loss in chunks of rows (the fused head,
    // whose backward computes the loss), one rank and sharded.
    let cases = [
        ("2 ranks x 2, ZeRO-0", "2", "2", "0", "0"),
        ("2 ranks x 2, ZeRO-1", "2", "2", "1", "0"),
        ("4 ranks x 1, ZeRO-1", "4", "1", "1", "0"),
        ("4 ranks x 1, ZeRO-0", "4", "1", "0", "0"),
        ("2 ranks x 2, ZeRO-2", "2", "2", "2", "0"),
        ("4 ranks x 1, ZeRO-2", "4", "1", "2", "0"),
        ("2 ranks x 2, ZeRO-3", "2", "2", "3", "0"),
        ("4 ranks x 1, ZeRO-3", "4", "1", "3", "0"),
        (
            "1 rank x 4, head in chunks of 24 -> 16 rows",
            "1",
            "4",
            "0",
            "24",
        ),
        (
            "2 ranks x 2, ZeRO-2, head in chunks of 16",
            "2",
            "2",
            "2",
            "16",
        ),
        (
            "2 ranks x 2, ZeRO-3, head in chunks of 32",
            "2",
            "2",
            "3",
            "32",
        ),
    ];
    for (i, (what, world, batch, zero, chunk)) in cases.iter().enumerate() {
        let name = format!("dp{i}");
        let cfg = config(
            d,
            &[
                ("train.out_dir", &out(&name)),
                ("train.world_size", world),
                ("data.batch_size", batch),
                ("train.zero_stage", zero),
                ("train.head_chunk", chunk),
            ],
        );
        let got = params_at(&cfg, 6);
        let err = max_rel(&got, &want);
        let losses = metrics_losses(&d.join(&name));
        let loss_err = losses
            .iter()
            .zip(&want_losses)
            .map(|(a, b)| ((a - b) / b).abs())
            .fold(0.0, f64::max);
        eprintln!("{what}: parameters after 6 steps, max relative error {err:.3e}; loss max relative error {loss_err:.3e}");
        assert!(err < 1e-4, "{what}: relative error {err:e}");
        assert!(loss_err < 1e-5, "{what}: loss relative error {loss_err:e}");
    }
}

#[test]
fn zero3_validates_with_the_whole_model_gathered_on_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world_ready(d);
    let val_losses = |zero: &str| {
        let name = format!("val-zero{zero}");
        let cfg = config(
            d,
            &[
                ("train.out_dir", &format!("\"{}/{name}\"", d.display())),
                ("train.world_size", "2"),
                ("data.batch_size", "2"),
                ("train.zero_stage", zero),
                ("data.val_fraction", "0.1"),
                ("train.eval_every", "2"),
                ("train.eval_batches", "2"),
            ],
        );
        kiln::train::ranks::train_ranks_as_threads(&cfg, None, None).unwrap();
        std::fs::read_to_string(d.join(&name).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["val_loss"].as_f64()
            })
            .collect::<Vec<f64>>()
    };
    let (want, got) = (val_losses("0"), val_losses("3"));
    // Steps 2, 4 and 6; the weights move between them, and ZeRO-3 sees the same ones.
    assert_eq!(want.len(), 3, "{want:?}");
    assert!((want[0] - want[2]).abs() > 1e-3, "{want:?}");
    for (a, b) in got.iter().zip(&want) {
        assert!(
            ((a - b) / b).abs() < 1e-5,
            "ZeRO-3 {got:?} vs ZeRO-0 {want:?}"
        );
    }
    assert_eq!(got.len(), want.len());
}

#[test]
fn a_zero3_run_from_the_cli_exports_its_sharded_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world_ready(d);
    write_config(d);
    let o = run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "train",
                "--config",
                "c.toml",
                "--set",
                "train.world_size=2",
                "--set",
                "data.batch_size=2",
                "--set",
                "train.zero_stage=3",
                "--set",
                "train.steps=3",
                "--ranks-as-threads",
            ])
            .current_dir(d),
        Duration::from_secs(120),
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("ZeRO-3"), "{err}");
    // The measured peak is reported against the plan after the first step.
    assert!(
        err.contains("memory measured after the first step"),
        "{err}"
    );
    let ck = d.join("run/step_000003");
    assert!(ck.join("model.rank00001.safetensors").exists());
    assert!(!ck.join("model.safetensors").exists());
    let o = kiln(
        &[
            "export",
            "--checkpoint",
            "run",
            "--to-hf",
            "hf",
            "--dtype",
            "f32",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, exported) = kiln::hf::load(&d.join("hf"), None).unwrap();
    let joined = checkpoint::load(&ck).unwrap().model;
    let cfg = config(d, &[]);
    let tok = kiln::data::tokenizer::Tokenizer::from_file(&cfg.data.tokenizer, None, None).unwrap();
    let m = kiln::train::setup::resolve_model(&cfg, &tok).unwrap();
    let want = checkpoint::tensors_in_order(&ck, &m.params(), joined, "").unwrap();
    assert_eq!(exported.len(), want.len());
    for (a, b) in exported.iter().zip(&want) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
    // Resumed as another model shape, the error names the sharded checkpoint's index.
    let o = kiln(
        &[
            "train",
            "--config",
            "c.toml",
            "--set",
            "train.world_size=2",
            "--set",
            "data.batch_size=2",
            "--set",
            "train.zero_stage=3",
            "--set",
            "train.steps=4",
            "--set",
            "model.ffn_dim=48",
            "--resume",
            "3",
            "--ranks-as-threads",
        ],
        d,
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("step_000003/model.index.json") && err.contains("another model shape"),
        "{err}"
    );
}

#[test]
fn sharded_resume_is_exact_at_the_same_world_and_stage_and_resplits_for_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world_ready(d);
    let out = |name: &str| format!("\"{}/{name}\"", d.display());
    let set = |name: &str, world: &str, batch: &str, zero: &str| {
        config(
            d,
            &[
                ("train.out_dir", &out(name)),
                ("train.world_size", world),
                ("data.batch_size", batch),
                ("train.zero_stage", zero),
            ],
        )
    };
    let full = set("full", "2", "2", "2");
    let want = params_at(&full, 6);
    // Stop at step 3 and resume with the same world size and stage: bitwise identical.
    let part = set("part", "2", "2", "2");
    kiln::train::ranks::train_ranks_as_threads(&part, None, Some(3)).unwrap();
    let step3 = d.join("part/step_000003");
    let ck = checkpoint::load(&step3).unwrap();
    for f in [
        "model.rank00001.safetensors",
        "optimizer.rank00001.safetensors",
        "model.index.json",
    ] {
        assert!(step3.join(f).exists(), "{f}");
    }
    // Nobody holds the whole fp32 state: no rank writes it.
    assert!(!step3.join("optimizer.safetensors").exists());
    assert!(!step3.join("model.safetensors").exists());
    assert_eq!(ck.state["world_size"], 2);
    kiln::train::ranks::train_ranks_as_threads(
        &part,
        Some(kiln::train::trainer::Resume::Latest),
        None,
    )
    .unwrap();
    let got = load_params(&d.join("part"), 6);
    for (a, b) in got.iter().zip(&want) {
        let same = a
            .data
            .iter()
            .zip(&b.data)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(
            same,
            "{} differs after resuming with the same world size",
            a.name
        );
    }
    // Resume the world-2 ZeRO-2 checkpoint of step 3 elsewhere (same global batch): 4 ranks of
    // batch 1 at ZeRO-1, and one process of batch 4. The state is re-split; the result matches
    // within f32 tolerance.
    let resplit = |name: &str, cfg: &Config| {
        let dst = d.join(name).join("step_000003");
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(&step3).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
        let resume = Some(kiln::train::trainer::Resume::Step(3));
        if cfg.train.world_size > 1 {
            kiln::train::ranks::train_ranks_as_threads(cfg, resume, None).unwrap();
        } else {
            let be = kiln::backend::cpu::CpuBackend::<f32>::new();
            kiln::train::trainer::train(&be, cfg, resume, None).unwrap();
        }
        let err = max_rel(&load_params(&d.join(name), 6), &want);
        eprintln!("resumed world 2 ZeRO-2 -> {name}: max relative error {err:.3e} against the uninterrupted run");
        assert!(err < 1e-4, "{name}: relative error {err:e}");
    };
    resplit("four-zero1", &set("four-zero1", "4", "1", "1"));
    assert!(d
        .join("four-zero1/step_000006/optimizer.rank00003.safetensors")
        .exists());
    resplit("one", &set("one", "1", "4", "0"));
    resplit("two-zero3", &set("two-zero3", "2", "2", "3"));
    assert!(d.join("one/step_000006/model.safetensors").exists());
}

#[test]
fn measured_memory_of_real_steps_is_the_plan_within_ten_percent_at_every_stage_and_recompute() {
    use kiln::backend::cpu::CpuBackend;
    use kiln::backend::tracked::{Tracked, KINDS};
    use kiln::train::memory::{plan, Setting, Widths};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world_ready(d);
    let mut worst = 0.0f64;
    // Every stage with every recompute mode, and a head computed in chunks of 16 rows.
    let mut cases = vec![];
    for (world, zero) in [(1, 0), (2, 0), (2, 1), (2, 2), (2, 3), (4, 2), (4, 3)] {
        for recompute in ["false", "true", "\"full\""] {
            cases.push((world, zero, recompute, 0));
        }
    }
    cases.extend([(1, 0, "false", 16), (2, 3, "false", 16)]);
    for (world, zero, recompute, chunk) in cases {
        {
            let name = format!("mem-{world}-{zero}-{}-{chunk}", recompute.trim_matches('"'));
            let cfg = config(
                d,
                &[
                    ("train.out_dir", &format!("\"{}/{name}\"", d.display())),
                    ("train.world_size", &world.to_string()),
                    ("data.batch_size", &(4 / world).to_string()),
                    ("train.zero_stage", &zero.to_string()),
                    ("train.recompute", recompute),
                    ("train.head_chunk", &chunk.to_string()),
                    ("train.steps", "2"),
                    // Wider than the tokens' logits, so that every kind of state weighs.
                    ("model.dim", "64"),
                    ("model.ffn_dim", "192"),
                ],
            );
            let peaks = kiln::train::ranks::ranks_as_threads(&cfg, |comm| {
                let be = Tracked::new(CpuBackend::<f32>::new());
                if world == 1 {
                    kiln::train::trainer::train(&be, &cfg, None, None)?;
                } else {
                    let comm = kiln::dist::TrackedComm(comm);
                    kiln::train::trainer::train_dist(&be, &cfg, None, None, Some(&comm))?;
                }
                Ok(be.peaks())
            })
            .unwrap();
            let tok = kiln::data::tokenizer::Tokenizer::from_file(&cfg.data.tokenizer, None, None)
                .unwrap();
            let m = kiln::train::setup::resolve_model(&cfg, &tok).unwrap();
            let p = plan(&m, &Setting::of(&cfg), Widths::CPU, 0.0);
            for (rank, got) in peaks.iter().enumerate() {
                for (i, kind) in KINDS.iter().enumerate() {
                    let (want, have) = (p.by_kind[i], got.peak[i] as f64);
                    let err = (have - want).abs() / want.max(1.0);
                    worst = worst.max(err);
                    eprintln!("{name} rank {rank} {kind:?}: measured {have} B, planned {want:.0} B ({:+.1}%)", 100.0 * (have - want) / want.max(1.0));
                    assert!(
                        err < 0.10,
                        "{name}, rank {rank}, {kind:?}: measured {have} bytes at the peak, planned {want}"
                    );
                }
                let total = got.peak_total as f64;
                assert!(
                    (total - p.total()).abs() / p.total() < 0.10,
                    "{name}, rank {rank}: measured peak {total} bytes in all, planned {}",
                    p.total()
                );
            }
        }
    }
    eprintln!(
        "worst measured-against-planned difference by kind: {:.1}%",
        100.0 * worst
    );
}

/// Run `cmd` with a deadline; kill it and fail the test if it does not finish.
fn run_with_deadline(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "hung for {limit:?}; stderr: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_config(d: &Path) -> std::path::PathBuf {
    let cfg = config(d, &[]);
    let path = d.join("c.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    path
}

#[test]
fn a_rank_that_panics_stops_the_other_threads_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world_ready(d);
    write_config(d);
    for zero in ["0", "3"] {
        let o = run_with_deadline(
            Command::new(env!("CARGO_BIN_EXE_kiln"))
                .args([
                    "train",
                    "--config",
                    "c.toml",
                    "--set",
                    "train.world_size=3",
                    "--set",
                    "data.batch_size=1",
                    "--set",
                    &format!("train.zero_stage={zero}"),
                    "--set",
                    &format!("train.out_dir=\"run-zero{zero}\""),
                    "--ranks-as-threads",
                ])
                .env("KILN_FAULT", "panic@1:2")
                .current_dir(d),
            Duration::from_secs(120),
        );
        let err = stderr(&o);
        assert!(!o.status.success(), "ZeRO-{zero}: {err}");
        let last = err.lines().rfind(|l| l.starts_with("error:")).unwrap_or("");
        assert!(
            last.contains("rank 1 panicked") && last.contains("on purpose"),
            "ZeRO-{zero}: {err}"
        );
    }
}

#[test]
fn kiln_launch_runs_two_cpu_processes_like_two_threads_and_stops_survivors_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world_ready(d);
    write_config(d);
    // Two processes over the TCP rendezvous (ZeRO-3: weights gathered around every unit) ...
    let o = run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "launch",
                "--nproc-per-node",
                "2",
                "--",
                "train",
                "--config",
                "c.toml",
                "--set",
                &format!("train.out_dir=\"{}/procs\"", d.display()),
                "--set",
                "data.batch_size=2",
                "--set",
                "train.zero_stage=3",
            ])
            .current_dir(d),
        Duration::from_secs(300),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // ... give bitwise the parameters of two threads (both sum in f64 in rank order).
    let threads = config(
        d,
        &[
            ("train.out_dir", &format!("\"{}/threads\"", d.display())),
            ("train.world_size", "2"),
            ("data.batch_size", "2"),
            ("train.zero_stage", "3"),
        ],
    );
    let want = params_at(&threads, 6);
    let got = load_params(&d.join("procs"), 6);
    for (a, b) in got.iter().zip(&want) {
        assert_eq!(a.data, b.data, "{}", a.name);
    }
    for f in ["optimizer", "model"] {
        assert!(d
            .join(format!("procs/step_000006/{f}.rank00001.safetensors"))
            .exists());
    }

    // One launched rank runs the data-parallel path (rendezvous, reducer) and matches the plain
    // single-process run bitwise.
    let o = run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "launch",
                "--nproc-per-node",
                "1",
                "--",
                "train",
                "--config",
                "c.toml",
                "--set",
                &format!("train.out_dir=\"{}/one\"", d.display()),
            ])
            .current_dir(d),
        Duration::from_secs(300),
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("data parallel: 1 ranks"), "{err}");
    let plain = params_at(
        &config(
            d,
            &[("train.out_dir", &format!("\"{}/plain\"", d.display()))],
        ),
        6,
    );
    let one = load_params(&d.join("one"), 6);
    for (a, b) in one.iter().zip(&plain) {
        assert_eq!(a.data, b.data, "{}", a.name);
    }

    // Rank 1 panics at step 2: the launcher stops rank 0 and fails, naming rank 1.
    let o = run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "launch",
                "--nproc-per-node",
                "2",
                "--",
                "train",
                "--config",
                "c.toml",
                "--set",
                &format!("train.out_dir=\"{}/fail\"", d.display()),
                "--set",
                "data.batch_size=2",
            ])
            .env("KILN_FAULT", "panic@1:2")
            .current_dir(d),
        Duration::from_secs(120),
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    let last = err.lines().rfind(|l| l.starts_with("error:")).unwrap_or("");
    assert!(last.contains("rank 1 failed"), "{err}");

    // A config that disagrees with the launcher's world size is one clear line.
    let o = kiln(
        &[
            "launch",
            "--nproc-per-node",
            "2",
            "--",
            "train",
            "--config",
            "c.toml",
            "--set",
            "train.world_size=3",
        ],
        d,
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("train.world_size = 3 but RANK/WORLD_SIZE says the world has 2 ranks"),
        "{err}"
    );
}

/// Start `kiln train --config c.toml` as ranks 0 and 1 of a 2-rank world (torchrun's variables,
/// as `kiln launch` sets them), rank r in directory `cwd[r]` with the extra arguments `extra[r]`;
/// their outputs in rank order.
fn two_ranks(cwd: [&Path; 2], out: &Path, extra: [&[&str]; 2]) -> Vec<std::process::Output> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let ranks: Vec<_> = (0..2)
        .map(|r| {
            let cwd = cwd[r].to_path_buf();
            let port = port.clone();
            let out = format!("train.out_dir=\"{}\"", out.display());
            let mut args: Vec<String> = ["train", "--config", "c.toml", "--set", &out]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.extend(["--set".into(), "data.batch_size=2".into()]);
            args.extend(extra[r].iter().map(|s| s.to_string()));
            std::thread::spawn(move || {
                run_with_deadline(
                    Command::new(env!("CARGO_BIN_EXE_kiln"))
                        .args(&args)
                        .env("RANK", r.to_string())
                        .env("WORLD_SIZE", "2")
                        .env("MASTER_ADDR", "127.0.0.1")
                        .env("MASTER_PORT", &port)
                        .current_dir(&cwd),
                    Duration::from_secs(120),
                )
            })
        })
        .collect();
    ranks.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Both ranks failed with one error line (no panic) containing `want`.
fn both_stop_saying(o: &[std::process::Output], want: &str) {
    for (r, o) in o.iter().enumerate() {
        let err = stderr(o);
        assert!(!o.status.success(), "rank {r} trained: {err}");
        assert!(!err.contains("panicked"), "rank {r}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "rank {r}: {err}");
        assert!(lines[0].contains(want), "rank {r}: {err}");
    }
}

#[test]
fn ranks_that_differ_all_stop_naming_the_keys_and_per_rank_keys_may_differ() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    world_ready(d);
    write_config(d);
    // Another learning rate on rank 1: both ranks stop, naming the key and both values.
    let o = two_ranks([d, d], &d.join("lr"), [&[], &["--set", "train.lr=0.001"]]);
    both_stop_saying(
        &o,
        "rank 1's config differs from rank 0's: train.lr (rank 1: 0.001, rank 0: 0.01)",
    );
    assert!(!d.join("lr/step_000003").exists());

    // The same config with relative data paths, but rank 1's directory holds one more shard.
    let mut cfg = config(d, &[]);
    cfg.data.tokenizer = "w/tokenizer.json".into();
    for s in &mut cfg.data.sources {
        s.path = s.path.replace(&format!("{}/", d.display()), "");
    }
    let other = d.join("other");
    std::fs::create_dir_all(other.join("w/shards")).unwrap();
    for f in [
        "tokenizer.json",
        "shards/raw_00000.kiln",
        "shards/augmented_00000.kiln",
    ] {
        std::fs::copy(d.join("w").join(f), other.join("w").join(f)).unwrap();
    }
    std::fs::copy(
        d.join("w/shards/raw_00000.kiln"),
        other.join("w/shards/raw_00001.kiln"),
    )
    .unwrap();
    let text = toml::to_string(&cfg).unwrap();
    std::fs::write(d.join("c.toml"), &text).unwrap();
    std::fs::write(other.join("c.toml"), &text).unwrap();
    let o = two_ranks([d, &other], &d.join("data"), [&[], &[]]);
    both_stop_saying(
        &o,
        "rank 1's data differs from rank 0's: shard 1 of raw (rank 1: w/shards/raw_00001.kiln (",
    );

    // Each rank's own thread count and timeout are its own business.
    let o = two_ranks(
        [d, d],
        &d.join("same"),
        [
            &["--set", "train.threads=1"],
            &[
                "--set",
                "train.threads=2",
                "--set",
                "train.comm_timeout_s=90",
            ],
        ],
    );
    for o in &o {
        assert!(o.status.success(), "{}", stderr(o));
    }
    assert!(d.join("same/step_000006").exists());
}

#[test]
fn bad_distributed_input_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = kiln(&["launch", "--nproc-per-node", "0", "--", "train"], d);
    common::assert_clean_error(&o, &["--nproc-per-node"]);
    let o = kiln(
        &[
            "launch",
            "--nproc-per-node",
            "2",
            "--nnodes",
            "2",
            "--",
            "train",
        ],
        d,
    );
    common::assert_clean_error(&o, &["--master HOST:PORT"]);
    let o = kiln(
        &[
            "launch",
            "--nproc-per-node",
            "1",
            "--master",
            "nohost",
            "--",
            "train",
        ],
        d,
    );
    common::assert_clean_error(&o, &["expected HOST:PORT"]);
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["train"])
        .env("RANK", "0")
        .env("WORLD_SIZE", "two")
        .current_dir(d)
        .output()
        .unwrap();
    common::assert_clean_error(&o, &["WORLD_SIZE=\"two\""]);
    let o = kiln(&["train", "--set", "train.world_size=2"], d);
    common::assert_clean_error(&o, &["train.world_size = 2", "kiln launch"]);
}
