//! LM head fused with log-softmax, evaluated only at the rows asked for and in chunks of rows,
//! so a (tokens × vocab) matrix never exists for a whole batch.
use super::matmul::{Mat, MatMut, matmul};
use rayon::prelude::*;

/// Rows of the LM head per chunk: bounds the logits scratch to CHUNK × vocab floats.
pub const CHUNK: usize = 64;

/// Reusable buffers for the head: gathered hidden rows (CHUNK, dim) and their logits (CHUNK, vocab).
#[derive(Default)]
pub struct HeadScratch {
    rows: Vec<f32>,
    logits: Vec<f32>,
}

/// Logits of the selected rows, chunk by chunk: calls `visit(chunk_start, logits (c, vocab))`.
fn for_each_chunk(
    hidden: &[f32],
    dim: usize,
    head: &[f32],
    vocab: usize,
    rows: &[usize],
    s: &mut HeadScratch,
    mut visit: impl FnMut(usize, &mut [f32]),
) {
    s.rows.resize(CHUNK.min(rows.len()) * dim, 0.0);
    s.logits.resize(CHUNK.min(rows.len()) * vocab, 0.0);
    for (c, chunk) in rows.chunks(CHUNK).enumerate() {
        let n = chunk.len();
        for (dst, &r) in s.rows.chunks_mut(dim).zip(chunk) {
            dst.copy_from_slice(&hidden[r * dim..][..dim]);
        }
        let logits = &mut s.logits[..n * vocab];
        matmul(
            MatMut::new(logits, n, vocab),
            Mat::new(&s.rows[..n * dim], n, dim),
            Mat::new(head, vocab, dim).t(),
            false,
        );
        visit(c * CHUNK, logits);
    }
}

/// log P(target | row) for each selected row.  hidden: (N, dim) final-normed; head: (vocab, dim).
pub fn target_logprobs(
    out: &mut [f32],
    hidden: &[f32],
    dim: usize,
    head: &[f32],
    rows: &[usize],
    targets: &[u32],
    s: &mut HeadScratch,
) {
    let vocab = head.len() / dim;
    for_each_chunk(hidden, dim, head, vocab, rows, s, |start, logits| {
        out[start..]
            .par_iter_mut()
            .zip(logits.par_chunks(vocab))
            .zip(targets[start..].par_iter())
            .for_each(|((o, l), &t)| *o = l[t as usize] - logsumexp(l));
    });
}

/// Full logits (rows.len(), vocab) of the selected rows — for tests, `info` and small vocabularies.
pub fn logits(hidden: &[f32], dim: usize, head: &[f32], rows: &[usize], s: &mut HeadScratch) -> Vec<f32> {
    let vocab = head.len() / dim;
    let mut out = vec![0.0; rows.len() * vocab];
    for_each_chunk(hidden, dim, head, vocab, rows, s, |start, l| {
        out[start * vocab..][..l.len()].copy_from_slice(l);
    });
    out
}

/// log Σ exp(l), stable, accumulated in f64 (vocabularies reach 150k entries).
pub fn logsumexp(l: &[f32]) -> f32 {
    let max = l.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = l.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_match_direct_softmax_across_chunk_boundary() {
        let (dim, vocab, n) = (3, 5, CHUNK + 3);
        let hidden: Vec<f32> = (0..n * dim).map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0).collect();
        let head: Vec<f32> = (0..vocab * dim).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
        let rows: Vec<usize> = (0..n).rev().collect();
        let targets: Vec<u32> = (0..n).map(|i| (i % vocab) as u32).collect();
        let mut out = vec![0.0; n];
        let mut s = HeadScratch::default();
        target_logprobs(&mut out, &hidden, dim, &head, &rows, &targets, &mut s);
        for (k, &r) in rows.iter().enumerate() {
            let l: Vec<f64> = (0..vocab)
                .map(|v| (0..dim).map(|d| hidden[r * dim + d] as f64 * head[v * dim + d] as f64).sum())
                .collect();
            let lse = l.iter().map(|x| x.exp()).sum::<f64>().ln();
            assert!((out[k] as f64 - (l[targets[k] as usize] - lse)).abs() < 1e-5);
        }
    }
}
