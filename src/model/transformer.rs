//! The decoder-only transformer for both families, its weights (HF module names kept, so PEFT
//! keys map without tables) and its forward pass over a packed batch.
use super::config::{Config, Family};
use crate::kernels::activation::{gelu_tanh_forward, swiglu_forward};
use crate::kernels::attention::{QkvLayout, attention_forward};
use crate::kernels::embedding::embedding_forward;
use crate::kernels::matmul::{Mat, MatMut, matmul};
use crate::kernels::norm::{layernorm_forward, rmsnorm_forward};
use crate::kernels::rope::{RopeTable, rope_forward};
use anyhow::{Result, bail};

/// y = x·Wᵀ + b with W stored (out, in) — nn.Linear's layout (GPT-2 Conv1D is transposed on load).
pub struct Linear {
    /// HF module path, e.g. "model.layers.0.self_attn.q_proj".
    pub name: String,
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl Linear {
    /// out (N, out_dim) with row stride `out_stride`: out = x·Wᵀ + b, or out += x·Wᵀ + b.
    pub fn forward(&self, out: &mut [f32], out_stride: usize, x: &[f32], n: usize, accumulate: bool) {
        matmul(
            MatMut { data: out, rows: n, cols: self.out_dim, row_stride: out_stride },
            Mat::new(x, n, self.in_dim),
            Mat::new(&self.w, self.out_dim, self.in_dim).t(),
            accumulate,
        );
        if let Some(b) = &self.b {
            for r in 0..n {
                for (o, bv) in out[r * out_stride..][..self.out_dim].iter_mut().zip(b) {
                    *o += bv;
                }
            }
        }
    }
}

/// RMSNorm (no bias) or LayerNorm (with bias).
pub struct Norm {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
}

pub struct Block {
    pub attn_norm: Norm,
    /// q, k, v projections (Llama family) or the fused c_attn (GPT-2), writing into one (N, q+k+v) buffer.
    pub qkv: Vec<Linear>,
    pub o: Linear,
    pub mlp_norm: Norm,
    /// gate_proj (SwiGLU); None for GPT-2's GELU MLP.
    pub gate: Option<Linear>,
    pub up: Linear,
    pub down: Linear,
}

pub struct Transformer {
    pub config: Config,
    /// (vocab, hidden)
    pub embed: Vec<f32>,
    /// (max_positions, hidden), GPT-2 only.
    pub pos_embed: Option<Vec<f32>>,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
    /// (vocab, hidden); None when tied to `embed`.
    pub lm_head: Option<Vec<f32>>,
}

/// Rows of several sequences packed end to end; row i sits at position `positions[i]` of the
/// sequence that starts at row `seq_start[i]`.
pub struct PackedBatch {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub seq_start: Vec<u32>,
    /// Row range of each sequence.
    pub seqs: Vec<std::ops::Range<usize>>,
}

impl PackedBatch {
    pub fn new(seqs: &[Vec<u32>]) -> Self {
        let mut b = PackedBatch { tokens: vec![], positions: vec![], seq_start: vec![], seqs: vec![] };
        for s in seqs {
            let start = b.tokens.len();
            b.tokens.extend_from_slice(s);
            b.positions.extend(0..s.len() as u32);
            b.seq_start.extend(std::iter::repeat_n(start as u32, s.len()));
            b.seqs.push(start..b.tokens.len());
        }
        b
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Forward scratch, grown to the largest batch seen and reused (no allocation per step after that).
#[derive(Default)]
pub struct Activations {
    /// residual stream (N, hidden); after `forward` it holds the final-normed hidden states.
    pub x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    ff_a: Vec<f32>,
    ff_b: Vec<f32>,
    ff_act: Vec<f32>,
    stat_a: Vec<f32>,
    stat_b: Vec<f32>,
    rope: Option<RopeTable>,
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

impl Transformer {
    pub fn qkv_width(&self) -> usize {
        let c = &self.config;
        (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    }

    /// The LM head matrix (vocab, hidden).
    pub fn head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }

    /// Checks a batch against the vocabulary and the context window before any kernel runs.
    pub fn check_batch(&self, batch: &PackedBatch) -> Result<()> {
        let c = &self.config;
        if let Some(&bad) = batch.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            bail!("token id {bad} is outside the model's vocabulary of {} entries", c.vocab_size);
        }
        if let Some(s) = batch.seqs.iter().find(|s| s.len() > c.max_positions) {
            bail!("a sequence of {} tokens exceeds the model's context window of {}", s.len(), c.max_positions);
        }
        if let Some(w) = c.sliding_window
            && let Some(s) = batch.seqs.iter().find(|s| s.len() > w)
        {
            bail!("a sequence of {} tokens exceeds the sliding attention window of {w}, which condlm does not implement", s.len());
        }
        Ok(())
    }

    /// Runs the batch; on return `acts.x[..N·hidden]` holds the final-normed hidden states.
    pub fn forward(&self, batch: &PackedBatch, acts: &mut Activations) {
        let c = &self.config;
        let (n, d, f) = (batch.len(), c.hidden_size, c.intermediate_size);
        let qw = self.qkv_width();
        for (v, len) in [
            (&mut acts.x, n * d),
            (&mut acts.h, n * d),
            (&mut acts.qkv, n * qw),
            (&mut acts.att, n * c.num_heads * c.head_dim),
            (&mut acts.ff_a, n * f),
            (&mut acts.ff_b, n * f),
            (&mut acts.ff_act, n * f),
            (&mut acts.stat_a, n),
            (&mut acts.stat_b, n),
        ] {
            grow(v, len);
        }
        let max_pos = batch.positions.iter().max().map_or(0, |&p| p as usize + 1);
        if c.family == Family::Llama && acts.rope.as_ref().is_none_or(|t| t.cos.len() < max_pos * c.head_dim / 2) {
            acts.rope = Some(RopeTable::new(&c.rope_inv_freq(), max_pos.max(256).min(c.max_positions)));
        }
        let layout = QkvLayout {
            row_len: qw,
            q_col: 0,
            k_col: c.num_heads * c.head_dim,
            v_col: (c.num_heads + c.num_kv_heads) * c.head_dim,
            n_heads: c.num_heads,
            n_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        let x = &mut acts.x[..n * d];
        embedding_forward(x, &batch.tokens, &self.embed, &batch.positions, self.pos_embed.as_deref(), d);
        for blk in &self.blocks {
            let h = &mut acts.h[..n * d];
            self.norm(h, &mut acts.stat_a[..n], &mut acts.stat_b[..n], x, &blk.attn_norm);
            let qkv = &mut acts.qkv[..n * qw];
            let mut col = 0;
            for lin in &blk.qkv {
                lin.forward(&mut qkv[col..], qw, h, n, false);
                col += lin.out_dim;
            }
            if let Some(rope) = &acts.rope {
                rope_forward(qkv, qw, layout.q_col, c.num_heads, &batch.positions, rope);
                rope_forward(qkv, qw, layout.k_col, c.num_kv_heads, &batch.positions, rope);
            }
            let att = &mut acts.att[..n * c.num_heads * c.head_dim];
            attention_forward(att, qkv, layout, &batch.seq_start);
            blk.o.forward(x, d, att, n, true);

            self.norm(h, &mut acts.stat_a[..n], &mut acts.stat_b[..n], x, &blk.mlp_norm);
            let (a, b, act) = (&mut acts.ff_a[..n * f], &mut acts.ff_b[..n * f], &mut acts.ff_act[..n * f]);
            match &blk.gate {
                Some(gate) => {
                    gate.forward(a, f, h, n, false);
                    blk.up.forward(b, f, h, n, false);
                    swiglu_forward(act, a, b);
                }
                None => {
                    blk.up.forward(b, f, h, n, false);
                    gelu_tanh_forward(act, b);
                }
            }
            blk.down.forward(x, d, act, n, true);
        }
        let h = &mut acts.h[..n * d];
        self.norm(h, &mut acts.stat_a[..n], &mut acts.stat_b[..n], x, &self.final_norm);
        x.copy_from_slice(h);
    }

    fn norm(&self, out: &mut [f32], stat_a: &mut [f32], stat_b: &mut [f32], x: &[f32], n: &Norm) {
        match &n.b {
            None => rmsnorm_forward(out, stat_b, x, &n.w, self.config.norm_eps),
            Some(b) => layernorm_forward(out, stat_a, stat_b, x, &n.w, b, self.config.norm_eps),
        }
    }
}
