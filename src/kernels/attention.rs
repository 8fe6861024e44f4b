//! Causal multi-head attention with grouped-query heads over packed sequences.
//!
//! The batch is packed: rows of all sequences are concatenated, and row i attends to rows
//! `seq_start[i] ..= i` of its own sequence only — no padding, no cross-sequence leakage.
use rayon::prelude::*;

/// Where q, k and v live inside the projection buffer `qkv` of shape (N, row_len).
#[derive(Clone, Copy)]
pub struct QkvLayout {
    pub row_len: usize,
    pub q_col: usize,
    pub k_col: usize,
    pub v_col: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// out (N, n_heads·head_dim): softmax(q·kᵀ/√head_dim, causal) · v, per head; kv head = head / (n_heads / n_kv_heads).
pub fn attention_forward(out: &mut [f32], qkv: &[f32], l: QkvLayout, seq_start: &[u32]) {
    let hd = l.head_dim;
    let group = l.n_heads / l.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(l.n_heads * hd).enumerate().for_each_init(Vec::new, |scores, (i, o)| {
        let start = seq_start[i] as usize;
        let q_row = &qkv[i * l.row_len..][..l.row_len];
        for h in 0..l.n_heads {
            let q = &q_row[l.q_col + h * hd..][..hd];
            let kv = h / group;
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for j in start..=i {
                let k = &qkv[j * l.row_len + l.k_col + kv * hd..][..hd];
                let s = dot(q, k) * scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut o[h * hd..][..hd];
            o.fill(0.0);
            for (j, p) in (start..=i).zip(scores.iter()) {
                let v = &qkv[j * l.row_len + l.v_col + kv * hd..][..hd];
                let w = p / sum;
                for (o, v) in o.iter_mut().zip(v) {
                    *o += w * v;
                }
            }
        }
    });
}

/// Dot product in 8 independent lanes so the compiler vectorises it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_row_of_each_sequence_copies_its_value() {
        // Two packed sequences of lengths 2 and 1; one head, head_dim 2; q=k=v layout [q|k|v].
        let l = QkvLayout { row_len: 6, q_col: 0, k_col: 2, v_col: 4, n_heads: 1, n_kv_heads: 1, head_dim: 2 };
        let qkv = vec![
            1.0, 0.0, 1.0, 0.0, 5.0, 6.0, // seq 0, pos 0
            1.0, 0.0, 1.0, 0.0, 7.0, 8.0, // seq 0, pos 1: equal scores ⇒ mean of values
            0.0, 1.0, 0.0, 1.0, 9.0, 4.0, // seq 1, pos 0: must not see seq 0
        ];
        let mut out = vec![0.0; 6];
        attention_forward(&mut out, &qkv, l, &[0, 0, 2]);
        assert_eq!(&out[0..2], &[5.0, 6.0]);
        assert!((out[2] - 6.0).abs() < 1e-6 && (out[3] - 7.0).abs() < 1e-6);
        assert_eq!(&out[4..6], &[9.0, 4.0]);
    }
}
