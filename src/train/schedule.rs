//! Learning-rate schedules, defined exactly as transformers' `get_*_schedule_with_warmup`:
//! the multiplier for optimizer step k (0-based) is a function of k, so step 0 of a warmup has lr 0.
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

/// lr multiplier at 0-based step `k` of `total`, after `warmup` linear-warmup steps.
pub fn lr_factor(schedule: Schedule, k: usize, warmup: usize, total: usize) -> f64 {
    if k < warmup {
        return k as f64 / warmup.max(1) as f64;
    }
    let progress = (k - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
    match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (total.saturating_sub(k) as f64 / total.saturating_sub(warmup).max(1) as f64).max(0.0),
        Schedule::Cosine => (0.5 * (1.0 + (PI * progress).cos())).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers_definitions() {
        // get_cosine_schedule_with_warmup(warmup=2, total=6): 0, .5, 1, cos ramps, 0
        let cos: Vec<f64> = (0..6).map(|k| lr_factor(Schedule::Cosine, k, 2, 6)).collect();
        let want = [0.0, 0.5, 1.0, 0.853_553_390_593_273_7, 0.5, 0.146_446_609_406_726_24];
        for (a, b) in cos.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{cos:?}");
        }
        assert_eq!(lr_factor(Schedule::Linear, 4, 2, 6), 0.5);
        assert_eq!(lr_factor(Schedule::Constant, 5, 2, 6), 1.0);
        assert_eq!(lr_factor(Schedule::Constant, 0, 0, 6), 1.0);
    }
}
