//! RMSNorm (Llama family) and LayerNorm (GPT-2), row-wise over dim = w.len() features.
//! Forward saves the per-row statistics the backward pass needs.
use rayon::prelude::*;

/// out[r] = x[r] / sqrt(mean(x[r]²) + eps) ⊙ w.  x, out: (N, dim); rstd: (N).
pub fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let dim = w.len();
    out.par_chunks_mut(dim).zip(rstd.par_iter_mut()).zip(x.par_chunks(dim)).for_each(|((o, rs), xr)| {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let r = 1.0 / (ms + eps).sqrt();
        *rs = r;
        for ((o, xv), wv) in o.iter_mut().zip(xr).zip(w) {
            *o = wv * (xv * r);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_of_constant_row_is_weight() {
        let x = vec![3.0f32; 4];
        let w = vec![1.0, 2.0, 3.0, 4.0];
        let (mut out, mut rstd) = (vec![0.0; 4], vec![0.0; 1]);
        rmsnorm_forward(&mut out, &mut rstd, &x, &w, 0.0);
        for (o, wv) in out.iter().zip(&w) {
            assert!((o - wv).abs() < 1e-6);
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
