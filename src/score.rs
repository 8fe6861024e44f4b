//! log P(y | x) for (x, y) pairs: the quantity the conditional objective maximises.
use crate::data::example::{Example, target_rows};
use crate::data::rows::Pair;
use crate::kernels::lm_head::{HeadScratch, target_logprobs};
use crate::network::activations::Activations;
use crate::network::batch::PackedBatch;
use crate::network::transformer::{Mode, Transformer};
use crate::tokenizer::TextTokenizer;
use anyhow::{Result, bail};

#[derive(Clone, Debug, PartialEq)]
pub struct RowScore {
    /// log P(y + EOS | x), natural log.
    pub logprob: f64,
    /// Number of scored tokens (y's tokens + EOS).
    pub tokens: usize,
}

/// Token-weighted totals: NLL per token and perplexity exp(ΣNLL / Σtokens).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Totals {
    pub nll: f64,
    pub tokens: usize,
}

impl Totals {
    pub fn of(scores: &[RowScore]) -> Self {
        Totals { nll: -scores.iter().map(|s| s.logprob).sum::<f64>(), tokens: scores.iter().map(|s| s.tokens).sum() }
    }
    pub fn nll_per_token(&self) -> f64 {
        self.nll / self.tokens as f64
    }
    pub fn perplexity(&self) -> f64 {
        self.nll_per_token().exp()
    }
}

/// Encodes rows for scoring, checking each against the context window.
pub fn encode_rows(tok: &TextTokenizer, rows: &[Pair], max_positions: usize) -> Result<Vec<Example>> {
    rows.iter()
        .map(|r| {
            if r.prompt.is_empty() && tok.prefix.is_empty() {
                bail!(
                    "line {}: empty prompt and a tokenizer that adds no BOS: the first completion token has no context",
                    r.line
                );
            }
            let e = Example::encode_pair(tok, &r.prompt, &r.completion)?;
            if e.ids.len() > max_positions {
                bail!(
                    "line {}: {} tokens exceed the model's context window of {max_positions}; shorten the row",
                    r.line,
                    e.ids.len()
                );
            }
            Ok(e)
        })
        .collect()
}

/// Scores encoded rows in packed batches of `batch_rows`; `progress(rows_done)` after each batch.
pub fn score_encoded(
    model: &Transformer,
    rows: &[Example],
    batch_rows: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    let mut acts = Activations::default();
    let mut head = HeadScratch::default();
    let mut out = Vec::with_capacity(rows.len());
    let (mut sel, mut targets) = (Vec::new(), Vec::new());
    for chunk in rows.chunks(batch_rows.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|e| e.ids.clone()).collect();
        let batch = PackedBatch::new(&seqs);
        model.check_batch(&batch)?;
        model.forward(&batch, &mut acts, Mode::Infer);
        // Only y positions reach the LM head.
        target_rows(chunk, &batch, &mut sel, &mut targets);
        let mut lp = vec![0.0f32; sel.len()];
        let d = model.config.hidden_size;
        target_logprobs(&mut lp, &acts.x[..batch.len() * d], d, model.head(), &sel, &targets, &mut head);
        let mut at = 0;
        for e in chunk {
            let n = e.n_targets();
            out.push(lp[at..at + n].to_vec());
            at += n;
        }
        progress(out.len());
    }
    Ok(out)
}

/// Per-token log-probs → row scores.
pub fn row_scores(token_logprobs: &[Vec<f32>]) -> Vec<RowScore> {
    token_logprobs.iter().map(|lp| RowScore { logprob: lp.iter().map(|&v| v as f64).sum(), tokens: lp.len() }).collect()
}
