//! A `tokenizers::Tokenizer` rebuilt from the tokenizer metadata of a GGUF file.
//!
//! A GGUF carries no `tokenizer.json`: it stores the vocabulary, the merges, the token types and the
//! special token ids under llama.cpp's `tokenizer.ggml.*` keys. This module turns that data (already
//! parsed, see [`GgufVocab`]) into a tokenizer whose ids are identical to what transformers gives for
//! the same file (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, transformers 5.x,
//! `transformers/integrations/gguf/gguf_tokenizer_mapping.py`), which is the reference the tests check
//! against (`tests/gguf_tokenizer.rs`, fixtures written by `tests/fixtures/make_tokenizer_fixtures.py`).
//!
//! What transformers builds for `tokenizer.ggml.model = "gpt2"` (byte-level BPE), and so what we build:
//! - model: BPE over `tokenizer.ggml.tokens` (id = position) and `tokenizer.ggml.merges` (rank =
//!   position), no unk token, no dropout, no byte fallback. A token that is not spelled in the
//!   byte-level alphabet is re-spelled into it (its UTF-8 bytes mapped through GPT-2's
//!   `bytes_to_unicode`), see the exception for special tokens below.
//! - no normalizer.
//! - pre-tokenizer: for the `tokenizer.ggml.pre` values in [`split_regex_for_pre`] (Llama 3, Qwen2,
//!   Qwen3.5, Tekken, GPT-4o families) `Sequence[Split(regex, Isolated), ByteLevel(add_prefix_space =
//!   false, use_regex = false)]`; for every other value (including "gpt2", "smollm", "default",
//!   "starcoder", a missing key, an unknown name) plain `ByteLevel(add_prefix_space = false,
//!   use_regex = true)`, i.e. the GPT-2 regex.
//! - added tokens: CONTROL tokens (type 3) as special tokens, USER_DEFINED tokens (type 4) as plain
//!   (non-special) added tokens, and the tokens named by `bos/eos/unknown/padding_token_id` as
//!   special tokens; all with `normalized = false`, no strip, so "<|im_start|>" in text is one id.
//! - post-processor: `TemplateProcessing` `[BOS] $A [EOS]` / `[BOS] $A [EOS] [BOS] $B [EOS]` (type
//!   ids 0 for the first sequence, 1 for the second), BOS only when `tokenizer.ggml.add_bos_token` is
//!   true, EOS only when `tokenizer.ggml.add_eos_token` is true; a missing key means false.
//! - decoder: ByteLevel.
//!
//! Where llama.cpp itself differs (it does not matter for ids against transformers, but explains why
//! llama.cpp may tokenize a few strings differently from us):
//! - "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva": llama.cpp first
//!   splits every digit on its own (`\p{N}`) and then applies the GPT-2 regex; transformers uses the
//!   GPT-2 regex alone (the original SmolLM tokenizer.json also splits digits individually). For
//!   SmolLM2's real vocabulary this makes no difference because its merges never join a digit to
//!   anything, so the BPE ends at single digits either way.
//! - "gpt2", "mpt", "olmo", "jais": llama.cpp's GPT-2 regex lacks the trailing `|\s+` alternative
//!   that the `tokenizers` ByteLevel regex has (whitespace at the very end of a string).
//! - "default" (a BPE file without a known pre type): llama.cpp runs four regexes (punctuation runs,
//!   the GPT-2 regex, digit runs, 3-digit groups); transformers uses plain ByteLevel.
//! - "llama-bpe"/"llama3" and "qwen2": llama.cpp uses the same regexes (with the `(?i:...)`
//!   contraction group spelled out as character classes). The original Qwen2 tokenizer.json also has
//!   an NFC normalizer, which neither llama.cpp nor transformers' GGUF path applies.
//!
//! One deliberate difference from transformers: a CONTROL or USER_DEFINED token, or the token named by
//! a `*_token_id` key, that is not spelled in the byte-level alphabet (DeepSeek's
//! "<｜begin▁of▁sentence｜>", whitespace-run tokens) is kept verbatim at its own id and matched in
//! text, as llama.cpp and the model's original tokenizer.json do. transformers instead re-spells it,
//! drops it from the special tokens, and (for a named special token) adds the verbatim string again
//! under a new id past the end of the embedding matrix. Every in-alphabet token, which is every
//! special token of GPT-2, Llama 3, Qwen2 and SmolLM files, is treated exactly as transformers does.
//!
//! `tokenizer.ggml.model = "llama"` (SentencePiece) is built in [`super::tokenizer_spm`]; other models
//! ("t5", "bert", "gemma4", ...) are refused.

use std::collections::HashSet;

use anyhow::{Result, anyhow, bail};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

pub use super::tokenizer_meta::{GgufVocab, token_type};
use super::tokenizer_meta::{add_special_tokens, bpe_merges, named_tokens, template, token_type_of};

/// The split regex transformers puts in front of `ByteLevel` for a `tokenizer.ggml.pre` value, or
/// `None` when it uses plain `ByteLevel` (GPT-2 regex). Copied from transformers'
/// `GGUF_PRE_TOKENIZER_SPLITS` (transformers 5.x).
pub fn split_regex_for_pre(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = concat!(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    const QWEN2: &str = concat!(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}",
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    const QWEN35: &str = concat!(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}",
        r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    const TEKKEN: &str = concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    const GPT4O: &str = concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3,
        "tekken" => TEKKEN,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2,
        "qwen35" => QWEN35,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O,
        _ => return None,
    })
}

/// GPT-2's `bytes_to_unicode`: the printable character each byte is spelled with in a byte-level
/// vocabulary.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("valid code point");
            next += 1;
            c
        };
    }
    table
}

/// Builds the tokenizer transformers would build from this GGUF tokenizer metadata.
pub fn tokenizer_from_gguf_vocab(v: &GgufVocab) -> Result<Tokenizer> {
    match v.model.as_str() {
        "gpt2" => byte_level_bpe(v),
        "llama" => super::tokenizer_spm::sentencepiece(v),
        "" => bail!("tokenizer.ggml.model is missing or empty"),
        other => bail!(
            "tokenizer.ggml.model = {other:?} is not supported; only \"gpt2\" (byte-level BPE) and \"llama\" \
             (SentencePiece) are"
        ),
    }
}

fn byte_level_bpe(v: &GgufVocab) -> Result<Tokenizer> {
    let named = named_tokens(v)?;
    let vocab = byte_level_vocab(v, &named);
    let merges = bpe_merges(v, &vocab)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(false)
        .build()
        .map_err(|e| anyhow!("building the BPE model from tokenizer.ggml.tokens/merges: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(v.pre.as_deref())?));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));
    let named_ids: Vec<u32> = named.iter().filter_map(|(_, id)| *id).collect();
    // Every user-defined token is in the vocabulary: out-of-alphabet ones are kept verbatim.
    add_special_tokens(&mut tokenizer, v, &named_ids, |_| true)?;
    // transformers silently drops add_bos/add_eos when there is no such token.
    let bos = v.bos_id.filter(|_| v.add_bos.unwrap_or(false));
    let eos = v.eos_id.filter(|_| v.add_eos.unwrap_or(false));
    tokenizer.with_post_processor(Some(PostProcessorWrapper::Template(template(v, bos, eos)?)));
    Ok(tokenizer)
}

/// The vocabulary, re-spelled into the byte-level alphabet where needed (transformers'
/// `byte_level_tokenizer`). Special tokens (see the module docs) stay verbatim.
fn byte_level_vocab(v: &GgufVocab, named: &[(&str, Option<u32>)]) -> Vocab {
    let named_ids: HashSet<u32> = named.iter().filter_map(|(_, id)| *id).collect();
    let spelling = bytes_to_unicode();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let is_added = |i: usize| {
        matches!(token_type_of(v, i), token_type::CONTROL | token_type::USER_DEFINED) || named_ids.contains(&(i as u32))
    };
    let mut vocab = Vocab::default();
    for (i, token) in v.tokens.iter().enumerate() {
        let spelled = if in_alphabet(token) || is_added(i) {
            token.clone()
        } else {
            token.bytes().map(|b| spelling[b as usize]).collect()
        };
        // Like a Python dict built in order: a later duplicate wins.
        vocab.insert(spelled, i as u32);
    }
    vocab
}

/// `Split(regex) + ByteLevel` for the `tokenizer.ggml.pre` values of [`split_regex_for_pre`], plain
/// `ByteLevel` with the GPT-2 regex for every other.
fn pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizerWrapper> {
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex); // no prefix space, trim offsets
    Ok(match pre.and_then(split_regex_for_pre) {
        Some(regex) => {
            let invert = false;
            let split = Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, invert)
                .map_err(|e| anyhow!("compiling the split regex for tokenizer.ggml.pre: {e}"))?;
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(byte_level(false)),
            ]))
        }
        None => PreTokenizerWrapper::ByteLevel(byte_level(true)),
    })
}
