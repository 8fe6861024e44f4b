//! AdamW (decoupled weight decay, bias correction, f32 moments) with the same operation order as
//! torch.optim.AdamW's single-tensor path, and global-norm gradient clipping as clip_grad_norm_.
use crate::network::param::Param;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch.optim.AdamW's defaults.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// First and second moments of one trainable tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl Moments {
    pub fn zeros(len: usize) -> Self {
        Moments { m: vec![0.0; len], v: vec![0.0; len] }
    }
}

/// Weight decay applies to matrices (linear weights, embeddings, LoRA factors), not to biases or
/// norm gains — the nanoGPT / HF Trainer convention.
pub fn decays(p: &Param) -> bool {
    p.shape.len() >= 2
}

/// The f32 scalars of one AdamW step at learning rate `lr` and 1-based step `t`, computed in f64 and rounded:
/// what [`adamw_update_slice`] (and the CUDA backend's AdamW kernel) apply to every element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWScalars {
    /// 1 − lr·weight_decay (decoupled decay, applied to w first).
    pub decay: f32,
    pub one_minus_b1: f32,
    pub b2: f32,
    pub one_minus_b2: f32,
    /// lr / (1 − β1ᵗ).
    pub step_size: f32,
    /// √(1 − β2ᵗ).
    pub bc2_sqrt: f32,
    pub eps: f32,
}

impl AdamWScalars {
    pub fn new(cfg: &AdamWConfig, lr: f64, t: u64) -> Self {
        AdamWScalars {
            decay: (1.0 - lr * cfg.weight_decay) as f32,
            // 1 − β in f64, then f32: (1 − 0.999f32) would be off by 5e-5 relative.
            one_minus_b1: (1.0 - cfg.beta1) as f32,
            b2: cfg.beta2 as f32,
            one_minus_b2: (1.0 - cfg.beta2) as f32,
            step_size: (lr / (1.0 - cfg.beta1.powi(t as i32))) as f32,
            bc2_sqrt: (1.0 - cfg.beta2.powi(t as i32)).sqrt() as f32,
            eps: cfg.eps as f32,
        }
    }
}

/// One AdamW update of `p` (its gradient must exist) at 1-based step `t` with learning rate `lr`;
/// `cfg.weight_decay` applies as given (the caller picks 0 for tensors that do not decay).
pub fn adamw_update(p: &mut Param, mom: &mut Moments, cfg: &AdamWConfig, lr: f64, t: u64) {
    let g = p.grad.as_ref().expect("AdamW on a frozen tensor");
    adamw_update_slice(&mut p.data, g, mom, cfg, lr, t);
}

/// [`adamw_update`] of the values `w` with gradients `g` (a tensor or a contiguous part of one: the update is
/// element-wise, so a part updates exactly as inside the whole).
pub fn adamw_update_slice(w: &mut [f32], g: &[f32], mom: &mut Moments, cfg: &AdamWConfig, lr: f64, t: u64) {
    let AdamWScalars { decay, one_minus_b1, b2, one_minus_b2, step_size, bc2_sqrt, eps } =
        AdamWScalars::new(cfg, lr, t);
    w.par_iter_mut().zip(g.par_iter()).zip(mom.m.par_iter_mut().zip(mom.v.par_iter_mut())).with_min_len(4096).for_each(
        |((w, &g), (m, v))| {
            *w *= decay;
            *m += one_minus_b1 * (g - *m);
            *v = *v * b2 + one_minus_b2 * g * g;
            let denom = v.sqrt() / bc2_sqrt + eps;
            *w += -step_size * (*m / denom);
        },
    );
}

/// Elements per partial sum of [`add_grad_sq`]: the partial sums are summed in a fixed order, so the norm does
/// not depend on the thread count.
pub const NORM_CHUNK: usize = 4096;

/// total += Σ g² of `p`'s gradient, in f64: partial sums of NORM_CHUNK elements (in parallel, into `partials`,
/// which holds at least len / NORM_CHUNK values) added in order. The global norm is √ of the total over every
/// trainable tensor, visited in model order.
pub fn add_grad_sq(total: &mut f64, p: &Param, partials: &mut [f64]) {
    let Some(g) = &p.grad else { return };
    let parts = &mut partials[..g.len().div_ceil(NORM_CHUNK)];
    parts.par_iter_mut().zip(g.par_chunks(NORM_CHUNK)).for_each(|(s, c)| {
        *s = c.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
    });
    for s in parts.iter() {
        *total += s;
    }
}

/// The clipping factor max_norm / (norm + 1e-6) when that is < 1 (torch's clip_grad_norm_), else None.
pub fn clip_coef(norm: f64, max_norm: f64) -> Option<f32> {
    let coef = max_norm / (norm + 1e-6);
    (coef < 1.0).then_some(coef as f32)
}

/// Scales `p`'s gradient by `coef`.
pub fn scale_grad(p: &mut Param, coef: f32) {
    if let Some(g) = &mut p.grad {
        g.par_iter_mut().for_each(|x| *x *= coef);
    }
}
