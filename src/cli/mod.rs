//! One file per subcommand (and per flag that is a job of its own: `info --devices`, `--check-kernels`).

/// `println!` that returns an error instead of panicking when stdout cannot be written (a full disk behind
/// `> results.txt`); the enclosing function returns `anyhow::Result`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
            .map_err(|e| anyhow::anyhow!("cannot write the output to stdout: {e}"))?
    }};
}

#[cfg(feature = "cuda")]
pub mod attention_speed;
#[cfg(feature = "cuda")]
pub mod backend_parity;
pub mod check_device;
#[cfg(feature = "cuda")]
pub mod check_kernels;
pub mod comparisons;
pub mod demo;
pub mod device;
pub mod devices;
pub mod eval;
pub mod export_gguf;
#[cfg(feature = "cuda")]
pub mod gemm_peak;
pub mod generate;
pub mod info;
pub mod inspect;
#[cfg(feature = "cuda")]
pub mod kernel_parity;
pub mod merge;
pub mod metrics;
pub mod score;
pub mod train;

use anyhow::{Result, bail};
use clap::Args;
use condlm::data::dataset::DataOptions;
use condlm::data::source::{DataFormat, DataSource, resolve_data};
use condlm::formats::fingerprint::{files_identity, model_files, model_fingerprint};
use condlm::formats::load::LoadedModel;
use condlm::formats::peft::{AdapterConfig, attach_adapter, base_mismatch, read_adapter_config};
use condlm::formats::resolve::{ModelFiles, resolve};
use condlm::formats::trained_on::TrainedOn;
use condlm::formats::weights::BaseDtype;
use condlm::kernels::bf16;
use condlm::kernels::compute::{Compute, set_compute};
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

/// `--compute` of `train`, `score` and `eval` (`generate` has its own).
#[derive(Args, Default)]
pub struct ComputeArgs {
    /// Precision of the products of the weight matrices: f32; bf16 (the GEMMs of the base linears and LM head,
    /// forward and backward: operands rounded to bf16, products accumulated in f32 — AVX512-BF16's vdpbf16ps
    /// where the CPU has it, elsewhere an exact emulation of it, slower than f32); or int8 (forward passes only:
    /// score, eval and generate, not train; the base linears of a block-quantized GGUF meet activations rounded to 8 bits in integer products, as
    /// llama.cpp computes; faster on K-quants; off f32 by 0.017 nats a token on average over rows and 0.07 at
    /// most on 200 E2E rows of Gemma 3 270M Q4_K_M). LoRA's own products, attention,
    /// norms and the optimizer stay f32. On the CPU, a forward pass of 16 rows or fewer (a batch that small)
    /// takes the matrix-vector kernels: f32 ones under bf16, so bf16 results depend on --batch-size within bf16's
    /// rounding; integer ones under int8, while longer passes take the integer GEMM (K-quants) or f32 (other
    /// blocks), so int8 results depend on --batch-size and on which rows share a pass. For scores that do not,
    /// use f32 [default: f32].
    #[arg(long, value_enum)]
    pub compute: Option<Compute>,
}

impl ComputeArgs {
    /// The compute asked for, f32 when not given.
    pub fn get(&self) -> Compute {
        self.compute.unwrap_or_default()
    }
}

/// Sets this process's compute (`--compute`) before anything runs. Int8 has no backward pass: only commands that
/// run the network forward (`forward_only`: generate, score, eval) take it. bf16 on a CPU without AVX512-BF16
/// runs the emulation: said once on stderr when `tell`.
pub fn use_compute(c: Compute, forward_only: bool, tell: bool) -> Result<()> {
    if c == Compute::Int8 && !forward_only {
        bail!(
            "--compute int8 applies to forward passes (generate, score, eval): it has no backward pass; train takes \
             --compute f32 or bf16"
        );
    }
    if c == Compute::Bf16 && !bf16::native() && tell {
        eprintln!(
            "warning: this CPU has no AVX512-BF16: --compute bf16 runs an exact emulation of it (the same bits), \
             slower than f32 here; drop --compute bf16 to compute in f32"
        );
    }
    set_compute(c);
    Ok(())
}

/// Notes where `--compute int8` leaves a model's scoring passes in f32: their products (more than 16 rows) take
/// the integer GEMM on the K-quants only (README, Decisions), so on blocks of 32 (Q4_0, Q4_1, Q8_0…) the flag
/// changes only passes of 16 tokens or fewer, and on weights that are not block-quantized nothing.
pub fn note_int8_passes(model: &condlm::network::transformer::Transformer) {
    use condlm::kernels::packed::MatrixRef;
    use condlm::kernels::quant_dot::{gemm, supports};
    if condlm::kernels::compute::compute() != Compute::Int8 {
        return;
    }
    let packed = |l: &condlm::network::linear::Linear, ok: fn(condlm::kernels::dequant::GgmlType) -> bool| matches!(l.w.matrix(), MatrixRef::Packed(p) if ok(p.ty));
    let any = |ok| model.blocks.iter().any(|b| b.linears().any(|l| packed(l, ok)));
    if !any(supports) {
        eprintln!("note: --compute int8 changes nothing here: the model's weights are not block-quantized (GGUF)");
    } else if !any(gemm::handles) {
        eprintln!(
            "note: --compute int8 takes integer products on this model only in passes of 16 tokens or fewer (its \
             blocks are not K-quants, whose longer passes take the integer GEMM): scores of longer rows equal f32's"
        );
    }
}

/// How the model's block matrices are kept, shared by `eval`, `score` and `generate`.
#[derive(Args)]
pub struct BaseArgs {
    /// stored (as the checkpoint has them: GGUF blocks, F16, BF16 stay packed; results identical to f32 in
    /// less memory), f32, or bf16 (rounded) [default: stored].
    #[arg(long, value_enum, default_value_t = BaseDtype::Stored, hide_default_value = true)]
    pub base_dtype: BaseDtype,
}

/// Help of --data-format, shared by every command that reads data.
pub const DATA_FORMAT_HELP: &str = "How to read data files: auto (by extension: .parquet, .csv, .tsv, else JSONL or a \
JSON array), jsonl, json, parquet, csv, tsv [default: auto]";

/// Help of --split for the commands that read evaluation data by default.
pub const EVAL_SPLIT_HELP: &str = "Split of a dataset folder or hub dataset given as --data [default: the first of \
validation, valid, val, dev, test that is present]";

/// Where rows come from, shared by `eval`, `score` and `inspect` (`train` and `generate` take the same flags,
/// optional).
#[derive(Args)]
pub struct DataArgs {
    /// Rows: a data file (JSONL, JSON array, Parquet, CSV or TSV), a dataset folder, or a hub dataset id org/name
    /// (from the HF cache, downloaded when online).
    #[arg(long)]
    data: String,
    #[arg(long, value_enum, default_value_t = DataFormat::Auto, hide_default_value = true, help = DATA_FORMAT_HELP)]
    data_format: DataFormat,
    /// Split of a dataset folder or hub dataset given as --data [default: train for inspect; for eval and score
    /// the first of validation, valid, val, dev, test that is present].
    #[arg(long)]
    split: Option<String>,
}

impl DataArgs {
    /// The files to read; `defaults` are the splits tried when --split is not given.
    pub fn source(&self, defaults: &[&str]) -> Result<DataSource> {
        resolve_data(&self.data, self.data_format, self.split.as_deref(), defaults)
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
    /// base is refused unless --ignore-base-mismatch, or unless condlm trained it on this very model under
    /// another name (the base fingerprint in its `condlm.json` is this model's).
    pub fn apply(&self, model: &str, m: &mut LoadedModel) -> Result<Option<AdapterConfig>> {
        let Some(dir) = &self.adapter else { return Ok(None) };
        let cfg = read_adapter_config(dir)?;
        let mismatch = match base_mismatch(dir, &cfg, model) {
            Some(_) if trained_on_these_files(dir, m)? => None,
            other => other,
        };
        if let Some(m) = mismatch {
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

    /// The adapter's identity for a partial output's fingerprint (`null` without one): its folder, resolved,
    /// and its two files ([`files_identity`]).
    pub fn identity(&self) -> Result<serde_json::Value> {
        let Some(dir) = &self.adapter else { return Ok(serde_json::Value::Null) };
        files_identity(dir, &["adapter_config.json".into(), "adapter_model.safetensors".into()])
    }
}

/// Whether condlm trained the adapter in `dir` on the model `m` was loaded from: its `condlm.json` records the
/// fingerprint of those very files.
fn trained_on_these_files(dir: &std::path::Path, m: &LoadedModel) -> Result<bool> {
    match TrainedOn::read(dir)?.and_then(|t| t.base_fingerprint) {
        Some(recorded) => Ok(recorded == model_fingerprint(&m.files)?),
        None => Ok(false),
    }
}

/// `--model`'s identity for a partial output's fingerprint: its resolved path and the fingerprint of each file
/// loading reads ([`model_files`], [`files_identity`]).
pub fn model_identity(spec: &str) -> Result<serde_json::Value> {
    let files = resolve(spec)?;
    let names: Vec<String> = match &files {
        ModelFiles::HfDir(_) => model_files(&files)?
            .iter()
            .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
            .collect(),
        ModelFiles::Gguf(_) => vec![],
    };
    files_identity(files.path(), &names)
}

/// A setting's value for a partial output's fingerprint, as the flag takes it (`bf16`, `cuda`).
pub fn flag_value(v: impl clap::ValueEnum) -> serde_json::Value {
    v.to_possible_value().map_or(serde_json::Value::Null, |p| p.get_name().into())
}

/// Sizes rayon's global pool (which the GEMMs and kernels share).
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = threads.unwrap_or(cores);
    if n == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    // Far more threads than cores only slow the math down (thousands of them stall it for minutes): a typo.
    let most = (8 * cores).max(64);
    if n > most {
        anyhow::bail!("--threads {n} is far more than this machine's {cores} cores (at most {most}); use {cores}");
    }
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    Ok(())
}
