//! RMSNorm (Llama family) and LayerNorm (GPT-2), row-wise over dim = w.len() features.
//! Forward saves the per-row statistics the backward pass needs.
use rayon::prelude::*;

/// out[r] = x[r] / sqrt(mean(x[r]²) + eps) ⊙ (offset + w).  x, out: (N, dim); rstd: (N).  `offset` is 0, or 1 for
/// Gemma's zero-centred weights (computed as transformers does: (1 + w) in f32, then the product).
pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], offset: f32, eps: f32) {
    let dim = w.len();
    out.par_chunks_mut(dim).zip(rstd.par_iter_mut()).zip(x.par_chunks(dim)).for_each(|((o, rs), xr)| {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let r = 1.0 / (ms + eps).sqrt();
        *rs = r;
        for ((o, xv), wv) in o.iter_mut().zip(xr).zip(w) {
            *o = (offset + wv) * (xv * r);
        }
    });
}

/// out[r] = (x[r] − mean) / sqrt(var + eps) ⊙ w + b.  x, out: (N, dim); mean, rstd: (N).
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
) {
    let dim = w.len();
    out.par_chunks_mut(dim).zip(mean.par_iter_mut().zip(rstd.par_iter_mut())).zip(x.par_chunks(dim)).for_each(
        |((o, (mu, rs)), xr)| {
            let m = xr.iter().sum::<f32>() / dim as f32;
            let var = xr.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / dim as f32;
            let r = 1.0 / (var + eps).sqrt();
            *mu = m;
            *rs = r;
            for (((o, xv), wv), bv) in o.iter_mut().zip(xr).zip(w).zip(b) {
                *o = (xv - m) * r * wv + bv;
            }
        },
    );
}

/// Backward of [`rmsnorm_forward`].  dout, x, dx: (N, dim); w, dw: (dim); rstd: (N) as saved by the forward.
/// dx **+=** ∂L/∂x (residual-stream gradient), dw **+=** ∂L/∂w when given.  No allocation.
///
/// With r = rstd, g = (offset + w) ⊙ dout:  dx = r·g − (r³/dim)·x·Σ(g ⊙ x),  dw = Σ_rows dout ⊙ x·r.
/// dw is reduced in a fixed order (see [`column_reduce`]): bit-identical for any thread count.
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    offset: f32,
    rstd: &[f32],
) {
    let dim = w.len();
    let n = rstd.len();
    assert!(dx.len() == n * dim && dout.len() == n * dim && x.len() == n * dim, "rmsnorm_backward: shapes");
    dx.par_chunks_mut(dim).zip(dout.par_chunks(dim).zip(x.par_chunks(dim))).zip(rstd.par_iter()).for_each(
        |((dxr, (dor, xr)), &r)| {
            let gx: f32 = dor.iter().zip(xr).zip(w).map(|((d, xv), wv)| d * (offset + wv) * xv).sum();
            let c = r * r * r * gx / dim as f32;
            for (((dx, d), xv), wv) in dxr.iter_mut().zip(dor).zip(xr).zip(w) {
                *dx += r * (offset + wv) * d - c * xv;
            }
        },
    );
    if let Some(dw) = dw {
        assert_eq!(dw.len(), dim, "rmsnorm_backward: dw shape");
        column_reduce(dw, n, |row, c0, part| {
            let r = rstd[row];
            let (dor, xr) = (&dout[row * dim + c0..][..part.len()], &x[row * dim + c0..][..part.len()]);
            for ((p, d), xv) in part.iter_mut().zip(dor).zip(xr) {
                *p += d * xv * r;
            }
        });
    }
}

/// Backward of [`layernorm_forward`].  dout, x, dx: (N, dim); w, dw, db: (dim); mean, rstd: (N) as saved by
/// the forward.  dx **+=** ∂L/∂x, dw **+=** ∂L/∂w, db **+=** ∂L/∂b (each when given).  No allocation.
///
/// With x̂ = (x − mean)·r, g = w ⊙ dout:  dx = r·(g − mean(g) − x̂·mean(g ⊙ x̂)),  dw = Σ dout ⊙ x̂,  db = Σ dout.
/// dw and db are reduced in a fixed order (see [`column_reduce`]): bit-identical for any thread count.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
) {
    let dim = w.len();
    let n = rstd.len();
    assert!(
        dx.len() == n * dim && dout.len() == n * dim && x.len() == n * dim && mean.len() == n,
        "layernorm_backward: shapes"
    );
    dx.par_chunks_mut(dim)
        .zip(dout.par_chunks(dim).zip(x.par_chunks(dim)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|((dxr, (dor, xr)), (&m, &r))| {
            let (mut sg, mut sgx) = (0.0f32, 0.0f32);
            for ((d, xv), wv) in dor.iter().zip(xr).zip(w) {
                let g = d * wv;
                sg += g;
                sgx += g * (xv - m) * r;
            }
            let (mg, mgx) = (sg / dim as f32, sgx / dim as f32);
            for (((dx, d), xv), wv) in dxr.iter_mut().zip(dor).zip(xr).zip(w) {
                *dx += r * (d * wv - mg - (xv - m) * r * mgx);
            }
        });
    if let Some(dw) = dw {
        assert_eq!(dw.len(), dim, "layernorm_backward: dw shape");
        column_reduce(dw, n, |row, c0, part| {
            let (m, r) = (mean[row], rstd[row]);
            let (dor, xr) = (&dout[row * dim + c0..][..part.len()], &x[row * dim + c0..][..part.len()]);
            for ((p, d), xv) in part.iter_mut().zip(dor).zip(xr) {
                *p += d * (xv - m) * r;
            }
        });
    }
    if let Some(db) = db {
        assert_eq!(db.len(), dim, "layernorm_backward: db shape");
        column_reduce(db, n, |row, c0, part| {
            let dor = &dout[row * dim + c0..][..part.len()];
            for (p, d) in part.iter_mut().zip(dor) {
                *p += d;
            }
        });
    }
}

/// Features per parallel task of [`column_reduce`].
const COL_BLOCK: usize = 32;
/// Rows summed into one partial before it joins the running total (keeps f32 round-off ~ (64 + N/64)·ε).
const ROW_CHUNK: usize = 64;

/// dst[j] += Σ_row term(row)[j] for a parameter gradient of `dst.len()` features, in an order fixed by the
/// shapes alone: parallel over blocks of COL_BLOCK features (disjoint outputs), and inside a block rows are
/// added in row order into a partial per ROW_CHUNK rows, partials joined in chunk order.  The result is
/// therefore bit-identical for any thread count and any scheduling.  `term(row, c0, part)` adds row `row`'s
/// contribution for features `c0 .. c0 + part.len()` into `part`.  No allocation (partials live on the stack).
fn column_reduce(dst: &mut [f32], n_rows: usize, term: impl Fn(usize, usize, &mut [f32]) + Sync) {
    dst.par_chunks_mut(COL_BLOCK).enumerate().for_each(|(b, out)| {
        let c0 = b * COL_BLOCK;
        let mut total = [0.0f32; COL_BLOCK];
        let total = &mut total[..out.len()];
        for chunk in (0..n_rows).step_by(ROW_CHUNK) {
            let mut part = [0.0f32; COL_BLOCK];
            let part = &mut part[..out.len()];
            for row in chunk..(chunk + ROW_CHUNK).min(n_rows) {
                term(row, c0, part);
            }
            for (t, p) in total.iter_mut().zip(part.iter()) {
                *t += p;
            }
        }
        for (o, t) in out.iter_mut().zip(total.iter()) {
            *o += t;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::finite_diff::{
        Rng, Tol, assert_bits_eq, assert_catches_sign_flip, check, small_column, weighted_sum, with_threads,
    };
    use super::*;

    const EPS: f32 = 1e-5;
    // Finite-difference steps and tolerances |g_fd − g| ≤ rtol·|g_fd| + atol (error budget: finite_diff.rs).
    //
    // dx: L is non-linear in x.  Perturbing x_i moves its whole row of 40 outputs, and the row's f32 rstd (and,
    // for layernorm, mean) — one reduction over 40 values, rounded by a few ulps — scales all 40 coherently, so
    // L(x ± h) carries ≈ 2u·Σ_row|o r| of round-off; with |o| ≲ |w|·|x̂| (w < 1.5, x̂ ≈ N(0, 1)) and |r| < 1,
    // Σ_row|o r| ≈ 15, i.e. ≈ 2e-6 per evaluation and √2·2e-6 / 2h ≈ 4e-5 in g_fd at h = 3e-2.  Truncation
    // h²/6·|L'''| = 1.5e-4·|L'''| with |L'''| ≲ 0.1 at rstd ≈ 1 adds ≲ 1.5e-5.  h = 3e-2 balances the two: the
    // observed error falls as 1/h up to it (1.2e-4 at h = 1e-2, ≤ 3e-5 at 3e-2) and rises beyond (1e-4 at 6e-2).
    // atol = 8e-5 covers that ≈ 6e-5 estimate with the observed ≤ 3e-5 well inside; rtol = 1e-4 covers the f32
    // rounding of terms that scale with g itself.  (Old: |Δ| ≤ 5e-4·max(1, |g|).)
    const H_X: f32 = 3e-2;
    const TOL_X: Tol = Tol { rtol: 1e-4, atol: 8e-5 };
    // dw, db: L is linear in w and in b, so the central difference has no truncation error at any step; h = 0.5
    // shrinks round-off.  Perturbing w_j moves column j of all 70 rows: each output rounds by ≤ 2u·|o| with
    // |o| ≲ (|w| + h)·|x̂| ≲ 2·3, so the worst case is 2·70·2u·|o r| / 2h ≈ 1e-4 but random signs give
    // ≈ √70·2u·6·0.5·√2 ≈ 4e-6 (observed ≤ 2.1e-6); atol = 1e-5.  rtol = 1e-5: the f32 gradient is a sum over
    // 70 rows, rounded by ≈ √70·u ≈ 5e-7 relative, with room to spare.
    const H_W: f32 = 0.5;
    const TOL_W: Tol = Tol { rtol: 1e-5, atol: 1e-5 };
    // 70 rows cross the 64-row chunk of the parameter reduction; 40 features span two 32-feature blocks.
    const N: usize = 70;
    const DIM: usize = 40;

    fn minus(a: &[f32], b: &[f32]) -> Vec<f32> {
        a.iter().zip(b).map(|(a, b)| a - b).collect()
    }

    /// Checks `g` against finite differences, then that a sign flip on its smallest visible element is caught.
    fn check_both(name: &str, x: &[f32], g: &[f32], h: f32, tol: Tol, loss: impl FnMut(&[f32]) -> f64) {
        let fd = check(name, x, g, h, tol, loss);
        assert_catches_sign_flip(name, &fd, g, tol);
    }

    fn rms_loss(x: &[f32], w: &[f32], offset: f32, r: &[f32]) -> f64 {
        let (mut out, mut rstd) = (vec![0.0; x.len()], vec![0.0; x.len() / w.len()]);
        rmsnorm_forward(&mut out, &mut rstd, x, w, offset, EPS);
        weighted_sum(&out, r)
    }

    fn ln_loss(x: &[f32], w: &[f32], b: &[f32], r: &[f32]) -> f64 {
        let n = x.len() / w.len();
        let (mut out, mut mean, mut rstd) = (vec![0.0; x.len()], vec![0.0; n], vec![0.0; n]);
        layernorm_forward(&mut out, &mut mean, &mut rstd, x, w, b, EPS);
        weighted_sum(&out, r)
    }

    #[test]
    fn rmsnorm_backward_matches_finite_differences() {
        // offset 0 (Llama) and 1 (Gemma's (1 + w)); the 1 + w weights stay O(1) like the plain ones.
        for (offset, seed) in [(0.0, 11), (1.0, 14)] {
            let mut rng = Rng::new(seed);
            let x: Vec<f32> = (0..N * DIM).map(|i| rng.uniform() * 2.0 + if i % 7 == 0 { 1.5 } else { 0.0 }).collect();
            let (w, r) = (rng.vec(DIM, 1.5 - offset), small_column(rng.vec(N * DIM, 1.0), DIM, 3));
            let (mut out, mut rstd) = (vec![0.0; N * DIM], vec![0.0; N]);
            rmsnorm_forward(&mut out, &mut rstd, &x, &w, offset, EPS);
            // Pre-filled gradients: the backward must accumulate (+=), not overwrite.
            let (g0, gw0) = (rng.vec(N * DIM, 1.0), rng.vec(DIM, 1.0));
            let (mut dx, mut dw) = (g0.clone(), gw0.clone());
            rmsnorm_backward(&mut dx, Some(&mut dw), &r, &x, &w, offset, &rstd);
            let name = |what: &str| format!("rmsnorm {what}, offset {offset}");
            check_both(&name("dx"), &x, &minus(&dx, &g0), H_X, TOL_X, |xp| rms_loss(xp, &w, offset, &r));
            check_both(&name("dw"), &w, &minus(&dw, &gw0), H_W, TOL_W, |wp| rms_loss(&x, wp, offset, &r));
            // Without dw, dx is the same.
            let mut dx2 = g0.clone();
            rmsnorm_backward(&mut dx2, None, &r, &x, &w, offset, &rstd);
            assert_bits_eq("rmsnorm dx without dw", &dx, &dx2);
        }
    }

    #[test]
    fn layernorm_backward_matches_finite_differences() {
        let mut rng = Rng::new(12);
        let x: Vec<f32> = (0..N * DIM).map(|i| rng.uniform() * 2.0 + (i / DIM) as f32 * 0.05).collect();
        let (w, b, r) = (rng.vec(DIM, 1.5), rng.vec(DIM, 1.0), small_column(rng.vec(N * DIM, 1.0), DIM, 3));
        let (mut out, mut mean, mut rstd) = (vec![0.0; N * DIM], vec![0.0; N], vec![0.0; N]);
        layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w, &b, EPS);
        let (g0, gw0, gb0) = (rng.vec(N * DIM, 1.0), rng.vec(DIM, 1.0), rng.vec(DIM, 1.0));
        let (mut dx, mut dw, mut db) = (g0.clone(), gw0.clone(), gb0.clone());
        layernorm_backward(&mut dx, Some(&mut dw), Some(&mut db), &r, &x, &w, &mean, &rstd);
        check_both("layernorm dx", &x, &minus(&dx, &g0), H_X, TOL_X, |xp| ln_loss(xp, &w, &b, &r));
        check_both("layernorm dw", &w, &minus(&dw, &gw0), H_W, TOL_W, |wp| ln_loss(&x, wp, &b, &r));
        check_both("layernorm db", &b, &minus(&db, &gb0), H_W, TOL_W, |bp| ln_loss(&x, &w, bp, &r));
        let mut dx2 = g0.clone();
        layernorm_backward(&mut dx2, None, None, &r, &x, &w, &mean, &rstd);
        assert_bits_eq("layernorm dx without dw/db", &dx, &dx2);
    }

    #[test]
    fn norm_backwards_are_bit_identical_across_runs_and_thread_counts() {
        let (n, dim) = (1000, 200);
        let mut rng = Rng::new(13);
        let (x, w, b, r) = (rng.vec(n * dim, 2.0), rng.vec(dim, 1.5), rng.vec(dim, 1.0), rng.vec(n * dim, 1.0));
        let (mut out, mut mean, mut rstd) = (vec![0.0; n * dim], vec![0.0; n], vec![0.0; n]);
        layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w, &b, EPS);
        let run = || {
            let (mut dx, mut dw, mut db) = (vec![0.0; n * dim], vec![0.0; dim], vec![0.0; dim]);
            layernorm_backward(&mut dx, Some(&mut dw), Some(&mut db), &r, &x, &w, &mean, &rstd);
            let (mut rdx, mut rdw) = (vec![0.0; n * dim], vec![0.0; dim]);
            rmsnorm_backward(&mut rdx, Some(&mut rdw), &r, &x, &w, 0.0, &rstd);
            [dx, dw, db, rdx, rdw]
        };
        let reference = with_threads(1, run);
        for threads in [1, 2, 3, 4] {
            for (k, (a, b)) in reference.iter().zip(with_threads(threads, run)).enumerate() {
                assert_bits_eq(&format!("norm gradient {k} with {threads} threads"), a, &b);
            }
        }
    }

    #[test]
    fn rmsnorm_of_constant_row_is_weight() {
        let x = vec![3.0f32; 4];
        let w = vec![1.0, 2.0, 3.0, 4.0];
        let (mut out, mut rstd) = (vec![0.0; 4], vec![0.0; 1]);
        rmsnorm_forward(&mut out, &mut rstd, &x, &w, 0.0, 0.0);
        for (o, wv) in out.iter().zip(&w) {
            assert!((o - wv).abs() < 1e-6);
        }
        rmsnorm_forward(&mut out, &mut rstd, &x, &w, 1.0, 0.0);
        for (o, wv) in out.iter().zip(&w) {
            assert!((o - (1.0 + wv)).abs() < 1e-6, "Gemma's (1 + w)");
        }
        assert!((rstd[0] - 1.0 / 3.0).abs() < 1e-7);
    }

    #[test]
    fn layernorm_output_has_zero_mean_unit_variance() {
        let x = vec![1.0f32, 2.0, 4.0, 9.0];
        let (w, b) = (vec![1.0; 4], vec![0.0; 4]);
        let (mut out, mut mean, mut rstd) = (vec![0.0; 4], vec![0.0; 1], vec![0.0; 1]);
        layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w, &b, 0.0);
        assert!((mean[0] - 4.0).abs() < 1e-6);
        let m: f32 = out.iter().sum::<f32>() / 4.0;
        let v: f32 = out.iter().map(|o| o * o).sum::<f32>() / 4.0;
        assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-5);
    }
}
