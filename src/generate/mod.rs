//! Generating y from x: incremental decoding over a KV cache, greedy / sampling / beam search with
//! Hugging Face transformers' semantics, stop tokens and stop strings, streaming text.
//!
//! - [`crate::network::kv_cache`] (below, in the network): the preallocated KV cache (slots × positions per layer).
//! - [`decoder`]: the model's forward pass for rows (slot, position, token) over the cache — prefill and decode
//!   steps alike, several sequences per call; LoRA adapters run unmerged.
//! - [`sampling`]: repetition penalty, no-repeat-n-gram, temperature, top-k, top-p, min-p, seeded draws.
//! - [`beam`]: beam search exactly as transformers 5 runs it (length penalty, early stopping, n-gram blocking).
//! - [`detok`]: incremental detokenization (multi-byte characters across tokens) and stop strings.
//! - [`run`]: the driver — many prompts, batched prefill, continuous batching of decode steps.
//!
//! **Prompt encoding** is the training one: `tokenizer.prefix + enc(x)` (BOS only if the tokenizer adds one,
//! nothing between x and y), so a model fitted on `prefix + enc(x) + enc(y) + EOS` generates y from the same ids.
//!
//! **What a generation is.** `ids` are the generated tokens, including the stop token (EOS or a stop id) that
//! ended it, as transformers returns them. `text` is the incremental decoding of the generated tokens *without*
//! that stop token, cut before the first occurrence of any stop string (the stop string itself is not part of
//! the text; its tokens are in `ids`). Streaming holds text back while it could be the start of a stop string.
//!
//! **Limits and bad input.** A prompt must leave room for one new token: as many tokens as the context window
//! (or more) is an error; a prompt that leaves fewer positions than `max_new_tokens` stops at the window
//! (`Finish::Length`). An empty prompt is an error unless the tokenizer adds a BOS. A stop string must be
//! non-empty and producible by the tokenizer (encoding and decoding it gives it back; one that maps to an
//! unknown token could never appear in the text), else an error.
//!
//! **Determinism.** Greedy and beam search are deterministic; sampling draws step t of prompt i from
//! `rng::uniform(seed, i, t)`, so the same seed gives the same output. Rows of a batch do not interact: the
//! batch can change a prompt's logits only by float rounding (a call with more than 16 rows uses the GEMM
//! instead of the matrix-vector kernel), and the tests find identical outputs for batched and lone prompts.

pub mod beam;
pub mod decoder;
pub mod detok;
pub mod run;
pub mod sampling;

pub use beam::{BeamParams, EarlyStopping};
pub use run::{Event, NonFiniteLogits, generate, generate_from};
pub use sampling::SamplingParams;

use crate::network::device::Placement;
use crate::network::transformer::Transformer;
use crate::tokenizer::TextTokenizer;
use anyhow::{Result, bail};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Strategy {
    /// The most probable token (transformers' `do_sample=False, num_beams=1`).
    Greedy,
    /// A draw from the processed distribution (`do_sample=True`).
    Sample(SamplingParams),
    /// Beam search (`num_beams > 1, do_sample=False`).
    Beam(BeamParams),
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub strategy: Strategy,
    /// At most this many new tokens per prompt (fewer if the context window ends first).
    pub max_new_tokens: usize,
    /// transformers' `repetition_penalty`; 1 = off.
    pub repetition_penalty: f32,
    /// transformers' `no_repeat_ngram_size`; 0 = off.
    pub no_repeat_ngram_size: usize,
    /// Token ids that end a sequence (the caller includes the tokenizer's EOS unless it wants to ignore it).
    pub stop_ids: Vec<u32>,
    /// Texts that end a sequence; the returned text stops before the first occurrence.
    pub stop_strings: Vec<String>,
    /// Prompts decoded together (each takes `num_beams` cache slots under beam search).
    pub batch: usize,
    /// Prompt tokens prefilled per forward call when several prompts start together (a longer prompt still
    /// goes in one call).
    pub prefill_tokens: usize,
    /// Where the network runs (`--device`).
    pub device: Placement,
}

impl GenerateOptions {
    /// Greedy decoding of up to `max_new_tokens`, stopping at `eos`.
    pub fn greedy(max_new_tokens: usize, eos: u32) -> Self {
        GenerateOptions {
            strategy: Strategy::Greedy,
            max_new_tokens,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            stop_ids: vec![eos],
            stop_strings: vec![],
            batch: 1,
            prefill_tokens: 512,
            device: Placement::Cpu,
        }
    }

    pub fn num_beams(&self) -> usize {
        match self.strategy {
            Strategy::Beam(b) => b.num_beams,
            _ => 1,
        }
    }

    /// Checks every setting; the error names the flag's meaning and its allowed range.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        self.check_settings()?;
        if let Strategy::Beam(b) = self.strategy
            && (1 + self.stop_ids.len()).max(2) * b.num_beams > vocab
        {
            bail!("{} beams need more candidate tokens than the vocabulary of {vocab} has", b.num_beams);
        }
        if let Some(&t) = self.stop_ids.iter().find(|&&t| t as usize >= vocab) {
            bail!("stop token id {t} is outside the model's vocabulary of {vocab} entries");
        }
        Ok(())
    }

    /// The checks of [`GenerateOptions::validate`] that need no model, so a command line can run them before
    /// loading one.
    pub fn check_settings(&self) -> Result<()> {
        match self.strategy {
            Strategy::Greedy => {}
            Strategy::Sample(p) => {
                if !(p.temperature > 0.0 && p.temperature.is_finite()) {
                    bail!(
                        "temperature must be > 0 and finite for sampling (got {}); use greedy decoding for 0",
                        p.temperature
                    );
                }
                p.check_filters()?;
            }
            Strategy::Beam(b) => {
                if b.num_beams < 2 {
                    bail!("beam search needs at least 2 beams (got {})", b.num_beams);
                }
                if !b.length_penalty.is_finite() {
                    bail!("length penalty must be finite (got {})", b.length_penalty);
                }
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            bail!("repetition penalty must be > 0 and finite (got {}); 1 is off", self.repetition_penalty);
        }
        if self.max_new_tokens == 0 {
            bail!("max new tokens must be at least 1 (got 0)");
        }
        if self.batch == 0 {
            bail!("batch must be at least 1 (got 0)");
        }
        Ok(())
    }
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The tokenizer's EOS was generated.
    Eos,
    /// Another stop token id was generated.
    StopId,
    /// The text reached a stop string.
    StopString,
    /// `max_new_tokens` or the end of the context window.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::StopId => "stop_id",
            Finish::StopString => "stop_string",
            Finish::Length => "length",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// Generated token ids, including the stop token that ended the sequence.
    pub ids: Vec<u32>,
    /// The generated text without the stop token, cut before a stop string.
    pub text: String,
    pub finish: Finish,
    /// Beam search: the hypothesis score `sum_logprobs / len ** length_penalty`; otherwise None.
    pub score: Option<f64>,
}

/// The prompt as training encodes x: `tokenizer.prefix + enc(prompt)`. An empty prompt is an error unless the
/// tokenizer adds a BOS (otherwise the first token would have no context).
pub fn encode_prompt(tok: &TextTokenizer, prompt: &str) -> Result<Vec<u32>> {
    let mut ids = tok.prefix.clone();
    ids.extend(tok.encode(prompt)?);
    if ids.is_empty() {
        bail!(
            "the prompt is empty and this tokenizer adds no BOS token: the first generated token would have no context"
        );
    }
    Ok(ids)
}

/// Positions a sequence may use: the model's context window (a sliding window bounds what each position sees,
/// not how long a sequence may grow).
pub fn context_len(model: &Transformer) -> usize {
    model.config.max_positions
}
