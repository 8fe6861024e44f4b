//! Qwen3.5's Gated DeltaNet, the mixer of its "linear_attention" layers, standing where attention stands in the
//! other layers: everything between its input projections (in_proj_qkv | in_proj_z | in_proj_b | in_proj_a, one
//! (N, P) buffer) and out_proj, forward and backward, as transformers' `Qwen3_5GatedDeltaNet` computes it:
//!   q|k|v = silu(causal_conv(qkv));  q, k L2-normed per head (ε 1e-6), q × dk^-½;  β = σ(b);
//!   g = −e^A_log · softplus(a + dt_bias);  o = gated delta rule (kernels::gated_delta);
//!   y = w ⊙ rmsnorm(o) ⊙ silu(z) per value head  → out_proj.
use super::param::Param;
use crate::kernels::delta_mixer::{
    InputsMut, InputsSaved, gated_norm_backward, gated_norm_forward, inputs_backward, inputs_forward,
};
use crate::kernels::gated_delta::{
    DeltaDims, DeltaGradsMut, DeltaIn, DeltaNetShape, HeadScratch, causal_conv_silu_backward, causal_conv_silu_cached,
    causal_conv_silu_forward, checkpoints, delta_rule_backward, delta_rule_cached, delta_rule_forward, sequences,
};
use crate::kernels::grow;

/// A Gated DeltaNet's tensors besides its linear layers (HF names `…linear_attn.conv1d.weight`, `dt_bias`, `A_log`,
/// `norm.weight`).
pub struct DeltaNet {
    /// (conv_dim, 1, kernel): one filter per q|k|v channel
    pub conv: Param,
    /// (v_heads)
    pub dt_bias: Param,
    /// (v_heads)
    pub a_log: Param,
    /// (v_head_dim): the gated RMSNorm's weight, applied as w (not 1 + w)
    pub norm: Param,
}

impl DeltaNet {
    pub fn params_mut(&mut self) -> [&mut Param; 4] {
        [&mut self.conv, &mut self.dt_bias, &mut self.a_log, &mut self.norm]
    }

    pub fn params(&self) -> [&Param; 4] {
        [&self.conv, &self.dt_bias, &self.a_log, &self.norm]
    }
}

/// A Gated DeltaNet layer's decoding state for each cache slot: its convolution's last K−1 input rows and the
/// recurrence's state S of every value head, as of the positions the slot has run.
pub struct DeltaNetState {
    /// (slots, K − 1, conv_dim), oldest row first
    conv: Vec<f32>,
    /// (slots, v_heads, dk·dv)
    state: Vec<f32>,
    /// (slots): the position each slot runs next
    next: Vec<usize>,
    shape: DeltaNetShape,
}

impl DeltaNetState {
    pub fn new(shape: DeltaNetShape, slots: usize) -> Self {
        let conv = vec![0.0; slots * (shape.conv_kernel - 1) * shape.conv_dim()];
        let state = vec![0.0; slots * shape.v_heads * shape.k_head_dim * shape.v_head_dim];
        DeltaNetState { conv, state, next: vec![0; slots], shape }
    }

    fn conv_len(&self) -> usize {
        (self.shape.conv_kernel - 1) * self.shape.conv_dim()
    }

    fn state_len(&self) -> usize {
        self.shape.v_heads * self.shape.k_head_dim * self.shape.v_head_dim
    }

    /// Makes slot `to` continue where slot `from` is, after its first `len` positions (beam search). A recurrent
    /// state holds all positions a slot ran, so `len` must be all of them.
    pub fn copy_slot(&mut self, from: usize, to: usize, len: usize) {
        assert_eq!(self.next[from], len, "a Gated DeltaNet state copies whole: slot {from} ran other positions");
        let (cl, sl) = (self.conv_len(), self.state_len());
        self.conv.copy_within(from * cl..(from + 1) * cl, to * cl);
        self.state.copy_within(from * sl..(from + 1) * sl, to * sl);
        self.next[to] = len;
    }
}

/// What the mixer keeps for its backward, and its scratch. Row-major (N, ·) unless "head-major" (v_heads, N, ·).
#[derive(Default)]
pub struct DeltaActs {
    /// the input projections' outputs (N, P): qkv | z | b | a
    pub proj: Vec<f32>,
    /// the convolution before and after its SiLU (N, conv_dim)
    conv_pre: Vec<f32>,
    conv_out: Vec<f32>,
    /// 1/‖q‖, 1/‖k‖ per row and key head (N·k_heads)
    q_rnorm: Vec<f32>,
    k_rnorm: Vec<f32>,
    /// head-major inputs of the recurrence: q (normed, scaled), k (normed), v, g, β
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
    /// the packed batch's sequences (start, end)
    seqs: Vec<(usize, usize)>,
    /// head-major output of the recurrence (v_heads, N, dv), and its states at chunk starts (training)
    o: Vec<f32>,
    saved: Vec<f32>,
    /// the gated norm's 1/rms per row and value head (N·v_heads)
    o_rstd: Vec<f32>,
    /// the gated norm's output, out_proj's input (N, value_dim)
    pub y: Vec<f32>,
    heads: Vec<HeadScratch>,
}

impl DeltaActs {
    /// Sizes the forward buffers for `n` rows (the recurrence's saved states apart: training only).
    fn prepare(&mut self, s: &DeltaNetShape, n: usize) {
        let (c, hk, hv, dk, dv) = (s.conv_dim(), s.k_heads, s.v_heads, s.k_head_dim, s.v_head_dim);
        for (v, len) in [
            (&mut self.conv_pre, n * c),
            (&mut self.conv_out, n * c),
            (&mut self.q_rnorm, n * hk),
            (&mut self.k_rnorm, n * hk),
            (&mut self.q, hv * n * dk),
            (&mut self.k, hv * n * dk),
            (&mut self.v, hv * n * dv),
            (&mut self.g, hv * n),
            (&mut self.beta, hv * n),
            (&mut self.o, hv * n * dv),
            (&mut self.o_rstd, n * hv),
            (&mut self.y, n * s.value_dim()),
        ] {
            grow(v, len);
        }
        self.heads.resize_with(hv, HeadScratch::default);
    }
}

/// The gradient scratch of the mixer's backward.
#[derive(Default)]
pub struct DeltaGrads {
    /// ∂L/∂ the projections' outputs (N, P), fed to their backward
    pub dproj: Vec<f32>,
    dconv_out: Vec<f32>,
    /// head-major ∂L/∂ o, q, k, v, g, β
    d_o: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dg: Vec<f32>,
    dbeta: Vec<f32>,
    /// ∂L/∂ out_proj's input (N, value_dim)
    pub dy: Vec<f32>,
    heads: Vec<HeadScratch>,
}

impl DeltaActs {
    /// The recurrence's inputs, head-major.
    fn inputs(&self) -> DeltaIn<'_> {
        DeltaIn { q: &self.q, k: &self.k, v: &self.v, g: &self.g, beta: &self.beta }
    }
}

impl DeltaNet {
    /// Runs the mixer over a packed batch whose projections are in `a.proj`; `a.y` receives out_proj's input.
    /// `train`: keep the recurrence's states for the backward pass.
    pub fn forward(&self, s: &DeltaNetShape, a: &mut DeltaActs, seq_start: &[u32], eps: f32, train: bool) {
        let n = seq_start.len();
        let (c, p, hv) = (s.conv_dim(), s.proj_width(), s.v_heads);
        let dims = DeltaDims { dk: s.k_head_dim, dv: s.v_head_dim };
        sequences(&mut a.seqs, seq_start);
        a.prepare(s, n);
        if train {
            grow(&mut a.saved, hv * checkpoints(&a.seqs) * dims.dk * dims.dv);
        }
        let (out, pre, proj) = (&mut a.conv_out[..n * c], &mut a.conv_pre[..n * c], &a.proj[..n * p]);
        causal_conv_silu_forward(out, pre, proj, p, &self.conv.data, seq_start);
        self.recurrence_inputs(s, a, n);
        let DeltaActs { q, k, v, g, beta, o, saved, heads, seqs, .. } = &mut *a;
        let x = DeltaIn { q, k, v, g, beta };
        delta_rule_forward(o, train.then_some(&mut saved[..]), &x, seqs, n, hv, dims, heads);
        self.gated_norm_forward(s, a, n, eps);
    }

    /// Runs decoding rows, in order, each from its slot's state in `st` (a row at position 0 starts its slot anew;
    /// any other must be the position after the slot's last), which they advance; `a.y` receives out_proj's input.
    pub fn forward_cached(
        &self,
        s: &DeltaNetShape,
        a: &mut DeltaActs,
        st: &mut DeltaNetState,
        slots: &[u32],
        positions: &[u32],
        eps: f32,
    ) {
        let n = slots.len();
        let (c, p, hv) = (s.conv_dim(), s.proj_width(), s.v_heads);
        let dims = DeltaDims { dk: s.k_head_dim, dv: s.v_head_dim };
        a.prepare(s, n);
        for (&slot, &pos) in slots.iter().zip(positions) {
            let (slot, pos) = (slot as usize, pos as usize);
            if pos == 0 {
                st.next[slot] = 0;
            }
            assert_eq!(st.next[slot], pos, "Gated DeltaNet decoding: slot {slot} ran to another position");
            st.next[slot] = pos + 1;
        }
        let (out, pre, proj) = (&mut a.conv_out[..n * c], &mut a.conv_pre[..n * c], &a.proj[..n * p]);
        causal_conv_silu_cached(out, pre, proj, p, &self.conv.data, &mut st.conv, slots, positions);
        self.recurrence_inputs(s, a, n);
        let DeltaActs { q, k, v, g, beta, o, heads, .. } = &mut *a;
        let x = DeltaIn { q, k, v, g, beta };
        delta_rule_cached(o, &x, &mut st.state, slots, positions, hv, dims, heads);
        self.gated_norm_forward(s, a, n, eps);
    }

    /// Fills the recurrence's head-major inputs from the convolution's output and the projections.
    fn recurrence_inputs(&self, s: &DeltaNetShape, a: &mut DeltaActs, n: usize) {
        let x = InputsMut {
            q: &mut a.q,
            k: &mut a.k,
            v: &mut a.v,
            g: &mut a.g,
            beta: &mut a.beta,
            q_rnorm: &mut a.q_rnorm,
            k_rnorm: &mut a.k_rnorm,
        };
        inputs_forward(x, &a.conv_out, &a.proj, &self.dt_bias.data, &self.a_log.data, n, s);
    }

    /// y = w ⊙ (o / rms(o)) ⊙ silu(z) per row and value head.
    fn gated_norm_forward(&self, s: &DeltaNetShape, a: &mut DeltaActs, n: usize, eps: f32) {
        gated_norm_forward(&mut a.y, &mut a.o_rstd, &a.o, &a.proj, &self.norm.data, n, s, eps);
    }

    /// Backward of [`Self::forward`] (a training pass) from `g.dy` (N, value_dim), ∂L/∂ out_proj's input:
    /// `g.dproj` (N, P) receives ∂L/∂ the projections' outputs; the tensors' gradients accumulate when trainable.
    pub fn backward(&mut self, s: &DeltaNetShape, a: &DeltaActs, g: &mut DeltaGrads, seq_start: &[u32]) {
        let n = seq_start.len();
        let (c, p, hv) = (s.conv_dim(), s.proj_width(), s.v_heads);
        let dims = DeltaDims { dk: s.k_head_dim, dv: s.v_head_dim };
        g.prepare(s, n);
        let DeltaGrads { dproj, dconv_out, d_o, dq, dk, dv, dg, dbeta, dy, heads } = g;
        let dproj = &mut dproj[..n * p];
        dproj.fill(0.0);
        let dw = self.norm.grad.as_deref_mut();
        gated_norm_backward(dproj, d_o, dw, dy, &a.o, &a.o_rstd, &a.proj, &self.norm.data, n, s);
        let grads = DeltaGradsMut { dq, dk, dv, dg, dbeta };
        delta_rule_backward(grads, d_o, &a.inputs(), &a.saved, &a.seqs, n, hv, dims, heads);
        let d = DeltaIn { q: dq, k: dk, v: dv, g: dg, beta: dbeta };
        let saved =
            InputsSaved { x: a.inputs(), q_rnorm: &a.q_rnorm, k_rnorm: &a.k_rnorm, conv: &a.conv_out, proj: &a.proj };
        let (ddt, dalog) = (self.dt_bias.grad.as_deref_mut(), self.a_log.grad.as_deref_mut());
        let (dt_bias, a_log) = (&self.dt_bias.data, &self.a_log.data);
        inputs_backward(dconv_out, dproj, ddt, dalog, &d, &saved, dt_bias, a_log, n, s);
        let dw = self.conv.grad.as_deref_mut();
        let (proj, pre, dconv) = (&a.proj[..n * p], &a.conv_pre[..n * c], &mut dconv_out[..n * c]);
        causal_conv_silu_backward(dproj, p, dw, dconv, pre, proj, p, &self.conv.data, seq_start);
    }
}

impl DeltaGrads {
    /// Sizes the buffers for `n` rows.
    pub fn prepare(&mut self, s: &DeltaNetShape, n: usize) {
        let (hv, dk, dv) = (s.v_heads, s.k_head_dim, s.v_head_dim);
        for (v, len) in [
            (&mut self.dproj, n * s.proj_width()),
            (&mut self.dconv_out, n * s.conv_dim()),
            (&mut self.d_o, hv * n * dv),
            (&mut self.dq, hv * n * dk),
            (&mut self.dk, hv * n * dk),
            (&mut self.dv, hv * n * dv),
            (&mut self.dg, hv * n),
            (&mut self.dbeta, hv * n),
            (&mut self.dy, n * s.value_dim()),
        ] {
            grow(v, len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::finite_diff::Rng;

    fn net(s: &DeltaNetShape, r: &mut Rng) -> DeltaNet {
        let (c, k, hv) = (s.conv_dim(), s.conv_kernel, s.v_heads);
        DeltaNet {
            conv: Param::new("conv1d.weight", vec![c, 1, k], r.vec(c * k, 0.5)),
            dt_bias: Param::new("dt_bias", vec![hv], r.vec(hv, 0.5)),
            a_log: Param::new("A_log", vec![hv], r.vec(hv, 0.5)),
            norm: Param::new("norm.weight", vec![s.v_head_dim], r.vec(s.v_head_dim, 1.0)),
        }
    }

    /// Decoding one row at a time from a slot's state gives the packed forward pass's outputs, for a convolution
    /// of 4 and of 1 (no rows kept), over more rows than a chunk; a row at position 0 starts the slot anew.
    #[test]
    fn decoding_row_by_row_is_the_packed_forward() {
        for kernel in [4, 1] {
            let s = DeltaNetShape { k_heads: 2, v_heads: 4, k_head_dim: 3, v_head_dim: 5, conv_kernel: kernel };
            let (p, vd, n) = (s.proj_width(), s.value_dim(), 20);
            let mut r = Rng::new(kernel as u64);
            let dn = net(&s, &mut r);
            let proj = r.vec(n * p, 1.0);
            let mut packed = DeltaActs { proj: proj.clone(), ..Default::default() };
            dn.forward(&s, &mut packed, &vec![0; n], 1e-6, false);
            let mut state = DeltaNetState::new(s, 2);
            let mut a = DeltaActs::default();
            for round in 0..2 {
                for t in 0..n {
                    a.proj = proj[t * p..(t + 1) * p].to_vec();
                    dn.forward_cached(&s, &mut a, &mut state, &[1], &[t as u32], 1e-6);
                    let (got, want) = (&a.y[..vd], &packed.y[t * vd..(t + 1) * vd]);
                    let diff = got.iter().zip(want).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                    assert!(diff <= 1e-6, "kernel {kernel}, round {round}, row {t}: {diff}");
                }
            }
        }
    }
}
