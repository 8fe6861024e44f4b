//! Greedy generation of y for the demo's prompts, through `condlm::generate` (KV cache, batched), with
//! the training encoding of x (`tokenizer.prefix + enc(x)`).
use anyhow::Result;
use condlm::generate::{Finish, GenerateOptions, encode_prompt, generate};
use condlm::network::transformer::Transformer;
use condlm::tokenizer::TextTokenizer;

/// Prompts decoded together.
const BATCH: usize = 32;

/// The greedy completion of each prompt and whether it ended with EOS (rather than running out of room).
pub fn greedy(
    model: &Transformer,
    tok: &TextTokenizer,
    prompts: &[&str],
    max_new: usize,
) -> Result<Vec<(String, bool)>> {
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| encode_prompt(tok, p)).collect::<Result<_>>()?;
    let opts = GenerateOptions { batch: BATCH, ..GenerateOptions::greedy(max_new, tok.eos_id) };
    let out = generate(model, tok, &ids, &opts, |_| {})?;
    Ok(out.into_iter().map(|g| (g.text, g.finish == Finish::Eos)).collect())
}
