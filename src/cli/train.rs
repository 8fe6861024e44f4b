//! `condlm train`: fit a model on (x, y) pairs by the conditional objective, LoRA or full fine-tuning.
use super::device::{DeviceArgs, check_compute};
use super::{ComputeArgs, use_compute};
use anyhow::{Result, bail};
use clap::Args;
use condlm::data::source::DataFormat;
use condlm::distributed::{Collectives, JobFailed};
use condlm::formats::weights::BaseDtype;
use condlm::train::checkpoint;
use condlm::train::grad_sums::GradSumOptions;
use condlm::train::run::{Ending, RunOptions, train_on};
use condlm::train::schedule::Schedule;
use condlm::train::settings::TrainSettings;
use std::path::PathBuf;

/// Fine-tune on (x, y) pairs with the loss on y only. Settings come from defaults, then --config, then flags.
///
/// A flag given twice takes its last value (so a flag can override one in a wrapper script).
#[derive(Args, Default)]
#[command(args_override_self = true)]
pub struct TrainArgs {
    /// TOML file with any of the settings below (snake_case keys, e.g. lora_r = 8); flags override it
    /// [default: none].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run saved in this checkpoint folder (or the latest checkpoint of this output folder),
    /// with its saved settings [default: none: a new run].
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Start afresh in an --output-dir that holds an earlier run. Everything is checked and loaded first; the
    /// earlier run's files are set aside, deleted once the new run has written its result (an interrupted run's
    /// --resume carries them on), and put back if it fails [default: off: an --output-dir holding a run is an
    /// error].
    #[arg(long)]
    overwrite: bool,
    /// With --resume: continue although the data files changed since the run started (recorded in
    /// metrics.jsonl) [default: refuse].
    #[arg(long)]
    accept_changed_data: bool,
    /// Do not stop on divergence (the smoothed loss 2 nats above its best) or collapse (a zero gradient for 3
    /// steps) [default: stop, keeping the checkpoints, writing no result]. Non-finite losses always stop a run.
    #[arg(long)]
    no_divergence_guard: bool,
    /// Exit 0 even when the finished run left the model worse than it started (eval NLL, or the training loss
    /// without eval data) [default: exit 1, the result written].
    #[arg(long)]
    allow_worse: bool,
    /// Start even when the estimated memory of the run (printed at the start) exceeds what the machine has
    /// available [default: refuse].
    #[arg(long)]
    no_memory_check: bool,
    /// End this invocation after N steps (N ≥ 1) with a checkpoint, as an interruption would (resume it later)
    /// [default: none: run to the end].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    stop_after_steps: Option<u64>,
    /// Under mpirun/srun: each rank keeps and updates 1/R of the AdamW moments (ZeRO stage 1), then the updated
    /// parts are broadcast; the same numbers, less memory per rank for full fine-tuning [default: every rank
    /// keeps all moments]. May be turned on or off on --resume.
    #[arg(long)]
    zero1: bool,
    /// Under mpirun/srun: start summing the gradients over the ranks bucket by bucket during the last
    /// micro-batch's backward pass, as each block's gradients are final, overlapping the communication with the
    /// earlier blocks' computation (as PyTorch DDP) [default: after the whole backward pass: on CPU with
    /// shared-memory MPI the overlap measured no faster, see bench/mpi/results.md]. The same numbers either way.
    /// On a device (--device) the sums always follow the backward pass.
    #[arg(long)]
    overlap_grad_sum: bool,
    /// Under mpirun/srun: MiB of gradients per bucket summed in one collective (fewer, larger collectives vs.
    /// an earlier start; on a device, small tensors are packed into buckets and larger ones summed where they
    /// are) [default: 4]. The same numbers for any size.
    #[arg(long, value_name = "MIB")]
    grad_bucket_mib: Option<f64>,
    /// Model: HF folder, .gguf file, or hub id org/name [required for a new run, unless the --config file sets it].
    #[arg(long)]
    model: Option<String>,
    /// Training rows ({"prompt","completion"}, Alpaca or {"messages"} rows): a data file (JSONL, JSON array,
    /// Parquet, CSV or TSV), a dataset folder, or a hub dataset id org/name [required for a new run, unless the
    /// --config file sets it].
    #[arg(long)]
    data: Option<String>,
    #[arg(long, value_enum, help = super::DATA_FORMAT_HELP)]
    data_format: Option<DataFormat>,
    /// Split of a dataset folder or hub dataset given as --data [default: train].
    #[arg(long)]
    split: Option<String>,
    /// Validation rows, read like --data [default: none].
    #[arg(long)]
    eval_data: Option<String>,
    /// Split of a dataset folder or hub dataset given as --eval-data [default: the first of validation, valid,
    /// val, dev, test that is present].
    #[arg(long)]
    eval_split: Option<String>,
    /// Hold out this fraction of the prompts for validation when --eval-data is not given [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    eval_fraction: Option<f64>,
    /// Where metrics.jsonl, loss.png, checkpoints/ and adapter/ (or model/) go [default: condlm-out].
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Name of the prompt field [default: prompt].
    #[arg(long)]
    prompt_field: Option<String>,
    /// Name of the completion field [default: completion].
    #[arg(long)]
    completion_field: Option<String>,
    /// Full fine-tuning of every weight instead of LoRA [default: LoRA].
    #[arg(long)]
    full: bool,
    /// With --full: keep the embeddings (and a head tied to them) frozen [default: off: they train].
    #[arg(long)]
    freeze_embeddings: bool,
    /// LoRA rank r [default: 16].
    #[arg(long)]
    lora_r: Option<usize>,
    /// LoRA α; the update is scaled by α/r [default: 32].
    #[arg(long, allow_negative_numbers = true)]
    lora_alpha: Option<f32>,
    /// Dropout on the LoRA input [default: 0.05].
    #[arg(long, allow_negative_numbers = true)]
    lora_dropout: Option<f32>,
    /// Comma-separated modules to adapt, matched as PEFT's target_modules: leaf names (q_proj,v_proj,… or
    /// c_attn,c_proj,c_fc), path ends (mlp.c_proj) or full paths (model.layers.0.self_attn.q_proj), or all-linear
    /// [default: all-linear]. The adapter's target_modules lists full paths when only some blocks are adapted.
    #[arg(long)]
    lora_targets: Option<String>,
    /// rsLoRA: scale by α/√r instead of α/r [default: off: α/r].
    #[arg(long)]
    rslora: bool,
    /// Peak learning rate [default: 2e-4].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Learning-rate schedule after warmup [default: cosine].
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// Linear warmup steps [default: 0].
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Passes over the training rows [default: 1].
    #[arg(long)]
    epochs: Option<usize>,
    /// Total optimizer steps; overrides --epochs [default: from epochs].
    #[arg(long)]
    max_steps: Option<usize>,
    /// Rows per micro-batch [default: 8].
    #[arg(long, visible_alias = "batch")]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Longest row in tokens, at most the model's context window (a larger value is lowered to it, with a note); x
    /// is cut from the left first, y only if it alone is too long [default: 1024].
    #[arg(long)]
    max_len: Option<usize>,
    /// AdamW decoupled weight decay on matrices (not biases or norms) [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// Clip the global gradient norm to this; 0 disables [default: 1.0].
    #[arg(long, allow_negative_numbers = true)]
    max_grad_norm: Option<f64>,
    /// Label smoothing ε of the cross-entropy [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    label_smoothing: Option<f32>,
    /// Seed for adapter init, data order and dropout [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Evaluate every N steps and after the last; 0 = at the end of each epoch [default: 0].
    #[arg(long)]
    eval_every: Option<usize>,
    /// Checkpoint every N steps; 0 = only at the end. Besides these, a checkpoint is written after an evaluation
    /// that improves the best eval loss (kept as the best), and when the run stops early (a signal,
    /// --stop-after-steps) [default: 100].
    #[arg(long)]
    save_every: Option<usize>,
    /// Checkpoints kept besides the best one by eval loss [default: 2].
    #[arg(long)]
    keep_last: Option<usize>,
    /// How the frozen base's block matrices are kept: stored (as the checkpoint has them: GGUF blocks, F16, BF16
    /// stay packed; same results as f32 in less memory), f32, or bf16 (rounded). Trained matrices are f32
    /// [default: stored].
    #[arg(long, value_enum)]
    base_dtype: Option<BaseDtype>,
    /// Activation checkpointing: keep only each block's input and recompute the block in the backward pass —
    /// activation memory of about one block instead of all, for one more forward pass; same gradients
    /// [default: off].
    #[arg(long)]
    checkpoint_activations: bool,
    #[command(flatten)]
    compute: ComputeArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Check the settings, model and data, print the memory plan (weights by type, optimizer state, activations)
    /// and exit without loading the weights or writing anything [default: off].
    #[arg(long)]
    dry_run: bool,
}

macro_rules! overlay {
    ($s:ident, $a:ident, $($field:ident),*) => { $( if let Some(v) = $a.$field.clone() { $s.$field = v.into(); } )* };
}

impl TrainArgs {
    fn settings(&self) -> Result<TrainSettings> {
        let mut s = match &self.config {
            Some(p) => TrainSettings::from_toml(p)?,
            None => TrainSettings::default(),
        };
        let a = self;
        overlay!(
            s,
            a,
            model,
            data,
            data_format,
            eval_fraction,
            output_dir,
            prompt_field,
            completion_field,
            lora_r,
            lora_alpha,
            lora_dropout,
            lora_targets,
            lr,
            schedule,
            warmup_steps,
            epochs,
            batch_size,
            grad_accum,
            max_len,
            weight_decay,
            max_grad_norm,
            label_smoothing,
            seed,
            eval_every,
            save_every,
            keep_last,
            base_dtype
        );
        for (flag, setting) in
            [(&a.eval_data, &mut s.eval_data), (&a.split, &mut s.split), (&a.eval_split, &mut s.eval_split)]
        {
            if let Some(v) = flag {
                *setting = Some(v.clone());
            }
        }
        if let Some(n) = a.max_steps {
            s.max_steps = Some(n);
        }
        s.full |= a.full;
        s.freeze_embeddings |= a.freeze_embeddings;
        s.rslora |= a.rslora;
        s.checkpoint_activations |= a.checkpoint_activations;
        if let Some(c) = a.compute.compute {
            s.compute = c;
        }
        if let Some(d) = a.device.device {
            s.device = d;
        }
        Ok(s)
    }

    /// On --resume only the flags that do not change the math may be given: the run continues with its saved
    /// settings.
    fn only_resume_flags(&self) -> bool {
        let bare = TrainArgs {
            resume: self.resume.clone(),
            stop_after_steps: self.stop_after_steps,
            zero1: self.zero1,
            overlap_grad_sum: self.overlap_grad_sum,
            grad_bucket_mib: self.grad_bucket_mib,
            accept_changed_data: self.accept_changed_data,
            no_divergence_guard: self.no_divergence_guard,
            allow_worse: self.allow_worse,
            no_memory_check: self.no_memory_check,
            checkpoint_activations: self.checkpoint_activations,
            base_dtype: self.base_dtype,
            compute: ComputeArgs { compute: self.compute.compute },
            device: DeviceArgs { device: self.device.device },
            ..Default::default()
        };
        self.config.is_none() && !self.overwrite && bare.settings().ok() == self.settings().ok()
    }
}

/// Runs `train` as this process's rank (under `mpirun`/`srun` with the `mpi` feature; else the one process). An
/// error every rank returns together ([`JobFailed`]: a rank that could not load, ranks given different jobs, a run
/// that diverged) is reported by rank 0, and every rank exits with code 1. Any other error on a rank ends every rank
/// of the job (MPI_Abort) with the message, rather than leaving the others waiting in a collective.
pub fn run(a: TrainArgs) -> Result<()> {
    let world = condlm::distributed::init()?;
    let code = match run_on(&*world, a) {
        Err(e) if world.size() > 1 && e.downcast_ref::<JobFailed>().is_some() => {
            if world.is_root() {
                let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{e}\n").as_bytes());
            }
            1
        }
        Err(e) if world.size() > 1 => {
            // One write: Open MPI's abort banner goes to the same stream and must not land inside the message.
            let msg =
                format!("error (rank {} of {}): {e:#}\nending every rank of the job\n", world.rank(), world.size());
            let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
            world.abort(1)
        }
        r => r?,
    };
    drop(world); // MPI_Finalize before exiting with the code
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// --overlap-grad-sum and --grad-bucket-mib.
fn grad_sum_options(overlap: bool, bucket_mib: Option<f64>) -> Result<GradSumOptions> {
    let mut o = GradSumOptions { overlap, ..GradSumOptions::default() };
    if let Some(mib) = bucket_mib {
        let values = (mib * (1 << 20) as f64 / 4.0).round();
        if !(values >= 1.0 && values <= i32::MAX as f64) {
            bail!("--grad-bucket-mib {mib}: give a size between 4 bytes (0.000004) and 8191 MiB");
        }
        o.bucket_values = values as usize;
    }
    Ok(o)
}

/// One rank's `train`; the exit code of an interrupted run (0 otherwise).
fn run_on(world: &dyn Collectives, a: TrainArgs) -> Result<i32> {
    if a.resume.is_some() && !a.only_resume_flags() {
        bail!(
            "--resume continues a run with the settings saved in its checkpoint; drop the other flags (only \
             --stop-after-steps, --zero1, --overlap-grad-sum, --grad-bucket-mib, --accept-changed-data, --no-divergence-guard, \
             --allow-worse, --no-memory-check, --checkpoint-activations, --base-dtype stored|f32, --compute, --device and \
             --threads may be given)"
        );
    }
    if a.accept_changed_data && a.resume.is_none() {
        bail!("--accept-changed-data only applies with --resume");
    }
    let settings = a.settings()?;
    if a.resume.is_none() {
        if settings.freeze_embeddings && !settings.full {
            bail!(
                "--freeze-embeddings applies to --full fine-tuning (LoRA never trains the embeddings): add --full, or drop it"
            );
        }
        let lora_flags = [
            ("--lora-r", a.lora_r.is_some()),
            ("--lora-alpha", a.lora_alpha.is_some()),
            ("--lora-dropout", a.lora_dropout.is_some()),
            ("--lora-targets", a.lora_targets.is_some()),
            ("--rslora", a.rslora),
        ];
        // Warned, not refused: wrapper scripts pass LoRA flags to every run.
        let ignored: Vec<&str> = lora_flags.iter().filter(|f| f.1 && settings.full).map(|f| f.0).collect();
        if !ignored.is_empty() && world.is_root() {
            let verb = if ignored.len() == 1 { "shapes" } else { "shape" };
            eprintln!(
                "warning: {} {verb} a LoRA adapter; --full trains every weight and ignores it",
                ignored.join(", ")
            );
        }
        if settings.eval_data.is_some() && a.eval_fraction.is_some() && world.is_root() {
            eprintln!(
                "warning: --eval-fraction is ignored: --eval-data gives the eval rows (nothing is held out of --data)"
            );
        }
    }
    // A resumed run computes as it did, and where it did, unless --compute or --device says otherwise.
    let then = a.resume.as_deref().and_then(checkpoint::settings_of).unwrap_or_else(|| settings.clone());
    let compute = a.compute.compute.unwrap_or(then.compute);
    let device = a.device.device.unwrap_or(then.device);
    check_compute(device, compute)?;
    use_compute(compute, false, world.is_root())?;
    let opts = RunOptions {
        resume: a.resume.clone(),
        stop_after: a.stop_after_steps,
        overwrite: a.overwrite,
        accept_changed_data: a.accept_changed_data,
        divergence_guard: !a.no_divergence_guard,
        memory_check: !a.no_memory_check,
        dry_run: a.dry_run,
        resume_checkpoint_activations: a.checkpoint_activations,
        resume_base_dtype: a.base_dtype,
        zero1: a.zero1,
        grad_sums: grad_sum_options(a.overlap_grad_sum, a.grad_bucket_mib)?,
        device,
    };
    let r = train_on(world, settings, &opts)?;
    if !world.is_root() {
        return Ok(if let Ending::Interrupted(sig) = r.ending { sig.exit_code() } else { 0 });
    }
    if r.ending == Ending::DryRun {
        eprintln!("dry run: nothing trained or written");
        return Ok(0);
    }
    if r.ending == Ending::AlreadyFinished {
        eprintln!("the run already finished ({} steps); its result is {}", r.steps, r.output.display());
        return Ok(0);
    }
    let eval = match (r.eval_before, r.eval_after) {
        (Some(b), Some(e)) => format!(
            ", eval NLL {:.4} → {:.4} (perplexity {:.2} → {:.2})",
            b.nll_per_token(),
            e.nll_per_token(),
            b.perplexity(),
            e.perplexity()
        ),
        (None, Some(e)) => format!(", eval NLL {:.4} (perplexity {:.2})", e.nll_per_token(), e.perplexity()),
        _ => String::new(),
    };
    let what = if r.ending == Ending::Finished {
        format!("trained {} steps", r.steps)
    } else {
        format!("stopped at step {}", r.steps)
    };
    // The losses are this invocation's: after a resume, say which steps they span.
    let first = r.steps - r.steps_taken + 1;
    let span = if first > 1 { format!(" (steps {first}–{} in this invocation)", r.steps) } else { String::new() };
    let losses = if r.steps_taken > 0 {
        format!(": train loss {:.4} → {:.4}{span}{eval}, {:.0} tokens/s", r.first_loss, r.last_loss, r.tokens_per_s)
    } else {
        String::new()
    };
    eprintln!("{what}{losses}; wrote {}", r.output.display());
    let out = r.output.parent().and_then(|p| p.parent()).unwrap_or(&r.output);
    match r.ending {
        Ending::Interrupted(sig) => {
            eprintln!("interrupted by {}; continue with: condlm train --resume {}", sig.name(), out.display());
            return Ok(sig.exit_code());
        }
        Ending::Finished => match r.worse {
            Some(w) if !a.allow_worse => {
                bail!("{w}; the result is written, but pass --allow-worse to accept such a run (exit 0)")
            }
            Some(w) => eprintln!("warning: {w} (accepted: --allow-worse)"),
            None => {}
        },
        _ => {}
    }
    Ok(0)
}
