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
//!
//! Rank 0 holds the run directory's lock (`run_dir`) for the whole run. A resume refuses config
//! keys changed since the checkpoint unless they are safe (`SAFE_ON_RESUME`); safe changes are
//! recorded on the next metrics line. Nothing to train, or every step of this run skipped as
//! non-finite, is an error.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::backend::{AdamW, Backend, GenerationBackend};
use crate::config::Config;
use crate::data::loader::{Batch, Cursor, Loader, Split};
use crate::data::tokenizer::Tokenizer;
use crate::dist::Communicator;
use crate::model::{Model, ModelConfig, Workspace};
use crate::train::agree;
use crate::train::checkpoint::{self, tensors_in_order};
use crate::train::memory;
use crate::train::metrics::{MetricsLog, StepMetrics};
use crate::train::optimizer::{HostMoments, Optimizer};
use crate::train::run_dir::{self, RunLock};
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

/// Train per `cfg` on backend `be`, from scratch or resuming.
/// `until`: stop (with a checkpoint) after that step, keeping the schedule of `train.steps`.
pub fn train<B: GenerationBackend>(
    be: &B,
    cfg: &Config,
    resume: Option<Resume>,
    until: Option<u64>,
) -> Result<TrainSummary> {
    train_dist(be, cfg, resume, until, None)
}

/// As [`train`], as one rank of a data-parallel group when `comm` is given (its world size must
/// be `train.world_size`).
pub fn train_dist<B: GenerationBackend>(
    be: &B,
    cfg: &Config,
    resume: Option<Resume>,
    until: Option<u64>,
    comm: Option<&dyn Communicator<B>>,
) -> Result<TrainSummary> {
    let t_cfg = &cfg.train;
    let last_step = until.unwrap_or(t_cfg.steps).min(t_cfg.steps);
    if resume.is_none() && last_step == 0 {
        bail!(
            "nothing to train: train.steps = {}{}",
            t_cfg.steps,
            until.map_or(String::new(), |u| format!(", --until {u}"))
        );
    }
    let mut run = Run::start(be, cfg, resume, comm)?;
    if last_step <= run.state.step {
        bail!(
            "nothing to train: the run is at step {} and would stop at step {last_step} (train.steps = {}{})",
            run.state.step,
            t_cfg.steps,
            until.map_or(String::new(), |u| format!(", --until {u}"))
        );
    }
    let (start, first_step) = (Instant::now(), run.state.step);
    let mut skipped = 0u64;
    let mut summary = TrainSummary {
        steps_run: 0,
        first_loss: None,
        last_loss: None,
        last_val_loss: None,
        tokens_per_s: 0.0,
        step_seconds: 0.0,
        out_dir: t_cfg.out_dir.clone(),
        history: Vec::new(),
    };
    while run.state.step < last_step {
        let t0 = Instant::now();
        let done = run.step()?;
        let record = run.observe(done, t0.elapsed().as_secs_f64(), start)?;
        if let Some(log) = run.metrics.as_mut() {
            let left = (last_step - record.step) as f64 / (record.step - first_step) as f64;
            log.write(&record, record.elapsed_s * left)?;
        }
        summary.first_loss.get_or_insert(record.loss);
        summary.last_loss = Some(record.loss);
        if record.val_loss.is_some() {
            summary.last_val_loss = record.val_loss;
        }
        skipped += u64::from(record.skipped);
        summary.history.push(record);
        summary.steps_run += 1;
        if summary.steps_run == 1 {
            if let (Some(p), Some(m)) = (&run.planned, be.memory_peaks()) {
                eprintln!(
                    "{}",
                    memory::measured_line(p, &m, be.allocator_peak(), be.device_memory_in_use())
                );
            }
        }
        let step = run.state.step;
        if (t_cfg.checkpoint_every > 0 && step % t_cfg.checkpoint_every == 0) || step == last_step {
            run.save()?;
        }
    }
    if skipped == summary.steps_run {
        bail!(
            "every one of the {skipped} step(s) this run trained was skipped (loss or gradient not finite): nothing was learned. Lower train.lr or check the data."
        );
    }
    let secs = start.elapsed().as_secs_f64();
    if summary.steps_run > 0 {
        summary.step_seconds = secs / summary.steps_run as f64;
        summary.tokens_per_s = (summary.steps_run * run.tokens_per_step) as f64 / secs;
    }
    Ok(summary)
}

/// An `[eval]` task: its name (the file stem) and items.
type EvalTask = (String, Vec<crate::eval::Item>);

/// What one optimizer step produced.
struct StepDone {
    step: u64,
    loss: f64,
    lr: f64,
    grad_norm: f64,
    /// False when the update was skipped (non-finite loss or gradient).
    applied: bool,
}

/// One rank's training run once it is set up: what the loop reads and updates.
struct Run<'a, B: GenerationBackend> {
    be: &'a B,
    cfg: &'a Config,
    tok: Tokenizer,
    model: Model<B>,
    ws: Workspace<B>,
    opt: Optimizer<'a, B>,
    loader: Loader,
    /// Rank 0 only, when `data.val_fraction` > 0.
    val: Option<Loader>,
    /// `[eval]` task files, read once (rank 0 only).
    tasks: Option<Vec<EvalTask>>,
    state: TrainState,
    /// Rank 0 only.
    metrics: Option<MetricsLog>,
    global_sequence: u64,
    tokens_per_step: u64,
    sequences_per_step: u64,
    flops_per_token: f64,
    peak_flops: f64,
    fault: Option<FaultInjection>,
    /// Safe config keys changed since the checkpoint, recorded on the next metrics line.
    config_changes: Option<Vec<String>>,
    /// The memory plan (rank 0), held against the measured peak after the first step.
    planned: Option<memory::MemoryPlan>,
    /// Rank 0 holds the run directory for the whole run.
    _lock: Option<RunLock>,
}

impl<'a, B: GenerationBackend> Run<'a, B> {
    /// Set up: tokenizer and loaders, the memory check, the model and optimizer (fresh or from a
    /// checkpoint), the run directory's config and metrics.
    fn start(
        be: &'a B,
        cfg: &'a Config,
        resume: Option<Resume>,
        comm: Option<&'a dyn Communicator<B>>,
    ) -> Result<Self> {
        let (d, t_cfg) = (&cfg.data, &cfg.train);
        let (rank, world) = comm.map_or((0, 1), |c| (c.rank(), c.world()));
        if world != t_cfg.world_size {
            bail!(
                "train.world_size = {} but this process is one of {world} rank(s): start the ranks with `kiln launch`, torchrun or srun (or --ranks-as-threads on the CPU), or set train.world_size = {world}",
                t_cfg.world_size
            );
        }
        // Only rank 0 talks, logs and writes the run's files.
        let lead = rank == 0;
        let tok =
            Tokenizer::from_file(&d.tokenizer, d.bos_token.as_deref(), d.eos_token.as_deref())?;
        let mcfg = resolve_model(cfg, &tok)?;
        let out = &t_cfg.out_dir;
        std::fs::create_dir_all(out)
            .with_context(|| format!("{}: cannot create run directory", out.display()))?;
        let lock = if lead {
            Some(run_dir::lock(out)?)
        } else {
            None
        };
        let config_text = toml::to_string(cfg).context("cannot serialise the resolved config")?;

        let opts = loader_options(cfg, &tok, rank, world);
        let mut loader = Loader::new(&d.sources, opts, Split::Train, Path::new("."))?;
        // Validation runs on rank 0 over the whole validation split.
        let val = if d.val_fraction > 0.0 && lead {
            let opts = loader_options(cfg, &tok, 0, 1);
            Some(Loader::new(
                &d.sources,
                opts,
                Split::Validation,
                Path::new("."),
            )?)
        } else {
            None
        };
        // Every rank trains the same thing, or none does.
        if let Some(comm) = comm {
            let resume_words = match &resume {
                None => "no (a fresh run)".to_string(),
                Some(Resume::Latest) => "the latest checkpoint".to_string(),
                Some(Resume::Step(s)) => format!("step {s}"),
            };
            let mine = agree::describe(cfg, &config_text, tok.fingerprint(), &resume_words)?;
            agree::check(comm, &mine)?;
        }
        let tokens_per_step = (d.batch_size * d.seq_len * t_cfg.grad_accum * world) as u64;
        let mut planned = None;
        if lead {
            print_overview(&mcfg, &loader, tokens_per_step, t_cfg.steps);
            planned = Some(check_memory(be, cfg, &mcfg, comm.is_some())?);
        }

        // Model and optimizer state: fresh or from a checkpoint.
        let mut state = TrainState {
            step: 0,
            adam_step: 0,
            bad_in_a_row: 0,
            skipped_steps: 0,
            tokens_seen: 0,
            cursor: loader.cursor().clone(),
            world_size: world,
            tokenizer_fingerprint: Some(format!("{:016x}", tok.fingerprint())),
            config_hash: config_hash(&config_text),
            config: config_text,
        };
        let mut config_changes = None;
        let (host, moments) = match &resume {
            None => (init_params(&mcfg, &tok, t_cfg.seed)?, None),
            Some(which) => {
                let (host, moments, resumed, dir) = load_checkpoint(&mcfg, out, which)?;
                loader.restore(resumed.cursor.clone())?;
                if lead {
                    eprintln!("resumed from {} (step {})", dir.display(), resumed.step);
                }
                if lead && resumed.world_size != world {
                    eprintln!(
                        "resuming a checkpoint of world size {} with world size {world}: the optimizer state is re-split over {world} rank(s) and the data continues from the same global position",
                        resumed.world_size
                    );
                }
                let changes = check_config_changes(&resumed.config, &state.config)
                    .with_context(|| format!("resuming from {}", dir.display()))?;
                if lead && !changes.is_empty() {
                    eprintln!(
                        "config changed since the checkpoint: {}",
                        changes.join(", ")
                    );
                    config_changes = Some(changes);
                }
                state = TrainState {
                    world_size: world,
                    config: state.config,
                    config_hash: state.config_hash,
                    ..resumed
                };
                (host, Some(moments))
            }
        };
        let (model, opt) = Optimizer::build(
            be,
            &mcfg,
            &host,
            comm,
            t_cfg.zero_stage,
            t_cfg.bucket_elems(),
            moments,
        )?;
        drop(host);
        let metrics = if lead {
            if let Some(line) = opt.describe(t_cfg.bucket_mb) {
                eprintln!("{line}");
            }
            crate::fsutil::write_atomic(&out.join("config.toml"), state.config.as_bytes())?;
            let path = out.join("metrics.jsonl");
            Some(MetricsLog::open(
                &path,
                state.step,
                t_cfg.log_every,
                t_cfg.steps,
            )?)
        } else {
            None
        };
        let ws = model.workspace_with(
            be,
            d.batch_size,
            d.seq_len,
            t_cfg.recompute,
            t_cfg.head_chunk,
        );
        if lead && ws.chunked_head() {
            let n = d.batch_size * d.seq_len;
            eprintln!(
                "head: output projection and loss in chunks of {} of the micro-batch's {n} rows (train.head_chunk = {}{})",
                ws.head_rows,
                t_cfg.head_chunk,
                if ws.head_rows * 2 <= t_cfg.head_chunk {
                    ": the largest divisor of B·T that fits; a chunk size dividing B·T avoids small chunks"
                } else {
                    ""
                }
            );
        }
        Ok(Run {
            be,
            cfg,
            tasks: if lead { read_eval_tasks(cfg)? } else { None },
            tok,
            model,
            ws,
            opt,
            global_sequence: loader.cursor().sequence,
            loader,
            val,
            state,
            metrics,
            tokens_per_step,
            sequences_per_step: (d.batch_size * t_cfg.grad_accum * world) as u64,
            flops_per_token: mcfg.flops_per_token(d.seq_len),
            peak_flops: if t_cfg.peak_tflops > 0.0 {
                t_cfg.peak_tflops * 1e12
            } else {
                be.peak_flops()
            },
            fault: FaultInjection::from_env()?,
            config_changes,
            planned,
            _lock: lock,
        })
    }

    /// One optimizer step: batch → forward → loss → backward (accumulating over micro-batches)
    /// → reduce over ranks → clip → AdamW update → advance the data.
    fn step(&mut self) -> Result<StepDone> {
        let (be, t_cfg) = (self.be, &self.cfg.train);
        let step = self.state.step + 1;
        let batches: Vec<Batch> = (0..t_cfg.grad_accum)
            .map(|_| self.loader.next_batch())
            .collect();
        if let Some(fault) = &self.fault {
            fault.check(self.opt.rank_and_world().0, step);
        }
        // The loss is a mean over the target tokens of every rank.
        let tokens: u64 = batches
            .iter()
            .flat_map(|b| &b.loss_mask)
            .map(|&x| u64::from(x))
            .sum();
        let tokens = self.opt.sum_over_ranks(tokens as f64)? as u64;
        let scale = 1.0 / tokens.max(1) as f32;

        self.model.zero_grads(be);
        let mut loss_sum = 0.0;
        let micro = batches.len();
        for (i, batch) in batches.iter().enumerate() {
            self.opt.forward(be, &mut self.model, &mut self.ws, batch)?;
            self.model
                .stage_loss(be, &mut self.ws, &batch.targets, &batch.loss_mask, scale);
            self.opt.backward(
                be,
                &mut self.model,
                &mut self.ws,
                batch,
                i == 0,
                i + 1 == micro,
            )?;
            loss_sum += self.ws.take_loss(be);
        }
        let grad_norm = self.opt.reduce(be, &mut self.model)?;
        let loss = self.opt.sum_over_ranks(loss_sum)? / tokens.max(1) as f64;

        let lr = lr_at(
            t_cfg.schedule,
            step,
            t_cfg.steps,
            t_cfg.lr,
            t_cfg.warmup_steps,
            t_cfg.min_lr_ratio,
            t_cfg.decay_fraction,
        );
        let applied = loss.is_finite() && grad_norm.is_finite();
        if applied {
            self.state.bad_in_a_row = 0;
            self.state.adam_step += 1;
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
                step: self.state.adam_step,
                grad_scale: clip as f32,
            };
            self.opt.update(be, &mut self.model, hp)?;
        } else {
            self.state.bad_in_a_row += 1;
            self.state.skipped_steps += 1;
            if self.state.bad_in_a_row >= t_cfg.max_bad_steps.max(1) {
                bail!(
                    "step {step}: loss or gradient not finite for {} steps in a row (loss {loss}, grad norm {grad_norm}); stopping. Lower train.lr or check the data.",
                    self.state.bad_in_a_row
                );
            }
        }

        // Every rank's loader moves to the global position, so any world size can resume it.
        self.state.step = step;
        self.state.tokens_seen += self.tokens_per_step;
        self.global_sequence += self.sequences_per_step;
        self.loader.skip_to(self.global_sequence);
        self.state.cursor = self.loader.cursor().clone();
        Ok(StepDone {
            step,
            loss,
            lr,
            grad_norm,
            applied,
        })
    }

    /// The step's metrics record, with the validation loss and task scores when they are due.
    fn observe(&mut self, s: StepDone, step_s: f64, start: Instant) -> Result<StepMetrics> {
        let (be, t_cfg) = (self.be, &self.cfg.train);
        let due = |every: u64| (every > 0 && s.step.is_multiple_of(every)) || s.step == t_cfg.steps;
        // Rank 0 validates and evaluates with the whole model: under ZeRO-3 every rank takes part
        // in gathering it first (each decides alike, from the config and the step).
        let whole = self.opt.model_is_sharded()
            && ((self.cfg.data.val_fraction > 0.0 && due(t_cfg.eval_every))
                || self.cfg.eval.as_ref().is_some_and(|e| due(e.every)));
        if whole {
            self.opt.gather_model(be, &mut self.model)?;
        }
        let val_loss = match self.val.as_mut() {
            Some(vl) if due(t_cfg.eval_every) => Some(validate(
                be,
                &self.model,
                &mut self.ws,
                vl,
                t_cfg.eval_batches,
            )),
            _ => None,
        };
        let eval = match (&self.cfg.eval, &self.tasks) {
            (Some(e), Some(tasks)) if due(e.every) => {
                let mut scores = Vec::new();
                for (name, items) in tasks {
                    scores.push(crate::eval::evaluate(
                        be,
                        &self.model,
                        &self.tok,
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
        if whole {
            self.opt.release_model(be, &mut self.model);
        }
        let tokens_per_s = self.tokens_per_step as f64 / step_s.max(1e-9);
        Ok(StepMetrics {
            step: s.step,
            loss: s.loss,
            lr: s.lr,
            grad_norm: s.grad_norm,
            tokens_per_s,
            mfu: if self.peak_flops > 0.0 {
                self.flops_per_token * tokens_per_s / self.peak_flops
            } else {
                0.0
            },
            tokens: self.state.tokens_seen,
            elapsed_s: start.elapsed().as_secs_f64(),
            val_loss,
            skipped: !s.applied,
            eval,
            mem_peak_gb: be.memory_peaks().map(|p| p.peak_total as f64 / 1e9),
            config_changes: self.config_changes.take(),
        })
    }

    /// A checkpoint of the current step (every rank takes part).
    fn save(&mut self) -> Result<()> {
        let t_cfg = &self.cfg.train;
        let state = serde_json::to_value(&self.state)?;
        self.opt.save(
            self.be,
            &mut self.model,
            self.state.step,
            state,
            &t_cfg.out_dir,
            t_cfg.keep_last,
        )
    }
}

/// The model's and the data's start-up lines.
fn print_overview(mcfg: &ModelConfig, loader: &Loader, tokens_per_step: u64, steps: u64) {
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
    for r in loader.report(tokens_per_step * steps) {
        eprintln!(
            "data: {:<12} {:>10} tokens, weight {:.3}, {:.2} epochs over {steps} steps",
            r.name, r.tokens, r.weight, r.epochs
        );
    }
}

/// Stop before allocating anything when the run cannot fit.
/// `data_parallel`: the run has a communicator (several ranks, or one launched rank).
fn check_memory<B: Backend>(
    be: &B,
    cfg: &Config,
    mcfg: &ModelConfig,
    data_parallel: bool,
) -> Result<memory::MemoryPlan> {
    let (d, t_cfg) = (&cfg.data, &cfg.train);
    let available = if t_cfg.device_memory_gb > 0.0 {
        t_cfg.device_memory_gb * 1e9
    } else {
        be.device_memory_bytes().unwrap_or(0.0)
    };
    let plan = memory::plan(
        mcfg,
        &memory::Setting {
            data_parallel,
            ..memory::Setting::of(cfg)
        },
        memory::Widths::of(be),
        available,
    );
    memory::check(&plan, t_cfg.world_size, t_cfg.zero_stage, d.batch_size)?;
    Ok(plan)
}

/// A fresh model's parameters (host, `mcfg.params()` order): from `model.init_from = "hf:PATH"`,
/// else initialised from `seed`.
fn init_params(mcfg: &ModelConfig, tok: &Tokenizer, seed: u64) -> Result<Vec<Vec<f32>>> {
    Ok(match init_from_hf(mcfg)? {
        Some(dir) => {
            let (_, host) = crate::hf::load(&dir, Some(tok.vocab_size() as usize))?;
            eprintln!("initialised from {}", dir.display());
            host
        }
        None => crate::model::init_params(mcfg, seed),
    })
}

/// The parameters (host), the whole Adam moments and the training state of the checkpoint
/// `which` under `out`, and its directory.
fn load_checkpoint(
    mcfg: &ModelConfig,
    out: &Path,
    which: &Resume,
) -> Result<(Vec<Vec<f32>>, HostMoments, TrainState, PathBuf)> {
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
    let state: TrainState = serde_json::from_value(st).map_err(|e| {
        anyhow::anyhow!(
            "{}/state.json: not a kiln training state: {e}",
            dir.display()
        )
    })?;
    let info = mcfg.params();
    let params = tensors_in_order(&checkpoint::model_source(&dir), &info, ck.model, "")?;
    let opt_file = checkpoint::optimizer_source(&dir);
    let m = tensors_in_order(&opt_file, &info, ck.optimizer.clone(), ".exp_avg")?;
    let v = tensors_in_order(&opt_file, &info, ck.optimizer, ".exp_avg_sq")?;
    Ok((params, HostMoments { m, v }, state, dir))
}

/// The `[eval]` task files, read and validated once (None without `[eval]`).
fn read_eval_tasks(cfg: &Config) -> Result<Option<Vec<EvalTask>>> {
    let Some(e) = &cfg.eval else {
        return Ok(None);
    };
    let tasks = e
        .tasks
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
        .collect::<Result<_>>()?;
    Ok(Some(tasks))
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

/// Config keys a resume may change: they touch neither the math nor the data order.
/// (`train.steps` may only grow; `train.world_size` may change with `data.batch_size` when the
/// global batch stays the same, and the ZeRO stage freely: every rank count and stage loads the
/// same checkpoint.)
const SAFE_ON_RESUME: &[&str] = &[
    // A run directory may be moved or copied.
    "train.out_dir",
    "train.log_every",
    "train.eval_every",
    "train.eval_batches",
    "train.checkpoint_every",
    "train.keep_last",
    "train.threads",
    "train.comm_timeout_s",
    "train.device_memory_gb",
    "train.peak_tflops",
    "train.zero_stage",
    "train.bucket_mb",
    // The gradients are the same whatever the backward recomputes.
    "train.recompute",
    "train.head_chunk",
    "eval.every",
    "eval.max_items",
    "eval.batch",
    "eval.max_new_tokens",
];

/// Every leaf of a TOML document as `section.key` → value (arrays are leaves).
pub(crate) fn flatten_toml(
    prefix: &str,
    v: &toml::Value,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_toml(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Compare the checkpoint's resolved config `old` with the current `new`, key by key: refuse
/// naming every changed key that is not safe; return the safe changes as `key: old -> new`.
fn check_config_changes(old: &str, new: &str) -> Result<Vec<String>> {
    let (safe, unsafe_) = config_changes(old, new)?;
    if !unsafe_.is_empty() {
        bail!(
            "the config changed since the checkpoint in ways that change the run: {}. Restore them, or start a new run (another train.out_dir, or --overwrite)",
            unsafe_.join(", ")
        );
    }
    Ok(safe)
}

/// The keys that differ between the resolved configs `old` and `new` as `key: old -> new`: those
/// a resume may change (`SAFE_ON_RESUME`, `train.steps` upward, the world size with the same
/// global batch), and the others.
pub(crate) fn config_changes(old: &str, new: &str) -> Result<(Vec<String>, Vec<String>)> {
    let parse = |text: &str| -> Result<std::collections::BTreeMap<String, String>> {
        let v: toml::Value = toml::from_str(text).context("the checkpoint's config")?;
        let mut m = std::collections::BTreeMap::new();
        flatten_toml("", &v, &mut m);
        Ok(m)
    };
    let (a, b) = (parse(old)?, parse(new)?);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let num = |m: &std::collections::BTreeMap<String, String>, k: &str| {
        m.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
    };
    let global_batch = |m: &std::collections::BTreeMap<String, String>| {
        num(m, "train.world_size") * num(m, "data.batch_size")
    };
    let (mut safe, mut unsafe_) = (Vec::new(), Vec::new());
    for k in keys {
        let (va, vb) = (a.get(k), b.get(k));
        if va == vb {
            continue;
        }
        let show = |v: Option<&String>| v.map_or("(unset)".to_string(), |v| v.clone());
        let line = format!("{k}: {} -> {}", show(va), show(vb));
        let ok = match k.as_str() {
            "train.steps" => num(&b, k) > num(&a, k),
            "train.world_size" | "data.batch_size" => global_batch(&a) == global_batch(&b),
            k => SAFE_ON_RESUME.contains(&k),
        };
        if ok {
            safe.push(line);
        } else {
            unsafe_.push(line);
        }
    }
    Ok((safe, unsafe_))
}

#[cfg(test)]
mod config_change_tests {
    use super::check_config_changes;

    const OLD: &str =
        "[train]\nsteps = 20\nlr = 0.1\nlog_every = 5\nworld_size = 2\n[data]\nbatch_size = 2\n";

    #[test]
    fn safe_changes_are_listed_and_unsafe_ones_refused_by_name() {
        assert!(check_config_changes(OLD, OLD).unwrap().is_empty());
        let new = OLD
            .replace("steps = 20", "steps = 30")
            .replace("log_every = 5", "log_every = 1");
        let c = check_config_changes(OLD, &new).unwrap();
        assert_eq!(
            c,
            [
                "train.log_every: 1 -> 1".replace("1 -> 1", "5 -> 1"),
                "train.steps: 20 -> 30".into()
            ]
        );
        let fewer = OLD.replace("steps = 20", "steps = 10");
        let e = check_config_changes(OLD, &fewer).unwrap_err().to_string();
        assert!(e.contains("train.steps: 20 -> 10"), "{e}");
        let lr = OLD
            .replace("lr = 0.1", "lr = 0.2")
            .replace("steps = 20", "steps = 30");
        let e = check_config_changes(OLD, &lr).unwrap_err().to_string();
        assert!(
            e.contains("train.lr: 0.1 -> 0.2") && !e.contains("train.steps"),
            "{e}"
        );
        // Same global batch over more ranks: accepted; another global batch: refused.
        let four = OLD
            .replace("world_size = 2", "world_size = 4")
            .replace("batch_size = 2", "batch_size = 1");
        assert_eq!(check_config_changes(OLD, &four).unwrap().len(), 2);
        let bigger = OLD.replace("batch_size = 2", "batch_size = 4");
        assert!(check_config_changes(OLD, &bigger).is_err());
    }
}
