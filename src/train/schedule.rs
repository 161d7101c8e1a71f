//! Learning-rate schedules: linear warm-up then cosine decay to a floor, or warm-up–stable–decay
//! (WSD: constant after warm-up, then a linear decay to the floor over the last fraction of steps).

use crate::config::Schedule;

/// Learning rate at 1-based `step` of `total` steps.
pub fn lr_at(
    schedule: Schedule,
    step: u64,
    total: u64,
    peak: f64,
    warmup: u64,
    min_ratio: f64,
    decay_fraction: f64,
) -> f64 {
    let floor = peak * min_ratio;
    if warmup > 0 && step <= warmup {
        return peak * step as f64 / warmup as f64;
    }
    let total = total.max(1);
    match schedule {
        Schedule::Cosine => {
            let span = total.saturating_sub(warmup).max(1) as f64;
            let progress = ((step - warmup.min(step)) as f64 / span).clamp(0.0, 1.0);
            floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
        }
        Schedule::Wsd => {
            let decay_steps = ((total as f64) * decay_fraction).round().max(1.0) as u64;
            let decay_start = total.saturating_sub(decay_steps).max(warmup);
            if step <= decay_start {
                peak
            } else {
                let progress = ((step - decay_start) as f64 / (total - decay_start).max(1) as f64)
                    .clamp(0.0, 1.0);
                peak + (floor - peak) * progress
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_warms_up_peaks_and_ends_at_the_floor() {
        let lr = |s| lr_at(Schedule::Cosine, s, 100, 1.0, 10, 0.1, 0.0);
        assert!((lr(1) - 0.1).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(100) - 0.1).abs() < 1e-12);
        assert!((lr(55) - 0.55).abs() < 1e-12); // halfway through the decay: mean of peak and floor
        assert!((11..100).all(|s| lr(s) >= lr(s + 1)));
    }

    #[test]
    fn wsd_is_flat_then_decays_linearly() {
        let lr = |s| lr_at(Schedule::Wsd, s, 100, 1.0, 10, 0.0, 0.2);
        assert_eq!(lr(10), 1.0);
        assert_eq!(lr(80), 1.0);
        assert!((lr(90) - 0.5).abs() < 1e-12);
        assert_eq!(lr(100), 0.0);
    }
}
