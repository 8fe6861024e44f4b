//! Files in and out: finding a checkpoint (local folder, GGUF file, hub cache), reading safetensors and
//! GGUF tensors under their HF names, building the network from them, and writing HF folders and PEFT
//! adapters back.
pub mod assemble;
pub mod fingerprint;
pub mod gguf;
pub mod hf_export;
pub mod load;
pub mod peft;
pub mod resolve;
pub mod safetensors_files;
pub mod trained_on;
pub mod weights;
