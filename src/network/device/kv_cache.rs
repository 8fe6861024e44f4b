//! The KV cache on a device: per attention layer, K and V laid out `[slot][kv_head][position][head_dim]` as
//! `network::kv_cache::KvCache`, allocated once for `slots` sequences of `capacity` positions; per Gated DeltaNet
//! layer (Qwen3.5), each slot's convolution rows and recurrent state (`network::delta_net::DeltaNetState`); and, on
//! the host, the token at each slot and position (LongRoPE runs a sequence that outgrows its short set again from
//! them).
use crate::kernels::backend::Backend;
use crate::network::config::Config;
use anyhow::Result;

/// One layer's decoding state.
pub enum LayerCache<B: Backend> {
    /// An attention layer's keys and values.
    Attention { k: B::F32, v: B::F32 },
    /// A Gated DeltaNet layer's last K−1 convolution input rows (slots, K−1, conv_dim) and states (slots, v_heads,
    /// dk·dv): a slot's whole history, reset by a row at position 0.
    Recurrent { conv: B::F32, state: B::F32 },
}

pub struct DevKvCache<B: Backend> {
    pub slots: usize,
    pub capacity: usize,
    pub layers: Vec<LayerCache<B>>,
    kv_heads: usize,
    head_dim: usize,
    /// A recurrent layer's values per slot: convolution rows, state.
    conv_len: usize,
    state_len: usize,
    /// The token at each (slot, position) decoded so far, (slots, capacity).
    tokens: Vec<u32>,
}

impl<B: Backend> DevKvCache<B> {
    pub fn new(be: &B, c: &Config, slots: usize, capacity: usize) -> Result<Self> {
        let len = slots * c.num_kv_heads * capacity * c.head_dim;
        let (conv_len, state_len) = c
            .delta_net
            .map_or((0, 0), |s| ((s.conv_kernel - 1) * s.conv_dim(), s.v_heads * s.k_head_dim * s.v_head_dim));
        let layer = |i: usize| -> Result<LayerCache<B>> {
            Ok(match c.is_linear_layer(i) {
                true => {
                    LayerCache::Recurrent { conv: be.alloc(slots * conv_len)?, state: be.alloc(slots * state_len)? }
                }
                false => LayerCache::Attention { k: be.alloc(len)?, v: be.alloc(len)? },
            })
        };
        let layers = (0..c.num_layers).map(layer).collect::<Result<_>>()?;
        let (kv_heads, head_dim, tokens) = (c.num_kv_heads, c.head_dim, vec![0; slots * capacity]);
        Ok(DevKvCache { slots, capacity, layers, kv_heads, head_dim, conv_len, state_len, tokens })
    }

    /// Notes that `token` is at `pos` of `slot` (its k and v are being stored there).
    pub fn write_token(&mut self, slot: u32, pos: u32, token: u32) {
        self.tokens[slot as usize * self.capacity + pos as usize] = token;
    }

    /// The token at `pos` of `slot`.
    pub fn token(&self, slot: u32, pos: usize) -> u32 {
        self.tokens[slot as usize * self.capacity + pos]
    }

    /// Positions 0..len of slot `from` copied into slot `to` in every layer, tokens too (beam search reordering); a
    /// recurrent layer's state, which holds all of a slot's positions, copied whole.
    pub fn copy_slot(&mut self, be: &B, from: usize, to: usize, len: usize) -> Result<()> {
        if from == to || len == 0 {
            return Ok(());
        }
        let (hd, cap) = (self.head_dim, self.capacity);
        self.tokens.copy_within(from * cap..from * cap + len, to * cap);
        for layer in &mut self.layers {
            match layer {
                LayerCache::Attention { k, v } => {
                    for h in 0..self.kv_heads {
                        let at = |slot: usize| (slot * self.kv_heads + h) * cap * hd;
                        be.copy_within(k, at(from), at(to), len * hd)?;
                        be.copy_within(v, at(from), at(to), len * hd)?;
                    }
                }
                LayerCache::Recurrent { conv, state } => {
                    for (buf, per_slot) in [(conv, self.conv_len), (state, self.state_len)] {
                        be.copy_within(buf, from * per_slot, to * per_slot, per_slot)?;
                    }
                }
            }
        }
        Ok(())
    }
}
