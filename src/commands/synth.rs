//! `kiln synth`: the instruction synthesizer over a JSONL of raw texts, on a Hugging Face
//! directory or a kiln checkpoint.

use anyhow::{bail, Result};

use super::device::{self, DeviceBackend, OnDevice, Placement};
use super::set_threads;
use crate::backend::BufKind;
use crate::cli::SynthArgs;
use crate::data::input::Filter;
use crate::model::batched::{Engine, GenLimits, GenPlan};
use crate::model::generate::Sampling;
use crate::model::Model;
use crate::synth::{SynthOptions, SynthStats, TextSource};
use crate::train::setup::{open_model, OpenedModel};

pub fn synth(a: SynthArgs) -> Result<()> {
    device::check(a.device)?;
    // Name a missing input or a bad filter before the model is loaded.
    crate::data::input::expand(&a.input)?;
    let filters = a
        .filter
        .iter()
        .map(|f| Filter::parse(f))
        .collect::<Result<Vec<_>>>()?;
    set_threads(a.threads);
    let m = open_model(&a.model)?;
    // A Mistral model's sliding window is applied by the KV cache, so the context may pass it.
    let limit = m.mcfg.max_seq_len;
    let context = match a.context {
        Some(c) => c,
        None => 4096.min(limit),
    };
    let opts = SynthOptions {
        input: TextSource {
            inputs: a.input.clone(),
            format: a.format,
            field: a.field.clone(),
            filters,
        },
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
    let limits = GenLimits {
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
    let work = Synthesize {
        m,
        limits,
        opts: &opts,
    };
    let s = device::on_device(Placement::new(a.device), work)?;
    eprintln!(
        "synth: {} texts{} in {} chains -> {} records, {} pairs ({:.2} per text), {} few-shot prompts, {} too long, {} bad line(s); {} tokens generated in {:.1}s{} -> {}",
        s.texts,
        if a.filter.is_empty() {
            String::new()
        } else {
            format!(" ({} records dropped by --filter)", s.filtered)
        },
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

/// The synthesizer on the chosen backend, after checking its generation plan fits.
struct Synthesize<'a> {
    m: OpenedModel,
    limits: GenLimits,
    opts: &'a SynthOptions,
}

impl OnDevice for Synthesize<'_> {
    type Out = SynthStats;
    fn run<B: DeviceBackend>(self, be: &B) -> Result<SynthStats> {
        eprintln!("backend: {}", be.name());
        let act = be.elem_bytes(BufKind::Act);
        let plan = GenPlan::new(&self.m.mcfg, &self.limits, act, act);
        eprintln!("{}", plan.describe(&self.limits));
        if let Some(mem) = be.device_memory_bytes() {
            if plan.total() > 0.9 * mem {
                let per_slot = plan.kv_cache / self.limits.slots as f64;
                let room = 0.9 * mem - plan.weights - plan.activations;
                bail!(
                    "the generation plan needs {:.1} GB but the device has {:.1} GB: lower --batch (about {} slots fit) or --prefill-tokens",
                    plan.total() / 1e9,
                    mem / 1e9,
                    (room / per_slot).floor().max(0.0)
                );
            }
        }
        let model = Model::for_inference(be, &self.m.mcfg, &self.m.params);
        drop(self.m.params);
        let stop: Vec<u32> = self.m.tok.eos().into_iter().collect();
        let mut engine = Engine::new(be, &model, self.limits, stop)?;
        crate::synth::synthesize(&mut engine, &self.m.tok, self.opts)
    }
}
