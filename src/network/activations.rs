//! The buffers of the forward and backward passes, grown to the largest batch seen and reused: after the first
//! step of a given size, a pass allocates nothing.
use super::config::{Config, Family};
use super::delta_net::{DeltaActs, DeltaGrads};
use super::lora::LoraActs;
use crate::kernels::grow;
use crate::kernels::kv_attention::CachedAttentionScratch;
use crate::kernels::rope::RopeTable;

/// What one block saves in forward for its backward. All (N, ·) row-major.
#[derive(Default)]
pub struct LayerActs {
    /// residual stream entering the block (N, d); training only
    pub x_in: Vec<f32>,
    /// attn_norm(x_in) (N, d)
    pub h1: Vec<f32>,
    pub norm1_a: Vec<f32>,
    pub norm1_b: Vec<f32>,
    /// q|k|v after RoPE (N, qkv_width)
    pub qkv: Vec<f32>,
    /// attention output before o_proj (N, heads·head_dim)
    pub att: Vec<f32>,
    /// With post norms (Gemma 3): o_proj's and down_proj's outputs before their norms (N, d), and the norms'
    /// reciprocal RMS per row
    pub attn_out: Vec<f32>,
    pub mlp_out: Vec<f32>,
    pub post1_rstd: Vec<f32>,
    pub post2_rstd: Vec<f32>,
    /// With per-head q/k norms: q and k before them, (N·heads, head_dim) and (N·kv_heads, head_dim), and their
    /// reciprocal RMS per head row
    pub q_pre: Vec<f32>,
    pub k_pre: Vec<f32>,
    pub q_rstd: Vec<f32>,
    pub k_rstd: Vec<f32>,
    /// residual stream after attention (N, d); training only
    pub x_mid: Vec<f32>,
    /// mlp_norm(x_mid) (N, d)
    pub h2: Vec<f32>,
    pub norm2_a: Vec<f32>,
    pub norm2_b: Vec<f32>,
    /// gate and up pre-activations, activation output (N, ffn)
    pub ff_gate: Vec<f32>,
    pub ff_up: Vec<f32>,
    pub ff_act: Vec<f32>,
    /// Qwen3.5's attention output gate: q_proj's output (N, 2·heads·head_dim: per head q, then its gate), the
    /// gates (N, heads·head_dim) and the gated attention output, o_proj's input
    pub q_gate: Vec<f32>,
    pub gate: Vec<f32>,
    pub att_gated: Vec<f32>,
    /// A Gated DeltaNet layer's mixer (Qwen3.5's linear attention)
    pub delta: DeltaActs,
    /// LoRA factors per linear slot (see `Block::linears`): the mixer's input projections, o, gate, up, down
    pub lora: [LoraActs; 8],
}

/// Gradient scratch for the backward pass (N, ·), reused across layers.
#[derive(Default)]
pub struct GradScratch {
    /// ∂L/∂ q or k after and before their per-head norm, (N·heads, head_dim)
    pub dqk_post: Vec<f32>,
    pub dqk_pre: Vec<f32>,
    /// ∂L/∂ a post-normed sublayer's output before its norm (N, d)
    pub dsublayer: Vec<f32>,
    pub dx: Vec<f32>,
    pub dh: Vec<f32>,
    pub dqkv: Vec<f32>,
    pub datt: Vec<f32>,
    pub dff_gate: Vec<f32>,
    pub dff_up: Vec<f32>,
    pub dff_act: Vec<f32>,
    /// ∂L/∂ Phi-3's fused gate|up output (N, 2·ffn)
    pub dgate_up: Vec<f32>,
    /// ∂L/∂ q_proj's output with an output gate (N, 2·heads·head_dim), and ∂L/∂ the gated attention output
    pub dq_gate: Vec<f32>,
    pub datt_gated: Vec<f32>,
    /// ∂L/∂ the output gate's pre-activations (N, heads·head_dim)
    pub dattn_gate: Vec<f32>,
    /// A Gated DeltaNet layer's
    pub delta: DeltaGrads,
}

/// Forward/backward buffers. Training keeps every block's [`LayerActs`]; inference keeps one.
#[derive(Default)]
pub struct Activations {
    /// residual stream (N, d); after a forward pass it holds the final-normed hidden states.
    pub x: Vec<f32>,
    /// residual stream before the final norm (N, d)
    pub(super) x_final_in: Vec<f32>,
    pub(super) final_a: Vec<f32>,
    pub(super) final_b: Vec<f32>,
    pub(super) layers: Vec<LayerActs>,
    /// Each block's input (N, d) when training recomputes activations ([`Keep::BlockInputs`]).
    pub(super) block_inputs: Vec<Vec<f32>>,
    /// The residual stream of the block being recomputed (N, d).
    pub(super) recompute_x: Vec<f32>,
    /// What the last forward pass kept, and its step seed when it was a training pass.
    pub(super) keep: Keep,
    pub(super) step_seed: Option<u64>,
    /// q or k normalized per head, before going back into q|k|v (N·heads, head_dim), shared by all layers.
    pub(super) qk_post: Vec<f32>,
    /// A post-normed sublayer output on its way into the residual stream (N, d), shared by all layers.
    pub(super) sublayer_out: Vec<f32>,
    /// dropout(x) of the LoRA layer at hand (N, in), shared by all layers (each keeps only its mask).
    pub(super) lora_x_drop: Vec<f32>,
    pub(super) grads: GradScratch,
    pub(super) rope: Option<RopeTable>,
    /// The sliding layers' table when they have their own RoPE base (Gemma 3).
    pub(super) rope_local: Option<RopeTable>,
    /// Each row's row of the RoPE table: its position, in LongRoPE's long set when its sequence needs it.
    pub(super) rope_rows: Vec<u32>,
    /// Scratch of the choice of RoPE rows: the length of each sequence in the pass.
    pub(super) rope_longest: Vec<u32>,
    /// Phi-3's fused gate|up output (N, 2·ffn) in forward, its gradient in backward; shared by all layers.
    pub(super) gate_up: Vec<f32>,
    /// Rows of a cached (decoding) pass: their tokens, positions and cache slots.
    pub(super) row_tokens: Vec<u32>,
    pub(super) row_positions: Vec<u32>,
    pub(super) row_slots: Vec<u32>,
    pub(super) cached: CachedAttentionScratch,
}

/// Which blocks' activations a forward pass keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Keep {
    /// Every block's, with the residual streams, for the backward pass (training).
    EveryBlock,
    /// Every block's input, and one block's buffers (training with activation checkpointing: the backward
    /// pass recomputes each block from its input).
    BlockInputs,
    /// One block's buffers, reused by each block in turn (inference).
    #[default]
    OneBlock,
}

impl Activations {
    /// Sizes the forward buffers for `n` rows at positions below `max_pos`.
    pub(super) fn prepare(&mut self, c: &Config, qkv_width: usize, n: usize, max_pos: usize, keep: Keep) {
        let (d, f, aw) = (c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim);
        let layers = if keep == Keep::EveryBlock { c.num_layers } else { 1 };
        if self.layers.len() < layers {
            self.layers.resize_with(layers, LayerActs::default);
        }
        for v in [&mut self.x, &mut self.x_final_in] {
            grow(v, n * d);
        }
        grow(&mut self.final_a, n);
        grow(&mut self.final_b, n);
        let keep_residuals = keep != Keep::OneBlock;
        if keep == Keep::BlockInputs {
            self.block_inputs.resize_with(c.num_layers, Vec::new);
            for v in &mut self.block_inputs {
                grow(v, n * d);
            }
            grow(&mut self.recompute_x, n * d);
        }
        for l in &mut self.layers[..layers] {
            for v in [&mut l.h1, &mut l.h2] {
                grow(v, n * d);
            }
            if keep_residuals {
                grow(&mut l.x_in, n * d);
                grow(&mut l.x_mid, n * d);
            }
            for v in [&mut l.norm1_a, &mut l.norm1_b, &mut l.norm2_a, &mut l.norm2_b] {
                grow(v, n);
            }
            grow(&mut l.qkv, n * qkv_width);
            grow(&mut l.att, n * aw);
            if c.qk_norm {
                grow(&mut l.q_pre, n * aw);
                grow(&mut l.k_pre, n * c.num_kv_heads * c.head_dim);
                grow(&mut l.q_rstd, n * c.num_heads);
                grow(&mut l.k_rstd, n * c.num_kv_heads);
            }
            for v in [&mut l.ff_gate, &mut l.ff_up, &mut l.ff_act] {
                grow(v, n * f);
            }
            if c.attn_output_gate {
                grow(&mut l.q_gate, n * 2 * aw);
                grow(&mut l.gate, n * aw);
                grow(&mut l.att_gated, n * aw);
            }
            if let Some(s) = &c.delta_net {
                grow(&mut l.delta.proj, n * s.proj_width());
            }
            if c.sandwich_norms {
                grow(&mut l.attn_out, n * d);
                grow(&mut l.mlp_out, n * d);
                grow(&mut l.post1_rstd, n);
                grow(&mut l.post2_rstd, n);
            }
        }
        if c.qk_norm {
            grow(&mut self.qk_post, n * aw);
        }
        if c.sandwich_norms {
            grow(&mut self.sublayer_out, n * d);
        }
        if c.fused_projections() {
            grow(&mut self.gate_up, n * 2 * f);
        }
        let rows = max_pos.max(256).min(c.max_positions);
        if c.family == Family::Llama && self.rope.as_ref().is_none_or(|t| t.max_pos < max_pos) {
            self.rope = Some(c.rope_table(rows));
        }
        if self.rope_local.as_ref().is_none_or(|t| t.max_pos < max_pos)
            && let Some(inv_freq) = c.rope_local_inv_freq()
        {
            self.rope_local = Some(RopeTable::new(&inv_freq, rows));
        }
    }

    /// Sizes the backward scratch for `n` rows.
    pub(super) fn prepare_grads(&mut self, c: &Config, qkv_width: usize, n: usize) {
        let (d, f, aw) = (c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim);
        let g = &mut self.grads;
        for (v, len) in [(&mut g.dx, n * d), (&mut g.dh, n * d), (&mut g.dqkv, n * qkv_width), (&mut g.datt, n * aw)] {
            grow(v, len);
        }
        for v in [&mut g.dff_gate, &mut g.dff_up, &mut g.dff_act] {
            grow(v, n * f);
        }
        if c.fused_projections() {
            grow(&mut g.dgate_up, n * 2 * f);
        }
        if c.attn_output_gate {
            grow(&mut g.dq_gate, n * 2 * aw);
            grow(&mut g.datt_gated, n * aw);
            grow(&mut g.dattn_gate, n * aw);
        }
        if let Some(s) = &c.delta_net {
            g.delta.prepare(s, n);
        }
        if c.qk_norm {
            grow(&mut g.dqk_post, n * aw);
            grow(&mut g.dqk_pre, n * aw);
        }
        if c.sandwich_norms {
            grow(&mut g.dsublayer, n * d);
        }
    }
}
