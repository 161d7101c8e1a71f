//! The training loop, top to bottom: set up (tokenizer, loaders, model, optimizer state, or a
//! checkpoint to resume), then per step: draw the micro-batches, forward + loss + backward with
//! gradient accumulation, global-norm clipping, AdamW with the scheduled learning rate, metrics,
//! validation and checkpoints. A non-finite loss or gradient skips the update (counted); too many
//! in a row stop the run.
//!
//! On the CPU backend a resumed run is bitwise identical to the uninterrupted one: the checkpoint
//! holds the fp32 parameters, both Adam moments, the step, and the data cursor.
//!
//! Data parallelism (`train_dist` with a communicator): every rank runs this same loop on its
//! own share of each batch. The loss is a mean over the tokens of all ranks (token counts are
//! summed first), the last micro-batch's backward hands finished layers to the reducer
//! (`dist::reducer`: bucketed all-reduce, or reduce-scatter + sharded AdamW + all-gather under
//! ZeRO-1), and after each step every rank's loader skips to the global position, so the cursor
//! in a checkpoint is the same for all ranks and any world size can resume it. Rank 0 logs,
//! validates, evaluates and writes the weights; with ZeRO-1 each rank writes its optimizer shard.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::backend::{AdamW, Backend, BufKind};
use crate::config::Config;
use crate::data::loader::{Cursor, Loader, Split};
use crate::data::tokenizer::Tokenizer;
use crate::dist::reducer::Reducer;
use crate::dist::Communicator;
use crate::model::{Model, Workspace};
use crate::train::checkpoint::{self, tensors_in_order, Checkpoint, NamedTensor};
use crate::train::schedule::lr_at;
use crate::train::setup::{init_from_hf, loader_options, resolve_model};

/// Which checkpoint to continue from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    Latest,
    Step(u64),
}

/// What `state.json` holds besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub step: u64,
    /// Optimizer updates applied (skipped steps do not count): Adam's bias-correction step.
    pub adam_step: u64,
    pub bad_in_a_row: u64,
    pub skipped_steps: u64,
    pub tokens_seen: u64,
    pub cursor: Cursor,
    pub world_size: usize,
    /// Fingerprint of the tokenizer the run used (checked when the checkpoint is evaluated).
    #[serde(default)]
    pub tokenizer_fingerprint: Option<String>,
    /// The resolved run config (TOML text) and its hash.
    pub config: String,
    pub config_hash: String,
}

/// One line of metrics.jsonl.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub mfu: f64,
    pub tokens: u64,
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub skipped: bool,
    /// Task scores when `[eval]` ran at this step.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval: Option<Vec<crate::eval::TaskScores>>,
}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub steps_run: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    pub tokens_per_s: f64,
    pub step_seconds: f64,
    pub out_dir: PathBuf,
    pub history: Vec<StepMetrics>,
}

fn config_hash(text: &str) -> String {
    format!("{:016x}", crate::data::tokenizer::fnv1a64(text.as_bytes()))
}

/// Per-step progress and metrics output.
struct Metrics {
    file: std::fs::File,
    log_every: u64,
    total: u64,
}

impl Metrics {
    fn open(path: &Path, keep_through: u64, log_every: u64, total: u64) -> Result<Self> {
        // On resume, keep only the lines of steps the checkpoint covers (a crashed run may have
        // logged steps past it).
        if keep_through > 0 {
            if let Ok(text) = std::fs::read_to_string(path) {
                let kept: String = text
                    .lines()
                    .filter(|l| {
                        serde_json::from_str::<StepMetrics>(l).is_ok_and(|m| m.step <= keep_through)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                crate::fsutil::write_atomic(path, kept.as_bytes())?;
            }
        } else {
            let _ = std::fs::remove_file(path);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(Metrics {
            file,
            log_every: log_every.max(1),
            total,
        })
    }

    fn write(&mut self, m: &StepMetrics, eta_s: f64) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(m)?)?;
        for t in m.eval.iter().flatten() {
            let pct = |x: Option<f64>| x.map(|v| format!("{:.1}%", 100.0 * v));
            let scores: Vec<String> = [
                ("acc", pct(t.acc_mean_token)),
                ("exact match", pct(t.exact_match)),
                ("F1", pct(t.f1)),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k} {v}")))
            .collect();
            eprintln!(
                "eval step {}: {} ({} items): {}",
                m.step,
                t.task,
                t.items,
                scores.join(", ")
            );
        }
        if m.step % self.log_every == 0 || m.step == self.total || m.val_loss.is_some() || m.skipped
        {
            let val = m
                .val_loss
                .map(|v| format!(" | val {v:.4}"))
                .unwrap_or_default();
            let skip = if m.skipped {
                " | SKIPPED (non-finite)"
            } else {
                ""
            };
            eprintln!(
                "step {:>6}/{} | loss {:.4} | lr {:.3e} | gnorm {:.3} | {:.0} tok/s | MFU {:.2}% | ETA {}{val}{skip}",
                m.step,
                self.total,
                m.loss,
                m.lr,
                m.grad_norm,
                m.tokens_per_s,
                m.mfu * 100.0,
                format_eta(eta_s)
            );
        }
        Ok(())
    }
}

fn format_eta(s: f64) -> String {
    let s = s.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Mean masked loss over `batches` validation batches, from the start of the validation split.
fn validate<B: Backend>(
    be: &B,
    model: &Model<B>,
    ws: &mut Workspace<B>,
    val: &mut Loader,
    batches: usize,
) -> f64 {
    val.reset();
    let (mut sum, mut count) = (0.0, 0u64);
    for _ in 0..batches.max(1) {
        let b = val.next_batch();
        model.forward(be, ws, &b.inputs, &b.doc_ids);
        sum += model.loss(be, ws, &b.targets, &b.loss_mask, 0.0);
        count += b.loss_mask.iter().map(|&m| m as u64).sum::<u64>();
    }
    sum / count.max(1) as f64
}

/// Train per `cfg` on backend `be`, from scratch or resuming. `peak_flops` is the backend's
/// nominal peak (FLOP/s) used when the config gives none.
/// `until`: stop (with a checkpoint) after that step, keeping the schedule of `train.steps`.
pub fn train<B: Backend>(
    be: &B,
    cfg: &Config,
    resume: Option<Resume>,
    until: Option<u64>,
    nominal_peak_flops: f64,
) -> Result<TrainSummary> {
    train_dist(be, cfg, resume, until, nominal_peak_flops, None)
}

/// As [`train`], as one rank of a data-parallel group when `comm` is given (its world size must
/// be `train.world_size`).
pub fn train_dist<B: Backend>(
    be: &B,
    cfg: &Config,
    resume: Option<Resume>,
    until: Option<u64>,
    nominal_peak_flops: f64,
    comm: Option<&dyn Communicator<B>>,
) -> Result<TrainSummary> {
    let t_cfg = &cfg.train;
    let (rank, world) = comm.map_or((0, 1), |c| (c.rank(), c.world()));
    if world != t_cfg.world_size {
        bail!(
            "train.world_size = {} but this process is one of {world} rank(s): start the ranks with `kiln launch`, torchrun or srun (or --ranks-as-threads on the CPU), or set train.world_size = {world}",
            t_cfg.world_size
        );
    }
    // Only rank 0 talks, logs and writes the run's files.
    let lead = rank == 0;
    let d = &cfg.data;
    let tok = Tokenizer::from_file(&d.tokenizer, d.bos_token.as_deref(), d.eos_token.as_deref())?;
    let mcfg = resolve_model(cfg, &tok)?;
    let out = &t_cfg.out_dir;
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create run directory", out.display()))?;
    let config_text = toml::to_string(cfg).context("cannot serialise the resolved config")?;
    let hash = config_hash(&config_text);

    let opts = loader_options(cfg, &tok, rank, world);
    let mut loader = Loader::new(&d.sources, opts.clone(), Split::Train, Path::new("."))?;
    // Validation runs on rank 0 over the whole validation split.
    let opts = loader_options(cfg, &tok, 0, 1);
    let mut val = if d.val_fraction > 0.0 && lead {
        Some(Loader::new(
            &d.sources,
            opts,
            Split::Validation,
            Path::new("."),
        )?)
    } else {
        None
    };
    let tokens_per_step = (d.batch_size * d.seq_len * t_cfg.grad_accum * world) as u64;
    let sequences_per_step = (d.batch_size * t_cfg.grad_accum * world) as u64;
    if lead {
        eprintln!(
        "model: {} layers, d={}, {} heads ({} kv), ffn {}, vocab {}: {:.2} M parameters ({:.2} M non-embedding)",
        mcfg.n_layers,
        mcfg.dim,
        mcfg.n_heads,
        mcfg.n_kv_heads,
        mcfg.ffn_dim,
        mcfg.vocab_size,
        mcfg.num_params() as f64 / 1e6,
        mcfg.num_params_non_embedding() as f64 / 1e6
    );
        for r in loader.report(tokens_per_step * t_cfg.steps) {
            eprintln!(
                "data: {:<12} {:>10} tokens, weight {:.3}, {:.2} epochs over {} steps",
                r.name, r.tokens, r.weight, r.epochs, t_cfg.steps
            );
        }
    }

    // Stop before allocating anything when the run cannot fit.
    let widths = crate::train::memory::Widths::of(be);
    let available = if t_cfg.device_memory_gb > 0.0 {
        t_cfg.device_memory_gb * 1e9
    } else {
        be.device_memory_bytes().unwrap_or(0.0)
    };
    let plan = crate::train::memory::plan(
        &mcfg,
        d.batch_size,
        d.seq_len,
        t_cfg.world_size,
        t_cfg.zero_stage,
        t_cfg.bucket_elems(),
        t_cfg.recompute,
        widths,
        available,
    );
    if lead {
        crate::train::memory::check(&plan, t_cfg.world_size, t_cfg.zero_stage, d.batch_size)?;
    }
    let zero1 = comm.is_some() && t_cfg.zero_stage >= 1;

    // Model and optimizer state: fresh or from a checkpoint.
    let info = mcfg.params();
    let mut state = TrainState {
        step: 0,
        adam_step: 0,
        bad_in_a_row: 0,
        skipped_steps: 0,
        tokens_seen: 0,
        cursor: loader.cursor().clone(),
        world_size: world,
        tokenizer_fingerprint: Some(format!("{:016x}", tok.fingerprint())),
        config: config_text.clone(),
        config_hash: hash.clone(),
    };
    let (mut model, mut m, mut v, resumed_moments) = match &resume {
        None => {
            let model = match init_from_hf(&mcfg)? {
                Some(dir) => {
                    let (_, host) = crate::hf::load(&dir, Some(tok.vocab_size() as usize))?;
                    eprintln!("initialised from {}", dir.display());
                    Model::from_host(be, &mcfg, &host)
                }
                None => Model::new(be, &mcfg, t_cfg.seed),
            };
            // Under ZeRO-1 the reducer holds this rank's moments instead.
            let full = if zero1 { 0 } else { info.len() };
            let m: Vec<B::Buf> = info[..full]
                .iter()
                .map(|p| be.alloc(p.numel(), BufKind::Optim))
                .collect();
            let v: Vec<B::Buf> = info[..full]
                .iter()
                .map(|p| be.alloc(p.numel(), BufKind::Optim))
                .collect();
            (model, m, v, None)
        }
        Some(which) => {
            let dir = match which {
                Resume::Latest => match checkpoint::latest(out)? {
                    Some((_, dir)) => dir,
                    None => bail!("{}: no complete checkpoint to resume from", out.display()),
                },
                Resume::Step(s) => out.join(format!("step_{s:06}")),
            };
            let ck = checkpoint::load(&dir)?;
            let mut st = ck.state.clone();
            st["step"] = ck.step.into();
            state = serde_json::from_value(st).map_err(|e| {
                anyhow::anyhow!(
                    "{}/state.json: not a kiln training state: {e}",
                    dir.display()
                )
            })?;
            let params = tensors_in_order(&dir.join("model.safetensors"), &info, ck.model, "")?;
            let m_host = tensors_in_order(
                &dir.join("optimizer.safetensors"),
                &info,
                ck.optimizer.clone(),
                ".exp_avg",
            )?;
            let v_host = tensors_in_order(
                &dir.join("optimizer.safetensors"),
                &info,
                ck.optimizer,
                ".exp_avg_sq",
            )?;
            loader.restore(state.cursor.clone())?;
            if lead {
                eprintln!("resumed from {} (step {})", dir.display(), state.step);
                if state.world_size != world {
                    eprintln!(
                        "resuming a checkpoint of world size {} with world size {world}: the optimizer state is re-split over {world} rank(s) and the data continues from the same global position",
                        state.world_size
                    );
                }
            }
            state.world_size = world;
            let upload = |hs: &[Vec<f32>]| -> Vec<B::Buf> {
                if zero1 {
                    Vec::new()
                } else {
                    hs.iter().map(|h| be.upload_as(h, BufKind::Optim)).collect()
                }
            };
            let (m, v) = (upload(&m_host), upload(&v_host));
            (
                Model::from_host(be, &mcfg, &params),
                m,
                v,
                Some((m_host, v_host)),
            )
        }
    };
    // Data parallelism: every rank starts from rank 0's parameters; the reducer owns the buckets
    // (and, under ZeRO-1, this rank's moments).
    let mut reducer = match comm {
        None => None,
        Some(c) => {
            for p in &mut model.params {
                let n = be.buf_len(p);
                c.broadcast(be, p, n, 0)?;
            }
            c.sync(be)?;
            let mut r = Reducer::new(be, &model, rank, world, zero1, t_cfg.bucket_elems());
            if let Some((mh, vh)) = &resumed_moments {
                r.load_moments(be, mh, vh);
            }
            if lead {
                eprintln!(
                    "data parallel: {world} ranks, ZeRO-{}, {} gradient buckets of up to {} MB, reduced as the backward finishes each",
                    u8::from(zero1),
                    r.plan.buckets.len(),
                    t_cfg.bucket_mb
                );
            }
            Some(r)
        }
    };
    drop(resumed_moments);
    let mut global_sequence = loader.cursor().sequence;
    let mut metrics = if lead {
        crate::fsutil::write_atomic(&out.join("config.toml"), config_text.as_bytes())?;
        Some(Metrics::open(
            &out.join("metrics.jsonl"),
            state.step,
            t_cfg.log_every,
            t_cfg.steps,
        )?)
    } else {
        None
    };

    let (b, t) = (d.batch_size, d.seq_len);
    let mut ws = model.workspace_with(be, b, t, t_cfg.recompute);
    let peak = if t_cfg.peak_tflops > 0.0 {
        t_cfg.peak_tflops * 1e12
    } else {
        nominal_peak_flops
    };
    let flops_per_token = mcfg.flops_per_token(t);
    let start = Instant::now();
    let first_step = state.step;
    let mut summary = TrainSummary {
        steps_run: 0,
        first_loss: None,
        last_loss: None,
        last_val_loss: None,
        tokens_per_s: 0.0,
        step_seconds: 0.0,
        out_dir: out.clone(),
        history: Vec::new(),
    };
    // Task files for in-training evaluation, read (and validated) once.
    let tasks: Option<Vec<(String, Vec<crate::eval::Item>)>> = match &cfg.eval {
        None => None,
        Some(e) => Some(
            e.tasks
                .iter()
                .map(|p| {
                    let mut items = crate::eval::read_tasks(p)?;
                    if e.max_items > 0 {
                        items.truncate(e.max_items);
                    }
                    let name = p
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    Ok((name, items))
                })
                .collect::<Result<Vec<_>>>()?,
        ),
    };
    let last_step = until.unwrap_or(t_cfg.steps).min(t_cfg.steps);
    let fault = FaultInjection::from_env()?;
    while state.step < last_step {
        let step = state.step + 1;
        let t0 = Instant::now();
        let batches: Vec<_> = (0..t_cfg.grad_accum).map(|_| loader.next_batch()).collect();
        if let Some(fault) = &fault {
            fault.check(rank, step);
        }
        let mut count: u64 = batches
            .iter()
            .map(|b| b.loss_mask.iter().map(|&x| x as u64).sum::<u64>())
            .sum();
        if let Some(c) = comm {
            // The loss is a mean over the tokens of every rank.
            let mut x = [count as f64];
            c.all_reduce_host(&mut x)?;
            count = x[0] as u64;
        }
        let scale = 1.0 / count.max(1) as f32;
        model.zero_grads(be);
        let mut loss_sum = 0.0;
        for (i, batch) in batches.iter().enumerate() {
            model.forward(be, &mut ws, &batch.inputs, &batch.doc_ids);
            loss_sum += model.loss(be, &mut ws, &batch.targets, &batch.loss_mask, scale);
            match (reducer.as_mut(), comm) {
                // The last micro-batch: reduce each bucket as soon as its layers are done.
                (Some(r), Some(c)) if i + 1 == batches.len() => {
                    r.begin_step();
                    model.backward_hooked(
                        be,
                        &mut ws,
                        &batch.inputs,
                        &batch.doc_ids,
                        &mut |group, grads| r.on_ready(be, c, group, grads),
                    );
                }
                _ => model.backward(be, &mut ws, &batch.inputs, &batch.doc_ids),
            }
        }
        let mut sharded_norm = None;
        if let (Some(r), Some(c)) = (reducer.as_mut(), comm) {
            sharded_norm = r.finish(be, c, &mut model.grads)?;
            let mut x = [loss_sum];
            c.all_reduce_host(&mut x)?;
            loss_sum = x[0];
        }
        let loss = loss_sum / count.max(1) as f64;
        let grad_norm = sharded_norm.unwrap_or_else(|| {
            model
                .grads
                .iter()
                .map(|g| be.sum_squares(g))
                .sum::<f64>()
                .sqrt()
        });
        let lr = lr_at(
            t_cfg.schedule,
            step,
            t_cfg.steps,
            t_cfg.lr,
            t_cfg.warmup_steps,
            t_cfg.min_lr_ratio,
            t_cfg.decay_fraction,
        );
        let finite = loss.is_finite() && grad_norm.is_finite();
        if finite {
            state.bad_in_a_row = 0;
            state.adam_step += 1;
            let clip = if t_cfg.grad_clip > 0.0 && grad_norm > t_cfg.grad_clip {
                t_cfg.grad_clip / grad_norm
            } else {
                1.0
            };
            let hp = AdamW {
                lr: lr as f32,
                beta1: t_cfg.beta1 as f32,
                beta2: t_cfg.beta2 as f32,
                eps: t_cfg.eps as f32,
                weight_decay: t_cfg.weight_decay as f32,
                step: state.adam_step,
                grad_scale: clip as f32,
            };
            match (reducer.as_mut(), comm) {
                (Some(r), Some(c)) if zero1 => r.step_zero1(be, c, &mut model, hp)?,
                _ => model.adamw_step(be, &mut m, &mut v, hp),
            }
        } else {
            state.bad_in_a_row += 1;
            state.skipped_steps += 1;
            if state.bad_in_a_row >= t_cfg.max_bad_steps.max(1) {
                bail!(
                    "step {step}: loss or gradient not finite for {} steps in a row (loss {loss}, grad norm {grad_norm}); stopping. Lower train.lr or check the data.",
                    state.bad_in_a_row
                );
            }
        }
        state.step = step;
        state.tokens_seen += tokens_per_step;
        global_sequence += sequences_per_step;
        loader.skip_to(global_sequence);
        state.cursor = loader.cursor().clone();
        let dt = t0.elapsed().as_secs_f64();
        let tps = tokens_per_step as f64 / dt.max(1e-9);
        let val_loss = match val.as_mut() {
            Some(vl)
                if (t_cfg.eval_every > 0 && step % t_cfg.eval_every == 0)
                    || step == t_cfg.steps =>
            {
                Some(validate(be, &model, &mut ws, vl, t_cfg.eval_batches))
            }
            _ => None,
        };
        let eval = match (&cfg.eval, &tasks) {
            (Some(e), Some(tasks))
                if lead && ((e.every > 0 && step % e.every == 0) || step == t_cfg.steps) =>
            {
                let mut scores = Vec::new();
                for (name, items) in tasks {
                    scores.push(crate::eval::evaluate(
                        be,
                        &model,
                        &tok,
                        name,
                        items,
                        e.batch,
                        e.max_new_tokens,
                    )?);
                }
                Some(scores)
            }
            _ => None,
        };
        let elapsed = start.elapsed().as_secs_f64();
        let done = step - first_step;
        let eta = elapsed / done as f64 * (last_step - step) as f64;
        let record = StepMetrics {
            step,
            loss,
            lr,
            grad_norm,
            tokens_per_s: tps,
            mfu: if peak > 0.0 {
                flops_per_token * tps / peak
            } else {
                0.0
            },
            tokens: state.tokens_seen,
            elapsed_s: elapsed,
            val_loss,
            skipped: !finite,
            eval,
        };
        if let Some(metrics) = metrics.as_mut() {
            metrics.write(&record, eta)?;
        }
        summary.first_loss.get_or_insert(loss);
        summary.last_loss = Some(loss);
        if val_loss.is_some() {
            summary.last_val_loss = val_loss;
        }
        summary.history.push(record);
        summary.steps_run += 1;
        if (t_cfg.checkpoint_every > 0 && step % t_cfg.checkpoint_every == 0) || step == last_step {
            match (reducer.as_mut(), comm) {
                (Some(r), Some(c)) => save_checkpoint_dist(
                    be,
                    &mut model,
                    &m,
                    &v,
                    &state,
                    out,
                    t_cfg.keep_last,
                    c,
                    r,
                )?,
                _ => save_checkpoint(be, &model, &m, &v, &state, out, t_cfg.keep_last)?,
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if summary.steps_run > 0 {
        summary.step_seconds = secs / summary.steps_run as f64;
        summary.tokens_per_s = (summary.steps_run * tokens_per_step) as f64 / secs;
    }
    Ok(summary)
}

/// A checkpoint written by every rank: rank 0 prepares the directory and writes the weights and
/// the state (and the whole optimizer unless it is sharded); under ZeRO-1 each rank writes its
/// optimizer shard; rank 0 marks it DONE after a barrier.
#[allow(clippy::too_many_arguments)]
fn save_checkpoint_dist<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    m: &[B::Buf],
    v: &[B::Buf],
    state: &TrainState,
    out: &Path,
    keep_last: usize,
    comm: &dyn Communicator<B>,
    reducer: &mut Reducer<B>,
) -> Result<()> {
    let rank = comm.rank();
    let sharded = reducer.shard.is_some();
    reducer.gather_masters(be, comm, &mut model.params)?;
    comm.sync(be)?;
    if rank == 0 {
        checkpoint::begin(out, state.step)?;
    }
    comm.barrier()?;
    let tmp = checkpoint::tmp_dir(out, state.step);
    if sharded {
        let pieces: Vec<(String, usize, Vec<f32>, Vec<f32>)> = reducer
            .moment_pieces(be)
            .into_iter()
            .map(|(p, off, mm, vv)| (model.info[p].name.clone(), off, mm, vv))
            .collect();
        checkpoint::write_optimizer_shard(&tmp, rank, &pieces)?;
    }
    if rank == 0 {
        let ck = checkpoint_of(be, model, m, v, state, !sharded)?;
        checkpoint::write_parts(&tmp, &ck, !sharded)?;
    }
    comm.barrier()?;
    if rank == 0 {
        checkpoint::commit(out, state.step, keep_last)?;
    }
    comm.barrier()
}

fn save_checkpoint<B: Backend>(
    be: &B,
    model: &Model<B>,
    m: &[B::Buf],
    v: &[B::Buf],
    state: &TrainState,
    out: &Path,
    keep_last: usize,
) -> Result<()> {
    checkpoint::save(
        out,
        &checkpoint_of(be, model, m, v, state, true)?,
        keep_last,
    )?;
    Ok(())
}

fn checkpoint_of<B: Backend>(
    be: &B,
    model: &Model<B>,
    m: &[B::Buf],
    v: &[B::Buf],
    state: &TrainState,
    with_optimizer: bool,
) -> Result<Checkpoint> {
    let named = |suffix: &str, bufs: &[B::Buf]| -> Vec<NamedTensor> {
        model
            .info
            .iter()
            .zip(bufs)
            .map(|(p, b)| NamedTensor {
                name: format!("{}{suffix}", p.name),
                shape: p.shape.clone(),
                data: be.download(b),
            })
            .collect()
    };
    let mut optimizer = Vec::new();
    if with_optimizer {
        optimizer = named(".exp_avg", m);
        optimizer.extend(named(".exp_avg_sq", v));
    }
    Ok(Checkpoint {
        step: state.step,
        model: named("", &model.params),
        optimizer,
        state: serde_json::to_value(state)?,
    })
}

/// Fault injection for the tests of failure handling: `KILN_FAULT=panic@RANK:STEP` makes that
/// rank panic at the start of that step (as a crash would).
struct FaultInjection {
    rank: usize,
    step: u64,
}

impl FaultInjection {
    fn from_env() -> Result<Option<Self>> {
        let Ok(v) = std::env::var("KILN_FAULT") else {
            return Ok(None);
        };
        let parsed = v.strip_prefix("panic@").and_then(|rs| {
            let (r, s) = rs.split_once(':')?;
            Some((r.parse().ok()?, s.parse().ok()?))
        });
        match parsed {
            Some((rank, step)) => Ok(Some(FaultInjection { rank, step })),
            None => bail!("KILN_FAULT={v:?}: expected panic@RANK:STEP"),
        }
    }

    fn check(&self, rank: usize, step: u64) {
        if rank == self.rank && step == self.step {
            panic!("KILN_FAULT: rank {rank} panics at step {step} on purpose");
        }
    }
}
