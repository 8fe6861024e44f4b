//! Element-wise MLP activations: SwiGLU (Llama family) and GELU with the tanh approximation (GPT-2's "gelu_new").
use rayon::prelude::*;

const PAR_CHUNK: usize = 1 << 14;

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// out = silu(gate) ⊙ up.  All (N, hidden).
pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    out.par_chunks_mut(PAR_CHUNK).zip(gate.par_chunks(PAR_CHUNK).zip(up.par_chunks(PAR_CHUNK))).for_each(
        |(o, (g, u))| {
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                *o = silu(*g) * u;
            }
        },
    );
}

/// Backward of [`swiglu_forward`].  All (N, hidden).  dgate **=** dout ⊙ up ⊙ silu'(gate),
/// dup **=** dout ⊙ silu(gate), with silu'(g) = σ(g)·(1 + g·(1 − σ(g))).  No allocation.
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    assert!(
        dgate.len() == dout.len() && dup.len() == dout.len() && gate.len() == dout.len() && up.len() == dout.len(),
        "swiglu_backward: shapes"
    );
    dgate.par_chunks_mut(PAR_CHUNK).zip(dup.par_chunks_mut(PAR_CHUNK)).enumerate().for_each(|(c, (dg, du))| {
        let range = c * PAR_CHUNK..c * PAR_CHUNK + dg.len();
        let (d, g, u) = (&dout[range.clone()], &gate[range.clone()], &up[range]);
        for ((((dg, du), &d), &g), &u) in dg.iter_mut().zip(du.iter_mut()).zip(d).zip(g).zip(u) {
            let sig = 1.0 / (1.0 + (-g).exp());
            *dg = d * u * sig * (1.0 + g * (1.0 - sig));
            *du = d * g * sig;
        }
    });
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// out = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).  All (N, hidden).
pub fn gelu_tanh_forward(out: &mut [f32], x: &[f32]) {
    out.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh());
        }
    });
}

/// Backward of [`gelu_tanh_forward`] (the exact derivative of the tanh approximation).  All (N, hidden).
/// With u = √(2/π)·(x + 0.044715·x³):  dx **=** dout · (0.5·(1 + tanh u) + 0.5·x·(1 − tanh²u)·√(2/π)·(1 + 3·0.044715·x²)).
/// No allocation.
pub fn gelu_tanh_backward(dx: &mut [f32], dout: &[f32], x: &[f32]) {
    assert!(dx.len() == dout.len() && x.len() == dout.len(), "gelu_tanh_backward: shapes");
    dx.par_chunks_mut(PAR_CHUNK).zip(dout.par_chunks(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK))).for_each(
        |(g, (d, x))| {
            for ((g, &d), &x) in g.iter_mut().zip(d).zip(x) {
                let t = (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh();
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
                *g = d * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::super::finite_diff::{Rng, assert_bits_eq, check, weighted_sum};
    use super::*;

    // Error measure |g_fd − g| / max(1, |g|).  Element-wise ops: perturbing one input moves one output, so the
    // f32 round-off of L is ≈ 6e-8·|out·R| ≲ 3e-7, i.e. ≲ 2e-5 after dividing by 2h = 2e-2; the truncation error
    // h²/6·|f'''| is ≲ 3e-5 for silu/gelu (|f'''| ≲ 1.5) and R·up scaling ≤ 2.  Tolerance 2e-4 leaves a margin
    // of several times over what is observed; any wrong term in a derivative gives errors of order 0.1–1.
    const H: f32 = 1e-2;
    const TOL: f64 = 2e-4;

    #[test]
    fn swiglu_backward_matches_finite_differences() {
        let n = 5 * 24;
        let mut rng = Rng::new(21);
        let (gate, up, r) = (rng.vec(n, 5.0), rng.vec(n, 2.0), rng.vec(n, 1.0));
        let loss = |g: &[f32], u: &[f32]| {
            let mut o = vec![0.0; n];
            swiglu_forward(&mut o, g, u);
            weighted_sum(&o, &r)
        };
        // Pre-filled with NaN: the backward must overwrite (=).
        let (mut dg, mut du) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        swiglu_backward(&mut dg, &mut du, &r, &gate, &up);
        check("swiglu dgate", &gate, &dg, H, TOL, |g| loss(g, &up));
        check("swiglu dup", &up, &du, H, TOL, |u| loss(&gate, u));
        let (mut dg2, mut du2) = (vec![0.0; n], vec![0.0; n]);
        swiglu_backward(&mut dg2, &mut du2, &r, &gate, &up);
        assert_bits_eq("swiglu dgate rerun", &dg, &dg2);
        assert_bits_eq("swiglu dup rerun", &du, &du2);
    }

    #[test]
    fn gelu_tanh_backward_matches_finite_differences() {
        let n = 5 * 24;
        let mut rng = Rng::new(22);
        let (x, r) = (rng.vec(n, 4.0), rng.vec(n, 1.0));
        let mut dx = vec![f32::NAN; n];
        gelu_tanh_backward(&mut dx, &r, &x);
        check("gelu dx", &x, &dx, H, TOL, |x| {
            let mut o = vec![0.0; n];
            gelu_tanh_forward(&mut o, x);
            weighted_sum(&o, &r)
        });
        // torch.autograd of gelu(x, approximate="tanh") at x = 1, −1, 0.5.
        gelu_tanh_backward(&mut dx[..3], &[1.0; 3], &[1.0, -1.0, 0.5]);
        for (a, b) in dx.iter().zip([1.082_964_1, -0.082_964_09, 0.867_369_9]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn known_values() {
        let mut o = vec![0.0; 3];
        swiglu_forward(&mut o, &[0.0, 1.0, -2.0], &[5.0, 2.0, 1.0]);
        let want = [0.0, 2.0 / (1.0 + (-1.0f32).exp()), -2.0 / (1.0 + 2.0f32.exp())];
        for (a, b) in o.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        gelu_tanh_forward(&mut o, &[0.0, 1.0, -1.0]);
        // torch.nn.functional.gelu(x, approximate="tanh")
        for (a, b) in o.iter().zip([0.0, 0.841_192, -0.158_808]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
