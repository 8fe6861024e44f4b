//! LoRA (Hu et al. 2021) as PEFT implements it: h = W0·x + (α/r)·B·A·dropout(x), A (r, in)
//! Kaiming-uniform(a=√5), B (out, r) zeros; rsLoRA scales by α/√r. Only A and B are trainable.
use super::param::Param;
use crate::kernels::dropout::{dropout_again, dropout_backward, dropout_forward, mask_words};
use crate::kernels::grow;
use crate::kernels::mat::{Mat, MatMut};
use crate::kernels::matmul::matmul;
use crate::kernels::matvec::matmul_wt;
use crate::rng;

/// Saved per adapted layer for backward: u = dropout(x)·Aᵀ, (N, r).
#[derive(Default)]
pub struct LoraActs {
    pub u: Vec<f32>,
    /// The dropout mask of x, one bit per element (set = kept); only with dropout > 0. Backward rebuilds
    /// dropout(x) from it, so no layer keeps an (N, in) copy.
    pub keep: Vec<u64>,
    /// ∂L/∂u scratch (N, r).
    pub du: Vec<f32>,
}

/// LoRA dropout while training: this layer's seed for the step, and scratch for dropout(x) (N, in) that all
/// layers share.
pub struct Dropout<'a> {
    pub seed: u64,
    pub x_drop: &'a mut Vec<f32>,
}

pub struct Lora {
    /// (r, in)
    pub a: Param,
    /// (out, r)
    pub b: Param,
    pub rank: usize,
    pub scale: f32,
    pub dropout: f32,
    /// Dropout stream of this layer.
    stream: u64,
}

/// How adapters are attached: which modules, rank, α, dropout, rsLoRA.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub rslora: bool,
    /// Module leaf names (q_proj, c_attn, …) or ["all-linear"].
    pub targets: Vec<String>,
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        if self.rslora { self.alpha / (self.rank as f32).sqrt() } else { self.alpha / self.rank as f32 }
    }

    /// Whether the linear layer `module` (full HF path) gets an adapter.
    pub fn targets_module(&self, module: &str) -> bool {
        self.targets.iter().any(|t| target_matches(t, module))
    }
}

/// Whether the target `t` names the linear layer `module` as PEFT's `target_modules` entries do: "all-linear", the
/// full module path, or its end at a dot (a leaf name such as q_proj, or a suffix such as mlp.c_proj).
pub fn target_matches(t: &str, module: &str) -> bool {
    t == "all-linear" || module == t || module.strip_suffix(t).is_some_and(|head| head.ends_with('.'))
}

impl Lora {
    /// A fresh adapter for a (out, in) layer named `module`: A ~ U(−1/√in, 1/√in) — what
    /// kaiming_uniform_(a=√5) gives for fan_in = in — and B = 0, so the model starts equal to the base.
    pub fn new(module: &str, in_dim: usize, out_dim: usize, cfg: &LoraConfig, seed: u64) -> Self {
        let r = cfg.rank;
        let bound = 1.0 / (in_dim as f64).sqrt();
        let stream = rng::stream_id(module);
        let a: Vec<f32> =
            (0..r * in_dim).map(|i| ((2.0 * rng::uniform(seed, stream, i as u64) - 1.0) * bound) as f32).collect();
        let mut lora = Lora {
            a: Param::new(format!("{module}.lora_A.weight"), vec![r, in_dim], a),
            b: Param::new(format!("{module}.lora_B.weight"), vec![out_dim, r], vec![0.0; out_dim * r]),
            rank: r,
            scale: cfg.scale(),
            dropout: cfg.dropout,
            stream,
        };
        lora.a.set_trainable(true);
        lora.b.set_trainable(true);
        lora
    }

    /// Replaces A and B (e.g. from a PEFT file); shapes are checked by the caller.
    pub fn with_weights(mut self, a: Vec<f32>, b: Vec<f32>) -> Self {
        self.a.data = a;
        self.b.data = b;
        self
    }

    fn in_dim(&self) -> usize {
        self.a.shape[1]
    }

    fn out_dim(&self) -> usize {
        self.b.shape[0]
    }

    /// dropout(x) into `x_drop` and its mask into `la.keep` ([`dropout_forward`]): the mask is a pure function of
    /// (step seed, layer, element), so it does not depend on the thread count.
    fn drop_input(&self, x: &[f32], n: usize, la: &mut LoraActs, seed: u64, x_drop: &mut Vec<f32>) {
        let len = n * self.in_dim();
        grow(x_drop, len);
        la.keep.resize(mask_words(len), 0);
        dropout_forward(&mut x_drop[..len], &mut la.keep, &x[..len], self.dropout, rng::stream_key(seed, self.stream));
    }

    /// This layer's dropout stream: its mask in a step is drawn from `rng::stream_key(layer seed, stream)`.
    pub fn dropout_stream(&self) -> u64 {
        self.stream
    }

    /// out += scale · (dropout(x)·Aᵀ)·Bᵀ; saves u = dropout(x)·Aᵀ (N, r) in `la.u`.
    /// Dropout applies only while training (`dropout` is Some).
    pub fn forward(
        &self,
        out: &mut [f32],
        row_stride: usize,
        x: &[f32],
        n: usize,
        la: &mut LoraActs,
        dropout: Option<Dropout>,
    ) {
        let (r, inp, outd) = (self.rank, self.in_dim(), self.out_dim());
        if la.u.len() < n * r {
            la.u.resize(n * r, 0.0);
            la.du.resize(n * r, 0.0);
        }
        let xin = match dropout {
            Some(Dropout { seed, x_drop }) if self.dropout > 0.0 => {
                self.drop_input(x, n, la, seed, x_drop);
                &x_drop[..n * inp]
            }
            _ => &x[..n * inp],
        };
        matmul_wt(MatMut::new(&mut la.u[..n * r], n, r), Mat::new(xin, n, inp), &self.a.data, false);
        // Scale the small (N, r) factor rather than the (N, out) product.
        for (s, u) in la.du[..n * r].iter_mut().zip(&la.u) {
            *s = self.scale * u;
        }
        let dst = MatMut { data: out, rows: n, cols: outd, row_stride };
        matmul_wt(dst, Mat::new(&la.du[..n * r], n, r), &self.b.data, true);
    }

    /// dB += scale·dyᵀ·u; du = scale·dy·B; dA += duᵀ·dropout(x); dx += dropout'(du·A). With dropout, uses the
    /// mask the training forward saved in `la` and `x_drop` as scratch.
    pub fn backward(
        &mut self,
        dx: Option<&mut [f32]>,
        dy: Mat,
        x: &[f32],
        n: usize,
        la: &mut LoraActs,
        x_drop: &mut Vec<f32>,
    ) {
        let (r, inp, outd) = (self.rank, self.in_dim(), self.out_dim());
        if let Some(gb) = &mut self.b.grad {
            for (s, u) in la.du[..n * r].iter_mut().zip(&la.u) {
                *s = self.scale * u;
            }
            matmul(MatMut::new(gb, outd, r), dy.t(), Mat::new(&la.du[..n * r], n, r), true);
        }
        matmul(MatMut::new(&mut la.du[..n * r], n, r), dy, Mat::new(&self.b.data, outd, r), false);
        for d in &mut la.du[..n * r] {
            *d *= self.scale;
        }
        if self.a.is_trainable() {
            let xin = if self.dropout > 0.0 {
                grow(x_drop, n * inp);
                dropout_again(&mut x_drop[..n * inp], &la.keep, &x[..n * inp], self.dropout);
                &x_drop[..n * inp]
            } else {
                &x[..n * inp]
            };
            let ga = self.a.grad.as_mut().expect("trainable");
            matmul(MatMut::new(ga, r, inp), Mat::new(&la.du[..n * r], n, r).t(), Mat::new(xin, n, inp), true);
        }
        let Some(dx) = dx else { return };
        let du = Mat::new(&la.du[..n * r], n, r);
        if self.dropout > 0.0 {
            // dx += keep ⊙ (du·A) / (1−p), with du·A in the scratch.
            grow(x_drop, n * inp);
            let t = &mut x_drop[..n * inp];
            matmul(MatMut::new(t, n, inp), du, Mat::new(&self.a.data, r, inp), false);
            dropout_backward(&mut dx[..n * inp], t, &la.keep, self.dropout);
        } else {
            matmul(MatMut::new(&mut dx[..n * inp], n, inp), du, Mat::new(&self.a.data, r, inp), true);
        }
    }

    /// ΔW = scale·B·A, (out, in), for merging into the base weight.
    pub fn delta(&self) -> Vec<f32> {
        let (r, inp, outd) = (self.rank, self.in_dim(), self.out_dim());
        let mut d = vec![0.0; outd * inp];
        matmul(MatMut::new(&mut d, outd, inp), Mat::new(&self.b.data, outd, r), Mat::new(&self.a.data, r, inp), false);
        for v in &mut d {
            *v *= self.scale;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::finite_diff::{Tol, assert_catches_sign_flip, check};
    use crate::network::linear::{Linear, Strided};

    /// A linear layer with an adapter and dropout: backward matches central finite differences
    /// of L = Σ R ⊙ y for x, A and B, with the same dropout mask (fixed seed) in every evaluation.
    #[test]
    fn lora_with_dropout_backward_matches_finite_differences() {
        let (n, inp, out, r) = (5, 6, 4, 3);
        let val = |i: usize, k: u64| (rng::uniform(k, 0, i as u64) - 0.5) as f32;
        let cfg = LoraConfig { rank: r, alpha: 6.0, dropout: 0.3, rslora: false, targets: vec![] };
        let mut lin = Linear {
            name: "m.q_proj".into(),
            w: Param::new("m.q_proj.weight", vec![out, inp], (0..out * inp).map(|i| val(i, 1)).collect()),
            b: None,
            lora: Some(
                Lora::new("m.q_proj", inp, out, &cfg, 9)
                    .with_weights((0..r * inp).map(|i| val(i, 2)).collect(), (0..out * r).map(|i| val(i, 3)).collect()),
            ),
            in_dim: inp,
            out_dim: out,
        };
        let x: Vec<f32> = (0..n * inp).map(|i| val(i, 4)).collect();
        let rw: Vec<f32> = (0..n * out).map(|i| val(i, 5)).collect();
        let seed = 77;
        let loss = |lin: &Linear, x: &[f32]| -> f64 {
            let mut y = vec![0.0; n * out];
            let (mut la, mut x_drop) = (LoraActs::default(), Vec::new());
            lin.forward(Strided::write(&mut y, out), x, n, &mut la, Some(Dropout { seed, x_drop: &mut x_drop }));
            y.iter().zip(&rw).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let mut la = LoraActs::default();
        let mut y = vec![0.0; n * out];
        let mut x_drop = Vec::new();
        lin.forward(Strided::write(&mut y, out), &x, n, &mut la, Some(Dropout { seed, x_drop: &mut x_drop }));
        let mut dx = vec![0.0; n * inp];
        let dy = lin.grad_view(&rw, out, n);
        lin.backward(Some(&mut dx), dy, &x, &mut la, &mut x_drop);
        // The shared checker: |g_fd − g| ≤ rtol·|g_fd| + atol (error budget: kernels/finite_diff.rs).  With the
        // dropout mask fixed, L is linear in each of x, A and B, so the central difference has no truncation error
        // at any step: h = 0.5 shrinks round-off.  Outputs are |y| ≲ 2 (|W·x| ≤ 6·0.5·1 for |x ± h| ≤ 1, plus
        // scale 2 · B·A·x_drop), each an f32 sum of ≤ 6 + 3 products rounded by ≲ 4u·|y|; a perturbed x element
        // moves one row (4 outputs), an A entry all 20 outputs, a B entry one column (5).  Worst case
        // 2·20·4u·2·|R ≤ 0.5| / 2h ≈ 1e-5; with random signs ≈ √20·4u·2·0.25·√2 ≈ 8e-7 (observed: within the rtol
        // part alone — the atol needed, printed, is 0).
        // atol = 2e-6; rtol = 1e-5 covers the f32 rounding of the gradients themselves (sums of ≤ 20 terms).
        // (Old: |Δ| < 1e-4 absolute.)
        const H: f32 = 0.5;
        const TOL: Tol = Tol { rtol: 1e-5, atol: 2e-6 };
        let fd = check("lora dx", &x, &dx, H, TOL, |xp| loss(&lin, xp));
        assert_catches_sign_flip("lora dx", &fd, &dx, TOL);
        for which in ["A", "B"] {
            fn param<'a>(lin: &'a mut Linear, which: &str) -> &'a mut Param {
                let l = lin.lora.as_mut().unwrap();
                if which == "A" { &mut l.a } else { &mut l.b }
            }
            let (p0, grad) = {
                let p = param(&mut lin, which);
                (p.data.clone(), p.grad.clone().unwrap())
            };
            let name = format!("lora d{which}");
            let fd = check(&name, &p0, &grad, H, TOL, |v| {
                param(&mut lin, which).data.copy_from_slice(v);
                loss(&lin, &x)
            });
            param(&mut lin, which).data.copy_from_slice(&p0);
            assert_catches_sign_flip(&name, &fd, &grad, TOL);
        }
        // The frozen base got no gradient buffer.
        assert!(lin.w.grad.is_none());
    }
}
