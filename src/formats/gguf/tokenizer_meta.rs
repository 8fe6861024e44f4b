//! The tokenizer metadata of a GGUF file ([`GgufVocab`], llama.cpp's `tokenizer.ggml.*` keys) and what
//! every tokenizer kind builds from it the same way, as transformers does: the checked special-token ids,
//! the added tokens, the BOS/EOS post-processor and the merges a file lists. The kinds themselves are
//! `tokenizer.rs` (byte-level BPE, and the entry point) and `tokenizer_spm.rs` (SentencePiece).
use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::Vocab;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The tokenizer metadata of a GGUF file, as plain data (the `tokenizer.ggml.*` keys).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`, e.g. "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// `general.architecture`: picks the SentencePiece flavour (Gemma, Phi-3, Llama), as transformers does.
    pub arch: Option<String>,
    /// `tokenizer.ggml.pre`, e.g. "smollm", "gpt2", "llama-bpe", "qwen2", "default".
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`; a token's id is its position.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte); may be empty.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores` (SentencePiece: the merge order); may be empty.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.merges`, each "left right", best first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
}

/// The special tokens named by `tokenizer.ggml.*_token_id` (key, id), after checking the vocabulary's size,
/// its token types and that every named id is a token.
pub(super) fn named_tokens(v: &GgufVocab) -> Result<[(&'static str, Option<u32>); 4]> {
    let n = v.tokens.len();
    ensure!(n > 0, "tokenizer.ggml.tokens is empty");
    ensure!(u32::try_from(n).is_ok(), "tokenizer.ggml.tokens has {n} entries, more than a u32 id can address");
    ensure!(
        v.token_types.is_empty() || v.token_types.len() == n,
        "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
        v.token_types.len()
    );
    let named = [
        ("tokenizer.ggml.bos_token_id", v.bos_id),
        ("tokenizer.ggml.eos_token_id", v.eos_id),
        ("tokenizer.ggml.unknown_token_id", v.unk_id),
        ("tokenizer.ggml.padding_token_id", v.pad_id),
    ];
    for (key, id) in named {
        if let Some(id) = id {
            ensure!((id as usize) < n, "{key} = {id} is out of range: tokenizer.ggml.tokens has {n} entries");
        }
    }
    Ok(named)
}

/// Token `i`'s type (NORMAL when the file gives none).
pub(super) fn token_type_of(v: &GgufVocab, i: usize) -> i32 {
    v.token_types.get(i).copied().unwrap_or(token_type::NORMAL)
}

/// `tokenizer.ggml.merges` as (left, right) pairs, rank = position; each side and their join must be tokens.
pub(super) fn bpe_merges(v: &GgufVocab, vocab: &Vocab) -> Result<Vec<(String, String)>> {
    let mut merges = Vec::with_capacity(v.merges.len());
    for (rank, merge) in v.merges.iter().enumerate() {
        let (a, b) = match merge.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => (a, b),
            _ => bail!("tokenizer.ggml.merges[{rank}] = {merge:?} is not two tokens separated by one space"),
        };
        for part in [a, b] {
            ensure!(
                vocab.contains_key(part),
                "tokenizer.ggml.merges[{rank}] = {merge:?} refers to {part:?}, \
                 which is not in tokenizer.ggml.tokens"
            );
        }
        let joined = format!("{a}{b}");
        ensure!(
            vocab.contains_key(&joined),
            "tokenizer.ggml.merges[{rank}] = {merge:?} produces {joined:?}, \
             which is not in tokenizer.ggml.tokens"
        );
        merges.push((a.to_string(), b.to_string()));
    }
    Ok(merges)
}

/// Added tokens, in transformers' order: control tokens (special), user-defined tokens (not special; only
/// those `in_vocab` says the model can look up), then the tokens of `named_ids` not added yet (special).
pub(super) fn add_special_tokens(
    tokenizer: &mut Tokenizer,
    v: &GgufVocab,
    named_ids: &[u32],
    in_vocab: impl Fn(&str) -> bool,
) -> Result<()> {
    let of_type = |ty: i32, special: bool| -> Vec<AddedToken> {
        (0..v.tokens.len())
            .filter(|&i| token_type_of(v, i) == ty && (ty != token_type::USER_DEFINED || in_vocab(&v.tokens[i])))
            .map(|i| AddedToken::from(v.tokens[i].clone(), special).normalized(false))
            .collect()
    };
    tokenizer
        .add_special_tokens(of_type(token_type::CONTROL, true))
        .map_err(|e| anyhow!("adding the CONTROL tokens of tokenizer.ggml.token_type: {e}"))?;
    tokenizer
        .add_tokens(of_type(token_type::USER_DEFINED, false))
        .map_err(|e| anyhow!("adding the USER_DEFINED tokens of tokenizer.ggml.token_type: {e}"))?;
    let already: HashSet<String> = tokenizer.get_added_tokens_decoder().into_values().map(|t| t.content).collect();
    let mut named_tokens: Vec<AddedToken> = Vec::new();
    for &id in named_ids {
        let content = &v.tokens[id as usize];
        if !already.contains(content) && !named_tokens.iter().any(|t| &t.content == content) {
            named_tokens.push(AddedToken::from(content.clone(), true).normalized(false));
        }
    }
    tokenizer
        .add_special_tokens(named_tokens)
        .map_err(|e| anyhow!("adding the tokens named by tokenizer.ggml.*_token_id: {e}"))?;
    // Adding a token whose text is in the vocabulary reuses that id; anything else would be a new
    // id past the embedding matrix, which we never want.
    ensure!(
        tokenizer.get_vocab_size(true) == tokenizer.get_vocab_size(false),
        "internal error: an added token got an id past tokenizer.ggml.tokens"
    );
    Ok(())
}

/// transformers' `update_post_processor`: `[BOS]:0 $A:0 [EOS]:0` and, for pairs, that followed by
/// `[BOS]:1 $B:1 [EOS]:1`. Built through serde so token texts with spaces or colons are safe.
pub(super) fn template(v: &GgufVocab, bos: Option<u32>, eos: Option<u32>) -> Result<TemplateProcessing> {
    let special =
        |id: u32, type_id: u32| serde_json::json!({"SpecialToken": {"id": v.tokens[id as usize], "type_id": type_id}});
    let sequence = |seq: &str, type_id: u32| serde_json::json!({"Sequence": {"id": seq, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    for (seq, type_id) in [("A", 0u32), ("B", 1u32)] {
        let mut part = Vec::new();
        if let Some(id) = bos {
            part.push(special(id, type_id));
        }
        part.push(sequence(seq, type_id));
        if let Some(id) = eos {
            part.push(special(id, type_id));
        }
        if seq == "A" {
            single = part.clone();
        }
        pair.extend(part);
    }
    let mut special_tokens = HashMap::new();
    for id in [bos, eos].into_iter().flatten() {
        let text = &v.tokens[id as usize];
        special_tokens.insert(text.clone(), serde_json::json!({"id": text, "ids": [id], "tokens": [text]}));
    }
    let json = serde_json::json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": special_tokens,
    });
    serde_json::from_value(json).context("building the BOS/EOS post-processor")
}
