//! A linear layer on a device, forward beside backward, as `network::linear` and `network::lora` compute it on
//! the CPU: y (+)= x·Wᵀ + b + scale·(dropout(x)·Aᵀ)·Bᵀ. Each of W, b, A, B accumulates a gradient when it trains.
//! Its input and output may be kept in bf16 (the MLP's activations under `Backend::bf16_activations`): then every
//! product that reads or writes one is a bf16 product, LoRA's included, as PEFT computes a bf16 model's.
use super::weights::{DevLinear, DevTensor};
use crate::kernels::backend::{Backend, MatView, Values, ValuesMut};
use crate::rng;
use anyhow::{Result, bail};

/// How a layer meets its base term: x·Wᵀ in the output going forward, dy·W in dx going back.
#[derive(Clone, Copy, PartialEq)]
pub enum Base {
    /// Written first (nothing needs zeroing), then the bias and LoRA's term added.
    Set,
    /// Added: after LoRA's term going back.
    Add,
    /// Already there (forward only): the block's one product of a stacked weight (`DevBlock::qkv_stacked`,
    /// `gate_up_stacked`); only the bias and LoRA's term are added.
    Done,
}

/// What an adapted layer keeps for its backward pass.
pub struct LoraBufs<B: Backend> {
    /// scale·u, u = dropout(x)·Aᵀ (N, r): the forward's factor, kept scaled for dB. In bf16 (`u_bf16`, `u` empty)
    /// where x is kept in bf16: u's products are bf16 products then, and a bf16 u needs no rounding for them.
    pub u: B::F32,
    pub u_bf16: B::Bf16,
    /// The dropout mask of x (N·in elements); None without dropout.
    pub keep: Option<B::Mask>,
}

impl<B: Backend> LoraBufs<B> {
    /// u as the products take it: bf16 for a layer whose input is kept in bf16 (`bf16_x`).
    fn u(&self, bf16_x: bool) -> Values<'_, B> {
        if bf16_x { Values::Bf16(&self.u_bf16) } else { Values::F32(&self.u) }
    }
}

/// Scratch the layers share: dropout(x) or du·A (N, in) — in bf16 for an input kept in bf16 — and ∂L/∂u (N, r);
/// and the blocks' normed q or k (N, heads·head_dim) and normed sublayer output (N, d) on their way back (Gemma 3,
/// Qwen3).
pub struct LinearScratch<B: Backend> {
    pub x_drop: B::F32,
    pub x_drop_bf16: B::Bf16,
    pub du: B::F32,
    pub qk_post: B::F32,
    pub sublayer: B::F32,
}

/// c (+)= alpha · (a · b) for LoRA's factors: in f32, as the CPU computes them, when every buffer is f32 (alpha only
/// when overwriting), else a bf16 product.
#[allow(clippy::too_many_arguments)]
fn lora_product<B: Backend>(
    be: &B,
    c: ValuesMut<B>,
    cv: MatView,
    a: Values<B>,
    av: MatView,
    b: Values<B>,
    bv: MatView,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    match (c, a, b) {
        (ValuesMut::F32(c), Values::F32(a), Values::F32(b)) if alpha == 1.0 => be.gemm(c, cv, a, av, b, bv, accumulate),
        (ValuesMut::F32(c), Values::F32(a), Values::F32(b)) => {
            assert!(!accumulate, "lora_product: a scaled f32 product only overwrites");
            be.gemm_scaled(c, cv, a, av, b, bv, alpha)
        }
        (c, a, b) => be.gemm_bf16(c, cv, a, av, b, bv, alpha, accumulate),
    }
}

/// The f32 buffer of `v`: what a bias's add and gradient take (no layer with a bias keeps bf16 activations:
/// `Weights::bf16_activations`).
fn f32_of<B: Backend>(v: Values<'_, B>) -> &B::F32 {
    match v {
        Values::F32(x) => x,
        Values::Bf16(_) => panic!("a linear layer with a bias on activations kept in bf16"),
    }
}

impl<B: Backend> DevLinear<B> {
    /// out[view] = x·Wᵀ + b + LoRA (+= when `base` is `Add`; only b + LoRA added when `Done`); x (N, in), `ov`
    /// (N, out) inside `out`. `seed`: this layer's dropout seed of the step while training (LoRA dropout on), None
    /// at inference.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        mut out: ValuesMut<B>,
        ov: MatView,
        base: Base,
        x: Values<B>,
        n: usize,
        la: Option<&mut LoraBufs<B>>,
        s: &mut LinearScratch<B>,
        seed: Option<u64>,
    ) -> Result<()> {
        let (inp, outd) = (self.in_dim, self.out_dim);
        if base != Base::Done {
            let (xv, wv, add) = (MatView::dense(n, inp), MatView::dense(outd, inp).t(), base == Base::Add);
            self.w.product(be, out.reborrow(), ov, x, xv, wv, add)?;
        }
        if let Some(b) = &self.b {
            let ValuesMut::F32(o) = &mut out else { panic!("{}: a bias on an output kept in bf16", self.name) };
            be.add_bias(o, ov, &b.w)?;
        }
        let Some(lora) = &self.lora else { return Ok(()) };
        let Some(la) = la else { bail!("{}: an adapter without its buffers on {}", self.name, be.name()) };
        let r = lora.rank;
        let xin = match (seed, &mut la.keep, x) {
            (Some(seed), Some(keep), x) => {
                let key = rng::stream_key(seed, lora.stream);
                match x {
                    Values::F32(x) => {
                        be.dropout_forward(&mut s.x_drop, keep, x, n * inp, lora.dropout, key)?;
                        Values::F32(&s.x_drop)
                    }
                    Values::Bf16(x) => {
                        be.dropout_forward_bf16(&mut s.x_drop_bf16, keep, x, n * inp, lora.dropout, key)?;
                        Values::Bf16(&s.x_drop_bf16)
                    }
                }
            }
            (_, _, x) => x,
        };
        // Scale the small (N, r) factor rather than the (N, out) product, as the CPU does; kept for dB.
        let (nr, ni, bf16_x) = (MatView::dense(n, r), MatView::dense(n, inp), matches!(xin, Values::Bf16(_)));
        let u = if bf16_x { ValuesMut::Bf16(&mut la.u_bf16) } else { ValuesMut::F32(&mut la.u) };
        lora_product(be, u, nr, xin, ni, lora.a.operand(bf16_x), MatView::dense(r, inp).t(), lora.scale, false)?;
        let b = lora.b.operand(bf16_x || matches!(out, ValuesMut::Bf16(_)));
        lora_product(be, out, ov, la.u(bf16_x), nr, b, MatView::dense(outd, r).t(), 1.0, true)
    }

    /// Backward of [`Self::forward`] (after a training forward): dx += ∂L/∂x (its base term dy·W as `base` says:
    /// `Set` or `Add`); dW, db, dA, dB accumulate when they train, in the CPU's order. `stack`: the block's stacked
    /// weight holding W and W's first row in it, for a layer whose own weight is empty — its product is still this
    /// layer's own, so dx sums as without the stack, in the CPU's order. dy: the view `dyv` (N, out) of `dy`, and
    /// `dy_bf16`, a bf16 copy of it the caller rounded once for several layers: the products read that copy, the
    /// bias's gradient dy; x: the forward's input (N, in).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        be: &B,
        mut dx: ValuesMut<B>,
        base: Base,
        stack: Option<(&DevTensor<B>, usize)>,
        (dy, dy_bf16): (Values<B>, Option<&B::Bf16>),
        dyv: MatView,
        x: Values<B>,
        n: usize,
        la: Option<&LoraBufs<B>>,
        s: &mut LinearScratch<B>,
    ) -> Result<()> {
        if let Some(g) = self.b.as_mut().and_then(|b| b.grad()) {
            be.add_column_sums(g, f32_of(dy), dyv)?;
        }
        let dy = dy_bf16.map_or(dy, Values::Bf16);
        let (inp, outd) = (self.in_dim, self.out_dim);
        let ni = MatView::dense(n, inp);
        let add = !std::mem::replace(&mut self.w.grad_zero, false);
        if let Some(g) = self.w.grad() {
            // dW (out, in) += dyᵀ · x (written when it is known to be zero)
            let gv = MatView::dense(outd, inp);
            match (dy, x) {
                (Values::F32(dy), Values::F32(x)) => be.gemm_weights(g, gv, dy, dyv.t(), x, ni, add)?,
                (dy, x) => be.gemm_bf16(ValuesMut::F32(g), gv, dy, dyv.t(), x, ni, 1.0, add)?,
            }
        }
        // W (out, in): this layer's own, or its rows of the stack
        let (wt, w) = match stack {
            Some((t, row)) => (t, MatView { offset: row * inp, ..MatView::dense(outd, inp) }),
            None => (&self.w, MatView::dense(outd, inp)),
        };
        if base == Base::Set {
            // dx (N, in) = dy · W, LoRA's term added after
            wt.product(be, dx.reborrow(), ni, dy, dyv, w, false)?;
        }
        if let Some(lora) = &mut self.lora {
            let Some(la) = la else { bail!("{}: an adapter without its buffers on {}", self.name, be.name()) };
            let (r, p, shape) = (lora.rank, lora.dropout, (n, inp, lora.rank));
            let (nr, u) = (MatView::dense(n, r), la.u(matches!(x, Values::Bf16(_))));
            if let Some(g) = lora.b.grad() {
                // dB (out, r) += dyᵀ · (scale·u)
                lora_product(be, ValuesMut::F32(g), MatView::dense(outd, r), dy, dyv.t(), u, nr, 1.0, true)?;
            }
            // du = scale · dy·B
            let b = lora.b.operand(matches!(dy, Values::Bf16(_)));
            lora_product(be, ValuesMut::F32(&mut s.du), nr, dy, dyv, b, MatView::dense(outd, r), lora.scale, false)?;
            if let Some(g) = lora.a.grad() {
                // dA (r, in) += duᵀ · dropout(x)
                match (&la.keep, x) {
                    (Some(keep), Values::F32(x)) => be.lora_dropout_da(g, &mut s.x_drop, &s.du, x, keep, shape, p)?,
                    (Some(keep), Values::Bf16(x)) => be.lora_dropout_da_bf16(g, &s.du, x, keep, shape, p)?,
                    (None, x) => {
                        let (gv, du) = (MatView::dense(r, inp), Values::F32(&s.du));
                        lora_product(be, ValuesMut::F32(g), gv, du, nr.t(), x, ni, 1.0, true)?
                    }
                }
            }
            // dx += keep ⊙ (du·A) / (1 − p) (du·A in the scratch, or fused on a GPU)
            let a = &lora.a.w;
            match (&la.keep, dx.reborrow()) {
                (Some(keep), ValuesMut::F32(dx)) => be.lora_dropout_dx(dx, &mut s.x_drop, &s.du, a, keep, shape, p)?,
                (Some(keep), ValuesMut::Bf16(dx)) => be.lora_dropout_dx_bf16(dx, &s.du, a, keep, shape, p)?,
                (None, dx) => {
                    let (du, av) = (Values::F32(&s.du), MatView::dense(r, inp));
                    let a = lora.a.operand(matches!(dx, ValuesMut::Bf16(_)));
                    lora_product(be, dx, ni, du, nr, a, av, 1.0, true)?
                }
            }
        }
        if base != Base::Add {
            return Ok(());
        }
        // dx (N, in) += dy · W
        wt.product(be, dx, ni, dy, dyv, w, true)
    }
}
