//! Element-wise MLP activations: gated (SwiGLU: Llama family; GeGLU: Gemma) and GELU with the tanh approximation
//! (GPT-2's "gelu_new").
use rayon::prelude::*;

const PAR_CHUNK: usize = 1 << 14;

/// The activation of a gated MLP's gate: SiLU (SwiGLU: Llama, Qwen, Mistral) or the tanh GELU (GeGLU: Gemma).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateAct {
    Silu,
    GeluTanh,
}

impl GateAct {
    fn value(self, g: f32) -> f32 {
        match self {
            GateAct::Silu => g / (1.0 + (-g).exp()),
            GateAct::GeluTanh => gelu_tanh(g),
        }
    }

    /// The activation's derivative at g: silu'(g) = σ(g)·(1 + g·(1 − σ(g))), gelu' as in [`gelu_tanh_backward`].
    fn derivative(self, g: f32) -> f32 {
        match self {
            GateAct::Silu => {
                let sig = 1.0 / (1.0 + (-g).exp());
                sig * (1.0 + g * (1.0 - sig))
            }
            GateAct::GeluTanh => gelu_tanh_derivative(g),
        }
    }
}

/// out = act(gate) ⊙ up.  All (N, hidden).
pub fn glu_forward(out: &mut [f32], gate: &[f32], up: &[f32], act: GateAct) {
    out.par_chunks_mut(PAR_CHUNK).zip(gate.par_chunks(PAR_CHUNK).zip(up.par_chunks(PAR_CHUNK))).for_each(
        |(o, (g, u))| {
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                *o = act.value(*g) * u;
            }
        },
    );
}

/// Backward of [`glu_forward`].  All (N, hidden).  dgate **=** dout ⊙ up ⊙ act'(gate), dup **=** dout ⊙
/// act(gate).  No allocation.
pub fn glu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32], act: GateAct) {
    assert!(
        dgate.len() == dout.len() && dup.len() == dout.len() && gate.len() == dout.len() && up.len() == dout.len(),
        "glu_backward: shapes"
    );
    dgate.par_chunks_mut(PAR_CHUNK).zip(dup.par_chunks_mut(PAR_CHUNK)).enumerate().for_each(|(c, (dg, du))| {
        let range = c * PAR_CHUNK..c * PAR_CHUNK + dg.len();
        let (d, g, u) = (&dout[range.clone()], &gate[range.clone()], &up[range]);
        for ((((dg, du), &d), &g), &u) in dg.iter_mut().zip(du.iter_mut()).zip(d).zip(g).zip(u) {
            *dg = d * u * act.derivative(g);
            *du = d * act.value(g);
        }
    });
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

fn gelu_tanh_derivative(x: f32) -> f32 {
    let t = (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh();
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
}

/// out = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).  All (N, hidden).
pub fn gelu_tanh_forward(out: &mut [f32], x: &[f32]) {
    out.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = gelu_tanh(x);
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
                *g = d * gelu_tanh_derivative(x);
            }
        },
    );
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// out = x ⊙ σ(gate) (Qwen3.5's attention output gate). All the same length.
pub fn sigmoid_gate_forward(out: &mut [f32], x: &[f32], gate: &[f32]) {
    assert!(out.len() == x.len() && gate.len() == x.len(), "sigmoid_gate_forward: shapes");
    out.iter_mut().zip(x.iter().zip(gate)).for_each(|(o, (&x, &g))| *o = x * sigmoid(g));
}

/// Backward of [`sigmoid_gate_forward`]: dx **=** dout ⊙ σ(gate), dgate **=** dout ⊙ x ⊙ σ(gate)(1 − σ(gate)).
pub fn sigmoid_gate_backward(dx: &mut [f32], dgate: &mut [f32], dout: &[f32], x: &[f32], gate: &[f32]) {
    assert!(dx.len() == dout.len() && dgate.len() == dout.len(), "sigmoid_gate_backward: shapes");
    for (j, (dx, dg)) in dx.iter_mut().zip(dgate.iter_mut()).enumerate() {
        let sg = sigmoid(gate[j]);
        *dx = dout[j] * sg;
        *dg = dout[j] * x[j] * sg * (1.0 - sg);
    }
}

#[cfg(test)]
mod tests {
    use super::super::finite_diff::{Rng, Tol, assert_bits_eq, assert_catches_sign_flip, check, weighted_sum};
    use super::*;

    // Finite-difference steps and tolerances |g_fd − g| ≤ rtol·|g_fd| + atol (error budget: finite_diff.rs).
    //
    // gelu dx, swiglu dgate (non-linear): perturbing one input moves one output.  Truncation h²/6·|f'''|·|R·up|
    // with max|gelu'''| = 0.78 and max|silu'''| = 0.31 (|up| < 2 for swiglu, |R| < 1) is ≤ 1.3e-5 and ≤ 1.0e-5 at
    // h = 1e-2 — the observed maxima, 1.1e-5 and 2e-6 beyond rtol, sit at it.  Round-off: the one moved output
    // rounds by ≈ 3u·|o|; where |g| is small, either R (hence o·R) is small or f' ≈ 0, near x ≈ −0.75 (gelu) or
    // −1.28 (silu) where |o·R| < 0.6, giving ≤ 3u·0.6·√2 / 2h ≈ 4e-6.  Where |o| is large (|x| up to 5), o ≈ x·f'
    // tracks g and its round-off 3u·|x|·√2 / 2h ≈ 6e-5·|g| falls to rtol.  So atol = 2e-5, rtol = 1e-4.
    // (Old: |Δ| ≤ 2e-4·max(1, |g|).)
    const H: f32 = 1e-2;
    const TOL: Tol = Tol { rtol: 1e-4, atol: 2e-5 };
    // swiglu dup: L is linear in up — no truncation at any step, so h = 0.5.  The only round-off is the final
    // f32 product o = silu(gate)·up (silu(gate) is bit-identical in both evaluations): ≤ u·|o·R| per evaluation,
    // and |o·R| = |up ± h|·|g| ≤ 2.5·|g|, so |Δ| ≤ 2·u·2.5·|g| / 2h ≈ 3e-7·|g|: relative, well inside
    // rtol = 1e-5.  atol = 1e-6 only floors the f64 sum (≈ 1e-16·Σ|o R|) and the f32 rounding of tiny g.
    const H_LINEAR: f32 = 0.5;
    const TOL_LINEAR: Tol = Tol { rtol: 1e-5, atol: 1e-6 };

    #[test]
    fn sigmoid_gate_backward_matches_finite_differences() {
        let mut r = Rng::new(4);
        let (x, gate, dout) = (r.vec(40, 2.0), r.vec(40, 3.0), r.vec(40, 1.0));
        let run = |x: &[f32], gate: &[f32]| {
            let mut out = vec![0.0; x.len()];
            sigmoid_gate_forward(&mut out, x, gate);
            weighted_sum(&out, &dout)
        };
        let (mut dx, mut dgate) = (vec![0.0; 40], vec![0.0; 40]);
        sigmoid_gate_backward(&mut dx, &mut dgate, &dout, &x, &gate);
        let tol = Tol { rtol: 1e-2, atol: 1e-4 };
        check("x", &x, &dx, 1e-2, tol, |v| run(v, &gate));
        check("gate", &gate, &dgate, 1e-2, tol, |v| run(&x, v));
    }

    #[test]
    fn glu_backward_matches_finite_differences() {
        let n = 5 * 24;
        for act in [GateAct::Silu, GateAct::GeluTanh] {
            let mut rng = Rng::new(21);
            let (gate, up, r) = (rng.vec(n, 5.0), rng.vec(n, 2.0), rng.vec(n, 1.0));
            let loss = |g: &[f32], u: &[f32]| {
                let mut o = vec![0.0; n];
                glu_forward(&mut o, g, u, act);
                weighted_sum(&o, &r)
            };
            // Pre-filled with NaN: the backward must overwrite (=).
            let (mut dg, mut du) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            glu_backward(&mut dg, &mut du, &r, &gate, &up, act);
            let name = format!("{act:?} dgate");
            let fd = check(&name, &gate, &dg, H, TOL, |g| loss(g, &up));
            assert_catches_sign_flip(&name, &fd, &dg, TOL);
            let name = format!("{act:?} dup");
            let fd = check(&name, &up, &du, H_LINEAR, TOL_LINEAR, |u| loss(&gate, u));
            assert_catches_sign_flip(&name, &fd, &du, TOL_LINEAR);
            let (mut dg2, mut du2) = (vec![0.0; n], vec![0.0; n]);
            glu_backward(&mut dg2, &mut du2, &r, &gate, &up, act);
            assert_bits_eq("dgate rerun", &dg, &dg2);
            assert_bits_eq("dup rerun", &du, &du2);
        }
    }

    #[test]
    fn gelu_tanh_backward_matches_finite_differences() {
        let n = 5 * 24;
        let mut rng = Rng::new(22);
        let (x, r) = (rng.vec(n, 4.0), rng.vec(n, 1.0));
        let mut dx = vec![f32::NAN; n];
        gelu_tanh_backward(&mut dx, &r, &x);
        let fd = check("gelu dx", &x, &dx, H, TOL, |x| {
            let mut o = vec![0.0; n];
            gelu_tanh_forward(&mut o, x);
            weighted_sum(&o, &r)
        });
        assert_catches_sign_flip("gelu dx", &fd, &dx, TOL);
        // torch.autograd of gelu(x, approximate="tanh") at x = 1, −1, 0.5.
        gelu_tanh_backward(&mut dx[..3], &[1.0; 3], &[1.0, -1.0, 0.5]);
        for (a, b) in dx.iter().zip([1.082_964_1, -0.082_964_09, 0.867_369_9]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn known_values() {
        let mut o = vec![0.0; 3];
        glu_forward(&mut o, &[0.0, 1.0, -2.0], &[5.0, 2.0, 1.0], GateAct::Silu);
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
