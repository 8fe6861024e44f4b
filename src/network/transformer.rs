//! The decoder-only transformer for both families: weights (HF names kept, so PEFT keys map without tables),
//! the one forward pass that training, scoring and decoding share, and its backward pass.
//!
//! One block loop serves every caller; only attention's context differs (see [`Context`]): within a packed
//! batch (training, scoring: row i sees the rows of its own sequence up to i), or over the KV cache (decoding:
//! a row's k, v are stored in its cache slot, then it sees positions 0..=pos of that slot).
use super::activations::{Activations, GradScratch, Keep, LayerActs};
use super::batch::{PackedBatch, Row};
use super::config::{Config, DeltaNetShape};
use super::delta_net::DeltaNet;
use super::kv_cache::KvCache;
use super::linear::{Linear, Strided};
use super::lora::Dropout;
use super::param::Param;
use crate::kernels::activation::{
    gelu_tanh_backward, gelu_tanh_forward, glu_backward, glu_forward, sigmoid_gate_backward, sigmoid_gate_forward,
};
use crate::kernels::attention::{QkvLayout, attention_backward, attention_forward};
use crate::kernels::embedding::{embedding_backward, embedding_forward};
use crate::kernels::kv_attention::{CachedAttentionScratch, cached_attention};
use crate::kernels::norm::{layernorm_backward, layernorm_forward, rmsnorm_backward, rmsnorm_forward};
use crate::kernels::packed::MatrixRef;
use crate::kernels::rope::{RopeTable, rope_backward, rope_forward};
use crate::kernels::weight_bytes::{SharedBytes, gather_into_arena};
use anyhow::Result;

/// RMSNorm (no bias) or LayerNorm (with bias).
pub struct Norm {
    pub w: Param,
    pub b: Option<Param>,
}

pub struct Block {
    /// The attention input's norm; None in OLMo 2/3, whose blocks norm only the sublayers' outputs.
    pub attn_norm: Option<Norm>,
    /// Gemma 3's and OLMo 2/3's norms of the attention and MLP outputs before the residual adds
    /// (`post_attention_layernorm`, `post_feedforward_layernorm`); Gemma's `mlp_norm` is then its
    /// `pre_feedforward_layernorm`.
    pub post_norms: Option<(Norm, Norm)>,
    /// RMSNorms of q and k, before RoPE: per head (Qwen3, Gemma 3: weights of head_dim values shared by the heads),
    /// or over each row's whole projection (OLMo 2/3: heads × head_dim weights; `Config::qk_norm_whole`).
    pub qk_norm: Option<(Norm, Norm)>,
    /// q, k, v projections (Llama family) or the fused c_attn (GPT-2) or qkv_proj (Phi-3), writing into one
    /// (N, q+k+v) buffer.
    pub qkv: Vec<Linear>,
    pub o: Linear,
    /// The MLP input's norm; None in OLMo 2/3.
    pub mlp_norm: Option<Norm>,
    /// gate_proj (SwiGLU/GeGLU); None for GPT-2's GELU MLP and Phi-3's fused gate_up_proj.
    pub gate: Option<Linear>,
    /// up_proj, c_fc (GPT-2), or Phi-3's gate_up_proj (2·ffn outputs: gate, then up).
    pub up: Linear,
    pub down: Linear,
    /// Qwen3.5's Gated DeltaNet in a linear-attention layer: its tensors besides the linear layers, which are `qkv`
    /// (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, writing one (N, P) buffer) and `o` (out_proj).
    pub delta_net: Option<DeltaNet>,
}

/// Slots of a block's linear layers in `LayerActs::lora`: the mixer's input projections (q, k, v; c_attn; or the
/// Gated DeltaNet's four) from 0, then o, gate, up, down.
const SLOT_O: usize = 4;
const SLOT_GATE: usize = 5;
const SLOT_UP: usize = 6;
const SLOT_DOWN: usize = 7;

/// How a forward pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every block keeps what [`Transformer::backward`] needs, and LoRA dropout is on, its masks a pure function
    /// of `step_seed`.
    /// With `recompute` (activation checkpointing) only each block's input is kept, and the backward pass
    /// recomputes the rest: less memory for one more forward pass of the blocks, the same gradients.
    Train { step_seed: u64, recompute: bool },
    /// One block's buffers, no dropout.
    Infer,
}

/// Where attention finds the keys and values a row sees.
enum Context<'a> {
    /// Within the packed batch: row i sees rows `seq_start[i]..=i`.
    Packed { seq_start: &'a [u32] },
    /// In the KV cache: row i's k, v go to position `positions[i]` of slot `slots[i]`, then it sees positions
    /// `0..=positions[i]` of that slot.
    Cached { cache: &'a mut KvCache, slots: &'a [u32] },
}

impl Block {
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.qkv.iter_mut().chain([&mut self.o]).chain(self.gate.as_mut()).chain([&mut self.up, &mut self.down])
    }

    pub fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.qkv.iter().chain([&self.o]).chain(self.gate.as_ref()).chain([&self.up, &self.down])
    }

    /// Visits every tensor of the block (norms, then each linear layer's weight, bias and adapter).
    pub fn for_each_param_mut<'a>(&'a mut self, f: &mut impl FnMut(&'a mut Param)) {
        for n in [&mut self.attn_norm, &mut self.mlp_norm].into_iter().flatten() {
            f(&mut n.w);
            if let Some(b) = &mut n.b {
                f(b);
            }
        }
        if let Some((a, m)) = &mut self.post_norms {
            f(&mut a.w);
            f(&mut m.w);
        }
        if let Some((q, k)) = &mut self.qk_norm {
            f(&mut q.w);
            f(&mut k.w);
        }
        if let Some(dn) = &mut self.delta_net {
            dn.params_mut().into_iter().for_each(&mut *f);
        }
        let linears =
            self.qkv.iter_mut().chain([&mut self.o]).chain(self.gate.as_mut()).chain([&mut self.up, &mut self.down]);
        for l in linears {
            l.params_mut().for_each(&mut *f);
        }
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

impl Transformer {
    pub fn qkv_width(&self) -> usize {
        let c = &self.config;
        (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    }

    /// The LM head matrix (vocab, hidden).
    pub fn head(&self) -> MatrixRef<'_> {
        self.lm_head.as_ref().unwrap_or(&self.embed).matrix()
    }

    /// Visits every tensor of the model (base and adapters) in a fixed order — the order of checkpoints and
    /// optimizer state. Allocates nothing (the training step's path).
    pub fn for_each_param_mut<'a>(&'a mut self, f: impl FnMut(&'a mut Param)) {
        self.visit_params(f, true);
    }

    /// [`Self::for_each_param_mut`] without the blocks' tensors: the embeddings, the final norm and the head.
    pub fn for_each_outer_param_mut<'a>(&'a mut self, f: impl FnMut(&'a mut Param)) {
        self.visit_params(f, false);
    }

    fn visit_params<'a>(&'a mut self, mut f: impl FnMut(&'a mut Param), blocks: bool) {
        f(&mut self.embed);
        if let Some(p) = &mut self.pos_embed {
            f(p);
        }
        if blocks {
            for b in &mut self.blocks {
                b.for_each_param_mut(&mut f);
            }
        }
        f(&mut self.final_norm.w);
        if let Some(b) = &mut self.final_norm.b {
            f(b);
        }
        if let Some(h) = &mut self.lm_head {
            f(h);
        }
    }

    /// Moves the bytes of every packed (frozen, stored) matrix into one fresh huge-page arena
    /// ([`gather_into_arena`]): after loading, and again when matrices leave it (they became trainable f32), so
    /// that the arena holds only what is still packed. Decoding reads these bytes once per token and runs faster
    /// from huge pages; without memory for a new arena they stay where they are — slower, the same results.
    pub fn gather_packed(&mut self) {
        let mut stored: Vec<&mut SharedBytes> =
            self.params_mut().into_iter().filter_map(|p| p.packed.as_mut().map(|m| &mut m.bytes)).collect();
        let _ = gather_into_arena(&mut stored);
    }

    /// Every tensor of the model, in [`Self::for_each_param_mut`]'s order.
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut out = vec![];
        self.for_each_param_mut(|p| out.push(p));
        out
    }

    /// Where q, k, v sit in the projection buffer, and how layer `i` attends (scale, window).
    pub(super) fn layout(&self, i: usize) -> QkvLayout {
        let c = &self.config;
        QkvLayout {
            row_len: self.qkv_width(),
            q_col: 0,
            k_col: c.num_heads * c.head_dim,
            v_col: (c.num_heads + c.num_kv_heads) * c.head_dim,
            n_heads: c.num_heads,
            n_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            scale: c.attn_scale.unwrap_or(1.0 / (c.head_dim as f32).sqrt()),
            window: c.window(i).unwrap_or(usize::MAX),
        }
    }

    /// 1 for Gemma's zero-centred RMSNorm weights, applied as (1 + w); else 0.
    pub(super) fn norm_offset(&self) -> f32 {
        if self.config.norm_plus_one { 1.0 } else { 0.0 }
    }

    /// Gemma's √hidden_size on the embeddings, as transformers rounds it (f64 square root, then f32).
    pub(super) fn embed_scale(&self) -> Option<f32> {
        let c = &self.config;
        c.scale_embeddings.then(|| (c.hidden_size as f64).sqrt() as f32)
    }

    /// Checks a batch against the vocabulary and the context window before any kernel runs.
    pub fn check_batch(&self, batch: &PackedBatch) -> Result<()> {
        batch.check(&self.config)
    }

    /// Runs a packed batch; on return `acts.x[..N·d]` holds the final-normed hidden states.
    pub fn forward(&self, batch: &PackedBatch, acts: &mut Activations, mode: Mode) {
        let max_pos = batch.positions.iter().max().map_or(0, |&p| p as usize + 1);
        let ctx = Context::Packed { seq_start: &batch.seq_start };
        self.run_blocks(&batch.tokens, &batch.positions, max_pos, ctx, acts, mode);
    }

    /// Runs decoding rows over the KV cache (their k, v land in it), at inference; on return `acts.x[..N·d]`
    /// holds the rows' final-normed hidden states. Rows are checked by the caller (see `Decoder`).
    pub fn forward_cached(&self, rows: &[Row], cache: &mut KvCache, acts: &mut Activations) {
        let mut tokens = std::mem::take(&mut acts.row_tokens);
        let mut positions = std::mem::take(&mut acts.row_positions);
        let mut slots = std::mem::take(&mut acts.row_slots);
        tokens.clear();
        positions.clear();
        slots.clear();
        tokens.extend(rows.iter().map(|r| r.token));
        positions.extend(rows.iter().map(|r| r.pos));
        slots.extend(rows.iter().map(|r| r.slot));
        for r in rows {
            cache.write_token(r.slot as usize, r.pos as usize, r.token);
        }
        if let Some(l) = &self.config.longrope {
            let cached = |slot: u32, pos: usize| cache.token(slot as usize, pos);
            rerun_outgrown(&mut tokens, &mut positions, &mut slots, l.original_max_positions, cached);
        }
        let capacity = cache.capacity;
        self.run_blocks(&tokens, &positions, capacity, Context::Cached { cache, slots: &slots }, acts, Mode::Infer);
        (acts.row_tokens, acts.row_positions, acts.row_slots) = (tokens, positions, slots);
    }

    /// The block loop every forward pass goes through: embeddings, then each block ([`Self::block_forward`]),
    /// then the final norm. Training keeps every block's activations, or with `recompute` only each block's input
    /// (the backward pass recomputes the rest, block by block).
    fn run_blocks(
        &self,
        tokens: &[u32],
        positions: &[u32],
        max_pos: usize,
        mut ctx: Context,
        acts: &mut Activations,
        mode: Mode,
    ) {
        let c = &self.config;
        let (train_seed, keep) = match mode {
            Mode::Train { step_seed, recompute: false } => (Some(step_seed), Keep::EveryBlock),
            Mode::Train { step_seed, recompute: true } => (Some(step_seed), Keep::BlockInputs),
            Mode::Infer => (None, Keep::OneBlock),
        };
        let (n, d) = (tokens.len(), c.hidden_size);
        acts.prepare(c, self.qkv_width(), n, max_pos, keep);
        (acts.step_seed, acts.keep) = (train_seed, keep);
        let Activations {
            x,
            x_final_in,
            final_a,
            final_b,
            layers,
            block_inputs,
            lora_x_drop,
            qk_post,
            sublayer_out,
            rope,
            rope_local,
            rope_rows,
            rope_longest,
            gate_up,
            cached,
            ..
        } = acts;
        let x = &mut x[..n * d];
        if let Some(t) = rope {
            let seq_keys = match &ctx {
                Context::Packed { seq_start } => seq_start,
                Context::Cached { slots, .. } => slots,
            };
            let long_after = c.longrope.as_ref().map(|l| l.original_max_positions);
            set_rope_rows(rope_rows, rope_longest, positions, seq_keys, long_after, t.max_pos);
        }
        let pos_embed = self.pos_embed.as_ref().map(|p| &p.data[..]);
        embedding_forward(x, tokens, self.embed.matrix(), positions, pos_embed, d);
        if let Some(s) = self.embed_scale() {
            x.iter_mut().for_each(|v| *v *= s);
        }
        let mut io = BlockIo {
            positions,
            ctx: &mut ctx,
            step_seed: train_seed,
            lora_x_drop,
            qk_post,
            sublayer_out,
            rope: rope.as_ref().map(|t| (t, &rope_rows[..])),
            rope_local: rope_local.as_ref(),
            gate_up,
            cached,
        };
        for i in 0..self.blocks.len() {
            if keep == Keep::BlockInputs {
                block_inputs[i][..n * d].copy_from_slice(x);
            }
            let l = &mut layers[if keep == Keep::EveryBlock { i } else { 0 }];
            self.block_forward(i, l, x, &mut io);
        }
        x_final_in[..n * d].copy_from_slice(x);
        let (fa, fb, off) = (&mut final_a[..n], &mut final_b[..n], self.norm_offset());
        norm_forward(&self.final_norm, x, fa, fb, &x_final_in[..n * d], off, c.norm_eps);
    }

    /// Block `i` on the residual stream x (N, d): x += o(attention(rope(qkv(attn_norm(x))))), then
    /// x += down(act(gate(h), up(h))), h = mlp_norm(x) (GPT-2: act = GELU(up(h))); with Gemma's post norms each
    /// sublayer's output is normed before it is added. Saves into `l` what its backward needs (and, when
    /// training, the residual streams entering both halves).
    fn block_forward(&self, i: usize, l: &mut LayerActs, x: &mut [f32], io: &mut BlockIo) {
        let (c, blk, off) = (&self.config, &self.blocks[i], self.norm_offset());
        let (n, d, f) = (io.positions.len(), c.hidden_size, c.intermediate_size);
        let seed = io.step_seed.map(|s| layer_seed(s, i));
        if seed.is_some() {
            l.x_in[..n * d].copy_from_slice(x);
        }
        let (a, b) = (&mut l.norm1_a[..n], &mut l.norm1_b[..n]);
        pre_norm_forward(blk.attn_norm.as_ref(), &mut l.h1[..n * d], a, b, x, off, c.norm_eps);
        match (&blk.delta_net, &c.delta_net) {
            (Some(dn), Some(shape)) => self.delta_net_forward(i, dn, shape, l, x, io),
            _ => self.attention_forward(i, l, x, io),
        }
        if seed.is_some() {
            l.x_mid[..n * d].copy_from_slice(x);
        }

        let (post, xd) = (blk.post_norms.as_ref(), &mut *io.lora_x_drop);
        let (a, b) = (&mut l.norm2_a[..n], &mut l.norm2_b[..n]);
        pre_norm_forward(blk.mlp_norm.as_ref(), &mut l.h2[..n * d], a, b, x, off, c.norm_eps);
        let h2 = &l.h2[..n * d];
        let (gate, up, act) = (&mut l.ff_gate[..n * f], &mut l.ff_up[..n * f], &mut l.ff_act[..n * f]);
        if c.fused_projections() {
            let gate_up = &mut io.gate_up[..n * 2 * f];
            blk.up.forward(Strided::write(gate_up, 2 * f), h2, n, &mut l.lora[SLOT_UP], dropout(seed, xd));
            gather_cols(gate, gate_up, 2 * f, 0, f);
            gather_cols(up, gate_up, 2 * f, f, f);
            glu_forward(act, gate, up, c.mlp_act);
        } else {
            blk.up.forward(Strided::write(up, f), h2, n, &mut l.lora[SLOT_UP], dropout(seed, xd));
            match &blk.gate {
                Some(g) => {
                    g.forward(Strided::write(gate, f), h2, n, &mut l.lora[SLOT_GATE], dropout(seed, xd));
                    glu_forward(act, gate, up, c.mlp_act);
                }
                None => gelu_tanh_forward(act, up),
            }
        }
        match post {
            None => blk.down.forward(Strided::add(x, d), act, n, &mut l.lora[SLOT_DOWN], dropout(seed, xd)),
            Some((_, norm)) => {
                let out = &mut l.mlp_out[..n * d];
                blk.down.forward(Strided::write(out, d), act, n, &mut l.lora[SLOT_DOWN], dropout(seed, xd));
                add_normed(x, norm, out, &mut l.post2_rstd[..n], io.sublayer_out, off, c.norm_eps);
            }
        }
    }

    /// The attention half of block `i`: x += [post norm] o(attn(q, k, v)) from h1 = attn_norm(x) (in `l.h1`).
    fn attention_forward(&self, i: usize, l: &mut LayerActs, x: &mut [f32], io: &mut BlockIo) {
        let (c, blk, layout, off) = (&self.config, &self.blocks[i], self.layout(i), self.norm_offset());
        let (n, d) = (io.positions.len(), c.hidden_size);
        let (qw, aw) = (self.qkv_width(), c.num_heads * c.head_dim);
        let seed = io.step_seed.map(|s| layer_seed(s, i));
        let xd = &mut *io.lora_x_drop;
        let h1 = &l.h1[..n * d];
        let qkv = &mut l.qkv[..n * qw];
        let mut col = 0;
        for (s, lin) in blk.qkv.iter().enumerate() {
            if s == 0 && c.attn_output_gate {
                // q_proj yields each head's query, then its gate
                let qg = &mut l.q_gate[..n * 2 * aw];
                lin.forward(Strided::write(qg, 2 * aw), h1, n, &mut l.lora[s], dropout(seed, xd));
                deinterleave_heads(qg, c.num_heads, c.head_dim, qkv, qw, &mut l.gate[..n * aw]);
                col += aw;
                continue;
            }
            lin.forward(Strided::write(&mut qkv[col..], qw), h1, n, &mut l.lora[s], dropout(seed, xd));
            col += lin.out_dim;
        }
        if let Some((qn, kn)) = &blk.qk_norm {
            let hd = c.head_dim;
            for (norm, col, heads, pre, rstd) in [
                (qn, layout.q_col, c.num_heads, &mut l.q_pre, &mut l.q_rstd),
                (kn, layout.k_col, c.num_kv_heads, &mut l.k_pre, &mut l.k_rstd),
            ] {
                let (pre, post) = (&mut pre[..n * heads * hd], &mut io.qk_post[..n * heads * hd]);
                gather_cols(pre, qkv, qw, col, heads * hd);
                let rows = qk_norm_rows(c, n, heads);
                rmsnorm_forward(post, &mut rstd[..rows], pre, &norm.w.data, off, c.norm_eps);
                scatter_cols(qkv, qw, col, heads * hd, post);
            }
        }
        if let Some((rope, rows)) = layer_rope(c, i, io.rope, io.rope_local).filter(|_| c.rope_in(i)) {
            rope_forward(qkv, qw, layout.q_col, c.num_heads, rows, rope);
            rope_forward(qkv, qw, layout.k_col, c.num_kv_heads, rows, rope);
        }
        let att = &mut l.att[..n * aw];
        match &mut *io.ctx {
            Context::Packed { seq_start } => attention_forward(att, qkv, layout, seq_start),
            Context::Cached { cache, slots } => {
                let kvw = c.num_kv_heads * c.head_dim;
                for (r, row) in qkv.chunks_exact(qw).enumerate() {
                    let (k, v) = (&row[layout.k_col..][..kvw], &row[layout.v_col..][..kvw]);
                    cache.write(i, slots[r] as usize, io.positions[r] as usize, k, v);
                }
                cached_attention(att, qkv, layout, slots, io.positions, cache.layer(i), io.cached);
            }
        }
        let att: &[f32] = match c.attn_output_gate {
            true => {
                let gated = &mut l.att_gated[..n * aw];
                sigmoid_gate_forward(gated, att, &l.gate[..n * aw]);
                gated
            }
            false => att,
        };
        let post = blk.post_norms.as_ref();
        match post {
            None => blk.o.forward(Strided::add(x, d), att, n, &mut l.lora[SLOT_O], dropout(seed, xd)),
            Some((norm, _)) => {
                let out = &mut l.attn_out[..n * d];
                blk.o.forward(Strided::write(out, d), att, n, &mut l.lora[SLOT_O], dropout(seed, xd));
                add_normed(x, norm, out, &mut l.post1_rstd[..n], io.sublayer_out, off, c.norm_eps);
            }
        }
    }

    /// The Gated DeltaNet half of linear-attention layer `i` (Qwen3.5): x += out_proj(delta_net(projections(h1))).
    fn delta_net_forward(
        &self,
        i: usize,
        dn: &DeltaNet,
        shape: &DeltaNetShape,
        l: &mut LayerActs,
        x: &mut [f32],
        io: &mut BlockIo,
    ) {
        let (c, blk) = (&self.config, &self.blocks[i]);
        let (n, d, p, vd) = (io.positions.len(), c.hidden_size, shape.proj_width(), shape.value_dim());
        let seed = io.step_seed.map(|s| layer_seed(s, i));
        let xd = &mut *io.lora_x_drop;
        let (h1, proj) = (&l.h1[..n * d], &mut l.delta.proj[..n * p]);
        let mut col = 0;
        for (s, lin) in blk.qkv.iter().enumerate() {
            lin.forward(Strided::write(&mut proj[col..], p), h1, n, &mut l.lora[s], dropout(seed, xd));
            col += lin.out_dim;
        }
        match &mut *io.ctx {
            Context::Packed { seq_start } => dn.forward(shape, &mut l.delta, seq_start, c.norm_eps, seed.is_some()),
            Context::Cached { cache, slots } => {
                dn.forward_cached(shape, &mut l.delta, cache.delta_net(i), slots, io.positions, c.norm_eps)
            }
        }
        blk.o.forward(Strided::add(x, d), &l.delta.y[..n * vd], n, &mut l.lora[SLOT_O], dropout(seed, xd));
    }

    /// Backward of a `forward(…, Mode::Train)`: `dhidden` (N, d) is ∂L/∂(final-normed hidden states)
    /// (the LM head's gradient already went to its own parameter). Accumulates into every trainable
    /// parameter's gradient; frozen tensors only pass activation gradients through. After a forward with
    /// `recompute`, each block's activations are first recomputed from its saved input (the last block's are
    /// still there) — the same operations on the same values, so the gradients are the same bits.
    pub fn backward(&mut self, batch: &PackedBatch, acts: &mut Activations, dhidden: &[f32]) {
        self.backward_with(batch, acts, dhidden, |_, _| {});
    }

    /// [`Self::backward`], calling `after_block(self, i)` as soon as block i's parameter gradients are final (the
    /// blocks run last to first; the embeddings' and the final norm's are final when it returns): a data-parallel
    /// step starts summing them over the ranks while the earlier blocks compute.
    pub fn backward_with(
        &mut self,
        batch: &PackedBatch,
        acts: &mut Activations,
        dhidden: &[f32],
        mut after_block: impl FnMut(&mut Self, usize),
    ) {
        let (n, qw) = (batch.len(), self.qkv_width());
        let d = self.config.hidden_size;
        acts.prepare_grads(&self.config, qw, n);
        let recompute = acts.keep == Keep::BlockInputs;
        let Activations {
            x_final_in,
            final_a,
            final_b,
            layers,
            block_inputs,
            recompute_x,
            step_seed,
            lora_x_drop,
            qk_post,
            sublayer_out,
            grads,
            rope,
            rope_local,
            rope_rows,
            gate_up,
            cached,
            ..
        } = acts;
        let rope = rope.as_ref().map(|t| (t, &rope_rows[..]));
        let dx = &mut grads.dx[..n * d];
        dx.fill(0.0);
        let (xf, fa, fb, off) = (&x_final_in[..n * d], &final_a[..n], &final_b[..n], self.norm_offset());
        norm_backward(&mut self.final_norm, dx, dhidden, xf, fa, fb, off);
        let last = self.blocks.len().saturating_sub(1);
        for i in (0..self.blocks.len()).rev() {
            if recompute && i != last {
                let x = &mut recompute_x[..n * d];
                x.copy_from_slice(&block_inputs[i][..n * d]);
                let mut ctx = Context::Packed { seq_start: &batch.seq_start };
                let mut io = BlockIo {
                    positions: &batch.positions,
                    ctx: &mut ctx,
                    step_seed: *step_seed,
                    lora_x_drop,
                    qk_post,
                    sublayer_out,
                    rope,
                    rope_local: rope_local.as_ref(),
                    gate_up,
                    cached,
                };
                self.block_forward(i, &mut layers[0], x, &mut io);
            }
            let l = &mut layers[if recompute { 0 } else { i }];
            let rope = layer_rope(&self.config, i, rope, rope_local.as_ref());
            self.block_backward(i, l, grads, lora_x_drop, batch, rope);
            after_block(self, i);
        }
        if let Some(s) = self.embed_scale() {
            grads.dx[..n * d].iter_mut().for_each(|v| *v *= s);
        }
        embedding_backward(
            self.embed.grad.as_deref_mut(),
            self.pos_embed.as_mut().and_then(|p| p.grad.as_deref_mut()),
            &grads.dx[..n * d],
            &batch.tokens,
            &batch.positions,
            d,
        );
    }

    /// Backward of block `i` from its saved activations `l`: `g.dx` holds ∂L/∂(block output) on entry and
    /// ∂L/∂(block input) on return. `rope`: the table the layer rotated with.
    fn block_backward(
        &mut self,
        i: usize,
        l: &mut LayerActs,
        g: &mut GradScratch,
        lora_x_drop: &mut Vec<f32>,
        batch: &PackedBatch,
        rope: Option<(&RopeTable, &[u32])>,
    ) {
        let (n, qw, layout, off) = (batch.len(), self.qkv_width(), self.layout(i), self.norm_offset());
        let (d, f, aw) = (self.config.hidden_size, self.config.intermediate_size, layout.n_heads * layout.head_dim);
        let (mlp_act, fused, rope_in) = (self.config.mlp_act, self.config.fused_projections(), self.config.rope_in(i));
        let gated = self.config.attn_output_gate;
        let blk = &mut self.blocks[i];
        let dx = &mut g.dx[..n * d];
        // MLP: x_out = x_mid + [post_mlp_norm] down(act(up(h2), gate(h2))), h2 = mlp_norm(x_mid)
        let dact = &mut g.dff_act[..n * f];
        dact.fill(0.0);
        let post_mlp_norm = blk.post_norms.as_mut().map(|(_, norm)| norm);
        let dmlp_out = through_post_norm(post_mlp_norm, dx, &mut g.dsublayer, &l.mlp_out, &l.post2_rstd, n, off);
        let dy = blk.down.grad_view(dmlp_out, d, n);
        blk.down.backward(Some(dact), dy, &l.ff_act[..n * f], &mut l.lora[SLOT_DOWN], lora_x_drop);
        let (dgate, dup) = (&mut g.dff_gate[..n * f], &mut g.dff_up[..n * f]);
        let dh = &mut g.dh[..n * d];
        dh.fill(0.0);
        let h2 = &l.h2[..n * d];
        match &mut blk.gate {
            Some(gate) => {
                glu_backward(dgate, dup, dact, &l.ff_gate[..n * f], &l.ff_up[..n * f], mlp_act);
                let dy = gate.grad_view(dgate, f, n);
                gate.backward(Some(&mut *dh), dy, h2, &mut l.lora[SLOT_GATE], lora_x_drop);
            }
            None if fused => glu_backward(dgate, dup, dact, &l.ff_gate[..n * f], &l.ff_up[..n * f], mlp_act),
            None => gelu_tanh_backward(dup, dact, &l.ff_up[..n * f]),
        }
        let dy = match fused {
            true => {
                let dgate_up = &mut g.dgate_up[..n * 2 * f];
                scatter_cols(dgate_up, 2 * f, 0, f, dgate);
                scatter_cols(dgate_up, 2 * f, f, f, dup);
                blk.up.grad_view(dgate_up, 2 * f, n)
            }
            false => blk.up.grad_view(dup, f, n),
        };
        blk.up.backward(Some(&mut *dh), dy, h2, &mut l.lora[SLOT_UP], lora_x_drop);
        pre_norm_backward(blk.mlp_norm.as_mut(), dx, dh, &l.x_mid[..n * d], &l.norm2_a[..n], &l.norm2_b[..n], off);

        // Gated DeltaNet (Qwen3.5's linear attention): x_mid = x_in + out_proj(delta_net(projections(h1)))
        if let (Some(dn), Some(shape)) = (blk.delta_net.as_mut(), self.config.delta_net.as_ref()) {
            let (p, vd) = (shape.proj_width(), shape.value_dim());
            let dy_mix = &mut g.delta.dy[..n * vd];
            dy_mix.fill(0.0);
            let dy = blk.o.grad_view(dx, d, n);
            blk.o.backward(Some(dy_mix), dy, &l.delta.y[..n * vd], &mut l.lora[SLOT_O], lora_x_drop);
            dn.backward(shape, &l.delta, &mut g.delta, &batch.seq_start);
            let dh = &mut g.dh[..n * d];
            dh.fill(0.0);
            let (h1, mut col) = (&l.h1[..n * d], 0);
            for (s, lin) in blk.qkv.iter_mut().enumerate() {
                let dy = lin.grad_view(&g.delta.dproj[col..], p, n);
                lin.backward(Some(&mut *dh), dy, h1, &mut l.lora[s], lora_x_drop);
                col += lin.out_dim;
            }
            let (x_in, a, b) = (&l.x_in[..n * d], &l.norm1_a[..n], &l.norm1_b[..n]);
            pre_norm_backward(blk.attn_norm.as_mut(), dx, dh, x_in, a, b, off);
            return;
        }

        // Attention: x_mid = x_in + [post_attn_norm] o(attn(qkv(h1))), h1 = attn_norm(x_in)
        let datt = &mut g.datt[..n * aw];
        datt.fill(0.0);
        let post_attn_norm = blk.post_norms.as_mut().map(|(norm, _)| norm);
        let dattn_out = through_post_norm(post_attn_norm, dx, &mut g.dsublayer, &l.attn_out, &l.post1_rstd, n, off);
        let dy = blk.o.grad_view(dattn_out, d, n);
        match gated {
            false => blk.o.backward(Some(datt), dy, &l.att[..n * aw], &mut l.lora[SLOT_O], lora_x_drop),
            true => {
                // o_proj saw att ⊙ σ(gate): ∂att = ∂·σ, ∂gate = ∂·att·σ(1 − σ) (kept in dq_gate's gate columns)
                let datt_gated = &mut g.datt_gated[..n * aw];
                datt_gated.fill(0.0);
                blk.o.backward(Some(datt_gated), dy, &l.att_gated[..n * aw], &mut l.lora[SLOT_O], lora_x_drop);
                let dgate = &mut g.dattn_gate[..n * aw];
                sigmoid_gate_backward(datt, dgate, datt_gated, &l.att[..n * aw], &l.gate[..n * aw]);
            }
        }
        let dqkv = &mut g.dqkv[..n * qw];
        attention_backward(dqkv, datt, &l.qkv[..n * qw], &l.att[..n * aw], layout, &batch.seq_start);
        if let Some((rope, rows)) = rope.filter(|_| rope_in) {
            rope_backward(dqkv, qw, layout.q_col, layout.n_heads, rows, rope);
            rope_backward(dqkv, qw, layout.k_col, layout.n_kv_heads, rows, rope);
        }
        if let Some((qn, kn)) = &mut blk.qk_norm {
            let hd = layout.head_dim;
            for (norm, col, heads, pre, rstd) in [
                (qn, layout.q_col, layout.n_heads, &l.q_pre, &l.q_rstd),
                (kn, layout.k_col, layout.n_kv_heads, &l.k_pre, &l.k_rstd),
            ] {
                let (dpost, dpre) = (&mut g.dqk_post[..n * heads * hd], &mut g.dqk_pre[..n * heads * hd]);
                gather_cols(dpost, dqkv, qw, col, heads * hd);
                dpre.fill(0.0);
                let (w, dw) = (&norm.w.data, norm.w.grad.as_deref_mut());
                let rstd = &rstd[..qk_norm_rows(&self.config, n, heads)];
                rmsnorm_backward(dpre, dw, dpost, &pre[..n * heads * hd], w, off, rstd);
                scatter_cols(dqkv, qw, col, heads * hd, dpre);
            }
        }
        let dh = &mut g.dh[..n * d];
        dh.fill(0.0);
        let h1 = &l.h1[..n * d];
        let mut col = 0;
        for (s, lin) in blk.qkv.iter_mut().enumerate() {
            if s == 0 && gated {
                let dq_gate = &mut g.dq_gate[..n * 2 * aw];
                interleave_heads(dq_gate, layout.n_heads, layout.head_dim, dqkv, qw, &g.dattn_gate[..n * aw]);
                let dy = lin.grad_view(dq_gate, 2 * aw, n);
                lin.backward(Some(&mut *dh), dy, h1, &mut l.lora[s], lora_x_drop);
                col += aw;
                continue;
            }
            let dy = lin.grad_view(&dqkv[col..], qw, n);
            lin.backward(Some(&mut *dh), dy, h1, &mut l.lora[s], lora_x_drop);
            col += lin.out_dim;
        }
        pre_norm_backward(blk.attn_norm.as_mut(), dx, dh, &l.x_in[..n * d], &l.norm1_a[..n], &l.norm1_b[..n], off);
    }
}

/// LongRoPE in decoding: a cached sequence that outgrows the original context in this pass (its rows reach past
/// `long_after` positions while its cached ones do not) is run again from position 0, its earlier tokens appended
/// as rows after the given ones — all its positions then take the long factors, as transformers' Phi-3 generation
/// recomputes its cache at that step, and decoding stays equal to the full forward pass. `cached(slot, position)`:
/// the token the cache holds there (the device decoder keeps its own copy of them on the host).
pub(crate) fn rerun_outgrown(
    tokens: &mut Vec<u32>,
    positions: &mut Vec<u32>,
    slots: &mut Vec<u32>,
    long_after: usize,
    cached: impl Fn(u32, usize) -> u32,
) {
    let n = positions.len();
    for i in 0..n {
        let slot = slots[i];
        // the slot's first row in this pass stands for all of them
        if slots[..i].contains(&slot) {
            continue;
        }
        let rows = (0..n).filter(|&j| slots[j] == slot);
        let first = rows.clone().map(|j| positions[j]).min().unwrap_or(0) as usize;
        let longest = rows.map(|j| positions[j] as usize + 1).max().unwrap_or(0);
        if longest > long_after && (1..=long_after).contains(&first) {
            for p in 0..first {
                tokens.push(cached(slot, p));
                positions.push(p as u32);
                slots.push(slot);
            }
        }
    }
}

/// What a block's forward reads besides its weights and writes besides its activations.
struct BlockIo<'a, 'c> {
    positions: &'a [u32],
    ctx: &'a mut Context<'c>,
    /// Some while training: LoRA dropout on, masks from this step's seed.
    step_seed: Option<u64>,
    lora_x_drop: &'a mut Vec<f32>,
    /// Scratch of the per-head q/k norms.
    qk_post: &'a mut [f32],
    /// Scratch of a post-normed sublayer output on its way into the residual stream (N, d).
    sublayer_out: &'a mut [f32],
    /// The RoPE table and each row's row of it.
    rope: Option<(&'a RopeTable, &'a [u32])>,
    /// The sliding layers' table when they rotate with their own base (Gemma 3), read at the same rows.
    rope_local: Option<&'a RopeTable>,
    /// Scratch of Phi-3's fused gate|up output.
    gate_up: &'a mut [f32],
    cached: &'a mut CachedAttentionScratch,
}

/// Each row's row of the RoPE table: its position, offset into LongRoPE's long set when its sequence is longer than
/// `long_after` positions — transformers' rule, made per sequence (the rows sharing a key, `seq_keys`: the packed
/// sequence's start, or the cache slot), so a row scores alike alone or packed. `table_rows`: the rows of one set
/// of the table; `longest`: scratch.
pub(crate) fn set_rope_rows(
    out: &mut Vec<u32>,
    longest: &mut Vec<u32>,
    positions: &[u32],
    seq_keys: &[u32],
    long_after: Option<usize>,
    table_rows: usize,
) {
    out.clear();
    out.extend_from_slice(positions);
    let Some(o) = long_after else { return };
    longest.clear();
    longest.resize(seq_keys.iter().max().map_or(0, |&k| k as usize + 1), 0);
    for (&k, &p) in seq_keys.iter().zip(positions) {
        longest[k as usize] = longest[k as usize].max(p + 1);
    }
    for (r, &k) in out.iter_mut().zip(seq_keys) {
        if longest[k as usize] as usize > o {
            *r += table_rows as u32;
        }
    }
}

/// The table (and rows) layer `i` rotates with: the sliding layers' own when the model has one (Gemma 3).
fn layer_rope<'a>(
    c: &Config,
    i: usize,
    rope: Option<(&'a RopeTable, &'a [u32])>,
    local: Option<&'a RopeTable>,
) -> Option<(&'a RopeTable, &'a [u32])> {
    match (rope, local) {
        (Some((_, rows)), Some(local)) if c.local_rope(i) => Some((local, rows)),
        (rope, _) => rope,
    }
}

/// Splits a projection (N, 2·heads·hd) whose heads each hold `hd` features of one kind then `hd` of another
/// (Qwen3.5's q_proj: query, gate) into the first kind (columns 0.. of `first`'s rows of `first_stride`) and the
/// second (`second`, (N, heads·hd)).
fn deinterleave_heads(
    src: &[f32],
    heads: usize,
    hd: usize,
    first: &mut [f32],
    first_stride: usize,
    second: &mut [f32],
) {
    let w = heads * hd;
    for ((s, f), g) in src.chunks_exact(2 * w).zip(first.chunks_mut(first_stride)).zip(second.chunks_exact_mut(w)) {
        for ((pair, fh), gh) in s.chunks_exact(2 * hd).zip(f[..w].chunks_exact_mut(hd)).zip(g.chunks_exact_mut(hd)) {
            fh.copy_from_slice(&pair[..hd]);
            gh.copy_from_slice(&pair[hd..]);
        }
    }
}

/// The inverse of [`deinterleave_heads`]: dst (N, 2·heads·hd) from the first kind (columns 0.. of rows of
/// `first_stride`) and the second ((N, heads·hd)).
fn interleave_heads(dst: &mut [f32], heads: usize, hd: usize, first: &[f32], first_stride: usize, second: &[f32]) {
    let w = heads * hd;
    for ((d, f), g) in dst.chunks_exact_mut(2 * w).zip(first.chunks(first_stride)).zip(second.chunks_exact(w)) {
        for ((pair, fh), gh) in d.chunks_exact_mut(2 * hd).zip(f[..w].chunks_exact(hd)).zip(g.chunks_exact(hd)) {
            pair[..hd].copy_from_slice(fh);
            pair[hd..].copy_from_slice(gh);
        }
    }
}

/// dst (N, width) = columns col..col + width of src (N rows of `stride`).
fn gather_cols(dst: &mut [f32], src: &[f32], stride: usize, col: usize, width: usize) {
    for (d, s) in dst.chunks_exact_mut(width).zip(src.chunks(stride)) {
        d.copy_from_slice(&s[col..col + width]);
    }
}

/// Columns col..col + width of dst (N rows of `stride`) = src (N, width).
fn scatter_cols(dst: &mut [f32], stride: usize, col: usize, width: usize, src: &[f32]) {
    for (d, s) in dst.chunks_mut(stride).zip(src.chunks_exact(width)) {
        d[col..col + width].copy_from_slice(s);
    }
}

/// The LoRA dropout of one layer's forward, when training.
fn dropout(seed: Option<u64>, x_drop: &mut Vec<f32>) -> Option<Dropout<'_>> {
    seed.map(|seed| Dropout { seed, x_drop })
}

/// Seed of one layer's dropout masks within a step.
pub(super) fn layer_seed(step_seed: u64, layer: usize) -> u64 {
    crate::rng::mix(step_seed ^ (layer as u64).wrapping_mul(0x9E37_79B9))
}

/// Rows of the q or k norm over `n` positions of `heads` heads: one per head, or one per position when it norms the
/// whole projection (OLMo 2/3).
pub(crate) fn qk_norm_rows(c: &Config, n: usize, heads: usize) -> usize {
    if c.qk_norm_whole { n } else { n * heads }
}

/// A sublayer's input: normed, or x itself where the block has no pre-norm (OLMo 2/3).
fn pre_norm_forward(
    n: Option<&Norm>,
    out: &mut [f32],
    stat_a: &mut [f32],
    stat_b: &mut [f32],
    x: &[f32],
    off: f32,
    eps: f32,
) {
    match n {
        Some(n) => norm_forward(n, out, stat_a, stat_b, x, off, eps),
        None => out.copy_from_slice(x),
    }
}

/// Backward of [`pre_norm_forward`]: dx += ∂(norm)/∂x · dout, or dout itself without a norm.
fn pre_norm_backward(
    n: Option<&mut Norm>,
    dx: &mut [f32],
    dout: &[f32],
    x: &[f32],
    stat_a: &[f32],
    stat_b: &[f32],
    off: f32,
) {
    match n {
        Some(n) => norm_backward(n, dx, dout, x, stat_a, stat_b, off),
        None => dx.iter_mut().zip(dout).for_each(|(dx, g)| *dx += g),
    }
}

/// RMSNorm (weights applied as offset + w) or LayerNorm (which keeps its mean in `stat_a`).
fn norm_forward(n: &Norm, out: &mut [f32], stat_a: &mut [f32], stat_b: &mut [f32], x: &[f32], off: f32, eps: f32) {
    match &n.b {
        None => rmsnorm_forward(out, stat_b, x, &n.w.data, off, eps),
        Some(b) => layernorm_forward(out, stat_a, stat_b, x, &n.w.data, &b.data, eps),
    }
}

/// x (N, d) += norm(out): a post-normed sublayer output joins the residual stream (Gemma 3). `rstd` (N) is kept
/// for the backward; `scratch` (≥ N·d) holds the normed rows on their way.
fn add_normed(x: &mut [f32], norm: &Norm, out: &[f32], rstd: &mut [f32], scratch: &mut [f32], off: f32, eps: f32) {
    let normed = &mut scratch[..x.len()];
    rmsnorm_forward(normed, rstd, out, &norm.w.data, off, eps);
    for (x, v) in x.iter_mut().zip(normed.iter()) {
        *x += v;
    }
}

/// The gradient at a sublayer's output: `dx` (n rows) itself, or, through the sublayer's post norm (Gemma 3) whose
/// input was `out` (its rstd saved in the forward pass), the gradient in `dsub`. The buffers are sliced only here:
/// models without post norms leave them empty.
fn through_post_norm<'a>(
    norm: Option<&mut Norm>,
    dx: &'a [f32],
    dsub: &'a mut [f32],
    out: &[f32],
    rstd: &[f32],
    n: usize,
    off: f32,
) -> &'a [f32] {
    match norm {
        None => dx,
        Some(norm) => {
            let (dsub, len) = (&mut dsub[..dx.len()], dx.len());
            dsub.fill(0.0);
            norm_backward(norm, dsub, dx, &out[..len], &[], &rstd[..n], off);
            dsub
        }
    }
}

/// dx += ∂(norm)/∂x · dout; norm weight/bias gradients accumulate when trainable.
fn norm_backward(n: &mut Norm, dx: &mut [f32], dout: &[f32], x: &[f32], stat_a: &[f32], stat_b: &[f32], off: f32) {
    match &mut n.b {
        None => rmsnorm_backward(dx, n.w.grad.as_deref_mut(), dout, x, &n.w.data, off, stat_b),
        Some(b) => {
            layernorm_backward(dx, n.w.grad.as_deref_mut(), b.grad.as_deref_mut(), dout, x, &n.w.data, stat_a, stat_b)
        }
    }
}
