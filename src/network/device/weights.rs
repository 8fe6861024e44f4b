//! The model's tensors on a device: the frozen base as dense f32 (a packed matrix is dequantized on upload),
//! each LoRA adapter's factors with their gradients and AdamW moments. HF names are kept beside the buffers, so
//! errors and downloads name the tensor.
use crate::kernels::backend::Backend;
use crate::network::linear::Linear;
use crate::network::lora::Lora;
use crate::network::param::Param;
use crate::network::transformer::{Block, Transformer};
use anyhow::{Context, Result};

/// A trainable tensor on the device: values, gradient, AdamW's moments.
pub struct Trainable<B: Backend> {
    /// The HF name (the host tensor it mirrors).
    pub name: String,
    pub len: usize,
    /// Whether AdamW's weight decay applies (`train::optim::decays`: matrices).
    pub decays: bool,
    pub w: B::F32,
    pub g: B::F32,
    pub m: B::F32,
    pub v: B::F32,
}

/// A LoRA adapter on the device. A (r, in), B (out, r); each trains when its host tensor does.
pub struct DevLora<B: Backend> {
    pub a: Trainable<B>,
    pub b: Trainable<B>,
    pub a_trains: bool,
    pub b_trains: bool,
    pub rank: usize,
    pub scale: f32,
    pub dropout: f32,
    /// The host adapter's dropout stream: the same masks as the CPU path.
    pub stream: u64,
}

/// y = x·Wᵀ + b + LoRA on the device. W (out, in), frozen.
pub struct DevLinear<B: Backend> {
    pub name: String,
    pub w: B::F32,
    pub b: Option<B::F32>,
    pub lora: Option<DevLora<B>>,
    pub in_dim: usize,
    pub out_dim: usize,
}

/// One block of the Llama family's layout (RMSNorms, q/k/v, o, gate/up/down).
pub struct DevBlock<B: Backend> {
    pub attn_norm: B::F32,
    pub qkv: Vec<DevLinear<B>>,
    pub o: DevLinear<B>,
    pub mlp_norm: B::F32,
    pub gate: DevLinear<B>,
    pub up: DevLinear<B>,
    pub down: DevLinear<B>,
}

pub struct Weights<B: Backend> {
    /// (vocab, hidden)
    pub embed: B::F32,
    pub blocks: Vec<DevBlock<B>>,
    pub final_norm: B::F32,
    /// (vocab, hidden); None when tied to `embed`.
    pub lm_head: Option<B::F32>,
}

/// A host tensor's values (dequantized when packed) in a new device buffer.
fn upload<B: Backend>(be: &B, p: &Param) -> Result<B::F32> {
    let values = p.values();
    let mut buf = be.alloc(values.len()).with_context(|| format!("allocating {} on {}", p.name, be.name()))?;
    be.upload(&mut buf, &values).with_context(|| format!("copying {} to {}", p.name, be.name()))?;
    Ok(buf)
}

fn trainable<B: Backend>(be: &B, p: &Param) -> Result<Trainable<B>> {
    let len = p.data.len();
    Ok(Trainable {
        name: p.name.clone(),
        len,
        decays: p.decays(),
        w: upload(be, p)?,
        g: be.alloc(len)?,
        m: be.alloc(len)?,
        v: be.alloc(len)?,
    })
}

fn lora<B: Backend>(be: &B, l: &Lora) -> Result<DevLora<B>> {
    Ok(DevLora {
        a: trainable(be, &l.a)?,
        b: trainable(be, &l.b)?,
        a_trains: l.a.is_trainable(),
        b_trains: l.b.is_trainable(),
        rank: l.rank,
        scale: l.scale,
        dropout: l.dropout,
        stream: l.dropout_stream(),
    })
}

fn linear<B: Backend>(be: &B, l: &Linear) -> Result<DevLinear<B>> {
    Ok(DevLinear {
        name: l.name.clone(),
        w: upload(be, &l.w)?,
        b: l.b.as_ref().map(|b| upload(be, b)).transpose()?,
        lora: l.lora.as_ref().map(|a| lora(be, a)).transpose()?,
        in_dim: l.in_dim,
        out_dim: l.out_dim,
    })
}

fn block<B: Backend>(be: &B, b: &Block) -> Result<DevBlock<B>> {
    let gate = b.gate.as_ref().expect("checked by network::device::unsupported");
    Ok(DevBlock {
        attn_norm: upload(be, &b.attn_norm.w)?,
        qkv: b.qkv.iter().map(|l| linear(be, l)).collect::<Result<_>>()?,
        o: linear(be, &b.o)?,
        mlp_norm: upload(be, &b.mlp_norm.w)?,
        gate: linear(be, gate)?,
        up: linear(be, &b.up)?,
        down: linear(be, &b.down)?,
    })
}

impl<B: Backend> Weights<B> {
    /// Copies `model` (checked by `network::device::unsupported`) to the device.
    pub fn upload(be: &B, model: &Transformer) -> Result<Self> {
        Ok(Weights {
            embed: upload(be, &model.embed)?,
            blocks: model.blocks.iter().map(|b| block(be, b)).collect::<Result<_>>()?,
            final_norm: upload(be, &model.final_norm.w)?,
            lm_head: model.lm_head.as_ref().map(|h| upload(be, h)).transpose()?,
        })
    }

    /// The LM head (vocab, hidden).
    pub fn head(&self) -> &B::F32 {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Every trainable tensor, in the host model's parameter order (block by block; q, k, v, o, gate, up, down;
    /// A then B) — the order of the gradient norm's sum and of checkpoints.
    pub fn trainables(&self) -> impl Iterator<Item = &Trainable<B>> {
        self.blocks
            .iter()
            .flat_map(|b| b.linears())
            .filter_map(|l| l.lora.as_ref())
            .flat_map(|l| [(l.a_trains, &l.a), (l.b_trains, &l.b)].into_iter().filter(|(t, _)| *t).map(|(_, p)| p))
    }

    pub fn trainables_mut(&mut self) -> impl Iterator<Item = &mut Trainable<B>> {
        self.blocks.iter_mut().flat_map(|b| b.linears_mut()).filter_map(|l| l.lora.as_mut()).flat_map(|l| {
            [(l.a_trains, &mut l.a), (l.b_trains, &mut l.b)].into_iter().filter(|(t, _)| *t).map(|(_, p)| p)
        })
    }
}

impl<B: Backend> DevBlock<B> {
    pub fn linears(&self) -> impl Iterator<Item = &DevLinear<B>> {
        self.qkv.iter().chain([&self.o, &self.gate, &self.up, &self.down])
    }

    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut DevLinear<B>> {
        self.qkv.iter_mut().chain([&mut self.o, &mut self.gate, &mut self.up, &mut self.down])
    }
}
