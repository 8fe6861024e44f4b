//! Incremental decoding over a KV cache: the model's forward pass for a set of rows, each one token at a
//! given position of a given cache slot. A prompt's prefill is its tokens as rows at positions 0..len; a decode
//! step is one row per sequence. Both go through [`Decoder::forward`], and rows of different slots (prefills of
//! new prompts and decode steps of running ones) can share one call.
//!
//! Per layer: the rows' q, k, v are projected (LoRA adapters, if attached, run unmerged, without dropout), RoPE
//! rotates q and k at the rows' positions (Llama family; GPT-2 adds learned positions at the embedding), k and v
//! are stored in the cache, and each row's query heads attend to positions 0..=pos of its own slot. Hence the
//! attention of a prefill row sees exactly the prompt positions before it — causal, as in training.
//!
//! Kernels: up to 16 rows (decode steps, beams, small batches) the linear layers and the LM head run a
//! matrix-vector kernel that streams each weight matrix once (the step is memory-bound); more rows use the GEMM.
//! Decode rows attend row by row with a running softmax; a prompt's prefill (≥ 16 consecutive positions of one
//! slot) attends through GEMMs in tiles of 64 query rows (S = Q·Kᵀ, causal mask, softmax, P·V).
//!
//! Every buffer is sized in [`Decoder::new`] for at most `max_rows` rows per call and `slots` logit rows. A call
//! of at most 16 rows allocates nothing (LoRA scratch grows once to its largest size; checked by a test with a
//! counting allocator); larger calls (prefills) may let the GEMM library allocate its packing buffers.
use crate::kernels::activation::{gelu_tanh_forward, swiglu_forward};
use crate::kernels::embedding::embedding_forward;
use crate::kernels::norm::{layernorm_forward, rmsnorm_forward};
use crate::kernels::rope::{RopeTable, rope_forward};
use crate::kernels::simd::{axpy_rows, dot, dot_rows, dots, exp_shifted};
use crate::network::config::Family;
use crate::network::kv_cache::KvCache;
use crate::network::linear::{Linear, Strided, add_bias};
use crate::network::lora::Lora;
use crate::network::lora::LoraActs;
use crate::network::transformer::{Norm, SLOT_DOWN, SLOT_GATE, SLOT_O, SLOT_UP, Transformer};
use anyhow::{Result, bail};
use rayon::prelude::*;

/// One token to run: `token` at position `pos` of cache slot `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub slot: u32,
    pub pos: u32,
    pub token: u32,
}

/// Up to this many rows, linear layers use the matrix-vector kernel below (weights streamed once, dot products
/// over contiguous weight rows); above it, the GEMM.
const GEMV_MAX_ROWS: usize = 16;
/// Output features per parallel task of the matrix-vector kernel.
const GEMV_CHUNK: usize = 64;
/// Attention scores computed per block (on the stack) before the running softmax is updated.
const ATT_BLOCK: usize = 128;
/// Consecutive positions of one slot (a prompt's prefill) from this many rows on attend through GEMMs, in tiles
/// of `ATT_TILE` query rows; shorter runs and decode rows go row by row.
const RUN_MIN: usize = 16;
const ATT_TILE: usize = 64;

pub struct Decoder<'m> {
    model: &'m Transformer,
    pub cache: KvCache,
    max_rows: usize,
    rope: Option<RopeTable>,
    tokens: Vec<u32>,
    positions: Vec<u32>,
    x: Vec<f32>,
    h: Vec<f32>,
    stat_a: Vec<f32>,
    stat_b: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    gemv: Vec<f32>,
    lora: [LoraActs; 7],
    head_in: Vec<f32>,
    head_x: Vec<f32>,
    logits: Vec<f32>,
    /// Prefill runs of this call: (first row, rows), and which rows they cover.
    runs: Vec<(usize, usize)>,
    in_run: Vec<bool>,
    /// Per query head: scores of one tile (ATT_TILE × capacity), row sums, and its output rows (max_rows × hd).
    run_scores: Vec<f32>,
    run_sums: Vec<f32>,
    run_out: Vec<f32>,
}

impl<'m> Decoder<'m> {
    /// A decoder with a cache of `slots` sequences × `capacity` positions, running at most `max_rows` rows
    /// per call. `capacity` may not exceed the model's context window.
    pub fn new(model: &'m Transformer, slots: usize, capacity: usize, max_rows: usize) -> Result<Self> {
        let c = &model.config;
        if capacity > c.max_positions {
            bail!("a KV cache of {capacity} positions exceeds the model's context window of {}", c.max_positions);
        }
        if slots == 0 || capacity == 0 || max_rows == 0 {
            bail!("a decoder needs at least one slot, one position and one row");
        }
        let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (qw, aw) = (model.qkv_width(), c.num_heads * c.head_dim);
        let widest_out = [qw, aw, d, f].into_iter().max().unwrap_or(d);
        let rope = (c.family == Family::Llama).then(|| RopeTable::new(&c.rope_inv_freq(), capacity));
        let n = max_rows;
        Ok(Decoder {
            model,
            cache: KvCache::new(c.num_layers, slots, capacity, c.num_kv_heads, c.head_dim),
            max_rows,
            rope,
            tokens: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
            x: vec![0.0; n * d],
            h: vec![0.0; n * d],
            stat_a: vec![0.0; n.max(slots)],
            stat_b: vec![0.0; n.max(slots)],
            qkv: vec![0.0; n * qw],
            att: vec![0.0; n * aw],
            gate: vec![0.0; n * f],
            up: vec![0.0; n * f],
            act: vec![0.0; n * f],
            gemv: vec![0.0; GEMV_MAX_ROWS * widest_out.max(v).div_ceil(GEMV_CHUNK) * GEMV_CHUNK],
            lora: Default::default(),
            head_in: vec![0.0; slots * d],
            head_x: vec![0.0; slots * d],
            logits: vec![0.0; slots * v],
            runs: Vec::with_capacity(n / RUN_MIN + 1),
            in_run: vec![false; n],
            run_scores: if n >= RUN_MIN { vec![0.0; c.num_heads * ATT_TILE * capacity] } else { vec![] },
            run_sums: vec![0.0; c.num_heads * ATT_TILE],
            run_out: if n >= RUN_MIN { vec![0.0; n * aw] } else { vec![] },
        })
    }

    pub fn model(&self) -> &'m Transformer {
        self.model
    }

    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// Runs `rows` (their k/v land in the cache) and returns the logits (logit_rows.len(), vocab) of the rows
    /// listed in `logit_rows` (indices into `rows`, at most `slots` of them).
    pub fn forward(&mut self, rows: &[Row], logit_rows: &[usize]) -> Result<&[f32]> {
        self.check(rows, logit_rows)?;
        let c = &self.model.config;
        let model = self.model;
        let (n, d, f) = (rows.len(), c.hidden_size, c.intermediate_size);
        let (qw, aw, kvw) = (model.qkv_width(), c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let (k_col, v_col) = (aw, aw + kvw);
        self.tokens.clear();
        self.tokens.extend(rows.iter().map(|r| r.token));
        self.positions.clear();
        self.positions.extend(rows.iter().map(|r| r.pos));
        find_runs(rows, &mut self.runs, &mut self.in_run[..n]);
        let x = &mut self.x[..n * d];
        embedding_forward(
            x,
            &self.tokens,
            &model.embed.data,
            &self.positions,
            model.pos_embed.as_ref().map(|p| &p.data[..]),
            d,
        );
        for (li, blk) in model.blocks.iter().enumerate() {
            let h = &mut self.h[..n * d];
            norm(&blk.attn_norm, h, &mut self.stat_a[..n], &mut self.stat_b[..n], x, c.norm_eps);
            let qkv = &mut self.qkv[..n * qw];
            let mut col = 0;
            for (s, lin) in blk.qkv.iter().enumerate() {
                let out = Strided { data: &mut qkv[col..], row_stride: qw };
                linear(lin, out, h, n, false, &mut self.lora[s], &mut self.gemv);
                col += lin.out_dim;
            }
            if let Some(rope) = &self.rope {
                rope_forward(qkv, qw, 0, c.num_heads, &self.positions, rope);
                rope_forward(qkv, qw, k_col, c.num_kv_heads, &self.positions, rope);
            }
            for (r, row) in qkv.chunks_exact(qw).zip(rows) {
                self.cache.write(li, row.slot as usize, row.pos as usize, &r[k_col..][..kvw], &r[v_col..][..kvw]);
            }
            let att = &mut self.att[..n * aw];
            attend(att, qkv, qw, rows, &self.in_run[..n], &self.cache, li, c.num_heads);
            for &(start, len) in &self.runs {
                let bufs =
                    RunBuffers { scores: &mut self.run_scores, sums: &mut self.run_sums, out: &mut self.run_out };
                attend_run(att, qkv, qw, &rows[start..start + len], start, &self.cache, li, c.num_heads, bufs);
            }
            linear(&blk.o, Strided { data: x, row_stride: d }, att, n, true, &mut self.lora[SLOT_O], &mut self.gemv);

            let h = &mut self.h[..n * d];
            norm(&blk.mlp_norm, h, &mut self.stat_a[..n], &mut self.stat_b[..n], x, c.norm_eps);
            let (gate, up, act) = (&mut self.gate[..n * f], &mut self.up[..n * f], &mut self.act[..n * f]);
            linear(&blk.up, Strided { data: up, row_stride: f }, h, n, false, &mut self.lora[SLOT_UP], &mut self.gemv);
            match &blk.gate {
                Some(g) => {
                    let out = Strided { data: gate, row_stride: f };
                    linear(g, out, h, n, false, &mut self.lora[SLOT_GATE], &mut self.gemv);
                    swiglu_forward(act, gate, up);
                }
                None => gelu_tanh_forward(act, up),
            }
            let out = Strided { data: x, row_stride: d };
            linear(&blk.down, out, act, n, true, &mut self.lora[SLOT_DOWN], &mut self.gemv);
        }
        // Final norm and LM head on the requested rows only.
        let k = logit_rows.len();
        for (dst, &r) in self.head_in.chunks_exact_mut(d).zip(logit_rows) {
            dst.copy_from_slice(&x[r * d..][..d]);
        }
        let head_x = &mut self.head_x[..k * d];
        norm(
            &model.final_norm,
            head_x,
            &mut self.stat_a[..k],
            &mut self.stat_b[..k],
            &self.head_in[..k * d],
            c.norm_eps,
        );
        let v = c.vocab_size;
        let logits = &mut self.logits[..k * v];
        matvec(Strided { data: logits, row_stride: v }, head_x, k, model.head(), d, v, None, false, &mut self.gemv);
        Ok(&self.logits[..k * v])
    }

    fn check(&self, rows: &[Row], logit_rows: &[usize]) -> Result<()> {
        let c = &self.model.config;
        if rows.is_empty() {
            bail!("nothing to decode: no rows");
        }
        if rows.len() > self.max_rows {
            bail!("{} rows in one decoder call, more than the {} it was sized for", rows.len(), self.max_rows);
        }
        if logit_rows.len() > self.cache.slots {
            bail!("{} logit rows requested, more than the {} slots", logit_rows.len(), self.cache.slots);
        }
        if let Some(&r) = logit_rows.iter().find(|&&r| r >= rows.len()) {
            bail!("logit row {r} is not one of the {} rows", rows.len());
        }
        for r in rows {
            if r.token as usize >= c.vocab_size {
                bail!("token id {} is outside the model's vocabulary of {} entries", r.token, c.vocab_size);
            }
            if r.slot as usize >= self.cache.slots {
                bail!("cache slot {} does not exist ({} slots)", r.slot, self.cache.slots);
            }
            if r.pos as usize >= self.cache.capacity {
                bail!("position {} is past the KV cache's {} positions", r.pos, self.cache.capacity);
            }
        }
        Ok(())
    }
}

fn norm(n: &Norm, out: &mut [f32], stat_a: &mut [f32], stat_b: &mut [f32], x: &[f32], eps: f32) {
    match &n.b {
        None => rmsnorm_forward(out, stat_b, x, &n.w.data, eps),
        Some(b) => layernorm_forward(out, stat_a, stat_b, x, &n.w.data, &b.data, eps),
    }
}

/// `Linear::forward` at inference (LoRA unmerged, no dropout), with the matrix-vector kernel for few rows.
fn linear(lin: &Linear, out: Strided, x: &[f32], n: usize, accumulate: bool, la: &mut LoraActs, tmp: &mut [f32]) {
    if n > GEMV_MAX_ROWS {
        lin.forward(out, x, n, accumulate, la, None);
        return;
    }
    let Strided { data, row_stride } = out;
    let bias = lin.b.as_ref().map(|b| &b.data[..]);
    matvec(Strided { data: &mut *data, row_stride }, x, n, &lin.w.data, lin.in_dim, lin.out_dim, bias, accumulate, tmp);
    if let Some(l) = &lin.lora {
        lora_small(l, data, row_stride, x, n, la);
    }
}

/// The LoRA term at inference for few rows: out[i] += scale · B · (A · x[i]), without the GEMM (whose packing
/// would allocate per call). Same arithmetic as `Lora::forward` with dropout off.
fn lora_small(l: &Lora, out: &mut [f32], row_stride: usize, x: &[f32], n: usize, la: &mut LoraActs) {
    let (r, in_dim, out_dim) = (l.rank, l.a.shape[1], l.b.shape[0]);
    if la.u.len() < n * r {
        la.u.resize(n * r, 0.0);
    }
    for i in 0..n {
        let xi = &x[i * in_dim..][..in_dim];
        let u = &mut la.u[i * r..][..r];
        for (j, u) in u.iter_mut().enumerate() {
            *u = l.scale * dot(xi, &l.a.data[j * in_dim..][..in_dim]);
        }
        let o = &mut out[i * row_stride..][..out_dim];
        for (k, o) in o.iter_mut().enumerate() {
            *o += dot(u, &l.b.data[k * r..][..r]);
        }
    }
}

/// out[r, o] (+)= x[r]·w[o] (+ bias[o]) for n ≤ GEMV_MAX_ROWS rows; w is (out_dim, in_dim) row-major.
/// Parallel over blocks of output features; each weight row is read once for all n rows.
#[allow(clippy::too_many_arguments)]
fn matvec(
    out: Strided,
    x: &[f32],
    n: usize,
    w: &[f32],
    in_dim: usize,
    out_dim: usize,
    bias: Option<&[f32]>,
    accumulate: bool,
    tmp: &mut [f32],
) {
    if n > GEMV_MAX_ROWS {
        let Strided { data, row_stride } = out;
        use crate::kernels::matmul::{Mat, MatMut, matmul};
        matmul(
            MatMut { data: &mut *data, rows: n, cols: out_dim, row_stride },
            Mat::new(&x[..n * in_dim], n, in_dim),
            Mat::new(w, out_dim, in_dim).t(),
            accumulate,
        );
        if let Some(b) = bias {
            add_bias(data, row_stride, n, b);
        }
        return;
    }
    // tmp: per block of GEMV_CHUNK weight rows, that block's outputs for all n rows ((blocks, n, GEMV_CHUNK));
    // the block's weights stay in cache from one row to the next.
    let blocks = out_dim.div_ceil(GEMV_CHUNK);
    let tmp = &mut tmp[..blocks * n * GEMV_CHUNK];
    tmp.par_chunks_mut(n * GEMV_CHUNK).enumerate().for_each(|(b, t)| {
        let (o0, o1) = (b * GEMV_CHUNK, ((b + 1) * GEMV_CHUNK).min(out_dim));
        for (r, t) in t.chunks_exact_mut(GEMV_CHUNK).enumerate() {
            dots(&mut t[..o1 - o0], &x[r * in_dim..][..in_dim], &w[o0 * in_dim..o1 * in_dim]);
        }
    });
    let Strided { data, row_stride } = out;
    for r in 0..n {
        let o = &mut data[r * row_stride..][..out_dim];
        for (j, o) in o.iter_mut().enumerate() {
            let v = tmp[((j / GEMV_CHUNK) * n + r) * GEMV_CHUNK + j % GEMV_CHUNK] + bias.map_or(0.0, |b| b[j]);
            if accumulate {
                *o += v;
            } else {
                *o = v;
            }
        }
    }
}

/// att[i, head h] = softmax(q_i,h · K[slot_i, kv(h), 0..=pos_i]ᵀ / √hd) · V[slot_i, kv(h), 0..=pos_i].
/// A running (online) softmax over blocks of positions: no scratch beyond one block on the stack.
#[allow(clippy::too_many_arguments)]
fn attend(
    att: &mut [f32],
    qkv: &[f32],
    qw: usize,
    rows: &[Row],
    skip: &[bool],
    cache: &KvCache,
    layer: usize,
    n_heads: usize,
) {
    let (hd, kv_heads) = (cache.head_dim, cache.kv_heads);
    let group = n_heads / kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let (ks, vs) = cache.layer(layer);
    let base = cache.offset(layer, 0, 0, 0);
    att.par_chunks_mut(hd).enumerate().for_each(|(task, o)| {
        let (i, h) = (task / n_heads, task % n_heads);
        if skip[i] {
            return;
        }
        let row = rows[i];
        let q = &qkv[i * qw + h * hd..][..hd];
        let at = cache.offset(layer, row.slot as usize, h / group, 0) - base;
        let (k, v) = (&ks[at..], &vs[at..]);
        let len = row.pos as usize + 1;
        let mut scores = [0.0f32; ATT_BLOCK];
        let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
        o.fill(0.0);
        for start in (0..len).step_by(ATT_BLOCK) {
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
fn find_runs(rows: &[Row], runs: &mut Vec<(usize, usize)>, in_run: &mut [bool]) {
    runs.clear();
    in_run.fill(false);
    let mut start = 0;
    for i in 1..=rows.len() {
        let continues = i < rows.len() && rows[i].slot == rows[i - 1].slot && rows[i].pos == rows[i - 1].pos + 1;
        if !continues {
            if i - start >= RUN_MIN {
                runs.push((start, i - start));
                in_run[start..i].fill(true);
            }
            start = i;
        }
    }
}

/// Scratch of [`attend_run`], preallocated by the decoder.
struct RunBuffers<'a> {
    scores: &'a mut [f32],
    sums: &'a mut [f32],
    out: &'a mut [f32],
}

/// Attention of a prefill run (rows `row0..row0 + run.len()` of the call, consecutive positions of one slot),
/// through GEMMs per query head and tile of ATT_TILE rows: S = Q·Kᵀ·scale over the cached keys up to the tile's
/// last position, causal mask, softmax rows, O = P·V. Heads run in parallel, each with its own scratch.
#[allow(clippy::too_many_arguments)]
fn attend_run(
    att: &mut [f32],
    qkv: &[f32],
    qw: usize,
    run: &[Row],
    row0: usize,
    cache: &KvCache,
    layer: usize,
    n_heads: usize,
    bufs: RunBuffers,
) {
    use crate::kernels::matmul::{Mat, MatMut, matmul};
    let (hd, cap) = (cache.head_dim, cache.capacity);
    let group = n_heads / cache.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let (ks, vs) = cache.layer(layer);
    let base = cache.offset(layer, 0, 0, 0);
    let (len, slot, pos0) = (run.len(), run[0].slot as usize, run[0].pos as usize);
    let out = &mut bufs.out[..n_heads * len * hd];
    out.par_chunks_mut(len * hd)
        .zip(bufs.scores.par_chunks_mut(ATT_TILE * cap))
        .zip(bufs.sums.par_chunks_mut(ATT_TILE))
        .enumerate()
        .for_each(|(h, ((o, sc), sums))| {
            let at = cache.offset(layer, slot, h / group, 0) - base;
            for t0 in (0..len).step_by(ATT_TILE) {
                let tq = ATT_TILE.min(len - t0);
                let keys = pos0 + t0 + tq; // positions 0..keys are visible to the tile's last row
                let q =
                    Mat { data: &qkv[(row0 + t0) * qw + h * hd..], rows: tq, cols: hd, row_stride: qw, col_stride: 1 };
                let s = &mut sc[..tq * keys];
                matmul(MatMut::new(s, tq, keys), q, Mat::new(&ks[at..at + keys * hd], keys, hd).t(), false);
                for (r, (srow, sum)) in s.chunks_exact_mut(keys).zip(sums.iter_mut()).enumerate() {
                    let visible = pos0 + t0 + r + 1;
                    let (live, masked) = srow.split_at_mut(visible);
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
