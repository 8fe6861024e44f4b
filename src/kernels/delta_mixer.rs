//! The Gated DeltaNet's per-row ops around its recurrence (`gated_delta`), forward beside backward, as
//! transformers' `Qwen3_5GatedDeltaNet` computes them. The projections' outputs are rows of
//! `proj_width` = qkv (conv_dim) | z (value_dim) | b (v_heads) | a (v_heads):
//! - inputs: q, k (the convolution's output, L2-normed per key head, q × dk^-½) repeated for the v_heads / k_heads
//!   value heads each key head serves; v; β = σ(b); g = −e^A_log · softplus(a + dt_bias) — head-major;
//! - the gated norm: y = w ⊙ rmsnorm(o) ⊙ silu(z) per row and value head.
use super::activation::sigmoid;
use super::gated_delta::{DeltaIn, DeltaNetShape, silu, silu_grad};

/// The L2 norm's ε (transformers' `l2norm`, as flash-linear-attention).
const L2_EPS: f32 = 1e-6;

/// The recurrence's head-major inputs (as `gated_delta::DeltaIn`) and 1/‖q‖, 1/‖k‖ per row and key head
/// (N, k_heads), written by [`inputs_forward`].
pub struct InputsMut<'a> {
    pub q: &'a mut [f32],
    pub k: &'a mut [f32],
    pub v: &'a mut [f32],
    pub g: &'a mut [f32],
    pub beta: &'a mut [f32],
    pub q_rnorm: &'a mut [f32],
    pub k_rnorm: &'a mut [f32],
}

/// Fills the recurrence's inputs for `n` rows from the convolution's output `conv` (N, conv_dim), the projections
/// `proj` (N, proj_width: b and a are read) and the tensors dt_bias, A_log (v_heads).
pub fn inputs_forward(
    x: InputsMut,
    conv: &[f32],
    proj: &[f32],
    dt_bias: &[f32],
    a_log: &[f32],
    n: usize,
    s: &DeltaNetShape,
) {
    let (c, p, hv, hk, dk, dv) = (s.conv_dim(), s.proj_width(), s.v_heads, s.k_heads, s.k_head_dim, s.v_head_dim);
    let (kd, vd, rep) = (s.key_dim(), s.value_dim(), hv / hk);
    let scale = (dk as f32).powf(-0.5);
    for t in 0..n {
        let row = &conv[t * c..][..c];
        for h in 0..hk {
            let (qr, kr) = (&row[h * dk..][..dk], &row[kd + h * dk..][..dk]);
            let rq = 1.0 / (qr.iter().map(|x| x * x).sum::<f32>() + L2_EPS).sqrt();
            let rk = 1.0 / (kr.iter().map(|x| x * x).sum::<f32>() + L2_EPS).sqrt();
            (x.q_rnorm[t * hk + h], x.k_rnorm[t * hk + h]) = (rq, rk);
            for hh in h * rep..(h + 1) * rep {
                let at = (hh * n + t) * dk;
                x.q[at..at + dk].iter_mut().zip(qr).for_each(|(o, &v)| *o = v * rq * scale);
                x.k[at..at + dk].iter_mut().zip(kr).for_each(|(o, &v)| *o = v * rk);
            }
        }
        let pr = &proj[t * p..][..p];
        for h in 0..hv {
            x.v[(h * n + t) * dv..][..dv].copy_from_slice(&row[2 * kd + h * dv..][..dv]);
            let (b, a) = (pr[c + vd + h], pr[c + vd + hv + h] + dt_bias[h]);
            x.beta[h * n + t] = sigmoid(b);
            x.g[h * n + t] = -a_log[h].exp() * softplus(a);
        }
    }
}

/// What [`inputs_backward`] reads of the forward pass: its inputs to the recurrence (g and β are read), 1/‖q‖ and
/// 1/‖k‖, the convolution's output and the projections.
pub struct InputsSaved<'a> {
    pub x: DeltaIn<'a>,
    pub q_rnorm: &'a [f32],
    pub k_rnorm: &'a [f32],
    pub conv: &'a [f32],
    pub proj: &'a [f32],
}

/// Backward of [`inputs_forward`] from the recurrence's input gradients `d` (head-major, as its inputs): `dconv`
/// (N, conv_dim) and dproj's b and a columns are written; ∂dt_bias and ∂A_log **+=** when given (summed over the
/// rows in order).
#[allow(clippy::too_many_arguments)]
pub fn inputs_backward(
    dconv: &mut [f32],
    dproj: &mut [f32],
    mut ddt_bias: Option<&mut [f32]>,
    mut da_log: Option<&mut [f32]>,
    d: &DeltaIn,
    saved: &InputsSaved,
    dt_bias: &[f32],
    a_log: &[f32],
    n: usize,
    s: &DeltaNetShape,
) {
    let (c, p, hv, hk, dk, dv) = (s.conv_dim(), s.proj_width(), s.v_heads, s.k_heads, s.k_head_dim, s.v_head_dim);
    let (kd, vd, rep) = (s.key_dim(), s.value_dim(), hv / hk);
    let (x, scale) = (&saved.x, (dk as f32).powf(-0.5));
    // β = σ(b), g = −e^A_log softplus(a + dt_bias)
    for t in 0..n {
        for h in 0..hv {
            let beta = x.beta[h * n + t];
            dproj[t * p + c + vd + h] = d.beta[h * n + t] * beta * (1.0 - beta);
            let a = saved.proj[t * p + c + vd + hv + h] + dt_bias[h];
            let dg = d.g[h * n + t];
            let da = dg * -a_log[h].exp() * sigmoid(a);
            dproj[t * p + c + vd + hv + h] = da;
            if let Some(dt) = ddt_bias.as_deref_mut() {
                dt[h] += da;
            }
            if let Some(dl) = da_log.as_deref_mut() {
                dl[h] += dg * x.g[h * n + t];
            }
        }
    }
    // q, k: the value heads' gradients summed into their key head, through the scale and the L2 norm; v
    for t in 0..n {
        let row = &saved.conv[t * c..][..c];
        let drow = &mut dconv[t * c..][..c];
        for h in 0..hk {
            for (col, dsrc, sc, r) in
                [(h * dk, d.q, scale, saved.q_rnorm[t * hk + h]), (kd + h * dk, d.k, 1.0, saved.k_rnorm[t * hk + h])]
            {
                let dn = |i: usize| (h * rep..(h + 1) * rep).map(|hh| dsrc[(hh * n + t) * dk + i] * sc).sum::<f32>();
                l2norm_backward(&mut drow[col..][..dk], &row[col..][..dk], r, dn);
            }
        }
        for h in 0..hv {
            drow[2 * kd + h * dv..][..dv].copy_from_slice(&d.v[(h * n + t) * dv..][..dv]);
        }
    }
}

/// y (N, value_dim) = w ⊙ (o / rms(o)) ⊙ silu(z) per row and value head, o head-major (v_heads, N, dv), z in `proj`;
/// 1/rms kept in `rstd` (N, v_heads).
#[allow(clippy::too_many_arguments)]
pub fn gated_norm_forward(
    y: &mut [f32],
    rstd: &mut [f32],
    o: &[f32],
    proj: &[f32],
    w: &[f32],
    n: usize,
    s: &DeltaNetShape,
    eps: f32,
) {
    let (c, p, hv, dv, vd) = (s.conv_dim(), s.proj_width(), s.v_heads, s.v_head_dim, s.value_dim());
    for t in 0..n {
        for h in 0..hv {
            let o = &o[(h * n + t) * dv..][..dv];
            let r = 1.0 / (o.iter().map(|x| x * x).sum::<f32>() / dv as f32 + eps).sqrt();
            rstd[t * hv + h] = r;
            let z = &proj[t * p + c + h * dv..][..dv];
            let y = &mut y[t * vd + h * dv..][..dv];
            for j in 0..dv {
                y[j] = w[j] * (o[j] * r) * silu(z[j]);
            }
        }
    }
}

/// Backward of [`gated_norm_forward`] from dy (N, value_dim): dproj's z columns and `d_o` (head-major) are written;
/// ∂w **+=** when given.
#[allow(clippy::too_many_arguments)]
pub fn gated_norm_backward(
    dproj: &mut [f32],
    d_o: &mut [f32],
    mut dw: Option<&mut [f32]>,
    dy: &[f32],
    o: &[f32],
    rstd: &[f32],
    proj: &[f32],
    w: &[f32],
    n: usize,
    s: &DeltaNetShape,
) {
    let (c, p, hv, dv, vd) = (s.conv_dim(), s.proj_width(), s.v_heads, s.v_head_dim, s.value_dim());
    for t in 0..n {
        for h in 0..hv {
            let (o, r) = (&o[(h * n + t) * dv..][..dv], rstd[t * hv + h]);
            let (z, gy) = (&proj[t * p + c + h * dv..][..dv], &dy[t * vd + h * dv..][..dv]);
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
}

/// dx = ∂L/∂x of n = x·r, r = 1/√(‖x‖² + ε), from dn(i) = ∂L/∂nᵢ: r (dn − n (n·dn)).
fn l2norm_backward(dx: &mut [f32], x: &[f32], r: f32, dn: impl Fn(usize) -> f32) {
    let dot: f32 = x.iter().enumerate().map(|(i, &x)| x * r * dn(i)).sum();
    dx.iter_mut().zip(x).enumerate().for_each(|(i, (o, &x))| *o = r * (dn(i) - x * r * dot));
}

/// ln(1 + eˣ), as torch's softplus (linear above 20).
fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::finite_diff::{Rng, Tol, check, weighted_sum};

    const S: DeltaNetShape = DeltaNetShape { k_heads: 2, v_heads: 4, k_head_dim: 3, v_head_dim: 5, conv_kernel: 4 };
    const N: usize = 3;
    const TOL: Tol = Tol { rtol: 1e-2, atol: 1e-3 };

    /// The recurrence's inputs q, k, v, g, β and 1/‖q‖, 1/‖k‖.
    fn run(conv: &[f32], proj: &[f32], dt: &[f32], alog: &[f32]) -> [Vec<f32>; 7] {
        let (hv, dk, dv, hk) = (S.v_heads, S.k_head_dim, S.v_head_dim, S.k_heads);
        let [mut q, mut k, mut v, mut g, mut beta, mut rq, mut rk] =
            [hv * N * dk, hv * N * dk, hv * N * dv, hv * N, hv * N, N * hk, N * hk].map(|n| vec![0.0; n]);
        let x = InputsMut {
            q: &mut q,
            k: &mut k,
            v: &mut v,
            g: &mut g,
            beta: &mut beta,
            q_rnorm: &mut rq,
            k_rnorm: &mut rk,
        };
        inputs_forward(x, conv, proj, dt, alog, N, &S);
        [q, k, v, g, beta, rq, rk]
    }

    /// q | k | v | g | β, concatenated.
    fn inputs(conv: &[f32], proj: &[f32], dt: &[f32], alog: &[f32]) -> Vec<f32> {
        run(conv, proj, dt, alog)[..5].concat()
    }

    #[test]
    fn inputs_backward_matches_finite_differences() {
        let mut r = Rng::new(5);
        let (conv, proj) = (r.vec(N * S.conv_dim(), 1.0), r.vec(N * S.proj_width(), 1.0));
        let (dt, alog) = (r.vec(S.v_heads, 0.5), r.vec(S.v_heads, 0.5));
        let [q, k, v, g, beta, rq, rk] = run(&conv, &proj, &dt, &alog);
        let w: Vec<Vec<f32>> = [&q, &k, &v, &g, &beta].iter().map(|x| r.vec(x.len(), 1.0)).collect();
        let d = DeltaIn { q: &w[0], k: &w[1], v: &w[2], g: &w[3], beta: &w[4] };
        let x = DeltaIn { q: &q, k: &k, v: &v, g: &g, beta: &beta };
        let saved = InputsSaved { x, q_rnorm: &rq, k_rnorm: &rk, conv: &conv, proj: &proj };
        let (mut dconv, mut dproj) = (vec![0.0; conv.len()], vec![0.0; proj.len()]);
        let (mut ddt, mut dalog) = (vec![0.0; S.v_heads], vec![0.0; S.v_heads]);
        inputs_backward(&mut dconv, &mut dproj, Some(&mut ddt), Some(&mut dalog), &d, &saved, &dt, &alog, N, &S);
        let w = w.concat();
        check("conv", &conv, &dconv, 1e-2, TOL, |c| weighted_sum(&inputs(c, &proj, &dt, &alog), &w));
        check("proj", &proj, &dproj, 1e-2, TOL, |p| weighted_sum(&inputs(&conv, p, &dt, &alog), &w));
        check("dt_bias", &dt, &ddt, 1e-2, TOL, |t| weighted_sum(&inputs(&conv, &proj, t, &alog), &w));
        check("A_log", &alog, &dalog, 1e-2, TOL, |a| weighted_sum(&inputs(&conv, &proj, &dt, a), &w));
    }

    #[test]
    fn gated_norm_backward_matches_finite_differences() {
        let mut r = Rng::new(9);
        let (hv, dv) = (S.v_heads, S.v_head_dim);
        let (o, proj, w) = (r.vec(hv * N * dv, 1.0), r.vec(N * S.proj_width(), 1.0), r.vec(dv, 1.0));
        let run = |o: &[f32], proj: &[f32], w: &[f32]| {
            let (mut y, mut rstd) = (vec![0.0; N * S.value_dim()], vec![0.0; N * hv]);
            gated_norm_forward(&mut y, &mut rstd, o, proj, w, N, &S, 1e-6);
            (y, rstd)
        };
        let (y, rstd) = run(&o, &proj, &w);
        let dy = r.vec(y.len(), 1.0);
        let (mut dproj, mut d_o, mut dw) = (vec![0.0; proj.len()], vec![0.0; o.len()], vec![0.0; dv]);
        gated_norm_backward(&mut dproj, &mut d_o, Some(&mut dw), &dy, &o, &rstd, &proj, &w, N, &S);
        check("o", &o, &d_o, 1e-2, TOL, |o| weighted_sum(&run(o, &proj, &w).0, &dy));
        check("proj", &proj, &dproj, 1e-2, TOL, |p| weighted_sum(&run(&o, p, &w).0, &dy));
        check("w", &w, &dw, 1e-2, TOL, |w| weighted_sum(&run(&o, &proj, w).0, &dy));
    }
}
