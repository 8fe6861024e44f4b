//! One file per subcommand.
pub mod demo;
pub mod eval;
pub mod export_gguf;
pub mod generate;
pub mod info;
pub mod inspect;
pub mod merge;
pub mod metrics;
pub mod score;
pub mod train;

use anyhow::Result;
use clap::Args;
use condlm::data::dataset::DataOptions;
use condlm::formats::load::LoadedModel;
use condlm::formats::peft::{AdapterConfig, attach_adapter, base_mismatch, read_adapter_config};
use std::path::PathBuf;

/// The field names of prompt/completion rows, shared by `eval` and `score` (`train` takes the same flags as
/// optional settings over its config file).
#[derive(Args)]
pub struct FieldArgs {
    /// Name of the prompt field.
    #[arg(long, default_value = "prompt")]
    prompt_field: String,
    /// Name of the completion field.
    #[arg(long, default_value = "completion")]
    completion_field: String,
}

impl FieldArgs {
    /// The rows' options with these field names and rows of at most `max_len` tokens.
    pub fn options(&self, max_len: usize) -> DataOptions {
        DataOptions {
            prompt_field: self.prompt_field.clone(),
            completion_field: self.completion_field.clone(),
            max_len,
        }
    }
}

/// The adapter to apply, shared by `eval`, `score`, `generate` and `merge` (which requires it).
#[derive(Args)]
pub struct AdapterArgs {
    /// PEFT LoRA adapter folder to apply (condlm's or PEFT's), trained for --model [default: none].
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Apply --adapter even though its adapter_config.json names another base model than --model (a warning
    /// is printed; tensor shapes must still match) [default: off, such an adapter is refused].
    #[arg(long, requires = "adapter")]
    ignore_base_mismatch: bool,
}

impl AdapterArgs {
    /// Attaches the adapter, if any, to `m` (loaded from `model`, the --model spec); one that names another
    /// base is refused unless --ignore-base-mismatch.
    pub fn apply(&self, model: &str, m: &mut LoadedModel) -> Result<Option<AdapterConfig>> {
        let Some(dir) = &self.adapter else { return Ok(None) };
        let cfg = read_adapter_config(dir)?;
        if let Some(m) = base_mismatch(dir, &cfg, model) {
            if !self.ignore_base_mismatch {
                anyhow::bail!(
                    "{m}; on another base (even one with the same shapes) it computes something its training never \
                     saw. Pass the model it was trained on, or --ignore-base-mismatch if \"{model}\" is that model \
                     under another name"
                );
            }
            eprintln!("warning: {m}; applied anyway (--ignore-base-mismatch)");
        }
        attach_adapter(dir, &cfg, &mut m.model)?;
        Ok(Some(cfg))
    }
}

/// Sizes rayon's global pool (which the GEMMs and kernels share).
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if n == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    Ok(())
}
