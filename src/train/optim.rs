//! AdamW on trainable tensors (the element-wise step is `kernels::adamw`, in torch.optim.AdamW's single-tensor
//! order), and global-norm gradient clipping as clip_grad_norm_.
pub use crate::kernels::adamw::AdamWConfig;
use crate::kernels::adamw::{AdamWScalars, adamw_step};
use crate::network::param::Param;
use rayon::prelude::*;

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

/// One AdamW update of `p` (its gradient must exist) at 1-based step `t` with learning rate `lr`;
/// `cfg.weight_decay` applies as given (the caller picks 0 for tensors that do not decay).
pub fn adamw_update(p: &mut Param, mom: &mut Moments, cfg: &AdamWConfig, lr: f64, t: u64) {
    let g = p.grad.as_ref().expect("AdamW on a frozen tensor");
    adamw_update_slice(&mut p.data, g, mom, cfg, lr, t);
}

/// [`adamw_update`] of the values `w` with gradients `g` (a tensor or a contiguous part of one: the update is
/// element-wise, so a part updates exactly as inside the whole).
pub fn adamw_update_slice(w: &mut [f32], g: &[f32], mom: &mut Moments, cfg: &AdamWConfig, lr: f64, t: u64) {
    adamw_step(w, g, &mut mom.m, &mut mom.v, &AdamWScalars::new(cfg, lr, t));
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
