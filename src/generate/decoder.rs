//! Incremental decoding over a KV cache. A prompt's prefill is its tokens as rows (slot, position, token) at
//! positions 0..len; a decode step is one row per sequence. Both go through [`Decoder::forward`], and rows of
//! different slots (prefills of new prompts and decode steps of running ones) can share one call.
//!
//! The rows run through the network's one forward pass ([`Transformer::forward_cached`]: the same block code
//! as training and scoring, attention over the cache instead of within a packed batch; LoRA adapters unmerged,
//! no dropout); then the LM head runs on the rows whose logits are asked for. Up to 16 rows, the linear layers
//! and the head use the matrix-vector kernel (`kernels::matvec`); a prompt's prefill attends through GEMM tiles
//! (`kernels::kv_attention`).
//!
//! The cache is allocated in [`Decoder::new`]; the other buffers grow to the largest call once. After that a
//! call allocates nothing (checked by a test with a counting allocator).
use crate::kernels::backend::Backend;
use crate::kernels::backend::host::Host;
use crate::kernels::mat::{Mat, MatMut};
use crate::network::activations::Activations;
use crate::network::batch::Row;
use crate::network::device::{DeviceModel, Placement, open_gpu};
use crate::network::kv_cache::KvCache;
use crate::network::transformer::Transformer;
use anyhow::{Result, bail};

/// The model on a device, decoding (`generate --device cuda`): its own KV cache, the same rows and logits.
pub trait DeviceDecode {
    /// Allocates the cache: `slots` sequences of `capacity` positions.
    fn start(&mut self, slots: usize, capacity: usize) -> Result<()>;
    /// As [`Decoder::forward`], the logits into `out` (logit_rows.len(), vocab).
    fn decode(&mut self, rows: &[Row], logit_rows: &[usize], out: &mut [f32]) -> Result<()>;
    /// As `KvCache::copy_slot`.
    fn copy_slot(&mut self, from: usize, to: usize, len: usize) -> Result<()>;
}

impl<B: Backend> DeviceDecode for DeviceModel<B> {
    fn start(&mut self, slots: usize, capacity: usize) -> Result<()> {
        self.start_decoding(slots, capacity)
    }

    fn decode(&mut self, rows: &[Row], logit_rows: &[usize], out: &mut [f32]) -> Result<()> {
        DeviceModel::decode(self, rows, logit_rows, out)
    }

    fn copy_slot(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        DeviceModel::copy_slot(self, from, to, len)
    }
}

pub struct Decoder<'m> {
    model: &'m Transformer,
    /// The CPU path's cache (empty when a device decodes).
    pub cache: KvCache,
    device: Option<Box<dyn DeviceDecode + 'm>>,
    max_rows: usize,
    acts: Activations,
    /// Final-normed hidden states of the logit rows (slots, d), and their logits (slots, vocab).
    head_x: Vec<f32>,
    logits: Vec<f32>,
}

impl<'m> Decoder<'m> {
    /// A decoder with a cache of `slots` sequences × `capacity` positions, running at most `max_rows` rows
    /// per call. `capacity` may not exceed the model's context window.
    pub fn new(model: &'m Transformer, slots: usize, capacity: usize, max_rows: usize) -> Result<Self> {
        Self::on(model, slots, capacity, max_rows, Placement::Cpu)
    }

    /// [`Self::new`] on `placement`: the CPU path, or the model on a device with its cache there.
    pub fn on(
        model: &'m Transformer,
        slots: usize,
        capacity: usize,
        max_rows: usize,
        placement: Placement,
    ) -> Result<Self> {
        let c = &model.config;
        if capacity > c.max_positions {
            bail!("a KV cache of {capacity} positions exceeds the model's context window of {}", c.max_positions);
        }
        if slots == 0 || capacity == 0 || max_rows == 0 {
            bail!("a decoder needs at least one slot, one position and one row");
        }
        let device: Option<Box<dyn DeviceDecode + 'm>> = match placement {
            Placement::Cpu => None,
            Placement::Cuda(ordinal) => Some(Box::new(open_gpu(ordinal, model)?)),
            Placement::Reference => Some(Box::new(DeviceModel::new(Host, model)?)),
        };
        let cache = match &device {
            None => KvCache::for_model(c, slots, capacity),
            Some(_) => KvCache::new(c.num_layers, slots, capacity, 0, 0),
        };
        let mut dec = Decoder {
            model,
            cache,
            device,
            max_rows,
            acts: Activations::default(),
            head_x: vec![0.0; slots * c.hidden_size],
            logits: vec![0.0; slots * c.vocab_size],
        };
        if let Some(d) = &mut dec.device {
            d.start(slots, capacity)?;
        }
        Ok(dec)
    }

    /// Copies positions 0..len of cache slot `from` into slot `to` (beam search reordering).
    pub fn copy_slot(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        match &mut self.device {
            Some(d) => d.copy_slot(from, to, len),
            None => {
                self.cache.copy_slot(from, to, len);
                Ok(())
            }
        }
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
        let model = self.model;
        if let Some(d) = &mut self.device {
            let n = logit_rows.len() * model.config.vocab_size;
            d.decode(rows, logit_rows, &mut self.logits[..n])?;
            return Ok(&self.logits[..n]);
        }
        model.forward_cached(rows, &mut self.cache, &mut self.acts);
        let (d, v, k) = (model.config.hidden_size, model.config.vocab_size, logit_rows.len());
        for (dst, &r) in self.head_x.chunks_exact_mut(d).zip(logit_rows) {
            dst.copy_from_slice(&self.acts.x[r * d..][..d]);
        }
        let logits = MatMut::new(&mut self.logits[..k * v], k, v);
        model.head().matmul_wt(logits, Mat::new(&self.head_x[..k * d], k, d), false);
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
