//! `kiln train`: one process, one rank of a launched data-parallel run (`kiln launch`, torchrun,
//! srun), or every rank as a thread of this process (`--ranks-as-threads`, CPU).

use anyhow::{bail, Result};

use super::device::{self, DeviceBackend, OnDevice, Placement};
use super::set_threads;
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::cli::{Device, TrainArgs};
use crate::config::Config;
use crate::dist::DistEnv;
use crate::train::run_dir;
use crate::train::trainer::{Resume, TrainSummary};
use crate::world::ensure_world;

pub fn train(a: TrainArgs) -> Result<()> {
    device::check(a.device)?;
    let mut cfg = Config::load(a.config.config.as_deref(), &a.config.overrides)?;
    if cfg.model.is_none() {
        bail!("the config has no [model] section: nothing to train");
    }
    // One rank of launched processes (kiln launch, torchrun, srun)? Then the data-parallel path
    // runs even with one rank (which checks it against the plain run).
    let env = DistEnv::from_env()?;
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
    if a.ranks_as_threads && a.device != Device::Cpu {
        bail!("--ranks-as-threads runs on the CPU backend only (--device cpu)");
    }
    let lead = env.as_ref().is_none_or(|e| e.rank == 0);
    // Before building any data: a fresh run must not take over another run's directory.
    if lead && a.resume.is_none() {
        claim_fresh_run_dir(&cfg.train.out_dir, a.overwrite)?;
    }
    if env.is_none() {
        prepare_data(&cfg, lead)?;
    }
    let resume = match a.resume.as_deref() {
        None => None,
        Some("latest") => Some(Resume::Latest),
        Some(s) => Some(Resume::Step(s.parse().map_err(|_| {
            anyhow::anyhow!("--resume {s:?}: expected a step number or nothing")
        })?)),
    };
    set_threads(cfg.train.threads);
    let s = if a.ranks_as_threads {
        eprintln!(
            "backend: {} x {} ranks as threads",
            CpuBackend::<f32>::new().name(),
            cfg.train.world_size
        );
        crate::train::ranks::train_ranks_as_threads(&cfg, resume, a.until)?
    } else {
        let at = Placement {
            device: a.device,
            ordinal: env.as_ref().map_or(0, |e| e.local_rank),
            attention: Some((cfg.train.attention, cfg.train.deterministic)),
            measure_memory: true,
        };
        let work = TrainOnDevice {
            cfg: &cfg,
            resume,
            until: a.until,
            env: env.as_ref(),
            lead,
        };
        device::on_device(at, work)?
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

/// A fresh run never silently overwrites another's files: refuse a directory that holds a previous
/// run's checkpoints or metrics, unless `overwrite` (then remove exactly those). Checked under the
/// directory's lock, so a live run's files are never touched; the trainer takes the lock again.
fn claim_fresh_run_dir(out: &std::path::Path, overwrite: bool) -> Result<()> {
    let _lock = run_dir::lock(out)?;
    let found = run_dir::previous_run_files(out)?;
    // A run that failed while starting leaves config.toml and an empty metrics.jsonl: not a run.
    let holds_run = found.iter().any(|p| match p.file_name() {
        Some(n) if n == "config.toml" => false,
        Some(n) if n == "metrics.jsonl" => std::fs::metadata(p).is_ok_and(|m| m.len() > 0),
        _ => true,
    });
    if overwrite {
        let n = run_dir::remove_previous_run(out)?;
        if n > 0 {
            eprintln!(
                "--overwrite: removed the previous run's {} from {}",
                run_dir::describe(&found),
                out.display()
            );
        }
    } else if holds_run {
        bail!(
            "{} holds another run ({}): continue it with --resume, or start over with --overwrite",
            out.display(),
            run_dir::describe(&found)
        );
    }
    Ok(())
}

/// Rank 0 builds missing data; launched ranks wait for it at a barrier after the rendezvous.
fn prepare_data(cfg: &Config, lead: bool) -> Result<()> {
    match &cfg.world {
        Some(w) if lead => ensure_world(w, cfg, false, true),
        _ => Ok(()),
    }
}

/// One training run on the chosen backend: alone, or as the rank `env` describes.
pub struct TrainOnDevice<'a> {
    pub cfg: &'a Config,
    pub resume: Option<Resume>,
    pub until: Option<u64>,
    pub env: Option<&'a DistEnv>,
    /// This process reports (rank 0, or not launched).
    pub lead: bool,
}

impl<'a> TrainOnDevice<'a> {
    /// A single-process run.
    pub fn single(cfg: &'a Config, resume: Option<Resume>, until: Option<u64>) -> Self {
        TrainOnDevice {
            cfg,
            resume,
            until,
            env: None,
            lead: true,
        }
    }
}

impl OnDevice for TrainOnDevice<'_> {
    type Out = TrainSummary;

    fn run<B: DeviceBackend>(self, be: &B) -> Result<TrainSummary> {
        let cfg = self.cfg;
        if self.lead {
            eprintln!("backend: {}", be.name());
            for line in be.training_notes(cfg) {
                eprintln!("{line}");
            }
        }
        match self.env {
            None => crate::train::trainer::train(be, cfg, self.resume, self.until),
            Some(e) => {
                let comm = be.join(e, cfg)?;
                prepare_data(cfg, self.lead)?;
                comm.barrier()?;
                crate::train::trainer::train_dist(be, cfg, self.resume, self.until, Some(&*comm))
            }
        }
    }
}
