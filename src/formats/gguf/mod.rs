//! GGUF: the file reader, the llama.cpp block quantizers (the dequantizers are kernels::dequant), a writer, the network config and the
//! tokenizer stored in its metadata.
pub mod config;
pub mod export;
pub mod export_lora;
pub mod export_vocab;
pub mod file;
pub mod modelfile;
pub mod quantize;
pub mod qwen35;
pub mod tokenizer;
mod tokenizer_meta;
mod tokenizer_spm;
pub mod writer;
