//! The tokenizer rebuilt from GGUF tokenizer metadata (`tokenizer_from_gguf_vocab`), from a `GgufVocab` given as
//! JSON (the form of tests/fixtures/gguf_tokenizer), then used on a short text.
#![no_main]
use condlm::formats::gguf::tokenizer::{GgufVocab, tokenizer_from_gguf_vocab};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<GgufVocab>(data) else { return };
    let Ok(tok) = tokenizer_from_gguf_vocab(&v) else { return };
    if let Ok(enc) = tok.encode("Hello, world! 123 <|im_start|>ünï", true) {
        let _ = tok.decode(enc.get_ids(), false);
    }
});
