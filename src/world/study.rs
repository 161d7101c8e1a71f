//! `kiln experiment world --study …`: the paper's open questions on the synthetic world, each
//! over several seeds.
//!
//! `finetune` — a fair vanilla arm. Vanilla pre-training never sees the question format, so part
//! of its held-out score is format. Beside vanilla and instruction pre-training (the main
//! experiment's arms) it trains *vanilla + instruction tuning*: vanilla pre-training on
//! (1 − f) of the token budget, exported to a Hugging Face directory, then instruction tuning from
//! it on the training people's question–answer pairs (loss on the answers; the world's
//! `qa_sft` shard) for the remaining f — the usual pipeline that instruction pre-training argues
//! against, at the same total tokens. Physics of Language Models 3.1 (Allen-Zhu & Li) reports 9.7%
//! held-out QA for pre-train-then-fine-tune against 86.6% for mixed training on bioS single (one
//! biography per person), and 96.6% for pre-train-then-fine-tune once every person has five
//! biographies with shuffled sentences (multi5+permute), as this world's people have.
//!
//! `efficiency` — data efficiency. Vanilla, vanilla + instruction tuning and instruction
//! pre-training at several token budgets (shares of the configs' `train.steps`, each a run with
//! its own schedule) and two mixtures (the augmented records' share of the tokens: 1:1 as the main
//! experiment, and 1/5 as the paper's from-scratch recipe), scored on the held-out people: how
//! many tokens vanilla needs to match instruction pre-training, if it ever does, and where the
//! two pipelines that teach the question format cross.
//!
//! `ablation` — which instructions matter. Instruction pre-training as in the main experiment, and
//! again without the pairs of one attribute category in the augmented records (one run per
//! category left out), all scored on the held-out people's questions per category: does
//! extracting an attribute need pairs about that attribute, or does the skill transfer?

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::experiment::{
    load_pair, train_or_reuse, write_outputs, ArmResult, Options, Scorer, Trainer,
};
use super::files::QA_SFT;
use super::{Attribute, LeftOut};
use crate::config::Config;
use crate::data::loader::SourceSpec;

/// Instruction tuning's peak learning rate as a share of pre-training's.
const FT_LR_SCALE: f64 = 0.25;

/// One seed's arms.
#[derive(Serialize)]
pub struct SeedResult {
    pub seed: u64,
    pub arms: Vec<ArmResult>,
}

/// One arm's score on one task over the seeds.
#[derive(Serialize)]
pub struct Spread {
    pub arm: String,
    pub task: String,
    /// Exact match (QA tasks) or accuracy (multiple choice), one per seed in seed order.
    pub values: Vec<f64>,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

#[derive(Serialize)]
pub struct StudyResults {
    pub study: &'static str,
    pub world: serde_json::Value,
    pub model: serde_json::Value,
    /// `finetune`: the share of the budget spent on instruction tuning, and its learning rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ft_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ft_lr: Option<f64>,
    /// `efficiency`: the token budgets (shares of train.steps) and the augmented shares.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ratios: Vec<f64>,
    pub seeds: Vec<SeedResult>,
    pub summary: Vec<Spread>,
}

/// The arms' display names, in table order.
const VANILLA: &str = "vanilla";
const IPT: &str = "instruction pre-training";
const PT_FT: &str = "vanilla + instruction tuning";

/// The vanilla pre-training run and the instruction-tuning run that starts from it: the same
/// model and seeds as `vanilla`, (1 − f) and f of its steps.
/// The run directories of vanilla + instruction tuning's two phases, beside each other.
const PT_DIR: &str = "vanilla-pt";
const FT_DIR: &str = "vanilla-ft";

fn finetune_configs(vanilla: &Config, f: f64, dir: &Path) -> Result<(Config, Config)> {
    let steps = vanilla.train.steps;
    if steps < 2 {
        bail!(
            "{}: vanilla + instruction tuning needs at least 2 steps (one to pre-train, one to tune), not {steps}",
            dir.display()
        );
    }
    let ft_steps = ((steps as f64 * f).round() as u64).clamp(1, steps - 1);
    let mut pt = vanilla.clone();
    pt.train.steps = steps - ft_steps;
    pt.train.warmup_steps = pt.train.warmup_steps.min(pt.train.steps);
    pt.train.out_dir = dir.join(PT_DIR);

    let world = vanilla.world.as_ref().expect("checked by load_pair");
    let mut ft = vanilla.clone();
    ft.train.steps = ft_steps;
    ft.train.warmup_steps = (ft_steps / 10)
        .max(1)
        .min(vanilla.train.warmup_steps.max(1));
    ft.train.lr = vanilla.train.lr * FT_LR_SCALE;
    ft.train.out_dir = dir.join(FT_DIR);
    ft.data.sources = vec![SourceSpec {
        name: QA_SFT.into(),
        path: world
            .dir
            .join(format!("shards/{QA_SFT}_*.kiln"))
            .display()
            .to_string(),
        weight: 1.0,
    }];
    let model = ft
        .model
        .as_mut()
        .context("the experiment configs need a [model] section")?;
    model.init_from = Some(format!("hf:{}", hf_dir(&pt.train.out_dir).display()));
    Ok((pt, ft))
}

/// `--ft-fraction`, checked.
fn ft_fraction(opts: &Options) -> Result<f64> {
    let f = opts.ft_fraction;
    if !(f > 0.0 && f < 1.0) {
        bail!("--ft-fraction {f}: must be between 0 and 1 (exclusive)");
    }
    Ok(f)
}

/// The arm `name`: vanilla pre-training on (1 − f) of `vanilla`'s steps, exported, then
/// instruction tuning from it for the rest (runs `dir/vanilla-pt`, `dir/vanilla-ft`, or identical
/// finished ones of another study); its steps, tokens and time are the two runs' sums, its scores
/// the tuned model's.
fn pretrain_then_tune(
    name: &str,
    vanilla: &Config,
    f: f64,
    dir: &Path,
    opts: &Options,
    train: &Trainer,
) -> Result<ArmResult> {
    let (pt, mut ft) = finetune_configs(vanilla, f, dir)?;
    let pre = train_or_reuse(&format!("{name}: pre-training"), &pt, &opts.out, train)?;
    // Tuning starts from the pre-training run used, this study's own or an identical one.
    ft.model
        .as_mut()
        .expect("finetune_configs sets it")
        .init_from = Some(format!("hf:{}", hf_dir(&pre.run_dir).display()));
    export_for_tuning(&pre.run_dir)?;
    let tuned = train_or_reuse(&format!("{name}: tuning"), &ft, &opts.out, train)?;
    Ok(ArmResult {
        name: name.into(),
        run_dir: tuned.run_dir,
        steps: pre.steps + tuned.steps,
        tokens: pre.tokens + tuned.tokens,
        train_seconds: pre.train_seconds + tuned.train_seconds,
        final_loss: tuned.final_loss,
        tasks: Vec::new(),
    })
}

/// Where a pre-training run's newest checkpoint is exported for instruction tuning to start from.
fn hf_dir(run: &Path) -> PathBuf {
    run.join("hf")
}

/// Export the run's newest checkpoint in fp32 to `run/hf` unless it is there (written beside and
/// renamed into place, so an interrupted export is redone, never half-read).
fn export_for_tuning(run: &Path) -> Result<()> {
    let dst = hf_dir(run);
    if dst.join("config.json").exists() {
        return Ok(());
    }
    let c = crate::train::setup::open_checkpoint(run)?;
    let tmp = run.join("hf.partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("{}: cannot remove", tmp.display()))?;
    }
    let opts = crate::hf::ExportOptions {
        bf16: false,
        shard_bytes: u64::MAX,
        tokenizer: Some(c.cfg.data.tokenizer.clone()),
        bos_token_id: c.tok.bos(),
        eos_token_id: c.tok.eos(),
        source: None,
    };
    crate::hf::export(
        &tmp,
        &c.mcfg,
        &crate::hf::named_tensors(&c.mcfg, c.params),
        &opts,
    )?;
    if dst.exists() {
        std::fs::remove_dir_all(&dst)
            .with_context(|| format!("{}: cannot remove", dst.display()))?;
    }
    std::fs::rename(&tmp, &dst).with_context(|| format!("{}: cannot write", dst.display()))?;
    eprintln!(
        "experiment: exported {} (step {}) -> {}",
        run.display(),
        c.step,
        dst.display()
    );
    Ok(())
}

/// `--study finetune`.
pub fn finetune(opts: &Options, train: &Trainer) -> Result<()> {
    let f = ft_fraction(opts)?;
    if opts.seeds == 0 {
        bail!("--seeds 0: at least one seed");
    }
    let mut seeds = Vec::new();
    let mut first: Option<Config> = None;
    for seed in 0..opts.seeds {
        let dir = opts.out.join(format!("seed{seed}"));
        let extra = [format!("train.seed={seed}"), format!("data.seed={seed}")];
        let (vanilla, ipt) = load_pair(opts, &dir, &extra)?;
        let arms = vec![
            train_or_reuse(VANILLA, &vanilla, &opts.out, train)?,
            train_or_reuse(IPT, &ipt, &opts.out, train)?,
            pretrain_then_tune(PT_FT, &vanilla, f, &dir, opts, train)?,
        ];
        first.get_or_insert(vanilla);
        seeds.push(SeedResult { seed, arms });
    }
    let vanilla = first.expect("at least one seed");
    let mut results = score_all("finetune", opts, &vanilla, seeds, None)?;
    results.ft_fraction = Some(f);
    results.ft_lr = Some(vanilla.train.lr * FT_LR_SCALE);
    write_results(
        opts,
        &results,
        &finetune_table(&results),
        &results.seeds[0].arms,
    )?;
    Ok(())
}

/// One run of the efficiency study: `cfg` at `budget` of its steps (warm-up scaled with it).
fn at_budget(cfg: &Config, budget: f64, out_dir: PathBuf) -> Config {
    let mut c = cfg.clone();
    let steps = ((cfg.train.steps as f64 * budget).round() as u64).max(1);
    c.train.steps = steps;
    c.train.warmup_steps = ((cfg.train.warmup_steps as f64 * budget).round() as u64)
        .max(1)
        .min(steps);
    c.train.out_dir = out_dir;
    c
}

/// The instruction pre-training config with the augmented records at `ratio` of the tokens and
/// the biographies at the rest.
fn with_ratio(ipt: &Config, ratio: f64) -> Result<Config> {
    let mut c = ipt.clone();
    let (mut raw, mut aug) = (false, false);
    for src in &mut c.data.sources {
        match src.name.as_str() {
            "raw" => {
                src.weight = 1.0 - ratio;
                raw = true;
            }
            "augmented" => {
                src.weight = ratio;
                aug = true;
            }
            _ => {}
        }
    }
    if !(raw && aug) {
        bail!("--study efficiency: the instruction pre-training config needs sources named \"raw\" and \"augmented\"");
    }
    Ok(c)
}

/// "instruction pre-training, 1/5 augmented".
fn ratio_name(ratio: f64) -> String {
    if (ratio - 0.5).abs() < 1e-9 {
        "instruction pre-training, 1:1".into()
    } else if ratio > 0.0 && ((1.0 / ratio).round() - 1.0 / ratio).abs() < 1e-9 {
        format!(
            "instruction pre-training, 1/{} augmented",
            (1.0 / ratio).round()
        )
    } else {
        format!("instruction pre-training, {:.0}% augmented", 100.0 * ratio)
    }
}

/// The arm of a run: its name and budget ("vanilla @ 0.25").
fn arm_at(name: &str, budget: f64) -> String {
    format!("{name} @ {budget}")
}

/// `--study efficiency`.
pub fn efficiency(opts: &Options, train: &Trainer) -> Result<()> {
    if opts.seeds == 0 {
        bail!("--seeds 0: at least one seed");
    }
    let f = ft_fraction(opts)?;
    if opts.budgets.is_empty() || opts.budgets.iter().any(|&b| !(b > 0.0 && b.is_finite())) {
        bail!(
            "--budgets {:?}: each must be a positive share of train.steps",
            opts.budgets
        );
    }
    if opts.ratios.is_empty() || opts.ratios.iter().any(|&r| !(r > 0.0 && r < 1.0)) {
        bail!(
            "--ratios {:?}: each must be between 0 and 1 (exclusive)",
            opts.ratios
        );
    }
    let mut seeds = Vec::new();
    let mut first: Option<Config> = None;
    for seed in 0..opts.seeds {
        let dir = opts.out.join(format!("seed{seed}"));
        let extra = [format!("train.seed={seed}"), format!("data.seed={seed}")];
        let (vanilla, ipt) = load_pair(opts, &dir, &extra)?;
        let mut arms = Vec::new();
        for &b in &opts.budgets {
            let bdir = dir.join(format!("budget{b}"));
            let v = at_budget(&vanilla, b, bdir.join("vanilla"));
            arms.push(train_or_reuse(&arm_at(VANILLA, b), &v, &opts.out, train)?);
            arms.push(pretrain_then_tune(
                &arm_at(PT_FT, b),
                &v,
                f,
                &bdir,
                opts,
                train,
            )?);
            for &r in &opts.ratios {
                let c = at_budget(&with_ratio(&ipt, r)?, b, bdir.join(format!("ipt-{r}")));
                arms.push(train_or_reuse(
                    &arm_at(&ratio_name(r), b),
                    &c,
                    &opts.out,
                    train,
                )?);
            }
        }
        first.get_or_insert(vanilla);
        seeds.push(SeedResult { seed, arms });
    }
    let vanilla = first.expect("at least one seed");
    let mut results = score_all("efficiency", opts, &vanilla, seeds, None)?;
    results.budgets = opts.budgets.clone();
    results.ft_fraction = Some(f);
    results.ft_lr = Some(vanilla.train.lr * FT_LR_SCALE);
    results.ratios = opts.ratios.clone();
    let table = efficiency_table(&results);
    // The curves of the largest budget's runs, and the scores against tokens.
    let largest = opts.budgets.iter().copied().fold(0.0, f64::max);
    let at_largest = format!(" @ {largest}");
    let arms = results.seeds[0]
        .arms
        .iter()
        .filter(|a| a.name.ends_with(&at_largest));
    write_results(opts, &results, &table, arms)?;
    let mut names = vec![VANILLA.to_string(), PT_FT.to_string()];
    names.extend(opts.ratios.iter().map(|&r| ratio_name(r)));
    for (task, what) in [
        ("heldout_qa", "held-out QA exact match"),
        ("heldout_mc", "held-out MC accuracy"),
    ] {
        let series: Vec<crate::plot::Series> = names
            .iter()
            .map(|n| crate::plot::Series {
                name: n.clone(),
                points: opts
                    .budgets
                    .iter()
                    .filter_map(|&b| {
                        let s = spread(&results, &arm_at(n, b), task)?;
                        Some((
                            tokens_at(&results, &arm_at(n, b)) as f64 / 1e6,
                            s.mean,
                            s.min,
                            s.max,
                        ))
                    })
                    .collect(),
            })
            .collect();
        let out = opts.out.join(format!("{task}_vs_tokens"));
        let (png, _) = crate::plot::scores(&series, what, "tokens (millions)", &out)?;
        eprintln!("wrote {} (and .svg)", png.display());
    }
    Ok(())
}

/// The tokens of the first seed's run of `arm`.
fn tokens_at(r: &StudyResults, arm: &str) -> u64 {
    r.seeds
        .first()
        .and_then(|x| x.arms.iter().find(|a| a.name == arm))
        .map_or(0, |a| a.tokens)
}

fn efficiency_table(r: &StudyResults) -> String {
    let mut names = vec![VANILLA.to_string(), PT_FT.to_string()];
    names.extend(r.ratios.iter().map(|&x| ratio_name(x)));
    let mut s = format!(
        "Held-out people: facts seen only in biographies. Mean over {} seed(s) (range); each budget is a run of its own schedule. Vanilla + instruction tuning: {:.0}% of each budget pre-training, {:.0}% tuning on the training people's QA pairs.\n",
        r.seeds.len(),
        100.0 * (1.0 - r.ft_fraction.unwrap_or(0.0)),
        100.0 * r.ft_fraction.unwrap_or(0.0),
    );
    for (task, what) in [
        ("heldout_qa", "held-out QA exact match"),
        ("heldout_mc", "held-out MC accuracy"),
    ] {
        s.push_str(&format!("\n{what}:\n\n| arm |"));
        for &b in &r.budgets {
            s.push_str(&format!(" {} |", count(tokens_at(r, &arm_at(VANILLA, b)))));
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|".repeat(r.budgets.len()));
        s.push('\n');
        for n in &names {
            s.push_str(&format!("| {n} |"));
            for &b in &r.budgets {
                s.push_str(&format!(" {} |", cell(r, &arm_at(n, b), task)));
            }
            s.push('\n');
        }
        // How far vanilla gets, and the smallest budget at which each mixture is already past it.
        let best = r
            .budgets
            .iter()
            .filter_map(|&b| {
                let x = spread(r, &arm_at(VANILLA, b), task)?;
                Some((x.mean, b))
            })
            .fold(None, |acc: Option<(f64, f64)>, x| match acc {
                Some(a) if a.0 >= x.0 => Some(a),
                _ => Some(x),
            });
        if let Some((v, vb)) = best {
            s.push_str(&format!(
                "\nVanilla's best: {:.1}% at {} tokens.",
                100.0 * v,
                count(tokens_at(r, &arm_at(VANILLA, vb)))
            ));
            for n in &names[1..] {
                let past = r
                    .budgets
                    .iter()
                    .copied()
                    .find(|&b| spread(r, &arm_at(n, b), task).is_some_and(|x| x.mean > v));
                match past {
                    Some(b) => s.push_str(&format!(
                        " {n} passes it at {} tokens.",
                        count(tokens_at(r, &arm_at(n, b)))
                    )),
                    None => s.push_str(&format!(" {n} does not pass it.")),
                }
            }
            s.push('\n');
        }
    }
    s
}

/// Score every arm of every seed on the world's `tasks` (None: the main experiment's) and gather
/// the study's results (its own settings left empty for the caller).
fn score_all(
    study: &'static str,
    opts: &Options,
    vanilla: &Config,
    mut seeds: Vec<SeedResult>,
    tasks: Option<&[String]>,
) -> Result<StudyResults> {
    let world = vanilla.world.as_ref().expect("checked by load_pair");
    let scorer = match tasks {
        Some(t) => Scorer::with_tasks(&world.dir, t, opts.max_items, opts.batch)?,
        None => Scorer::new(&world.dir, opts.max_items, opts.batch)?,
    };
    for s in &mut seeds {
        for arm in &mut s.arms {
            scorer.score(arm)?;
        }
    }
    Ok(StudyResults {
        study,
        world: serde_json::to_value(world)?,
        model: serde_json::to_value(&vanilla.model)?,
        ft_fraction: None,
        ft_lr: None,
        budgets: Vec::new(),
        ratios: Vec::new(),
        summary: summarize(&seeds),
        seeds,
    })
}

/// The headline score of a task: exact match for QA, accuracy for multiple choice.
fn headline(t: &crate::eval::TaskScores) -> Option<f64> {
    t.exact_match.or(t.acc_mean_token)
}

/// Every arm's score on every task over the seeds (arms and tasks in the first seed's order).
fn summarize(seeds: &[SeedResult]) -> Vec<Spread> {
    let mut out = Vec::new();
    let Some(first) = seeds.first() else {
        return out;
    };
    for arm in &first.arms {
        for task in &arm.tasks {
            let values: Vec<f64> = seeds
                .iter()
                .filter_map(|s| s.arms.iter().find(|a| a.name == arm.name))
                .filter_map(|a| a.tasks.iter().find(|t| t.task == task.task))
                .filter_map(headline)
                .collect();
            if values.is_empty() {
                continue;
            }
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            out.push(Spread {
                arm: arm.name.clone(),
                task: task.task.clone(),
                values,
                mean,
                min,
                max,
            });
        }
    }
    out
}

/// The spread of `arm`'s score on `task`, if it was scored.
fn spread<'a>(r: &'a StudyResults, arm: &str, task: &str) -> Option<&'a Spread> {
    r.summary.iter().find(|s| s.arm == arm && s.task == task)
}

/// "91.9% (90.8–93.0)": the mean over the seeds and their range.
fn cell(r: &StudyResults, arm: &str, task: &str) -> String {
    match spread(r, arm, task) {
        Some(s) if s.values.len() > 1 => format!(
            "{:.1}% ({:.1}–{:.1})",
            100.0 * s.mean,
            100.0 * s.min,
            100.0 * s.max
        ),
        Some(s) => format!("{:.1}%", 100.0 * s.mean),
        None => "-".into(),
    }
}

fn finetune_table(r: &StudyResults) -> String {
    let mut s = format!(
        "Held-out people: facts seen only in biographies. Mean over {} seed(s) (range). Vanilla + instruction tuning: {:.0}% of the tokens pre-training, {:.0}% tuning on the training people's QA pairs (loss on the answers, peak lr {}).\n\n",
        r.seeds.len(),
        100.0 * (1.0 - r.ft_fraction.unwrap_or(0.0)),
        100.0 * r.ft_fraction.unwrap_or(0.0),
        r.ft_lr.unwrap_or(0.0)
    );
    s.push_str("| arm | tokens | held-out QA exact match | held-out MC accuracy | held-out facts, biography-style MC | training-people QA exact match |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|\n");
    let tokens = |arm: &str| {
        r.seeds
            .first()
            .and_then(|x| x.arms.iter().find(|a| a.name == arm))
            .map_or(0, |a| a.tokens)
    };
    for arm in [VANILLA, PT_FT, IPT] {
        s.push_str(&format!(
            "| {arm} | {} | {} | {} | {} | {} |\n",
            count(tokens(arm)),
            cell(r, arm, "heldout_qa"),
            cell(r, arm, "heldout_mc"),
            cell(r, arm, "heldout_cloze"),
            cell(r, arm, "train_qa"),
        ));
    }
    // Their bioS single has one biography per person; multi5+permute five, sentences shuffled,
    // as this world's biographies are (bios_per_person, shuffled sentence order).
    s.push_str("| Physics of LM 3.1 (bioS single), pre-train then fine-tune | | 9.7% | | | |\n");
    s.push_str(
        "| Physics of LM 3.1 (bioS multi5+permute), pre-train then fine-tune | | 96.6% | | | |\n",
    );
    s.push_str("| Physics of LM 3.1 (bioS single), mixed training | | 86.6% | | | |\n");
    s
}

/// "6.14 M", "5.1 K".
fn count(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.2} M", n as f64 / 1e6)
    } else {
        format!("{:.1} K", n as f64 / 1e3)
    }
}

/// results.json, results.md and the training curves of `arms` under `--out`.
fn write_results<'a>(
    opts: &Options,
    results: &StudyResults,
    table: &str,
    arms: impl IntoIterator<Item = &'a ArmResult>,
) -> Result<()> {
    let mut curves = Vec::new();
    for arm in arms {
        curves.extend(arm_curves(arm)?);
    }
    write_outputs(&opts.out, results, table, &curves)
}

/// An arm's training curves: its run, or for vanilla + instruction tuning the pre-training run
/// and then the tuning run, drawn from the step where pre-training ended.
fn arm_curves(arm: &ArmResult) -> Result<Vec<crate::plot::RunCurves>> {
    let run = crate::plot::read_run(&arm.run_dir)?;
    if arm.run_dir.file_name() != Some(FT_DIR.as_ref()) {
        return Ok(vec![run]);
    }
    let pre = crate::plot::read_run(&arm.run_dir.with_file_name(PT_DIR))?;
    let start = pre.last_step();
    Ok(vec![pre, run.after(start)])
}

/// The ablation's arms: instruction pre-training with everything, and without one category's
/// pairs or one layout.
const ALL_CATEGORIES: &str = "instruction pre-training, everything";
fn without(left: LeftOut) -> String {
    match left {
        LeftOut::Category(a) => format!("instruction pre-training without {}", a.as_str()),
        LeftOut::Layout(_) => format!(
            "instruction pre-training without the {} layout",
            &left.key()["layout-".len()..]
        ),
    }
}

/// `--study ablation`.
pub fn ablation(opts: &Options, train: &Trainer) -> Result<()> {
    if opts.seeds == 0 {
        bail!("--seeds 0: at least one seed");
    }
    let mut left = Vec::new();
    for key in opts.leave_out.iter().filter(|k| !k.is_empty()) {
        let Some(a) = Attribute::from_key(key) else {
            let keys: Vec<&str> = Attribute::ALL.iter().map(|a| a.as_str()).collect();
            bail!("--leave-out {key}: not an attribute ({})", keys.join(", "));
        };
        left.push(LeftOut::Category(a));
    }
    left.extend(opts.leave_out_layouts.iter().map(|&l| LeftOut::Layout(l)));
    if left.is_empty() {
        bail!("--leave-out / --leave-out-layout: name at least one attribute or layout");
    }
    let mut seeds = Vec::new();
    let mut first: Option<Config> = None;
    for seed in 0..opts.seeds {
        let dir = opts.out.join(format!("seed{seed}"));
        let extra = [format!("train.seed={seed}"), format!("data.seed={seed}")];
        let (vanilla, ipt) = load_pair(opts, &dir, &extra)?;
        let world = vanilla.world.clone().expect("checked by load_pair");
        let mut arms = vec![train_or_reuse(ALL_CATEGORIES, &ipt, &opts.out, train)?];
        for &l in &left {
            let glob = super::ensure_ablation_shards(&world, &ipt, l)?;
            let mut c = ipt.clone();
            let mut found = false;
            for src in &mut c.data.sources {
                if src.name == "augmented" {
                    src.path = glob.clone();
                    found = true;
                }
            }
            if !found {
                bail!("--study ablation: the instruction pre-training config needs a source named \"augmented\"");
            }
            c.train.out_dir = dir.join(format!("ipt-no-{}", l.key()));
            arms.push(train_or_reuse(&without(l), &c, &opts.out, train)?);
        }
        first.get_or_insert(vanilla);
        seeds.push(SeedResult { seed, arms });
    }
    let vanilla = first.expect("at least one seed");
    let mut tasks: Vec<String> = Attribute::ALL
        .iter()
        .map(|a| format!("heldout_qa_{}", a.as_str()))
        .collect();
    tasks.push("heldout_qa".into());
    let results = score_all("ablation", opts, &vanilla, seeds, Some(&tasks))?;
    let table = ablation_table(&results, &left);
    write_results(opts, &results, &table, &results.seeds[0].arms)?;
    Ok(())
}

fn ablation_table(r: &StudyResults, left: &[LeftOut]) -> String {
    let mut s = format!(
        "Held-out QA exact match per attribute category (held-out people: facts seen only in biographies). Mean over {} seed(s) (range); the category a run left out of its augmented records in bold.\n\n| arm |",
        r.seeds.len()
    );
    for a in Attribute::ALL {
        s.push_str(&format!(" {} |", a.as_str()));
    }
    s.push_str(" all | left out | the others |\n|---|");
    s.push_str(&"---:|".repeat(Attribute::ALL.len() + 3));
    s.push('\n');
    let mean_of = |arm: &str, a: Attribute| {
        spread(r, arm, &format!("heldout_qa_{}", a.as_str())).map(|x| x.mean)
    };
    let mut rows: Vec<(String, Option<Attribute>)> = vec![(ALL_CATEGORIES.into(), None)];
    rows.extend(left.iter().map(|&l| {
        let category = match l {
            LeftOut::Category(a) => Some(a),
            LeftOut::Layout(_) => None,
        };
        (without(l), category)
    }));
    for (arm, left) in rows {
        s.push_str(&format!("| {arm} |"));
        for a in Attribute::ALL {
            let c = cell(r, &arm, &format!("heldout_qa_{}", a.as_str()));
            if Some(a) == left {
                s.push_str(&format!(" **{c}** |"));
            } else {
                s.push_str(&format!(" {c} |"));
            }
        }
        let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v));
        let others: Vec<f64> = Attribute::ALL
            .iter()
            .filter(|&&a| Some(a) != left)
            .filter_map(|&a| mean_of(&arm, a))
            .collect();
        let others_mean =
            (!others.is_empty()).then(|| others.iter().sum::<f64>() / others.len() as f64);
        s.push_str(&format!(
            " {} | {} | {} |\n",
            cell(r, &arm, "heldout_qa"),
            pct(left.and_then(|a| mean_of(&arm, a))),
            pct(others_mean)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_metrics(dir: &Path, steps: std::ops::RangeInclusive<u64>, val_at: u64) {
        std::fs::create_dir_all(dir).unwrap();
        let lines: Vec<String> = steps
            .map(|s| {
                let val = if s == val_at {
                    format!(",\"val_loss\":{}", 1.0 / s as f64)
                } else {
                    String::new()
                };
                format!(
                    "{{\"step\":{s},\"loss\":{},\"lr\":0.001,\"grad_norm\":1.0,\"tokens_per_s\":1.0,\"mfu\":0.1,\"tokens\":{},\"elapsed_s\":1.0{val}}}",
                    2.0 / s as f64,
                    s * 64
                )
            })
            .collect();
        std::fs::write(dir.join("metrics.jsonl"), lines.join("\n")).unwrap();
    }

    fn arm(run_dir: PathBuf) -> ArmResult {
        ArmResult {
            name: "arm".into(),
            run_dir,
            steps: 0,
            tokens: 0,
            train_seconds: 0.0,
            final_loss: None,
            tasks: Vec::new(),
        }
    }

    #[test]
    fn the_tuning_run_is_drawn_after_its_pre_training_and_other_arms_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_metrics(&d.join(PT_DIR), 1..=27, 20);
        write_metrics(&d.join(FT_DIR), 1..=3, 2);
        write_metrics(&d.join("ipt-0.5"), 1..=30, 30);
        let tuned = arm_curves(&arm(d.join(FT_DIR))).unwrap();
        assert_eq!(tuned.len(), 2);
        assert_eq!(tuned[0].name, PT_DIR);
        assert_eq!(tuned[0].train.first().unwrap().0, 1.0);
        assert_eq!(tuned[0].last_step(), 27.0);
        let steps: Vec<f64> = tuned[1].train.iter().map(|p| p.0).collect();
        assert_eq!(steps, [28.0, 29.0, 30.0]);
        assert_eq!(tuned[1].val, [(29.0, 0.5)]);
        assert_eq!(tuned[1].train[0].1, 2.0, "the losses stay as logged");
        let other = arm_curves(&arm(d.join("ipt-0.5"))).unwrap();
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].train.first().unwrap().0, 1.0);
        assert_eq!(other[0].last_step(), 30.0);
    }
}
