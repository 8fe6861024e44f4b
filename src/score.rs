//! log P(y | x) for (x, y) pairs: the quantity the conditional objective maximises.
use crate::data::dataset::{DataOptions, Dataset, load_dataset};
use crate::data::example::{Example, target_rows};
use crate::kernels::lm_head::{HeadScratch, target_logprobs};
use crate::network::activations::Activations;
use crate::network::batch::PackedBatch;
use crate::network::transformer::{Mode, Transformer};
use crate::tokenizer::TextTokenizer;
use anyhow::{Result, bail};
use std::path::Path;

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

/// Every row of `path` (any format [`load_dataset`] reads, with the field names of `opts`) encoded whole.
/// Scoring never truncates — a cut row's log-prob is not log P(y | x) — so a row longer than `opts.max_len`
/// (the model's context window) is an error naming the row.
pub fn load_rows(path: &Path, tok: &TextTokenizer, opts: &DataOptions) -> Result<Dataset> {
    let ds = load_dataset(path, tok, &DataOptions { max_len: usize::MAX, ..opts.clone() })?;
    for (e, source) in ds.examples.iter().zip(&ds.sources) {
        if e.ids.len() > opts.max_len {
            bail!(
                "{source}: {} tokens exceed the model's context window of {}; shorten the row",
                e.ids.len(),
                opts.max_len
            );
        }
    }
    Ok(ds)
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
