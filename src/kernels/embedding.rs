//! Token (and learned position) embedding lookup.
use rayon::prelude::*;

/// out[i] = table[ids[i]] (+ pos_table[positions[i]]).  table: (V, dim); out: (N, dim).
/// Ids were validated against V when the batch was built.
pub fn embedding_forward(
    out: &mut [f32],
    ids: &[u32],
    table: &[f32],
    positions: &[u32],
    pos_table: Option<&[f32]>,
    dim: usize,
) {
    out.par_chunks_mut(dim).enumerate().for_each(|(i, row)| {
        let t = ids[i] as usize * dim;
        row.copy_from_slice(&table[t..t + dim]);
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
    use super::super::finite_diff::{Rng, assert_bits_eq, check, weighted_sum, with_threads};
    use super::*;

    #[test]
    fn embedding_backward_matches_finite_differences() {
        // Packed sequences of lengths 3 and 5; ids repeat so rows of the table collect several gradients.
        let (vocab, dim, max_pos) = (7, 5, 6);
        let ids = [3u32, 1, 3, 6, 0, 3, 1, 1];
        let positions = [0u32, 1, 2, 0, 1, 2, 3, 4];
        let n = ids.len();
        let mut rng = Rng::new(51);
        let (table, pos, r) = (rng.vec(vocab * dim, 1.0), rng.vec(max_pos * dim, 1.0), rng.vec(n * dim, 1.0));
        let loss = |t: &[f32], p: &[f32]| {
            let mut out = vec![0.0; n * dim];
            embedding_forward(&mut out, &ids, t, &positions, Some(p), dim);
            weighted_sum(&out, &r)
        };
        let (g0, p0) = (rng.vec(vocab * dim, 1.0), rng.vec(max_pos * dim, 1.0));
        let (mut dt, mut dp) = (g0.clone(), p0.clone());
        embedding_backward(Some(&mut dt), Some(&mut dp), &r, &ids, &positions, dim);
        let minus = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| a - b).collect::<Vec<f32>>();
        // L is linear in both tables: no truncation error; round-off ≈ 6e-8·(a few terms)/2h ≪ 1e-4.
        check("embedding dtable", &table, &minus(&dt, &g0), 1e-2, 1e-4, |t| loss(t, &pos));
        check("embedding dpos", &pos, &minus(&dp, &p0), 1e-2, 1e-4, |p| loss(&table, p));
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
