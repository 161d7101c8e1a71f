//! `kiln experiment world`: the paper's claim in miniature on the synthetic world.
//!
//! Two runs with the same model, the same seed and the same token budget: *vanilla* pre-trains on
//! the biographies only; *instruction pre-training* mixes in the augmented records (biographies
//! followed by templated question-answer pairs) of the training half of the people. Both are then
//! asked about the held-out half, whose facts they saw only as biographies, and scored by exact
//! match; multiple-choice accuracy and the training half's questions are reported beside it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::backend::cpu::CpuBackend;
use crate::config::Config;
use crate::eval::TaskScores;
use crate::model::Model;
use crate::train::checkpoint;
use crate::train::trainer::Resume;

/// The embedded experiment configs (configs/world-*.toml, compiled into the binary).
pub const WORLD_VANILLA_TOML: &str = include_str!("../../configs/world-vanilla.toml");
pub const WORLD_IPT_TOML: &str = include_str!("../../configs/world-ipt.toml");

pub struct Options {
    /// Config files replacing the embedded ones (vanilla, instruction pre-training).
    pub vanilla: Option<PathBuf>,
    pub ipt: Option<PathBuf>,
    /// `--set` overrides applied to both configs.
    pub overrides: Vec<String>,
    /// Results directory; the runs go to `<out>/vanilla` and `<out>/ipt`.
    pub out: PathBuf,
    /// Score at most this many items per task (0 = all).
    pub max_items: usize,
    pub batch: usize,
    /// Which comparison to run.
    pub study: Study,
    /// Seeds per arm (`train.seed` and `data.seed` = 0, 1, …) for the studies.
    pub seeds: u64,
    /// `--study finetune`: the share of the token budget spent on instruction tuning.
    pub ft_fraction: f64,
    /// `--study efficiency`: token budgets as shares of train.steps, and the augmented records'
    /// shares of the tokens.
    pub budgets: Vec<f64>,
    pub ratios: Vec<f64>,
    /// `--study ablation`: the attribute categories left out, one run each (keys: `birth_city`),
    /// and the document layouts left out, one run each.
    pub leave_out: Vec<String>,
    pub leave_out_layouts: Vec<crate::data::augment::Layout>,
}

/// Which comparison `kiln experiment world` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Study {
    /// Vanilla against instruction pre-training, one seed.
    Main,
    /// A fair vanilla arm: vanilla pre-training then instruction tuning on the training people's
    /// question–answer pairs, with the same total tokens (`super::study`).
    Finetune,
    /// Data efficiency: vanilla, vanilla + instruction tuning and instruction pre-training (two
    /// mixtures) at several token budgets.
    Efficiency,
    /// Which instructions matter: instruction pre-training without one category's pairs or one
    /// layout, scored per category.
    Ablation,
}

/// One arm's outcome.
#[derive(Serialize)]
pub struct ArmResult {
    pub name: String,
    pub run_dir: PathBuf,
    pub steps: u64,
    pub tokens: u64,
    /// Training wall time of this invocation (0 when the finished run was reused).
    pub train_seconds: f64,
    pub final_loss: Option<f64>,
    pub tasks: Vec<TaskScores>,
}

#[derive(Serialize)]
pub struct Results {
    pub world: serde_json::Value,
    pub model: serde_json::Value,
    pub arms: Vec<ArmResult>,
    pub eval_seconds: f64,
}

/// The task files every arm is scored on: held-out people first (the experiment's point:
/// questions answered, questions as multiple choice, and the same facts as multiple choice after a
/// biography-style prefix — stored knowledge, whatever the question format), then the training
/// people's questions.
const TASKS: [&str; 4] = ["heldout_qa", "heldout_mc", "heldout_cloze", "train_qa"];

/// Trains one arm from scratch (`None`) or from its newest checkpoint.
pub(crate) type Trainer<'a> =
    dyn Fn(&Config, Option<Resume>) -> Result<crate::train::trainer::TrainSummary> + 'a;

pub fn run(opts: &Options, train: &Trainer) -> Result<()> {
    match opts.study {
        Study::Main => main(opts, train).map(|_| ()),
        Study::Finetune => super::study::finetune(opts, train),
        Study::Efficiency => super::study::efficiency(opts, train),
        Study::Ablation => super::study::ablation(opts, train),
    }
}

/// What the studies change in the embedded configs, before the user's `--set`: a 100-person world
/// of its own and 300 steps (1.2 M tokens) per arm, 4–5 minutes each on 2 CPU cores. The effect
/// still shows at this size (README).
pub(crate) const STUDY_SCALE: [&str; 4] = [
    "world.dir=\"data/world-study\"",
    "world.people=100",
    "train.steps=300",
    "train.warmup_steps=30",
];

/// The vanilla and instruction pre-training configs (embedded or the user's, with `--set` and
/// `extra` overrides), their runs under `dir/vanilla` and `dir/ipt`, checked to differ in their
/// data only; and the world, built where missing.
pub(crate) fn load_pair(opts: &Options, dir: &Path, extra: &[String]) -> Result<(Config, Config)> {
    let load = |path: &Option<PathBuf>, embedded: &str, name: &str, arm: &str| -> Result<Config> {
        // The studies run the embedded configs at study scale; the user's files run as written.
        let mut overrides: Vec<String> = match (path, opts.study) {
            (None, Study::Finetune | Study::Efficiency | Study::Ablation) => {
                STUDY_SCALE.iter().map(|s| s.to_string()).collect()
            }
            _ => Vec::new(),
        };
        overrides.extend_from_slice(&opts.overrides);
        overrides.extend_from_slice(extra);
        overrides.push(format!(
            "train.out_dir={:?}",
            dir.join(arm).display().to_string()
        ));
        match path {
            Some(p) => Config::load(Some(p), &overrides),
            None => Config::parse(&format!("{name} (embedded)"), embedded, &overrides),
        }
    };
    let vanilla = load(
        &opts.vanilla,
        WORLD_VANILLA_TOML,
        "configs/world-vanilla.toml",
        "vanilla",
    )?;
    let ipt = load(&opts.ipt, WORLD_IPT_TOML, "configs/world-ipt.toml", "ipt")?;
    check_controlled(&vanilla, &ipt)?;
    let Some(world) = &vanilla.world else {
        bail!("the experiment configs need a [world] section");
    };
    super::ensure_world(world, &vanilla, false, true)?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    Ok((vanilla, ipt))
}

/// Train one arm, or resume it, or reuse it when it is finished.
pub(crate) fn train_arm(name: &str, cfg: &Config, train: &Trainer) -> Result<ArmResult> {
    let dir = &cfg.train.out_dir;
    let resume = match resume_point(cfg)? {
        RunState::Fresh => None,
        RunState::Partial(step) => {
            eprintln!(
                "experiment: {name}: resuming {} from step {step}",
                dir.display()
            );
            Some(Resume::Latest)
        }
        RunState::Finished => {
            eprintln!(
                "experiment: {name}: {} is finished, reusing it",
                dir.display()
            );
            return Ok(ArmResult {
                name: name.into(),
                run_dir: dir.clone(),
                steps: cfg.train.steps,
                tokens: tokens(cfg),
                train_seconds: 0.0,
                final_loss: last_loss(dir),
                tasks: Vec::new(),
            });
        }
    };
    eprintln!("experiment: training {name} -> {}", dir.display());
    let t = Instant::now();
    let s = train(cfg, resume)?;
    Ok(ArmResult {
        name: name.into(),
        run_dir: dir.clone(),
        steps: cfg.train.steps,
        tokens: tokens(cfg),
        train_seconds: t.elapsed().as_secs_f64(),
        final_loss: s.last_loss.or_else(|| last_loss(dir)),
        tasks: Vec::new(),
    })
}

/// The world's task files, read once, and what scoring a run needs.
pub(crate) struct Scorer {
    be: CpuBackend<f32>,
    tasks: Vec<(String, Vec<crate::eval::Item>)>,
    batch: usize,
}

impl Scorer {
    /// The main tasks (`TASKS`).
    pub(crate) fn new(world_dir: &Path, max_items: usize, batch: usize) -> Result<Self> {
        let names: Vec<String> = TASKS.iter().map(|t| t.to_string()).collect();
        Self::with_tasks(world_dir, &names, max_items, batch)
    }

    /// The world's task files `tasks/{name}.jsonl`, in this order.
    pub(crate) fn with_tasks(
        world_dir: &Path,
        names: &[String],
        max_items: usize,
        batch: usize,
    ) -> Result<Self> {
        let tasks_dir = world_dir.join("tasks");
        let mut tasks = Vec::new();
        for task in names {
            let path = tasks_dir.join(format!("{task}.jsonl"));
            let mut items = crate::eval::read_tasks(&path)?;
            if max_items > 0 {
                items.truncate(max_items);
            }
            tasks.push((task.clone(), items));
        }
        Ok(Scorer {
            be: CpuBackend::<f32>::new(),
            tasks,
            batch,
        })
    }

    /// Score the newest checkpoint of the arm's run on every task (in `TASKS` order).
    pub(crate) fn score(&self, arm: &mut ArmResult) -> Result<()> {
        let c = crate::train::setup::open_checkpoint(&arm.run_dir)?;
        let model = Model::from_host(&self.be, &c.mcfg, &c.params);
        arm.tasks.clear();
        for (task, items) in &self.tasks {
            let s = crate::eval::evaluate(&self.be, &model, &c.tok, task, items, self.batch, 32)?;
            eprintln!("experiment: {}: {}", arm.name, headline(&s));
            arm.tasks.push(s);
        }
        Ok(())
    }
}

/// `--study main`: vanilla against instruction pre-training.
fn main(opts: &Options, train: &Trainer) -> Result<Results> {
    let (vanilla, ipt) = load_pair(opts, &opts.out, &[])?;
    let world = vanilla.world.as_ref().expect("checked by load_pair");
    let mut arms = Vec::new();
    for (name, cfg) in [("vanilla", &vanilla), ("instruction pre-training", &ipt)] {
        arms.push(train_arm(name, cfg, train)?);
    }

    let t = Instant::now();
    let scorer = Scorer::new(&world.dir, opts.max_items, opts.batch)?;
    for arm in &mut arms {
        scorer.score(arm)?;
    }
    let results = Results {
        world: serde_json::to_value(world)?,
        model: serde_json::to_value(&vanilla.model)?,
        arms,
        eval_seconds: t.elapsed().as_secs_f64(),
    };
    let curves = results
        .arms
        .iter()
        .map(|a| crate::plot::read_run(&a.run_dir))
        .collect::<Result<Vec<_>>>()?;
    write_outputs(&opts.out, &results, &table(&results), &curves)?;
    Ok(results)
}

/// `out/results.json`, `out/results.md` (the table, also printed) and the training curves of
/// `curves` (`out/curves.png`, `.svg`).
pub(crate) fn write_outputs<T: Serialize>(
    out: &Path,
    results: &T,
    table: &str,
    curves: &[crate::plot::RunCurves],
) -> Result<()> {
    crate::fsutil::write_atomic(
        &out.join("results.json"),
        serde_json::to_string_pretty(results)?.as_bytes(),
    )?;
    crate::fsutil::write_atomic(&out.join("results.md"), table.as_bytes())?;
    let (png, svg) = crate::plot::plot_curves(curves, &out.join("curves"))?;
    print!("{table}");
    eprintln!(
        "wrote {}, {}, {} and {}",
        out.join("results.json").display(),
        out.join("results.md").display(),
        png.display(),
        svg.display()
    );
    Ok(())
}

fn tokens(cfg: &Config) -> u64 {
    (cfg.data.batch_size * cfg.data.seq_len * cfg.train.grad_accum) as u64 * cfg.train.steps
}

/// The two arms must differ in their data mixture only.
fn check_controlled(a: &Config, b: &Config) -> Result<()> {
    let same = |what: &str, x: String, y: String| -> Result<()> {
        if x != y {
            bail!("the experiment's two configs differ in {what} ({x} vs {y}): not a controlled comparison");
        }
        Ok(())
    };
    same(
        "[model]",
        toml::to_string(&a.model)?,
        toml::to_string(&b.model)?,
    )?;
    same(
        "[world]",
        toml::to_string(&a.world)?,
        toml::to_string(&b.world)?,
    )?;
    same(
        "token budget (steps x batch x seq_len x grad_accum)",
        tokens(a).to_string(),
        tokens(b).to_string(),
    )?;
    same(
        "data.tokenizer",
        a.data.tokenizer.display().to_string(),
        b.data.tokenizer.display().to_string(),
    )?;
    same(
        "train.seed",
        a.train.seed.to_string(),
        b.train.seed.to_string(),
    )?;
    same("train.lr", a.train.lr.to_string(), b.train.lr.to_string())?;
    Ok(())
}

enum RunState {
    Fresh,
    Partial(u64),
    Finished,
}

/// Whether a run directory already holds this config's run, and how far it got. A directory
/// holding a different config's checkpoints is an error: the experiment never overwrites it.
fn resume_point(cfg: &Config) -> Result<RunState> {
    let dir = &cfg.train.out_dir;
    let Some((step, ck)) = checkpoint::latest(dir)? else {
        return Ok(RunState::Fresh);
    };
    let state_path = ck.join("state.json");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&state_path)
            .with_context(|| format!("{}: cannot read", state_path.display()))?,
    )
    .map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", state_path.display()))?;
    // Compared key by key after a round trip through `Config`, so fields added to kiln since the
    // run take their defaults; keys that do not change the run (`train.threads`, `log_every`,
    // `recompute`, …) may differ, as on `kiln train --resume`.
    let stored = state["config"]
        .as_str()
        .and_then(|t| toml::from_str::<Config>(t).ok())
        .and_then(|c| toml::to_string(&c).ok());
    let Some(stored) = stored else {
        bail!(
            "{}: not a kiln run of this version (no readable config in {})",
            dir.display(),
            state_path.display()
        );
    };
    let (_, changed) = crate::train::trainer::config_changes(&stored, &toml::to_string(cfg)?)?;
    if !changed.is_empty() {
        bail!(
            "{}: holds checkpoints of a different config ({}); remove it or choose another --out",
            dir.display(),
            changed.join(", ")
        );
    }
    Ok(if step >= cfg.train.steps {
        RunState::Finished
    } else {
        RunState::Partial(step)
    })
}

/// A finished run of exactly `cfg` but for its `train.out_dir`, in a run directory up to four
/// levels below `root` outside `skip` (another study's arm: studies share arms of the same config),
/// if there is one.
pub(crate) fn identical_finished_run(cfg: &Config, root: &Path, skip: &Path) -> Option<PathBuf> {
    let mut level = vec![root.to_path_buf()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for dir in level {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                let skipped = name.starts_with('.') || name.starts_with("step_") || name == "hf";
                if skipped || path == skip || !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if path != cfg.train.out_dir && path.join("config.toml").is_file() {
                    let mut want = cfg.clone();
                    want.train.out_dir = path.clone();
                    if matches!(resume_point(&want), Ok(RunState::Finished)) {
                        return Some(path);
                    }
                }
                next.push(path);
            }
        }
        level = next;
    }
    None
}

/// As [`train_arm`], reusing an identical finished run elsewhere under `out`'s parent directory
/// ([`identical_finished_run`]) when `cfg.train.out_dir` holds nothing yet.
pub(crate) fn train_or_reuse(
    name: &str,
    cfg: &Config,
    out: &Path,
    train: &Trainer,
) -> Result<ArmResult> {
    let root = out.parent().filter(|p| !p.as_os_str().is_empty());
    if let (Some(root), RunState::Fresh) = (root, resume_point(cfg)?) {
        if let Some(dir) = identical_finished_run(cfg, root, out) {
            eprintln!(
                "experiment: {name}: {} ran this config to the end already",
                dir.display()
            );
            let mut same = cfg.clone();
            same.train.out_dir = dir;
            return train_arm(name, &same, train);
        }
    }
    train_arm(name, cfg, train)
}

fn last_loss(dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["loss"].as_f64())
}

fn headline(s: &TaskScores) -> String {
    match (s.acc_mean_token, s.exact_match) {
        (Some(a), _) => format!("{} ({} items): accuracy {:.1}%", s.task, s.items, 100.0 * a),
        (_, Some(em)) => format!(
            "{} ({} items): exact match {:.1}%, F1 {:.1}%",
            s.task,
            s.items,
            100.0 * em,
            100.0 * s.f1.unwrap_or(0.0)
        ),
        _ => format!("{}: no items", s.task),
    }
}

/// The comparison as a Markdown table.
pub fn table(r: &Results) -> String {
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    let find = |arm: &ArmResult, task: &str| arm.tasks.iter().find(|t| t.task == task).cloned();
    let mut s = String::new();
    s.push_str("| run | tokens | train time | final loss | held-out QA exact match | held-out QA F1 | held-out MC accuracy | held-out facts, biography-style MC | training-people QA exact match |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for a in &r.arms {
        let qa = find(a, "heldout_qa");
        let mc = find(a, "heldout_mc");
        let cl = find(a, "heldout_cloze");
        let tr = find(a, "train_qa");
        s.push_str(&format!(
            "| {} | {:.2} M | {} | {} | {} | {} | {} | {} | {} |\n",
            a.name,
            a.tokens as f64 / 1e6,
            if a.train_seconds > 0.0 {
                format!("{:.0} s", a.train_seconds)
            } else {
                "(reused)".into()
            },
            a.final_loss.map_or("-".into(), |l| format!("{l:.3}")),
            pct(qa.as_ref().and_then(|t| t.exact_match)),
            pct(qa.as_ref().and_then(|t| t.f1)),
            pct(mc.as_ref().and_then(|t| t.acc_mean_token)),
            pct(cl.as_ref().and_then(|t| t.acc_mean_token)),
            pct(tr.as_ref().and_then(|t| t.exact_match)),
        ));
    }
    s
}
