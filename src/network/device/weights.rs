//! The model's tensors on a device: the base dense (a packed matrix is dequantized on upload), each LoRA adapter's
//! factors with their gradients and AdamW moments. HF names are kept beside the buffers, so errors and downloads
//! name the tensor.
//!
//! Under `--compute bf16` the weight matrices the products read (the base linears, the LM head) also have a bf16
//! copy, made once, so no product rounds them again; a frozen one is kept only in bf16 (half the memory of f32),
//! a trained one keeps its f32 values (AdamW's master weights) and its copy is written by every AdamW step
//! (`AdamWTensor::bf16`). The embeddings keep f32 for their lookup. Under f32 everything is f32.
//!
//! A frozen weight matrix the host keeps in its stored GGML blocks (a quantized GGUF's, `--base-dtype stored`) stays
//! in them on a backend that can multiply by them (`Backend::keeps_packed`): memory as the file's, the same values
//! as the dense matrix (`Backend::gemm_packed`).
use crate::kernels::backend::{Backend, MatView, PackedView, Values, ValuesMut, words_of};
use crate::kernels::compute::{Compute, compute};
use crate::kernels::dequant::GgmlType;
use crate::network::linear::Linear;
use crate::network::lora::Lora;
use crate::network::param::Param;
use crate::network::transformer::{Block, Norm, Transformer};
use anyhow::{Context, Result};

/// A tensor on the device: its values and, when it trains, its gradient and AdamW's moments.
pub struct DevTensor<B: Backend> {
    /// The HF name (the host tensor it mirrors).
    pub name: String,
    pub len: usize,
    /// Whether AdamW's weight decay applies (`Param::decays`: matrices).
    pub decays: bool,
    /// The f32 values; empty for a frozen matrix kept only in bf16.
    pub w: B::F32,
    /// The values in bf16 for `--compute bf16`'s products (a weight matrix's, under bf16 only).
    pub bf16: Option<B::Bf16>,
    /// A frozen weight matrix kept in its stored blocks (then `w` is empty and `bf16` None).
    pub packed: Option<DevPacked<B>>,
    pub train: Option<Grads<B>>,
    /// Its gradient is known to be zero (just allocated, or zeroed by the AdamW step), so the next product into it
    /// may write it rather than add to it: a linear's dW, once per backward pass — a read of the whole gradient
    /// saved per step in full fine-tuning, and the same values (0 + x is x).
    pub grad_zero: bool,
}

/// A weight matrix (rows, cols) in its stored GGML blocks on the device: the bytes as u32 words
/// (`kernels::backend::words_of`).
pub struct DevPacked<B: Backend> {
    pub words: B::U32,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
}

/// A trainable tensor's gradient and moments (each `len` values).
pub struct Grads<B: Backend> {
    pub g: B::F32,
    pub m: B::F32,
    pub v: B::F32,
}

impl<B: Backend> DevTensor<B> {
    /// Its gradient when it trains.
    pub fn grad(&mut self) -> Option<&mut B::F32> {
        self.train.as_mut().map(|t| &mut t.g)
    }

    /// c[cv] (+)= a[av] · wv, wv a view of this weight matrix: a product in the run's compute, from the bf16 copy
    /// when there is one; a bf16 product whenever a or c is kept in bf16.
    #[allow(clippy::too_many_arguments)]
    pub fn product(
        &self,
        be: &B,
        c: ValuesMut<B>,
        cv: MatView,
        a: Values<B>,
        av: MatView,
        wv: MatView,
        accumulate: bool,
    ) -> Result<()> {
        if let Some(p) = &self.packed {
            let w = PackedView { words: &p.words, ty: p.ty, rows: p.rows, cols: p.cols };
            return be.gemm_packed(c, cv, a, av, w, wv, accumulate);
        }
        match (&self.bf16, c, a) {
            (Some(h), c, a) => be.gemm_bf16(c, cv, a, av, Values::Bf16(h), wv, 1.0, accumulate),
            (None, ValuesMut::F32(c), Values::F32(a)) => be.gemm_weights(c, cv, a, av, &self.w, wv, accumulate),
            (None, c, a) => be.gemm_bf16(c, cv, a, av, Values::F32(&self.w), wv, 1.0, accumulate),
        }
    }

    /// This tensor as an operand of a product: its bf16 copy in a bf16 product where it has one (no rounding
    /// then), else its f32 values.
    pub fn operand(&self, bf16_product: bool) -> Values<'_, B> {
        match (&self.bf16, bf16_product) {
            (Some(h), true) => Values::Bf16(h),
            _ => Values::F32(&self.w),
        }
    }

    /// The bf16 copy made again from the f32 values after they were uploaded (a resumed state; an optimizer step
    /// writes the copy itself).
    pub fn refresh_bf16(&mut self, be: &B) -> Result<()> {
        match &mut self.bf16 {
            Some(h) => be.round_bf16(h, &self.w, self.len),
            None => Ok(()),
        }
    }
}

/// A LoRA adapter on the device. A (r, in), B (out, r); each trains when its host tensor does.
pub struct DevLora<B: Backend> {
    pub a: DevTensor<B>,
    pub b: DevTensor<B>,
    pub rank: usize,
    pub scale: f32,
    pub dropout: f32,
    /// The host adapter's dropout stream: the same masks as the CPU path.
    pub stream: u64,
}

/// y = x·Wᵀ + b + LoRA on the device. W (out, in), frozen.
pub struct DevLinear<B: Backend> {
    pub name: String,
    pub w: DevTensor<B>,
    pub b: Option<DevTensor<B>>,
    pub lora: Option<DevLora<B>>,
    pub in_dim: usize,
    pub out_dim: usize,
}

/// A block's MLP: act(gate(h)) ⊙ up(h) (Llama family); the same from one gate|up linear (Phi-3, `gate` None);
/// or GPT-2's gelu(up(h)).
#[derive(Clone, Copy, PartialEq)]
pub enum Mlp {
    Gated,
    Fused,
    Gelu,
}

/// A norm's weight, and its bias for a LayerNorm (GPT-2; an RMSNorm has none).
pub struct DevNorm<B: Backend> {
    pub w: DevTensor<B>,
    pub b: Option<DevTensor<B>>,
}

impl<B: Backend> DevNorm<B> {
    /// Its tensors in parameter order (weight, bias).
    fn tensors(&self) -> impl Iterator<Item = &DevTensor<B>> {
        std::iter::once(&self.w).chain(self.b.as_ref())
    }

    fn tensors_mut(&mut self) -> impl Iterator<Item = &mut DevTensor<B>> {
        std::iter::once(&mut self.w).chain(self.b.as_mut())
    }
}

fn norm<B: Backend>(be: &B, n: &Norm) -> Result<DevNorm<B>> {
    Ok(DevNorm { w: upload(be, &n.w)?, b: n.b.as_ref().map(|b| upload(be, b)).transpose()? })
}

/// One block of the Llama family's layout (RMSNorms, q/k/v, o, gate/up/down; Phi-3's fused qkv and gate|up are
/// one linear each, its `up` then giving gate|up side by side).
pub struct DevBlock<B: Backend> {
    /// None in OLMo 2/3 (no pre-norms: `Block::attn_norm`).
    pub attn_norm: Option<DevNorm<B>>,
    /// Gemma 3's and OLMo 2/3's norms of the attention and MLP outputs (then Gemma's `mlp_norm` is its
    /// pre-feedforward norm).
    pub post_norms: Option<(DevTensor<B>, DevTensor<B>)>,
    /// RMSNorms of q and k before RoPE: per head (Qwen3, Gemma 3: head_dim weights each) or over the whole
    /// projection (OLMo 2/3).
    pub qk_norm: Option<(DevTensor<B>, DevTensor<B>)>,
    pub qkv: Vec<DevLinear<B>>,
    /// q, k and v's frozen weight matrices stacked ((q + k + v) rows, in) for one product each way, where all
    /// three are frozen and dense; then `qkv`'s own weights are empty, and the block runs their products.
    pub qkv_stacked: Option<DevTensor<B>>,
    pub o: DevLinear<B>,
    pub mlp_norm: Option<DevNorm<B>>,
    /// None when fused into `up` (Phi-3).
    pub gate: Option<DevLinear<B>>,
    pub up: DevLinear<B>,
    /// gate's and up's frozen weight matrices stacked ((2·ffn) rows, in), as `qkv_stacked`.
    pub gate_up_stacked: Option<DevTensor<B>>,
    pub down: DevLinear<B>,
    /// Qwen3.5's Gated DeltaNet in a linear-attention layer: its tensors besides the linears (its four input
    /// projections are `qkv`, its out_proj `o`, as in `network::transformer::Block`).
    pub delta_net: Option<DevDeltaNet<B>>,
}

/// A Gated DeltaNet's tensors besides its linear layers (`network::delta_net::DeltaNet`).
pub struct DevDeltaNet<B: Backend> {
    /// (conv_dim, 1, K)
    pub conv: DevTensor<B>,
    /// (v_heads) each
    pub dt_bias: DevTensor<B>,
    pub a_log: DevTensor<B>,
    /// (v_head_dim)
    pub norm: DevTensor<B>,
}

impl<B: Backend> DevDeltaNet<B> {
    /// Its tensors in the host's parameter order.
    fn tensors(&self) -> [&DevTensor<B>; 4] {
        [&self.conv, &self.dt_bias, &self.a_log, &self.norm]
    }

    fn tensors_mut(&mut self) -> [&mut DevTensor<B>; 4] {
        [&mut self.conv, &mut self.dt_bias, &mut self.a_log, &mut self.norm]
    }
}

pub struct Weights<B: Backend> {
    /// (vocab, hidden)
    pub embed: DevTensor<B>,
    /// Learned positions (max_positions, hidden), GPT-2 only.
    pub pos_embed: Option<DevTensor<B>>,
    pub blocks: Vec<DevBlock<B>>,
    pub final_norm: DevNorm<B>,
    /// (vocab, hidden); None when tied to `embed`.
    pub lm_head: Option<DevTensor<B>>,
}

/// A host tensor on the device: its values (dequantized when packed), and a zeroed gradient and moments when it
/// trains.
fn upload<B: Backend>(be: &B, p: &Param) -> Result<DevTensor<B>> {
    upload_as(be, p, Keep::F32)
}

/// What a weight matrix keeps on the device.
#[derive(Clone, Copy, PartialEq)]
enum Keep {
    /// Its f32 values only (norms, biases, untied embeddings, adapters with f32 activations).
    F32,
    /// A product operand: a bf16 copy under `--compute bf16`, and f32 values when it trains or under f32.
    Operand,
    /// A product operand that is also looked up (tied embeddings), or one of f32 products too (adapters where the
    /// activations are kept in bf16): f32 values always, a bf16 copy under bf16.
    Both,
}

fn upload_as<B: Backend>(be: &B, p: &Param, keep: Keep) -> Result<DevTensor<B>> {
    let stored = p.packed.as_ref().filter(|m| keep == Keep::Operand && !p.is_trainable() && be.keeps_packed(m.ty));
    if let Some(m) = stored {
        let on = |what: &str| format!("{what} {} on {}", p.name, be.name());
        let host = words_of(&m.bytes);
        let mut words = be.alloc_u32(host.len()).with_context(|| on("allocating"))?;
        be.upload_u32(&mut words, &host).with_context(|| on("copying"))?;
        return Ok(DevTensor {
            name: p.name.clone(),
            len: m.rows * m.cols,
            decays: p.decays(),
            w: be.alloc(0)?,
            bf16: None,
            packed: Some(DevPacked { words, ty: m.ty, rows: m.rows, cols: m.cols }),
            train: None,
            grad_zero: true,
        });
    }
    upload_values(be, &p.name, &p.values(), p.decays(), p.is_trainable(), keep)
}

/// `values` on the device as a tensor named `name` (f32 values and/or a bf16 copy, as `keep` and the run's compute
/// say), with a zeroed gradient and moments when it trains.
fn upload_values<B: Backend>(
    be: &B,
    name: &str,
    values: &[f32],
    decays: bool,
    trainable: bool,
    keep: Keep,
) -> Result<DevTensor<B>> {
    let on = |what: &str| format!("{what} {name} on {}", be.name());
    let len = values.len();
    let bf16 = keep != Keep::F32 && compute() == Compute::Bf16;
    let keep_f32 = !bf16 || keep == Keep::Both || trainable;
    let alloc = || be.alloc(len).with_context(|| on("allocating"));
    let mut w = be.alloc(if keep_f32 { len } else { 0 }).with_context(|| on("allocating"))?;
    if keep_f32 {
        be.upload(&mut w, values).with_context(|| on("copying"))?;
    }
    let copy = bf16.then(|| -> Result<B::Bf16> {
        let mut h = be.alloc_bf16(len).with_context(|| on("allocating the bf16 copy of"))?;
        be.upload_bf16(&mut h, values).with_context(|| on("copying"))?;
        Ok(h)
    });
    let train = trainable.then(|| -> Result<Grads<B>> { Ok(Grads { g: alloc()?, m: alloc()?, v: alloc()? }) });
    Ok(DevTensor {
        name: name.to_string(),
        len,
        decays,
        w,
        bf16: copy.transpose()?,
        packed: None,
        train: train.transpose()?,
        grad_zero: true,
    })
}

/// Weight matrices one above the other (their rows in order, in) when every one of them is frozen and would be
/// kept dense: their products are then one GEMM each way, a wider one, instead of one per matrix (q, k, v: k's and
/// v's are narrow under GQA; gate and up). None otherwise (a weight that trains, or one kept in its GGML blocks).
fn stacked<B: Backend>(be: &B, linears: &[&Linear]) -> Result<Option<DevTensor<B>>> {
    let packed = |p: &Param| p.packed.as_ref().is_some_and(|m| be.keeps_packed(m.ty));
    let in_dim = linears[0].in_dim;
    if linears.iter().any(|l| l.w.is_trainable() || packed(&l.w) || l.in_dim != in_dim) {
        return Ok(None);
    }
    let values: Vec<f32> = linears.iter().flat_map(|l| l.w.values().into_owned()).collect();
    let name = linears.iter().map(|l| l.w.name.as_str()).collect::<Vec<_>>().join(" + ");
    upload_values(be, &name, &values, true, false, Keep::Operand).map(Some)
}

/// The linear layers `ls` on the device, their weights in `stack` when there is one (then each keeps an empty one).
fn linears<B: Backend>(be: &B, ls: &[&Linear], stack: &Option<DevTensor<B>>) -> Result<Vec<DevLinear<B>>> {
    let placed = |l: &Linear| if stack.is_some() { in_stack(be, &l.w) } else { upload_as(be, &l.w, Keep::Operand) };
    ls.iter().map(|l| linear_with(be, l, placed(l)?)).collect()
}

fn lora<B: Backend>(be: &B, l: &Lora) -> Result<DevLora<B>> {
    // Where activations are kept in bf16, LoRA's factors are operands of bf16 products too: a bf16 copy each,
    // written by every AdamW step, so that no product rounds them.
    let keep = if be.bf16_activations() { Keep::Both } else { Keep::F32 };
    Ok(DevLora {
        a: upload_as(be, &l.a, keep)?,
        b: upload_as(be, &l.b, keep)?,
        rank: l.rank,
        scale: l.scale,
        dropout: l.dropout,
        stream: l.dropout_stream(),
    })
}

fn linear<B: Backend>(be: &B, l: &Linear) -> Result<DevLinear<B>> {
    linear_with(be, l, upload_as(be, &l.w, Keep::Operand)?)
}

/// The linear layer `l` with its weight already placed: `w` (its own tensor, or an empty one where the block keeps
/// it in a stack, `DevBlock::qkv_stacked` or `gate_up_stacked`).
fn linear_with<B: Backend>(be: &B, l: &Linear, w: DevTensor<B>) -> Result<DevLinear<B>> {
    Ok(DevLinear {
        name: l.name.clone(),
        w,
        b: l.b.as_ref().map(|b| upload(be, b)).transpose()?,
        lora: l.lora.as_ref().map(|a| lora(be, a)).transpose()?,
        in_dim: l.in_dim,
        out_dim: l.out_dim,
    })
}

/// An empty stand-in for a weight matrix the block keeps in a stack (its name kept for messages).
fn in_stack<B: Backend>(be: &B, p: &Param) -> Result<DevTensor<B>> {
    upload_values(be, &p.name, &[], p.decays(), false, Keep::F32)
}

/// A block on the device; `gated_q`: q_proj gives each head's query and its output gate (Qwen3.5), which rules out
/// stacking q, k and v.
fn block<B: Backend>(be: &B, b: &Block, gated_q: bool) -> Result<DevBlock<B>> {
    let qkv: Vec<&Linear> = b.qkv.iter().collect();
    let stack_qkv = !gated_q && b.delta_net.is_none() && qkv.len() == 3;
    let qkv_stacked = if stack_qkv { stacked(be, &qkv)? } else { None };
    let gate_up_stacked = match &b.gate {
        Some(gate) => stacked(be, &[gate, &b.up])?,
        None => None,
    };
    let gate_or_up = |l: &Linear| linears(be, &[l], &gate_up_stacked).map(|mut one| one.remove(0));
    Ok(DevBlock {
        attn_norm: b.attn_norm.as_ref().map(|n| norm(be, n)).transpose()?,
        post_norms: b
            .post_norms
            .as_ref()
            .map(|(a, m)| Ok::<_, anyhow::Error>((upload(be, &a.w)?, upload(be, &m.w)?)))
            .transpose()?,
        qk_norm: b
            .qk_norm
            .as_ref()
            .map(|(q, k)| Ok::<_, anyhow::Error>((upload(be, &q.w)?, upload(be, &k.w)?)))
            .transpose()?,
        qkv: linears(be, &qkv, &qkv_stacked)?,
        qkv_stacked,
        o: linear(be, &b.o)?,
        mlp_norm: b.mlp_norm.as_ref().map(|n| norm(be, n)).transpose()?,
        gate: b.gate.as_ref().map(gate_or_up).transpose()?,
        up: gate_or_up(&b.up)?,
        gate_up_stacked,
        down: linear(be, &b.down)?,
        delta_net: b
            .delta_net
            .as_ref()
            .map(|dn| -> Result<DevDeltaNet<B>> {
                let [conv, dt_bias, a_log, norm] = dn.params().map(|p| upload(be, p));
                Ok(DevDeltaNet { conv: conv?, dt_bias: dt_bias?, a_log: a_log?, norm: norm? })
            })
            .transpose()?,
    })
}

impl<B: Backend> Weights<B> {
    /// Copies `model` to the device.
    pub fn upload(be: &B, model: &Transformer) -> Result<Self> {
        let mut w = Weights {
            embed: upload_as(be, &model.embed, if model.lm_head.is_some() { Keep::F32 } else { Keep::Both })?,
            blocks: model.blocks.iter().map(|b| block(be, b, model.config.attn_output_gate)).collect::<Result<_>>()?,
            pos_embed: model.pos_embed.as_ref().map(|p| upload(be, p)).transpose()?,
            final_norm: norm(be, &model.final_norm)?,
            lm_head: model.lm_head.as_ref().map(|h| upload_as(be, h, Keep::Operand)).transpose()?,
        };
        // LoRA's bf16 copies serve only blocks that keep bf16 activations (not Phi-3's or GPT-2's).
        if !w.bf16_activations(be) {
            let linears = w
                .blocks
                .iter_mut()
                .flat_map(|b| linears_mut(&mut b.qkv, &mut b.o, &mut b.gate, &mut b.up, &mut b.down));
            let adapters = linears.filter_map(|l| l.lora.as_mut());
            adapters.for_each(|a| (a.a.bf16, a.b.bf16) = (None, None));
        }
        Ok(w)
    }

    /// Whether the blocks keep their normed inputs and their MLP's activations in bf16 (`buffers::LayerBf16`): under
    /// `--compute bf16` on a backend that does ([`Backend::bf16_activations`]: a GPU), for RMSNorm blocks with gated
    /// MLPs of separate gate and up linears and no biases (the Llama family's; Phi-3's fused gate|up, GPT-2 and
    /// OLMo 2/3, whose sublayer inputs are not normed, stay f32). Only products read them (and the MLP's own ops),
    /// so bf16 halves their traffic and the products round them no more. The MLP's are the largest activations of a
    /// step — (N, ffn) each, and their gradients.
    pub fn bf16_activations(&self, be: &B) -> bool {
        let no_bias = |b: &DevBlock<B>| b.gate.iter().chain([&b.up, &b.down]).all(|l| l.b.is_none());
        let rms =
            |b: &DevBlock<B>| [&b.attn_norm, &b.mlp_norm].iter().all(|n| n.as_ref().is_some_and(|n| n.b.is_none()));
        compute() == Compute::Bf16
            && be.bf16_activations()
            && self.blocks.iter().all(|b| b.mlp() == Mlp::Gated && no_bias(b) && rms(b))
    }

    /// The LM head (vocab, hidden).
    pub fn head(&self) -> &DevTensor<B> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    pub fn head_mut(&mut self) -> &mut DevTensor<B> {
        self.lm_head.as_mut().unwrap_or(&mut self.embed)
    }

    /// Every tensor in the host model's parameter order (`Transformer::for_each_param_mut`: the embeddings, each
    /// block's norms then its linear layers' weight, bias, A and B, the final norm, the head) — the order of the
    /// gradient norm's sum and of checkpoints.
    pub fn tensors(&self) -> impl Iterator<Item = &DevTensor<B>> {
        let blocks = self.blocks.iter().flat_map(|b| {
            let linears = b.linears().flat_map(|l| {
                let lora = l.lora.iter().flat_map(|a| [&a.a, &a.b]);
                std::iter::once(&l.w).chain(l.b.as_ref()).chain(lora)
            });
            let post = b.post_norms.iter().flat_map(|(a, m)| [a, m]);
            let qk = b.qk_norm.iter().flat_map(|(q, k)| [q, k]);
            let delta = b.delta_net.iter().flat_map(DevDeltaNet::tensors);
            let norms = b.attn_norm.iter().chain(&b.mlp_norm).flat_map(DevNorm::tensors);
            norms.chain(post).chain(qk).chain(delta).chain(linears)
        });
        let outer = std::iter::once(&self.embed).chain(self.pos_embed.as_ref());
        outer.chain(blocks).chain(self.final_norm.tensors()).chain(self.lm_head.as_ref())
    }

    pub fn tensors_mut(&mut self) -> impl Iterator<Item = &mut DevTensor<B>> {
        let blocks = self.blocks.iter_mut().flat_map(|b| {
            let norms = b.attn_norm.iter_mut().chain(&mut b.mlp_norm).flat_map(DevNorm::tensors_mut);
            let post = b.post_norms.iter_mut().flat_map(|(a, m)| [a, m]);
            let qk = b.qk_norm.iter_mut().flat_map(|(q, k)| [q, k]);
            let delta = b.delta_net.iter_mut().flat_map(DevDeltaNet::tensors_mut);
            let linears = linears_mut(&mut b.qkv, &mut b.o, &mut b.gate, &mut b.up, &mut b.down).flat_map(|l| {
                let lora = l.lora.iter_mut().flat_map(|a| [&mut a.a, &mut a.b]);
                std::iter::once(&mut l.w).chain(l.b.as_mut()).chain(lora)
            });
            norms.chain(post).chain(qk).chain(delta).chain(linears)
        });
        let outer = std::iter::once(&mut self.embed).chain(self.pos_embed.as_mut());
        outer.chain(blocks).chain(self.final_norm.tensors_mut()).chain(self.lm_head.as_mut())
    }
}

/// A block's linear layers in parameter order (q, k, v or the fused qkv, o, gate, up, down), from its fields (so
/// that the block's norms can be borrowed beside them).
fn linears_mut<'a, B: Backend>(
    qkv: &'a mut [DevLinear<B>],
    o: &'a mut DevLinear<B>,
    gate: &'a mut Option<DevLinear<B>>,
    up: &'a mut DevLinear<B>,
    down: &'a mut DevLinear<B>,
) -> impl Iterator<Item = &'a mut DevLinear<B>> {
    qkv.iter_mut().chain([Some(o), gate.as_mut(), Some(up), Some(down)].into_iter().flatten())
}

/// Slots of a block's linear layers in `LayerBufs::lora` ([`DevBlock::slotted`]): q, k, v (0 to 2; a Gated
/// DeltaNet's four input projections 0 to 3), then these.
pub const SLOT_O: usize = 4;
pub const SLOT_GATE: usize = 5;
pub const SLOT_UP: usize = 6;
pub const SLOT_DOWN: usize = 7;
/// Slots in all.
pub const SLOTS: usize = 8;

impl<B: Backend> DevBlock<B> {
    /// The linear layers in parameter order.
    pub fn linears(&self) -> impl Iterator<Item = &DevLinear<B>> {
        self.slotted().map(|(_, l)| l)
    }

    /// How the MLP makes its activation.
    pub fn mlp(&self) -> Mlp {
        match &self.gate {
            Some(_) => Mlp::Gated,
            None if self.up.out_dim == 2 * self.down.in_dim => Mlp::Fused,
            None => Mlp::Gelu,
        }
    }

    /// Each linear layer with its slot in a layer's LoRA buffers ([`SLOT_O`] and after): q, k, v (or the fused
    /// qkv) from 0, then o, gate, up, down — the same slot whether or not projections are fused.
    pub fn slotted(&self) -> impl Iterator<Item = (usize, &DevLinear<B>)> {
        let rest = [(SLOT_O, Some(&self.o)), (SLOT_GATE, self.gate.as_ref()), (SLOT_UP, Some(&self.up))];
        let rest = rest.into_iter().chain([(SLOT_DOWN, Some(&self.down))]);
        self.qkv.iter().enumerate().chain(rest.filter_map(|(slot, l)| Some((slot, l?))))
    }
}
