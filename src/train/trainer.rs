//! The optimizer step the training loop drives: micro-batches → exact token-weighted loss and
//! gradients → clipping → AdamW → schedule. State export/import makes checkpoints exact.
use super::objective::{ObjectiveScratch, forward_backward};
use super::optim::{AdamWConfig, Moments, adamw_update, clip_grads, decays, global_grad_norm};
use super::schedule::{Schedule, lr_factor};
use crate::data::example::Example;
use crate::network::transformer::Transformer;
use anyhow::{Result, bail};

#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip; None = no clipping.
    pub max_grad_norm: Option<f64>,
    pub label_smoothing: f32,
    pub seed: u64,
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Σ y-token loss / Σ y tokens over all micro-batches of the step.
    pub loss: f64,
    pub y_tokens: usize,
    /// Tokens processed (x and y).
    pub tokens: usize,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
}

/// Trainable tensors, their moments and the step counter — everything a checkpoint needs
/// besides the frozen base.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    pub step: u64,
    /// (name, values, moments) of each trainable tensor, in model order.
    pub tensors: Vec<(String, Vec<f32>, Moments)>,
}

pub struct Trainer {
    pub model: Transformer,
    pub cfg: TrainConfig,
    /// Optimizer steps taken.
    pub step: u64,
    moments: Vec<Moments>,
    scratch: ObjectiveScratch,
}

impl Trainer {
    /// `model` already has its trainable tensors chosen (gradient buffers present).
    pub fn new(mut model: Transformer, cfg: TrainConfig) -> Result<Self> {
        let moments: Vec<Moments> =
            model.params_mut().into_iter().filter(|p| p.is_trainable()).map(|p| Moments::zeros(p.data.len())).collect();
        if moments.is_empty() {
            bail!("nothing to train: no tensor is trainable");
        }
        Ok(Trainer { model, cfg, step: 0, moments, scratch: ObjectiveScratch::default() })
    }

    /// One optimizer step over `micro_batches` (gradient accumulation). `labels` name each row
    /// (e.g. "data.jsonl:17") for errors, in the same order as the rows.
    pub fn step(&mut self, micro_batches: &[&[Example]], labels: &[&[String]]) -> Result<StepStats> {
        let y_tokens: usize = micro_batches.iter().flat_map(|b| b.iter()).map(Example::n_targets).sum();
        if y_tokens == 0 {
            let rows: Vec<&str> = labels.iter().flat_map(|l| l.iter()).map(|s| s.as_str()).collect();
            bail!("a training step has no completion tokens to learn from (rows: {})", rows.join(", "));
        }
        let lr =
            self.cfg.lr * lr_factor(self.cfg.schedule, self.step as usize, self.cfg.warmup_steps, self.cfg.total_steps);
        let weight = 1.0 / y_tokens as f32;
        let mut loss = 0.0;
        for (k, mb) in micro_batches.iter().enumerate() {
            let seed = crate::rng::mix(self.cfg.seed ^ crate::rng::mix(self.step * 1_000_003 + k as u64));
            loss += forward_backward(&mut self.model, mb, weight, self.cfg.label_smoothing, &mut self.scratch, seed)?;
        }
        let mut params: Vec<_> = self.model.params_mut().into_iter().filter(|p| p.is_trainable()).collect();
        let grad_norm = global_grad_norm(&params);
        if !grad_norm.is_finite() {
            bail!("gradient norm is {grad_norm} at step {}: lower the learning rate or check the data", self.step + 1);
        }
        if let Some(max) = self.cfg.max_grad_norm {
            clip_grads(&mut params, grad_norm, max);
        }
        let t = self.step + 1;
        let no_decay = AdamWConfig { weight_decay: 0.0, ..self.cfg.adamw };
        for (p, m) in params.iter_mut().zip(&mut self.moments) {
            adamw_update(p, m, if decays(p) { &self.cfg.adamw } else { &no_decay }, lr, t);
            p.zero_grad();
        }
        self.step = t;
        let tokens = micro_batches.iter().flat_map(|b| b.iter()).map(|e| e.ids.len()).sum();
        Ok(StepStats { loss: loss / y_tokens as f64, y_tokens, tokens, grad_norm, lr })
    }

    pub fn export_state(&mut self) -> TrainState {
        let params = self.model.params_mut().into_iter().filter(|p| p.is_trainable());
        let tensors = params.zip(&self.moments).map(|(p, m)| (p.name.clone(), p.data.clone(), m.clone())).collect();
        TrainState { step: self.step, tensors }
    }

    /// Restores a state exported from a trainer over the same model and trainable set.
    pub fn import_state(&mut self, state: TrainState) -> Result<()> {
        let mut params: Vec<_> = self.model.params_mut().into_iter().filter(|p| p.is_trainable()).collect();
        if params.len() != state.tensors.len() {
            bail!("checkpoint holds {} trainable tensors, this run trains {}", state.tensors.len(), params.len());
        }
        for ((p, m), (name, data, mom)) in params.iter_mut().zip(&mut self.moments).zip(state.tensors) {
            if p.name != name || p.data.len() != data.len() {
                bail!("checkpoint tensor {name} does not match this run's {} ({} values)", p.name, p.data.len());
            }
            p.data = data;
            *m = mom;
        }
        self.step = state.step;
        Ok(())
    }
}
