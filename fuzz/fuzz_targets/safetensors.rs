//! A safetensors weights file as condlm reads it (`SafetensorsFiles::from_bytes`, what `open` runs on each
//! memory-mapped shard), then every tensor converted to f32 and the listing `condlm info` prints.
#![no_main]
use condlm::formats::safetensors_files::SafetensorsFiles;
use condlm::input::FileBytes;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(st) = SafetensorsFiles::from_bytes(Path::new("model.safetensors"), FileBytes::Owned(data.to_vec())) else {
        return;
    };
    let names: Vec<String> = st.names().map(str::to_owned).collect();
    for name in names {
        let _ = st.load_f32(&name);
    }
    let _ = st.summaries();
});
