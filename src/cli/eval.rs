//! `condlm eval`: token-weighted NLL and perplexity of y given x over a dataset.
use super::device::DeviceArgs;
use super::{AdapterArgs, BaseArgs, ComputeArgs, DataArgs, FieldArgs, note_int8_passes, use_compute};
use anyhow::{Result, bail};
use clap::Args;
use condlm::data::source::EVAL_SPLITS;
use condlm::formats::load::load_model_as;
use condlm::score::{Totals, load_rows_cut_x, name_row, row_scores, score_encoded};

/// Evaluate NLL per y token and perplexity exp(ΣNLL/Σtokens) on a dataset (any format `train` reads).
#[derive(Args)]
pub struct EvalArgs {
    /// Model: HF folder, .gguf file, or hub id org/name.
    #[arg(long)]
    model: String,
    #[command(flatten)]
    adapter: AdapterArgs,
    #[command(flatten)]
    base: BaseArgs,
    #[command(flatten)]
    compute: ComputeArgs,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Longest row in tokens: x is cut from the left to fit; a row whose completion alone does not fit is an
    /// error [default: the model's context window].
    #[arg(long, allow_negative_numbers = true)]
    max_len: Option<usize>,
    /// Rows per forward pass (at least 1).
    #[arg(long, visible_alias = "batch-size", default_value_t = 16, allow_negative_numbers = true)]
    batch: usize,
    #[command(flatten)]
    fields: FieldArgs,
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1 (rows per forward pass)");
    }
    if a.max_len == Some(0) {
        bail!("--max-len must be at least 1 (tokens per row)");
    }
    a.device.check_compute(a.compute.get())?;
    use_compute(a.compute.get(), true, true)?;
    let data = a.data.source(EVAL_SPLITS)?;
    let mut m = load_model_as(&a.model, a.base.base_dtype)?;
    a.adapter.apply(&a.model, &mut m)?;
    note_int8_passes(&m.model);
    let max_positions = m.model.config.max_positions;
    if let Some(n) = a.max_len.filter(|&n| n > max_positions) {
        eprintln!("note: --max-len {n} is above the model's context window; using {max_positions}");
    }
    let opts = a.fields.options(a.max_len.unwrap_or(max_positions).min(max_positions));
    let ds = load_rows_cut_x(&data, &m.tokenizer, &opts)?;
    let mut scorer = a.device.scorer(&m.model)?;
    let lps = score_encoded(&mut *scorer, &ds.examples, a.batch, |_| {}).map_err(|e| name_row(e, &ds.sources))?;
    let t = Totals::of(&row_scores(&lps)).checked()?;
    out!(
        "{}",
        serde_json::json!({"rows": ds.examples.len(), "tokens": t.tokens, "nll": t.nll_per_token(), "perplexity": t.perplexity()})
    );
    eprintln!(
        "{} rows, {} y tokens: NLL/token {:.4}, perplexity {:.3}",
        ds.examples.len(),
        t.tokens,
        t.nll_per_token(),
        t.perplexity()
    );
    Ok(())
}
