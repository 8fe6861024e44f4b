//! A PEFT adapter folder's adapter_config.json, read by `read_adapter_config` from a temporary folder (the
//! function takes a folder, and its reading is another engineer's to change, so it is called as it is).
#![no_main]
use condlm::formats::peft::read_adapter_config;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("a temporary folder")).path();
    std::fs::write(dir.join("adapter_config.json"), data).expect("writing the temporary adapter config");
    let _ = read_adapter_config(dir);
});
