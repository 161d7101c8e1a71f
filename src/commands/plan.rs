//! `kiln plan`: the memory plan of a config, without allocating anything.

use anyhow::Result;

use crate::backend::cpu::system_memory_bytes;
use crate::cli::{Device, PlanArgs};
use crate::config::Config;
use crate::data::tokenizer::Tokenizer;
use crate::train::memory::{check, plan, Setting, Widths};

pub fn plan_cmd(a: PlanArgs) -> Result<()> {
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
    let setting = Setting::of(&cfg);
    let p = plan(&m, &setting, widths, available);
    // The same run at other world sizes and ZeRO stages, for choosing a setting.
    let mut worlds = vec![t.world_size, 4, 8];
    worlds.sort_unstable();
    worlds.dedup();
    eprintln!(
        "per-device total by world size and ZeRO stage (train.recompute = {}):",
        match t.recompute {
            crate::model::Recompute::None => "\"none\"",
            crate::model::Recompute::Norms => "\"norms\"",
            crate::model::Recompute::Full => "\"full\"",
        }
    );
    for &world in &worlds {
        let cells: Vec<String> = (0..=3u8)
            .map(|stage| {
                let q = plan(
                    &m,
                    &Setting {
                        world,
                        zero_stage: stage,
                        data_parallel: world > 1,
                        ..setting
                    },
                    widths,
                    available,
                );
                let fits = if available <= 0.0 {
                    ""
                } else if q.total() <= available {
                    " fits"
                } else {
                    " does not fit"
                };
                format!("ZeRO-{stage} {:.1} GB{fits}", q.total() / 1e9)
            })
            .collect();
        eprintln!("  world {world:>3}: {}", cells.join(", "));
    }
    check(&p, t.world_size, t.zero_stage, cfg.data.batch_size)
}
