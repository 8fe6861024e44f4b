//! Rotary position embedding in Hugging Face's "rotate_half" layout: feature i pairs with i + head_dim/2.
//! (GGUF Llama checkpoints are un-permuted on load so this one layout serves both formats.)
use rayon::prelude::*;

/// cos/sin tables of shape (max_pos, head_dim/2), computed like transformers does (f32 angles).
pub struct RopeTable {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(inv_freq: &[f32], max_pos: usize) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for &f in inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        RopeTable { half, cos, sin }
    }
}

/// Rotates, in place, `n_heads` heads of `2·half` features starting at column `col` of each row
/// of `buf` (row length `row_len`); row i sits at position `positions[i]`.
pub fn rope_forward(buf: &mut [f32], row_len: usize, col: usize, n_heads: usize, positions: &[u32], t: &RopeTable) {
    let half = t.half;
    buf.par_chunks_mut(row_len).zip(positions.par_iter()).for_each(|(row, &p)| {
        let (c, s) = (&t.cos[p as usize * half..][..half], &t.sin[p as usize * half..][..half]);
        for h in 0..n_heads {
            let head = &mut row[col + h * 2 * half..][..2 * half];
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] - b * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
    });
}

/// Backward of [`rope_forward`], in place on the gradient buffer (same layout and arguments as the forward):
/// the rotation is orthogonal, so its transpose is the rotation by −θ:
/// dx1 ← dy1·cos + dy2·sin,  dx2 ← dy2·cos − dy1·sin.  Columns outside the rotated heads are untouched.
/// No allocation.
pub fn rope_backward(buf: &mut [f32], row_len: usize, col: usize, n_heads: usize, positions: &[u32], t: &RopeTable) {
    let half = t.half;
    buf.par_chunks_mut(row_len).zip(positions.par_iter()).for_each(|(row, &p)| {
        let (c, s) = (&t.cos[p as usize * half..][..half], &t.sin[p as usize * half..][..half]);
        for h in 0..n_heads {
            let head = &mut row[col + h * 2 * half..][..2 * half];
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] + b * s[i];
                x2[i] = b * c[i] - a * s[i];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::finite_diff::{Rng, Tol, assert_catches_sign_flip, check, weighted_sum};
    use super::*;

    #[test]
    fn rope_backward_matches_finite_differences() {
        // Packed sequences of lengths 3 and 5 (positions restart), a row of [pad 3 | q: 4 heads | k: 2 heads | pad 2]
        // with head_dim 6; the angles (up to 4·1.3 rad) cover all four quadrants.
        let (half, hq, hk) = (3, 4, 2);
        let table = RopeTable::new(&[1.3, 0.4, 0.05], 8);
        let positions = [0u32, 1, 2, 0, 1, 2, 3, 4];
        let (q_col, k_col) = (3, 3 + hq * 2 * half);
        let row_len = k_col + hk * 2 * half + 2;
        let n = positions.len();
        let mut rng = Rng::new(31);
        let (x, r) = (rng.vec(n * row_len, 1.0), rng.vec(n * row_len, 1.0));
        let forward = |buf: &mut [f32]| {
            rope_forward(buf, row_len, q_col, hq, &positions, &table);
            rope_forward(buf, row_len, k_col, hk, &positions, &table);
        };
        let mut g = r.clone();
        rope_backward(&mut g, row_len, k_col, hk, &positions, &table);
        rope_backward(&mut g, row_len, q_col, hq, &positions, &table);
        // |g_fd − g| ≤ rtol·|g_fd| + atol (error budget: finite_diff.rs).  L is linear in x: the central
        // difference has no truncation error at any step, so h = 0.5 shrinks round-off.  A perturbed element moves
        // the two outputs of its rotation pair, x·cos − y·sin and x·sin + y·cos with |x ± h| ≤ 1.5 and |y| ≤ 1,
        // each rounded by ≤ 2u·2.5: ≤ 2·2·2u·2.5·|R| / 2h ≈ 1.2e-6 in the worst case, ≈ 3e-7 typically (observed
        // ≤ 1.3e-7; padding columns are untouched, so exact).  atol = 2e-6; rtol = 1e-5 for the f32 rounding of
        // g itself (a rotation of R).  (Old: |Δ| ≤ 1e-4·max(1, |g|).)
        const TOL: Tol = Tol { rtol: 1e-5, atol: 2e-6 };
        let fd = check("rope dx", &x, &g, 0.5, TOL, |xp| {
            let mut buf = xp.to_vec();
            forward(&mut buf);
            weighted_sum(&buf, &r)
        });
        assert_catches_sign_flip("rope dx", &fd, &g, TOL);
        // Orthogonality: backward ∘ forward = identity, and padding columns are never touched.
        let mut buf = x.clone();
        forward(&mut buf);
        rope_backward(&mut buf, row_len, q_col, hq, &positions, &table);
        rope_backward(&mut buf, row_len, k_col, hk, &positions, &table);
        for (a, b) in buf.iter().zip(&x) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
