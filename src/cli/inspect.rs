//! `condlm inspect`: how rows are tokenized and which tokens the loss sees, then statistics for the whole file.
use super::DataArgs;
use anyhow::Result;
use clap::{Args, ValueEnum};
use condlm::data::dataset::{DataOptions, load_dataset};
use condlm::data::show::{Paint, legend, render_example};
use condlm::data::source::TRAIN_SPLITS;
use condlm::formats::load::{load_tokenizer, open_weights};
use condlm::formats::resolve::resolve;
use std::io::IsTerminal;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Show the first rows token by token with their labels (context, ignored by the loss, vs. y targets), then
/// statistics for the whole data: rows, x/y tokens, truncation, rows without y tokens. Reads every format
/// `train` reads (prompt/completion, Alpaca, chat; JSONL, JSON, Parquet, CSV, TSV,
/// dataset folders and hub datasets). Loads the tokenizer only, not the weights.
#[derive(Args)]
pub struct InspectArgs {
    /// Model whose tokenizer and chat template to use: an HF folder, a .gguf file, or a hub id org/name.
    #[arg(long)]
    model: String,
    #[command(flatten)]
    data: DataArgs,
    /// Truncate rows to this many tokens [default: the model's context window].
    #[arg(long)]
    max_len: Option<usize>,
    /// How many rows to show token by token.
    #[arg(long, default_value_t = 3)]
    rows: usize,
    /// Field holding x in prompt/completion rows.
    #[arg(long, default_value = "prompt")]
    prompt_field: String,
    /// Field holding y in prompt/completion rows.
    #[arg(long, default_value = "completion")]
    completion_field: String,
    /// Colour: auto (when stdout is a terminal and NO_COLOR is unset), always, never (plain [x]/[Y] markers).
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
}

pub fn run(a: InspectArgs) -> Result<()> {
    let data = a.data.source(TRAIN_SPLITS)?;
    let files = resolve(&a.model)?;
    let (config, weights) = open_weights(&files)?;
    let tok = load_tokenizer(&files, &config, &weights)?;
    let max_positions = config.max_positions;
    let max_len = a.max_len.unwrap_or(max_positions);
    if max_len > max_positions {
        eprintln!("note: --max-len {max_len} is above the model's context window; using {max_positions}");
    }
    let opts = DataOptions {
        prompt_field: a.prompt_field,
        completion_field: a.completion_field,
        max_len: max_len.min(max_positions),
    };
    let ds = load_dataset(&data, &tok, &opts)?;
    let paint = match a.color {
        ColorChoice::Always => Paint::Color,
        ColorChoice::Never => Paint::Plain,
        ColorChoice::Auto if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() => Paint::Color,
        ColorChoice::Auto => Paint::Plain,
    };
    let shown = a.rows.min(ds.examples.len());
    if shown > 0 {
        out!("{}\n", legend(paint));
    }
    for i in 0..shown {
        let (e, info) = (&ds.examples[i], &ds.info[i]);
        let y = e.n_targets();
        let mut cut = String::new();
        if info.cut.x > 0 {
            cut.push_str(&format!(", x cut by {} tokens", info.cut.x));
        }
        if info.cut.y > 0 {
            cut.push_str(&format!(", y cut by {} tokens", info.cut.y));
        }
        out!(
            "row {}: {}, {}, {} tokens ({} context, {} targets){cut}",
            i + 1,
            ds.sources[i],
            info.format.name(),
            e.ids.len(),
            e.ids.len() - y,
            y
        );
        out!("{}\n", render_example(&tok, e, paint)?);
    }
    out!("{}", ds.stats.describe(&data.label));
    for d in ds.dropped.iter().take(5) {
        out!("  dropped (no y token left): {}", d.source);
    }
    if ds.dropped.len() > 5 {
        out!("  … and {} more", ds.dropped.len() - 5);
    }
    Ok(())
}
