//! metrics.jsonl, one line per step (loss, learning rate, gradient norm, tokens/s, MFU, and
//! validation and task scores when they ran), and the progress lines on stderr. A resumed run
//! keeps the lines of the steps its checkpoint covers and appends from there.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

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
    /// Peak bytes of the backend's buffers so far, in GB, where it measures them.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mem_peak_gb: Option<f64>,
    /// On the first step after a resume that changed safe config keys: `key: old -> new`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub config_changes: Option<Vec<String>>,
}

/// Per-step progress and metrics output.
pub struct MetricsLog {
    file: std::fs::File,
    log_every: u64,
    total: u64,
}

impl MetricsLog {
    pub fn open(path: &Path, keep_through: u64, log_every: u64, total: u64) -> Result<Self> {
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
        Ok(MetricsLog {
            file,
            log_every: log_every.max(1),
            total,
        })
    }

    pub fn write(&mut self, m: &StepMetrics, eta_s: f64) -> Result<()> {
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
        if m.step.is_multiple_of(self.log_every)
            || m.step == self.total
            || m.val_loss.is_some()
            || m.skipped
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
