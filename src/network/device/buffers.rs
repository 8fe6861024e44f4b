//! The device buffers of a pass, allocated for a number of rows and reused by every batch that fits (the
//! caching arena: no allocation per step once the largest batch has been seen). A training pass keeps every
//! block's activations for the backward pass; inference keeps one block's.
use super::linear::{LinearScratch, LoraBufs};
use super::weights::{SLOT_O, SLOTS, Weights};
use crate::kernels::backend::{Backend, DeltaBufs};
use crate::kernels::gated_delta::DeltaNetShape;
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
    /// gate and up side by side (N, 2·ffn: each row's gate, then its up — one product of the stacked weights
    /// writes both; GPT-2's up alone, (N, ffn)), and act(gate)·up (N, ffn); empty when they are kept in bf16
    /// (`bf16`).
    pub gate_up: B::F32,
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
    /// Qwen3.5's attention output gate (N, heads·head_dim), split out of q_proj's output, and attention's output
    /// times its σ, o_proj's input; empty without.
    pub att_gate: B::F32,
    pub att_gated: B::F32,
    /// A Gated DeltaNet layer's (or, at inference, any such layer's) activations.
    pub delta: Option<DeltaLayerBufs<B>>,
}

/// What a Gated DeltaNet keeps between its forward and backward pass (`network::delta_net::DeltaActs`): rows
/// (N, ·) unless head-major (v_heads, N, ·).
pub struct DeltaLayerBufs<B: Backend> {
    /// The input projections' outputs (N, proj_width): qkv | z | b | a.
    pub proj: B::F32,
    /// The convolution before and after its SiLU (N, conv_dim).
    pub conv_pre: B::F32,
    pub conv_out: B::F32,
    /// 1/‖q‖, 1/‖k‖ (N, k_heads).
    pub q_rnorm: B::F32,
    pub k_rnorm: B::F32,
    /// The recurrence's head-major inputs q, k (dk), v (dv), g, β, and its output o (dv).
    pub q: B::F32,
    pub k: B::F32,
    pub v: B::F32,
    pub g: B::F32,
    pub beta: B::F32,
    pub o: B::F32,
    /// The recurrence's states at its chunk starts (v_heads, checkpoints, dk·dv) (training only).
    pub saved: B::F32,
    /// The gated norm's 1/rms (N, v_heads) and output, out_proj's input (N, value_dim).
    pub o_rstd: B::F32,
    pub y: B::F32,
}

impl<B: Backend> DeltaLayerBufs<B> {
    /// Buffers for `n` rows and, when training, `checkpoints` saved states per head.
    fn new(be: &B, s: &DeltaNetShape, n: usize, checkpoints: usize) -> Result<Self> {
        let (hv, dk, dv) = (s.v_heads, s.k_head_dim, s.v_head_dim);
        Ok(DeltaLayerBufs {
            proj: be.alloc(n * s.proj_width())?,
            conv_pre: be.alloc(n * s.conv_dim())?,
            conv_out: be.alloc(n * s.conv_dim())?,
            q_rnorm: be.alloc(n * s.k_heads)?,
            k_rnorm: be.alloc(n * s.k_heads)?,
            q: be.alloc(hv * n * dk)?,
            k: be.alloc(hv * n * dk)?,
            v: be.alloc(hv * n * dv)?,
            g: be.alloc(hv * n)?,
            beta: be.alloc(hv * n)?,
            o: be.alloc(hv * n * dv)?,
            saved: be.alloc(hv * checkpoints * dk * dv)?,
            o_rstd: be.alloc(n * hv)?,
            y: be.alloc(n * s.value_dim())?,
        })
    }

    /// The recurrence's inputs.
    pub fn inputs(&self) -> DeltaBufs<'_, B> {
        DeltaBufs { q: &self.q, k: &self.k, v: &self.v, g: &self.g, beta: &self.beta }
    }
}

/// A Gated DeltaNet's gradient scratch (`network::delta_net::DeltaGrads`), shared by its layers.
pub struct DeltaGradBufs<B: Backend> {
    /// ∂L/∂ the projections' outputs (N, proj_width); ∂L/∂ the convolution's output (N, conv_dim).
    pub dproj: B::F32,
    pub dconv: B::F32,
    /// Head-major ∂L/∂ o, q, k, v, g, β.
    pub d_o: B::F32,
    pub dq: B::F32,
    pub dk: B::F32,
    pub dv: B::F32,
    pub dg: B::F32,
    pub dbeta: B::F32,
    /// ∂L/∂ out_proj's input (N, value_dim).
    pub dy: B::F32,
}

impl<B: Backend> DeltaGradBufs<B> {
    fn new(be: &B, s: &DeltaNetShape, n: usize) -> Result<Self> {
        let (hv, dk, dv) = (s.v_heads, s.k_head_dim, s.v_head_dim);
        Ok(DeltaGradBufs {
            dproj: be.alloc(n * s.proj_width())?,
            dconv: be.alloc(n * s.conv_dim())?,
            d_o: be.alloc(hv * n * dv)?,
            dq: be.alloc(hv * n * dk)?,
            dk: be.alloc(hv * n * dk)?,
            dv: be.alloc(hv * n * dv)?,
            dg: be.alloc(hv * n)?,
            dbeta: be.alloc(hv * n)?,
            dy: be.alloc(n * s.value_dim())?,
        })
    }
}

/// A gated MLP's activations — gate and up side by side (N, 2·ffn), act(gate)·up (N, ffn) — or their gradients,
/// kept in bf16 ([`Weights::bf16_activations`]).
pub struct MlpBf16<B: Backend> {
    pub gate_up: B::Bf16,
    pub act: B::Bf16,
}

impl<B: Backend> MlpBf16<B> {
    /// For `n` values of each of the three (N·ffn).
    fn new(be: &B, n: usize) -> Result<Self> {
        Ok(MlpBf16 { gate_up: be.alloc_bf16(2 * n)?, act: be.alloc_bf16(n)? })
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
    /// ∂L/∂(gate and up), side by side as `LayerBufs::gate_up` holds them; ∂L/∂(act(gate)·up) (N, ffn).
    pub dgate_up: B::F32,
    pub dact: B::F32,
    /// Their gradients in bf16 (dgate|dup, dact) when the MLP's activations are kept in bf16
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
    /// ∂L/∂(o_proj's input) and ∂L/∂(the gate) of Qwen3.5's attention output gate (N, heads·head_dim); empty
    /// without.
    pub datt_gated: B::F32,
    pub datt_gate: B::F32,
    /// The Gated DeltaNet's, when the model has such layers.
    pub delta: Option<DeltaGradBufs<B>>,
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
    /// A packed batch's sequences for the Gated DeltaNet's recurrence (`kernels::gated_delta::seq_table`: up to
    /// one per row), and how many saved states per head its training buffers hold; empty, 0 without.
    pub delta_seqs: B::U32,
    pub checkpoints: usize,
    /// A projection's output wider than the buffers its parts go to, or its gradient on the way back: Qwen3.5's
    /// q_proj of [query, gate] heads (N, 2·heads·head_dim); empty without.
    pub wide: B::F32,
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

    /// Buffers for `rows` rows; `training` keeps every block's activations and the gradient scratch, and room for
    /// `checkpoints` saved states of each Gated DeltaNet head (`kernels::gated_delta::checkpoints`).
    pub fn new(be: &B, c: &Config, w: &Weights<B>, rows: usize, training: bool, checkpoints: usize) -> Result<Self> {
        let (n, d, f) = (rows, c.hidden_size, c.intermediate_size);
        let (qw, aw) = ((c.num_heads + 2 * c.num_kv_heads) * c.head_dim, c.num_heads * c.head_dim);
        let (vd, pw) = c.delta_net.map_or((0, 0), |s| (s.value_dim(), s.proj_width()));
        let bf16 = w.bf16_activations(be);
        // The f32 scratch of LoRA's dropout takes the widest f32 input or input gradient (attention's output, the
        // normed inputs' gradients, a Gated DeltaNet's output); the bf16 inputs have their own.
        let max_in = if bf16 { d.max(aw).max(vd) } else { d.max(f).max(aw).max(vd) };
        let checkpoints = if training { checkpoints } else { 0 };
        let (hd, ff) = if bf16 { (0, 0) } else { (n * d, n * f) };
        let max_rank = w.blocks.iter().flat_map(|b| b.linears()).filter_map(|l| l.lora.as_ref()).map(|l| l.rank);
        let max_rank = max_rank.max().unwrap_or(0);
        let kept = if training { c.num_layers } else { 1 };
        let mut layers = Vec::with_capacity(kept);
        for i in 0..kept {
            // Inference runs every block on one layer's buffers: a slot's adapter buffers then serve whichever
            // block adapts that slot, at the largest rank (`layers_to_transform`, `rank_pattern`).
            let served = if training { &w.blocks[i..=i] } else { &w.blocks[..] };
            let mut rank = [0usize; SLOTS];
            for (slot, a) in served.iter().flat_map(|b| b.slotted()).filter_map(|(s, l)| Some((s, l.lora.as_ref()?))) {
                rank[slot] = rank[slot].max(a.rank);
            }
            let mut lora: Vec<Option<LoraBufs<B>>> = (0..SLOTS).map(|_| None).collect();
            // Each slot once, from the first served block that has it: blocks of two kinds of mixer (Qwen3.5's
            // attention and Gated DeltaNet layers) have different slots.
            for (slot, l) in served.iter().flat_map(|b| b.slotted()) {
                if rank[slot] == 0 || lora[slot].is_some() {
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
            // A training layer holds what its own mixer keeps; inference's one layer what any block's does.
            let delta = served.iter().any(|b| b.delta_net.is_some());
            let att = served.iter().any(|b| b.delta_net.is_none());
            let gated = att && c.attn_output_gate;
            layers.push(LayerBufs {
                x_in: be.alloc(stream)?,
                x_mid: be.alloc(stream)?,
                h1: be.alloc(hd)?,
                rstd1: be.alloc(n)?,
                mean1: size(layer_norms, n)?,
                h2: be.alloc(hd)?,
                rstd2: be.alloc(n)?,
                mean2: size(layer_norms, n)?,
                qkv: size(att, n * qw)?,
                att: size(att, n * aw)?,
                att_stats: size(att && training, n * c.num_heads * 3)?,
                gate_up: be.alloc(2 * ff)?,
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
                att_gate: size(gated, n * aw)?,
                att_gated: size(gated, n * aw)?,
                delta: match (delta, &c.delta_net) {
                    (true, Some(s)) => Some(DeltaLayerBufs::new(be, s, n, checkpoints)?),
                    _ => None,
                },
            });
        }
        let grads = training
            .then(|| -> Result<GradBufs<B>> {
                Ok(GradBufs {
                    dx: be.alloc(n * d)?,
                    dh: be.alloc(n * d)?,
                    dqkv: be.alloc(n * qw)?,
                    datt: be.alloc(n * aw)?,
                    dgate_up: be.alloc(2 * ff)?,
                    dact: be.alloc(ff)?,
                    mlp_bf16: bf16.then(|| MlpBf16::new(be, n * f)).transpose()?,
                    dy_bf16: be.alloc_bf16(if bf16 { n * d.max(qw).max(pw) } else { 0 })?,
                    dhidden: be.alloc(n * d)?,
                    dsub: be.alloc(if c.sandwich_norms { n * d } else { 0 })?,
                    dqk_post: be.alloc(if c.qk_norm { n * aw } else { 0 })?,
                    dqk_pre: be.alloc(if c.qk_norm { n * aw } else { 0 })?,
                    datt_gated: be.alloc(if c.attn_output_gate { n * aw } else { 0 })?,
                    datt_gate: be.alloc(if c.attn_output_gate { n * aw } else { 0 })?,
                    delta: c.delta_net.map(|s| DeltaGradBufs::new(be, &s, n)).transpose()?,
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
            delta_seqs: be.alloc_u32(if c.delta_net.is_some() { 3 * n } else { 0 })?,
            checkpoints,
            wide: be.alloc(if c.attn_output_gate { n * 2 * aw } else { 0 })?,
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
