//! A linear layer on a device, forward beside backward, as `network::linear` and `network::lora` compute it on
//! the CPU: y (+)= x·Wᵀ + b + scale·(dropout(x)·Aᵀ)·Bᵀ. Each of W, b, A, B accumulates a gradient when it trains.
use super::weights::DevLinear;
use crate::kernels::backend::{Backend, MatView};
use crate::rng;
use anyhow::Result;

/// What an adapted layer keeps for its backward pass.
pub struct LoraBufs<B: Backend> {
    /// scale·u, u = dropout(x)·Aᵀ (N, r): the forward's factor, kept scaled for dB.
    pub u: B::F32,
    /// The dropout mask of x (N·in elements); None without dropout.
    pub keep: Option<B::Mask>,
}

/// Scratch the layers share: dropout(x) or du·A (N, in), and ∂L/∂u (N, r); and the blocks' normed q or
/// k (N, heads·head_dim) and normed sublayer output (N, d) on their way back (Gemma 3, Qwen3).
pub struct LinearScratch<B: Backend> {
    pub x_drop: B::F32,
    pub du: B::F32,
    pub qk_post: B::F32,
    pub sublayer: B::F32,
}

impl<B: Backend> DevLinear<B> {
    /// out[view] = x·Wᵀ + b + LoRA (or += when `accumulate`); x (N, in), `ov` (N, out) inside `out`.
    /// `seed`: this layer's dropout seed of the step while training (LoRA dropout on), None at inference.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        out: &mut B::F32,
        ov: MatView,
        accumulate: bool,
        x: &B::F32,
        n: usize,
        la: Option<&mut LoraBufs<B>>,
        s: &mut LinearScratch<B>,
        seed: Option<u64>,
    ) -> Result<()> {
        let (inp, outd) = (self.in_dim, self.out_dim);
        self.w.product(be, out, ov, x, MatView::dense(n, inp), MatView::dense(outd, inp).t(), accumulate)?;
        if let Some(b) = &self.b {
            be.add_bias(out, ov, &b.w)?;
        }
        let (Some(lora), Some(la)) = (&self.lora, la) else { return Ok(()) };
        let r = lora.rank;
        let xin = match (seed, &mut la.keep) {
            (Some(seed), Some(keep)) => {
                let key = rng::stream_key(seed, lora.stream);
                be.dropout_forward(&mut s.x_drop, keep, x, n * inp, lora.dropout, key)?;
                &s.x_drop
            }
            _ => x,
        };
        // Scale the small (N, r) factor rather than the (N, out) product, as the CPU does; kept for dB.
        let (nr, ni) = (MatView::dense(n, r), MatView::dense(n, inp));
        be.gemm_scaled(&mut la.u, nr, xin, ni, &lora.a.w, MatView::dense(r, inp).t(), lora.scale)?;
        be.gemm(out, ov, &la.u, nr, &lora.b.w, MatView::dense(outd, r).t(), true)
    }

    /// Backward of [`Self::forward`] (after a training forward): dx += ∂L/∂x; dW, db, dA, dB accumulate when they
    /// train, in the CPU's order. dy: the view `dyv` (N, out) of `dy`; x: the forward's input (N, in).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        be: &B,
        dx: &mut B::F32,
        dy: &B::F32,
        dyv: MatView,
        x: &B::F32,
        n: usize,
        la: Option<&LoraBufs<B>>,
        s: &mut LinearScratch<B>,
    ) -> Result<()> {
        let (inp, outd) = (self.in_dim, self.out_dim);
        if let Some(g) = self.w.grad() {
            // dW (out, in) += dyᵀ · x
            be.gemm_weights(g, MatView::dense(outd, inp), dy, dyv.t(), x, MatView::dense(n, inp), true)?;
        }
        if let Some(g) = self.b.as_mut().and_then(|b| b.grad()) {
            be.add_column_sums(g, dy, dyv)?;
        }
        if let (Some(lora), Some(la)) = (&mut self.lora, la) {
            let r = lora.rank;
            let (nr, ni) = (MatView::dense(n, r), MatView::dense(n, inp));
            if let Some(g) = lora.b.grad() {
                // dB (out, r) += dyᵀ · (scale·u)
                be.gemm(g, MatView::dense(outd, r), dy, dyv.t(), &la.u, nr, true)?;
            }
            // du = scale · dy·B
            be.gemm_scaled(&mut s.du, nr, dy, dyv, &lora.b.w, MatView::dense(outd, r), lora.scale)?;
            if let Some(g) = lora.a.grad() {
                // dA (r, in) += duᵀ · dropout(x)
                match &la.keep {
                    Some(keep) => {
                        be.lora_dropout_da(g, &mut s.x_drop, &s.du, x, keep, (n, inp, r), lora.dropout)?;
                    }
                    None => be.gemm(g, MatView::dense(r, inp), &s.du, nr.t(), x, ni, true)?,
                }
            }
            match &la.keep {
                // dx += keep ⊙ (du·A) / (1 − p) (du·A in the scratch, or fused on a GPU)
                Some(keep) => {
                    be.lora_dropout_dx(dx, &mut s.x_drop, &s.du, &lora.a.w, keep, (n, inp, r), lora.dropout)?
                }
                None => be.gemm(dx, ni, &s.du, nr, &lora.a.w, MatView::dense(r, inp), true)?,
            }
        }
        // dx (N, in) += dy · W
        self.w.product(be, dx, MatView::dense(n, inp), dy, dyv, MatView::dense(outd, inp), true)
    }
}
