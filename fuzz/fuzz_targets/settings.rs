//! A `train --config` TOML file: `TrainSettings::from_toml_str` (what `from_toml` runs on the file's text), then
//! `validate`.
#![no_main]
use condlm::train::settings::TrainSettings;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(s) = TrainSettings::from_toml_str(text, Path::new("fuzz.toml")) {
        let _ = s.validate();
    }
});
