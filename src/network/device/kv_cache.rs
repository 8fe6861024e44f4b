//! The KV cache on a device: per layer, K and V laid out `[slot][kv_head][position][head_dim]` as
//! `network::kv_cache::KvCache`, allocated once for `slots` sequences of `capacity` positions.
use crate::kernels::backend::Backend;
use crate::network::config::Config;
use anyhow::Result;

pub struct DevKvCache<B: Backend> {
    pub slots: usize,
    pub capacity: usize,
    /// (K, V) of every layer.
    pub layers: Vec<(B::F32, B::F32)>,
    kv_heads: usize,
    head_dim: usize,
}

impl<B: Backend> DevKvCache<B> {
    pub fn new(be: &B, c: &Config, slots: usize, capacity: usize) -> Result<Self> {
        let len = slots * c.num_kv_heads * capacity * c.head_dim;
        let layers = (0..c.num_layers).map(|_| Ok((be.alloc(len)?, be.alloc(len)?))).collect::<Result<_>>()?;
        Ok(DevKvCache { slots, capacity, layers, kv_heads: c.num_kv_heads, head_dim: c.head_dim })
    }

    /// Positions 0..len of slot `from` copied into slot `to` in every layer (beam search reordering).
    pub fn copy_slot(&mut self, be: &B, from: usize, to: usize, len: usize) -> Result<()> {
        if from == to || len == 0 {
            return Ok(());
        }
        let (hd, cap) = (self.head_dim, self.capacity);
        for (k, v) in &mut self.layers {
            for h in 0..self.kv_heads {
                let at = |slot: usize| (slot * self.kv_heads + h) * cap * hd;
                be.copy_within(k, at(from), at(to), len * hd)?;
                be.copy_within(v, at(from), at(to), len * hd)?;
            }
        }
        Ok(())
    }
}
