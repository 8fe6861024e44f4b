//! Checkpoints: configs, weights (safetensors, GGUF), tokenizers, and the transformer forward pass.
pub mod dequant;
pub mod gguf;
pub mod gguf_tokenizer;
