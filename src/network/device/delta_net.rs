//! A Gated DeltaNet layer's mixer on a device (Qwen3.5's linear attention), forward beside backward, as
//! `network::delta_net` computes it on the CPU: the four input projections into one (N, proj_width) buffer, the
//! causal convolution, the recurrence's inputs, the gated delta rule, the gated norm — out_proj is the block's `o`.
use super::block::{Attend, BlockArgs};
use super::buffers::{DeltaGradBufs, DeltaLayerBufs};
use super::linear::{Base, LinearScratch, LoraBufs};
use super::weights::{DevDeltaNet, DevLinear};
use crate::kernels::backend::{Backend, DeltaBufs, DeltaGrads, DeltaInputsMut, DeltaSaved, MatView, Values, ValuesMut};
use crate::kernels::gated_delta::DeltaNetShape;
use anyhow::{Result, bail};

impl<B: Backend> DevDeltaNet<B> {
    /// The mixer on h1 (N, d): `db.y` receives out_proj's input. Within a packed batch (`Attend::Packed`; a
    /// training pass keeps the recurrence's states), or, decoding, from each row's slot state
    /// (`Attend::Recurrent`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        projections: &[DevLinear<B>],
        sh: &DeltaNetShape,
        db: &mut DeltaLayerBufs<B>,
        lora: &mut [Option<LoraBufs<B>>],
        s: &mut LinearScratch<B>,
        h1: Values<B>,
        a: &BlockArgs<B>,
        attend: Attend<B>,
    ) -> Result<()> {
        let (n, p) = (a.n, sh.proj_width());
        let mut col = 0;
        for (slot, lin) in projections.iter().enumerate() {
            let view = MatView::columns(n, col, lin.out_dim, p);
            lin.forward(be, ValuesMut::F32(&mut db.proj), view, Base::Set, h1, n, lora[slot].as_mut(), s, a.seed)?;
            col += lin.out_dim;
        }
        let mut cached = match attend {
            Attend::Packed => None,
            Attend::Recurrent { conv, state, slots, positions } => Some((conv, state, slots, positions)),
            Attend::Cached { .. } => bail!("a Gated DeltaNet layer decodes from its recurrent state, not a KV cache"),
        };
        let (out, pre) = (&mut db.conv_out, &mut db.conv_pre);
        match &mut cached {
            None => be.delta_conv_forward(out, pre, &db.proj, &self.conv.w, a.seq_start, n, sh)?,
            Some((conv, _, slots, positions)) => {
                be.delta_conv_cached(out, pre, &db.proj, &self.conv.w, conv, slots, positions, n, sh)?
            }
        }
        let x = DeltaInputsMut {
            q: &mut db.q,
            k: &mut db.k,
            v: &mut db.v,
            g: &mut db.g,
            beta: &mut db.beta,
            q_rnorm: &mut db.q_rnorm,
            k_rnorm: &mut db.k_rnorm,
        };
        be.delta_inputs_forward(x, &db.conv_out, &db.proj, &self.dt_bias.w, &self.a_log.w, n, sh)?;
        let x = DeltaBufs { q: &db.q, k: &db.k, v: &db.v, g: &db.g, beta: &db.beta };
        match cached {
            None => {
                let saved = a.seed.is_some().then_some(&mut db.saved);
                be.delta_rule_forward(&mut db.o, saved, x, a.delta_seqs, a.n_seqs, n, sh)?
            }
            Some((_, state, slots, positions)) => be.delta_rule_cached(&mut db.o, x, state, slots, positions, n, sh)?,
        }
        be.delta_norm_forward(&mut db.y, &mut db.o_rstd, &db.o, &db.proj, &self.norm.w, n, sh, a.norm_eps)
    }

    /// Backward of a training [`Self::forward`] from `g.dy` (N, value_dim), ∂L/∂ out_proj's input: `g.dproj` (N,
    /// proj_width) receives ∂L/∂ the projections' outputs, which the caller takes through them; the mixer's own
    /// tensors accumulate their gradients when they train.
    pub fn backward(
        &mut self,
        be: &B,
        sh: &DeltaNetShape,
        db: &DeltaLayerBufs<B>,
        g: &mut DeltaGradBufs<B>,
        a: &BlockArgs<B>,
    ) -> Result<()> {
        let n = a.n;
        // The convolution's backward adds into dproj's first columns; the other ops write theirs.
        be.zero(&mut g.dproj, n * sh.proj_width())?;
        let (dw, w) = (self.norm.train.as_mut().map(|t| &mut t.g), &self.norm.w);
        be.delta_norm_backward(&mut g.dproj, &mut g.d_o, dw, &g.dy, &db.o, &db.o_rstd, &db.proj, w, n, sh)?;
        let d = DeltaGrads { dq: &mut g.dq, dk: &mut g.dk, dv: &mut g.dv, dg: &mut g.dg, dbeta: &mut g.dbeta };
        be.delta_rule_backward(d, &g.d_o, db.inputs(), &db.saved, a.delta_seqs, a.n_seqs, n, sh)?;
        let d = DeltaBufs { q: &g.dq, k: &g.dk, v: &g.dv, g: &g.dg, beta: &g.dbeta };
        let saved = DeltaSaved {
            x: db.inputs(),
            q_rnorm: &db.q_rnorm,
            k_rnorm: &db.k_rnorm,
            conv: &db.conv_out,
            proj: &db.proj,
        };
        let ddt = self.dt_bias.train.as_mut().map(|t| &mut t.g);
        let dalog = self.a_log.train.as_mut().map(|t| &mut t.g);
        let (dt, alog) = (&self.dt_bias.w, &self.a_log.w);
        be.delta_inputs_backward(&mut g.dconv, &mut g.dproj, ddt, dalog, d, saved, dt, alog, n, sh)?;
        let (dw, w) = (self.conv.train.as_mut().map(|t| &mut t.g), &self.conv.w);
        be.delta_conv_backward(&mut g.dproj, dw, &mut g.dconv, &db.conv_pre, &db.proj, w, a.seq_start, n, sh)
    }
}
