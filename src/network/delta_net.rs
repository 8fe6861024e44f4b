//! Qwen3.5's Gated DeltaNet, the mixer of its "linear_attention" layers, standing where attention stands in the
//! other layers: everything between its input projections (in_proj_qkv | in_proj_z | in_proj_b | in_proj_a, one
//! (N, P) buffer) and out_proj, forward and backward, as transformers' `Qwen3_5GatedDeltaNet` computes it:
//!   q|k|v = silu(causal_conv(qkv));  q, k L2-normed per head (ε 1e-6), q × dk^-½;  β = σ(b);
//!   g = −e^A_log · softplus(a + dt_bias);  o = gated delta rule (kernels::gated_delta);
//!   y = w ⊙ rmsnorm(o) ⊙ silu(z) per value head  → out_proj.
use super::config::DeltaNetShape;
use super::param::Param;
use crate::kernels::gated_delta::{
    DeltaDims, HeadGrads, HeadIn, HeadScratch, causal_conv_silu_backward, causal_conv_silu_forward, checkpoints,
    delta_rule_head_backward, delta_rule_head_forward, delta_rule_head_step, sequences, silu, silu_grad,
};
use crate::kernels::grow;
use rayon::prelude::*;

/// The L2 norm's ε (transformers' `l2norm`, as flash-linear-attention).
const L2_EPS: f32 = 1e-6;

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
    /// a key head's ∂L/∂ normed q and k (dk)
    dnq: Vec<f32>,
    dnk: Vec<f32>,
    heads: Vec<HeadScratch>,
}

impl DeltaNet {
    /// Runs the mixer over a packed batch whose projections are in `a.proj`; `a.y` receives out_proj's input.
    /// `train`: keep the recurrence's states for the backward pass.
    pub fn forward(&self, s: &DeltaNetShape, a: &mut DeltaActs, seq_start: &[u32], eps: f32, train: bool) {
        let n = seq_start.len();
        let (c, p, hv) = (s.conv_dim(), s.proj_width(), s.v_heads);
        let (dk, dv) = (s.k_head_dim, s.v_head_dim);
        sequences(&mut a.seqs, seq_start);
        a.prepare(s, n);
        if train {
            grow(&mut a.saved, hv * checkpoints(&a.seqs) * dk * dv);
        }
        let proj = &a.proj[..n * p];
        causal_conv_silu_forward(
            &mut a.conv_out[..n * c],
            &mut a.conv_pre[..n * c],
            proj,
            p,
            &self.conv.data,
            seq_start,
        );
        self.recurrence_inputs(s, a, n);
        let ck = checkpoints(&a.seqs) * dk * dv;
        let DeltaActs { q, k, v, g, beta, o, saved, heads, seqs, .. } = a;
        let dims = DeltaDims { dk, dv };
        let run = |h: usize, o: &mut [f32], saved: Option<&mut [f32]>, sc: &mut HeadScratch| {
            let x = head_in(q, k, v, g, beta, h, n, dims);
            delta_rule_head_forward(o, saved, &x, seqs, dims, sc);
        };
        let heads_out = o[..hv * n * dv].par_chunks_mut(n * dv).zip(heads.par_iter_mut()).enumerate();
        match train {
            true => heads_out
                .zip(saved[..hv * ck].par_chunks_mut(ck.max(1)))
                .for_each(|((h, (o, sc)), saved)| run(h, o, Some(saved), sc)),
            false => heads_out.for_each(|(h, (o, sc))| run(h, o, None, sc)),
        }
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
        let (c, p, hv, kw) = (s.conv_dim(), s.proj_width(), s.v_heads, s.conv_kernel);
        let (dk, dv) = (s.k_head_dim, s.v_head_dim);
        a.prepare(s, n);
        let (cl, sl, w) = (st.conv_len(), st.state_len(), &self.conv.data);
        for (r, (&slot, &pos)) in slots.iter().zip(positions).enumerate() {
            let (slot, pos) = (slot as usize, pos as usize);
            if pos == 0 {
                st.conv[slot * cl..][..cl].fill(0.0);
                st.state[slot * sl..][..sl].fill(0.0);
                st.next[slot] = 0;
            }
            assert_eq!(st.next[slot], pos, "Gated DeltaNet decoding: slot {slot} ran to another position");
            st.next[slot] = pos + 1;
            let (x, hist) = (&a.proj[r * p..][..c], &mut st.conv[slot * cl..][..cl]);
            let pre = &mut a.conv_pre[r * c..][..c];
            for ch in 0..c {
                let past: f32 = (0..kw - 1).map(|j| w[ch * kw + j] * hist[j * c + ch]).sum();
                pre[ch] = past + w[ch * kw + kw - 1] * x[ch];
            }
            // a kernel of 1 keeps no rows
            if kw > 1 {
                hist.copy_within(c.., 0);
                hist[(kw - 2) * c..].copy_from_slice(x);
            }
            for (o, &v) in a.conv_out[r * c..][..c].iter_mut().zip(pre.iter()) {
                *o = silu(v);
            }
        }
        self.recurrence_inputs(s, a, n);
        let dims = DeltaDims { dk, dv };
        let DeltaActs { q, k, v, g, beta, o, heads, .. } = a;
        for (r, &slot) in slots.iter().enumerate() {
            let state = &mut st.state[slot as usize * sl..][..sl];
            let per_head = state.par_chunks_mut(dk * dv).zip(o[..hv * n * dv].par_chunks_mut(n * dv));
            per_head.zip(heads.par_iter_mut()).enumerate().for_each(|(h, ((sh, oh), sc))| {
                let x = head_in(q, k, v, g, beta, h, n, dims);
                delta_rule_head_step(sh, &mut oh[r * dv..][..dv], &x, r, dims, sc);
            });
        }
        self.gated_norm_forward(s, a, n, eps);
    }

    /// Fills the recurrence's head-major inputs from the convolution's output and the projections: each key head's
    /// q, k L2-normed and repeated for the v_heads / k_heads value heads it serves.
    fn recurrence_inputs(&self, s: &DeltaNetShape, a: &mut DeltaActs, n: usize) {
        let (c, p, hv, hk, dk, dv) = (s.conv_dim(), s.proj_width(), s.v_heads, s.k_heads, s.k_head_dim, s.v_head_dim);
        let (kd, vd, rep) = (s.key_dim(), s.value_dim(), hv / hk);
        let scale = (dk as f32).powf(-0.5);
        for t in 0..n {
            let row = &a.conv_out[t * c..][..c];
            for h in 0..hk {
                let (qr, kr) = (&row[h * dk..][..dk], &row[kd + h * dk..][..dk]);
                let rq = 1.0 / (qr.iter().map(|x| x * x).sum::<f32>() + L2_EPS).sqrt();
                let rk = 1.0 / (kr.iter().map(|x| x * x).sum::<f32>() + L2_EPS).sqrt();
                (a.q_rnorm[t * hk + h], a.k_rnorm[t * hk + h]) = (rq, rk);
                for hh in h * rep..(h + 1) * rep {
                    let at = (hh * n + t) * dk;
                    a.q[at..at + dk].iter_mut().zip(qr).for_each(|(o, &x)| *o = x * rq * scale);
                    a.k[at..at + dk].iter_mut().zip(kr).for_each(|(o, &x)| *o = x * rk);
                }
            }
            let proj = &a.proj[t * p..][..p];
            for h in 0..hv {
                a.v[(h * n + t) * dv..][..dv].copy_from_slice(&row[2 * kd + h * dv..][..dv]);
                let (b, x) = (proj[c + vd + h], proj[c + vd + hv + h] + self.dt_bias.data[h]);
                a.beta[h * n + t] = sigmoid(b);
                a.g[h * n + t] = -self.a_log.data[h].exp() * softplus(x);
            }
        }
    }

    /// y = w ⊙ (o / rms(o)) ⊙ silu(z) per row and value head.
    fn gated_norm_forward(&self, s: &DeltaNetShape, a: &mut DeltaActs, n: usize, eps: f32) {
        let (c, p, hv, dv, vd) = (s.conv_dim(), s.proj_width(), s.v_heads, s.v_head_dim, s.value_dim());
        let w = &self.norm.data;
        for t in 0..n {
            for h in 0..hv {
                let o = &a.o[(h * n + t) * dv..][..dv];
                let r = 1.0 / (o.iter().map(|x| x * x).sum::<f32>() / dv as f32 + eps).sqrt();
                a.o_rstd[t * hv + h] = r;
                let z = &a.proj[t * p + c + h * dv..][..dv];
                let y = &mut a.y[t * vd + h * dv..][..dv];
                for j in 0..dv {
                    y[j] = w[j] * (o[j] * r) * silu(z[j]);
                }
            }
        }
    }

    /// Backward of [`Self::forward`] (a training pass) from `g.dy` (N, value_dim), ∂L/∂ out_proj's input:
    /// `g.dproj` (N, P) receives ∂L/∂ the projections' outputs; the tensors' gradients accumulate when trainable.
    pub fn backward(&mut self, s: &DeltaNetShape, a: &DeltaActs, g: &mut DeltaGrads, seq_start: &[u32]) {
        let n = seq_start.len();
        let (c, p, hv, hk, dk, dv) = (s.conv_dim(), s.proj_width(), s.v_heads, s.k_heads, s.k_head_dim, s.v_head_dim);
        let (kd, vd, rep) = (s.key_dim(), s.value_dim(), hv / hk);
        g.prepare(s, n);
        let DeltaGrads { dproj, dconv_out, d_o, dq, dk: dkey, dv: dval, dg, dbeta, dy, dnq, dnk, heads } = g;
        let (dproj, dy) = (&mut dproj[..n * p], &dy[..n * vd]);
        dproj.fill(0.0);
        // the gated norm: ∂z into dproj, ∂o head-major
        let w = &self.norm.data;
        let mut dw = self.norm.grad.as_deref_mut();
        for t in 0..n {
            for h in 0..hv {
                let (o, r) = (&a.o[(h * n + t) * dv..][..dv], a.o_rstd[t * hv + h]);
                let (z, gy) = (&a.proj[t * p + c + h * dv..][..dv], &dy[t * vd + h * dv..][..dv]);
                let d_o = &mut d_o[(h * n + t) * dv..][..dv];
                let mut dot = 0.0;
                for j in 0..dv {
                    let (nj, sj) = (o[j] * r, silu(z[j]));
                    let dn = gy[j] * w[j] * sj;
                    if let Some(dw) = dw.as_deref_mut() {
                        dw[j] += gy[j] * nj * sj;
                    }
                    dproj[t * p + c + h * dv + j] = gy[j] * w[j] * nj * silu_grad(z[j]);
                    d_o[j] = dn;
                    dot += dn * nj;
                }
                let mean = dot / dv as f32;
                d_o.iter_mut().zip(o).for_each(|(d, &oj)| *d = r * (*d - oj * r * mean));
            }
        }
        // the recurrence, one value head per task
        let ck = checkpoints(&a.seqs) * dk * dv;
        let dims = DeltaDims { dk, dv };
        heads.resize_with(hv, HeadScratch::default);
        let per_head = dq[..hv * n * dk]
            .par_chunks_mut(n * dk)
            .zip(dkey[..hv * n * dk].par_chunks_mut(n * dk))
            .zip(dval[..hv * n * dv].par_chunks_mut(n * dv))
            .zip(dg[..hv * n].par_chunks_mut(n))
            .zip(dbeta[..hv * n].par_chunks_mut(n))
            .zip(heads.par_iter_mut());
        let d_o = &d_o[..];
        per_head.enumerate().for_each(|(h, (((((dq_h, dk_h), dv_h), dg_h), dbeta_h), sc))| {
            let x = head_in(&a.q, &a.k, &a.v, &a.g, &a.beta, h, n, dims);
            let gr = HeadGrads { dq: dq_h, dk: dk_h, dv: dv_h, dg: dg_h, dbeta: dbeta_h };
            let saved = &a.saved[h * ck..][..ck];
            delta_rule_head_backward(gr, &d_o[h * n * dv..][..n * dv], &x, saved, &a.seqs, dims, sc);
        });
        // β = σ(b), g = −e^A_log softplus(a + dt_bias)
        let (mut dt, mut dalog) = (self.dt_bias.grad.as_deref_mut(), self.a_log.grad.as_deref_mut());
        for t in 0..n {
            for h in 0..hv {
                let beta = a.beta[h * n + t];
                dproj[t * p + c + vd + h] = dbeta[h * n + t] * beta * (1.0 - beta);
                let x = a.proj[t * p + c + vd + hv + h] + self.dt_bias.data[h];
                let dgate = dg[h * n + t];
                let dx = dgate * -self.a_log.data[h].exp() * sigmoid(x);
                dproj[t * p + c + vd + hv + h] = dx;
                if let Some(d) = dt.as_deref_mut() {
                    d[h] += dx;
                }
                if let Some(d) = dalog.as_deref_mut() {
                    d[h] += dgate * a.g[h * n + t];
                }
            }
        }
        // q, k: the value heads' gradients summed into their key head, through the scale and the L2 norm; v
        let scale = (dk as f32).powf(-0.5);
        let dconv = &mut dconv_out[..n * c];
        for t in 0..n {
            let row = &a.conv_out[t * c..][..c];
            let drow = &mut dconv[t * c..][..c];
            for h in 0..hk {
                dnq.fill(0.0);
                dnk.fill(0.0);
                for hh in h * rep..(h + 1) * rep {
                    let at = (hh * n + t) * dk;
                    dnq.iter_mut().zip(&dq[at..at + dk]).for_each(|(d, &x)| *d += x * scale);
                    dnk.iter_mut().zip(&dkey[at..at + dk]).for_each(|(d, &x)| *d += x);
                }
                let (rq, rk) = (a.q_rnorm[t * hk + h], a.k_rnorm[t * hk + h]);
                l2norm_backward(&mut drow[h * dk..][..dk], &row[h * dk..][..dk], rq, dnq);
                l2norm_backward(&mut drow[kd + h * dk..][..dk], &row[kd + h * dk..][..dk], rk, dnk);
            }
            for h in 0..hv {
                drow[2 * kd + h * dv..][..dv].copy_from_slice(&dval[(h * n + t) * dv..][..dv]);
            }
        }
        let dw = self.conv.grad.as_deref_mut();
        let (proj, pre) = (&a.proj[..n * p], &a.conv_pre[..n * c]);
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
        self.dnq.resize(dk, 0.0);
        self.dnk.resize(dk, 0.0);
    }
}

/// Head `h`'s slices of the head-major recurrence inputs.
#[allow(clippy::too_many_arguments)]
fn head_in<'a>(
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    g: &'a [f32],
    beta: &'a [f32],
    h: usize,
    n: usize,
    dims: DeltaDims,
) -> HeadIn<'a> {
    let (dk, dv) = (dims.dk, dims.dv);
    HeadIn {
        q: &q[h * n * dk..][..n * dk],
        k: &k[h * n * dk..][..n * dk],
        v: &v[h * n * dv..][..n * dv],
        g: &g[h * n..][..n],
        beta: &beta[h * n..][..n],
    }
}

/// dx = ∂L/∂x of n = x·r, r = 1/√(‖x‖² + ε), from dn: r (dn − n (n·dn)).
fn l2norm_backward(dx: &mut [f32], x: &[f32], r: f32, dn: &[f32]) {
    let dot: f32 = x.iter().zip(dn).map(|(&x, &d)| x * r * d).sum();
    dx.iter_mut().zip(x.iter().zip(dn)).for_each(|(o, (&x, &d))| *o = r * (d - x * r * dot));
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// ln(1 + eˣ), as torch's softplus (linear above 20).
fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
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
