//! The element-wise AdamW step (decoupled weight decay, bias correction, f32 moments) in torch.optim.AdamW's
//! single-tensor operation order; `train::optim` applies it to trainable tensors, and the CUDA kernel
//! (`cuda/cu/adamw.cu`) computes the same from the same [`AdamWScalars`].
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

/// The f32 scalars of one step at learning rate `lr` and 1-based step `t`, computed in f64 and rounded: what
/// [`adamw_step`] (and the CUDA kernel) apply to every element.
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

/// One step of the values `w` with gradients `g` and moments `m`, `v` (all of one length), in place:
/// w ← w·decay;  m ← m + (1 − β1)(g − m);  v ← v·β2 + (1 − β2)·g²;  w ← w − step_size · m / (√v / bc2_sqrt + eps).
pub fn adamw_step(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamWScalars) {
    assert!(g.len() == w.len() && m.len() == w.len() && v.len() == w.len(), "adamw_step: shapes");
    let AdamWScalars { decay, one_minus_b1, b2, one_minus_b2, step_size, bc2_sqrt, eps } = *s;
    w.par_iter_mut().zip(g.par_iter()).zip(m.par_iter_mut().zip(v.par_iter_mut())).with_min_len(4096).for_each(
        |((w, &g), (m, v))| {
            *w *= decay;
            *m += one_minus_b1 * (g - *m);
            *v = *v * b2 + one_minus_b2 * g * g;
            let denom = v.sqrt() / bc2_sqrt + eps;
            *w += -step_size * (*m / denom);
        },
    );
}
