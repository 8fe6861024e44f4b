//! `condlm demo`: train a small Llama model from scratch on a task built into the binary, then evaluate and
//! generate — nothing downloaded.
mod decode;
mod model;
mod run;
mod task;
mod tokenizer;

use anyhow::{Result, bail};
use clap::Args;
use run::{DemoOptions, Preset, run as run_demo};
use std::path::PathBuf;

/// The whole mission offline: numbers → English words, learned by a Llama model trained from scratch on
/// (x, y) pairs (loss on y only); held-out NLL before/after, greedy exact match, run folder with metrics.
#[derive(Args)]
pub struct DemoArgs {
    /// Where the run goes (data, init-model/, metrics.jsonl, loss.png, checkpoints/, model/, samples.jsonl);
    /// an earlier demo run there is replaced, any other non-empty folder refused.
    #[arg(long, default_value = "condlm-demo")]
    output_dir: PathBuf,
    /// Optimizer steps [default: 600; 12 with --quick].
    #[arg(long)]
    steps: Option<usize>,
    /// Seed of the split, the initial weights and the data order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A few-second run of the same pipeline with a tiny model (for tests; it does not learn the task)
    /// [default: off].
    #[arg(long)]
    quick: bool,
    /// Held-out examples printed.
    #[arg(long, default_value_t = 4)]
    show: usize,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let mut preset = if a.quick { Preset::quick() } else { Preset::full() };
    if let Some(s) = a.steps {
        if s == 0 {
            bail!("--steps must be at least 1");
        }
        preset.steps = s;
        preset.warmup_steps = preset.warmup_steps.min(s / 10);
    }
    let r = run_demo(&DemoOptions { output_dir: a.output_dir, preset, seed: a.seed, show: a.show })?;
    out!(
        "demo: exact match {:.1} % ({}/{}) on held-out numbers, held-out NLL {:.3} → {:.3}, {} steps trained in {:.0} s \
         ({:.0} s in all); run in {}",
        100.0 * r.exact_match(),
        r.exact,
        r.heldout,
        r.eval_nll_before,
        r.eval_nll_after,
        r.steps,
        r.train_seconds,
        r.total_seconds,
        r.output_dir.display()
    );
    Ok(())
}
