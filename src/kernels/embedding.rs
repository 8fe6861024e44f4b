//! Token (and learned position) embedding lookup.
use super::packed::MatrixRef;
use rayon::prelude::*;

/// out[i] = table[ids[i]] (+ pos_table[positions[i]]).  table: (V, dim), dense or packed; out: (N, dim).
/// Ids were validated against V when the batch was built.
pub fn embedding_forward(
    out: &mut [f32],
    ids: &[u32],
    table: MatrixRef,
    positions: &[u32],
    pos_table: Option<&[f32]>,
    dim: usize,
) {
    out.par_chunks_mut(dim).enumerate().for_each(|(i, row)| {
        table.row(ids[i] as usize, row);
        if let Some(pt) = pos_table {
            let p = positions[i] as usize * dim;
            for (o, v) in row.iter_mut().zip(&pt[p..p + dim]) {
                *o += v;
            }
        }
    });
}

/// Backward of [`embedding_forward`].  dout: (N, dim); dtable **+=** (V, dim): row ids[i] += dout[i];
/// dpos **+=** (max_pos, dim): row positions[i] += dout[i].  Either may be None (frozen or absent).
/// Rows are added sequentially in row order — deterministic for any thread count; the two tables are filled
/// concurrently.  This is N·dim additions, negligible beside any matmul of the step.  No allocation.
pub fn embedding_backward(
    dtable: Option<&mut [f32]>,
    dpos: Option<&mut [f32]>,
    dout: &[f32],
    ids: &[u32],
    positions: &[u32],
    dim: usize,
) {
    assert_eq!(dout.len(), ids.len() * dim, "embedding_backward: dout shape");
    let scatter = |dst: Option<&mut [f32]>, index: &[u32]| {
        if let Some(dst) = dst {
            for (g, &k) in dout.chunks_exact(dim).zip(index) {
                for (d, g) in dst[k as usize * dim..][..dim].iter_mut().zip(g) {
                    *d += g;
                }
            }
        }
    };
    rayon::join(|| scatter(dtable, ids), || scatter(dpos, positions));
}

#[cfg(test)]
mod tests {
    use super::super::finite_diff::{
        Rng, Tol, assert_bits_eq, assert_catches_sign_flip, check, small_column, weighted_sum, with_threads,
    };
    use super::*;

    #[test]
    fn embedding_backward_matches_finite_differences() {
        // Packed sequences of lengths 3 and 5; ids repeat so rows of the table collect several gradients.
        let (vocab, dim, max_pos) = (7, 5, 6);
        let ids = [3u32, 1, 3, 6, 0, 3, 1, 1];
        let positions = [0u32, 1, 2, 0, 1, 2, 3, 4];
        let n = ids.len();
        let mut rng = Rng::new(51);
        // Column 2 of R is tiny, so every table row has a small gradient element for the sign-flip check.
        let (table, pos) = (rng.vec(vocab * dim, 1.0), rng.vec(max_pos * dim, 1.0));
        let r = small_column(rng.vec(n * dim, 1.0), dim, 2);
        let loss = |t: &[f32], p: &[f32]| {
            let mut out = vec![0.0; n * dim];
            embedding_forward(
                &mut out,
                &ids,
                MatrixRef::Dense { data: t, rows: vocab, cols: dim },
                &positions,
                Some(p),
                dim,
            );
            weighted_sum(&out, &r)
        };
        let (g0, p0) = (rng.vec(vocab * dim, 1.0), rng.vec(max_pos * dim, 1.0));
        let (mut dt, mut dp) = (g0.clone(), p0.clone());
        embedding_backward(Some(&mut dt), Some(&mut dp), &r, &ids, &positions, dim);
        let minus = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| a - b).collect::<Vec<f32>>();
        // |g_fd − g| ≤ rtol·|g_fd| + atol (error budget: finite_diff.rs).  L is linear in both tables, so the
        // central difference has no truncation error at any step: h = 0.5 shrinks round-off.  A table entry
        // feeds at most 3 outputs (id 3 and id 1 appear 3 times; positions ≤ 2), each the f32 sum t + p with
        // |t + p| < 2.5 rounded by ≤ u·2.5: ≤ 2·3·u·2.5·|R| / 2h ≈ 9e-7 in the worst case (observed ≤ 2.4e-7).
        // atol = 1e-6; rtol = 1e-5 covers the f32 sum of ≤ 3 R terms in g.  (Old: |Δ| ≤ 1e-4·max(1, |g|).)
        const H: f32 = 0.5;
        const TOL: Tol = Tol { rtol: 1e-5, atol: 1e-6 };
        let (dt1, dp1) = (minus(&dt, &g0), minus(&dp, &p0));
        let fd = check("embedding dtable", &table, &dt1, H, TOL, |t| loss(t, &pos));
        assert_catches_sign_flip("embedding dtable", &fd, &dt1, TOL);
        let fd = check("embedding dpos", &pos, &dp1, H, TOL, |p| loss(&table, p));
        assert_catches_sign_flip("embedding dpos", &fd, &dp1, TOL);
        // Rows never looked up (id 2, 4, 5; position 5) keep their pre-filled gradient exactly.
        for v in [2, 4, 5] {
            assert_bits_eq("untouched table row", &dt[v * dim..][..dim], &g0[v * dim..][..dim]);
        }
        assert_bits_eq("untouched position row", &dp[5 * dim..], &p0[5 * dim..]);
        // Deterministic across runs and thread counts; None skips a table.
        let run = || {
            let mut dt = vec![0.0; vocab * dim];
            embedding_backward(Some(&mut dt), None, &r, &ids, &positions, dim);
            dt
        };
        let reference = run();
        for threads in [1, 3] {
            assert_bits_eq("embedding dtable rerun", &reference, &with_threads(threads, run));
        }
    }
}
