//! Attention of rows over the KV cache (incremental decoding): row i's query heads attend to positions
//! 0..=pos_i of its own cache slot. Decode rows attend one by one with a running (online) softmax; a prompt's
//! prefill — at least [`RUN_MIN`] consecutive positions of one slot — attends through GEMMs in tiles of
//! [`ATT_TILE`] query rows (S = Q·Kᵀ, causal mask, softmax, P·V).
use super::attention::QkvLayout;
use super::mat::{Mat, MatMut};
use super::matmul::matmul;
use super::simd::{axpy_rows, dot_rows, exp_shifted};
use rayon::prelude::*;

/// Attention scores computed per block (on the stack) before the running softmax is updated.
const ATT_BLOCK: usize = 128;
/// Consecutive positions of one slot from this many rows on attend through GEMMs, in tiles of `ATT_TILE` query
/// rows; shorter runs and decode rows go row by row.
pub const RUN_MIN: usize = 16;
const ATT_TILE: usize = 64;

/// One layer of the KV cache, K and V alike laid out `[slot][kv_head][position][head_dim]`.
#[derive(Clone, Copy)]
pub struct KvLayer<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub kv_heads: usize,
    pub capacity: usize,
    pub head_dim: usize,
}

impl KvLayer<'_> {
    /// Offset of position 0 of (slot, kv_head).
    fn at(&self, slot: usize, kv_head: usize) -> usize {
        (slot * self.kv_heads + kv_head) * self.capacity * self.head_dim
    }
}

/// Scratch of [`cached_attention`], grown once to the largest call and reused.
#[derive(Default)]
pub struct CachedAttentionScratch {
    /// Prefill runs of the call: (first row, rows), and which rows they cover.
    runs: Vec<(usize, usize)>,
    in_run: Vec<bool>,
    /// Per query head: scores of one tile (ATT_TILE × capacity), row sums, and its output rows (rows × hd).
    scores: Vec<f32>,
    sums: Vec<f32>,
    out: Vec<f32>,
}

impl CachedAttentionScratch {
    fn grow(&mut self, rows: usize, n_heads: usize, head_dim: usize, capacity: usize) {
        if self.in_run.len() < rows {
            self.in_run.resize(rows, false);
            self.runs.reserve(rows / RUN_MIN + 1);
        }
        if rows >= RUN_MIN {
            crate::kernels::grow(&mut self.scores, n_heads * ATT_TILE * capacity);
            crate::kernels::grow(&mut self.sums, n_heads * ATT_TILE);
            crate::kernels::grow(&mut self.out, rows * n_heads * head_dim);
        }
    }
}

/// att (N, n_heads·head_dim) for N rows whose q, k, v (after RoPE) are in `qkv` at `l`'s columns; row i is at
/// position `positions[i]` of cache slot `slots[i]`, and its k, v must already be in `kv`.
pub fn cached_attention(
    att: &mut [f32],
    qkv: &[f32],
    l: QkvLayout,
    slots: &[u32],
    positions: &[u32],
    kv: KvLayer,
    s: &mut CachedAttentionScratch,
) {
    let n = slots.len();
    s.grow(n, l.n_heads, l.head_dim, kv.capacity);
    find_runs(slots, positions, &mut s.runs, &mut s.in_run[..n]);
    attend(att, qkv, l, slots, positions, &s.in_run[..n], kv);
    for &(start, len) in &s.runs {
        let bufs = RunBuffers { scores: &mut s.scores, sums: &mut s.sums, out: &mut s.out };
        attend_run(att, qkv, l, start, len, slots[start] as usize, positions[start] as usize, kv, bufs);
    }
}

/// att[i, head h] = softmax(q_i,h · K[slot_i, kv(h), first..=pos_i]ᵀ · scale) · V[slot_i, kv(h), first..=pos_i],
/// first = the window's start (0 without a window).
/// A running (online) softmax over blocks of positions: no scratch beyond one block on the stack.
/// Rows marked in `skip` (prefill runs) are left to [`attend_run`].
fn attend(att: &mut [f32], qkv: &[f32], l: QkvLayout, slots: &[u32], positions: &[u32], skip: &[bool], kv: KvLayer) {
    let (hd, n_heads) = (l.head_dim, l.n_heads);
    let group = n_heads / l.n_kv_heads;
    let scale = l.scale;
    att[..slots.len() * n_heads * hd].par_chunks_mut(hd).enumerate().for_each(|(task, o)| {
        let (i, h) = (task / n_heads, task % n_heads);
        if skip[i] {
            return;
        }
        let q = &qkv[i * l.row_len + l.q_col + h * hd..][..hd];
        let at = kv.at(slots[i] as usize, h / group);
        let (k, v) = (&kv.k[at..], &kv.v[at..]);
        let len = positions[i] as usize + 1;
        let first = l.first_visible(len - 1, 0);
        let mut scores = [0.0f32; ATT_BLOCK];
        let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
        o.fill(0.0);
        for start in (first..len).step_by(ATT_BLOCK) {
            let m = ATT_BLOCK.min(len - start);
            dot_rows(&mut scores[..m], q, &k[start * hd..][..m * hd], scale);
            let block_max = scores[..m].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let new_max = max.max(block_max);
            if max != f32::NEG_INFINITY && new_max > max {
                let rescale = (max - new_max).exp();
                sum *= rescale;
                for x in o.iter_mut() {
                    *x *= rescale;
                }
            }
            sum += exp_shifted(&mut scores[..m], new_max) as f32;
            axpy_rows(o, &scores[..m], &v[start * hd..][..m * hd]);
            max = new_max;
        }
        let inv = 1.0 / sum;
        for x in o.iter_mut() {
            *x *= inv;
        }
    });
}

/// Marks runs of at least RUN_MIN rows holding consecutive positions of one slot (prefills).
fn find_runs(slots: &[u32], positions: &[u32], runs: &mut Vec<(usize, usize)>, in_run: &mut [bool]) {
    runs.clear();
    in_run.fill(false);
    let mut start = 0;
    for i in 1..=slots.len() {
        let continues = i < slots.len() && slots[i] == slots[i - 1] && positions[i] == positions[i - 1] + 1;
        if !continues {
            if i - start >= RUN_MIN {
                runs.push((start, i - start));
                in_run[start..i].fill(true);
            }
            start = i;
        }
    }
}

/// Scratch of [`attend_run`] (from [`CachedAttentionScratch`]).
struct RunBuffers<'a> {
    scores: &'a mut [f32],
    sums: &'a mut [f32],
    out: &'a mut [f32],
}

/// Attention of a prefill run (rows `row0..row0 + len` of the call: positions `pos0..pos0 + len` of `slot`),
/// through GEMMs per query head and tile of ATT_TILE rows: S = Q·Kᵀ·scale over the cached keys up to the tile's
/// last position, causal (and window) mask, softmax rows, O = P·V. Heads run in parallel, each with its own scratch.
#[allow(clippy::too_many_arguments)]
fn attend_run(
    att: &mut [f32],
    qkv: &[f32],
    l: QkvLayout,
    row0: usize,
    len: usize,
    slot: usize,
    pos0: usize,
    kv: KvLayer,
    bufs: RunBuffers,
) {
    let (hd, cap, n_heads, qw) = (l.head_dim, kv.capacity, l.n_heads, l.row_len);
    let group = n_heads / l.n_kv_heads;
    let scale = l.scale;
    let (ks, vs) = (kv.k, kv.v);
    let out = &mut bufs.out[..n_heads * len * hd];
    out.par_chunks_mut(len * hd)
        .zip(bufs.scores.par_chunks_mut(ATT_TILE * cap))
        .zip(bufs.sums.par_chunks_mut(ATT_TILE))
        .enumerate()
        .for_each(|(h, ((o, sc), sums))| {
            let at = kv.at(slot, h / group);
            for t0 in (0..len).step_by(ATT_TILE) {
                let tq = ATT_TILE.min(len - t0);
                let keys = pos0 + t0 + tq; // positions 0..keys are visible to the tile's last row
                let q = Mat {
                    data: &qkv[(row0 + t0) * qw + l.q_col + h * hd..],
                    rows: tq,
                    cols: hd,
                    row_stride: qw,
                    col_stride: 1,
                };
                let s = &mut sc[..tq * keys];
                matmul(MatMut::new(s, tq, keys), q, Mat::new(&ks[at..at + keys * hd], keys, hd).t(), false);
                for (r, (srow, sum)) in s.chunks_exact_mut(keys).zip(sums.iter_mut()).enumerate() {
                    let visible = pos0 + t0 + r + 1;
                    let first = l.first_visible(visible - 1, 0);
                    let (before, rest) = srow.split_at_mut(first);
                    before.fill(0.0);
                    let (live, masked) = rest.split_at_mut(visible - first);
                    let max = live.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
                    for v in live.iter_mut() {
                        *v *= scale;
                    }
                    *sum = exp_shifted(live, max) as f32;
                    masked.fill(0.0);
                }
                let o_tile = &mut o[t0 * hd..(t0 + tq) * hd];
                matmul(
                    MatMut::new(o_tile, tq, hd),
                    Mat::new(s, tq, keys),
                    Mat::new(&vs[at..at + keys * hd], keys, hd),
                    false,
                );
                for (orow, &sum) in o_tile.chunks_exact_mut(hd).zip(sums.iter()) {
                    let inv = 1.0 / sum;
                    for x in orow {
                        *x *= inv;
                    }
                }
            }
        });
    let aw = n_heads * hd;
    for h in 0..n_heads {
        for i in 0..len {
            att[(row0 + i) * aw + h * hd..][..hd].copy_from_slice(&out[(h * len + i) * hd..][..hd]);
        }
    }
}
