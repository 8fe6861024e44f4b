//! The decoder-only transformer for both families: weights (HF names kept, so PEFT keys map
//! without tables), the forward pass over a packed batch, and its backward pass.
use super::batch::PackedBatch;
use super::config::{Config, Family};
use super::grow;
use super::linear::{Linear, Strided};
use super::lora::{Dropout, LoraActs};
use super::param::Param;
use crate::kernels::activation::{gelu_tanh_backward, gelu_tanh_forward, swiglu_backward, swiglu_forward};
use crate::kernels::attention::{QkvLayout, attention_backward, attention_forward};
use crate::kernels::embedding::{embedding_backward, embedding_forward};
use crate::kernels::norm::{layernorm_backward, layernorm_forward, rmsnorm_backward, rmsnorm_forward};
use crate::kernels::rope::{RopeTable, rope_backward, rope_forward};
use anyhow::{Result, bail};

/// RMSNorm (no bias) or LayerNorm (with bias).
pub struct Norm {
    pub w: Param,
    pub b: Option<Param>,
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

/// Slots of a block's linear layers in `LayerActs::lora` (and the decoder's LoRA scratch): q, k, v (or c_attn),
/// o, gate, up, down.
pub(crate) const SLOT_O: usize = 3;
pub(crate) const SLOT_GATE: usize = 4;
pub(crate) const SLOT_UP: usize = 5;
pub(crate) const SLOT_DOWN: usize = 6;

impl Block {
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.qkv.iter_mut().chain([&mut self.o]).chain(self.gate.as_mut()).chain([&mut self.up, &mut self.down])
    }

    pub fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.qkv.iter().chain([&self.o]).chain(self.gate.as_ref()).chain([&self.up, &self.down])
    }

    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        let norms = [&mut self.attn_norm, &mut self.mlp_norm];
        let norm_params: Vec<&mut Param> =
            norms.into_iter().flat_map(|n| std::iter::once(&mut n.w).chain(n.b.as_mut())).collect();
        let linears =
            self.qkv.iter_mut().chain([&mut self.o]).chain(self.gate.as_mut()).chain([&mut self.up, &mut self.down]);
        norm_params.into_iter().chain(linears.flat_map(|l| l.params_mut()))
    }
}

pub struct Transformer {
    pub config: Config,
    /// (vocab, hidden)
    pub embed: Param,
    /// (max_positions, hidden), GPT-2 only.
    pub pos_embed: Option<Param>,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
    /// (vocab, hidden); None when tied to `embed`.
    pub lm_head: Option<Param>,
}

/// What one block saves in forward for its backward. All (N, ·) row-major.
#[derive(Default)]
pub struct LayerActs {
    /// residual stream entering the block (N, d)
    x_in: Vec<f32>,
    /// attn_norm(x_in) (N, d)
    h1: Vec<f32>,
    norm1_a: Vec<f32>,
    norm1_b: Vec<f32>,
    /// q|k|v after RoPE (N, qkv_width)
    qkv: Vec<f32>,
    /// attention output before o_proj (N, heads·head_dim)
    att: Vec<f32>,
    /// residual stream after attention (N, d)
    x_mid: Vec<f32>,
    /// mlp_norm(x_mid) (N, d)
    h2: Vec<f32>,
    norm2_a: Vec<f32>,
    norm2_b: Vec<f32>,
    /// gate and up pre-activations, activation output (N, ffn)
    ff_gate: Vec<f32>,
    ff_up: Vec<f32>,
    ff_act: Vec<f32>,
    /// LoRA factors per linear slot
    lora: [LoraActs; 7],
}

/// Gradient scratch for the backward pass (N, ·), reused across layers.
#[derive(Default)]
struct GradScratch {
    dx: Vec<f32>,
    dh: Vec<f32>,
    dqkv: Vec<f32>,
    datt: Vec<f32>,
    dff_gate: Vec<f32>,
    dff_up: Vec<f32>,
    dff_act: Vec<f32>,
}

/// Forward/backward buffers, grown to the largest batch seen and reused: no allocation per step after that.
/// Inference (`save = false`) keeps one block's worth; training keeps every block's.
#[derive(Default)]
pub struct Activations {
    /// residual stream (N, d); after `forward` it holds the final-normed hidden states.
    pub x: Vec<f32>,
    /// residual stream before the final norm (N, d)
    x_final_in: Vec<f32>,
    final_a: Vec<f32>,
    final_b: Vec<f32>,
    layers: Vec<LayerActs>,
    /// dropout(x) of the LoRA layer at hand (N, in), shared by all layers (each keeps only its mask).
    lora_x_drop: Vec<f32>,
    grads: GradScratch,
    rope: Option<RopeTable>,
}

/// The LoRA dropout of one layer's forward, when training.
fn dropout(seed: Option<u64>, x_drop: &mut Vec<f32>) -> Option<Dropout<'_>> {
    seed.map(|seed| Dropout { seed, x_drop })
}

/// Seed of one layer's dropout masks within a step.
fn layer_seed(step_seed: u64, layer: usize) -> u64 {
    crate::rng::mix(step_seed ^ (layer as u64).wrapping_mul(0x9E37_79B9))
}

impl Transformer {
    pub fn qkv_width(&self) -> usize {
        let c = &self.config;
        (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    }

    /// The LM head matrix (vocab, hidden).
    pub fn head(&self) -> &[f32] {
        &self.lm_head.as_ref().unwrap_or(&self.embed).data
    }

    /// Every tensor of the model (base and adapters), in a fixed order.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut out: Vec<&mut Param> = vec![&mut self.embed];
        out.extend(self.pos_embed.as_mut());
        for b in &mut self.blocks {
            out.extend(b.params_mut());
        }
        out.push(&mut self.final_norm.w);
        out.extend(self.final_norm.b.as_mut());
        out.extend(self.lm_head.as_mut());
        out
    }

    fn layout(&self) -> QkvLayout {
        let c = &self.config;
        QkvLayout {
            row_len: self.qkv_width(),
            q_col: 0,
            k_col: c.num_heads * c.head_dim,
            v_col: (c.num_heads + c.num_kv_heads) * c.head_dim,
            n_heads: c.num_heads,
            n_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        }
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
            bail!(
                "a sequence of {} tokens exceeds the sliding attention window of {w}, which condlm does not implement",
                s.len()
            );
        }
        Ok(())
    }

    fn prepare(&self, batch: &PackedBatch, acts: &mut Activations, save: bool) {
        let c = &self.config;
        let (n, d, f) = (batch.len(), c.hidden_size, c.intermediate_size);
        let (qw, aw) = (self.qkv_width(), c.num_heads * c.head_dim);
        let n_layers = if save { c.num_layers } else { 1 };
        if acts.layers.len() < n_layers {
            acts.layers.resize_with(n_layers, LayerActs::default);
        }
        for v in [&mut acts.x, &mut acts.x_final_in] {
            grow(v, n * d);
        }
        grow(&mut acts.final_a, n);
        grow(&mut acts.final_b, n);
        for l in &mut acts.layers[..n_layers] {
            for v in [&mut l.x_in, &mut l.h1, &mut l.x_mid, &mut l.h2] {
                grow(v, n * d);
            }
            for v in [&mut l.norm1_a, &mut l.norm1_b, &mut l.norm2_a, &mut l.norm2_b] {
                grow(v, n);
            }
            grow(&mut l.qkv, n * qw);
            grow(&mut l.att, n * aw);
            for v in [&mut l.ff_gate, &mut l.ff_up, &mut l.ff_act] {
                grow(v, n * f);
            }
        }
        let max_pos = batch.positions.iter().max().map_or(0, |&p| p as usize + 1);
        if c.family == Family::Llama && acts.rope.as_ref().is_none_or(|t| t.cos.len() < max_pos * c.head_dim / 2) {
            acts.rope = Some(RopeTable::new(&c.rope_inv_freq(), max_pos.max(256).min(c.max_positions)));
        }
    }

    /// Runs the batch; on return `acts.x[..N·d]` holds the final-normed hidden states.
    /// `train = Some(step_seed)`: every block keeps what `backward` needs and LoRA dropout is on,
    /// its masks derived from `step_seed`. `None`: inference, one block's buffers, no dropout.
    pub fn forward(&self, batch: &PackedBatch, acts: &mut Activations, train: Option<u64>) {
        let save = train.is_some();
        self.prepare(batch, acts, save);
        let c = &self.config;
        let (n, d, f) = (batch.len(), c.hidden_size, c.intermediate_size);
        let (qw, aw) = (self.qkv_width(), c.num_heads * c.head_dim);
        let layout = self.layout();
        let Activations { x, x_final_in, final_a, final_b, layers, lora_x_drop: xd, rope, .. } = acts;
        let x = &mut x[..n * d];
        embedding_forward(
            x,
            &batch.tokens,
            &self.embed.data,
            &batch.positions,
            self.pos_embed.as_ref().map(|p| &p.data[..]),
            d,
        );
        for (i, blk) in self.blocks.iter().enumerate() {
            let l = &mut layers[if save { i } else { 0 }];
            let seed = train.map(|s| layer_seed(s, i));
            l.x_in[..n * d].copy_from_slice(x);
            norm_forward(&blk.attn_norm, &mut l.h1[..n * d], &mut l.norm1_a[..n], &mut l.norm1_b[..n], x, c.norm_eps);
            let h1 = &l.h1[..n * d];
            let qkv = &mut l.qkv[..n * qw];
            let mut col = 0;
            for (s, lin) in blk.qkv.iter().enumerate() {
                lin.forward(
                    Strided { data: &mut qkv[col..], row_stride: qw },
                    h1,
                    n,
                    false,
                    &mut l.lora[s],
                    dropout(seed, xd),
                );
                col += lin.out_dim;
            }
            if let Some(rope) = rope {
                rope_forward(qkv, qw, layout.q_col, c.num_heads, &batch.positions, rope);
                rope_forward(qkv, qw, layout.k_col, c.num_kv_heads, &batch.positions, rope);
            }
            let att = &mut l.att[..n * aw];
            attention_forward(att, qkv, layout, &batch.seq_start);
            blk.o.forward(Strided { data: x, row_stride: d }, att, n, true, &mut l.lora[SLOT_O], dropout(seed, xd));
            l.x_mid[..n * d].copy_from_slice(x);

            norm_forward(&blk.mlp_norm, &mut l.h2[..n * d], &mut l.norm2_a[..n], &mut l.norm2_b[..n], x, c.norm_eps);
            let h2 = &l.h2[..n * d];
            let (gate, up, act) = (&mut l.ff_gate[..n * f], &mut l.ff_up[..n * f], &mut l.ff_act[..n * f]);
            blk.up.forward(Strided { data: up, row_stride: f }, h2, n, false, &mut l.lora[SLOT_UP], dropout(seed, xd));
            match &blk.gate {
                Some(g) => {
                    g.forward(
                        Strided { data: gate, row_stride: f },
                        h2,
                        n,
                        false,
                        &mut l.lora[SLOT_GATE],
                        dropout(seed, xd),
                    );
                    swiglu_forward(act, gate, up);
                }
                None => gelu_tanh_forward(act, up),
            }
            blk.down.forward(
                Strided { data: x, row_stride: d },
                act,
                n,
                true,
                &mut l.lora[SLOT_DOWN],
                dropout(seed, xd),
            );
        }
        x_final_in[..n * d].copy_from_slice(x);
        norm_forward(&self.final_norm, x, &mut final_a[..n], &mut final_b[..n], &x_final_in[..n * d], c.norm_eps);
    }

    /// Backward of a `forward(save = true)`: `dhidden` (N, d) is ∂L/∂(final-normed hidden states)
    /// (the LM head's gradient already went to its own parameter). Accumulates into every trainable
    /// parameter's gradient; frozen tensors only pass activation gradients through.
    pub fn backward(&mut self, batch: &PackedBatch, acts: &mut Activations, dhidden: &[f32]) {
        let c = self.config.clone();
        let (n, d, f) = (batch.len(), c.hidden_size, c.intermediate_size);
        let (qw, aw) = (self.qkv_width(), c.num_heads * c.head_dim);
        let layout = self.layout();
        let Activations { x_final_in, final_a, final_b, layers, lora_x_drop, grads: g, rope, .. } = acts;
        for (v, len) in [(&mut g.dx, n * d), (&mut g.dh, n * d), (&mut g.dqkv, n * qw), (&mut g.datt, n * aw)] {
            grow(v, len);
        }
        for v in [&mut g.dff_gate, &mut g.dff_up, &mut g.dff_act] {
            grow(v, n * f);
        }
        let dx = &mut g.dx[..n * d];
        dx.fill(0.0);
        norm_backward(&mut self.final_norm, dx, dhidden, &x_final_in[..n * d], &final_a[..n], &final_b[..n]);
        for (i, blk) in self.blocks.iter_mut().enumerate().rev() {
            let l = &mut layers[i];
            // MLP: x_out = x_mid + down(act(up(h2), gate(h2))), h2 = mlp_norm(x_mid)
            let dact = &mut g.dff_act[..n * f];
            dact.fill(0.0);
            let dy = blk.down.grad_view(dx, d, n);
            blk.down.backward(Some(dact), dy, &l.ff_act[..n * f], &mut l.lora[SLOT_DOWN], lora_x_drop);
            let (dgate, dup) = (&mut g.dff_gate[..n * f], &mut g.dff_up[..n * f]);
            let dh = &mut g.dh[..n * d];
            dh.fill(0.0);
            let h2 = &l.h2[..n * d];
            match &mut blk.gate {
                Some(gate) => {
                    swiglu_backward(dgate, dup, dact, &l.ff_gate[..n * f], &l.ff_up[..n * f]);
                    let dy = gate.grad_view(dgate, f, n);
                    gate.backward(Some(&mut *dh), dy, h2, &mut l.lora[SLOT_GATE], lora_x_drop);
                }
                None => gelu_tanh_backward(dup, dact, &l.ff_up[..n * f]),
            }
            let dy = blk.up.grad_view(dup, f, n);
            blk.up.backward(Some(&mut *dh), dy, h2, &mut l.lora[SLOT_UP], lora_x_drop);
            norm_backward(&mut blk.mlp_norm, dx, dh, &l.x_mid[..n * d], &l.norm2_a[..n], &l.norm2_b[..n]);

            // Attention: x_mid = x_in + o(attn(qkv(h1))), h1 = attn_norm(x_in)
            let datt = &mut g.datt[..n * aw];
            datt.fill(0.0);
            let dy = blk.o.grad_view(dx, d, n);
            blk.o.backward(Some(datt), dy, &l.att[..n * aw], &mut l.lora[SLOT_O], lora_x_drop);
            let dqkv = &mut g.dqkv[..n * qw];
            attention_backward(dqkv, datt, &l.qkv[..n * qw], &l.att[..n * aw], layout, &batch.seq_start);
            if let Some(rope) = rope {
                rope_backward(dqkv, qw, layout.q_col, c.num_heads, &batch.positions, rope);
                rope_backward(dqkv, qw, layout.k_col, c.num_kv_heads, &batch.positions, rope);
            }
            let dh = &mut g.dh[..n * d];
            dh.fill(0.0);
            let h1 = &l.h1[..n * d];
            let mut col = 0;
            for (s, lin) in blk.qkv.iter_mut().enumerate() {
                let dy = lin.grad_view(&dqkv[col..], qw, n);
                lin.backward(Some(&mut *dh), dy, h1, &mut l.lora[s], lora_x_drop);
                col += lin.out_dim;
            }
            norm_backward(&mut blk.attn_norm, dx, dh, &l.x_in[..n * d], &l.norm1_a[..n], &l.norm1_b[..n]);
        }
        embedding_backward(
            self.embed.grad.as_deref_mut(),
            self.pos_embed.as_mut().and_then(|p| p.grad.as_deref_mut()),
            dx,
            &batch.tokens,
            &batch.positions,
            d,
        );
    }
}

fn norm_forward(n: &Norm, out: &mut [f32], stat_a: &mut [f32], stat_b: &mut [f32], x: &[f32], eps: f32) {
    match &n.b {
        None => rmsnorm_forward(out, stat_b, x, &n.w.data, eps),
        Some(b) => layernorm_forward(out, stat_a, stat_b, x, &n.w.data, &b.data, eps),
    }
}

/// dx += ∂(norm)/∂x · dout; norm weight/bias gradients accumulate when trainable.
fn norm_backward(n: &mut Norm, dx: &mut [f32], dout: &[f32], x: &[f32], stat_a: &[f32], stat_b: &[f32]) {
    match &mut n.b {
        None => rmsnorm_backward(dx, n.w.grad.as_deref_mut(), dout, x, &n.w.data, stat_b),
        Some(b) => {
            layernorm_backward(dx, n.w.grad.as_deref_mut(), b.grad.as_deref_mut(), dout, x, &n.w.data, stat_a, stat_b)
        }
    }
}
