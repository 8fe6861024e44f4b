//! The network: a decoder-only transformer as named parameters (HF names kept, so checkpoints and PEFT keys
//! map without tables), LoRA adapters on its linear layers, and the one forward pass that training, scoring
//! and decoding share (with its backward beside it).
pub mod activations;
pub mod adapters;
pub mod batch;
pub mod config;
pub mod delta_net;
pub mod device;
pub mod kv_cache;
pub mod linear;
pub mod llama3_rope;
pub mod lora;
pub mod param;
pub mod transformer;
pub mod yarn_rope;
