//! `condlm train`: fit a model on (x, y) pairs by the conditional objective, LoRA or full fine-tuning.
use anyhow::{Result, bail};
use clap::Args;
use condlm::train::run::train;
use condlm::train::schedule::Schedule;
use condlm::train::settings::TrainSettings;
use std::path::PathBuf;

/// Fine-tune on (x, y) pairs with the loss on y only. Settings come from defaults, then --config, then flags.
#[derive(Args, Default)]
pub struct TrainArgs {
    /// TOML file with any of the settings below (snake_case keys, e.g. lora_r = 8); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run saved in this checkpoint folder (or the latest checkpoint of this output folder),
    /// with its saved settings.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Start afresh in an --output-dir that holds an earlier run (its checkpoints and outputs are deleted).
    #[arg(long)]
    overwrite: bool,
    /// End this invocation after N steps with a checkpoint, as an interruption would (resume it later).
    #[arg(long)]
    stop_after_steps: Option<u64>,
    /// Model: HF folder, .gguf file, or hub id org/name.
    #[arg(long)]
    model: Option<String>,
    /// Training rows: JSONL or JSON array of {"prompt","completion"}, Alpaca or {"messages"} rows.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Validation rows from a file [default: none].
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Hold out this fraction of the prompts for validation when --eval-data is not given [default: 0].
    #[arg(long)]
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
    /// With --full: keep the embeddings (and a head tied to them) frozen.
    #[arg(long)]
    freeze_embeddings: bool,
    /// LoRA rank r [default: 16].
    #[arg(long)]
    lora_r: Option<usize>,
    /// LoRA α; the update is scaled by α/r [default: 32].
    #[arg(long)]
    lora_alpha: Option<f32>,
    /// Dropout on the LoRA input [default: 0.05].
    #[arg(long)]
    lora_dropout: Option<f32>,
    /// Comma-separated module names to adapt (q_proj,v_proj,… or c_attn,c_proj,c_fc) or all-linear [default: all-linear].
    #[arg(long)]
    lora_targets: Option<String>,
    /// rsLoRA: scale by α/√r instead of α/r.
    #[arg(long)]
    rslora: bool,
    /// Peak learning rate [default: 2e-4].
    #[arg(long)]
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
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Longest row in tokens; x is cut from the left first, y only if it alone is too long [default: 1024].
    #[arg(long)]
    max_len: Option<usize>,
    /// AdamW decoupled weight decay on matrices (not biases or norms) [default: 0].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Clip the global gradient norm to this; 0 disables [default: 1.0].
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Label smoothing ε of the cross-entropy [default: 0].
    #[arg(long)]
    label_smoothing: Option<f32>,
    /// Seed for adapter init, data order and dropout [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Evaluate every N steps; 0 = at the end of each epoch [default: 0].
    #[arg(long)]
    eval_every: Option<usize>,
    /// Checkpoint every N steps; 0 = only at the end [default: 100].
    #[arg(long)]
    save_every: Option<usize>,
    /// Checkpoints kept besides the best one by eval loss [default: 2].
    #[arg(long)]
    keep_last: Option<usize>,
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
            keep_last
        );
        if let Some(p) = &a.eval_data {
            s.eval_data = Some(p.clone());
        }
        if let Some(n) = a.max_steps {
            s.max_steps = Some(n);
        }
        s.full |= a.full;
        s.freeze_embeddings |= a.freeze_embeddings;
        s.rslora |= a.rslora;
        Ok(s)
    }

    /// On --resume only the interruption flag may be given: the run continues with its saved settings.
    fn only_resume_flags(&self) -> bool {
        let bare =
            TrainArgs { resume: self.resume.clone(), stop_after_steps: self.stop_after_steps, ..Default::default() };
        self.config.is_none() && bare.settings().ok() == self.settings().ok()
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    if a.resume.is_some() && !a.only_resume_flags() {
        bail!(
            "--resume continues a run with the settings saved in its checkpoint; drop the other flags (only --stop-after-steps and --threads may be given)"
        );
    }
    let settings = a.settings()?;
    if a.overwrite && a.resume.is_none() {
        condlm::train::checkpoint::clear_run(&settings.output_dir)?;
    }
    let r = train(settings, a.resume.as_deref(), a.stop_after_steps)?;
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
    let what = if r.stopped_early { "stopped at step" } else { "trained" };
    eprintln!(
        "{what} {} steps: train loss {:.4} → {:.4}{eval}, {:.0} tokens/s; wrote {}",
        r.steps,
        r.first_loss,
        r.last_loss,
        r.tokens_per_s,
        r.output.display()
    );
    Ok(())
}
