//! Checkpoints: configs, weights (safetensors, GGUF), tokenizers, and the transformer forward pass.
pub mod checkpoint;
pub mod config;
pub mod dequant;
pub mod export;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod linear;
pub mod loader;
pub mod param;
pub mod resolve;
pub mod safetensors_files;
pub mod tokenizer;
pub mod transformer;
pub mod weights;
