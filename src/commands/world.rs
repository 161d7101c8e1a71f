//! `kiln world` (build the synthetic world's data) and `kiln experiment world` (the paper's
//! comparison on it).

use anyhow::{bail, Result};

use super::device::{self, Placement};
use super::set_threads;
use super::train::TrainOnDevice;
use crate::cli::{ExperimentWorldArgs, WorldArgs};
use crate::config::Config;
use crate::world::ensure_world;
use crate::world::experiment::Study;

pub fn world(a: WorldArgs) -> Result<()> {
    let cfg = Config::load(a.config.config.as_deref(), &a.config.overrides)?;
    let Some(w) = cfg.world.clone() else {
        bail!("the config has no [world] section: nothing to generate");
    };
    ensure_world(&w, &cfg, a.force, !a.no_prep)
}

pub fn experiment_world(a: ExperimentWorldArgs) -> Result<()> {
    device::check(a.device)?;
    let opts = crate::world::experiment::Options {
        vanilla: a.vanilla,
        ipt: a.ipt,
        overrides: a.overrides,
        out: a.out.unwrap_or_else(|| match a.study {
            Study::Main => "runs/experiment-world".into(),
            Study::Finetune => "runs/experiment-world-finetune".into(),
            Study::Efficiency => "runs/experiment-world-efficiency".into(),
            Study::Ablation => "runs/experiment-world-ablation".into(),
        }),
        max_items: a.max_items,
        batch: a.batch,
        study: a.study,
        seeds: a.seeds,
        ft_fraction: a.ft_fraction,
        budgets: a.budgets,
        ratios: a.ratios,
        leave_out: a.leave_out,
        leave_out_layouts: a.leave_out_layout,
    };
    let device = a.device;
    crate::world::experiment::run(&opts, &|cfg, resume| {
        // The first call sizes the global pool; later calls leave it as it is.
        set_threads(cfg.train.threads);
        let at = Placement {
            attention: Some((cfg.train.attention, cfg.train.deterministic)),
            measure_memory: true,
            ..Placement::new(device)
        };
        device::on_device(at, TrainOnDevice::single(cfg, resume, None))
    })?;
    Ok(())
}
