//! `kiln plot`: training curves of one or several runs in one figure, as PNG and SVG.
//!
//! Left panel: training loss (lines) and validation loss (dashed, with markers) per run against
//! the step. Right panel, when any run evaluated tasks: each task's headline score (multiple-choice
//! accuracy, or exact match for completion) per run. Run names come from the run directories.
//! The font is DejaVu Sans embedded through the `dejavu` crate, so nothing is needed from the
//! system (no fontconfig).

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::train::metrics::StepMetrics;

/// One run's curves.
pub struct RunCurves {
    pub name: String,
    pub train: Vec<(f64, f64)>,
    pub val: Vec<(f64, f64)>,
    /// (task, points)
    pub eval: Vec<(String, Vec<(f64, f64)>)>,
}

impl RunCurves {
    /// The same curves drawn after `steps` earlier steps: a run that continues another (instruction
    /// tuning from a pre-training run's checkpoint) starts where that one ended.
    pub fn after(mut self, steps: f64) -> Self {
        let shift = |pts: &mut Vec<(f64, f64)>| pts.iter_mut().for_each(|p| p.0 += steps);
        shift(&mut self.train);
        shift(&mut self.val);
        self.eval.iter_mut().for_each(|(_, pts)| shift(pts));
        self
    }

    /// The last step with a logged training loss.
    pub fn last_step(&self) -> f64 {
        self.train.last().map_or(0.0, |p| p.0)
    }
}

/// Read a run directory's metrics.jsonl.
pub fn read_run(dir: &Path) -> Result<RunCurves> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    let mut run = RunCurves {
        name,
        train: Vec::new(),
        val: Vec::new(),
        eval: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let m: StepMetrics = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!("{}:{}: not a metrics line: {e}", path.display(), i + 1)
        })?;
        let step = m.step as f64;
        if m.loss.is_finite() {
            run.train.push((step, m.loss));
        }
        if let Some(v) = m.val_loss {
            run.val.push((step, v));
        }
        for t in m.eval.iter().flatten() {
            let Some(score) = t.acc_mean_token.or(t.exact_match) else {
                continue;
            };
            match run.eval.iter_mut().find(|(name, _)| *name == t.task) {
                Some((_, pts)) => pts.push((step, score)),
                None => run.eval.push((t.task.clone(), vec![(step, score)])),
            }
        }
    }
    if run.train.is_empty() {
        bail!("{}: no steps logged", path.display());
    }
    Ok(run)
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded DejaVu Sans is a valid TrueType font; registration cannot fail on it.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, runs: &[RunCurves]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    let has_eval = runs.iter().any(|r| !r.eval.is_empty());
    let panels = if has_eval {
        root.split_evenly((1, 2))
    } else {
        vec![root]
    };
    let max_step = runs
        .iter()
        .flat_map(|r| r.train.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let losses = runs
        .iter()
        .flat_map(|r| r.train.iter().chain(&r.val).map(|p| p.1));
    let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("plot: {e}");
    let mut chart = ChartBuilder::on(&panels[0])
        .caption("loss", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_step, (lo - pad).max(0.0)..hi + pad)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, r) in runs.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(r.train.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(format!("{} train", r.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        if !r.val.is_empty() {
            chart
                .draw_series(DashedLineSeries::new(
                    r.val.iter().copied(),
                    6,
                    4,
                    c.mix(0.8).stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("{} validation", r.name))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.mix(0.5).stroke_width(2))
                });
            chart
                .draw_series(r.val.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    if has_eval {
        let mut chart = ChartBuilder::on(&panels[1])
            .caption("task scores", ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max_step, 0.0..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("accuracy / exact match")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        let mut k = 0;
        for r in runs {
            for (task, pts) in &r.eval {
                let c = COLORS[k % COLORS.len()];
                k += 1;
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                    .map_err(err)?
                    .label(format!("{} {task}", r.name))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                    .map_err(err)?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// One line of a score plot: (x, mean, min, max) points, drawn with min–max bars.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, f64, f64)>,
}

fn draw_scores<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &[Series],
    y_desc: &str,
    x_desc: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    let max_x = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(y_desc, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_x.max(1e-9), 0.0..100.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("%")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pct = |v: f64| 100.0 * v;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|p| (p.0, pct(p.1))),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        // The min–max range over seeds as a vertical bar, the mean as a dot.
        chart
            .draw_series(s.points.iter().map(|p| {
                PathElement::new(vec![(p.0, pct(p.2)), (p.0, pct(p.3))], c.stroke_width(2))
            }))
            .map_err(err)?;
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|p| Circle::new((p.0, pct(p.1)), 4, c.filled())),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Scores (fractions, drawn as %) against `x_desc` into `out.png` and `out.svg`; returns both.
pub fn scores(
    series: &[Series],
    y_desc: &str,
    x_desc: &str,
    out: &Path,
) -> Result<(PathBuf, PathBuf)> {
    register_font();
    let size = (900, 560);
    let png = out.with_extension("png");
    let svg = out.with_extension("svg");
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        draw_scores(root.clone(), series, y_desc, x_desc)?;
        root.present()
            .map_err(|e| anyhow::anyhow!("{}: {e}", png.display()))?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw_scores(root.clone(), series, y_desc, x_desc)?;
        root.present()
            .map_err(|e| anyhow::anyhow!("{}: {e}", svg.display()))?;
    }
    Ok((png, svg))
}

/// Draw the runs into `out.png` and `out.svg`; returns both paths.
pub fn plot(run_dirs: &[PathBuf], out: &Path) -> Result<(PathBuf, PathBuf)> {
    if run_dirs.is_empty() {
        bail!("no run directories given");
    }
    let runs: Vec<RunCurves> = run_dirs
        .iter()
        .map(|d| read_run(d))
        .collect::<Result<_>>()?;
    plot_curves(&runs, out)
}

/// As [`plot`], for curves already read.
pub fn plot_curves(runs: &[RunCurves], out: &Path) -> Result<(PathBuf, PathBuf)> {
    if runs.is_empty() {
        bail!("no runs to plot");
    }
    register_font();
    let has_eval = runs.iter().any(|r| !r.eval.is_empty());
    let size = if has_eval { (1400, 560) } else { (900, 560) };
    let png = out.with_extension("png");
    let svg = out.with_extension("svg");
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        draw(root.clone(), runs)?;
        root.present()
            .map_err(|e| anyhow::anyhow!("{}: {e}", png.display()))?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw(root.clone(), runs)?;
        root.present()
            .map_err(|e| anyhow::anyhow!("{}: {e}", svg.display()))?;
    }
    Ok((png, svg))
}
