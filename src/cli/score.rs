//! `condlm score`: log P(y + EOS | x) for every row, then token-weighted NLL and perplexity.
use super::{AdapterArgs, FieldArgs};
use anyhow::Result;
use clap::Args;
use condlm::data::dataset::Dataset;
use condlm::formats::load::load_model;
use condlm::output::write_atomic;
use condlm::progress;
use condlm::score::{RowScore, Totals, load_rows, row_scores, score_encoded};
use std::path::PathBuf;

/// Score every row: log P(y + EOS | x) per row (natural log), then NLL/token and perplexity. Rows are read as
/// `eval` and `train` read them (prompt/completion, Alpaca or chat; JSONL or a JSON array), never truncated.
#[derive(Args)]
pub struct ScoreArgs {
    /// Model: an HF checkpoint folder, a .gguf file, or a hub id org/name (from the HF cache, downloaded when online).
    #[arg(long)]
    model: String,
    /// Rows: JSONL or JSON array of {"prompt","completion"}, Alpaca or {"messages"} rows.
    #[arg(long)]
    data: PathBuf,
    /// Write per-row scores as JSONL here instead of stdout (written atomically).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rows per forward pass (packed, no padding).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[command(flatten)]
    adapter: AdapterArgs,
    /// Also write each row's token ids, the index where y starts, and every y token's log-prob.
    #[arg(long)]
    per_token: bool,
    #[command(flatten)]
    fields: FieldArgs,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let mut m = load_model(&a.model)?;
    a.adapter.apply(&a.model, &mut m)?;
    let ds = load_rows(&a.data, &m.tokenizer, &a.fields.options(m.model.config.max_positions))?;
    let bar = progress::bar(ds.len() as u64, "{spinner} scoring {pos}/{len} rows [{bar:30}] {per_sec} ETA {eta}");
    let start = std::time::Instant::now();
    let lps = score_encoded(&m.model, &ds.examples, a.batch, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let scores = row_scores(&lps);
    let lines = output_rows(&ds, &scores, a.per_token.then_some(lps.as_slice()));
    match &a.out {
        Some(p) => write_atomic(p, lines.as_bytes())?,
        None => print!("{lines}"),
    }
    let t = Totals::of(&scores);
    let total_tokens: usize = ds.examples.iter().map(|e| e.ids.len()).sum();
    eprintln!(
        "scored {} rows, {} y tokens: NLL/token {:.4}, perplexity {:.3} ({:.0} tokens/s)",
        ds.len(),
        t.tokens,
        t.nll_per_token(),
        t.perplexity(),
        total_tokens as f64 / secs
    );
    Ok(())
}

/// One JSON line per row: its index, its source (`file:line`, or `file:line (element i)` in a JSON array),
/// log-prob and scored tokens; with `token_logprobs`, also its ids, where y starts and each target's log-prob.
fn output_rows(ds: &Dataset, scores: &[RowScore], token_logprobs: Option<&[Vec<f32>]>) -> String {
    let mut lines = String::new();
    for (i, s) in scores.iter().enumerate() {
        let mut v = serde_json::json!({"row": i, "source": ds.sources[i], "logprob": s.logprob, "tokens": s.tokens});
        if let Some(lps) = token_logprobs {
            v["ids"] = serde_json::json!(ds.examples[i].ids);
            v["y_start"] = serde_json::json!(ds.examples[i].y_start());
            v["token_logprobs"] = serde_json::json!(lps[i]);
        }
        lines.push_str(&v.to_string());
        lines.push('\n');
    }
    lines
}
