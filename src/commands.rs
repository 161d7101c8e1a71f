//! What each subcommand does, as calls into the library. Argument definitions are in `cli.rs`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Result};

use crate::backend::cpu::CpuBackend;
use crate::cli::{
    BenchArgs, Cli, Command, ConvertArgs, DataArgs, Device, EvalArgs, ExperimentCommand,
    ExperimentWorldArgs, ExportArgs, ExportDtype, GenerateArgs, PlanArgs, PrepArgs, SynthArgs,
    TokenizerCommand, TrainArgs, WorldArgs,
};
use crate::config::Config;
use crate::data::loader::{Loader, Split};
use crate::data::prep::{prep, PrepOptions};
use crate::data::tokenizer::{train_byte_level_bpe, Tokenizer};
use crate::model::generate::Sampling;
use crate::model::presets::Preset;
use crate::model::Model;
use crate::train::checkpoint;
use crate::train::trainer::Resume;
use crate::world::ensure_world;

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::World(a) => world(a),
        Command::Tokenizer(t) => tokenizer(t),
        Command::Prep(a) => prep_cmd(a),
        Command::Data(a) => data(a),
        Command::Train(a) => train(a),
        Command::Launch(a) => crate::dist::launch::launch(&crate::dist::launch::LaunchPlan {
            nproc_per_node: a.nproc_per_node,
            nnodes: a.nnodes,
            node_rank: a.node_rank,
            master: a.master,
            args: a.command,
        }),
        Command::Generate(a) => generate(a),
        Command::Synth(a) => synth(a),
        Command::Bench(a) => bench(a),
        Command::Eval(a) => eval(a),
        Command::Plan(a) => plan(a),
        Command::Plot(a) => {
            let (png, svg) = crate::plot::plot(&a.runs, &a.out)?;
            eprintln!("wrote {} and {}", png.display(), svg.display());
            Ok(())
        }
        Command::Export(a) => export(a),
        Command::Convert(a) => convert(a),
        Command::Experiment(ExperimentCommand::World(a)) => experiment_world(a),
    }
}

fn eval(a: EvalArgs) -> Result<()> {
    if a.tasks.is_empty() && a.data.is_none() {
        bail!("nothing to evaluate: give --tasks FILE... and/or --data GLOB");
    }
    let c = open_checkpoint(&a.checkpoint)?;
    let be = CpuBackend::<f32>::new();
    let model = Model::from_host(&be, &c.mcfg, &c.params);
    let mut results = Vec::new();
    for path in &a.tasks {
        let items = crate::eval::read_tasks(path)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let t = Instant::now();
        let s = crate::eval::evaluate(
            &be,
            &model,
            &c.tok,
            &name,
            &items,
            a.batch,
            a.max_new_tokens,
        )?;
        eprintln!(
            "{name}: {} items in {:.1}s",
            s.items,
            t.elapsed().as_secs_f64()
        );
        results.push(s);
    }
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    println!("| task | items | acc (mean/token) | acc (per byte) | acc (sum) | exact match | F1 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.task,
            r.items,
            pct(r.acc_mean_token),
            pct(r.acc_per_byte),
            pct(r.acc_sum),
            pct(r.exact_match),
            pct(r.f1)
        );
    }
    let mut heldout = None;
    if let Some(glob) = &a.data {
        let (loss, ppl) = crate::eval::heldout_loss(
            &be,
            &model,
            &c.tok,
            glob,
            a.batch,
            c.cfg.data.seq_len,
            a.data_batches,
        )?;
        println!("held-out loss {loss:.4}, perplexity {ppl:.2} ({glob})");
        heldout = Some(serde_json::json!({ "data": glob, "loss": loss, "perplexity": ppl }));
    }
    if let Some(path) = a.json {
        let v = serde_json::json!({ "checkpoint": c.dir, "step": c.step, "tasks": results, "heldout": heldout });
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}

fn plan(a: PlanArgs) -> Result<()> {
    use crate::backend::cpu::system_memory_bytes;
    use crate::train::memory::{check, plan, Widths};
    let cfg = Config::load(a.config.config.as_deref(), &a.config.overrides)?;
    let tokenizer_vocab = cfg
        .data
        .tokenizer
        .exists()
        .then(|| {
            Tokenizer::from_file(&cfg.data.tokenizer, None, None).map(|t| t.vocab_size() as usize)
        })
        .transpose()?;
    let m = crate::train::setup::resolve_model_shape(&cfg, tokenizer_vocab, false)?;
    let t = &cfg.train;
    let (widths, detected) = match a.device {
        Device::Cuda => (Widths::CUDA, None),
        Device::Cpu => (Widths::CPU, system_memory_bytes()),
    };
    let available = if t.device_memory_gb > 0.0 {
        t.device_memory_gb * 1e9
    } else {
        detected.unwrap_or(0.0)
    };
    eprintln!(
        "model: {:.2} B parameters ({} layers, d={}, vocab {}); {} tokens per micro-batch per device",
        m.num_params() as f64 / 1e9,
        m.n_layers,
        m.dim,
        m.vocab_size,
        cfg.data.batch_size * cfg.data.seq_len
    );
    let p = plan(
        &m,
        cfg.data.batch_size,
        cfg.data.seq_len,
        t.world_size,
        t.zero_stage,
        t.bucket_elems(),
        t.recompute,
        widths,
        available,
    );
    check(&p, t.world_size, t.zero_stage, cfg.data.batch_size)
}

/// A checkpoint with what it was trained with: its directory, step, run config, tokenizer,
/// model config and parameters (in `mcfg.params()` order, shapes checked).
struct OpenedCheckpoint {
    dir: PathBuf,
    step: u64,
    cfg: Config,
    tok: Tokenizer,
    mcfg: crate::model::ModelConfig,
    params: Vec<Vec<f32>>,
}

/// Open a run directory's newest checkpoint, or one checkpoint directory.
fn open_checkpoint(path: &Path) -> Result<OpenedCheckpoint> {
    let dir = if path.join("DONE").exists() {
        path.to_path_buf()
    } else {
        match checkpoint::latest(path)? {
            Some((_, d)) => d,
            None => bail!(
                "{}: no complete checkpoint (a run directory or a step_NNNNNN directory)",
                path.display()
            ),
        }
    };
    let ckpt = checkpoint::load(&dir)?;
    let config_text = ckpt
        .state
        .get("config")
        .and_then(|c| c.as_str())
        .ok_or_else(|| anyhow::anyhow!("{}/state.json: no run config recorded", dir.display()))?;
    let cfg = Config::parse(
        &format!("{}/state.json (config)", dir.display()),
        config_text,
        &[],
    )?;
    let d = &cfg.data;
    let tok = Tokenizer::from_file(&d.tokenizer, d.bos_token.as_deref(), d.eos_token.as_deref())?;
    if let Some(fp) = ckpt
        .state
        .get("tokenizer_fingerprint")
        .and_then(|f| f.as_str())
    {
        let now = format!("{:016x}", tok.fingerprint());
        if fp != now {
            bail!(
                "{}: this tokenizer is not the one {} was trained with (fingerprint {now}, the run used {fp})",
                d.tokenizer.display(),
                dir.display()
            );
        }
    }
    let mcfg = crate::train::setup::resolve_model(&cfg, &tok)?;
    let params = crate::train::checkpoint::tensors_in_order(
        &dir.join("model.safetensors"),
        &mcfg.params(),
        ckpt.model,
        "",
    )?;
    Ok(OpenedCheckpoint {
        dir,
        step: ckpt.step,
        cfg,
        tok,
        mcfg,
        params,
    })
}

fn export(a: ExportArgs) -> Result<()> {
    let c = open_checkpoint(&a.checkpoint)?;
    let opts = crate::hf::ExportOptions {
        bf16: a.dtype == ExportDtype::Bf16,
        shard_bytes: a.shard_size,
        tokenizer: Some(c.cfg.data.tokenizer.clone()),
        bos_token_id: c.tok.bos(),
        eos_token_id: c.tok.eos(),
    };
    let tensors = named(&c.mcfg, c.params);
    crate::hf::export(&a.to_hf, &c.mcfg, &tensors, &opts)?;
    eprintln!(
        "exported {} (step {}) to {}",
        c.dir.display(),
        c.step,
        a.to_hf.display()
    );
    Ok(())
}

fn named(mcfg: &crate::model::ModelConfig, host: Vec<Vec<f32>>) -> Vec<checkpoint::NamedTensor> {
    mcfg.params()
        .into_iter()
        .zip(host)
        .map(|(p, data)| checkpoint::NamedTensor {
            name: p.name,
            shape: p.shape,
            data,
        })
        .collect()
}

fn convert(a: ConvertArgs) -> Result<()> {
    let (mcfg, host) = crate::hf::load(&a.from_hf, None)?;
    let tokenizer = Some(a.from_hf.join("tokenizer.json")).filter(|p| p.exists());
    let generation: serde_json::Value = std::fs::read_to_string(a.from_hf.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let id = |k: &str| generation.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
    let opts = crate::hf::ExportOptions {
        bf16: a.dtype == ExportDtype::Bf16,
        shard_bytes: a.shard_size,
        tokenizer,
        bos_token_id: id("bos_token_id"),
        eos_token_id: id("eos_token_id"),
    };
    crate::hf::export(&a.to_hf, &mcfg, &named(&mcfg, host), &opts)?;
    eprintln!(
        "{}: {} layers, d={}, {} heads ({} kv), vocab {}: checked and written to {}",
        a.from_hf.display(),
        mcfg.n_layers,
        mcfg.dim,
        mcfg.n_heads,
        mcfg.n_kv_heads,
        mcfg.vocab_size,
        a.to_hf.display()
    );
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    use crate::bench::{render, run, BenchShape};
    if a.what == crate::cli::BenchWhat::Attention {
        return bench_attention(a);
    }
    if a.what == crate::cli::BenchWhat::Generate {
        return bench_generate(a);
    }
    let preset = a.preset.unwrap_or(if a.device == Device::Cuda {
        Preset::Llama3_8b
    } else {
        Preset::Tiny
    });
    let mut shape = BenchShape::of_preset(preset)?;
    if let Some(n) = a.tokens {
        if n == 0 || n % shape.seq != 0 {
            bail!(
                "--tokens {n}: must be a positive multiple of the sequence length {}",
                shape.seq
            );
        }
        shape.tokens = n;
    }
    let report = match a.device {
        Device::Cpu => run(&CpuBackend::<f32>::new(), shape, a.iters),
        Device::Cuda => bench_cuda(shape, a.iters)?,
    };
    println!("{}", render(&report));
    if let Some(path) = a.json {
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(())
}

fn bench_generate(a: BenchArgs) -> Result<()> {
    let preset = a.preset.unwrap_or(if a.device == Device::Cuda {
        Preset::Mistral7b
    } else {
        Preset::Tiny
    });
    let mcfg = crate::bench::generate_model(preset)?;
    let batches = if a.batches.is_empty() {
        vec![1, 32, 128]
    } else {
        a.batches.clone()
    };
    if batches.contains(&0) || a.prompt_len == 0 || a.new_tokens == 0 {
        bail!("--batches, --prompt-len and --new-tokens must be positive");
    }
    if a.prompt_len + a.new_tokens > mcfg.max_seq_len {
        bail!(
            "--prompt-len {} + --new-tokens {} exceeds the model's {} positions",
            a.prompt_len,
            a.new_tokens,
            mcfg.max_seq_len
        );
    }
    eprintln!(
        "model: {:?} shape, {:.2} B parameters, random weights",
        preset,
        mcfg.num_params() as f64 / 1e9
    );
    let (backend, copy, rows) = match a.device {
        Device::Cpu => {
            let be = CpuBackend::<f32>::new();
            let (copy, rows) =
                crate::bench::generate_sweep(&be, &mcfg, &batches, a.prompt_len, a.new_tokens)?;
            (crate::backend::Backend::name(&be), copy, rows)
        }
        Device::Cuda => bench_generate_cuda(&mcfg, &batches, a.prompt_len, a.new_tokens)?,
    };
    println!("{}", crate::bench::render_generate(&backend, copy, &rows));
    if let Some(path) = a.json {
        let v = serde_json::json!({ "backend": backend, "copy_gb_s": copy, "rows": rows });
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}

type GenBench = (String, f64, Vec<crate::bench::GenBenchRow>);

#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
fn bench_generate_cuda(
    mcfg: &crate::model::ModelConfig,
    batches: &[usize],
    prompt_len: usize,
    new_tokens: usize,
) -> Result<GenBench> {
    let be = crate::backend::cuda::CudaBackend::new(0).map_err(|e| anyhow::anyhow!(e))?;
    let (copy, rows) = crate::bench::generate_sweep(&be, mcfg, batches, prompt_len, new_tokens)?;
    Ok((crate::backend::Backend::name(&be), copy, rows))
}

#[cfg(not(any(feature = "cuda", feature = "cuda-emu")))]
fn bench_generate_cuda(
    _: &crate::model::ModelConfig,
    _: &[usize],
    _: usize,
    _: usize,
) -> Result<GenBench> {
    bail!(NO_CUDA)
}

fn bench_attention(a: BenchArgs) -> Result<()> {
    let tokens = a.tokens.unwrap_or(16384);
    let seqs = if a.seqs.is_empty() {
        vec![512, 1024, 2048, 4096, 8192, 16384]
    } else {
        a.seqs.clone()
    };
    let head_dims = if a.head_dims.is_empty() {
        vec![64, 128]
    } else {
        a.head_dims.clone()
    };
    if let Some(s) = seqs.iter().find(|&&s| s == 0 || tokens % s != 0) {
        bail!("--seqs: {s} does not divide the token count {tokens}");
    }
    if let Some(d) = head_dims.iter().find(|&&d| d == 0 || 2048 % d != 0) {
        bail!("--head-dims: {d} does not divide the width 2048");
    }
    let (backend, rows) = match a.device {
        Device::Cpu => {
            let be = CpuBackend::<f32>::new();
            (
                crate::backend::Backend::name(&be),
                crate::bench::attention_sweep(&be, tokens, &seqs, &head_dims, a.iters),
            )
        }
        Device::Cuda => bench_attention_cuda(tokens, &seqs, &head_dims, a.iters)?,
    };
    println!("{}", crate::bench::render_attention(&backend, &rows));
    if let Some(path) = a.json {
        let v = serde_json::json!({ "backend": backend, "rows": rows });
        crate::fsutil::write_atomic(&path, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}

#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
fn bench_attention_cuda(
    tokens: usize,
    seqs: &[usize],
    head_dims: &[usize],
    iters: usize,
) -> Result<(String, Vec<crate::bench::AttnBenchRow>)> {
    let be = crate::backend::cuda::CudaBackend::new(0).map_err(|e| anyhow::anyhow!(e))?;
    let rows = crate::bench::attention_sweep(&be, tokens, seqs, head_dims, iters);
    Ok((crate::backend::Backend::name(&be), rows))
}

#[cfg(not(any(feature = "cuda", feature = "cuda-emu")))]
fn bench_attention_cuda(
    _: usize,
    _: &[usize],
    _: &[usize],
    _: usize,
) -> Result<(String, Vec<crate::bench::AttnBenchRow>)> {
    bail!(NO_CUDA)
}

#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
fn bench_cuda(shape: crate::bench::BenchShape, iters: usize) -> Result<crate::bench::BenchReport> {
    let be = crate::backend::cuda::CudaBackend::new(0).map_err(|e| anyhow::anyhow!(e))?;
    Ok(crate::bench::run(&be, shape, iters))
}

#[cfg(not(any(feature = "cuda", feature = "cuda-emu")))]
fn bench_cuda(_: crate::bench::BenchShape, _: usize) -> Result<crate::bench::BenchReport> {
    bail!(NO_CUDA)
}

fn set_threads(n: usize) {
    if n > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .ok();
    }
}

const NO_CUDA: &str = "--device cuda: this kiln was built without CUDA; rebuild with `cargo build --release --features cuda`";

fn train(a: TrainArgs) -> Result<()> {
    if a.device == Device::Cuda && !cfg!(any(feature = "cuda", feature = "cuda-emu")) {
        bail!(NO_CUDA);
    }
    let mut cfg = Config::load(a.config.config.as_deref(), &a.config.overrides)?;
    if cfg.model.is_none() {
        bail!("the config has no [model] section: nothing to train");
    }
    // One rank of launched processes (kiln launch, torchrun, srun)? Then the data-parallel path
    // runs even with one rank (which checks it against the plain run).
    let env = crate::dist::DistEnv::from_env()?;
    if let Some(e) = &env {
        if a.ranks_as_threads {
            bail!("--ranks-as-threads runs every rank in this process; it cannot be one of {} launched ranks", e.world);
        }
        if cfg.train.world_size != 1 && cfg.train.world_size != e.world {
            bail!(
                "train.world_size = {} but {} says the world has {} ranks",
                cfg.train.world_size,
                e.source,
                e.world
            );
        }
        cfg.train.world_size = e.world;
    }
    if env.is_none() && !a.ranks_as_threads && cfg.train.world_size > 1 {
        bail!(
            "train.world_size = {} but this is a single process: start the ranks with `kiln launch --nproc-per-node {}`, torchrun or srun, or add --ranks-as-threads (CPU)",
            cfg.train.world_size,
            cfg.train.world_size
        );
    }
    let lead = env.as_ref().is_none_or(|e| e.rank == 0);
    if a.ranks_as_threads && a.device != Device::Cpu {
        bail!("--ranks-as-threads runs on the CPU backend only (--device cpu)");
    }
    // Rank 0 builds missing data; launched ranks wait for it at a barrier after the rendezvous.
    let prepare_data = |cfg: &Config| -> Result<()> {
        match &cfg.world {
            Some(w) if lead => ensure_world(w, cfg, false, true),
            _ => Ok(()),
        }
    };
    if env.is_none() {
        prepare_data(&cfg)?;
    }
    let resume = match a.resume.as_deref() {
        None => None,
        Some("latest") => Some(Resume::Latest),
        Some(s) => Some(Resume::Step(s.parse().map_err(|_| {
            anyhow::anyhow!("--resume {s:?}: expected a step number or nothing")
        })?)),
    };
    set_threads(cfg.train.threads);
    let s = match a.device {
        Device::Cpu if a.ranks_as_threads => {
            eprintln!(
                "backend: {} x {} ranks as threads",
                crate::backend::Backend::name(&CpuBackend::<f32>::new()),
                cfg.train.world_size
            );
            crate::train::ranks::train_ranks_as_threads(&cfg, resume, a.until)?
        }
        Device::Cpu => {
            let be = CpuBackend::<f32>::new();
            if lead {
                eprintln!("backend: {}", crate::backend::Backend::name(&be));
            }
            match &env {
                None => crate::train::trainer::train(&be, &cfg, resume, a.until)?,
                Some(e) => {
                    let comm = crate::dist::host::HostComm::join_tcp(e, &cfg)?;
                    prepare_data(&cfg)?;
                    crate::dist::Communicator::<CpuBackend<f32>>::barrier(&comm)?;
                    crate::train::trainer::train_dist(&be, &cfg, resume, a.until, Some(&comm))?
                }
            }
        }
        Device::Cuda => train_cuda(&cfg, resume, a.until, env.as_ref(), &prepare_data)?,
    };
    if !lead {
        return Ok(());
    }
    eprintln!(
        "done: {} steps, loss {} -> {}{}, {:.3}s/step, {:.0} tokens/s; checkpoints in {}",
        s.steps_run,
        s.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
        s.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        s.last_val_loss
            .map_or(String::new(), |v| format!(" (val {v:.4})")),
        s.step_seconds,
        s.tokens_per_s,
        s.out_dir.display()
    );
    Ok(())
}

#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
fn train_cuda(
    cfg: &Config,
    resume: Option<Resume>,
    until: Option<u64>,
    env: Option<&crate::dist::DistEnv>,
    prepare_data: &dyn Fn(&Config) -> Result<()>,
) -> Result<crate::train::trainer::TrainSummary> {
    let device = env.map_or(0, |e| e.local_rank);
    let mut be = crate::backend::cuda::CudaBackend::new(device).map_err(|e| anyhow::anyhow!(e))?;
    be.set_attention(cfg.train.attention, cfg.train.deterministic);
    let lead = env.is_none_or(|e| e.rank == 0);
    if lead {
        eprintln!("backend: {}", crate::backend::Backend::name(&be));
    }
    if let (true, Ok(m)) = (
        lead,
        crate::train::setup::resolve_model_shape(cfg, None, false),
    ) {
        let hd = if m.head_dim > 0 {
            m.head_dim
        } else {
            m.dim / m.n_heads.max(1)
        };
        let kernel = be.attention_kernel(hd);
        if kernel != cfg.train.attention {
            eprintln!("attention: reference kernels (the flash kernels are built for head dims 64 and 128, not {hd})");
        } else {
            eprintln!(
                "attention: {kernel:?} kernels{}",
                if cfg.train.deterministic {
                    ", deterministic backward"
                } else {
                    ""
                }
            );
        }
    }
    match env {
        None => crate::train::trainer::train(&be, cfg, resume, until),
        #[cfg(feature = "cuda")]
        Some(e) => {
            let comm = crate::dist::nccl::NcclComm::join(&be, e, cfg.train.comm_timeout_s)?;
            prepare_data(cfg)?;
            crate::dist::Communicator::<crate::backend::cuda::CudaBackend>::barrier(&comm)?;
            crate::train::trainer::train_dist(&be, cfg, resume, until, Some(&comm))
        }
        #[cfg(not(feature = "cuda"))]
        Some(_) => {
            let _ = prepare_data;
            bail!("data-parallel CUDA training needs NCCL, which the CUDA emulator does not have (build with --features cuda on a GPU machine)")
        }
    }
}

#[cfg(not(any(feature = "cuda", feature = "cuda-emu")))]
fn train_cuda(
    _: &Config,
    _: Option<Resume>,
    _: Option<u64>,
    _: Option<&crate::dist::DistEnv>,
    _: &dyn Fn(&Config) -> Result<()>,
) -> Result<crate::train::trainer::TrainSummary> {
    bail!("--device cuda: this kiln was built without CUDA; rebuild with `cargo build --release --features cuda`")
}

fn experiment_world(a: ExperimentWorldArgs) -> Result<()> {
    if a.device == Device::Cuda && !cfg!(any(feature = "cuda", feature = "cuda-emu")) {
        bail!(NO_CUDA);
    }
    let opts = crate::world::experiment::Options {
        vanilla: a.vanilla,
        ipt: a.ipt,
        overrides: a.overrides,
        out: a.out,
        max_items: a.max_items,
        batch: a.batch,
    };
    let device = a.device;
    crate::world::experiment::run(&opts, &|cfg, resume| {
        // The first call sizes the global pool; later calls leave it as it is.
        set_threads(cfg.train.threads);
        match device {
            Device::Cpu => {
                let be = CpuBackend::<f32>::new();
                crate::train::trainer::train(&be, cfg, resume, None)
            }
            Device::Cuda => train_cuda(cfg, resume, None, None, &|_| Ok(())),
        }
    })?;
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    let OpenedCheckpoint {
        tok, mcfg, params, ..
    } = open_checkpoint(&a.checkpoint)?;
    let be = CpuBackend::<f32>::new();
    let model = Model::from_host(&be, &mcfg, &params);
    let stop: Vec<u32> = tok.eos().into_iter().collect();
    for (i, prompt) in a.prompt.iter().enumerate() {
        let mut ids: Vec<u32> = tok.bos().into_iter().collect();
        tok.encode_into(prompt, &mut ids)?;
        let sampling = Sampling {
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed + i as u64,
        };
        let out = model.generate(&be, &ids, a.max_new_tokens, &stop, sampling);
        println!("{}{}", prompt, tok.decode(&out, true)?);
    }
    Ok(())
}

/// A model to generate with: its config, parameters, tokenizer and a name for progress files.
struct GenerationModel {
    mcfg: crate::model::ModelConfig,
    params: Vec<Vec<f32>>,
    tok: Tokenizer,
    id: String,
}

/// A Hugging Face directory (config.json + safetensors + tokenizer.json) or a kiln checkpoint.
fn open_generation_model(dir: &Path) -> Result<GenerationModel> {
    if dir.join("config.json").exists() {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            bail!(
                "{}: no tokenizer.json beside config.json (kiln needs the fast tokenizer file)",
                dir.display()
            );
        }
        let tok = Tokenizer::from_file(&tok_path, None, None)?;
        let (mcfg, params) = crate::hf::load(dir, Some(tok.vocab_size() as usize))?;
        let id = format!("hf:{}", dir.display());
        return Ok(GenerationModel {
            mcfg,
            params,
            tok,
            id,
        });
    }
    let c = open_checkpoint(dir)?;
    Ok(GenerationModel {
        id: format!("{} (step {})", c.dir.display(), c.step),
        mcfg: c.mcfg,
        params: c.params,
        tok: c.tok,
    })
}

fn synth(a: SynthArgs) -> Result<()> {
    if a.device == Device::Cuda && !cfg!(any(feature = "cuda", feature = "cuda-emu")) {
        bail!(NO_CUDA);
    }
    if !a.input.exists() {
        bail!("{}: no such input file", a.input.display());
    }
    set_threads(a.threads);
    let m = open_generation_model(&a.model)?;
    let limit = m
        .mcfg
        .max_seq_len
        .min(m.mcfg.sliding_window.unwrap_or(usize::MAX));
    let context = match a.context {
        Some(c) => c,
        None => 4096.min(limit),
    };
    let opts = crate::synth::SynthOptions {
        input: a.input.clone(),
        out: a.out.clone(),
        rounds: a.rounds,
        max_new_tokens: a.max_new_tokens,
        context,
        sampling: Sampling {
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed,
        },
        model_id: m.id.clone(),
        progress_bar: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        save_every_s: 2.0,
        // Testing hook (tests/synth_cli.rs): stop as if killed after this many output bytes.
        stop_after_bytes: std::env::var("KILN_SYNTH_STOP_AFTER_BYTES")
            .ok()
            .and_then(|v| v.parse().ok()),
    };
    let limits = crate::model::batched::GenLimits {
        slots: a.batch,
        context,
        prefill_tokens: a.prefill_tokens,
        continuous: true,
    };
    eprintln!(
        "synthesizer {}: {} layers, d={}, vocab {}; {} round(s), {} new tokens, context {}, {}",
        m.id,
        m.mcfg.n_layers,
        m.mcfg.dim,
        m.mcfg.vocab_size,
        a.rounds,
        a.max_new_tokens,
        context,
        if a.temperature > 0.0 {
            format!("sampling T={} top-p {}", a.temperature, a.top_p)
        } else {
            "greedy".to_string()
        }
    );
    let s = match a.device {
        Device::Cpu => synth_on(&CpuBackend::<f32>::new(), m, limits, &opts)?,
        Device::Cuda => synth_cuda(m, limits, &opts)?,
    };
    eprintln!(
        "synth: {} texts in {} chains -> {} records, {} pairs ({:.2} per text), {} few-shot prompts, {} too long, {} bad line(s); {} tokens generated in {:.1}s{} -> {}",
        s.texts,
        s.chains,
        s.records,
        s.pairs,
        s.pairs as f64 / s.records.max(1) as f64,
        s.few_shot,
        s.too_long,
        s.bad_lines,
        s.generated_tokens,
        s.seconds,
        if s.resumed_chains > 0 {
            format!(" (resumed after {} chains)", s.resumed_chains)
        } else {
            String::new()
        },
        a.out.display()
    );
    Ok(())
}

fn synth_on<B: crate::backend::GenerationBackend>(
    be: &B,
    m: GenerationModel,
    limits: crate::model::batched::GenLimits,
    opts: &crate::synth::SynthOptions,
) -> Result<crate::synth::SynthStats> {
    use crate::backend::BufKind;
    use crate::model::batched::{Engine, GenPlan};
    let act = be.elem_bytes(BufKind::Act);
    let plan = GenPlan::new(&m.mcfg, &limits, act, act);
    eprintln!("{}", plan.describe(&limits));
    if let Some(mem) = be.device_memory_bytes() {
        if plan.total() > 0.9 * mem {
            let per_slot = plan.kv_cache / limits.slots as f64;
            let room = 0.9 * mem - plan.weights - plan.activations;
            bail!(
                "the generation plan needs {:.1} GB but the device has {:.1} GB: lower --batch (about {} slots fit) or --prefill-tokens",
                plan.total() / 1e9,
                mem / 1e9,
                (room / per_slot).floor().max(0.0)
            );
        }
    }
    let model = Model::for_inference(be, &m.mcfg, &m.params);
    drop(m.params);
    let stop: Vec<u32> = m.tok.eos().into_iter().collect();
    let mut engine = Engine::new(be, &model, limits, stop)?;
    crate::synth::synthesize(&mut engine, &m.tok, opts)
}

#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
fn synth_cuda(
    m: GenerationModel,
    limits: crate::model::batched::GenLimits,
    opts: &crate::synth::SynthOptions,
) -> Result<crate::synth::SynthStats> {
    let be = crate::backend::cuda::CudaBackend::new(0).map_err(|e| anyhow::anyhow!(e))?;
    eprintln!("backend: {}", crate::backend::Backend::name(&be));
    synth_on(&be, m, limits, opts)
}

#[cfg(not(any(feature = "cuda", feature = "cuda-emu")))]
fn synth_cuda(
    _: GenerationModel,
    _: crate::model::batched::GenLimits,
    _: &crate::synth::SynthOptions,
) -> Result<crate::synth::SynthStats> {
    bail!(NO_CUDA)
}

fn world(a: WorldArgs) -> Result<()> {
    let cfg = Config::load(a.config.config.as_deref(), &a.config.overrides)?;
    let Some(w) = cfg.world.clone() else {
        bail!("the config has no [world] section: nothing to generate");
    };
    ensure_world(&w, &cfg, a.force, !a.no_prep)
}

fn tokenizer(cmd: TokenizerCommand) -> Result<()> {
    match cmd {
        TokenizerCommand::Train {
            input,
            vocab_size,
            out,
            field,
        } => {
            let t = Instant::now();
            // Stream the inputs into the trainer; the first bad line stops it and is reported.
            let error: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
            let texts = TextLines::new(input, field, error.clone());
            train_byte_level_bpe(texts, vocab_size, &out)?;
            if let Some(e) = error.lock().expect("poisoned").take() {
                let _ = std::fs::remove_file(&out);
                return Err(e);
            }
            let tok = Tokenizer::from_file(&out, None, None)?;
            eprintln!(
                "tokenizer: {} ids, fast encoder: {}, written to {} ({:.1}s)",
                tok.vocab_size(),
                if tok.is_fast() { "yes" } else { "no" },
                out.display(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        TokenizerCommand::Encode { tokenizer, text } => {
            let tok = Tokenizer::from_file(&tokenizer, None, None)?;
            let ids = tok.encode(&text)?;
            println!("{}", serde_json::to_string(&ids)?);
            Ok(())
        }
    }
}

/// Lines of text files, or a field of JSONL lines, as an iterator for the tokenizer trainer.
struct TextLines {
    files: std::vec::IntoIter<PathBuf>,
    current: Option<(PathBuf, bool, BufReader<File>, u64)>,
    field: String,
    error: Arc<Mutex<Option<anyhow::Error>>>,
}

impl TextLines {
    fn new(files: Vec<PathBuf>, field: String, error: Arc<Mutex<Option<anyhow::Error>>>) -> Self {
        TextLines {
            files: files.into_iter(),
            current: None,
            field,
            error,
        }
    }

    fn fail(&mut self, e: anyhow::Error) -> Option<String> {
        *self.error.lock().expect("poisoned") = Some(e);
        self.current = None;
        self.files = Vec::new().into_iter();
        None
    }
}

impl Iterator for TextLines {
    type Item = String;
    fn next(&mut self) -> Option<String> {
        loop {
            if self.current.is_none() {
                let p = self.files.next()?;
                let jsonl = matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("jsonl" | "json")
                );
                match File::open(&p) {
                    Ok(f) => self.current = Some((p, jsonl, BufReader::new(f), 0)),
                    Err(e) => {
                        return self.fail(anyhow::anyhow!("{}: cannot open: {e}", p.display()))
                    }
                }
            }
            let (path, jsonl, reader, n) = self.current.as_mut().expect("just set");
            let mut buf = Vec::new();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => {
                    self.current = None;
                    continue;
                }
                Ok(_) => *n += 1,
                Err(e) => {
                    let msg = anyhow::anyhow!("{}: read error: {e}", path.display());
                    return self.fail(msg);
                }
            }
            let (path, jsonl, n) = (path.clone(), *jsonl, *n);
            let Ok(line) = String::from_utf8(buf) else {
                return self.fail(anyhow::anyhow!("{}:{n}: not valid UTF-8", path.display()));
            };
            if !jsonl {
                return Some(line);
            }
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => {
                    return self.fail(anyhow::anyhow!("{}:{n}: invalid JSON: {e}", path.display()))
                }
            };
            match v.get(&self.field).and_then(|t| t.as_str()) {
                Some(t) => return Some(t.to_string()),
                None => {
                    let msg = anyhow::anyhow!("{}:{n}: no {:?} field", path.display(), self.field);
                    return self.fail(msg);
                }
            }
        }
    }
}

fn prep_cmd(a: PrepArgs) -> Result<()> {
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .ok();
    }
    let tok = Tokenizer::from_file(&a.tokenizer, a.bos_token.as_deref(), a.eos_token.as_deref())?;
    let opts = PrepOptions {
        inputs: a.input,
        kind: a.kind,
        field: a.field,
        text_split: a.text_split,
        out_dir: a.out,
        name: a.name.clone(),
        shard_bytes: a.shard_size,
        skip_bad_lines: a.skip_bad_lines,
        seed: a.seed,
        finetune_max_tokens: a.max_tokens,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ..PrepOptions::default()
    };
    let stats = prep(&tok, &opts)?;
    eprintln!("{}", stats.report(&a.name));
    Ok(())
}

fn data(a: DataArgs) -> Result<()> {
    let cfg = Config::load(a.config.config.as_deref(), &a.config.overrides)?;
    if let Some(w) = &cfg.world {
        ensure_world(w, &cfg, false, true)?;
    }
    let d = &cfg.data;
    let tok = Tokenizer::from_file(&d.tokenizer, d.bos_token.as_deref(), d.eos_token.as_deref())?;
    let opts = crate::train::setup::loader_options(&cfg, &tok, 0, 1);
    let mut loader = Loader::new(&d.sources, opts, Split::Train, Path::new("."))?;
    let planned = a.tokens.unwrap_or_else(|| loader.split_tokens());
    println!(
        "{:<16} {:>7} {:>10} {:>13} {:>8} {:>8}",
        "source", "shards", "documents", "train tokens", "weight", "epochs"
    );
    for r in loader.report(planned) {
        println!(
            "{:<16} {:>7} {:>10} {:>13} {:>8.3} {:>8.2}",
            r.name, r.shards, r.documents, r.tokens, r.weight, r.epochs
        );
    }
    println!("planned tokens: {planned}");
    let batch = loader.next_batch();
    for row in 0..a.show.min(batch.batch_size) {
        let t = batch.seq_len;
        let ids = &batch.inputs[row * t..(row + 1) * t];
        let docs = batch.doc_ids[row * t..(row + 1) * t]
            .iter()
            .max()
            .map_or(0, |m| m + 1);
        println!(
            "--- row {row}: {docs} document(s), {} of {t} targets in the loss",
            batch.loss_mask[row * t..(row + 1) * t]
                .iter()
                .filter(|&&m| m == 1)
                .count()
        );
        println!("{}", tok.decode(ids, false)?);
    }
    if a.time_batches > 0 {
        let t = Instant::now();
        let mut tokens = 0usize;
        for _ in 0..a.time_batches {
            tokens += loader.next_batch().inputs.len();
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "loader: {} batches, {tokens} tokens in {s:.3}s = {:.1} M tokens/s",
            a.time_batches,
            tokens as f64 / s / 1e6
        );
    }
    Ok(())
}
