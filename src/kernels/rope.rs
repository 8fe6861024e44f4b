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
