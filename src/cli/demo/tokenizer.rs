//! The demo's tokenizer, built in code: one token per printable ASCII character (a `WordLevel`
//! model over single characters, split by a per-character pre-tokenizer, joined back by a `Fuse`
//! decoder) plus `<|endoftext|>` as EOS and `<unk>`. It is an ordinary `tokenizers::Tokenizer`, saved
//! as `tokenizer.json` with the model, so training, scoring and generation encode exactly alike.
use anyhow::{Result, anyhow};
use condlm::tokenizer::TextTokenizer;
use serde_json::{Map, Value, json};
use tokenizers::Tokenizer;

pub const EOS: &str = "<|endoftext|>";
pub const UNK: &str = "<unk>";

/// Id 0 is EOS, 1 is `<unk>`, then the characters ' ' ..= '~'.
pub fn tokenizer_json() -> Value {
    let mut vocab = Map::new();
    vocab.insert(EOS.into(), json!(0));
    vocab.insert(UNK.into(), json!(1));
    for (i, c) in (' '..='~').enumerate() {
        vocab.insert(c.to_string(), json!(i + 2));
    }
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, EOS), special(1, UNK)],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK},
    })
}

/// `tokenizer_config.json` for the HF folder: EOS named, no BOS.
pub fn tokenizer_config_json(max_positions: usize) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": false,
        "add_eos_token": false,
        "bos_token": null,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": UNK,
        "model_max_length": max_positions,
        "clean_up_tokenization_spaces": false,
    })
}

/// The tokenizer wrapped as condlm uses every tokenizer.
pub fn demo_tokenizer() -> Result<TextTokenizer> {
    let inner: Tokenizer = tokenizer_json()
        .to_string()
        .parse()
        .map_err(|e| anyhow!("cannot build the demo's character tokenizer: {e}"))?;
    TextTokenizer::new(inner, 0, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use condlm::data::example::Example;

    #[test]
    fn one_token_per_character_and_round_trip() {
        let tok = demo_tokenizer().unwrap();
        assert!(tok.prefix.is_empty());
        assert_eq!(tok.vocab_size(), 97);
        let text = "4821: four thousand eight hundred twenty-one";
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids.len(), text.chars().count());
        assert_eq!(tok.decode(&ids).unwrap(), text);
        let e = Example::encode_pair(&tok, "12: ", "twelve").unwrap();
        assert_eq!(e.ids.len(), 4 + 6 + 1);
        assert_eq!(e.ids.last(), Some(&0));
        assert_eq!(e.y_start(), 4);
    }
}
