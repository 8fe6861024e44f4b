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

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// out = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).  All (N, hidden).
pub fn gelu_tanh_forward(out: &mut [f32], x: &[f32]) {
    out.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK)).for_each(|(o, x)| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
