//! One block on a device, forward beside backward, as `Transformer::block_forward` / `block_backward` compute
//! it for the Llama family's layout: x += o(attention(rope(qkv(attn_norm(x))))), then
//! x += down(act(gate(h)) ⊙ up(h)), h = mlp_norm(x).
use super::buffers::{GradBufs, LayerBf16, LayerBufs};
use super::linear::{Base, LinearScratch, LoraBufs};
use super::weights::{DevBlock, DevNorm, DevTensor, Mlp, SLOT_DOWN, SLOT_GATE, SLOT_O, SLOT_UP};
use crate::kernels::activation::GateAct;
use crate::kernels::attention::QkvLayout;
use crate::kernels::backend::{Backend, MatView, RopeCols, Values, ValuesMut};
use crate::kernels::gated_delta::DeltaNetShape;
use anyhow::{Result, bail};

/// Where attention finds the keys and values a row sees (as `Transformer`'s `Context`).
pub enum Attend<'a, B: Backend> {
    /// Within the packed batch: row i sees rows seq_start[i]..=i.
    Packed,
    /// In a KV cache layer (K, V): row i's k, v go to position positions[i] of slot slots[i], then it sees
    /// positions 0..=positions[i] of that slot. Only the first `cached_rows` rows attend over the cache; the rows
    /// after them are whole prompts from position 0 (packed, as `seq_start` says), so every key they see is one of
    /// them: they attend on the packed rows (the tiled kernel), to the same values.
    Cached {
        k: &'a mut B::F32,
        v: &'a mut B::F32,
        slots: &'a B::U32,
        positions: &'a B::U32,
        capacity: usize,
        cached_rows: usize,
    },
    /// A Gated DeltaNet layer's decoding state (`kv_cache::LayerCache::Recurrent`): row i continues slot
    /// slots[i] at positions[i] (from nothing at position 0), rows in order.
    Recurrent { conv: &'a mut B::F32, state: &'a mut B::F32, slots: &'a B::U32, positions: &'a B::U32 },
}

/// What a block's pass reads besides its weights and buffers.
pub struct BlockArgs<'a, B: Backend> {
    pub n: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub layout: QkvLayout,
    pub norm_offset: f32,
    pub norm_eps: f32,
    pub act: GateAct,
    /// q and k normed over each row's whole projection (OLMo 2/3), not per head.
    pub qk_norm_whole: bool,
    /// q_proj gives each head's query and its output gate (Qwen3.5).
    pub attn_output_gate: bool,
    /// The Gated DeltaNet's shape (Qwen3.5), and a packed batch's sequences for its recurrence
    /// (`kernels::gated_delta::seq_table`, `n_seqs` of them).
    pub delta_net: Option<DeltaNetShape>,
    pub delta_seqs: &'a B::U32,
    pub n_seqs: usize,
    /// The RoPE table and each row's row of it; None for a layer without RoPE.
    pub rope: Option<(&'a B::Rope, &'a B::U32)>,
    pub seq_start: &'a B::U32,
    /// This layer's dropout seed of the step while training.
    pub seed: Option<u64>,
}

impl<B: Backend> BlockArgs<'_, B> {
    /// (rows, features) of the q or k norm over `heads` heads.
    fn qk_norm_shape(&self, heads: usize) -> (usize, usize) {
        let hd = self.layout.head_dim;
        if self.qk_norm_whole { (self.n, heads * hd) } else { (self.n * heads, hd) }
    }

    fn rope(&self, be: &B, backward: bool, buf: &mut B::F32) -> Result<()> {
        let Some((table, rows)) = self.rope else { return Ok(()) };
        let l = &self.layout;
        // q's and k's heads rotate alike: where k's follow q's in the row (q|k|v), one launch turns both.
        let spans = if l.k_col == l.q_col + l.n_heads * l.head_dim {
            [Some((l.q_col, l.n_heads + l.n_kv_heads)), None]
        } else {
            [Some((l.q_col, l.n_heads)), Some((l.k_col, l.n_kv_heads))]
        };
        for (col, heads) in spans.into_iter().flatten() {
            be.rope(backward, buf, self.n, RopeCols { row_len: l.row_len, col, heads }, rows, table)?;
        }
        Ok(())
    }
}

impl<B: Backend> DevBlock<B> {
    /// The block on the residual stream x (N, d); saves in `l` what [`Self::backward`] needs.
    /// `wide`: scratch of a projection's output wider than its parts' buffers (`Buffers::wide`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        x: &mut B::F32,
        l: &mut LayerBufs<B>,
        s: &mut LinearScratch<B>,
        wide: &mut B::F32,
        a: &BlockArgs<B>,
        attend: Attend<B>,
    ) -> Result<()> {
        let (n, d, f) = (a.n, a.hidden, a.ffn);
        let (off, eps, seed) = (a.norm_offset, a.norm_eps, a.seed);
        if seed.is_some() {
            be.copy(&mut l.x_in, x, n * d)?;
        }
        let h1 = match &mut l.bf16 {
            Some(b) => {
                pre_norm(&self.attn_norm).forward_bf16(be, &mut b.h1, &mut l.rstd1, x, n, d, off, eps)?;
                Values::Bf16(&b.h1)
            }
            None => {
                pre_norm_forward(
                    be,
                    self.attn_norm.as_ref(),
                    &mut l.h1,
                    &mut l.mean1,
                    &mut l.rstd1,
                    x,
                    n,
                    d,
                    off,
                    eps,
                )?;
                Values::F32(&l.h1)
            }
        };
        let mixed = match (&self.delta_net, a.delta_net) {
            (Some(dn), Some(sh)) => {
                let db = l.delta.as_mut().expect("a Gated DeltaNet layer's buffers");
                dn.forward(be, &self.qkv, &sh, db, &mut l.lora, s, h1, a, attend)?;
                &db.y
            }
            _ => {
                self.attention_forward(be, l, s, wide, a, attend)?;
                if a.attn_output_gate { &l.att_gated } else { &l.att }
            }
        };
        let (dense, mixed) = (MatView::dense(n, d), Values::F32(mixed));
        match &self.post_norms {
            None => {
                self.o.forward(be, ValuesMut::F32(x), dense, Base::Add, mixed, n, l.lora[SLOT_O].as_mut(), s, seed)?
            }
            Some((norm, _)) => {
                let out = ValuesMut::F32(&mut l.attn_out);
                self.o.forward(be, out, dense, Base::Set, mixed, n, l.lora[SLOT_O].as_mut(), s, seed)?;
                add_normed(be, x, &norm.w, &l.attn_out, &mut l.post1_rstd, &mut s.sublayer, n, d, off, eps)?;
            }
        }
        if seed.is_some() {
            be.copy(&mut l.x_mid, x, n * d)?;
        }

        let act = match &mut l.bf16 {
            Some(b) => {
                pre_norm(&self.mlp_norm).forward_bf16(be, &mut b.h2, &mut l.rstd2, x, n, d, off, eps)?;
                let (h2, m) = (Values::Bf16(&b.h2), &mut b.mlp);
                self.gate_up_forward(be, ValuesMut::Bf16(&mut m.gate_up), h2, n, f, &mut l.lora, s, seed)?;
                be.glu_forward_bf16(&mut m.act, &m.gate_up, n, f, a.act)?;
                Values::Bf16(&m.act)
            }
            None => {
                pre_norm_forward(be, self.mlp_norm.as_ref(), &mut l.h2, &mut l.mean2, &mut l.rstd2, x, n, d, off, eps)?;
                let h2 = Values::F32(&l.h2);
                match self.mlp() {
                    Mlp::Gelu => {
                        let (out, lora) = (ValuesMut::F32(&mut l.gate_up), l.lora[SLOT_UP].as_mut());
                        self.up.forward(be, out, MatView::dense(n, f), Base::Set, h2, n, lora, s, seed)?;
                        be.gelu_forward(&mut l.act, &l.gate_up, n * f)?;
                    }
                    _ => {
                        self.gate_up_forward(be, ValuesMut::F32(&mut l.gate_up), h2, n, f, &mut l.lora, s, seed)?;
                        be.glu_forward(&mut l.act, &l.gate_up, n, f, a.act)?;
                    }
                }
                Values::F32(&l.act)
            }
        };
        let down_lora = l.lora[SLOT_DOWN].as_mut();
        match &self.post_norms {
            None => self.down.forward(be, ValuesMut::F32(x), dense, Base::Add, act, n, down_lora, s, seed),
            Some((_, norm)) => {
                self.down.forward(be, ValuesMut::F32(&mut l.mlp_out), dense, Base::Set, act, n, down_lora, s, seed)?;
                add_normed(be, x, &norm.w, &l.mlp_out, &mut l.post2_rstd, &mut s.sublayer, n, d, off, eps)
            }
        }
    }

    /// The attention half's mixer on attn_norm(x) (in `l`): `l.att` — and, with Qwen3.5's output gate, `l.att_gated`,
    /// o_proj's input then — receives its output.
    fn attention_forward(
        &self,
        be: &B,
        l: &mut LayerBufs<B>,
        s: &mut LinearScratch<B>,
        wide: &mut B::F32,
        a: &BlockArgs<B>,
        attend: Attend<B>,
    ) -> Result<()> {
        let (n, lay, off, eps, seed) = (a.n, a.layout, a.norm_offset, a.norm_eps, a.seed);
        let h1 = match &l.bf16 {
            Some(b) => Values::Bf16(&b.h1),
            None => Values::F32(&l.h1),
        };
        let (hd, aw) = (lay.head_dim, lay.n_heads * lay.head_dim);
        if let Some(w) = &self.qkv_stacked {
            // q|k|v (N, q + k + v) = h1 · [Wq; Wk; Wv]ᵀ, in the columns the loop below adds biases and adapters to
            let (rows, inp) = self.stacked_shape();
            let (cols, x) = (MatView::columns(n, 0, rows, lay.row_len), MatView::dense(n, inp));
            w.product(be, ValuesMut::F32(&mut l.qkv), cols, h1, x, MatView::dense(rows, inp).t(), false)?;
        }
        let mut col = 0;
        for (slot, lin) in self.qkv.iter().enumerate() {
            if slot == 0 && a.attn_output_gate {
                // q_proj yields each head's query, then its gate: split into q's columns and the gate's buffer
                let out = ValuesMut::F32(&mut *wide);
                lin.forward(be, out, MatView::dense(n, 2 * aw), Base::Set, h1, n, l.lora[slot].as_mut(), s, seed)?;
                for h in 0..lay.n_heads {
                    let (q, g) = (
                        MatView::columns(n, 2 * h * hd, hd, 2 * aw),
                        MatView::columns(n, (2 * h + 1) * hd, hd, 2 * aw),
                    );
                    be.copy_view(&mut l.qkv, MatView::columns(n, lay.q_col + h * hd, hd, lay.row_len), wide, q)?;
                    be.copy_view(&mut l.att_gate, MatView::columns(n, h * hd, hd, aw), wide, g)?;
                }
                col += aw;
                continue;
            }
            let view = MatView::columns(n, col, lin.out_dim, lay.row_len);
            let base = if self.qkv_stacked.is_some() { Base::Done } else { Base::Set };
            lin.forward(be, ValuesMut::F32(&mut l.qkv), view, base, h1, n, l.lora[slot].as_mut(), s, seed)?;
            col += lin.out_dim;
        }
        if let Some((qn, kn)) = &self.qk_norm {
            let hd = lay.head_dim;
            for (norm, col, heads, pre, rstd) in [
                (qn, lay.q_col, lay.n_heads, &mut l.q_pre, &mut l.q_rstd),
                (kn, lay.k_col, lay.n_kv_heads, &mut l.k_pre, &mut l.k_rstd),
            ] {
                let (cols, dense) = (MatView::columns(n, col, heads * hd, lay.row_len), MatView::dense(n, heads * hd));
                be.copy_view(pre, dense, &l.qkv, cols)?;
                let (rows, dim) = a.qk_norm_shape(heads);
                be.rmsnorm_forward(&mut s.qk_post, rstd, pre, &norm.w, rows, dim, off, eps)?;
                be.copy_view(&mut l.qkv, cols, &s.qk_post, dense)?;
            }
        }
        a.rope(be, false, &mut l.qkv)?;
        match attend {
            Attend::Packed => {
                // A training pass keeps the softmax's statistics for the backward.
                let stats = seed.is_some().then_some(&mut l.att_stats);
                be.attention_forward(&mut l.att, stats, &l.qkv, lay, a.seq_start, n)?
            }
            Attend::Cached { k, v, slots, positions, capacity, cached_rows } => {
                be.kv_store(k, v, &l.qkv, lay, slots, positions, n, capacity)?;
                // The packed pass covers every row (a cached row's seq_start is itself: one key, cheap), then the
                // cached rows, the first ones, are attended again over the cache, replacing theirs.
                if cached_rows < n {
                    be.attention_forward(&mut l.att, None, &l.qkv, lay, a.seq_start, n)?;
                }
                if cached_rows > 0 {
                    be.cached_attention(&mut l.att, &l.qkv, k, v, lay, slots, positions, cached_rows, capacity)?;
                }
            }
            Attend::Recurrent { .. } => bail!("an attention layer decodes over its KV cache, not a recurrent state"),
        }
        if a.attn_output_gate {
            be.sigmoid_gate_forward(&mut l.att_gated, &l.att, &l.att_gate, n * aw)?;
        }
        Ok(())
    }

    /// Backward from the saved `l`: `g.dx` holds ∂L/∂(block output) on entry and ∂L/∂(block input) on return.
    /// `wide`: scratch of a wide projection's gradient (`Buffers::wide`).
    pub fn backward(
        &mut self,
        be: &B,
        l: &mut LayerBufs<B>,
        g: &mut GradBufs<B>,
        s: &mut LinearScratch<B>,
        wide: &mut B::F32,
        a: &BlockArgs<B>,
    ) -> Result<()> {
        let (n, d, f, lay, off) = (a.n, a.hidden, a.ffn, a.layout, a.norm_offset);
        let dense = MatView::dense(n, d);
        // MLP: x_out = x_mid + down(act(gate(h2)) ⊙ up(h2)), h2 = mlp_norm(x_mid)
        let post = self.post_norms.as_mut().map(|(_, norm)| (norm, &l.mlp_out, &l.post2_rstd));
        let dmlp_out = Values::F32(through_post_norm(be, post, &g.dx, &mut g.dsub, n, d, off)?);
        let lora = |slot: usize| l.lora[slot].as_ref();
        let (h1, h2) = match &l.bf16 {
            Some(b) => (Values::Bf16(&b.h1), Values::Bf16(&b.h2)),
            None => (Values::F32(&l.h1), Values::F32(&l.h2)),
        };
        match (&l.bf16, &mut g.mlp_bf16) {
            (Some(LayerBf16 { mlp: m, .. }), Some(dm)) => {
                // dact = dy·W_down + LoRA's term, set (no zeroing), then gate and up from it, all in bf16; dy
                // rounded once for down's products (dx, and LoRA's dB and du).
                let Values::F32(dy) = dmlp_out else { unreachable!("the residual stream's gradient is f32") };
                be.round_bf16(&mut g.dy_bf16, dy, n * d)?;
                let (dact, act) = (ValuesMut::Bf16(&mut dm.act), Values::Bf16(&m.act));
                let dy = (dmlp_out, Some(&g.dy_bf16));
                self.down.backward(be, dact, Base::Set, None, dy, dense, act, n, lora(SLOT_DOWN), s)?;
                be.glu_backward_bf16(&mut dm.gate_up, &dm.act, &m.gate_up, n, f, a.act)?;
                self.gate_up_backward(be, &mut g.dh, Values::Bf16(&dm.gate_up), h2, n, f, &l.lora, s)?;
            }
            _ => {
                let dact = ValuesMut::F32(&mut g.dact);
                let (dy, act) = ((dmlp_out, None), Values::F32(&l.act));
                self.down.backward(be, dact, Base::Set, None, dy, dense, act, n, lora(SLOT_DOWN), s)?;
                if self.mlp() == Mlp::Gelu {
                    be.gelu_backward(&mut g.dgate_up, &g.dact, &l.gate_up, n * f)?;
                    let (dh, dup) = (ValuesMut::F32(&mut g.dh), (Values::F32(&g.dgate_up), None));
                    self.up.backward(be, dh, Base::Set, None, dup, MatView::dense(n, f), h2, n, lora(SLOT_UP), s)?;
                } else {
                    be.glu_backward(&mut g.dgate_up, &g.dact, &l.gate_up, n, f, a.act)?;
                    self.gate_up_backward(be, &mut g.dh, Values::F32(&g.dgate_up), h2, n, f, &l.lora, s)?;
                }
            }
        }
        match &mut self.mlp_norm {
            Some(norm) => norm.backward(be, &mut g.dx, &g.dh, &l.x_mid, &l.mean2, &l.rstd2, n, d, off)?,
            None => be.add(&mut g.dx, &g.dh, n * d)?,
        }

        // The mixer: x_mid = x_in + o(mixer(h1)), h1 = attn_norm(x_in)
        let post = self.post_norms.as_mut().map(|(norm, _)| (norm, &l.attn_out, &l.post1_rstd));
        let dattn_out = through_post_norm(be, post, &g.dx, &mut g.dsub, n, d, off)?;
        let dy = (Values::F32(dattn_out), None);
        if let (Some(dn), Some(sh)) = (&mut self.delta_net, a.delta_net) {
            let db = l.delta.as_ref().expect("a Gated DeltaNet layer's buffers");
            let gd = g.delta.as_mut().expect("a Gated DeltaNet model's gradient buffers");
            let y = Values::F32(&db.y);
            self.o.backward(
                be,
                ValuesMut::F32(&mut gd.dy),
                Base::Set,
                None,
                dy,
                dense,
                y,
                n,
                l.lora[SLOT_O].as_ref(),
                s,
            )?;
            dn.backward(be, &sh, db, gd, a)?;
            // With bf16 activations, the projections' gradients rounded once for their products.
            let p = sh.proj_width();
            if l.bf16.is_some() {
                be.round_bf16(&mut g.dy_bf16, &gd.dproj, n * p)?;
            }
            let dproj = (Values::F32(&gd.dproj), l.bf16.as_ref().map(|_| &g.dy_bf16));
            let mut col = 0;
            for (slot, lin) in self.qkv.iter_mut().enumerate() {
                // dh is set by the first projection's product (no zeroing), then added to.
                let (view, dh) = (MatView::columns(n, col, lin.out_dim, p), ValuesMut::F32(&mut g.dh));
                let base = if slot == 0 { Base::Set } else { Base::Add };
                lin.backward(be, dh, base, None, dproj, view, h1, n, l.lora[slot].as_ref(), s)?;
                col += lin.out_dim;
            }
        } else {
            let (gated, hd, aw) = (a.attn_output_gate, lay.head_dim, lay.n_heads * lay.head_dim);
            // With Qwen3.5's output gate o_proj read att ⊙ σ(gate): its gradient goes through the gate first.
            let att = Values::F32(if gated { &l.att_gated } else { &l.att });
            let datt = ValuesMut::F32(if gated { &mut g.datt_gated } else { &mut g.datt });
            self.o.backward(be, datt, Base::Set, None, dy, dense, att, n, l.lora[SLOT_O].as_ref(), s)?;
            if gated {
                let (gate, datt_gated) = (&l.att_gate, &g.datt_gated);
                be.sigmoid_gate_backward(&mut g.datt, &mut g.datt_gate, datt_gated, &l.att, gate, n * aw)?;
            }
            be.attention_backward(&mut g.dqkv, &mut l.att_stats, &g.datt, &l.qkv, &l.att, lay, a.seq_start, n)?;
            a.rope(be, true, &mut g.dqkv)?;
            if let Some((qn, kn)) = &mut self.qk_norm {
                for (norm, col, heads, pre, rstd) in [
                    (qn, lay.q_col, lay.n_heads, &l.q_pre, &l.q_rstd),
                    (kn, lay.k_col, lay.n_kv_heads, &l.k_pre, &l.k_rstd),
                ] {
                    let (cols, dense) =
                        (MatView::columns(n, col, heads * hd, lay.row_len), MatView::dense(n, heads * hd));
                    be.copy_view(&mut g.dqk_post, dense, &g.dqkv, cols)?;
                    be.zero(&mut g.dqk_pre, n * heads * hd)?;
                    let (rows, dim) = a.qk_norm_shape(heads);
                    norm_backward(be, norm, &mut g.dqk_pre, &g.dqk_post, pre, rstd, rows, dim, off)?;
                    be.copy_view(&mut g.dqkv, cols, &g.dqk_pre, dense)?;
                }
            }
            // With bf16 activations, dq|dk|dv rounded once for every product of q, k and v that reads them.
            if l.bf16.is_some() {
                be.round_bf16(&mut g.dy_bf16, &g.dqkv, n * lay.row_len)?;
            }
            let dqkv = (Values::F32(&g.dqkv), l.bf16.as_ref().map(|_| &g.dy_bf16));
            let mut col = 0;
            for (slot, lin) in self.qkv.iter_mut().enumerate() {
                // dh is set by q's product (no zeroing), then added to.
                let dh = ValuesMut::F32(&mut g.dh);
                if slot == 0 && gated {
                    // q_proj's gradient: each head's dq, then its gate's
                    for h in 0..lay.n_heads {
                        let (q, gt) = (
                            MatView::columns(n, 2 * h * hd, hd, 2 * aw),
                            MatView::columns(n, (2 * h + 1) * hd, hd, 2 * aw),
                        );
                        be.copy_view(wide, q, &g.dqkv, MatView::columns(n, lay.q_col + h * hd, hd, lay.row_len))?;
                        be.copy_view(wide, gt, &g.datt_gate, MatView::columns(n, h * hd, hd, aw))?;
                    }
                    let (dq_gate, both) = ((Values::F32(&*wide), None), MatView::dense(n, 2 * aw));
                    lin.backward(be, dh, Base::Set, None, dq_gate, both, h1, n, l.lora[slot].as_ref(), s)?;
                    col += aw;
                    continue;
                }
                // a stacked weight's rows are this layer's own: dh sums as without the stack
                let (base, stack) = (if slot == 0 { Base::Set } else { Base::Add }, self.qkv_stacked.as_ref());
                let view = MatView::columns(n, col, lin.out_dim, lay.row_len);
                lin.backward(be, dh, base, stack.map(|t| (t, col)), dqkv, view, h1, n, l.lora[slot].as_ref(), s)?;
                col += lin.out_dim;
            }
        }
        match &mut self.attn_norm {
            Some(norm) => norm.backward(be, &mut g.dx, &g.dh, &l.x_in, &l.mean1, &l.rstd1, n, d, off),
            None => be.add(&mut g.dx, &g.dh, n * d),
        }
    }
}

impl<B: Backend> DevBlock<B> {
    /// (q + k + v, in): the shape of the stacked q, k and v weights (`qkv_stacked`).
    fn stacked_shape(&self) -> (usize, usize) {
        (self.qkv.iter().map(|l| l.out_dim).sum(), self.qkv[0].in_dim)
    }

    /// gate|up (N, 2·f) = h2 · [W_gate; W_up]ᵀ + biases and adapters: one product where the two weights are stacked
    /// (`gate_up_stacked`), else one each into its columns; Phi-3's fused up writes both.
    #[allow(clippy::too_many_arguments)]
    fn gate_up_forward(
        &self,
        be: &B,
        mut out: ValuesMut<B>,
        h2: Values<B>,
        n: usize,
        f: usize,
        lora: &mut [Option<LoraBufs<B>>],
        s: &mut LinearScratch<B>,
        seed: Option<u64>,
    ) -> Result<()> {
        let both = MatView::dense(n, 2 * f);
        let Some(gate) = &self.gate else {
            return self.up.forward(be, out, both, Base::Set, h2, n, lora[SLOT_UP].as_mut(), s, seed);
        };
        let base = match &self.gate_up_stacked {
            Some(w) => {
                let (x, wv) = (MatView::dense(n, gate.in_dim), MatView::dense(2 * f, gate.in_dim).t());
                w.product(be, out.reborrow(), both, h2, x, wv, false)?;
                Base::Done
            }
            None => Base::Set,
        };
        let (gate_cols, up_cols) = (MatView::columns(n, 0, f, 2 * f), MatView::columns(n, f, f, 2 * f));
        gate.forward(be, out.reborrow(), gate_cols, base, h2, n, lora[SLOT_GATE].as_mut(), s, seed)?;
        self.up.forward(be, out, up_cols, base, h2, n, lora[SLOT_UP].as_mut(), s, seed)
    }

    /// Backward of [`Self::gate_up_forward`]: dh (N, in) = ∂L/∂h2 from dgate|dup (N, 2·f), set (no zeroing) by
    /// gate's product, then added to by up's — each its own product, a stacked weight's rows included, so that dh
    /// sums as without the stack; the weights' and adapters' gradients as the layers compute them.
    #[allow(clippy::too_many_arguments)]
    fn gate_up_backward(
        &mut self,
        be: &B,
        dh: &mut B::F32,
        dgate_up: Values<B>,
        h2: Values<B>,
        n: usize,
        f: usize,
        lora: &[Option<LoraBufs<B>>],
        s: &mut LinearScratch<B>,
    ) -> Result<()> {
        let (both, dy) = (MatView::dense(n, 2 * f), (dgate_up, None));
        let DevBlock { gate, up, gate_up_stacked, .. } = self;
        let Some(gate) = gate else {
            return up.backward(be, ValuesMut::F32(dh), Base::Set, None, dy, both, h2, n, lora[SLOT_UP].as_ref(), s);
        };
        let (gate_cols, up_cols) = (MatView::columns(n, 0, f, 2 * f), MatView::columns(n, f, f, 2 * f));
        let (gate_rows, up_rows) = (gate_up_stacked.as_ref().map(|t| (t, 0)), gate_up_stacked.as_ref().map(|t| (t, f)));
        let (dg, du) = (lora[SLOT_GATE].as_ref(), lora[SLOT_UP].as_ref());
        gate.backward(be, ValuesMut::F32(dh), Base::Set, gate_rows, dy, gate_cols, h2, n, dg, s)?;
        up.backward(be, ValuesMut::F32(dh), Base::Add, up_rows, dy, up_cols, h2, n, du, s)
    }
}

/// A block's pre-norm where bf16 activations are kept, which only blocks with pre-norms do
/// (`Weights::bf16_activations`).
fn pre_norm<B: Backend>(norm: &Option<DevNorm<B>>) -> &DevNorm<B> {
    norm.as_ref().expect("bf16 activations are kept only by blocks with pre-norms (Weights::bf16_activations)")
}

/// A sublayer's input: normed, or x itself in a block without pre-norms (OLMo 2/3).
#[allow(clippy::too_many_arguments)]
fn pre_norm_forward<B: Backend>(
    be: &B,
    norm: Option<&DevNorm<B>>,
    out: &mut B::F32,
    mean: &mut B::F32,
    rstd: &mut B::F32,
    x: &B::F32,
    n: usize,
    d: usize,
    off: f32,
    eps: f32,
) -> Result<()> {
    match norm {
        Some(norm) => norm.forward(be, out, mean, rstd, x, n, d, off, eps),
        None => be.copy(out, x, n * d),
    }
}

/// x (N, d) += rmsnorm(out): a post-normed sublayer output joins the residual stream (Gemma 3, OLMo 2/3), its 1/rms
/// kept in `rstd`, the normed values through `scratch` (as `Transformer`'s add_normed).
#[allow(clippy::too_many_arguments)]
fn add_normed<B: Backend>(
    be: &B,
    x: &mut B::F32,
    w: &B::F32,
    out: &B::F32,
    rstd: &mut B::F32,
    scratch: &mut B::F32,
    n: usize,
    d: usize,
    off: f32,
    eps: f32,
) -> Result<()> {
    be.rmsnorm_forward(scratch, rstd, out, w, n, d, off, eps)?;
    be.add(x, scratch, n * d)
}

/// The gradient at a sublayer's output: `dx` itself, or, through its post norm (whose input `out` and 1/rms
/// were saved), the gradient computed into `dsub` (as `Transformer`'s through_post_norm).
fn through_post_norm<'a, B: Backend>(
    be: &B,
    post: Option<(&mut DevTensor<B>, &B::F32, &B::F32)>,
    dx: &'a B::F32,
    dsub: &'a mut B::F32,
    n: usize,
    d: usize,
    off: f32,
) -> Result<&'a B::F32> {
    let Some((norm, out, rstd)) = post else { return Ok(dx) };
    be.zero(dsub, n * d)?;
    norm_backward(be, norm, dsub, dx, out, rstd, n, d, off)?;
    Ok(dsub)
}

impl<B: Backend> DevNorm<B> {
    /// out = norm(x) over `rows` rows of `dim`: an RMSNorm (its 1/rms in `rstd`; `mean` unused), or a LayerNorm
    /// when it has a bias (its mean and 1/std saved).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        out: &mut B::F32,
        mean: &mut B::F32,
        rstd: &mut B::F32,
        x: &B::F32,
        rows: usize,
        dim: usize,
        off: f32,
        eps: f32,
    ) -> Result<()> {
        match &self.b {
            None => be.rmsnorm_forward(out, rstd, x, &self.w.w, rows, dim, off, eps),
            Some(b) => be.layernorm_forward(out, mean, rstd, x, &self.w.w, &b.w, rows, dim, eps),
        }
    }

    /// [`Self::forward`] of an RMSNorm into `out` kept in bf16 (`Weights::bf16_activations` rules LayerNorms out).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_bf16(
        &self,
        be: &B,
        out: &mut B::Bf16,
        rstd: &mut B::F32,
        x: &B::F32,
        rows: usize,
        dim: usize,
        off: f32,
        eps: f32,
    ) -> Result<()> {
        assert!(self.b.is_none(), "{}: a LayerNorm's output kept in bf16", self.w.name);
        be.rmsnorm_forward_bf16(out, rstd, x, &self.w.w, rows, dim, off, eps)
    }

    /// Backward of [`Self::forward`]: dx **+=** ∂(norm)/∂x · dout; the weight's and bias's gradients when they
    /// train.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        be: &B,
        dx: &mut B::F32,
        dout: &B::F32,
        x: &B::F32,
        mean: &B::F32,
        rstd: &B::F32,
        rows: usize,
        dim: usize,
        off: f32,
    ) -> Result<()> {
        let Some(b) = &mut self.b else { return norm_backward(be, &mut self.w, dx, dout, x, rstd, rows, dim, off) };
        let DevTensor { w, train, .. } = &mut self.w;
        let (dw, db) = (train.as_mut().map(|t| &mut t.g), b.grad());
        be.layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, rows, dim)
    }
}

/// An RMSNorm's backward: dx += ∂(norm)/∂x · dout, and its weight's gradient when it trains.
#[allow(clippy::too_many_arguments)]
fn norm_backward<B: Backend>(
    be: &B,
    norm: &mut DevTensor<B>,
    dx: &mut B::F32,
    dout: &B::F32,
    x: &B::F32,
    rstd: &B::F32,
    rows: usize,
    dim: usize,
    off: f32,
) -> Result<()> {
    let DevTensor { w, train, .. } = norm;
    be.rmsnorm_backward(dx, train.as_mut().map(|t| &mut t.g), dout, x, w, rstd, rows, dim, off)
}
