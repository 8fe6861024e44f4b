//! Rotary position embedding in Hugging Face's "rotate_half" layout: feature i pairs with i + rotary_dim/2, over
//! the first rotary_dim features of each head (all of them but for Phi-4-mini's partial rotary factor).
//! (GGUF Llama checkpoints are un-permuted on load so this one layout serves both formats.)
use rayon::prelude::*;

/// cos/sin tables of shape (sets · max_pos, rotary_dim/2), computed like transformers does (f32 angles, times the
/// attention factor): one block of `max_pos` rows per set of inverse frequencies (LongRoPE has a short and a long
/// set), so set k's position p is row k·max_pos + p.
pub struct RopeTable {
    pub half: usize,
    /// Distance between heads in a buffer row; the first 2·half features of each head rotate.
    pub head_dim: usize,
    /// Rows per set of frequencies.
    pub max_pos: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    /// One set of frequencies rotating whole heads of 2·inv_freq.len() features.
    pub fn new(inv_freq: &[f32], max_pos: usize) -> Self {
        Self::with_sets(&[inv_freq], max_pos, 2 * inv_freq.len(), 1.0)
    }

    /// Tables for each set in `sets` (all of one length), cos and sin multiplied by `scale`.
    pub fn with_sets(sets: &[&[f32]], max_pos: usize, head_dim: usize, scale: f32) -> Self {
        let half = sets[0].len();
        let mut cos = Vec::with_capacity(sets.len() * max_pos * half);
        let mut sin = Vec::with_capacity(sets.len() * max_pos * half);
        for inv_freq in sets {
            for p in 0..max_pos {
                for &f in *inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos() * scale);
                    sin.push(angle.sin() * scale);
                }
            }
        }
        RopeTable { half, head_dim, max_pos, cos, sin }
    }
}

/// Rotates, in place, the first 2·half features of `n_heads` heads (`t.head_dim` apart) starting at column `col`
/// of each row of `buf` (row length `row_len`); row i uses table row `rows[i]` (its position, in its set).
pub fn rope_forward(buf: &mut [f32], row_len: usize, col: usize, n_heads: usize, rows: &[u32], t: &RopeTable) {
    let half = t.half;
    buf.par_chunks_mut(row_len).zip(rows.par_iter()).for_each(|(row, &p)| {
        let (c, s) = (&t.cos[p as usize * half..][..half], &t.sin[p as usize * half..][..half]);
        for h in 0..n_heads {
            let head = &mut row[col + h * t.head_dim..][..2 * half];
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
/// the transpose of the (scaled) rotation:
/// dx1 ← dy1·cos + dy2·sin,  dx2 ← dy2·cos − dy1·sin.  Columns outside the rotated features are untouched.
/// No allocation.
pub fn rope_backward(buf: &mut [f32], row_len: usize, col: usize, n_heads: usize, rows: &[u32], t: &RopeTable) {
    let half = t.half;
    buf.par_chunks_mut(row_len).zip(rows.par_iter()).for_each(|(row, &p)| {
        let (c, s) = (&t.cos[p as usize * half..][..half], &t.sin[p as usize * half..][..half]);
        for h in 0..n_heads {
            let head = &mut row[col + h * t.head_dim..][..2 * half];
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

    #[test]
    fn partial_scaled_rope_rotates_the_first_features_only_and_its_backward_matches_finite_differences() {
        // Heads of 10 features of which the first 6 rotate, two frequency sets (LongRoPE's short and long) of 5
        // positions, cos/sin scaled by 1.2; the second sequence's rows use set 1 (rows 5 + position).
        let table = RopeTable::with_sets(&[&[1.3, 0.4, 0.05], &[0.7, 0.2, 0.01]], 5, 10, 1.2);
        let rows = [0u32, 1, 2, 5, 6, 7, 8];
        let (hq, col, row_len) = (3, 1, 1 + 3 * 10 + 2);
        let n = rows.len();
        let mut rng = Rng::new(7);
        let (x, r) = (rng.vec(n * row_len, 1.0), rng.vec(n * row_len, 1.0));
        let mut y = x.clone();
        rope_forward(&mut y, row_len, col, hq, &rows, &table);
        for (i, (yr, xr)) in y.chunks(row_len).zip(x.chunks(row_len)).enumerate() {
            let (c, s) = (&table.cos[rows[i] as usize * 3..][..3], &table.sin[rows[i] as usize * 3..][..3]);
            for h in 0..hq {
                let (yh, xh) = (&yr[col + 10 * h..][..10], &xr[col + 10 * h..][..10]);
                for j in 0..3 {
                    assert!((yh[j] - (xh[j] * c[j] - xh[j + 3] * s[j])).abs() < 1e-6);
                    assert!((yh[j + 3] - (xh[j + 3] * c[j] + xh[j] * s[j])).abs() < 1e-6);
                }
                assert_eq!(yh[6..], xh[6..], "features past the rotary dim pass unchanged");
            }
            assert_eq!((yr[0], &yr[col + 30..]), (xr[0], &xr[col + 30..]));
        }
        let mut g = r.clone();
        rope_backward(&mut g, row_len, col, hq, &rows, &table);
        // As above, with cos and sin up to 1.2 instead of 1.
        const TOL: Tol = Tol { rtol: 1e-5, atol: 3e-6 };
        let fd = check("partial rope dx", &x, &g, 0.5, TOL, |xp| {
            let mut buf = xp.to_vec();
            rope_forward(&mut buf, row_len, col, hq, &rows, &table);
            weighted_sum(&buf, &r)
        });
        assert_catches_sign_flip("partial rope dx", &fd, &g, TOL);
    }
}
