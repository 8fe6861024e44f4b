//! One file per subcommand.
pub mod demo;
pub mod eval;
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

/// Sizes rayon's global pool (which the GEMMs and kernels share).
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if n == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    Ok(())
}
