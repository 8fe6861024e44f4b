//! Causal multi-head attention with grouped-query heads over packed sequences.
//!
//! The batch is packed: rows of all sequences are concatenated, and row i attends to rows
//! `seq_start[i] ..= i` of its own sequence only — no padding, no cross-sequence leakage.
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// One row of scores / probabilities (≤ sequence length) per thread, grown to the longest sequence once and
    /// reused: no allocation per call. A task borrows it for its own sequential body only (no nested parallelism
    /// inside), so the borrow never overlaps.
    static PROBS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

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
    /// Multiplies q·k before the softmax: 1/√head_dim, or the model's own (Gemma 3: query_pre_attn_scalar^-½).
    pub scale: f32,
    /// Sliding-window span (Mistral, Gemma 3's local layers): a row sees the `window` most recent positions,
    /// itself included; `usize::MAX` for full causal attention.
    pub window: usize,
}

impl QkvLayout {
    /// The first row (or cache position) row/position `i` sees, given its sequence's first one: window-bounded.
    pub fn first_visible(&self, i: usize, seq_first: usize) -> usize {
        seq_first.max((i + 1).saturating_sub(self.window))
    }
}

/// out (N, n_heads·head_dim): softmax(q·kᵀ·scale, causal, within the window) · v, per head; kv head =
/// head / (n_heads / n_kv_heads).
pub fn attention_forward(out: &mut [f32], qkv: &[f32], l: QkvLayout, seq_start: &[u32]) {
    let hd = l.head_dim;
    let group = l.n_heads / l.n_kv_heads;
    let scale = l.scale;
    out.par_chunks_mut(l.n_heads * hd).enumerate().for_each(|(i, o)| {
        PROBS.with_borrow_mut(|scores| {
            let start = l.first_visible(i, seq_start[i] as usize);
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
        })
    });
}

/// Backward of [`attention_forward`].
///
/// dqkv (N, row_len): dq, dk and dv are **written** (=) at their columns (q_col.., k_col.., v_col..);
/// every other column is left untouched.  datt (N, n_heads·head_dim) is ∂L/∂out; qkv is the forward's input
/// (after RoPE) and att (N, n_heads·head_dim) its output; seq_start as in the forward.
///
/// Flash-style: the softmax P of each (row, head) is recomputed from q and k exactly as the forward did it (no
/// (T×T) tensor is kept), and with D_i = dO_i·O_i, s = the layout's scale:  dS_ij = P_ij·(dO_i·v_j − D_i),
/// dq_i = Σ_j dS_ij·k_j·s,  dk_j = Σ_{i≥j} dS_ij·q_i·s,  dv_j = Σ_{i≥j} P_ij·dO_i  (j within i's window),
/// where dk/dv of a kv head also sum over the n_heads/n_kv_heads query heads that share it.
///
/// Parallel over (sequence, kv head) blocks: each block owns the dq columns of its query heads and the dk/dv
/// columns of its kv head, on its sequence's rows, and computes them sequentially in a fixed order — so the
/// result is bit-identical for any thread count and scheduling.  Scratch: one Vec of ≤ T floats (the probability
/// row) per thread, [`PROBS`], as in the forward.
pub fn attention_backward(dqkv: &mut [f32], datt: &[f32], qkv: &[f32], att: &[f32], l: QkvLayout, seq_start: &[u32]) {
    let n = seq_start.len();
    let (hd, rl) = (l.head_dim, l.row_len);
    assert!(
        l.n_kv_heads > 0 && l.n_heads.is_multiple_of(l.n_kv_heads),
        "attention_backward: n_heads must be a multiple of n_kv_heads"
    );
    let (aw, kw) = (l.n_heads * hd, l.n_kv_heads * hd);
    assert!(
        dqkv.len() == n * rl && qkv.len() == n * rl && datt.len() == n * aw && att.len() == n * aw,
        "attention_backward: shapes"
    );
    // The disjointness of the blocks' writes (which the unsafe code below relies on) needs: q, k and v column
    // ranges inside the row and pairwise disjoint, and sequences that are contiguous runs of rows.
    let ranges = [(l.q_col, l.q_col + aw), (l.k_col, l.k_col + kw), (l.v_col, l.v_col + kw)];
    for (a, &(a0, a1)) in ranges.iter().enumerate() {
        assert!(a1 <= rl, "attention_backward: q/k/v columns outside the row");
        for &(b0, b1) in &ranges[a + 1..] {
            assert!(a1 <= b0 || b1 <= a0, "attention_backward: q, k and v columns overlap");
        }
    }
    for (i, &s) in seq_start.iter().enumerate() {
        assert!(
            s as usize == i || (i > 0 && s == seq_start[i - 1]),
            "attention_backward: seq_start[{i}] = {s} is not a packed layout"
        );
    }
    let ctx = Block { out: SharedMut(dqkv.as_mut_ptr(), dqkv.len()), datt, qkv, att, l };
    let kv = l.n_kv_heads;
    (0..n * kv).into_par_iter().for_each(|task| {
        let (s0, g) = (task / kv, task % kv);
        if seq_start[s0] as usize != s0 {
            return; // not the first row of a sequence
        }
        let end = s0 + seq_start[s0..].iter().take_while(|&&s| s as usize == s0).count();
        // SAFETY: block (s0, g) is the only one touching rows s0..end of the dq columns of heads
        // g·group..(g+1)·group and of the dk/dv columns of kv head g: sequences are disjoint row runs and the
        // column ranges are disjoint (both asserted above); `dqkv` stays mutably borrowed until all blocks end.
        PROBS.with_borrow_mut(|p| unsafe { ctx.run(p, s0, end, g) });
    });
}

/// A raw view of the dqkv buffer shared by the blocks of [`attention_backward`], which write disjoint parts.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32, usize);
// SAFETY: only used to hand out disjoint sub-slices to concurrent blocks (see `attention_backward`).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// SAFETY: while the returned slice lives, no other reference may overlap `start .. start + len`.
    unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [f32] {
        assert!(start + len <= self.1, "attention_backward: slice out of bounds");
        // SAFETY: in bounds (checked above); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Everything a (sequence, kv head) block of the attention backward reads or writes.
struct Block<'a> {
    out: SharedMut,
    datt: &'a [f32],
    qkv: &'a [f32],
    att: &'a [f32],
    l: QkvLayout,
}

impl Block<'_> {
    /// Writes dq of the query heads of kv head `g`, and dk, dv of kv head `g`, for rows `s0..end`.
    /// `p` is scratch for one probability row.
    ///
    /// SAFETY: no other reference to those (row, column) ranges of the dqkv buffer may exist during the call.
    unsafe fn run(&self, p: &mut Vec<f32>, s0: usize, end: usize, g: usize) {
        let l = self.l;
        let (hd, rl, aw) = (l.head_dim, l.row_len, l.n_heads * l.head_dim);
        let group = l.n_heads / l.n_kv_heads;
        let scale = l.scale;
        let (k_off, v_off) = (l.k_col + g * hd, l.v_col + g * hd);
        for j in s0..end {
            // SAFETY: rows s0..end of kv head g's dk/dv columns belong to this block; each slice dies at once.
            unsafe {
                self.out.slice(j * rl + k_off, hd).fill(0.0);
                self.out.slice(j * rl + v_off, hd).fill(0.0);
            }
        }
        for h in g * group..(g + 1) * group {
            for i in s0..end {
                let q = &self.qkv[i * rl + l.q_col + h * hd..][..hd];
                let first = l.first_visible(i, s0);
                // Recompute this row's softmax exactly as the forward did.
                p.clear();
                let mut max = f32::NEG_INFINITY;
                for j in first..=i {
                    let s = dot(q, &self.qkv[j * rl + k_off..][..hd]) * scale;
                    max = max.max(s);
                    p.push(s);
                }
                let mut sum = 0.0;
                for s in p.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let d_o = &self.datt[i * aw + h * hd..][..hd];
                let d_row = dot(d_o, &self.att[i * aw + h * hd..][..hd]);
                // SAFETY: row i of query head h (in this block's group) — its dq columns are disjoint from the
                // dk/dv columns borrowed below, and no other slice of them is alive.
                let dq = unsafe { self.out.slice(i * rl + l.q_col + h * hd, hd) };
                dq.fill(0.0);
                for (j, &e) in (first..=i).zip(p.iter()) {
                    let pj = e / sum;
                    let (k, v) = (&self.qkv[j * rl + k_off..][..hd], &self.qkv[j * rl + v_off..][..hd]);
                    let ds = pj * (dot(d_o, v) - d_row);
                    for (a, kv) in dq.iter_mut().zip(k) {
                        *a += ds * kv;
                    }
                    // SAFETY: row j ∈ first..=i ⊆ s0..=i of kv head g: owned by this block; dk and dv columns are disjoint.
                    let (dk, dv) = unsafe { (self.out.slice(j * rl + k_off, hd), self.out.slice(j * rl + v_off, hd)) };
                    let sds = scale * ds;
                    for (((dk, dv), qv), ov) in dk.iter_mut().zip(dv.iter_mut()).zip(q).zip(d_o) {
                        *dk += sds * qv;
                        *dv += pj * ov;
                    }
                }
                for a in dq.iter_mut() {
                    *a *= scale;
                }
            }
        }
    }
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
    use super::super::finite_diff::{
        Rng, Tol, assert_bits_eq, assert_catches_sign_flip, check, weighted_sum, with_threads,
    };
    use super::super::rope::{RopeTable, rope_backward, rope_forward};
    use super::*;

    // Finite differences: |g_fd − g| ≤ rtol·|g_fd| + atol (error budget: finite_diff.rs), step h = 2e-2.
    // Truncation h²/6·|L'''| = 6.7e-5·|L'''|: scores are O(1) here (|q|, |k| < 1.5, scale 1/√10), so the
    // softmax's third derivatives along one q/k element are O(0.1), ≈ 1e-5.  Round-off: a perturbed k or v
    // element moves up to T·head_dim ≈ 40 outputs of O(1), each rounded independently by a few ulps through the
    // score → exp → weighted-sum chain: ≈ √40·3u·|o R| ≈ 5e-7 per evaluation, ≈ 2e-5 in g_fd after √2 / 2h.
    // Observed: the atol actually needed at rtol 1e-4 is ≤ 1.4e-5 (printed); it is 1.6–2.8e-5 at h = 1e-2
    // (round-off grows as 1/h) and similar at 3e-2 (truncation grows as h²).  atol = 3e-5, rtol = 1e-4 (the f32
    // round-off of outputs that scale with g).  (Old: |Δ| ≤ 3e-4·max(1, |g|).)
    const H: f32 = 2e-2;
    const TOL: Tol = Tol { rtol: 1e-4, atol: 3e-5 };

    /// Layout with padding and q/k/v out of order: [pad 2 | k | q | pad 1 | v | pad 3].
    fn layout(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> QkvLayout {
        let (aw, kw) = (n_heads * head_dim, n_kv_heads * head_dim);
        let (k_col, q_col, v_col) = (2, 2 + kw, 2 + kw + aw + 1);
        let (scale, window) = (1.0 / (head_dim as f32).sqrt(), usize::MAX);
        QkvLayout { row_len: v_col + kw + 3, q_col, k_col, v_col, n_heads, n_kv_heads, head_dim, scale, window }
    }

    fn packed(lengths: &[usize]) -> (Vec<u32>, Vec<u32>) {
        let (mut seq_start, mut positions) = (Vec::new(), Vec::new());
        for &len in lengths {
            let s = seq_start.len() as u32;
            seq_start.extend(std::iter::repeat_n(s, len));
            positions.extend(0..len as u32);
        }
        (seq_start, positions)
    }

    fn is_qkv_col(l: &QkvLayout, c: usize) -> bool {
        let (aw, kw) = (l.n_heads * l.head_dim, l.n_kv_heads * l.head_dim);
        (l.q_col..l.q_col + aw).contains(&c)
            || (l.k_col..l.k_col + kw).contains(&c)
            || (l.v_col..l.v_col + kw).contains(&c)
    }

    /// Runs the backward into a buffer whose q/k/v columns hold NaN (they must be overwritten) and whose other
    /// columns hold 7 (they must stay); returns it with the padding zeroed (its true gradient).
    fn backward(datt: &[f32], qkv: &[f32], att: &[f32], l: QkvLayout, seq_start: &[u32]) -> Vec<f32> {
        let fill = |c: usize| if is_qkv_col(&l, c) { f32::NAN } else { 7.0 };
        let mut d: Vec<f32> = (0..qkv.len()).map(|i| fill(i % l.row_len)).collect();
        attention_backward(&mut d, datt, qkv, att, l, seq_start);
        for (i, v) in d.iter_mut().enumerate() {
            if is_qkv_col(&l, i % l.row_len) {
                assert!(v.is_finite(), "dqkv[{i}] not written");
            } else {
                assert_eq!(*v, 7.0, "dqkv[{i}] outside q/k/v columns was touched");
                *v = 0.0;
            }
        }
        d
    }

    #[test]
    fn attention_backward_matches_finite_differences() {
        // Packed sequences of lengths 3 and 5; GQA 4/2, plus MQA 3/1 and MHA 2/2.  head_dim 10 exercises both
        // the 8-lane and the remainder path of `dot`.
        let (seq_start, _) = packed(&[3, 5]);
        let n = seq_start.len();
        for (seed, (nh, nkv)) in [(4, 2), (3, 1), (2, 2)].into_iter().enumerate() {
            let l = layout(nh, nkv, 10);
            let mut rng = Rng::new(41 + seed as u64);
            let (qkv, r) = (rng.vec(n * l.row_len, 1.5), rng.vec(n * nh * 10, 1.0));
            let loss = |x: &[f32]| {
                let mut out = vec![0.0; n * nh * 10];
                attention_forward(&mut out, x, l, &seq_start);
                weighted_sum(&out, &r)
            };
            let mut att = vec![0.0; n * nh * 10];
            attention_forward(&mut att, &qkv, l, &seq_start);
            let d = backward(&r, &qkv, &att, l, &seq_start);
            let name = format!("attention dqkv {nh}/{nkv} heads");
            let fd = check(&name, &qkv, &d, H, TOL, loss);
            assert_catches_sign_flip(&name, &fd, &d, TOL);
        }
    }

    #[test]
    fn rope_then_attention_backward_matches_finite_differences() {
        // The chain the model runs: RoPE on q and k (positions restart per packed sequence), then attention.
        let (seq_start, positions) = packed(&[3, 5]);
        let n = seq_start.len();
        let (nh, nkv, hd) = (4, 2, 6);
        let l = layout(nh, nkv, hd);
        let table = RopeTable::new(&[1.1, 0.3, 0.02], 8);
        let mut rng = Rng::new(45);
        let (x, r) = (rng.vec(n * l.row_len, 1.5), rng.vec(n * nh * hd, 1.0));
        let forward = |x: &[f32]| {
            let mut qkv = x.to_vec();
            rope_forward(&mut qkv, l.row_len, l.q_col, nh, &positions, &table);
            rope_forward(&mut qkv, l.row_len, l.k_col, nkv, &positions, &table);
            let mut out = vec![0.0; n * nh * hd];
            attention_forward(&mut out, &qkv, l, &seq_start);
            (qkv, out)
        };
        let (qkv, att) = forward(&x);
        let mut d = backward(&r, &qkv, &att, l, &seq_start);
        rope_backward(&mut d, l.row_len, l.q_col, nh, &positions, &table);
        rope_backward(&mut d, l.row_len, l.k_col, nkv, &positions, &table);
        let fd = check("rope+attention dx", &x, &d, H, TOL, |xp| weighted_sum(&forward(xp).1, &r));
        assert_catches_sign_flip("rope+attention dx", &fd, &d, TOL);
    }

    #[test]
    fn sliding_window_rows_see_only_their_window_and_the_backward_matches_finite_differences() {
        // Window 3 over packed sequences of 7 and 3 rows, with a scale that is not 1/√head_dim (Gemma 3's
        // query_pre_attn_scalar): row i of the windowed pass must equal the last row of a full causal pass over
        // rows first_visible(i)..=i alone, bit for bit (same scores in the same order).
        let (seq_start, _) = packed(&[7, 3]);
        let n = seq_start.len();
        let (nh, nkv, hd) = (4, 2, 6);
        let l = QkvLayout { window: 3, scale: 0.3, ..layout(nh, nkv, hd) };
        let full = QkvLayout { window: usize::MAX, ..l };
        let mut rng = Rng::new(49);
        let (qkv, r) = (rng.vec(n * l.row_len, 1.5), rng.vec(n * nh * hd, 1.0));
        let (mut att, mut att_full) = (vec![0.0; n * nh * hd], vec![0.0; n * nh * hd]);
        attention_forward(&mut att, &qkv, l, &seq_start);
        attention_forward(&mut att_full, &qkv, full, &seq_start);
        assert_ne!(att, att_full, "a window of 3 must change rows 3..7 of the first sequence");
        for i in 0..n {
            let first = l.first_visible(i, seq_start[i] as usize);
            let m = i + 1 - first;
            let mut alone = vec![0.0; m * nh * hd];
            attention_forward(&mut alone, &qkv[first * l.row_len..(i + 1) * l.row_len], full, &vec![0; m]);
            assert_bits_eq(&format!("row {i}"), &att[i * nh * hd..][..nh * hd], &alone[(m - 1) * nh * hd..]);
        }
        let d = backward(&r, &qkv, &att, l, &seq_start);
        let loss = |x: &[f32]| {
            let mut out = vec![0.0; n * nh * hd];
            attention_forward(&mut out, x, l, &seq_start);
            weighted_sum(&out, &r)
        };
        let fd = check("windowed attention dqkv", &qkv, &d, H, TOL, loss);
        assert_catches_sign_flip("windowed attention dqkv", &fd, &d, TOL);
    }

    #[test]
    fn attention_backward_is_bit_identical_across_runs_and_thread_counts() {
        let (seq_start, _) = packed(&[37, 100, 5, 64, 1, 20]);
        let n = seq_start.len();
        let l = layout(8, 2, 16);
        let mut rng = Rng::new(47);
        let (qkv, datt) = (rng.vec(n * l.row_len, 1.5), rng.vec(n * 8 * 16, 1.0));
        let mut att = vec![0.0; n * 8 * 16];
        attention_forward(&mut att, &qkv, l, &seq_start);
        let run = || backward(&datt, &qkv, &att, l, &seq_start);
        let reference = with_threads(1, run);
        for threads in [1, 2, 3, 4] {
            assert_bits_eq(&format!("dqkv with {threads} threads"), &reference, &with_threads(threads, run));
        }
    }

    #[test]
    fn first_row_of_each_sequence_copies_its_value() {
        // Two packed sequences of lengths 2 and 1; one head, head_dim 2; q=k=v layout [q|k|v].
        let l = QkvLayout {
            row_len: 6,
            q_col: 0,
            k_col: 2,
            v_col: 4,
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: 2,
            scale: 0.5f32.sqrt(),
            window: usize::MAX,
        };
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
