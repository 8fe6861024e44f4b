//! The key/value cache of incremental decoding: for every layer, the keys and values (after RoPE) of every
//! position generated so far, in `slots` independent sequences of up to `capacity` positions each; and the tokens
//! at those positions (LongRoPE reruns a sequence that outgrows its original context).
//!
//! Layout, per layer and for K and V alike: `[slot][kv_head][position][head_dim]`, so the positions a query head
//! attends to are one contiguous run. Everything is allocated once, in [`KvCache::new`]; decoding only writes
//! into it.

use super::config::Config;
use super::delta_net::DeltaNetState;
use crate::kernels::kv_attention::KvLayer;

/// Preallocated keys and values of `slots` sequences × `capacity` positions for every attention layer.
pub struct KvCache {
    /// Layers with keys and values (a Gated DeltaNet layer has a state instead).
    pub layers: usize,
    /// Each model layer's place among them (`usize::MAX` for a Gated DeltaNet layer); empty: the same index.
    kv_index: Vec<usize>,
    pub slots: usize,
    pub capacity: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    /// (slots, capacity)
    tokens: Vec<u32>,
    /// Each layer's Gated DeltaNet state (Qwen3.5's linear-attention layers), None for attention layers.
    delta_net: Vec<Option<DeltaNetState>>,
}

impl KvCache {
    pub fn new(layers: usize, slots: usize, capacity: usize, kv_heads: usize, head_dim: usize) -> Self {
        let len = layers * slots * kv_heads * capacity * head_dim;
        let tokens = vec![0; slots * capacity];
        let (k, v, delta_net) = (vec![0.0; len], vec![0.0; len], vec![]);
        KvCache { layers, kv_index: vec![], slots, capacity, kv_heads, head_dim, k, v, tokens, delta_net }
    }

    /// A cache for `c`'s layers: keys and values of its attention layers, and the decoding state of its Gated
    /// DeltaNet layers.
    pub fn for_model(c: &Config, slots: usize, capacity: usize) -> Self {
        let attention = (0..c.num_layers).filter(|&i| !c.is_linear_layer(i)).count();
        let mut cache = KvCache::new(attention, slots, capacity, c.num_kv_heads, c.head_dim);
        let mut seen = 0;
        cache.kv_index = (0..c.num_layers)
            .map(|i| {
                if c.is_linear_layer(i) {
                    return usize::MAX;
                }
                seen += 1;
                seen - 1
            })
            .collect();
        cache.delta_net = (0..c.num_layers)
            .map(|i| c.delta_net.filter(|_| c.is_linear_layer(i)).map(|s| DeltaNetState::new(s, slots)))
            .collect();
        cache
    }

    /// Model layer `layer`'s place among the layers with keys and values.
    fn kv_layer(&self, layer: usize) -> usize {
        let l = self.kv_index.get(layer).copied().unwrap_or(layer);
        assert!(l < self.layers, "KV cache: layer {layer} has no keys and values");
        l
    }

    /// Linear-attention layer `layer`'s decoding state.
    pub fn delta_net(&mut self, layer: usize) -> &mut DeltaNetState {
        self.delta_net[layer].as_mut().expect("a Gated DeltaNet layer has a decoding state in its model's cache")
    }

    /// Floats of one (layer, slot): kv_heads × capacity × head_dim.
    fn slot_len(&self) -> usize {
        self.kv_heads * self.capacity * self.head_dim
    }

    /// Offset of (layer, slot, kv_head, pos).
    fn offset(&self, layer: usize, slot: usize, kv_head: usize, pos: usize) -> usize {
        ((layer * self.slots + slot) * self.kv_heads + kv_head) * self.capacity * self.head_dim + pos * self.head_dim
    }

    /// Keys and values of one layer (all slots), to read.
    pub fn layer(&self, layer: usize) -> KvLayer<'_> {
        let layer = self.kv_layer(layer);
        let n = self.slots * self.slot_len();
        KvLayer {
            k: &self.k[layer * n..][..n],
            v: &self.v[layer * n..][..n],
            kv_heads: self.kv_heads,
            capacity: self.capacity,
            head_dim: self.head_dim,
        }
    }

    /// Stores the key and value of one position: `k` and `v` hold kv_heads × head_dim values each.
    pub fn write(&mut self, layer: usize, slot: usize, pos: usize, k: &[f32], v: &[f32]) {
        assert!(slot < self.slots && pos < self.capacity, "KV cache: slot {slot} / position {pos} out of range");
        let (hd, layer) = (self.head_dim, self.kv_layer(layer));
        for h in 0..self.kv_heads {
            let at = self.offset(layer, slot, h, pos);
            self.k[at..at + hd].copy_from_slice(&k[h * hd..][..hd]);
            self.v[at..at + hd].copy_from_slice(&v[h * hd..][..hd]);
        }
    }

    /// Records the token at (slot, pos).
    pub fn write_token(&mut self, slot: usize, pos: usize, token: u32) {
        assert!(slot < self.slots && pos < self.capacity, "KV cache: slot {slot} / position {pos} out of range");
        self.tokens[slot * self.capacity + pos] = token;
    }

    /// The token recorded at (slot, pos).
    pub fn token(&self, slot: usize, pos: usize) -> u32 {
        self.tokens[slot * self.capacity + pos]
    }

    /// Copies positions `0..len` of slot `from` into slot `to`, in every layer, tokens too (beam search reordering).
    pub fn copy_slot(&mut self, from: usize, to: usize, len: usize) {
        if from == to || len == 0 {
            return;
        }
        let (hd, cap) = (self.head_dim, self.capacity);
        self.tokens.copy_within(from * cap..from * cap + len, to * cap);
        for state in self.delta_net.iter_mut().flatten() {
            state.copy_slot(from, to, len);
        }
        for l in 0..self.layers {
            for h in 0..self.kv_heads {
                let (src, dst) = (self.offset(l, from, h, 0), self.offset(l, to, h, 0));
                self.k.copy_within(src..src + len * hd, dst);
                self.v.copy_within(src..src + len * hd, dst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_and_copy_slot() {
        let mut c = KvCache::new(2, 3, 4, 2, 3);
        let k: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let v: Vec<f32> = (0..6).map(|i| -(i as f32)).collect();
        c.write(1, 2, 1, &k, &v);
        c.write_token(2, 1, 8);
        let at = c.offset(1, 2, 1, 1);
        let (lk, lv) = (c.layer(1).k, c.layer(1).v);
        let base = c.offset(1, 0, 0, 0);
        assert_eq!(&lk[at - base..][..3], &[3.0, 4.0, 5.0]);
        assert_eq!(&lv[at - base..][..3], &[-3.0, -4.0, -5.0]);
        c.copy_slot(2, 0, 2);
        assert_eq!(c.token(0, 1), 8);
        let at0 = c.offset(1, 0, 1, 1);
        assert_eq!(&c.layer(1).k[at0 - base..][..3], &[3.0, 4.0, 5.0]);
        // Layer 0 untouched.
        assert!(c.layer(0).k.iter().all(|&x| x == 0.0));
    }
}
