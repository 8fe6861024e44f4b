//! `condlm metrics`: corpus BLEU (sacreBLEU default) and ROUGE-L (rouge-score) of generated completions against
//! every reference completion of the same prompt.
use anyhow::Result;
use clap::Args;
use condlm::metrics::{evaluate, pair, read_rows};
use std::path::PathBuf;

/// Score generated completions against references: sacreBLEU corpus BLEU (13a, exp smoothing, multi-reference)
/// and rouge-score ROUGE-L F (best reference per hypothesis, averaged). References are grouped by identical
/// prompt. Prints one JSON line on stdout and a readable summary on stderr.
#[derive(Args)]
pub struct MetricsArgs {
    /// Hypotheses: JSONL rows (or a JSON array) {"prompt": x, "<hyp-field>": generated y}, one per distinct prompt (repeated rows
    /// with the same text count once; different texts for one prompt are an error).
    #[arg(long)]
    hyp: PathBuf,
    /// References: JSONL rows {"prompt": x, "<ref-field>": reference y}; rows sharing a prompt are that prompt's
    /// references. Chat and Alpaca rows (as train reads them) are keyed by their turns before the reply (their
    /// prompt), their reference is the reply they hold. Prompts without a hypothesis are not scored.
    #[arg(long = "ref", value_name = "REF")]
    refs: PathBuf,
    /// Field of a hypothesis row holding the generated text (`generate` writes it as "generation", beside the
    /// input row's own fields, its reference "completion" among them).
    #[arg(long, default_value = "generation")]
    hyp_field: String,
    /// Field of a reference row holding the reference text.
    #[arg(long, default_value = "completion")]
    ref_field: String,
    /// Field holding the prompt, in both files.
    #[arg(long, default_value = "prompt")]
    prompt_field: String,
    /// ROUGE-L without the Porter stemmer (rouge-score's `use_stemmer=False`, Hugging Face evaluate's default);
    /// the default stems, as GEM-metrics does.
    #[arg(long)]
    no_stemmer: bool,
}

pub fn run(a: MetricsArgs) -> Result<()> {
    let hyp_rows = read_rows(&a.hyp, &a.prompt_field, &a.hyp_field, false)?;
    let ref_rows = read_rows(&a.refs, &a.prompt_field, &a.ref_field, true)?;
    let p = pair(&hyp_rows, &ref_rows, &a.hyp, &a.refs)?;
    if p.duplicates > 0 {
        eprintln!(
            "note: {} repeated hypothesis rows (same prompt, same text) in {} counted once",
            p.duplicates,
            a.hyp.display()
        );
    }
    if p.unscored_prompts > 0 {
        eprintln!("note: {} prompts of {} have no hypothesis and are not scored", p.unscored_prompts, a.refs.display());
    }
    let report = evaluate(&p.hyps, &p.refs, !a.no_stemmer);
    out!("{}", serde_json::to_string(&report)?);
    eprintln!("{}", report.summary());
    Ok(())
}
