//! The divergence guard: stops a run that has gone wrong before it writes a broken model as its result.
//!
//! After every step it looks at the loss and the gradient norm:
//! - **divergence**: the loss, smoothed over about ten steps (an exponential moving average, so one hard
//!   batch does not trip it), has risen more than [`DIVERGENCE_NATS`] above the lowest smoothed loss seen
//!   (e² ≈ 7.4× the perplexity);
//! - **collapse**: the gradient norm was exactly zero for [`ZERO_GRAD_STEPS`] steps in a row — nothing can
//!   learn any more (typically a model blown up to a uniform distribution, loss pinned at ln(vocab)).
//!
//! Non-finite losses and gradients are caught earlier, in the step itself, whatever the guard says.
//! At the end of a run, [`worse_than_start`] says whether the run made the model worse than it was.
use super::trainer::StepStats;

/// How far (nats per y token) the smoothed loss may rise above its minimum.
pub const DIVERGENCE_NATS: f64 = 2.0;
/// Consecutive steps with an all-zero gradient that count as a collapse.
pub const ZERO_GRAD_STEPS: u32 = 3;
/// Weight of the newest step in the smoothed loss.
const SMOOTHING: f64 = 0.1;

pub struct Guard {
    ln_vocab: f64,
    /// The run's peak learning rate, for the advice.
    lr: f64,
    smoothed: Option<f64>,
    smoothed_min: f64,
    zero_grad_steps: u32,
}

impl Guard {
    pub fn new(vocab: usize, lr: f64) -> Self {
        Guard { ln_vocab: (vocab as f64).ln(), lr, smoothed: None, smoothed_min: f64::INFINITY, zero_grad_steps: 0 }
    }

    /// Err(what went wrong and what to do) when step `step` shows divergence or collapse.
    pub fn check(&mut self, step: u64, st: &StepStats) -> Result<(), String> {
        let smoothed = self.smoothed.map_or(st.loss, |s| s + SMOOTHING * (st.loss - s));
        self.smoothed = Some(smoothed);
        self.smoothed_min = self.smoothed_min.min(smoothed);
        self.zero_grad_steps = if st.grad_norm == 0.0 { self.zero_grad_steps + 1 } else { 0 };
        let lower = format!(
            "the learning rate ({:.2e}) is likely too high: lower it (e.g. --lr={:.1e}), add --warmup-steps, and keep \
             --max-grad-norm on",
            self.lr,
            self.lr / 10.0
        );
        if smoothed > self.smoothed_min + DIVERGENCE_NATS {
            return Err(format!(
                "training diverged at step {step}: the loss (smoothed {smoothed:.4}, this step {:.4}) rose more than \
                 {DIVERGENCE_NATS} nats above its best ({:.4}); {lower}",
                st.loss, self.smoothed_min
            ));
        }
        if self.zero_grad_steps >= ZERO_GRAD_STEPS {
            let uniform = if (st.loss - self.ln_vocab).abs() < 1e-3 {
                format!(
                    " and the loss is ln(vocabulary) = {:.4}: the model predicts a uniform distribution",
                    self.ln_vocab
                )
            } else {
                String::new()
            };
            return Err(format!(
                "training collapsed at step {step}: the gradient has been exactly zero for {ZERO_GRAD_STEPS} steps{uniform}; \
                 {lower}"
            ));
        }
        Ok(())
    }
}

/// Where a finished run ended up worse than it started: by the evaluation NLL when the run evaluated at step 0
/// and later (`eval`: (step, NLL) points), else by the mean training loss of the last steps against the first
/// ones (`train`: (step, loss) points; runs of fewer than 8 steps are too noisy to judge this way).
pub fn worse_than_start(train: &[(u64, f64)], eval: &[(u64, f64)]) -> Option<String> {
    if let (Some(&(0, first)), Some(&(step, last))) = (eval.first(), eval.last())
        && step > 0
    {
        return (last > first)
            .then(|| format!("the eval NLL got worse: {first:.4} before training, {last:.4} at step {step}"));
    }
    if train.len() < 8 {
        return None;
    }
    let w = (train.len() / 4).min(10);
    let mean = |pts: &[(u64, f64)]| pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64;
    let (first, last) = (mean(&train[..w]), mean(&train[train.len() - w..]));
    (last > first).then(|| {
        format!("the training loss got worse: {first:.4} over the first {w} steps, {last:.4} over the last {w}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(loss: f64, grad_norm: f64) -> StepStats {
        StepStats { loss, y_tokens: 10, tokens: 20, grad_norm, lr: 1e-3, comm_s: 0.0, wait_s: 0.0, device_wait_s: None }
    }

    #[test]
    fn a_healthy_noisy_descent_passes() {
        let mut g = Guard::new(1000, 1e-3);
        for step in 1..=200u64 {
            let noise: f64 = if step % 3 == 0 { 1.5 } else { 0.0 };
            g.check(step, &stats(4.0 / (1.0 + step as f64 / 20.0) + noise, 0.5)).unwrap();
        }
    }

    #[test]
    fn a_climbing_loss_is_divergence() {
        let mut g = Guard::new(1000, 1e-3);
        let losses = [3.0, 2.5, 2.0, 2.2, 5.0, 40.0, 1e4, 2.4e7];
        let tripped = losses.iter().enumerate().find_map(|(i, &l)| g.check(i as u64 + 1, &stats(l, 1.0)).err());
        let msg = tripped.expect("the guard must trip");
        assert!(msg.contains("diverged at step 6") && msg.contains("--lr="), "{msg}");
    }

    #[test]
    fn a_zero_gradient_at_uniform_loss_is_collapse() {
        let mut g = Guard::new(1000, 1e-3);
        let ln_v = 1000f64.ln();
        assert!(g.check(1, &stats(8.8, 3.0)).is_ok());
        assert!(g.check(2, &stats(ln_v, 0.0)).is_ok());
        assert!(g.check(3, &stats(ln_v, 0.0)).is_ok());
        let msg = g.check(4, &stats(ln_v, 0.0)).unwrap_err();
        assert!(msg.contains("collapsed at step 4") && msg.contains("uniform distribution"), "{msg}");
    }

    #[test]
    fn a_single_zero_gradient_is_not_collapse() {
        let mut g = Guard::new(1000, 1e-3);
        for step in 1..=10 {
            g.check(step, &stats(2.0, if step % 3 == 0 { 0.0 } else { 1.0 })).unwrap();
        }
    }

    #[test]
    fn worse_than_start_prefers_eval_and_needs_enough_steps() {
        assert!(worse_than_start(&[], &[(0, 2.0), (5, 2.1)]).unwrap().contains("eval NLL got worse"));
        assert!(worse_than_start(&[], &[(0, 2.0), (5, 1.9)]).is_none());
        let rising: Vec<(u64, f64)> = (1..=12).map(|s| (s, s as f64)).collect();
        assert!(worse_than_start(&rising, &[]).unwrap().contains("training loss got worse"));
        assert!(worse_than_start(&rising[..7], &[]).is_none());
        let falling: Vec<(u64, f64)> = (1..=12).map(|s| (s, 1.0 / s as f64)).collect();
        assert!(worse_than_start(&falling, &[]).is_none());
        // Eval points that do not start at step 0 (a resumed run without the first one) fall back to the loss.
        assert!(worse_than_start(&falling, &[(4, 1.0), (12, 3.0)]).is_none());
    }
}
