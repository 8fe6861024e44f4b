//! GGUF: the file reader, the llama.cpp block dequantizers, the network config and the tokenizer stored in
//! its metadata.
pub mod config;
pub mod dequant;
pub mod file;
pub mod tokenizer;
