//! The KV cache on a device: per layer, K and V laid out `[slot][kv_head][position][head_dim]` as
//! `network::kv_cache::KvCache`, allocated once for `slots` sequences of `capacity` positions; and, on the host, the
//! token at each slot and position (LongRoPE runs a sequence that outgrows its short set again from them).
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
    /// The token at each (slot, position) decoded so far, (slots, capacity).
    tokens: Vec<u32>,
}

impl<B: Backend> DevKvCache<B> {
    pub fn new(be: &B, c: &Config, slots: usize, capacity: usize) -> Result<Self> {
        let len = slots * c.num_kv_heads * capacity * c.head_dim;
        let layers = (0..c.num_layers).map(|_| Ok((be.alloc(len)?, be.alloc(len)?))).collect::<Result<_>>()?;
        let tokens = vec![0; slots * capacity];
        Ok(DevKvCache { slots, capacity, layers, kv_heads: c.num_kv_heads, head_dim: c.head_dim, tokens })
    }

    /// Notes that `token` is at `pos` of `slot` (its k and v are being stored there).
    pub fn write_token(&mut self, slot: u32, pos: u32, token: u32) {
        self.tokens[slot as usize * self.capacity + pos as usize] = token;
    }

    /// The token at `pos` of `slot`.
    pub fn token(&self, slot: u32, pos: usize) -> u32 {
        self.tokens[slot as usize * self.capacity + pos]
    }

    /// Positions 0..len of slot `from` copied into slot `to` in every layer, tokens too (beam search reordering).
    pub fn copy_slot(&mut self, be: &B, from: usize, to: usize, len: usize) -> Result<()> {
        if from == to || len == 0 {
            return Ok(());
        }
        let (hd, cap) = (self.head_dim, self.capacity);
        self.tokens.copy_within(from * cap..from * cap + len, to * cap);
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
