//! `condlm score`: log P(y + EOS | x) for every row, then token-weighted NLL and perplexity.
use super::device::DeviceArgs;
use super::{
    AdapterArgs, BaseArgs, ComputeArgs, DataArgs, FieldArgs, flag_value, model_identity, note_int8_passes, use_compute,
};
use anyhow::{Result, bail};
use clap::Args;
use condlm::data::dataset::Dataset;
use condlm::data::example::Example;
use condlm::data::source::EVAL_SPLITS;
use condlm::formats::load::load_model_as;
use condlm::output::check_not_an_input;
use condlm::output::fingerprint::{Fingerprint, row_hash};
use condlm::output::rows::prepare;
use condlm::progress;
use condlm::score::{RowScore, Totals, load_rows, name_row, score_batches};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Score every row: log P(y + EOS | x) per row (natural log), then NLL/token and perplexity. Rows are read as
/// `eval` and `train` read them (prompt/completion, Alpaca or chat; JSONL, a JSON array, Parquet, CSV or TSV),
/// never truncated.
/// Each row is written as soon as its batch is scored.
#[derive(Args)]
pub struct ScoreArgs {
    /// Model: an HF checkpoint folder, a .gguf file, or a hub id org/name (from the HF cache, downloaded when online).
    #[arg(long)]
    model: String,
    #[command(flatten)]
    data: DataArgs,
    /// Write per-row scores as JSONL here instead of stdout: rows grow in FILE.partial, renamed to FILE when every
    /// row is scored (an interrupted run leaves the partial: see --resume-output) [default: stdout].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing --out file (and, without --resume-output, discard its .partial) [default: off: an
    /// existing file is an error].
    #[arg(long, requires = "out")]
    overwrite: bool,
    /// Continue an interrupted run: keep the rows of --out's .partial, score the rest. The partial must have been
    /// written with this model, adapter and these flags (recorded in FILE.partial.json), and its rows must be
    /// of --data's rows as they are now [default: off: an existing .partial is an error].
    #[arg(long, requires = "out")]
    resume_output: bool,
    /// Rows per forward pass (packed, no padding; at least 1).
    #[arg(long, visible_alias = "batch-size", default_value_t = 8, allow_negative_numbers = true)]
    batch: usize,
    #[command(flatten)]
    adapter: AdapterArgs,
    #[command(flatten)]
    base: BaseArgs,
    #[command(flatten)]
    compute: ComputeArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Also write each row's token ids ("ids"), the index where y starts ("y_start"), the index in "ids" of every
    /// scored token ("target_positions": in a chat, the assistant turns, with context between them) and its
    /// log-prob ("token_logprobs", in the same order) [default: off].
    #[arg(long)]
    per_token: bool,
    #[command(flatten)]
    fields: FieldArgs,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1 (rows per forward pass)");
    }
    if let Some(out) = &a.out {
        let inputs: Vec<&Path> =
            [Path::new(&a.model), Path::new(&a.data.data)].into_iter().chain(a.adapter.adapter.as_deref()).collect();
        check_not_an_input(out, &inputs)?;
    }
    let out = prepare(a.out.as_deref(), a.overwrite, a.resume_output)?;
    a.device.check_compute(a.compute.get())?;
    use_compute(a.compute.get(), true, true)?;
    let data = a.data.source(EVAL_SPLITS)?;
    let mut fingerprint = if out.is_file() { settings(&a)? } else { Fingerprint::new("score") };
    out.check_settings(&fingerprint)?;
    let mut m = load_model_as(&a.model, a.base.base_dtype)?;
    a.adapter.apply(&a.model, &mut m)?;
    note_int8_passes(&m.model);
    let ds = load_rows(&data, &m.tokenizer, &a.fields.options(m.model.config.max_positions))?;
    fingerprint.rows = ds.examples.iter().map(example_hash).collect();
    let (mut writer, mut scores) = out.open(&fingerprint, &ds.sources, |i, row| done_row(&ds, i, row, a.per_token))?;
    let resumed = scores.len();
    let bar = progress::bar(ds.len() as u64, "{spinner} scoring {pos}/{len} rows [{bar:30}] {per_sec} ETA {eta}");
    bar.set_position(resumed as u64);
    let start = std::time::Instant::now();
    let mut scorer = a.device.scorer(&m.model)?;
    score_batches(&mut *scorer, &ds.examples[resumed..], a.batch, |first, lps| {
        // The bar steps aside while rows go to the terminal.
        bar.suspend(|| {
            for (k, lp) in lps.into_iter().enumerate() {
                let i = resumed + first + k;
                let s = RowScore::of(&lp);
                writer.push(&output_row(&ds, i, &s, a.per_token.then_some(lp.as_slice())))?;
                scores.push(s);
            }
            writer.flush()
        })?;
        bar.set_position(scores.len() as u64);
        Ok(())
    })
    .map_err(|e| name_row(e, &ds.sources[resumed..]))?;
    writer.finish()?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let t = Totals::of(&scores).checked()?;
    let total_tokens: usize = ds.examples[resumed..].iter().map(|e| e.ids.len()).sum();
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

/// What the scores depend on besides the rows: the model, the adapter and every flag that changes a score
/// (--batch and --threads do not, within f32's rounding: see the README).
fn settings(a: &ScoreArgs) -> Result<Fingerprint> {
    let mut f = Fingerprint::new("score");
    f.set("--model", model_identity(&a.model)?);
    f.set("--adapter", a.adapter.identity()?);
    f.set("--base-dtype", flag_value(a.base.base_dtype));
    f.set("--compute", flag_value(a.compute.get()));
    f.set("--device", a.device.kind());
    f.set("--per-token", a.per_token);
    let options = a.fields.options(0);
    f.set("--prompt-field", options.prompt_field);
    f.set("--completion-field", options.completion_field);
    Ok(f)
}

/// What a row's score is computed from: its token ids and which of them are scored (an edit of the row that
/// leaves them as they were leaves its score as it was).
fn example_hash(e: &Example) -> String {
    let targets: Vec<(usize, usize)> = e.targets.iter().map(|r| (r.start, r.end)).collect();
    row_hash(serde_json::json!([e.ids, targets]).to_string().as_bytes())
}

/// Row `i` as a JSON line: its index, its source (`file:line`, or `file:line (element i)` in a JSON array),
/// log-prob and scored tokens; with `token_logprobs`, also its ids, where y starts, each target's position in the
/// ids (a chat's targets are several runs, with context between them) and its log-prob.
fn output_row(ds: &Dataset, i: usize, s: &RowScore, token_logprobs: Option<&[f32]>) -> Value {
    let mut v = serde_json::json!({"row": i, "source": ds.sources[i], "logprob": s.logprob, "tokens": s.tokens});
    if let Some(lps) = token_logprobs {
        let e = &ds.examples[i];
        v["ids"] = serde_json::json!(e.ids);
        v["y_start"] = serde_json::json!(e.y_start());
        v["target_positions"] = serde_json::json!(e.targets.iter().flat_map(|r| r.clone()).collect::<Vec<_>>());
        v["token_logprobs"] = serde_json::json!(lps);
    }
    v
}

/// A row an interrupted run wrote (read back by --resume-output): it must be row `i` of this input, scored
/// with the same --per-token setting; its score counts in the totals.
fn done_row(ds: &Dataset, i: usize, row: &Value, per_token: bool) -> Result<RowScore> {
    let Some(source) = ds.sources.get(i) else { bail!("row {i}, but --data has only {} rows", ds.len()) };
    if row["row"] != i || row["source"] != source.as_str() {
        bail!("row {} from {} where row {i} from {source} was expected", row["row"], row["source"]);
    }
    let e = &ds.examples[i];
    if row["tokens"] != e.n_targets() {
        bail!("{} scored tokens where {source} has {}", row["tokens"], e.n_targets());
    }
    if per_token != row.get("ids").is_some() || (per_token && row["ids"] != serde_json::json!(e.ids)) {
        bail!("written with other --per-token settings or token ids for {source}");
    }
    match row["logprob"].as_f64() {
        Some(logprob) if logprob.is_finite() => Ok(RowScore { logprob, tokens: e.n_targets() }),
        _ => bail!("no finite logprob for {source}"),
    }
}
