//! A whole training run, top to bottom: load model and data, attach adapters, loop over
//! optimizer steps with evaluation, metrics and checkpoints, then write the adapter or model.
//!
//! Data-parallel under MPI ([`train_on`] with several ranks): every rank loads the model and the data and
//! visits the same steps; each computes its shard of every micro-batch ([`Trainer::step_on`]) and of each
//! evaluation. Rank 0 alone touches the output folder (metrics, checkpoints, plot, result) and draws the progress.
use super::agree::{Job, agree};
use super::checkpoint::{self, RunRecord};
use super::grad_sums::GradSumOptions;
use super::guard::{Guard, worse_than_start};
use super::interrupt::{Interrupt, Signal};
use super::memory::{MemoryPlan, available_bytes, largest_micro_batch};
use super::on_device;
use super::optim::AdamWConfig;
use super::output_dir::{self, SetAside};
use super::plot::plot_losses;
use super::settings::TrainSettings;
use super::trainer::{StepStats, TrainConfig, TrainState, Trainer, micro_batch_extent, micro_batch_shards};
use crate::data::dataset::{DataOptions, DataStats, Dataset, load_dataset, split_by_prompt};
use crate::data::example::Example;
use crate::data::source::DataSource;
use crate::distributed::{Collectives, Everywhere, JobFailed, Single, shard};
use crate::formats::fingerprint::model_fingerprint;
use crate::formats::hf_export::save_hf_folder;
use crate::formats::load::{LoadedModel, open_model};
use crate::formats::peft::save_adapter;
use crate::formats::resolve::ModelFiles;
use crate::formats::trained_on::TrainedOn;
use crate::formats::weights::BaseDtype;
use crate::network::adapters::{attach, set_full_finetune};
use crate::network::device::Placement;
use crate::network::lora::LoraConfig;
use crate::network::transformer::Transformer;
use crate::progress;
use crate::score::{OnCpu, Scorer, Totals, name_row, row_scores, score_encoded};
use crate::tokenizer::TextTokenizer;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How an invocation of `train` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every step is done and the adapter (or model) is written.
    Finished,
    /// `--stop-after-steps` ended it with a checkpoint.
    Stopped,
    /// A signal ended it with a checkpoint.
    Interrupted(Signal),
    /// A resumed run that had already taken every step (its output exists).
    AlreadyFinished,
    /// `--dry-run`: settings, model and data checked, the memory plan printed, nothing trained or written.
    DryRun,
}

impl RunSummary {
    /// A run that took no step.
    fn nothing(ending: Ending, output: PathBuf) -> Self {
        RunSummary {
            steps: 0,
            steps_taken: 0,
            first_loss: f64::NAN,
            last_loss: f64::NAN,
            eval_before: None,
            eval_after: None,
            tokens_per_s: 0.0,
            output,
            ending,
            worse: None,
        }
    }
}

/// How a run ended, for the one-line summary.
pub struct RunSummary {
    pub steps: u64,
    /// Steps this invocation took.
    pub steps_taken: u64,
    pub first_loss: f64,
    pub last_loss: f64,
    pub eval_before: Option<Totals>,
    pub eval_after: Option<Totals>,
    pub tokens_per_s: f64,
    pub output: PathBuf,
    pub ending: Ending,
    /// Why a finished run left the model worse than it started, if it did.
    pub worse: Option<String>,
}

/// How `train` runs, besides the settings (which a checkpoint saves): none of these change the math.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Continue the run saved in this checkpoint (or output) folder.
    pub resume: Option<PathBuf>,
    /// End this invocation after that many steps with a checkpoint, as an interruption would.
    pub stop_after: Option<u64>,
    /// Replace an earlier run in the output folder (set aside until the new run has written its result).
    pub overwrite: bool,
    /// On resume, continue although the data files changed since the run started.
    pub accept_changed_data: bool,
    /// Stop on divergence or collapse ([`super::guard`]).
    pub divergence_guard: bool,
    /// Refuse a run whose estimated memory exceeds what the machine has ([`super::memory`]).
    pub memory_check: bool,
    /// Check everything and print the memory plan, then stop before loading the weights.
    pub dry_run: bool,
    /// On resume, turn activation checkpointing on (memory for time; the same numbers).
    pub resume_checkpoint_activations: bool,
    /// On resume, keep the base as this instead (stored ↔ f32 give the same numbers; bf16 does not).
    pub resume_base_dtype: Option<BaseDtype>,
    /// Under several ranks, ZeRO-1: each rank keeps 1/R of the AdamW moments ([`Trainer::shard_optimizer`]).
    pub zero1: bool,
    /// Under several ranks, how the gradients are summed ([`super::grad_sums`]).
    pub grad_sums: GradSumOptions,
    /// Where the steps run (`--device`): the CPU, or the model on a GPU ([`super::on_device`]).
    pub device: Placement,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            resume: None,
            stop_after: None,
            overwrite: false,
            accept_changed_data: false,
            divergence_guard: true,
            memory_check: true,
            dry_run: false,
            resume_checkpoint_activations: false,
            resume_base_dtype: None,
            zero1: false,
            grad_sums: GradSumOptions::default(),
            device: Placement::Cpu,
        }
    }
}

/// Rows per evaluation forward pass.
const EVAL_BATCH: usize = 16;

pub fn lora_config(s: &TrainSettings) -> LoraConfig {
    LoraConfig {
        rank: s.lora_r,
        alpha: s.lora_alpha,
        dropout: s.lora_dropout,
        rslora: s.rslora,
        targets: s.lora_targets.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
    }
}

/// Token-weighted NLL of `data` under the model's current weights (no dropout); a non-finite row is named
/// by its source.
pub fn evaluate(model: &Transformer, data: &Dataset) -> Result<Totals> {
    evaluate_on(&Single, &mut OnCpu::new(model), data)
}

/// [`evaluate`] as one rank of `world`: each rank scores its shard of the rows, the totals are summed.
fn evaluate_on(world: &dyn Collectives, scorer: &mut dyn Scorer, data: &Dataset) -> Result<Totals> {
    let mine = shard(data.examples.len(), world.rank(), world.size());
    let lps = score_encoded(scorer, &data.examples[mine.clone()], EVAL_BATCH, |_| {})
        .map_err(|e| name_row(e, &data.sources[mine]))?;
    let t = Totals::of(&row_scores(&lps));
    let mut sums = [t.nll, t.tokens as f64];
    world.sum_f64(&mut sums);
    Ok(Totals { nll: sums[0], tokens: sums[1] as usize })
}

/// The training and eval rows; `describe` prints their statistics.
fn load_data(
    s: &TrainSettings,
    (data, eval_data): &(DataSource, Option<DataSource>),
    tok: &TextTokenizer,
    max_positions: usize,
    describe: bool,
) -> Result<(Dataset, Option<Dataset>)> {
    if describe && s.max_len > max_positions {
        eprintln!("note: --max-len {} is above the model's context window; using {max_positions}", s.max_len);
    }
    let opts = DataOptions {
        prompt_field: s.prompt_field.clone(),
        completion_field: s.completion_field.clone(),
        max_len: s.max_len.min(max_positions),
    };
    let all = load_dataset(data, tok, &opts)?;
    let (train, eval) = match (eval_data, s.eval_fraction) {
        (Some(e), _) => (all, Some(load_dataset(e, tok, &opts)?)),
        (None, f) if f > 0.0 => {
            let (train, eval) = split_by_prompt(all, f, s.seed);
            (train, Some(eval))
        }
        _ => (all, None),
    };
    if train.examples.is_empty() {
        if eval.as_ref().is_some_and(|e| !e.examples.is_empty()) && s.eval_data.is_none() {
            bail!(
                "{}: --eval-fraction {} held out every row: it holds out whole prompts, and this data has too few \
                 distinct prompts to split; pass --eval-data or lower --eval-fraction",
                data.label,
                s.eval_fraction
            );
        }
        bail!("{}: no training rows left (all were empty or truncated away)", data.label);
    }
    if describe {
        eprintln!("{}", train.stats.describe(&format!("train ({})", data.label)));
        if let Some(e) = &eval {
            eprintln!("{}", e.stats.describe("eval"));
        }
    }
    Ok((train, eval))
}

/// The order rows are visited in epoch `epoch`: a permutation that is a pure function of
/// (seed, epoch), so the data cursor of a checkpoint is just the step number.
fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut keyed: Vec<(u64, usize)> = (0..n)
        .map(|i| (crate::rng::mix(crate::rng::mix(seed ^ epoch.wrapping_mul(0xA24B_AED4)) ^ i as u64), i))
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}

struct Metrics {
    file: std::fs::File,
}

impl Metrics {
    /// Opens metrics.jsonl: afresh for a new run; for a run resumed at step `resumed_at`, without the rows
    /// of the steps after it (an interrupted invocation may have logged steps its checkpoint does not hold).
    fn open(dir: &Path, resumed_at: Option<u64>) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        if let Some(step) = resumed_at {
            // Missing is an empty log; unreadable is an error, since the file is rewritten below.
            let text = match std::fs::read_to_string(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                read => read.with_context(|| {
                    format!("cannot read {} to continue its rows; repair or move it, then resume", path.display())
                })?,
            };
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .is_ok_and(|v| v["step"].as_u64().is_some_and(|s| s <= step))
                })
                .map(|l| format!("{l}\n"))
                .collect();
            crate::output::write_atomic(&path, kept.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(resumed_at.is_some())
            .write(true)
            .truncate(resumed_at.is_none())
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Metrics { file })
    }

    fn log(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}")?;
        Ok(())
    }

    fn log_eval(&mut self, step: u64, t: &Totals) -> Result<()> {
        self.log(serde_json::json!({"step": step, "eval_nll": t.nll_per_token(), "eval_ppl": t.perplexity(), "eval_tokens": t.tokens}))
    }
}

/// (step, value) points of a curve.
type Curve = Vec<(u64, f64)>;

/// Reads metrics.jsonl back for the plot: (step, train loss) and (step, eval NLL).
fn read_curves(dir: &Path) -> (Curve, Curve) {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    let (mut train, mut eval) = (vec![], vec![]);
    for v in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        let step = v["step"].as_u64().unwrap_or(0);
        if let Some(l) = v["loss"].as_f64() {
            train.push((step, l));
        }
        if let Some(e) = v["eval_nll"].as_f64() {
            eval.push((step, e));
        }
    }
    (train, eval)
}

/// Runs (or, with `opts.resume`, continues) a training run. Everything is loaded and checked before the output
/// folder is touched; an earlier run replaced by `opts.overwrite` is kept until the new result is written.
pub fn train(s: TrainSettings, opts: &RunOptions) -> Result<RunSummary> {
    train_on(&Single, s, opts)
}

/// What a rank loads before its run starts: the settings it runs with and, but for a dry run, the model, the data
/// and the trainer; with several ranks, the job the ranks compare ([`agree`]).
struct Loaded {
    s: TrainSettings,
    out: PathBuf,
    /// None for a dry run (the weights are not loaded).
    run: Option<LoadedRun>,
    job: Option<Job>,
}

struct LoadedRun {
    files: ModelFiles,
    tokenizer: TextTokenizer,
    train_set: Dataset,
    eval_set: Option<Dataset>,
    trainer: Trainer,
    lcfg: LoraConfig,
    plan: Plan,
    vocab: usize,
    best_eval: Option<(f64, u64)>,
    data_changed: bool,
    data_sha256: String,
    model_fingerprint: String,
}

/// Loads and checks everything a rank needs before its run starts, without a collective (so that a rank that fails
/// here cannot leave the others waiting: [`agree`] follows). Rank 0 only locks the output folder and reads it, to
/// refuse one the run may not write, deleting nothing but killed runs' temporaries (`output_dir::check`).
fn load(world: &dyn Collectives, s: TrainSettings, opts: &RunOptions) -> Result<Loaded> {
    let root = world.is_root();
    let (s, resumed) = settings_and_state(s, opts, root)?;
    let sources = s.data_sources()?;
    let out = s.output_dir.clone();
    let inputs: Vec<&Path> =
        [Path::new(&s.model), Path::new(&s.data)].into_iter().chain(s.eval_data.as_deref().map(Path::new)).collect();
    if root {
        output_dir::check(&out, resumed.is_some(), opts.overwrite, &inputs)?;
    }
    let available = if opts.memory_check { available_bytes() } else { None };
    let opened = open_model(&s.model)?;
    let params = opened.config.num_parameters();
    // Full fine-tuning trains (so keeps in f32) every matrix; LoRA keeps the frozen ones as --base-dtype says.
    let kept = if s.full { [("F32", 4 * params)].into() } else { opened.weights.resident_bytes(s.base_dtype) };
    let weight_bytes = kept.values().sum();
    MemoryPlan::new(&opened.config, &s, 0, weight_bytes).check(available, &s)?;
    let (train_set, eval_set) = load_data(&s, &sources, &opened.tokenizer, opened.config.max_positions, root)?;
    let lengths = train_set.examples.iter().map(|e| e.ids.len()).collect();
    // On a device the activations live there: the host holds the weights and the optimizer state.
    let tokens = if opts.device == Placement::Cpu { largest_micro_batch(lengths, s.batch_size) } else { 0 };
    let memory = MemoryPlan::new(&opened.config, &s, tokens, weight_bytes);
    memory.check(available, &s)?;
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    if root {
        eprintln!(
            "memory{}: {}{}{}",
            if opts.device == Placement::Cpu {
                String::new()
            } else {
                format!(" (host; activations on {})", opts.device)
            },
            memory.describe(),
            available.map_or(String::new(), |a| format!("; {:.2} GiB available", gib(a))),
            if world.size() > 1 { format!(" (per rank; {} ranks)", world.size()) } else { String::new() }
        );
    }
    let data_sha256 = data_fingerprint(&sources)?;
    let plan = Plan::new(&s, train_set.examples.len());
    let job = match world.size() > 1 {
        false => None,
        true => {
            // Run options that change the numbers or which collectives the ranks call, and where a resumed run is.
            let meta = resumed.as_ref().map(|r| &r.0);
            let finished = meta.is_some_and(|m| m.step >= plan.total_steps as u64)
                && out.join(if s.full { "model" } else { "adapter" }).exists();
            let options = [
                ("dry_run", opts.dry_run.into()),
                ("stop_after_steps", serde_json::json!(opts.stop_after)),
                ("divergence_guard", opts.divergence_guard.into()),
                ("zero1", opts.zero1.into()),
                ("overlap_grad_sum", opts.grad_sums.overlap.into()),
                ("grad_bucket_values", opts.grad_sums.bucket_values.into()),
                ("resumed_at_step", serde_json::json!(meta.map(|m| m.step))),
                ("best_eval", serde_json::json!(meta.map(|m| m.best_eval))),
                ("already_finished", finished.into()),
            ];
            let data = (data_sha256.train.clone(), data_sha256.eval.clone());
            let state = resumed.as_ref().map(|r| &r.1);
            Some(Job::new(&s, &options, data, (&train_set, eval_set.as_ref()), &opened.config, &opened.weights, state)?)
        }
    };
    if opts.dry_run {
        opened.weights.check_layout(&opened.config)?;
        if root {
            let by_type: Vec<String> = kept.iter().map(|(ty, b)| format!("{ty} {:.2}", gib(*b))).collect();
            eprintln!("weights as kept (GiB): {}", by_type.join(", "));
        }
        return Ok(Loaded { s, out, run: None, job });
    }
    let LoadedModel { files, mut model, tokenizer } = opened.load(s.base_dtype)?;
    let data_sha256 = data_sha256.all;
    let model_fingerprint = model_fingerprint(&files)?;
    let lcfg = lora_config(&s);
    if s.full {
        set_full_finetune(&mut model, s.freeze_embeddings);
    } else {
        attach(&mut model, &lcfg, s.seed)?;
    }
    let vocab = model.config.vocab_size;
    let mut trainer = Trainer::new(model, train_config(&s, plan.total_steps))?;
    if opts.zero1 && world.size() > 1 {
        trainer.shard_optimizer(world);
    }
    trainer.set_grad_sums(opts.grad_sums);
    let (mut best_eval, mut data_changed) = (None, false);
    if let Some((meta, state)) = resumed {
        data_changed = check_same_data(&meta, &data_sha256, opts.accept_changed_data)?;
        check_same_model(Path::new(&s.model), meta.model_fingerprint.as_deref(), &model_fingerprint)?;
        trainer.import_state(state)?;
        best_eval = meta.best_eval;
    }
    let run = LoadedRun {
        files,
        tokenizer,
        train_set,
        eval_set,
        trainer,
        lcfg,
        plan,
        vocab,
        best_eval,
        data_changed,
        data_sha256,
        model_fingerprint,
    };
    Ok(Loaded { s, out, run: Some(run), job })
}

/// [`train`] as one rank of `world` (every rank calls it with the same settings and options). A resumed run
/// reads its checkpoint on every rank, so on several machines the output folder must be shared (as the data
/// is); any number of ranks can resume any checkpoint.
pub fn train_on(world: &dyn Collectives, s: TrainSettings, opts: &RunOptions) -> Result<RunSummary> {
    let root = world.is_root();
    // The run's first collective: every rank loaded and was given the same job, or every rank stops here.
    let loaded = agree(world, load(world, s, opts), |l| l.job.as_ref().expect("several ranks make a job"))?;
    let Loaded { s, out, run, .. } = loaded;
    let Some(LoadedRun {
        files,
        tokenizer,
        train_set,
        eval_set,
        mut trainer,
        lcfg,
        plan,
        vocab,
        best_eval,
        data_changed,
        data_sha256,
        model_fingerprint,
    }) = run
    else {
        return Ok(RunSummary::nothing(Ending::DryRun, out));
    };
    let dev = on_device::open(opts.device, &trainer.model, world).with_context(|| match opts.resume.is_some() {
        true => format!("the run trains on {} (a resumed run keeps its --device unless given another)", opts.device),
        false => format!("--device {}", opts.device),
    })?;
    if let Some(dev) = dev {
        let name = dev.name();
        trainer.use_device(dev)?;
        // Sized now for the largest batch of the rest of the run (beyond a --stop-after-steps, which a resumed run
        // goes on from), a run too large for the device fails here, not at its step.
        let steps = plan.steps_from(trainer.step, None);
        let sizes = largest_batches((&train_set, eval_set.as_ref()), &plan, &s, steps, world);
        let tokens = sizes.tokens;
        if root && tokens > 0 {
            eprintln!(
                "training on {name}, buffers for batches of up to {tokens} tokens (the largest micro-batch or \
                 evaluation batch of the run)"
            );
        }
        if tokens > 0 {
            trainer.reserve_device(tokens, sizes.chunks, &sizes.largest, sizes.largest_eval).with_context(|| {
                format!(
                    "allocating the buffers for this run's largest batch ({tokens} tokens) on {} failed; if it is out \
                     of memory, lower --batch-size (raising --grad-accum keeps the rows per step) or --max-len",
                    opts.device
                )
            })?;
        }
    }
    let output = out.join(if s.full { "model" } else { "adapter" });
    if trainer.step >= plan.total_steps as u64 && output.exists() {
        // An earlier run this one replaced, left behind by a kill between the result and its deletion, goes now;
        // the plot, drawn after that deletion, is drawn if it is missing.
        if root && let Some(a) = SetAside::adopt(&out) {
            a.discard();
        }
        let (train_curve, eval_curve) = if root { read_curves(&out) } else { Default::default() };
        if !train_curve.is_empty() && !out.join("loss.png").exists() {
            plot_losses(&out.join("loss.png"), &format!("condlm: {}", s.model), &train_curve, &eval_curve)?;
        }
        return Ok(RunSummary { steps: trainer.step, ..RunSummary::nothing(Ending::AlreadyFinished, output) });
    }

    if root {
        std::fs::create_dir_all(&out).with_context(|| format!("cannot create output folder {}", out.display()))?;
        output_dir::lock(&out)?;
    }
    let interrupt = Interrupt::install(&format!("condlm train --resume {}", out.display()))?;
    let aside = match root {
        true if opts.overwrite => SetAside::take(&out)?,
        true if opts.resume.is_some() => SetAside::adopt(&out),
        _ => None,
    };
    let replaces = aside.as_ref().and_then(|a| a.token()).map(str::to_string);
    let steps = StepLoop {
        world,
        s: &s,
        plan,
        train_set: &train_set,
        eval_set: eval_set.as_ref(),
        stop_after: opts.stop_after,
        interrupt: &interrupt,
        guard: opts.divergence_guard.then(|| Guard::new(vocab, s.lr)),
        data_sha256: &data_sha256,
        model_fingerprint: &model_fingerprint,
        replaces: replaces.as_deref(),
        data_changed,
    };
    let progress = match steps.run(&mut trainer, best_eval) {
        Ok(p) => p,
        Err(e) => return Err(failed(world, e, &out, aside)),
    };
    let ending = progress.ending;
    // A result that cannot be written (a full disk, say) fails with the run's last checkpoint kept, from which
    // `--resume` writes it; an earlier run it replaces stays set aside until then.
    let resume_hint =
        || format!("the run's last checkpoint is kept: write its result with condlm train --resume {}", out.display());
    trainer.sync_to_host().with_context(resume_hint)?;
    let output = match ending {
        _ if !root => out.clone(),
        Ending::Finished if s.full => {
            let trained = TrainedOn {
                quantized_base: TrainedOn::quantized_matrices(&files)?,
                ..trained_on(&train_set.stats, &model_fingerprint)
            };
            // a full fine-tune's weights are the base's values moved: an export needs to know their grid
            save_hf_folder(&output, &trainer.model, &tokenizer, &files, Some(trained)).with_context(resume_hint)?;
            output
        }
        Ending::Finished => {
            let trained = trained_on(&train_set.stats, &model_fingerprint);
            save_adapter(&output, &trainer.model, &lcfg, &s.model, trained).with_context(resume_hint)?;
            output
        }
        _ => checkpoint::list(&out).pop().map_or(out.clone(), |c| c.1),
    };
    match (ending, aside) {
        (Ending::Finished, Some(a)) => a.discard(),
        (_, Some(a)) => eprintln!(
            "note: the earlier run this one replaces stays in {} until this run has written its result",
            a.path().display()
        ),
        _ => {}
    }
    let (train_curve, eval_curve) = if root { read_curves(&out) } else { Default::default() };
    if !train_curve.is_empty() {
        plot_losses(&out.join("loss.png"), &format!("condlm: {}", s.model), &train_curve, &eval_curve)?;
    }
    Ok(RunSummary {
        steps: trainer.step,
        steps_taken: progress.steps_taken,
        first_loss: progress.first_loss,
        last_loss: progress.last_loss,
        eval_before: progress.eval_before,
        eval_after: progress.eval_after,
        tokens_per_s: progress.tokens as f64 / progress.train_secs,
        output,
        ending,
        worse: (ending == Ending::Finished).then(|| worse_than_start(&train_curve, &eval_curve)).flatten(),
    })
}

/// What the run trained on (its row formats and base model), recorded beside its result.
fn trained_on(stats: &DataStats, base_fingerprint: &str) -> TrainedOn {
    let base_fingerprint = Some(base_fingerprint.to_string());
    TrainedOn {
        pairs: stats.pairs > 0,
        alpaca: stats.alpaca > 0,
        chats: stats.chats > 0,
        base_fingerprint,
        ..Default::default()
    }
}

/// A run that failed mid-way, on this rank. Rank 0 alone owns the output folder, so it alone puts back an earlier
/// run ([`after_failure`]) and reports. An error every rank meets at the same step ([`Everywhere`]: the divergence
/// guard, a non-finite loss) ends the ranks together: the others wait at a barrier until rank 0 is done (no
/// MPI_Abort can end rank 0 while it restores the earlier run), then every rank returns [`JobFailed`], which only
/// rank 0 prints. Any other error is this rank's alone: it ends the job through MPI_Abort (`cli::train`).
fn failed(world: &dyn Collectives, e: anyhow::Error, out: &Path, aside: Option<SetAside>) -> anyhow::Error {
    let everywhere = Everywhere::is(&e) && world.size() > 1;
    let e = if world.is_root() { after_failure(e, out, aside) } else { e };
    if !everywhere {
        return e;
    }
    world.barrier();
    JobFailed(format!("error: {e:#}")).into()
}

/// A run that failed mid-way: puts back an earlier run it replaced (its own checkpoints, if any, moved beside it)
/// and says what is kept.
fn after_failure(e: anyhow::Error, out: &Path, aside: Option<SetAside>) -> anyhow::Error {
    let kept = match (aside, checkpoint::list(out).pop()) {
        (Some(a), _) => match a.restore() {
            Ok(None) => format!("the run wrote no checkpoint; the earlier run in {} is back", out.display()),
            Ok(Some(failed)) => format!(
                "the earlier run in {} is back; this run's checkpoints and metrics are in {} (delete it when no \
                 longer wanted)",
                out.display(),
                failed.display()
            ),
            Err(r) => format!("the earlier run could not be put back: {r:#}"),
        },
        (None, Some((step, dir))) => {
            format!(
                "nothing was written as the run's result; its last checkpoint ({}, step {step}) is kept",
                dir.display()
            )
        }
        (None, None) if out.join("metrics.jsonl").exists() => format!(
            "nothing was written as the run's result; its metrics are in {}; start again with --overwrite",
            out.join("metrics.jsonl").display()
        ),
        (None, None) => "nothing was written as the run's result".into(),
    };
    anyhow::anyhow!("{e:#}\n{kept}")
}

/// SHA-256s of a run's data files.
struct DataSha {
    /// Over the training data files (in order; one file gives its own SHA-256) and then the eval data files, if
    /// any: what a checkpoint records.
    all: String,
    /// Over the training data files alone, and the eval data files alone.
    train: String,
    eval: Option<String>,
}

/// The [`DataSha`] of the data files, each read once.
fn data_fingerprint((data, eval_data): &(DataSource, Option<DataSource>)) -> Result<DataSha> {
    use sha2::{Digest, Sha256};
    /// Feeds two hashers at once.
    struct Both<'a>(&'a mut Sha256, &'a mut Sha256);
    impl Write for Both<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.update(b);
            self.1.update(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut all = Sha256::new();
    let mut one = |files: &[PathBuf]| -> Result<String> {
        let mut own = Sha256::new();
        for path in files {
            let mut f = crate::input::open_regular(path, "data file")?;
            std::io::copy(&mut f, &mut Both(&mut all, &mut own))
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        Ok(format!("{:x}", own.finalize()))
    };
    let train = one(&data.files)?;
    let eval = eval_data.as_ref().map(|e| one(&e.files)).transpose()?;
    Ok(DataSha { all: format!("{:x}", all.finalize()), train, eval })
}

/// A resumed run must see the data it started with: its order and batches depend on it. True when it changed
/// and `accept` lets the run go on.
fn check_same_data(meta: &checkpoint::CheckpointMeta, now: &str, accept: bool) -> Result<bool> {
    match &meta.data_sha256 {
        Some(then) if then != now && !accept => bail!(
            "the data changed since this run started ({} has SHA-256 {now}, the checkpoint recorded {then}); \
             resuming would continue on different rows. Restore the data, or pass --accept-changed-data to continue \
             anyway (recorded in metrics.jsonl)",
            meta.settings.data
        ),
        Some(then) if then != now => {
            eprintln!(
                "warning: the data changed since this run started; continuing on the new data (--accept-changed-data)"
            );
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// A resumed run must continue on the base model it started from: an adapter's steps, or a full fine-tune's
/// moments, mean nothing on other weights or another tokenizer. `then`: the checkpoint's fingerprint of the model
/// (`formats::fingerprint`; None in checkpoints written before condlm recorded it).
fn check_same_model(model: &Path, then: Option<&str>, now: &str) -> Result<()> {
    match then {
        Some(then) if then != now => bail!(
            "the base model changed since this run started: {} is not the model the checkpoint was trained on \
             (its config, tokenizer or weights differ). Resume with the model the run started from, or start a new \
             run on this one",
            model.display()
        ),
        _ => Ok(()),
    }
}

/// The settings to run with (a resumed run's own, from its checkpoint) and the state to resume from.
fn settings_and_state(
    s: TrainSettings,
    opts: &RunOptions,
    root: bool,
) -> Result<(TrainSettings, Option<(checkpoint::CheckpointMeta, TrainState)>)> {
    let (s, resumed) = match &opts.resume {
        Some(p) => {
            if root && p.is_dir() && checkpoint::list(p).is_empty() && checkpoint::run_folder(p) == *p {
                // A run folder with no checkpoint: what it holds, if anything, says what to do instead.
                output_dir::check(p, false, false, &[])?;
            }
            let (meta, state) = checkpoint::load(p)?;
            let mut s = meta.settings.clone();
            // The run goes on in the folder --resume named, wherever it was started from.
            s.output_dir = checkpoint::run_folder(p);
            s.checkpoint_activations |= opts.resume_checkpoint_activations;
            // How and where it computes from here (the checkpoint's unless given again: `cli::train`).
            (s.compute, s.device) = (crate::kernels::compute::compute(), opts.device);
            if let Some(b) = opts.resume_base_dtype {
                if (b == BaseDtype::Bf16) != (s.base_dtype == BaseDtype::Bf16) {
                    bail!(
                        "--base-dtype {b:?} on --resume would change the numbers (bf16 rounds the base's matrices); \
                         the run was started with {:?}: resume with that, or stored/f32, which compute the same",
                        s.base_dtype
                    );
                }
                s.base_dtype = b;
            }
            (s, Some((meta, state)))
        }
        None => (s.with_absolute_paths()?, None),
    };
    s.validate()?;
    if resumed.is_none() {
        s.check_new_run()?;
    }
    Ok((s, resumed))
}

fn train_config(s: &TrainSettings, total_steps: usize) -> TrainConfig {
    TrainConfig {
        lr: s.lr,
        schedule: s.schedule,
        warmup_steps: s.warmup_steps,
        total_steps,
        adamw: AdamWConfig { weight_decay: s.weight_decay, ..AdamWConfig::default() },
        max_grad_norm: (s.max_grad_norm > 0.0).then_some(s.max_grad_norm),
        label_smoothing: s.label_smoothing,
        seed: s.seed,
        checkpoint_activations: s.checkpoint_activations,
    }
}

/// How the rows divide into steps.
#[derive(Clone, Copy)]
struct Plan {
    rows_per_step: usize,
    steps_per_epoch: usize,
    total_steps: usize,
}

impl Plan {
    fn new(s: &TrainSettings, rows: usize) -> Self {
        let rows_per_step = s.batch_size * s.grad_accum;
        let steps_per_epoch = rows.div_ceil(rows_per_step);
        Plan { rows_per_step, steps_per_epoch, total_steps: s.max_steps.unwrap_or(s.epochs * steps_per_epoch) }
    }

    fn epoch_of(&self, done_steps: u64) -> f64 {
        done_steps as f64 / self.steps_per_epoch as f64
    }

    /// The steps an invocation takes from `start`: to the end of the run, or `stop_after` of them.
    fn steps_from(&self, start: u64, stop_after: Option<u64>) -> std::ops::Range<u64> {
        let total = self.total_steps as u64;
        start..stop_after.map_or(total, |k| (start + k).min(total))
    }

    /// Step `step`'s rows: its epoch, and their positions in that epoch's visiting order (of `rows` rows).
    fn step_rows(&self, step: u64, rows: usize) -> (u64, std::ops::Range<usize>) {
        let at = (step % self.steps_per_epoch as u64) as usize * self.rows_per_step;
        (step / self.steps_per_epoch as u64, at..(at + self.rows_per_step).min(rows))
    }
}

/// What a device's buffers are sized for before the first step (`Trainer::reserve_device`), over this rank's
/// `steps`.
struct LargestBatches<'a> {
    /// The most tokens of a micro-batch shard or of an evaluation batch (which the training buffers then also serve).
    tokens: usize,
    /// The most 16-row chunks a shard's rows start.
    chunks: usize,
    /// The shard with the most tokens.
    largest: Vec<&'a Example>,
    /// The evaluation batch with the most tokens (empty without evaluation).
    largest_eval: &'a [Example],
}

fn largest_batches<'a>(
    (train, eval): (&'a Dataset, Option<&'a Dataset>),
    plan: &Plan,
    s: &TrainSettings,
    steps: std::ops::Range<u64>,
    world: &dyn Collectives,
) -> LargestBatches<'a> {
    let mut most = LargestBatches { tokens: 0, chunks: 0, largest: vec![], largest_eval: &[] };
    if let Some(e) = eval.filter(|_| !steps.is_empty()) {
        let mine = &e.examples[shard(e.examples.len(), world.rank(), world.size())];
        let batch = mine.chunks(EVAL_BATCH).max_by_key(|b| micro_batch_extent(b).0);
        most.largest_eval = batch.unwrap_or(&[]);
        most.tokens = micro_batch_extent(most.largest_eval).0;
    }
    let (mut order, mut largest) = ((u64::MAX, vec![]), 0);
    for step in steps {
        let (epoch, take) = plan.step_rows(step, train.examples.len());
        if order.0 != epoch {
            order = (epoch, epoch_order(train.examples.len(), s.seed, epoch));
        }
        let rows: Vec<&Example> = order.1[take].iter().map(|&i| &train.examples[i]).collect();
        for shard in micro_batch_shards(&rows, s.batch_size, world) {
            let (tokens, chunks) = micro_batch_extent(shard);
            (most.tokens, most.chunks) = (most.tokens.max(tokens), most.chunks.max(chunks));
            if tokens > largest {
                (largest, most.largest) = (tokens, shard.to_vec());
            }
        }
    }
    most
}

/// What the loop reports back. Throughput counts optimizer steps only (not evaluation or checkpoint writing).
struct Progress {
    steps_taken: u64,
    tokens: usize,
    train_secs: f64,
    first_loss: f64,
    last_loss: f64,
    eval_before: Option<Totals>,
    eval_after: Option<Totals>,
    ending: Ending,
}

/// The optimizer steps of one invocation, with their metrics, evaluations and checkpoints.
struct StepLoop<'a> {
    world: &'a dyn Collectives,
    s: &'a TrainSettings,
    plan: Plan,
    train_set: &'a Dataset,
    eval_set: Option<&'a Dataset>,
    stop_after: Option<u64>,
    interrupt: &'a Interrupt,
    guard: Option<Guard>,
    data_sha256: &'a str,
    model_fingerprint: &'a str,
    /// The token of the earlier run this one set aside with `--overwrite`, which its checkpoints record.
    replaces: Option<&'a str>,
    /// A resumed run continues on data that changed (`--accept-changed-data`): logged once.
    data_changed: bool,
}

impl StepLoop<'_> {
    fn evaluate(&self, t: &mut Trainer) -> Result<Option<Totals>> {
        self.eval_set.map(|e| evaluate_on(self.world, &mut *t.scorer(), e)).transpose()
    }

    /// The signal any rank received, if any, on every rank (SIGTERM over SIGINT, as [`Interrupt::requested`]): all
    /// ranks finish the same step with a checkpoint and stop, whichever of them a signal reached.
    fn signal(&self) -> Option<Signal> {
        let mut seen = [0.0; 2];
        match self.interrupt.requested() {
            Some(Signal::Int) => seen[0] = 1.0,
            Some(Signal::Term) => seen[1] = 1.0,
            None => {}
        }
        self.world.sum_f64(&mut seen);
        match seen {
            [_, t] if t > 0.0 => Some(Signal::Term),
            [i, _] if i > 0.0 => Some(Signal::Int),
            _ => None,
        }
    }

    /// Takes the steps.
    fn run(mut self, trainer: &mut Trainer, mut best_eval: Option<(f64, u64)>) -> Result<Progress> {
        let (s, plan, mut guard) = (self.s, self.plan, self.guard.take());
        let (start_step, total) = (trainer.step, plan.total_steps as u64);
        let root = self.world.is_root();
        if root && start_step > 0 {
            for (step, to) in checkpoint::set_aside_later(&s.output_dir, start_step)? {
                eprintln!(
                    "note: the checkpoint of step {step} is past the one this run resumed from (step {start_step}): \
                     moved to {} (kept; delete it when it is no longer wanted)",
                    to.display()
                );
            }
        }
        let mut metrics =
            if root { Some(Metrics::open(&s.output_dir, (start_step > 0).then_some(start_step))?) } else { None };
        if self.data_changed
            && let Some(m) = &mut metrics
        {
            m.log(serde_json::json!({"step": start_step, "event": "data_changed", "data_sha256": self.data_sha256}))?;
        }
        let eval_before = if start_step == 0 { self.evaluate(trainer)? } else { None };
        if let (Some(t), Some(m)) = (eval_before, &mut metrics) {
            m.log_eval(0, &t)?;
        }
        let bar = if root {
            progress::bar(total, "{bar:30} step {pos}/{len} {msg} ETA {eta}")
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_position(start_step);
        let mut p = Progress {
            steps_taken: 0,
            tokens: 0,
            train_secs: 0.0,
            first_loss: f64::NAN,
            last_loss: f64::NAN,
            eval_before,
            eval_after: None,
            ending: Ending::Finished,
        };
        let end = plan.steps_from(start_step, self.stop_after).end;
        // This epoch's rows (and their labels) in visiting order; each step takes the next slice.
        let mut epoch: (u64, Vec<&Example>, Vec<&str>) = (u64::MAX, vec![], vec![]);
        for step in start_step..end {
            let (e, take) = plan.step_rows(step, self.train_set.examples.len());
            if epoch.0 != e {
                epoch = self.epoch_rows(e);
            }
            let t0 = Instant::now();
            let st: StepStats = trainer.step_on(self.world, &epoch.1[take.clone()], s.batch_size, &epoch.2[take])?;
            let step_s = t0.elapsed().as_secs_f64();
            (p.train_secs, p.tokens, p.last_loss) = (p.train_secs + step_s, p.tokens + st.tokens, st.loss);
            p.steps_taken += 1;
            if p.first_loss.is_nan() {
                p.first_loss = st.loss;
            }
            let (done, tps) = (step + 1, p.tokens as f64 / p.train_secs);
            if let Some(m) = &mut metrics {
                let mut row = serde_json::json!({
                    "step": done, "epoch": plan.epoch_of(done), "loss": st.loss, "lr": st.lr,
                    "grad_norm": st.grad_norm, "tokens": st.tokens, "y_tokens": st.y_tokens,
                    "step_s": step_s, "tokens_per_s": tps, "comm_s": st.comm_s, "wait_s": st.wait_s,
                });
                if let Some(w) = st.device_wait_s {
                    row["device_wait_s"] = w.into();
                }
                m.log(row)?;
            }
            if let Some(g) = &mut guard {
                // From the summed loss and gradient norm: every rank stops at the same step.
                g.check(done, &st).map_err(|msg| {
                    Everywhere::error(anyhow::anyhow!("{msg}; turn this check off with --no-divergence-guard"))
                })?;
            }
            let (epoch_now, loss, lr) = (plan.epoch_of(done), st.loss, st.lr);
            let status = format!("epoch {epoch_now:.2} loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s");
            bar.set_position(done);
            if root && bar.is_hidden() && (done % progress::log_every(total) == 0 || done == end) {
                let eta = (end - done) as f64 * p.train_secs / p.steps_taken as f64;
                eprintln!(
                    "step {done}/{total} {status} ETA {}",
                    indicatif::HumanDuration(Duration::from_secs_f64(eta))
                );
            }
            bar.set_message(status);

            let eval_due = if s.eval_every > 0 {
                done % s.eval_every as u64 == 0 || done == total
            } else {
                done % plan.steps_per_epoch as u64 == 0 || done == total
            };
            let mut improved = false;
            if eval_due && let Some(t) = self.evaluate(trainer)? {
                if let Some(m) = &mut metrics {
                    m.log_eval(done, &t)?;
                }
                if root {
                    progress::say(
                        &bar,
                        format!("step {done}: eval NLL {:.4}, perplexity {:.3}", t.nll_per_token(), t.perplexity()),
                    );
                }
                if best_eval.is_none_or(|(b, _)| t.nll_per_token() < b) {
                    best_eval = Some((t.nll_per_token(), done));
                    improved = true;
                }
                p.eval_after = Some(t);
            }
            let signal = self.signal();
            if let Some(sig) = signal
                && root
            {
                progress::say(&bar, format!("{}: finishing step {done} with a checkpoint", sig.name()));
            }
            let stopped = self.stop_after.is_some() && done == end && done < total;
            let save_due = s.save_every > 0 && done % s.save_every as u64 == 0;
            if improved || stopped || signal.is_some() || done == total || save_due {
                // Every rank decides alike (the values above are the same on all); ZeRO-1 gathers the moments.
                trainer.sync_to_host()?;
                let gathered = trainer.gather_moments(self.world);
                if root {
                    let step = trainer.step;
                    let mut state = trainer.trainable_state();
                    for (t, m) in state.iter_mut().zip(gathered.iter().flatten()) {
                        t.2 = m;
                    }
                    let run = RunRecord {
                        settings: s,
                        best_eval,
                        data_sha256: self.data_sha256,
                        model_fingerprint: self.model_fingerprint,
                        replaces: self.replaces,
                    };
                    checkpoint::save(&s.output_dir, step, &state, &run)?;
                    if let Some(g) = gathered {
                        trainer.keep_own_parts(g);
                    }
                }
            }
            if let Some(sig) = signal {
                p.ending = Ending::Interrupted(sig);
                break;
            }
            if stopped {
                p.ending = Ending::Stopped;
            }
        }
        bar.finish_and_clear();
        Ok(p)
    }

    /// Epoch `e`'s rows and their labels, in its visiting order.
    fn epoch_rows(&self, e: u64) -> (u64, Vec<&Example>, Vec<&str>) {
        let d = self.train_set;
        let order = epoch_order(d.examples.len(), self.s.seed, e);
        (e, order.iter().map(|&i| &d.examples[i]).collect(), order.iter().map(|&i| d.sources[i].as_str()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_recorded_other_model_is_refused() {
        let m = Path::new("/models/m.gguf");
        assert!(check_same_model(m, Some("a"), "a").is_ok());
        assert!(check_same_model(m, None, "b").is_ok());
        let err = check_same_model(m, Some("a"), "b").unwrap_err().to_string();
        assert!(err.contains("m.gguf") && err.contains("base model changed"), "{err}");
    }
}
