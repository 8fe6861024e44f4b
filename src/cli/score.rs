//! `condlm score`: log P(y + EOS | x) for every row, then token-weighted NLL and perplexity.
use anyhow::Result;
use clap::Args;
use condlm::data::rows::read_pairs;
use condlm::formats::load::load_model;
use condlm::formats::peft::load_adapter;
use condlm::output::write_atomic;
use condlm::score::{Totals, encode_rows, row_scores, score_encoded};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

/// Score rows {"prompt": x, "completion": y}: log P(y + EOS | x) per row (natural log), then NLL/token and perplexity.
#[derive(Args)]
pub struct ScoreArgs {
    /// Model: an HF checkpoint folder, a .gguf file, or a hub id org/name (from the HF cache, downloaded when online).
    #[arg(long)]
    model: String,
    /// JSONL file of {"prompt", "completion"} rows.
    #[arg(long)]
    data: PathBuf,
    /// Write per-row scores as JSONL here instead of stdout (written atomically).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rows per forward pass (packed, no padding).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// PEFT LoRA adapter folder to apply (condlm's or PEFT's) [default: none].
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Also write each row's token ids, the index where y starts, and every y token's log-prob.
    #[arg(long)]
    per_token: bool,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let rows = read_pairs(&a.data)?;
    let mut m = load_model(&a.model)?;
    if let Some(dir) = &a.adapter {
        load_adapter(dir, &mut m.model)?;
    }
    let encoded = encode_rows(&m.tokenizer, &rows, m.model.config.max_positions)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", a.data.display()))?;
    let total_tokens: usize = encoded.iter().map(|e| e.ids.len()).sum();
    let bar = ProgressBar::new(rows.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} scoring {pos}/{len} rows [{bar:30}] {per_sec} ETA {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let start = std::time::Instant::now();
    let lps = score_encoded(&m.model, &encoded, a.batch, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let scores = row_scores(&lps);
    let mut lines = String::new();
    for (i, (r, s)) in rows.iter().zip(&scores).enumerate() {
        let mut v = serde_json::json!({"row": i, "line": r.line, "logprob": s.logprob, "tokens": s.tokens});
        if a.per_token {
            v["ids"] = serde_json::json!(encoded[i].ids);
            v["y_start"] = serde_json::json!(encoded[i].y_start());
            v["token_logprobs"] = serde_json::json!(lps[i]);
        }
        lines.push_str(&v.to_string());
        lines.push('\n');
    }
    match &a.out {
        Some(p) => write_atomic(p, lines.as_bytes())?,
        None => print!("{lines}"),
    }
    let t = Totals::of(&scores);
    eprintln!(
        "scored {} rows, {} y tokens: NLL/token {:.4}, perplexity {:.3} ({:.0} tokens/s)",
        rows.len(),
        t.tokens,
        t.nll_per_token(),
        t.perplexity(),
        total_tokens as f64 / secs
    );
    Ok(())
}
