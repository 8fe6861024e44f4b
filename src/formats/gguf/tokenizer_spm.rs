//! The SentencePiece tokenizer of a GGUF file (`tokenizer.ggml.model = "llama"`), built as transformers
//! builds it (transformers 5.x, `transformers/integrations/gguf/gguf_tokenizer_mapping.py`:
//! `sentencepiece_tokenizer`, `gemma_tokenizer`, `phi3_tokenizer`, then `LlamaTokenizer` /
//! `GemmaTokenizer`), so that ids are identical to `AutoTokenizer.from_pretrained(dir, gguf_file=...)`.
//!
//! A SentencePiece GGUF stores tokens and scores but no merges. transformers rebuilds a BPE model with
//! byte fallback (`<0xNN>` tokens) from them, and so do we:
//! - merges (`generate_merges`): every split of every token into two tokens, each token's splits
//!   ordered by the ids of (left, right), all of them then stably sorted best first by (the token's
//!   score, left length, right length), lengths in characters. Llama and Phi-3 use
//!   `tokenizer.ggml.scores`; Gemma uses the token's position instead (earlier = better), because its
//!   scores do not follow its merge order.
//! - Gemma first re-spells every token made of whitespace that contains a space ("  ") as that many
//!   "▁", since the Gemma tokenizer looks runs of spaces up that way.
//! - model: BPE, `byte_fallback`, `fuse_unk`, no dropout; unk token "<unk>" for Gemma (the class
//!   default, whatever the file names) and none for Llama/Phi-3.
//!
//! Text handling, by `general.architecture`:
//! - Llama (every architecture but the two below): no normalizer, pre-tokenizer
//!   `Metaspace("▁", prepend_scheme = "first", split = false)`, decoder `Replace("▁", " "),
//!   ByteFallback, Fuse, Strip(" ", 1, 0)`.
//! - Phi-3 (`phi3`): normalizer `Prepend("▁"), Replace(" ", "▁")`, no pre-tokenizer, the Llama decoder.
//! - Gemma (`gemma`, `gemma2`, `gemma3`): normalizer `Replace(" ", "▁")`, pre-tokenizer `Split(" ",
//!   MergedWithPrevious)` (a no-op after the normalizer, kept to be the same tokenizer), decoder
//!   `Replace("▁", " "), ByteFallback, Fuse` (no strip: Gemma adds no prefix space, so none is removed).
//! - added tokens: first the transformers class's default special tokens ("<unk>", "<s>", "</s>" for
//!   Llama and Phi-3; "<pad>", "<eos>", "<bos>", "<unk>", "<mask>" for Gemma) when the vocabulary has
//!   them, then as for byte-level BPE (see `tokenizer.rs`): CONTROL special, USER_DEFINED plain
//!   (only those whose text is a vocabulary entry after the re-spelling, so Gemma's space-run tokens are
//!   left to the BPE), the tokens named by `*_token_id` special; all matched verbatim in text.
//! - post-processor: BOS when `tokenizer.ggml.add_bos_token` is true *or missing* (llama.cpp adds BOS
//!   to a SentencePiece vocabulary that does not say otherwise, and transformers follows), EOS when
//!   `add_eos_token` is true.
//! - `tokenizer.ggml.add_space_prefix` and `tokenizer.ggml.pre` are ignored, as transformers ignores them.
//!
//! Where llama.cpp differs (its test vectors, `tests/fixtures/gguf_tokenizer/spm/ggml-vocab-*.gguf.out`,
//! are checked with these cases set aside; the transformers ids are what we match):
//! - Llama: text starting with a space (15 of the 46 Llama-SPM vectors). SentencePiece (and llama.cpp)
//!   always put a "▁" in front, so " Hello" is "▁▁Hello" → [29871, 15043]; transformers'
//!   `Metaspace(prepend_scheme="first")` adds none when the text already starts with a space, giving
//!   "▁Hello" → [15043]. The other 31 vectors are identical. Phi-3's normalizer always prepends, so
//!   Phi-3 agrees with llama.cpp on all 46.
//!
//! Deliberate differences from transformers, none of which occurs in a real Llama, Phi-3 or Gemma file:
//! a class default special token (above) missing from the vocabulary is left out, where transformers
//! would add its text as a new token past the embedding matrix (and Gemma's BPE gets no unk token);
//! `tokenizer.ggml.merges`, if a SentencePiece file has any, are used unless the list is empty
//! (transformers uses them whenever the key exists, even empty).
use std::collections::HashMap;

use anyhow::{Result, anyhow, ensure};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use super::tokenizer_meta::{GgufVocab, add_special_tokens, bpe_merges, named_tokens, template};

/// The SentencePiece word-boundary mark that stands for a space.
const SPACE: char = '▁';

/// Which of transformers' SentencePiece builders a file gets, from `general.architecture`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Flavour {
    Llama,
    Phi3,
    Gemma,
}

impl Flavour {
    fn of(arch: Option<&str>) -> Self {
        match arch {
            Some("gemma" | "gemma2" | "gemma3") => Flavour::Gemma,
            Some("phi3") => Flavour::Phi3,
            _ => Flavour::Llama,
        }
    }

    /// The default special tokens of the transformers class (`LlamaTokenizer`, `GemmaTokenizer`), which it
    /// registers as special before the file's token types are applied. A later USER_DEFINED mark makes such a
    /// token plain in the added-token table, but it stays in the special set, so decoding with
    /// `skip_special_tokens` still drops it (Phi-3's "</s>").
    fn class_special_tokens(self) -> &'static [&'static str] {
        match self {
            Flavour::Llama | Flavour::Phi3 => &["<unk>", "<s>", "</s>"],
            Flavour::Gemma => &["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"],
        }
    }
}

/// Builds the tokenizer transformers builds for a `tokenizer.ggml.model = "llama"` file.
pub(super) fn sentencepiece(v: &GgufVocab) -> Result<Tokenizer> {
    let flavour = Flavour::of(v.arch.as_deref());
    let named = named_tokens(v)?;
    let tokens = spelled_tokens(v, flavour);
    let mut vocab = Vocab::default();
    for (i, token) in tokens.iter().enumerate() {
        vocab.insert(token.clone(), i as u32); // like a Python dict built in order: a later duplicate wins
    }
    let merges = if !v.merges.is_empty() {
        bpe_merges(v, &vocab)?
    } else {
        generate_merges(&tokens, &vocab, &merge_scores(v, flavour, &tokens)?)
    };
    let mut bpe = BPE::builder().vocab_and_merges(vocab.clone(), merges).byte_fallback(true).fuse_unk(true);
    if flavour == Flavour::Gemma && vocab.contains_key("<unk>") {
        bpe = bpe.unk_token("<unk>".to_string());
    }
    let bpe = bpe.build().map_err(|e| anyhow!("building the BPE model from tokenizer.ggml.tokens/scores: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    set_text_handling(&mut tokenizer, flavour)?;

    let defaults: Vec<AddedToken> = flavour
        .class_special_tokens()
        .iter()
        .filter(|t| vocab.contains_key(**t))
        .map(|t| AddedToken::from(t.to_string(), true).normalized(false))
        .collect();
    tokenizer.add_special_tokens(defaults).map_err(|e| anyhow!("adding the tokenizer class's special tokens: {e}"))?;
    let named_ids: Vec<u32> = named.iter().filter_map(|(_, id)| *id).collect();
    add_special_tokens(&mut tokenizer, v, &named_ids, |t| vocab.contains_key(t))?;
    let bos = v.bos_id.filter(|_| v.add_bos.unwrap_or(true));
    let eos = v.eos_id.filter(|_| v.add_eos.unwrap_or(false));
    tokenizer.with_post_processor(Some(PostProcessorWrapper::Template(template(v, bos, eos)?)));
    Ok(tokenizer)
}

/// The tokens as the BPE model looks them up: Gemma's space-run tokens re-spelled with "▁".
fn spelled_tokens(v: &GgufVocab, flavour: Flavour) -> Vec<String> {
    // Python's `not t.strip()`: its whitespace also counts the separators U+001C..U+001F.
    let space_run = |t: &str| t.contains(' ') && t.chars().all(|c| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c));
    v.tokens
        .iter()
        .map(|t| {
            if flavour == Flavour::Gemma && space_run(t) {
                SPACE.to_string().repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect()
}

/// The sort key of each token's merges, higher first: the score (Llama, Phi-3) or minus the position
/// (Gemma). Like transformers' dict, a duplicate token keeps its first place and its last value.
fn merge_scores(v: &GgufVocab, flavour: Flavour, tokens: &[String]) -> Result<Vec<(usize, f64)>> {
    if flavour != Flavour::Gemma {
        ensure!(
            v.scores.len() == tokens.len(),
            "tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {}; a SentencePiece vocabulary \
             needs one score per token",
            v.scores.len(),
            tokens.len()
        );
    }
    let score = |i: usize| match flavour {
        Flavour::Gemma => -(i as f64),
        Flavour::Llama | Flavour::Phi3 => f64::from(v.scores[i]),
    };
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<(usize, f64)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match first.get(t.as_str()) {
            Some(&slot) => out[slot].1 = score(i),
            None => {
                first.insert(t, out.len());
                out.push((i, score(i)));
            }
        }
    }
    Ok(out)
}

/// transformers' `generate_merges(vocab, vocab_scores)`: for every token (in `scores` order), its
/// splits into two vocabulary entries sorted by their ids, then everything stably sorted by
/// (score, left length, right length), highest first.
fn generate_merges(tokens: &[String], vocab: &Vocab, scores: &[(usize, f64)]) -> Vec<(String, String)> {
    struct Merge<'a> {
        left: &'a str,
        right: &'a str,
        score: f64,
        left_chars: usize,
        right_chars: usize,
    }
    let mut merges: Vec<Merge> = Vec::new();
    for &(i, score) in scores {
        let token = tokens[i].as_str();
        let start = merges.len();
        for (left_chars, (at, _)) in token.char_indices().enumerate().skip(1) {
            let (left, right) = token.split_at(at);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                let right_chars = token[at..].chars().count();
                merges.push(Merge { left, right, score, left_chars, right_chars });
            }
        }
        merges[start..].sort_by_key(|m| (vocab[m.left], vocab[m.right]));
    }
    merges.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    merges.into_iter().map(|m| (m.left.to_string(), m.right.to_string())).collect()
}

/// Normalizer, pre-tokenizer and decoder of each flavour (see the module docs).
fn set_text_handling(tokenizer: &mut Tokenizer, flavour: Flavour) -> Result<()> {
    let space_to_mark = || -> Result<NormalizerWrapper> {
        let replace =
            Replace::new(" ", SPACE.to_string()).map_err(|e| anyhow!("building the ' ' → '▁' normalizer: {e}"))?;
        Ok(NormalizerWrapper::Replace(replace))
    };
    let mark_to_space =
        Replace::new(SPACE.to_string(), " ").map_err(|e| anyhow!("building the '▁' → ' ' decoder: {e}"))?;
    let mut decoders = vec![
        DecoderWrapper::Replace(mark_to_space),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    match flavour {
        Flavour::Llama => {
            let metaspace = Metaspace::new(SPACE, PrependScheme::First, false);
            tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Metaspace(metaspace)));
        }
        Flavour::Phi3 => {
            let prepend = NormalizerWrapper::Prepend(Prepend::new(SPACE.to_string()));
            let normalizer = NormalizerWrapper::Sequence(NormalizerSequence::new(vec![prepend, space_to_mark()?]));
            tokenizer.with_normalizer(Some(normalizer)).map_err(|e| anyhow!("setting the Phi-3 normalizer: {e}"))?;
        }
        Flavour::Gemma => {
            tokenizer
                .with_normalizer(Some(space_to_mark()?))
                .map_err(|e| anyhow!("setting the Gemma normalizer: {e}"))?;
            let invert = false;
            let split =
                Split::new(SplitPattern::String(" ".into()), SplitDelimiterBehavior::MergedWithPrevious, invert)
                    .map_err(|e| anyhow!("building the Gemma pre-tokenizer: {e}"))?;
            tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Split(split)));
        }
    }
    if flavour != Flavour::Gemma {
        // The prefix space the pre-tokenizer or normalizer added is removed again.
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tokenizer.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(decoders))));
    Ok(())
}
