//! A GGUF file: header, metadata, tensor infos (`GgufFile::from_bytes`, what `GgufFile::open` runs on the memory
//! map), then every tensor dequantized, the network config read from the metadata, and the metadata rendered as
//! `condlm info` shows it.
#![no_main]
use condlm::formats::gguf::config::config_from_gguf;
use condlm::formats::gguf::file::GgufFile;
use condlm::input::FileBytes;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.gguf");
    let Ok(g) = GgufFile::from_bytes(path, FileBytes::Owned(data.to_vec())) else { return };
    for t in &g.tensors {
        let _ = g.tensor_f32(&t.name);
    }
    let _ = config_from_gguf(&g, path);
    for v in g.metadata.values() {
        let _ = v.to_string();
    }
});
