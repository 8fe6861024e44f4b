//! GGUF: the file reader, the llama.cpp block dequantizers and quantizers, a writer, the network config and the
//! tokenizer stored in its metadata.
pub mod config;
pub mod dequant;
pub mod file;
pub mod quantize;
pub mod tokenizer;
pub mod writer;
