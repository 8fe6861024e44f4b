//! LM head fused with log-softmax, evaluated only at the rows asked for and in chunks of rows,
//! so a (tokens × vocab) matrix never exists for a whole batch.
use super::mat::{Mat, MatMut};
use super::matmul::matmul_weights;
use super::packed::MatrixRef;
use super::simd::exp_shifted;
use rayon::prelude::*;

/// Rows of the LM head per chunk: bounds the logits scratch to CHUNK × vocab floats.
pub const CHUNK: usize = 64;

/// Reusable buffers for the head: gathered hidden rows (CHUNK, dim), their logits (CHUNK, vocab) and
/// per-row losses (CHUNK).  They grow on first use and are reused afterwards (no allocation once warm).
#[derive(Default)]
pub struct HeadScratch {
    rows: Vec<f32>,
    logits: Vec<f32>,
    row_loss: Vec<f64>,
}

/// Logits of the selected rows, chunk by chunk:
/// calls `visit(chunk_start, gathered hidden rows (c, dim), logits (c, vocab))`.
fn for_each_chunk(
    hidden: &[f32],
    dim: usize,
    head: MatrixRef,
    vocab: usize,
    rows: &[usize],
    s: &mut HeadScratch,
    mut visit: impl FnMut(usize, &mut [f32], &mut [f32]),
) {
    s.rows.resize(CHUNK.min(rows.len()) * dim, 0.0);
    s.logits.resize(CHUNK.min(rows.len()) * vocab, 0.0);
    for (c, chunk) in rows.chunks(CHUNK).enumerate() {
        let n = chunk.len();
        for (dst, &r) in s.rows.chunks_mut(dim).zip(chunk) {
            dst.copy_from_slice(&hidden[r * dim..][..dim]);
        }
        let logits = &mut s.logits[..n * vocab];
        head.gemm_wt(MatMut::new(logits, n, vocab), Mat::new(&s.rows[..n * dim], n, dim), false);
        visit(c * CHUNK, &mut s.rows[..n * dim], logits);
    }
}

/// log P(target | row) for each selected row.  hidden: (N, dim) final-normed; head: (vocab, dim).
pub fn target_logprobs(
    out: &mut [f32],
    hidden: &[f32],
    dim: usize,
    head: MatrixRef,
    rows: &[usize],
    targets: &[u32],
    s: &mut HeadScratch,
) {
    let vocab = head.rows();
    for_each_chunk(hidden, dim, head, vocab, rows, s, |start, _, logits| {
        out[start..].par_iter_mut().zip(logits.par_chunks_mut(vocab)).zip(targets[start..].par_iter()).for_each(
            |((o, l), &t)| {
                let (lt, max) = (l[t as usize], row_max(l));
                *o = ((lt - max) as f64 - exp_shifted(l, max).ln()) as f32;
            },
        );
    });
}

/// Full logits (rows.len(), vocab) of the selected rows — for tests, `info` and small vocabularies.
pub fn logits(hidden: &[f32], dim: usize, head: MatrixRef, rows: &[usize], s: &mut HeadScratch) -> Vec<f32> {
    let vocab = head.rows();
    let mut out = vec![0.0; rows.len() * vocab];
    for_each_chunk(hidden, dim, head, vocab, rows, s, |start, _, l| {
        out[start * vocab..][..l.len()].copy_from_slice(l);
    });
    out
}

/// Fused LM head + cross-entropy, forward and backward, chunk by chunk over the selected rows (at most
/// CHUNK × vocab logits exist at a time, in `s`).
///
/// hidden, dhidden: (N, dim); head, dhead: (vocab, dim); rows[k] is the hidden row whose next token is
/// targets[k] (rows.len() = targets.len(); a row may appear at most once per call).
/// Per-token loss, PyTorch's `label_smoothing` = ε semantics (target distribution (1−ε)·onehot + ε/V):
///     loss = (1−ε)·(lse − l_t) + ε·(lse − mean_v l_v)
/// Returns Σ_k loss_k (unweighted, f64, summed in row order).  Gradient applied, with w = token_weight:
///     dlogits = w·(softmax − (1−ε)·onehot − ε/V);  dhidden[rows[k]] **+=** dlogits_k · head;
///     dhead **+=** dlogitsᵀ · hidden[rows]  (when given; None for a frozen head).
/// Rows of dhidden that are not selected are untouched.  Deterministic for a fixed thread count.
/// No allocation once `s` is warm.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(
    hidden: &[f32],
    dim: usize,
    head: MatrixRef,
    rows: &[usize],
    targets: &[u32],
    token_weight: f32,
    label_smoothing: f32,
    dhidden: &mut [f32],
    mut dhead: Option<&mut [f32]>,
    s: &mut HeadScratch,
) -> f64 {
    let vocab = head.rows();
    assert!(rows.len() == targets.len(), "cross_entropy_backward: rows and targets differ in length");
    assert!(dhidden.len() == hidden.len(), "cross_entropy_backward: dhidden shape");
    assert!(dhead.as_ref().is_none_or(|d| d.len() == vocab * dim), "cross_entropy_backward: dhead shape");
    assert!((0.0..=1.0).contains(&label_smoothing), "cross_entropy_backward: label_smoothing outside [0, 1]");
    let mut row_loss = std::mem::take(&mut s.row_loss);
    row_loss.resize(CHUNK.min(rows.len()), 0.0);
    let mut total = 0.0f64;
    for_each_chunk(hidden, dim, head, vocab, rows, s, |start, xs, logits| {
        let n = xs.len() / dim;
        let (chunk_rows, chunk_targets) = (&rows[start..start + n], &targets[start..start + n]);
        // Loss of each row, and its logits turned into dlogits in place.
        logits
            .par_chunks_mut(vocab)
            .zip(row_loss[..n].par_iter_mut())
            .zip(chunk_targets.par_iter())
            .for_each(|((l, loss), &t)| *loss = cross_entropy_row(l, t, token_weight, label_smoothing));
        total += row_loss[..n].iter().sum::<f64>();
        if let Some(dh) = dhead.as_deref_mut() {
            matmul_weights(MatMut::new(dh, vocab, dim), Mat::new(logits, n, vocab).t(), Mat::new(xs, n, dim), true);
        }
        // The gathered rows are no longer needed: reuse them for dlogits · head, then scatter-add.
        head.matmul_dx(MatMut::new(xs, n, dim), Mat::new(logits, n, vocab), false);
        for (g, &r) in xs.chunks_exact(dim).zip(chunk_rows) {
            for (d, g) in dhidden[r * dim..][..dim].iter_mut().zip(g) {
                *d += g;
            }
        }
    });
    s.row_loss = row_loss;
    total
}

/// One row of [`cross_entropy_backward`]: returns the row's loss (1−ε)·(lse − l_t) + ε·(lse − mean_v l_v) (f64),
/// and turns the logits `l` (vocab) into dlogits = w·(softmax − (1−ε)·onehot_t − ε/V) in place.
pub fn cross_entropy_row(l: &mut [f32], target: u32, token_weight: f32, label_smoothing: f32) -> f64 {
    let (t, vocab, eps) = (target as usize, l.len(), label_smoothing as f64);
    let (w_target, w_uniform) = (token_weight * (1.0 - label_smoothing), token_weight * label_smoothing / vocab as f32);
    let (lt, max) = (l[t], row_max(l));
    let mean_l = if eps > 0.0 { l.iter().map(|&v| v as f64).sum::<f64>() / vocab as f64 } else { 0.0 };
    let sum = exp_shifted(l, max); // l now holds exp(l − max)
    let lse = max as f64 + sum.ln();
    let scale = (token_weight as f64 / sum) as f32;
    for v in l.iter_mut() {
        *v = *v * scale - w_uniform;
    }
    l[t] -= w_target;
    (1.0 - eps) * (lse - lt as f64) + eps * (lse - mean_l)
}

fn row_max(l: &[f32]) -> f32 {
    l.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

#[cfg(test)]
mod tests {
    use super::super::finite_diff::{Rng, Tol, assert_bits_eq, assert_catches_sign_flip, check, with_threads};
    use super::*;

    /// Σ_k loss_k in f64 from the f32 logits of the existing forward path — independent of the backward.
    /// A dense (vocab, dim) head.
    fn dense(head: &[f32], dim: usize) -> MatrixRef<'_> {
        MatrixRef::Dense { data: head, rows: head.len() / dim, cols: dim }
    }

    fn reference_loss(hidden: &[f32], dim: usize, head: &[f32], rows: &[usize], targets: &[u32], eps: f64) -> f64 {
        let vocab = head.len() / dim;
        let l = logits(hidden, dim, dense(head, dim), rows, &mut HeadScratch::default());
        l.chunks(vocab)
            .zip(targets)
            .map(|(l, &t)| {
                let lse = l.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
                let mean = l.iter().map(|&v| v as f64).sum::<f64>() / vocab as f64;
                (1.0 - eps) * (lse - l[t as usize] as f64) + eps * (lse - mean)
            })
            .sum()
    }

    #[test]
    fn cross_entropy_backward_matches_finite_differences() {
        // CHUNK + 5 hidden rows; CHUNK + 2 of them selected in shuffled order (two chunks), 3 left out.
        let (n, dim, vocab) = (CHUNK + 5, 6, 11);
        let mut rng = Rng::new(61);
        let mut rows: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            rows.swap(i, rng.below(i + 1));
        }
        let skipped: Vec<usize> = rows.split_off(CHUNK + 2);
        let targets: Vec<u32> = rows.iter().map(|_| rng.below(vocab) as u32).collect();
        let (hidden, head) = (rng.vec(n * dim, 1.0), rng.vec(vocab * dim, 1.0));
        let tw = 0.37f32;
        // |g_fd − g| ≤ rtol·|g_fd| + atol (error budget: finite_diff.rs), h = 1e-2.  Truncation h²/6·|L'''|:
        // along one hidden element, L''' = tw·(third cumulant of head[·, d] under the softmax) ≤ 0.37·0.77, so
        // ≤ 5e-6; along one head entry it is Σ over the ≤ 66 selected rows of tw·h³·p(1−p)(1−2p) (each ≤ 0.036),
        // ≈ 5e-6 with random signs.  Round-off: only the f32 logits round (the loss itself is f64), by ≈ u·|logit|
        // with |logit| ≲ 2, weighted by |p − 1[t]|: one row moves for dhidden, ≤ 66 for dhead, ≈ √66·u·2·0.37·√2
        // / 2h ≈ 2e-5 at worst for dhead, far less typically.  Observed: atol needed ≤ 5e-6 at rtol 1e-5
        // (printed).  atol = 2e-5; rtol = 5e-5 for the f32 rounding that scales with g (dhead is a sum over 66
        // rows).  rtol + atol < 1e-4, so this is stricter everywhere than the old |Δ| ≤ 1e-4·max(1, |g|), and a
        // wrong sign or a missing ε-term errs by ≳ 1e-3.
        const TOL: Tol = Tol { rtol: 5e-5, atol: 2e-5 };
        for eps in [0.0f32, 0.1] {
            let mut s = HeadScratch::default();
            let (g0, gh0) = (rng.vec(n * dim, 1.0), rng.vec(vocab * dim, 1.0));
            let (mut dhidden, mut dhead) = (g0.clone(), gh0.clone());
            let loss = cross_entropy_backward(
                &hidden,
                dim,
                dense(&head, dim),
                &rows,
                &targets,
                tw,
                eps,
                &mut dhidden,
                Some(&mut dhead),
                &mut s,
            );
            let want = reference_loss(&hidden, dim, &head, &rows, &targets, eps as f64);
            assert!((loss - want).abs() < 1e-5 * want.abs(), "loss {loss} vs {want}");
            for &r in &skipped {
                assert_bits_eq("unselected dhidden row", &dhidden[r * dim..][..dim], &g0[r * dim..][..dim]);
            }
            let minus = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| a - b).collect::<Vec<f32>>();
            let l = |x: &[f32], w: &[f32]| tw as f64 * reference_loss(x, dim, w, &rows, &targets, eps as f64);
            let (dh1, dw1) = (minus(&dhidden, &g0), minus(&dhead, &gh0));
            let name = format!("lm head dhidden ε={eps}");
            let fd = check(&name, &hidden, &dh1, 1e-2, TOL, |x| l(x, &head));
            assert_catches_sign_flip(&name, &fd, &dh1, TOL);
            let name = format!("lm head dhead ε={eps}");
            let fd = check(&name, &head, &dw1, 1e-2, TOL, |w| l(&hidden, w));
            assert_catches_sign_flip(&name, &fd, &dw1, TOL);
            // Frozen head: dhidden is the same without dhead.
            let mut dh2 = g0.clone();
            cross_entropy_backward(&hidden, dim, dense(&head, dim), &rows, &targets, tw, eps, &mut dh2, None, &mut s);
            assert_bits_eq("dhidden without dhead", &dhidden, &dh2);
        }
    }

    #[test]
    fn cross_entropy_matches_pytorch_label_smoothing() {
        // head = identity, so the logits are the hidden rows; values from
        // torch.nn.functional.cross_entropy(l, t, label_smoothing=ε, reduction="sum") and its autograd in f64.
        let l = [0.5f32, -1.0, 2.0, 0.25, 1.5, 0.0, -0.5, -2.0];
        let eye: Vec<f32> = (0..16).map(|i| if i % 5 == 0 { 1.0 } else { 0.0 }).collect();
        const G0: [f64; 8] = [
            0.1542348253,
            -0.9655855587,
            0.6912325307,
            0.1201182027,
            -0.2798827903,
            0.1606798683,
            0.0974572665,
            0.0217456555,
        ];
        const G1: [f64; 8] = [
            0.1292348253,
            -0.8905855587,
            0.6662325307,
            0.0951182027,
            -0.2048827903,
            0.1356798683,
            0.0724572665,
            -0.0032543445,
        ];
        let cases = [(0.0f32, 3.6976202875f64, G0), (0.1, 3.7288702875, G1)];
        for (eps, want_loss, want_grad) in cases {
            let mut d = vec![0.0; 8];
            let loss = cross_entropy_backward(
                &l,
                4,
                dense(&eye, 4),
                &[0, 1],
                &[1, 0],
                1.0,
                eps,
                &mut d,
                None,
                &mut HeadScratch::default(),
            );
            assert!((loss - want_loss).abs() < 1e-6, "ε={eps}: loss {loss} vs {want_loss}");
            for (a, b) in d.iter().zip(want_grad) {
                assert!((*a as f64 - b).abs() < 1e-6, "ε={eps}: grad {a} vs {b}");
            }
        }
    }

    #[test]
    fn cross_entropy_backward_is_bit_identical_across_runs() {
        // Large enough that the GEMMs go multi-threaded (m·n·k ≥ 2¹⁸); three full chunks and a partial one.
        let (n, dim, vocab) = (3 * CHUNK + 10, 64, 1000);
        let mut rng = Rng::new(63);
        let (hidden, head) = (rng.vec(n * dim, 1.0), rng.vec(vocab * dim, 1.0));
        let rows: Vec<usize> = (0..n).rev().collect();
        let targets: Vec<u32> = rows.iter().map(|_| rng.below(vocab) as u32).collect();
        let run = || {
            let (mut dhidden, mut dhead, mut s) = (vec![0.0; n * dim], vec![0.0; vocab * dim], HeadScratch::default());
            let loss = cross_entropy_backward(
                &hidden,
                dim,
                dense(&head, dim),
                &rows,
                &targets,
                0.5,
                0.1,
                &mut dhidden,
                Some(&mut dhead),
                &mut s,
            );
            (loss, dhidden, dhead)
        };
        for threads in [1, 2, 4] {
            let (a, b) = (with_threads(threads, run), with_threads(threads, run));
            assert_eq!(a.0.to_bits(), b.0.to_bits(), "loss with {threads} threads");
            assert_bits_eq(&format!("dhidden with {threads} threads"), &a.1, &b.1);
            assert_bits_eq(&format!("dhead with {threads} threads"), &a.2, &b.2);
        }
        // Empty selection: nothing to do, loss 0.
        let mut d = vec![1.0; n * dim];
        assert_eq!(
            cross_entropy_backward(
                &hidden,
                dim,
                dense(&head, dim),
                &[],
                &[],
                1.0,
                0.0,
                &mut d,
                None,
                &mut HeadScratch::default()
            ),
            0.0
        );
        assert!(d.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn logprobs_match_direct_softmax_across_chunk_boundary() {
        let (dim, vocab, n) = (3, 5, CHUNK + 3);
        let hidden: Vec<f32> = (0..n * dim).map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0).collect();
        let head: Vec<f32> = (0..vocab * dim).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
        let rows: Vec<usize> = (0..n).rev().collect();
        let targets: Vec<u32> = (0..n).map(|i| (i % vocab) as u32).collect();
        let mut out = vec![0.0; n];
        let mut s = HeadScratch::default();
        target_logprobs(&mut out, &hidden, dim, dense(&head, dim), &rows, &targets, &mut s);
        for (k, &r) in rows.iter().enumerate() {
            let l: Vec<f64> = (0..vocab)
                .map(|v| (0..dim).map(|d| hidden[r * dim + d] as f64 * head[v * dim + d] as f64).sum())
                .collect();
            let lse = l.iter().map(|x| x.exp()).sum::<f64>().ln();
            assert!((out[k] as f64 - (l[targets[k] as usize] - lse)).abs() < 1e-5);
        }
    }
}
