//! Data files: the whole path from a file's text to encoded examples — JSONL or JSON array, prompt/completion,
//! Alpaca and chat detection (`records::parse_rows`), then encoding with the tiny Qwen2 tokenizer and its chat
//! template (`dataset::encode_rows`); and the plain JSONL objects of `generate --data` and `metrics`
//! (`rows::parse_objects`).
#![no_main]
use condlm::data::dataset::encode_rows;
use condlm::data::records::{Fields, parse_rows};
use condlm::data::rows::{parse_objects, string_field};
use condlm::tokenizer::TextTokenizer;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;

fn tokenizer() -> &'static TextTokenizer {
    static TOK: OnceLock<TextTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-qwen2");
        TextTokenizer::from_hf_dir(&dir, None).expect("the tiny-qwen2 fixture tokenizer loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(rows) = parse_rows(text, "fuzz.jsonl", &Fields::default()) {
        for row in &rows {
            let _ = row.group_key();
        }
        let _ = encode_rows(&rows, tokenizer(), 64);
    }
    let path = Path::new("fuzz.jsonl");
    if let Ok(objects) = parse_objects(text, path, "{\"prompt\": ...}") {
        for (line, obj) in &objects {
            let _ = string_field(obj, "prompt", path, *line);
        }
    }
});
