//! Qwen3.5's linear attention, the gated delta rule, and the short causal convolution before it; forward and
//! backward side by side.
//!
//! The recurrence runs one value head at a time over head-major rows (q, k: (N, dk); v: (N, dv); g, β: (N)), each
//! sequence of the packed batch from a zero state S (dk, dv):
//!   S ← e^g·S;  δ = β·(v − Sᵀk);  S ← S + k δᵀ;  o = Sᵀq
//! — transformers' `torch_recurrent_gated_delta_rule` (its chunked form computes the same in another order).
//! The backward pass keeps S at the start of every [`CHUNK`] rows of a sequence, recomputes a chunk's states from
//! there and walks it backwards: memory of N/CHUNK states instead of N.
use rayon::prelude::*;

/// Rows between two saved states of the recurrence.
pub const CHUNK: usize = 16;

/// Qwen3.5's Gated DeltaNet (`linear_*` keys): q and k heads of `k_head_dim`, v heads of `v_head_dim` (a multiple
/// of the k heads, which each serve v_heads / k_heads of them), and a causal convolution of `conv_kernel` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaNetShape {
    pub k_heads: usize,
    pub v_heads: usize,
    pub k_head_dim: usize,
    pub v_head_dim: usize,
    pub conv_kernel: usize,
}

impl DeltaNetShape {
    pub fn key_dim(&self) -> usize {
        self.k_heads * self.k_head_dim
    }

    pub fn value_dim(&self) -> usize {
        self.v_heads * self.v_head_dim
    }

    /// Channels of the convolution: q, k and v.
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }

    /// Width of the input projections' joint output: in_proj_qkv, in_proj_z, in_proj_b, in_proj_a.
    pub fn proj_width(&self) -> usize {
        self.conv_dim() + self.value_dim() + 2 * self.v_heads
    }
}

/// The rows `start..end` of each sequence of a packed batch, from each row's sequence start, into `out`.
pub fn sequences(out: &mut Vec<(usize, usize)>, seq_start: &[u32]) {
    out.clear();
    for (i, &s) in seq_start.iter().enumerate() {
        match out.last_mut() {
            Some(last) if last.0 == s as usize => last.1 = i + 1,
            _ => out.push((s as usize, i + 1)),
        }
    }
}

/// States saved per head for `seqs`: one per started CHUNK of each sequence.
pub fn checkpoints(seqs: &[(usize, usize)]) -> usize {
    seqs.iter().map(|&(s, e)| (e - s).div_ceil(CHUNK)).sum()
}

/// The shapes of one recurrence: key and value head dims.
#[derive(Clone, Copy, Debug)]
pub struct DeltaDims {
    pub dk: usize,
    pub dv: usize,
}

/// One head's inputs, head-major: q, k (N, dk), v (N, dv), g, β (N).
pub struct HeadIn<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub g: &'a [f32],
    pub beta: &'a [f32],
}

/// Per-head scratch of the recurrence, sized once ([`HeadScratch::prepare`]) and reused by every step.
#[derive(Default)]
pub struct HeadScratch {
    /// S (dk, dv)
    s: Vec<f32>,
    /// δ or Sᵀk (dv), and the backward's ∂δ, ∂(Sᵀk) (dv)
    delta: Vec<f32>,
    kv: Vec<f32>,
    ddelta: Vec<f32>,
    dkv: Vec<f32>,
    /// the backward's ∂L/∂S (dk, dv), the states before each step of a chunk (CHUNK, dk, dv) and its δ (CHUNK, dv)
    ds: Vec<f32>,
    before: Vec<f32>,
    deltas: Vec<f32>,
}

impl HeadScratch {
    pub fn prepare(&mut self, dims: DeltaDims, backward: bool) {
        let (dk, dv) = (dims.dk, dims.dv);
        let sizes = [(&mut self.s, dk * dv), (&mut self.delta, dv), (&mut self.kv, dv)];
        for (v, len) in sizes {
            v.resize(len, 0.0);
        }
        if backward {
            let sizes = [
                (&mut self.ddelta, dv),
                (&mut self.dkv, dv),
                (&mut self.ds, dk * dv),
                (&mut self.before, CHUNK * dk * dv),
                (&mut self.deltas, CHUNK * dv),
            ];
            for (v, len) in sizes {
                v.resize(len, 0.0);
            }
        }
    }
}

/// One head's forward: o (N, dv); `saved` (checkpoints(seqs), dk·dv) receives S at the start of every chunk
/// when given (training).
pub fn delta_rule_head_forward(
    o: &mut [f32],
    mut saved: Option<&mut [f32]>,
    x: &HeadIn,
    seqs: &[(usize, usize)],
    dims: DeltaDims,
    sc: &mut HeadScratch,
) {
    let (dk, dv) = (dims.dk, dims.dv);
    sc.prepare(dims, false);
    let mut ck = 0;
    for &(start, end) in seqs {
        sc.s.fill(0.0);
        for t in start..end {
            if (t - start).is_multiple_of(CHUNK)
                && let Some(saved) = saved.as_deref_mut()
            {
                saved[ck * dk * dv..][..dk * dv].copy_from_slice(&sc.s);
                ck += 1;
            }
            step(&mut sc.s, &mut sc.delta, &mut o[t * dv..][..dv], x, t, dims);
        }
    }
}

/// One step of the recurrence at row t: S ← e^g S + k δᵀ (δ = β (v − e^g Sᵀk), kept in `delta`), o = Sᵀq.
fn step(s: &mut [f32], delta: &mut [f32], o: &mut [f32], x: &HeadIn, t: usize, dims: DeltaDims) {
    let (dk, dv) = (dims.dk, dims.dv);
    let (q, k, v) = (&x.q[t * dk..][..dk], &x.k[t * dk..][..dk], &x.v[t * dv..][..dv]);
    let (a, beta) = (x.g[t].exp(), x.beta[t]);
    s.iter_mut().for_each(|v| *v *= a);
    delta.fill(0.0);
    for (i, row) in s.chunks_exact(dv).enumerate() {
        delta.iter_mut().zip(row).for_each(|(acc, &sij)| *acc += sij * k[i]);
    }
    delta.iter_mut().zip(v).for_each(|(d, &vj)| *d = (vj - *d) * beta);
    for (i, row) in s.chunks_exact_mut(dv).enumerate() {
        row.iter_mut().zip(delta.iter()).for_each(|(sij, &dj)| *sij += k[i] * dj);
    }
    o.fill(0.0);
    for (i, row) in s.chunks_exact(dv).enumerate() {
        o.iter_mut().zip(row).for_each(|(acc, &sij)| *acc += sij * q[i]);
    }
}

/// One step of a head at row t from its state `s` (dk, dv), as in decoding: `o` (dv) receives the output.
pub fn delta_rule_head_step(s: &mut [f32], o: &mut [f32], x: &HeadIn, t: usize, dims: DeltaDims, sc: &mut HeadScratch) {
    sc.prepare(dims, false);
    step(s, &mut sc.delta, o, x, t, dims);
}

/// One head's gradients, head-major like its inputs: dq, dk (N, dk), dv (N, dv), dg, dβ (N) are overwritten.
pub struct HeadGrads<'a> {
    pub dq: &'a mut [f32],
    pub dk: &'a mut [f32],
    pub dv: &'a mut [f32],
    pub dg: &'a mut [f32],
    pub dbeta: &'a mut [f32],
}

/// Backward of [`delta_rule_head_forward`] from `do_` (N, dv) and the states it saved.
pub fn delta_rule_head_backward(
    gr: HeadGrads,
    do_: &[f32],
    x: &HeadIn,
    saved: &[f32],
    seqs: &[(usize, usize)],
    dims: DeltaDims,
    sc: &mut HeadScratch,
) {
    let (dk, dv) = (dims.dk, dims.dv);
    let HeadGrads { dq, dk: dkey, dv: dval, dg, dbeta } = gr;
    sc.prepare(dims, true);
    let HeadScratch { s, delta, kv, ddelta, dkv, ds, before, deltas } = sc;
    let mut ck = checkpoints(seqs);
    for &(start, end) in seqs.iter().rev() {
        ds.fill(0.0);
        let last_chunk = start + (end - start - 1) / CHUNK * CHUNK;
        for c0 in (start..=last_chunk).rev().step_by(CHUNK) {
            ck -= 1;
            let c1 = (c0 + CHUNK).min(end);
            // recompute the chunk's states (and δ) from its checkpoint
            s.copy_from_slice(&saved[ck * dk * dv..][..dk * dv]);
            for t in c0..c1 {
                before[(t - c0) * dk * dv..][..dk * dv].copy_from_slice(s);
                step(s, delta, kv, x, t, dims);
                deltas[(t - c0) * dv..][..dv].copy_from_slice(delta);
            }
            for t in (c0..c1).rev() {
                let prev = &before[(t - c0) * dk * dv..][..dk * dv];
                let delta = &deltas[(t - c0) * dv..][..dv];
                let (q, k, v) = (&x.q[t * dk..][..dk], &x.k[t * dk..][..dk], &x.v[t * dv..][..dv]);
                let (a, beta, dout) = (x.g[t].exp(), x.beta[t], &do_[t * dv..][..dv]);
                // o = Sᵀq with S = a·prev + k δᵀ
                let dqt = &mut dq[t * dk..][..dk];
                for i in 0..dk {
                    let (p, srow) = (&prev[i * dv..][..dv], &mut ds[i * dv..][..dv]);
                    let mut acc = 0.0;
                    for j in 0..dv {
                        acc += (a * p[j] + k[i] * delta[j]) * dout[j];
                        srow[j] += q[i] * dout[j];
                    }
                    dqt[i] = acc;
                }
                // S = S' + k δᵀ
                ddelta.fill(0.0);
                let dkt = &mut dkey[t * dk..][..dk];
                for i in 0..dk {
                    let srow = &ds[i * dv..][..dv];
                    ddelta.iter_mut().zip(srow).for_each(|(acc, &g)| *acc += g * k[i]);
                    dkt[i] = srow.iter().zip(delta).map(|(&g, &dj)| g * dj).sum();
                }
                // δ = β (v − kv), kv = S'ᵀk
                kv.fill(0.0);
                for (i, row) in prev.chunks_exact(dv).enumerate() {
                    kv.iter_mut().zip(row).for_each(|(acc, &sij)| *acc += a * sij * k[i]);
                }
                let dvt = &mut dval[t * dv..][..dv];
                let mut db = 0.0;
                for j in 0..dv {
                    dvt[j] = ddelta[j] * beta;
                    dkv[j] = -ddelta[j] * beta;
                    db += ddelta[j] * (v[j] - kv[j]);
                }
                dbeta[t] = db;
                // S' = a·prev: dS' = dS + k dkvᵀ; dk += S' dkv; dg = a Σ dS'⊙prev; dS(prev) = a dS'
                let mut da = 0.0f64;
                for i in 0..dk {
                    let (p, srow) = (&prev[i * dv..][..dv], &mut ds[i * dv..][..dv]);
                    let mut acc = 0.0;
                    for j in 0..dv {
                        srow[j] += k[i] * dkv[j];
                        acc += a * p[j] * dkv[j];
                        da += srow[j] as f64 * p[j] as f64;
                        srow[j] *= a;
                    }
                    dkt[i] += acc;
                }
                dg[t] = (da * a as f64) as f32;
            }
        }
    }
}

/// Every value head's inputs, head-major: q, k (heads, N, dk), v (heads, N, dv), g, β (heads, N).
#[derive(Clone, Copy)]
pub struct DeltaIn<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub g: &'a [f32],
    pub beta: &'a [f32],
}

impl<'a> DeltaIn<'a> {
    /// Head `h`'s rows of a batch of `n`.
    pub fn head(&self, h: usize, n: usize, dims: DeltaDims) -> HeadIn<'a> {
        let (dk, dv) = (dims.dk, dims.dv);
        HeadIn {
            q: &self.q[h * n * dk..][..n * dk],
            k: &self.k[h * n * dk..][..n * dk],
            v: &self.v[h * n * dv..][..n * dv],
            g: &self.g[h * n..][..n],
            beta: &self.beta[h * n..][..n],
        }
    }
}

/// Every value head's gradients, head-major as [`DeltaIn`] (overwritten).
pub struct DeltaGradsMut<'a> {
    pub dq: &'a mut [f32],
    pub dk: &'a mut [f32],
    pub dv: &'a mut [f32],
    pub dg: &'a mut [f32],
    pub dbeta: &'a mut [f32],
}

/// The sequences of a packed batch as a device reads them: (start, end, first checkpoint) per sequence, the
/// checkpoints numbered as [`delta_rule_forward`] saves them.
pub fn seq_table(out: &mut Vec<u32>, seqs: &[(usize, usize)]) {
    out.clear();
    let mut ck = 0;
    for &(s, e) in seqs {
        out.extend([s as u32, e as u32, ck as u32]);
        ck += (e - s).div_ceil(CHUNK);
    }
}

/// [`seq_table`] read back into (start, end) pairs.
pub fn seqs_of_table(table: &[u32]) -> Vec<(usize, usize)> {
    table.chunks_exact(3).map(|t| (t[0] as usize, t[1] as usize)).collect()
}

/// The recurrence of every value head over the `n` rows of a packed batch, one head per task: o (heads, N, dv);
/// `saved` (heads, checkpoints(seqs), dk·dv) receives each head's states at its chunk starts when given.
#[allow(clippy::too_many_arguments)]
pub fn delta_rule_forward(
    o: &mut [f32],
    saved: Option<&mut [f32]>,
    x: &DeltaIn,
    seqs: &[(usize, usize)],
    n: usize,
    heads: usize,
    dims: DeltaDims,
    sc: &mut Vec<HeadScratch>,
) {
    let ck = checkpoints(seqs) * dims.dk * dims.dv;
    sc.resize_with(heads, HeadScratch::default);
    let per_head = o[..heads * n * dims.dv].par_chunks_mut(n * dims.dv).zip(sc.par_iter_mut()).enumerate();
    match saved {
        Some(saved) => per_head
            .zip(saved[..heads * ck].par_chunks_mut(ck.max(1)))
            .for_each(|((h, (o, sc)), sv)| delta_rule_head_forward(o, Some(sv), &x.head(h, n, dims), seqs, dims, sc)),
        None => per_head.for_each(|(h, (o, sc))| delta_rule_head_forward(o, None, &x.head(h, n, dims), seqs, dims, sc)),
    }
}

/// Backward of [`delta_rule_forward`] from `do_` (heads, N, dv) and the states it saved, one head per task.
#[allow(clippy::too_many_arguments)]
pub fn delta_rule_backward(
    gr: DeltaGradsMut,
    do_: &[f32],
    x: &DeltaIn,
    saved: &[f32],
    seqs: &[(usize, usize)],
    n: usize,
    heads: usize,
    dims: DeltaDims,
    sc: &mut Vec<HeadScratch>,
) {
    let (dk, dv) = (dims.dk, dims.dv);
    let ck = checkpoints(seqs) * dk * dv;
    sc.resize_with(heads, HeadScratch::default);
    let per_head = gr.dq[..heads * n * dk]
        .par_chunks_mut(n * dk)
        .zip(gr.dk[..heads * n * dk].par_chunks_mut(n * dk))
        .zip(gr.dv[..heads * n * dv].par_chunks_mut(n * dv))
        .zip(gr.dg[..heads * n].par_chunks_mut(n))
        .zip(gr.dbeta[..heads * n].par_chunks_mut(n))
        .zip(sc.par_iter_mut());
    per_head.enumerate().for_each(|(h, (((((dq, dk_h), dv_h), dg), dbeta), sc))| {
        let g = HeadGrads { dq, dk: dk_h, dv: dv_h, dg, dbeta };
        let saved = &saved[h * ck..][..ck];
        delta_rule_head_backward(g, &do_[h * n * dv..][..n * dv], &x.head(h, n, dims), saved, seqs, dims, sc);
    });
}

/// Decoding rows through the recurrence, in order, each from its slot's state in `state` (slots, heads, dk·dv),
/// which it advances; a row at position 0 starts from a zero state. o (heads, N, dv) as [`delta_rule_forward`]'s.
#[allow(clippy::too_many_arguments)]
pub fn delta_rule_cached(
    o: &mut [f32],
    x: &DeltaIn,
    state: &mut [f32],
    slots: &[u32],
    positions: &[u32],
    heads: usize,
    dims: DeltaDims,
    sc: &mut Vec<HeadScratch>,
) {
    let (n, sl, dv) = (slots.len(), heads * dims.dk * dims.dv, dims.dv);
    sc.resize_with(heads, HeadScratch::default);
    for (r, (&slot, &pos)) in slots.iter().zip(positions).enumerate() {
        let st = &mut state[slot as usize * sl..][..sl];
        if pos == 0 {
            st.fill(0.0);
        }
        let per_head = st.par_chunks_mut(dims.dk * dv).zip(o[..heads * n * dv].par_chunks_mut(n * dv));
        per_head.zip(sc.par_iter_mut()).enumerate().for_each(|(h, ((s, o), sc))| {
            delta_rule_head_step(s, &mut o[r * dv..][..dv], &x.head(h, n, dims), r, dims, sc);
        });
    }
}

/// Depthwise causal convolution of kernel K over each sequence, then SiLU: pre[t][c] = Σ_j w[c][j]·x[t−K+1+j][c]
/// (rows before the sequence's start are zero), out = silu(pre). x: rows of `x_stride`, channels 0..C of each;
/// w: (C, K); pre, out: (N, C).
pub fn causal_conv_silu_forward(
    out: &mut [f32],
    pre: &mut [f32],
    x: &[f32],
    x_stride: usize,
    w: &[f32],
    seq_start: &[u32],
) {
    let c = pre.len() / seq_start.len().max(1);
    let kw = w.len() / c.max(1);
    pre.par_chunks_mut(c).zip(out.par_chunks_mut(c)).enumerate().for_each(|(t, (p, o))| {
        let s = seq_start[t] as usize;
        p.fill(0.0);
        for j in 0..kw {
            let Some(src) = (t + j + 1).checked_sub(kw).filter(|&r| r >= s) else { continue };
            let xr = &x[src * x_stride..][..c];
            for ch in 0..c {
                p[ch] += w[ch * kw + j] * xr[ch];
            }
        }
        o.iter_mut().zip(p.iter()).for_each(|(o, &v)| *o = silu(v));
    });
}

/// Backward of [`causal_conv_silu_forward`]: dx (rows of `dx_stride`, channels 0..C) += ∂L/∂x; dw (C, K) += ∂L/∂w
/// when given. dout, pre: (N, C); `dout` is overwritten by ∂L/∂pre.
#[allow(clippy::too_many_arguments)]
pub fn causal_conv_silu_backward(
    dx: &mut [f32],
    dx_stride: usize,
    dw: Option<&mut [f32]>,
    dout: &mut [f32],
    pre: &[f32],
    x: &[f32],
    x_stride: usize,
    w: &[f32],
    seq_start: &[u32],
) {
    let n = seq_start.len();
    let c = pre.len() / n.max(1);
    let kw = w.len() / c.max(1);
    dout.iter_mut().zip(pre).for_each(|(g, &p)| *g *= silu_grad(p));
    let dpre = &*dout;
    // dx[s] = Σ_j w[j]·dpre[s + K − 1 − j] over the rows of s's sequence
    dx.par_chunks_mut(dx_stride).enumerate().for_each(|(s, d)| {
        let d = &mut d[..c];
        for j in 0..kw {
            let t = s + kw - 1 - j;
            if t >= n || seq_start[t] as usize > s {
                continue;
            }
            let g = &dpre[t * c..][..c];
            for ch in 0..c {
                d[ch] += w[ch * kw + j] * g[ch];
            }
        }
    });
    if let Some(dw) = dw {
        dw.par_chunks_mut(kw).enumerate().for_each(|(ch, dwc)| {
            for t in 0..n {
                let s = seq_start[t] as usize;
                for (j, d) in dwc.iter_mut().enumerate() {
                    if let Some(src) = (t + j + 1).checked_sub(kw).filter(|&r| r >= s) {
                        *d += dpre[t * c + ch] * x[src * x_stride + ch];
                    }
                }
            }
        });
    }
}

/// Decoding rows through [`causal_conv_silu_forward`], in order, each after its slot's last K−1 input rows in
/// `hist` (slots, K−1, C), oldest first — zeros for a row at position 0 — which it advances.
#[allow(clippy::too_many_arguments)]
pub fn causal_conv_silu_cached(
    out: &mut [f32],
    pre: &mut [f32],
    x: &[f32],
    x_stride: usize,
    w: &[f32],
    hist: &mut [f32],
    slots: &[u32],
    positions: &[u32],
) {
    let c = pre.len() / slots.len().max(1);
    let kw = w.len() / c.max(1);
    let hl = (kw - 1) * c;
    for (r, (&slot, &pos)) in slots.iter().zip(positions).enumerate() {
        let (x, h) = (&x[r * x_stride..][..c], &mut hist[slot as usize * hl..][..hl]);
        if pos == 0 {
            h.fill(0.0);
        }
        let p = &mut pre[r * c..][..c];
        for ch in 0..c {
            let past: f32 = (0..kw - 1).map(|j| w[ch * kw + j] * h[j * c + ch]).sum();
            p[ch] = past + w[ch * kw + kw - 1] * x[ch];
        }
        // a kernel of 1 keeps no rows
        if kw > 1 {
            h.copy_within(c.., 0);
            h[(kw - 2) * c..].copy_from_slice(x);
        }
        out[r * c..][..c].iter_mut().zip(p.iter()).for_each(|(o, &v)| *o = silu(v));
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// d silu(x) / dx.
pub fn silu_grad(x: f32) -> f32 {
    let s = 1.0 / (1.0 + (-x).exp());
    s * (1.0 + x * (1.0 - s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::finite_diff::{Rng, Tol, check, weighted_sum};

    const DIMS: DeltaDims = DeltaDims { dk: 3, dv: 4 };

    struct Inputs {
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        g: Vec<f32>,
        beta: Vec<f32>,
    }

    impl Inputs {
        fn head(&self) -> HeadIn<'_> {
            HeadIn { q: &self.q, k: &self.k, v: &self.v, g: &self.g, beta: &self.beta }
        }
    }

    /// Two sequences, the second longer than a chunk, so checkpoints and the state reset are both exercised.
    fn setup(n: usize) -> (Inputs, Vec<(usize, usize)>) {
        let mut r = Rng::new(7);
        let x = Inputs {
            q: r.vec(n * DIMS.dk, 0.6),
            k: r.vec(n * DIMS.dk, 0.6),
            v: r.vec(n * DIMS.dv, 1.0),
            g: r.vec(n, 0.5).iter().map(|x| x - 0.6).collect(),
            beta: r.vec(n, 0.4).iter().map(|x| x + 0.5).collect(),
        };
        (x, vec![(0, 5), (5, n)])
    }

    fn forward(x: &Inputs, seqs: &[(usize, usize)], saved: Option<&mut [f32]>) -> Vec<f32> {
        let n = x.g.len();
        let mut o = vec![0.0; n * DIMS.dv];
        delta_rule_head_forward(&mut o, saved, &x.head(), seqs, DIMS, &mut HeadScratch::default());
        o
    }

    /// Direct evaluation of the recurrence as transformers writes it, in f64.
    fn reference(x: &Inputs, seqs: &[(usize, usize)]) -> Vec<f64> {
        let (dk, dv) = (DIMS.dk, DIMS.dv);
        let mut o = vec![0.0; x.g.len() * dv];
        for &(s0, e) in seqs {
            let mut s = vec![vec![0.0f64; dv]; dk];
            for t in s0..e {
                let a = (x.g[t] as f64).exp();
                s.iter_mut().flatten().for_each(|v| *v *= a);
                let kv: Vec<f64> = (0..dv).map(|j| (0..dk).map(|i| s[i][j] * x.k[t * dk + i] as f64).sum()).collect();
                for (i, row) in s.iter_mut().enumerate() {
                    for (j, sij) in row.iter_mut().enumerate() {
                        *sij += x.k[t * dk + i] as f64 * (x.v[t * dv + j] as f64 - kv[j]) * x.beta[t] as f64;
                    }
                }
                for j in 0..dv {
                    o[t * dv + j] = (0..dk).map(|i| s[i][j] * x.q[t * dk + i] as f64).sum();
                }
            }
        }
        o
    }

    #[test]
    fn forward_matches_the_recurrence_in_f64() {
        let (x, seqs) = setup(40);
        let o = forward(&x, &seqs, None);
        let r = reference(&x, &seqs);
        let err = o.iter().zip(&r).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-5, "max |Δ| {err}");
        // the second sequence starts from a zero state: its first output depends on its first row only
        let alone = forward(
            &Inputs {
                q: x.q[5 * 3..6 * 3].to_vec(),
                k: x.k[5 * 3..6 * 3].to_vec(),
                v: x.v[5 * 4..6 * 4].to_vec(),
                g: vec![x.g[5]],
                beta: vec![x.beta[5]],
            },
            &[(0, 1)],
            None,
        );
        assert_eq!(&o[5 * 4..6 * 4], &alone[..]);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let n = 40; // the second sequence spans three chunks
        let (x, seqs) = setup(n);
        let r = Rng::new(11).vec(n * DIMS.dv, 1.0);
        let mut saved = vec![0.0; checkpoints(&seqs) * DIMS.dk * DIMS.dv];
        forward(&x, &seqs, Some(&mut saved));
        let (mut dq, mut dk, mut dv) = (vec![0.0; n * 3], vec![0.0; n * 3], vec![0.0; n * 4]);
        let (mut dg, mut db) = (vec![0.0; n], vec![0.0; n]);
        let gr = HeadGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv, dg: &mut dg, dbeta: &mut db };
        delta_rule_head_backward(gr, &r, &x.head(), &saved, &seqs, DIMS, &mut HeadScratch::default());
        let tol = Tol { rtol: 2e-2, atol: 2e-3 };
        let loss = |f: fn(&mut Inputs, &[f32]), v: &[f32]| {
            let (mut y, _) = setup(n);
            f(&mut y, v);
            weighted_sum(&forward(&y, &seqs, None), &r)
        };
        check("q", &x.q, &dq, 1e-2, tol, |v| loss(|y, v| y.q = v.to_vec(), v));
        check("k", &x.k, &dk, 1e-2, tol, |v| loss(|y, v| y.k = v.to_vec(), v));
        check("v", &x.v, &dv, 1e-2, tol, |v| loss(|y, v| y.v = v.to_vec(), v));
        check("g", &x.g, &dg, 1e-2, tol, |v| loss(|y, v| y.g = v.to_vec(), v));
        check("beta", &x.beta, &db, 1e-2, tol, |v| loss(|y, v| y.beta = v.to_vec(), v));
    }

    #[test]
    fn conv_backward_matches_finite_differences() {
        let (n, c, kw, stride) = (9, 3, 4, 5);
        let seq_start = [0, 0, 0, 0, 4, 4, 4, 4, 4];
        let mut r = Rng::new(3);
        let (x, w, dout) = (r.vec(n * stride, 1.0), r.vec(c * kw, 0.7), r.vec(n * c, 1.0));
        let run = |x: &[f32], w: &[f32]| {
            let (mut out, mut pre) = (vec![0.0; n * c], vec![0.0; n * c]);
            causal_conv_silu_forward(&mut out, &mut pre, x, stride, w, &seq_start);
            (out, pre)
        };
        let (_, pre) = run(&x, &w);
        let (mut dx, mut dw) = (vec![0.0; n * stride], vec![0.0; c * kw]);
        causal_conv_silu_backward(&mut dx, stride, Some(&mut dw), &mut dout.clone(), &pre, &x, stride, &w, &seq_start);
        let tol = Tol { rtol: 1e-2, atol: 1e-3 };
        check("x", &x, &dx, 1e-2, tol, |x| weighted_sum(&run(x, &w).0, &dout));
        check("w", &w, &dw, 1e-2, tol, |w| weighted_sum(&run(&x, w).0, &dout));
        // columns past the C channels of each row are not inputs
        assert!((0..n).all(|t| dx[t * stride + 3..t * stride + 5].iter().all(|&v| v == 0.0)));
    }

    #[test]
    fn sequences_of_a_packed_batch() {
        let mut seqs = vec![(9, 9)];
        sequences(&mut seqs, &[0, 0, 0, 3, 3, 5]);
        assert_eq!(seqs, vec![(0, 3), (3, 5), (5, 6)]);
        assert_eq!(checkpoints(&[(0, 16), (16, 33)]), 1 + 2);
    }
}
