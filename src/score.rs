//! log P(y | x) for (x, y) pairs: the quantity the conditional objective maximises.
use crate::data::dataset::{DataOptions, Dataset, load_dataset};
use crate::data::example::{Example, target_rows};
use crate::data::source::DataSource;
use crate::kernels::backend::Backend;
use crate::kernels::lm_head::{HeadScratch, target_logprobs};
use crate::network::activations::Activations;
use crate::network::batch::PackedBatch;
use crate::network::device::DeviceModel;
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

impl RowScore {
    /// A row's score from its per-token log-probs (summed in f64).
    pub fn of(token_logprobs: &[f32]) -> Self {
        RowScore { logprob: token_logprobs.iter().map(|&v| v as f64).sum(), tokens: token_logprobs.len() }
    }
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

    /// The totals of a finished `score` or `eval`, refused when the perplexity overflows f64 (NLL/token above
    /// ln(f64::MAX) ≈ 709.8): every log-prob is finite, but a model that far off is broken, and "perplexity inf"
    /// (JSON null) with exit 0 would pass for a result.
    pub fn checked(self) -> Result<Self> {
        if !self.perplexity().is_finite() {
            bail!(
                "NLL/token is {:.1} over {} y tokens, so the perplexity exp(NLL/token) overflows: the model gives y \
                 tokens a probability near e^-{:.0} on average, which no working model does; check the model's \
                 weights and the adapter (a norm or scale far out of range)",
                self.nll_per_token(),
                self.tokens,
                self.nll_per_token()
            );
        }
        Ok(self)
    }
}

/// Every row of `data` (any format [`load_dataset`] reads, with the field names of `opts`) encoded whole.
/// Scoring never truncates — a cut row's log-prob is not log P(y | x) — so a row longer than `opts.max_len`
/// (the model's context window) is an error naming the row.
pub fn load_rows(data: impl Into<DataSource>, tok: &TextTokenizer, opts: &DataOptions) -> Result<Dataset> {
    let ds = load_dataset(data, tok, &DataOptions { max_len: usize::MAX, ..opts.clone() })?;
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

/// Every row of `data` as `eval` scores it: x may be cut from the left to fit `opts.max_len`, y never — a row
/// whose y (with EOS) does not fit is an error naming the row, as in [`load_rows`], since a partial y's NLL is
/// not the row's.
pub fn load_rows_cut_x(data: impl Into<DataSource>, tok: &TextTokenizer, opts: &DataOptions) -> Result<Dataset> {
    let ds = load_dataset(data, tok, opts)?;
    let cut = ds.info.iter().zip(&ds.sources).map(|(i, s)| (i.cut.y, s));
    let dropped = ds.dropped.iter().map(|d| (d.info.cut.y, &d.source));
    if let Some((n, source)) = dropped.chain(cut).find(|(n, _)| *n > 0) {
        bail!(
            "{source}: its completion does not fit in {} tokens ({n} of its target tokens would be cut, even with \
             the prompt cut from the left); scores are only given for whole completions: raise --max-len if it is \
             below the model's context window, or shorten the row",
            opts.max_len
        );
    }
    Ok(ds)
}

/// Where rows are scored: the CPU path ([`OnCpu`]) or the model on a device (`network::device::DeviceModel`).
pub trait Scorer {
    /// log P(targets[k] | row sel[k]) of a packed batch, into out[k] (out.len() = sel.len()).
    fn logprobs(&mut self, batch: &PackedBatch, sel: &[usize], targets: &[u32], out: &mut [f32]) -> Result<()>;
}

impl<S: Scorer + ?Sized> Scorer for &mut S {
    fn logprobs(&mut self, batch: &PackedBatch, sel: &[usize], targets: &[u32], out: &mut [f32]) -> Result<()> {
        (**self).logprobs(batch, sel, targets, out)
    }
}

/// The CPU path: a model and the buffers of its forward pass and LM head.
pub struct OnCpu<'a> {
    model: &'a Transformer,
    acts: Activations,
    head: HeadScratch,
}

impl<'a> OnCpu<'a> {
    pub fn new(model: &'a Transformer) -> Self {
        OnCpu { model, acts: Activations::default(), head: HeadScratch::default() }
    }
}

impl Scorer for OnCpu<'_> {
    fn logprobs(&mut self, batch: &PackedBatch, sel: &[usize], targets: &[u32], out: &mut [f32]) -> Result<()> {
        let m = self.model;
        m.check_batch(batch)?;
        m.forward(batch, &mut self.acts, Mode::Infer);
        let d = m.config.hidden_size;
        target_logprobs(out, &self.acts.x[..batch.len() * d], d, m.head(), sel, targets, &mut self.head);
        Ok(())
    }
}

impl<B: Backend> Scorer for DeviceModel<B> {
    fn logprobs(&mut self, batch: &PackedBatch, sel: &[usize], targets: &[u32], out: &mut [f32]) -> Result<()> {
        self.forward(batch, None)?;
        self.target_logprobs(sel, targets, out)
    }
}

/// Scores encoded rows in packed batches of `batch_rows`; `progress(rows_done)` after each batch.
pub fn score_encoded(
    model: &mut dyn Scorer,
    rows: &[Example],
    batch_rows: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(rows.len());
    score_batches(model, rows, batch_rows, |_, lps| {
        out.extend(lps);
        progress(out.len());
        Ok(())
    })?;
    Ok(out)
}

/// Scores encoded rows in packed batches of `batch_rows`, handing each batch's per-token log-probs to
/// `on_batch(index of its first row, log-probs)` as soon as it is done (an error there stops scoring). A
/// non-finite log-prob stops scoring with [`NonFiniteScore`]: it means NaN or inf in the weights, never a
/// property of the row, and a total over it would be meaningless.
pub fn score_batches(
    model: &mut dyn Scorer,
    rows: &[Example],
    batch_rows: usize,
    mut on_batch: impl FnMut(usize, Vec<Vec<f32>>) -> Result<()>,
) -> Result<()> {
    let (mut sel, mut targets) = (Vec::new(), Vec::new());
    let mut first = 0;
    for chunk in rows.chunks(batch_rows.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|e| e.ids.clone()).collect();
        let batch = PackedBatch::new(&seqs);
        // Only y positions reach the LM head.
        target_rows(chunk, &batch, &mut sel, &mut targets);
        let mut lp = vec![0.0f32; sel.len()];
        model.logprobs(&batch, &sel, &targets, &mut lp)?;
        let mut at = 0;
        let mut lps = Vec::with_capacity(chunk.len());
        for (i, e) in chunk.iter().enumerate() {
            let n = e.n_targets();
            let row = &lp[at..at + n];
            if let Some(&value) = row.iter().find(|v| !v.is_finite()) {
                return Err(NonFiniteScore { row: first + i, value }.into());
            }
            lps.push(row.to_vec());
            at += n;
        }
        on_batch(first, lps)?;
        first += chunk.len();
    }
    Ok(())
}

/// Row `row` (an index into the rows scored) got a non-finite token log-prob.
#[derive(Debug)]
pub struct NonFiniteScore {
    pub row: usize,
    pub value: f32,
}

impl NonFiniteScore {
    /// The message, with the row named by `source` (e.g. `file:line`).
    pub fn describe(&self, source: &str) -> String {
        format!(
            "{source}: a token's log P(y | x) is {}: the model or adapter holds non-finite values (NaN or inf) — the \
             scores would be meaningless; repair or re-create the weights",
            self.value
        )
    }
}

impl std::fmt::Display for NonFiniteScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe(&format!("row {}", self.row)))
    }
}

impl std::error::Error for NonFiniteScore {}

/// Names the row of a [`NonFiniteScore`] by its source (`sources[row]`); other errors pass unchanged.
pub fn name_row(e: anyhow::Error, sources: &[String]) -> anyhow::Error {
    let named = e.downcast_ref::<NonFiniteScore>().and_then(|n| Some(n.describe(sources.get(n.row)?)));
    named.map_or(e, |m| anyhow::anyhow!(m))
}

/// Per-token log-probs → row scores.
pub fn row_scores(token_logprobs: &[Vec<f32>]) -> Vec<RowScore> {
    token_logprobs.iter().map(|lp| RowScore::of(lp)).collect()
}
