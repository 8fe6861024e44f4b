//! The device buffers of a pass, allocated for a number of rows and reused by every batch that fits (the
//! caching arena: no allocation per step once the largest batch has been seen). A training pass keeps every
//! block's activations for the backward pass; inference keeps one block's.
use super::linear::{LinearScratch, LoraBufs};
use super::weights::{SLOT_O, Weights};
use crate::kernels::backend::Backend;
use crate::network::config::Config;
use anyhow::Result;

/// Rows of the LM head computed at once: bounds its logits to HEAD_ROWS × vocab values.
pub const HEAD_ROWS: usize = 512;

/// What one block keeps between its forward and backward pass.
pub struct LayerBufs<B: Backend> {
    /// The residual stream entering the block and its attention half's output (N, d) (training only).
    pub x_in: B::F32,
    pub x_mid: B::F32,
    /// attn_norm(x_in), mlp_norm(x_mid) (N, d) — empty when kept in bf16 (`bf16`) — and their 1/rms (N); with
    /// LayerNorms (GPT-2) also their means (N), else empty.
    pub h1: B::F32,
    pub rstd1: B::F32,
    pub mean1: B::F32,
    pub h2: B::F32,
    pub rstd2: B::F32,
    pub mean2: B::F32,
    /// q|k|v after RoPE (N, qkv width); attention's output (N, heads·head_dim).
    pub qkv: B::F32,
    pub att: B::F32,
    /// Attention's per-(row, head) softmax statistics (N·heads·3), from its forward to its backward (training
    /// only).
    pub att_stats: B::F32,
    /// gate, up and act(gate)·up (N, ffn); empty when they are kept in bf16 (`bf16`).
    pub gate: B::F32,
    pub up: B::F32,
    pub act: B::F32,
    /// The activations above kept in bf16 instead ([`Weights::bf16_activations`]).
    pub bf16: Option<LayerBf16<B>>,
    /// Per linear layer by slot (q, k, v, o, gate, up, down: `DevBlock::slotted`), its adapter's saved values.
    pub lora: Vec<Option<LoraBufs<B>>>,
    /// q and k before their per-head norms (N, heads·head_dim) and those norms' 1/rms (N·heads); empty without.
    pub q_pre: B::F32,
    pub k_pre: B::F32,
    pub q_rstd: B::F32,
    pub k_rstd: B::F32,
    /// The attention and MLP outputs before their post norms (N, d) and those norms' 1/rms (N); empty without.
    pub attn_out: B::F32,
    pub mlp_out: B::F32,
    pub post1_rstd: B::F32,
    pub post2_rstd: B::F32,
}

/// A gated MLP's three (N, ffn) activations — gate, up, act(gate)·up — or their gradients, kept in bf16
/// ([`Weights::bf16_activations`]).
pub struct MlpBf16<B: Backend> {
    pub gate: B::Bf16,
    pub up: B::Bf16,
    pub act: B::Bf16,
}

impl<B: Backend> MlpBf16<B> {
    fn new(be: &B, n: usize) -> Result<Self> {
        Ok(MlpBf16 { gate: be.alloc_bf16(n)?, up: be.alloc_bf16(n)?, act: be.alloc_bf16(n)? })
    }
}

/// A block's activations kept in bf16: the normed inputs of its attention and MLP, h1 and h2 (N, d), and its
/// MLP's.
pub struct LayerBf16<B: Backend> {
    pub h1: B::Bf16,
    pub h2: B::Bf16,
    pub mlp: MlpBf16<B>,
}

fn layer_bf16<B: Backend>(be: &B, n: usize, d: usize, f: usize) -> Result<LayerBf16<B>> {
    Ok(LayerBf16 { h1: be.alloc_bf16(n * d)?, h2: be.alloc_bf16(n * d)?, mlp: MlpBf16::new(be, n * f)? })
}

/// Gradient scratch of the backward pass, shared by the blocks.
pub struct GradBufs<B: Backend> {
    /// ∂L/∂(residual stream) (N, d); ∂L/∂(a norm's output) (N, d).
    pub dx: B::F32,
    pub dh: B::F32,
    pub dqkv: B::F32,
    pub datt: B::F32,
    pub dgate: B::F32,
    pub dup: B::F32,
    pub dact: B::F32,
    /// Their gradients in bf16 (dgate, dup, dact) when the MLP's activations are kept in bf16
    /// ([`Weights::bf16_activations`]); the f32 ones empty.
    pub mlp_bf16: Option<MlpBf16<B>>,
    /// With bf16 activations, an f32 gradient rounded once for the bf16 products that read it: down's dy (N, d),
    /// then dq|dk|dv (N, qkv width); else empty.
    pub dy_bf16: B::Bf16,
    /// ∂L/∂(final-normed hidden states) (N, d).
    pub dhidden: B::F32,
    /// ∂L/∂(a sublayer's output before its post norm) (N, d); ∂L/∂(q or k after, before its norm) (N, heads·hd).
    pub dsub: B::F32,
    pub dqk_post: B::F32,
    pub dqk_pre: B::F32,
}

/// The LM head's chunk: gathered rows (HEAD_ROWS, d), their logits (HEAD_ROWS, vocab), indices, targets; and the
/// losses of every chunk of a batch (N).
pub struct HeadBufs<B: Backend> {
    pub rows: B::F32,
    pub logits: B::F32,
    /// The chunk's dlogits in bf16 when the activations are (training only; else empty, and the dlogits replace
    /// the logits).
    pub dlogits_bf16: B::Bf16,
    pub loss: B::F64,
    pub idx: B::U32,
    pub targets: B::U32,
}

pub struct Buffers<B: Backend> {
    /// Rows every buffer holds.
    pub capacity: usize,
    pub training: bool,
    pub tokens: B::U32,
    pub positions: B::U32,
    pub seq_start: B::U32,
    /// Decoding: each row's KV cache slot.
    pub slots: B::U32,
    /// Each row's row of the RoPE table when it is not its position (LongRoPE's long set: `set_rope_rows`).
    pub rope_rows: B::U32,
    /// Phi-3's fused gate|up output (N, 2·ffn), or its gradient on the way back; empty without.
    pub gate_up: B::F32,
    /// The residual stream (N, d); the final norm's input and output, and its 1/rms (and mean, for a LayerNorm).
    pub x: B::F32,
    pub x_final_in: B::F32,
    pub hidden: B::F32,
    pub final_rstd: B::F32,
    pub final_mean: B::F32,
    pub layers: Vec<LayerBufs<B>>,
    pub linear: LinearScratch<B>,
    pub grads: Option<GradBufs<B>>,
    pub head: HeadBufs<B>,
}

impl<B: Backend> Buffers<B> {
    /// Whether the LM head's dlogits go to `head.dlogits_bf16` (a training pass with bf16 activations).
    pub fn bf16_dlogits(&self) -> bool {
        self.training && self.layers.first().is_some_and(|l| l.bf16.is_some())
    }

    /// Buffers for `rows` rows; `training` keeps every block's activations and the gradient scratch.
    pub fn new(be: &B, c: &Config, w: &Weights<B>, rows: usize, training: bool) -> Result<Self> {
        let (n, d, f) = (rows, c.hidden_size, c.intermediate_size);
        let (qw, aw) = ((c.num_heads + 2 * c.num_kv_heads) * c.head_dim, c.num_heads * c.head_dim);
        let bf16 = w.bf16_activations(be);
        // The f32 scratch of LoRA's dropout takes the widest f32 input or input gradient (attention's output, the
        // normed inputs' gradients); the bf16 inputs have their own.
        let max_in = if bf16 { d.max(aw) } else { d.max(f).max(aw) };
        let (hd, ff) = if bf16 { (0, 0) } else { (n * d, n * f) };
        let max_rank = w.blocks.iter().flat_map(|b| b.linears()).filter_map(|l| l.lora.as_ref()).map(|l| l.rank);
        let max_rank = max_rank.max().unwrap_or(0);
        let kept = if training { c.num_layers } else { 1 };
        let mut layers = Vec::with_capacity(kept);
        for (i, blk) in w.blocks.iter().enumerate().take(kept) {
            // Inference runs every block on one layer's buffers: a slot's adapter buffers then serve whichever
            // block adapts that slot, at the largest rank (`layers_to_transform`, `rank_pattern`).
            let served = if training { &w.blocks[i..=i] } else { &w.blocks[..] };
            let mut rank = [0usize; 7];
            for (slot, a) in served.iter().flat_map(|b| b.slotted()).filter_map(|(s, l)| Some((s, l.lora.as_ref()?))) {
                rank[slot] = rank[slot].max(a.rank);
            }
            let mut lora: Vec<Option<LoraBufs<B>>> = (0..7).map(|_| None).collect();
            for (slot, l) in blk.slotted() {
                if rank[slot] == 0 {
                    continue;
                }
                // Every linear but o reads a normed input or the MLP's act: kept in bf16 under `bf16`.
                let (r, u_bf16) = (rank[slot], bf16 && slot != SLOT_O);
                let dropout = l.lora.as_ref().is_some_and(|a| a.dropout > 0.0);
                lora[slot] = Some(LoraBufs {
                    u: be.alloc(if u_bf16 { 0 } else { n * r })?,
                    u_bf16: be.alloc_bf16(if u_bf16 { n * r } else { 0 })?,
                    keep: (training && dropout).then(|| be.alloc_mask(n * l.in_dim)).transpose()?,
                });
            }
            let stream = if training { n * d } else { 0 };
            let kvw = c.num_kv_heads * c.head_dim;
            let (qk, post, layer_norms) = (c.qk_norm, c.sandwich_norms, w.final_norm.b.is_some());
            let size = |on: bool, len: usize| be.alloc(if on { len } else { 0 });
            layers.push(LayerBufs {
                x_in: be.alloc(stream)?,
                x_mid: be.alloc(stream)?,
                h1: be.alloc(hd)?,
                rstd1: be.alloc(n)?,
                mean1: size(layer_norms, n)?,
                h2: be.alloc(hd)?,
                rstd2: be.alloc(n)?,
                mean2: size(layer_norms, n)?,
                qkv: be.alloc(n * qw)?,
                att: be.alloc(n * aw)?,
                att_stats: be.alloc(if training { n * c.num_heads * 3 } else { 0 })?,
                gate: be.alloc(ff)?,
                up: be.alloc(ff)?,
                act: be.alloc(ff)?,
                bf16: bf16.then(|| layer_bf16(be, n, d, f)).transpose()?,
                lora,
                q_pre: size(qk, n * aw)?,
                k_pre: size(qk, n * kvw)?,
                q_rstd: size(qk, n * c.num_heads)?,
                k_rstd: size(qk, n * c.num_kv_heads)?,
                attn_out: size(post, n * d)?,
                mlp_out: size(post, n * d)?,
                post1_rstd: size(post, n)?,
                post2_rstd: size(post, n)?,
            });
        }
        let grads = training
            .then(|| -> Result<GradBufs<B>> {
                Ok(GradBufs {
                    dx: be.alloc(n * d)?,
                    dh: be.alloc(n * d)?,
                    dqkv: be.alloc(n * qw)?,
                    datt: be.alloc(n * aw)?,
                    dgate: be.alloc(ff)?,
                    dup: be.alloc(ff)?,
                    dact: be.alloc(ff)?,
                    mlp_bf16: bf16.then(|| MlpBf16::new(be, n * f)).transpose()?,
                    dy_bf16: be.alloc_bf16(if bf16 { n * d.max(qw) } else { 0 })?,
                    dhidden: be.alloc(n * d)?,
                    dsub: be.alloc(if c.sandwich_norms { n * d } else { 0 })?,
                    dqk_post: be.alloc(if c.qk_norm { n * aw } else { 0 })?,
                    dqk_pre: be.alloc(if c.qk_norm { n * aw } else { 0 })?,
                })
            })
            .transpose()?;
        let h = HEAD_ROWS.min(n);
        Ok(Buffers {
            capacity: n,
            training,
            tokens: be.alloc_u32(n)?,
            positions: be.alloc_u32(n)?,
            seq_start: be.alloc_u32(n)?,
            slots: be.alloc_u32(n)?,
            rope_rows: be.alloc_u32(if c.longrope.is_some() { n } else { 0 })?,
            gate_up: be.alloc(if c.fused_projections() { n * 2 * f } else { 0 })?,
            x: be.alloc(n * d)?,
            x_final_in: be.alloc(n * d)?,
            hidden: be.alloc(n * d)?,
            final_rstd: be.alloc(n)?,
            final_mean: be.alloc(if w.final_norm.b.is_some() { n } else { 0 })?,
            layers,
            linear: LinearScratch {
                x_drop: be.alloc(n * max_in)?,
                x_drop_bf16: be.alloc_bf16(if bf16 && training { n * d.max(f) } else { 0 })?,
                du: be.alloc(n * max_rank)?,
                qk_post: be.alloc(if c.qk_norm { n * aw } else { 0 })?,
                sublayer: be.alloc(if c.sandwich_norms { n * d } else { 0 })?,
            },
            grads,
            head: HeadBufs {
                rows: be.alloc(h * d)?,
                logits: be.alloc(h * c.vocab_size)?,
                dlogits_bf16: be.alloc_bf16(if bf16 && training { h * c.vocab_size } else { 0 })?,
                loss: be.alloc_f64(n)?,
                idx: be.alloc_u32(h)?,
                targets: be.alloc_u32(h)?,
            },
        })
    }
}
