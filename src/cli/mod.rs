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

/// Sizes rayon's global pool (which the GEMMs and kernels share).
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if n == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    Ok(())
}
