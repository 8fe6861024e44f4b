//! The network: a decoder-only transformer as named parameters (HF names kept, so checkpoints and PEFT keys
//! map without tables), LoRA adapters on its linear layers, and the one forward pass that training, scoring
//! and decoding share (with its backward beside it).
pub mod adapters;
pub mod batch;
pub mod config;
pub mod kv_cache;
pub mod linear;
pub mod lora;
pub mod param;
pub mod transformer;

/// Grows a reusable buffer to at least `n` values (never shrinks): buffers reach their largest size once and
/// are reused after that.
pub(crate) fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}
